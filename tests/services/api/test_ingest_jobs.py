"""The jobs API on the embedded in-process runner (the same batch code as the Celery workers)."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient

from tests.services.jobs.helpers import consistent_counts, make_dump, wait_done, wait_until


def _collection(client: TestClient, name: str = "dump") -> None:
    assert client.post("/v1/collections", json={"name": name}).status_code == 201


def _job(client: TestClient, job_id: str) -> dict:
    r = client.get(f"/v1/ingest-jobs/{job_id}")
    assert r.status_code == 200, r.text
    return r.json()


def test_path_job_counts_then_resubmit_gives_duplicates(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    client = make_client(ingest_allowed_roots=str(tmp_path / "share"), ingest_batch_files=4)
    dump = make_dump(tmp_path / "share" / "wiki", 10, pdf_every=5)
    _collection(client)
    r = client.post("/v1/collections/dump/ingest-jobs", json={"path": str(dump.root)})
    assert r.status_code == 202, r.text
    job = wait_done(lambda: _job(client, r.json()["job_id"]))
    assert job["status"] == "succeeded"
    assert (job["total"], job["succeeded"], job["duplicates"], job["failed"]) == (13, 10, 0, 3)
    assert job["processed"] == 13 and job["started_at"] and job["finished_at"]
    assert sorted(e["path"] for e in job["errors"]) == sorted(dump.bad)
    assert "empty" in next(e["error"] for e in job["errors"] if e["path"] == "empty.md")
    kb = client.app.state.kb
    assert consistent_counts(kb, "dump") == (10, 10)

    again = client.post("/v1/collections/dump/ingest-jobs", json={"path": str(dump.root)}).json()["job_id"]
    job = wait_done(lambda: _job(client, again))
    assert (job["succeeded"], job["duplicates"], job["failed"]) == (0, 10, 3)
    assert consistent_counts(kb, "dump") == (10, 10)

    hits = client.post("/v1/collections/dump/search", json={"query": "crane inspection number 1"}).json()
    assert hits["results"][0]["source_id"] == "wiki/team1/crane-1.md"


def test_upload_zip_with_malicious_members(make_client: Callable[..., TestClient], tmp_path: Path) -> None:
    client = make_client()
    _collection(client)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("docs/a.md", "# Alpha\n\nThe alpha valve is checked weekly.")
        zf.writestr("docs/b.md", "# Bravo\n\nThe bravo fuse box is red.")
        zf.writestr("../../etc/evil.md", "escape")
        zf.writestr("/abs.md", "absolute")
        zf.writestr("zeros.txt", "\0" * (8 * 1024 * 1024))
        link = zipfile.ZipInfo("docs/link.md")
        link.external_attr = 0o120777 << 16
        zf.writestr(link, "/etc/passwd")
    files = {"file": ("export.zip", buf.getvalue(), "application/zip")}
    r = client.post("/v1/collections/dump/ingest-jobs", files=files)
    assert r.status_code == 202, r.text
    job = wait_done(lambda: _job(client, r.json()["job_id"]))
    assert (job["total"], job["succeeded"], job["failed"]) == (6, 2, 4)
    reasons = {e["path"]: e["error"] for e in job["errors"]}
    assert "traversal" in reasons["../../etc/evil.md"] and "absolute" in reasons["/abs.md"]
    assert "symlink" in reasons["docs/link.md"] and "compression ratio" in reasons["zeros.txt"]
    assert consistent_counts(client.app.state.kb, "dump") == (2, 2)
    staged = client.app.state.kb.settings.staging_dir
    assert not any(p.is_file() for p in staged.rglob("*")), "the uploaded dump is removed when the job ends"


def test_error_answers(make_client: Callable[..., TestClient], tmp_path: Path) -> None:
    allowed = tmp_path / "share"
    make_dump(allowed / "d", 1)
    outside = make_dump(tmp_path / "private", 1).root
    client = make_client(ingest_allowed_roots=str(allowed), max_upload_mb=0.05)
    _collection(client)
    post = lambda **kw: client.post("/v1/collections/dump/ingest-jobs", **kw)  # noqa: E731
    assert post(json={"path": str(allowed / "d")}).status_code == 202
    r = post(json={"path": str(outside)})
    assert r.status_code == 403 and "allowed roots" in r.json()["detail"]
    (allowed / "sneaky").symlink_to(outside)
    assert post(json={"path": str(allowed / "sneaky")}).status_code == 403
    assert post(json={"path": str(allowed / "../private")}).status_code == 403
    r = post(json={"path": str(allowed / "missing")})
    assert r.status_code == 404 and "no such" in r.json()["detail"]
    assert post(json={"nope": 1}).status_code == 422
    assert post(content=b"{", headers={"content-type": "application/json"}).status_code == 422
    r = post(content=b"\x80{}", headers={"content-type": "application/json"})  # not UTF-8
    assert r.status_code == 422 and "UTF-8" in r.json()["detail"]
    r = post(files={"file": ("x.pdf", b"%PDF-1.4 not an archive", "application/pdf")})
    assert r.status_code == 415 and "zip, tar or tar.gz" in r.json()["detail"]
    assert post(content=b"x", headers={"content-type": "text/plain"}).status_code == 415
    r = post(files={"file": ("big.zip", b"PK\x03\x04" + b"\0" * 200_000, "application/zip")})
    assert r.status_code == 413
    r = client.post("/v1/collections/nope/ingest-jobs", json={"path": str(allowed / "d")})
    assert r.status_code == 404 and "nope" in r.json()["detail"]
    assert client.get("/v1/ingest-jobs/doesnotexist").status_code == 404
    assert client.delete("/v1/ingest-jobs/doesnotexist").status_code == 404
    assert client.get("/v1/ingest-jobs/doesnotexist/events").status_code == 404

    closed = make_client()  # no KB_INGEST_ALLOWED_ROOTS: server paths are refused
    r = closed.post("/v1/collections/dump/ingest-jobs", json={"path": str(allowed / "d")})
    assert r.status_code == 403 and "KB_INGEST_ALLOWED_ROOTS" in r.json()["detail"]


def test_events_stream_until_done(make_client: Callable[..., TestClient], tmp_path: Path) -> None:
    client = make_client(ingest_allowed_roots=str(tmp_path), ingest_batch_files=2, ingest_threads=1)
    dump = make_dump(tmp_path / "d", 8)
    _collection(client)
    job_id = client.post("/v1/collections/dump/ingest-jobs", json={"path": str(dump.root)}).json()["job_id"]
    events: list[tuple[str, dict]] = []
    with client.stream("GET", f"/v1/ingest-jobs/{job_id}/events?poll_s=0.05") as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
    assert events[-1][0] == "done" and [n for n, _ in events[:-1]] == ["progress"] * (len(events) - 1)
    final = events[-1][1]
    assert final["status"] == "succeeded" and (final["succeeded"], final["failed"]) == (8, 3)
    processed = [e["processed"] for _, e in events]
    assert processed == sorted(processed) and len(set(processed)) >= 2


def test_cancel_keeps_what_is_committed(make_client: Callable[..., TestClient], tmp_path: Path) -> None:
    client = make_client(ingest_allowed_roots=str(tmp_path), ingest_batch_files=1, ingest_threads=1)
    dump = make_dump(tmp_path / "d", 150, with_bad=False)
    _collection(client)
    job_id = client.post("/v1/collections/dump/ingest-jobs", json={"path": str(dump.root)}).json()["job_id"]
    wait_until(lambda: _job(client, job_id)["processed"] >= 2)
    r = client.delete(f"/v1/ingest-jobs/{job_id}")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    client.app.state.jobs.runner.close()  # let the batch in flight (if any) finish
    job = _job(client, job_id)
    assert job["status"] == "cancelled" and job["cancelled"] > 0
    assert job["succeeded"] + job["cancelled"] == 150 and job["succeeded"] >= 2
    docs, chunks = consistent_counts(client.app.state.kb, "dump")
    assert docs == job["succeeded"] == chunks
    assert client.delete(f"/v1/ingest-jobs/{job_id}").status_code == 409


def test_broker_down_is_503_and_the_job_is_failed(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    client = make_client(
        ingest_runner="celery", redis_url="redis://127.0.0.1:1/0", ingest_allowed_roots=str(tmp_path)
    )
    dump = make_dump(tmp_path / "d", 2)
    _collection(client)
    r = client.post("/v1/collections/dump/ingest-jobs", json={"path": str(dump.root)})
    assert r.status_code == 503
    assert "cannot reach the task broker at redis://127.0.0.1:1/0" in r.json()["detail"]
    jobs = client.app.state.jobs
    with client.app.state.kb.db.session() as s:
        from storage.job_models import IngestJob

        [job] = s.query(IngestJob).all()
    assert jobs.get(job.id).status == "failed"
