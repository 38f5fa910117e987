"""Content sniffing: magic numbers and content decide; a filename only breaks ties among text formats."""

from __future__ import annotations

import io
import os
import zipfile

import pytest

from ingest import sniff
from ingest.parsers import SUPPORTED_MIME_TYPES, parse_document
from ingest.sniff import sniff_mime
from ingest.types import UnsupportedDocument
from tests.ingest.parsers import fixtures


def _zip(*names: str) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name in names:
            zf.writestr(name, "x")
    return out.getvalue()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (fixtures.pdf_bytes(pages=1), sniff.PDF),
        (fixtures.docx_bytes(), sniff.DOCX),
        (fixtures.pptx_bytes(), sniff.PPTX),
        (fixtures.xlsx_bytes(), sniff.XLSX),
        (fixtures.eml_bytes(), sniff.EMAIL),
        (fixtures.HTML_PAGE.encode(), sniff.HTML),
        (fixtures.MARKDOWN_DOC.encode(), sniff.MARKDOWN),
        (fixtures.CSV_DOC.encode(), sniff.CSV),
        (fixtures.TEXT_UNICODE.encode("utf-16"), sniff.TEXT),
    ],
)
def test_content_decides_even_under_a_misleading_name(data: bytes, expected: str) -> None:
    assert sniff_mime(data) == expected
    assert sniff_mime(data, "misleading.txt") == expected
    assert sniff_mime(data, "misleading.pdf") == expected
    assert expected in SUPPORTED_MIME_TYPES


def test_office_types_come_from_zip_member_names() -> None:
    assert sniff_mime(_zip("[Content_Types].xml", "word/document.xml")) == sniff.DOCX
    assert sniff_mime(_zip("ppt/presentation.xml")) == sniff.PPTX
    assert sniff_mime(_zip("xl/workbook.xml"), "report.docx") == sniff.XLSX


def test_other_zips_are_refused() -> None:
    with pytest.raises(UnsupportedDocument, match="ZIP archives are not supported"):
        sniff_mime(_zip("photos/a.jpg", "readme.txt"), "bundle.docx")
    with pytest.raises(UnsupportedDocument, match="damaged ZIP"):
        sniff_mime(b"PK\x03\x04" + b"\x00garbage" * 10, "x.docx")


def test_ole2_legacy_office_is_refused_with_advice() -> None:
    data = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 600
    with pytest.raises(UnsupportedDocument, match="save it as DOCX, XLSX"):
        parse_document(data, "old.doc")


@pytest.mark.parametrize(
    "data",
    [
        bytes(range(256)) * 8,  # NUL bytes
        bytes(b for b in os.urandom(4096) if b) + b"\x01\x02\x03" * 50,  # no NULs, many controls
        b"\x89PNG\r\n\x1a\n" + b"IHDR" * 20,
        b"\x1f\x8b\x08\x00" + b"compressed" * 10,
    ],
)
def test_binary_is_never_text_whatever_the_name(data: bytes) -> None:
    for name in ("notes.txt", "readme.md", "data.csv", None):
        with pytest.raises(UnsupportedDocument, match="not a supported document"):
            sniff_mime(data, name)


def test_empty_input() -> None:
    for data in (b"", b" \r\n\t "):
        with pytest.raises(UnsupportedDocument, match="^the file is empty$"):
            sniff_mime(data, "a.txt")


def test_email_needs_mail_headers_at_the_start() -> None:
    assert sniff_mime(b"From: a@example.com\nSubject: Hi\nDate: Mon, 1 Jan 2024 10:00:00 +0000\n\nBody") == (
        sniff.EMAIL
    )
    assert sniff_mime(b"Note: remember this\nLater: other\n\nBody text") == sniff.TEXT


def test_html_fragments_and_doctype() -> None:
    assert sniff_mime(b"<!doctype html><title>x</title>") == sniff.HTML
    assert sniff_mime(b"\n  <p>Just a paragraph</p>") == sniff.HTML
    assert sniff_mime(b"Text that mentions <p> tags in passing.") == sniff.TEXT


def test_csv_needs_consistent_columns() -> None:
    assert sniff_mime(b"a;b;c\n1;2;3\n4;5;6\n7;8;9\n") == sniff.CSV
    prose = b"Hello, world. This line has a comma.\nThis one, has two, commas.\nAnd this has none.\n"
    assert sniff_mime(prose) == sniff.TEXT


def test_markdown_signals() -> None:
    assert sniff_mime(b"Intro\n\n## Setup\n\nRun it.") == sniff.MARKDOWN
    assert sniff_mime(b"See [the docs](https://example.com) for more.") == sniff.MARKDOWN
    assert sniff_mime(b"Just a sentence.\nAnd another one.") == sniff.TEXT


def test_filename_breaks_ties_among_text_formats_only() -> None:
    plain = b"Just a sentence.\nAnd another one."
    assert sniff_mime(plain, "notes.md") == sniff.MARKDOWN
    assert sniff_mime(b"a,b\n1,2\n", "tiny.csv") == sniff.CSV  # too short to be sure by content
    assert sniff_mime(b"a;b;c\n1;2;3\n4;5;6\n7;8;9\n", "export.txt") == sniff.CSV  # .txt says only "text"
    assert sniff_mime(b"- one\n- two\n- three\n", "list.csv") == sniff.CSV
    assert sniff_mime(fixtures.HTML_PAGE.encode(), "page.md") == sniff.HTML  # strong content wins
    assert sniff_mime(fixtures.pdf_bytes(pages=1), "notes.md") == sniff.PDF


def test_readme_opening_with_html_is_still_markdown() -> None:
    readme = b'<p align="center"><img src="logo.png"></p>\n\n# Project\n\nIt does things.\n'
    assert sniff_mime(readme) == sniff.MARKDOWN
    assert sniff_mime(b'<div align="center">Logo</div>\n\nSome text.', "README.md") == sniff.MARKDOWN
    assert sniff_mime(b'<div align="center">Logo</div>\n\nSome text.', "notes.txt") == sniff.HTML
    doc = parse_document(readme, "README.md")
    assert [(b.text, b.heading_path) for b in doc.blocks][-1] == ("It does things.", ("Project",))


def test_pdf_magic_after_whitespace() -> None:
    assert sniff_mime(b"\r\n  %PDF-1.4\n...") == sniff.PDF
    assert sniff_mime(b"This note is about the %PDF-1.7 header.") == sniff.TEXT


def test_decode_text_handles_boms_and_refuses_binary() -> None:
    assert sniff.decode_text("\ufeffhello".encode()) == "hello"
    assert sniff.decode_text("ßtraße".encode("utf-32")) == "ßtraße"
    assert sniff.decode_text(b"line1\r\nline2\rline3") == "line1\nline2\nline3"
    with pytest.raises(UnsupportedDocument):
        sniff.decode_text(b"ab\x00cd\x00\x00\x01\x02")
