"""Plain text parser: encodings decode correctly, paragraphs split on blank lines, binary refused."""

from __future__ import annotations

import pytest

from ingest.parsers import parse_document, text
from ingest.types import UnsupportedDocument
from tests.ingest.parsers.fixtures import TEXT_CP1252, TEXT_LATIN1, TEXT_UNICODE


def _paragraphs(source: str) -> list[str]:
    return [p.strip() for p in source.split("\n\n")]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("utf8.txt", TEXT_UNICODE),
        ("utf16.txt", TEXT_UNICODE),
        ("cp1252.txt", TEXT_CP1252),
        ("latin1.txt", TEXT_LATIN1),
    ],
)
def test_encodings_decode_to_the_original_text(load, name: str, expected: str) -> None:
    doc = parse_document(load(name), name)
    assert doc.mime_type == "text/plain"
    assert [b.text for b in doc.blocks] == _paragraphs(expected)
    assert doc.title is None
    assert all(b.page is None and b.heading_path == () for b in doc.blocks)


def test_utf16_without_bom_and_crlf_line_ends() -> None:
    doc = text.parse("First para\r\nline two\r\n\r\nSecond para".encode("utf-16-le"))
    assert [b.text for b in doc.blocks] == ["First para\nline two", "Second para"]


def test_whitespace_is_normalised() -> None:
    doc = text.parse("  lots   of\tspace\u00a0here  \n\n\n\n  next\u200b one ".encode())
    assert [b.text for b in doc.blocks] == ["lots of space here", "next one"]


def test_binary_named_txt_is_refused() -> None:
    with pytest.raises(UnsupportedDocument, match="binary"):
        parse_document(bytes(range(256)) * 20, "notes.txt")


def test_empty_and_whitespace_only_files_are_refused() -> None:
    for data in (b"", b"  \n\t\r\n  "):
        with pytest.raises(UnsupportedDocument, match="the file is empty"):
            parse_document(data, "empty.txt")
