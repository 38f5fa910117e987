"""DOCX parser: heading paths, paragraphs, table rows (nested and merged), skipped header/footer."""

from __future__ import annotations

import io
import zipfile

import pytest

from ingest.parsers import docx as docx_parser
from ingest.parsers import parse_document
from ingest.types import UnsupportedDocument
from tests.ingest.parsers.fixtures import FOOTER_TEXT, HEADER_TEXT


def _by_text(doc) -> dict[str, tuple[str, ...]]:  # noqa: ANN001
    return {b.text: b.heading_path for b in doc.blocks}


def test_headings_build_the_heading_path(load) -> None:
    doc = parse_document(load("handbook.docx"), "handbook.docx")
    assert doc.mime_type.endswith("wordprocessingml.document")
    paths = _by_text(doc)
    assert paths["Welcome to the company handbook."] == ("Employee Handbook",)
    assert paths["Employees receive 28 days of paid leave per year."] == ("Employee Handbook", "Leave Policy")
    assert paths["Up to five unused days carry over to the next year."] == (
        "Employee Handbook",
        "Leave Policy",
        "Carry Over",
    )
    # a new Heading 1 closes the Heading 2 above it
    assert paths["Submit receipts within 30 days."] == ("Employee Handbook", "Expenses")
    assert doc.title == "Employee Handbook"
    assert doc.metadata["author"] == "Ann Author"
    assert all(b.page is None for b in doc.blocks)


def test_tables_are_one_block_per_row_including_nested_tables(load) -> None:
    texts = [b.text for b in docx_parser.parse(load("handbook.docx")).blocks]
    start = texts.index("Grade | Days | Approver")
    assert texts[start : start + 5] == [
        "Grade | Days | Approver",
        "Junior | 25 | Team lead",
        "Senior | 30",  # the third cell only holds the nested table, which follows as its own row
        "Director | HR partner",
        "Spanning cell | Last cell",  # a merged cell appears once
    ]
    assert _by_text(docx_parser.parse(load("handbook.docx")))["Director | HR partner"][-1] == "Carry Over"


def test_headers_and_footers_are_skipped(load) -> None:
    text = docx_parser.parse(load("handbook.docx")).text
    assert HEADER_TEXT not in text and FOOTER_TEXT not in text


def test_corrupt_docx_is_refused(load) -> None:
    data = load("handbook.docx")
    with pytest.raises(UnsupportedDocument, match="damaged"):
        parse_document(data[: len(data) // 2], "handbook.docx")


def test_docx_missing_its_main_part_is_refused(load) -> None:
    source = zipfile.ZipFile(io.BytesIO(load("handbook.docx")))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as broken:
        for item in source.infolist():
            if item.filename != "word/document.xml":
                broken.writestr(item, source.read(item))
    with pytest.raises(UnsupportedDocument, match="DOCX file is damaged or unreadable"):
        parse_document(out.getvalue(), "handbook.docx")


def test_empty_docx_has_no_text() -> None:
    import docx

    out = io.BytesIO()
    docx.Document().save(out)
    with pytest.raises(UnsupportedDocument, match="no text found"):
        parse_document(out.getvalue())


def test_custom_style_based_on_a_heading_style_is_a_heading() -> None:
    import docx
    from docx.enum.style import WD_STYLE_TYPE

    document = docx.Document()
    custom = document.styles.add_style("Chapter Title", WD_STYLE_TYPE.PARAGRAPH)
    custom.base_style = document.styles["Heading 1"]
    document.add_paragraph("Chapter One", style="Chapter Title")
    document.add_paragraph("Body of chapter one.")
    out = io.BytesIO()
    document.save(out)
    doc = docx_parser.parse(out.getvalue())
    assert [(b.text, b.heading_path) for b in doc.blocks] == [
        ("Chapter One", ("Chapter One",)),
        ("Body of chapter one.", ("Chapter One",)),
    ]
