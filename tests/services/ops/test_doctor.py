"""`kb doctor` on real index files: it must see each way FAISS/BM25 can drift from the DB and fix it."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from ingest.embedders.factory import get_embedder
from ingest.pipeline import SourceFile
from services.cli import app
from services.core.config import get_settings
from services.core.container import KB
from services.ops.doctor import run_doctor
from storage.indexes.lexical import LexicalIndex
from storage.models import Chunk, Collection, Document

DOCS = {
    "pumps.md": "# Pumps\n\nThe pump must be primed before the first start. Check the seal weekly.",
    "fans.md": "# Fans\n\nFan blades are cleaned every month; the bearings are greased twice a year.",
    "doors.md": "# Doors\n\nFire doors close on their own and must never be wedged open.",
}


def _fill(kb: KB, name: str = "plant") -> Collection:
    emb = get_embedder("minilm")
    kb.store.create_collection(name, None, "minilm", emb.fingerprint, emb.dim)
    sources = [SourceFile(text.encode(), sid, sid) for sid, text in DOCS.items()]
    outcomes = list(kb.pipeline.ingest(name, sources))
    assert all(o.error is None for o in outcomes)
    with kb.db.session() as s:
        collection = kb.store.get_collection(s, name)
        s.expunge(collection)
    return collection


def test_clean_store_is_reported_clean(make_kb: Callable[..., KB]) -> None:
    kb = make_kb()
    _fill(kb)
    report = run_doctor(kb)
    assert report.ok, report.as_dict()
    (c,) = report.collections
    assert c.db_chunks == c.faiss.count == c.bm25.count > 0


def test_extra_faiss_and_missing_bm25_are_found_and_repaired(make_kb: Callable[..., KB]) -> None:
    kb = make_kb()
    collection = _fill(kb)
    manager = kb.store.indexes
    with kb.db.session() as s:
        row = s.merge(collection)
        loaded = manager.current(s, row)
        chunk_ids = list(s.scalars(select(Chunk.id).where(Chunk.collection_id == row.id)))
        generation = row.index_generation
    # FAISS gains a ghost chunk (what a lost delete looks like), BM25 loses a real one: same stamp.
    loaded.dense.add(np.array([999_999], np.int64), np.ones((1, collection.dim), np.float32))
    loaded.dense.save(manager._dense_path(collection), generation)
    LexicalIndex(manager._lexical_path(collection)).apply([], [chunk_ids[0]], generation)

    report = run_doctor(kb)
    assert not report.ok
    (c,) = report.collections
    assert c.faiss.extra == 1 and c.faiss.sample_extra == [999_999] and c.faiss.missing == 0
    assert c.bm25.missing == 1 and c.bm25.sample_missing == [chunk_ids[0]]

    repaired = run_doctor(kb, repair=True)
    assert repaired.ok and repaired.collections[0].repaired, repaired.as_dict()
    # The generation moved on, so a process holding the bad copy in memory reloads the repaired files.
    assert repaired.collections[0].generation == generation + 1
    assert run_doctor(kb).ok
    hits = kb.searcher.search("plant", "when is the pump primed", top_k=1, mode="lexical")
    assert hits and "primed" in hits[0].text


def test_missing_and_stale_files_and_stuck_documents(make_kb: Callable[..., KB]) -> None:
    kb = make_kb()
    collection = _fill(kb)
    shutil.rmtree(kb.store.indexes._lexical_path(collection))
    with kb.db.session() as s:  # a commit whose index step never ran (crash between the two)
        s.execute(
            update(Collection)
            .where(Collection.id == collection.id)
            .values(index_generation=Collection.index_generation + 1)
        )
        doc = s.scalars(select(Document).where(Document.source_id == "doors.md")).one()
        doc.status = "parsing"
        doc_id = doc.id
    report = run_doctor(kb)
    problems = " | ".join(report.collections[0].problems)
    assert "BM25 index missing" in problems and "FAISS file is at generation" in problems
    assert [d["id"] for d in report.stuck_documents] == [doc_id]

    fixed = run_doctor(kb, repair=True)
    assert fixed.ok, fixed.as_dict()
    with kb.db.session() as s:
        doc = s.get(Document, doc_id)
        assert doc.status == "failed" and "kb doctor" in doc.error
        assert not s.scalars(select(Chunk.id).where(Chunk.document_id == doc_id)).all()
    assert fixed.collections[0].db_chunks == fixed.collections[0].faiss.count


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("KB_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("KB_DATABASE_URL", f"sqlite:///{tmp_path / 'kb.sqlite3'}")
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_cli_exit_codes_and_json(env: Path) -> None:
    runner = CliRunner()
    folder = env / "docs"
    folder.mkdir()
    for name, text in DOCS.items():
        (folder / name).write_text(text)
    assert runner.invoke(app, ["ingest", str(folder), "-c", "plant"]).exit_code == 0
    clean = runner.invoke(app, ["doctor"])
    assert clean.exit_code == 0 and "all consistent" in clean.output, clean.output

    faiss_file = next((env / "data" / "indexes").glob("*/dense.faiss"))
    faiss_file.write_bytes(faiss_file.read_bytes()[:-10])  # truncated: checksum fails
    broken = runner.invoke(app, ["doctor", "--json"])
    assert broken.exit_code == 1
    body = json.loads(broken.stdout)
    assert body["ok"] is False and "FAISS file unusable" in body["collections"][0]["problems"][0]

    fixed = runner.invoke(app, ["doctor", "--repair"])
    assert fixed.exit_code == 0 and "(repaired)" in fixed.output, fixed.output
    assert runner.invoke(app, ["doctor"]).exit_code == 0
