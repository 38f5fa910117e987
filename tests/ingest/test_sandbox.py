"""ingest.sandbox: a parser that hangs, eats memory or crashes fails its file only, with a reason."""

from __future__ import annotations

import multiprocessing
import time

import pytest

from ingest.parsers import parse_document
from ingest.sandbox import parse_isolated
from ingest.types import UnsupportedDocument
from tests.ingest.parsers.fixtures import docx_bytes, pdf_bytes

TARGETS = "tests.ingest.sandbox_targets"


def test_same_result_as_in_process() -> None:
    for data, name in ((pdf_bytes(), "r.pdf"), (docx_bytes(), "d.docx"), (b"# T\n\nSome text.", "t.md")):
        assert parse_isolated(data, name) == parse_document(data, name)


def test_bad_file_keeps_the_parsers_message() -> None:
    with pytest.raises(UnsupportedDocument) as isolated:
        parse_isolated(b"%PDF-1.4 not really", "x.pdf")
    with pytest.raises(UnsupportedDocument) as direct:
        parse_document(b"%PDF-1.4 not really", "x.pdf")
    assert str(isolated.value) == str(direct.value)


def test_hang_is_cut_at_the_timeout() -> None:
    start = time.monotonic()
    with pytest.raises(UnsupportedDocument, match="took longer than 1 s"):
        parse_isolated(b"x", "x.txt", timeout_s=1, target=f"{TARGETS}:hang")
    assert time.monotonic() - start < 10


def test_memory_cap() -> None:
    with pytest.raises(UnsupportedDocument, match="needed more than 256 MiB"):
        parse_isolated(b"x", "x.txt", memory_mb=256, timeout_s=30, target=f"{TARGETS}:hog")


def test_crash_of_the_parser_process() -> None:
    with pytest.raises(UnsupportedDocument, match=r"parser crashed on this file \(exit code -11\)"):
        parse_isolated(b"x", "x.txt", target=f"{TARGETS}:segfault")
    assert parse_isolated(b"# Still fine\n\nafter a crash.", "t.md").title == "Still fine"


def _parse_in_daemon(queue: object) -> None:
    queue.put(parse_isolated(b"# From a daemon\n\nA Celery pool process is one.", "t.md").title)  # type: ignore[attr-defined]


@pytest.mark.parametrize("flavour", ["multiprocessing", "billiard"])
def test_works_from_a_celery_pool_process(flavour: str) -> None:
    """Celery's prefork pool processes (billiard) are daemonic and carry billiard's authkey type;
    multiprocessing refuses to start children from there unless the sandbox deals with both."""
    if flavour == "billiard":
        import billiard

        ctx = billiard.get_context("spawn")
    else:
        ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_parse_in_daemon, args=(queue,), daemon=True)
    proc.start()
    try:
        assert queue.get(timeout=60) == "From a daemon"
    finally:
        proc.join(30)
