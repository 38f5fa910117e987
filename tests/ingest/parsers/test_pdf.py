"""PDF parser: page numbers, paragraph re-flow, metadata, and the refusal paths."""

from __future__ import annotations

import pytest

from ingest.parsers import parse_document, pdf
from ingest.types import UnsupportedDocument
from tests.ingest.parsers.fixtures import PAGE3_SENTENCE, pdf_bytes


def test_pages_are_one_based_and_page3_sentence_is_on_page_3(load) -> None:
    doc = parse_document(load("report.pdf"), "report.pdf")
    assert doc.mime_type == "application/pdf"
    assert {b.page for b in doc.blocks} == {1, 2, 3}
    holding = [b for b in doc.blocks if PAGE3_SENTENCE in b.text]
    assert len(holding) == 1, "the sentence wrapped across lines must be re-joined into one block"
    assert holding[0].page == 3
    assert doc.blocks[0].text == "Section 1" and doc.blocks[0].page == 1


def test_wrapped_lines_become_paragraphs_and_hyphenation_is_undone(load) -> None:
    doc = pdf.parse(load("report.pdf"))
    page1 = [b.text for b in doc.blocks if b.page == 1]
    # heading, then two paragraphs (each wrapped over several lines in the PDF)
    assert page1[0] == "Section 1"
    assert len(page1) == 3
    assert page1[1].startswith("Page 1 opens here.") and page1[1].endswith("before the meeting starts.")
    assert "\n" not in page1[1]
    assert any("checks the documentation for every component" in b.text for b in doc.blocks)


def test_title_and_metadata(load) -> None:
    doc = pdf.parse(load("report.pdf"))
    assert doc.title == "Quarterly Operations Report"
    assert doc.metadata["page_count"] == 3
    assert doc.metadata["author"] == "Ops Team"


def test_no_title_metadata_gives_none() -> None:
    assert pdf.parse(pdf_bytes(pages=1, title=None)).title is None


def test_encrypted_pdf_is_refused(load) -> None:
    with pytest.raises(UnsupportedDocument, match="the PDF is encrypted"):
        parse_document(load("encrypted.pdf"), "encrypted.pdf")


def test_scanned_pdf_without_text_layer_is_refused(load) -> None:
    with pytest.raises(UnsupportedDocument, match="no text layer.*OCR is not supported"):
        parse_document(load("scanned.pdf"))


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.9])
def test_truncated_pdf_is_refused(load, fraction: float) -> None:
    data = load("report.pdf")
    with pytest.raises(UnsupportedDocument, match="PDF"):
        parse_document(data[: int(len(data) * fraction)], "report.pdf")


def test_garbage_after_pdf_magic_is_refused() -> None:
    with pytest.raises(UnsupportedDocument, match="damaged or truncated"):
        parse_document(b"%PDF-1.7\n" + bytes(range(256)) * 40)


def test_reflow_rules_on_plain_lines() -> None:
    lines = [pdf._Line(t) for t in [
        "A first paragraph line that runs the full width of the text column on the page",
        "and continues on a second full line of text until it ends with this sentence.",
        "Short last line.",
        "- a bullet item",
        "- another bullet item",
        "Hyphen- ated words are re-joined when the next line begins in lower case, so hyphen-",
        "ation disappears while the paragraph keeps running across the visual line break ok.",
    ]]  # fmt: skip
    assert pdf._paragraphs(lines) == [
        "A first paragraph line that runs the full width of the text column on the page and continues on "
        "a second full line of text until it ends with this sentence. Short last line.",
        "- a bullet item",
        "- another bullet item",
        "Hyphen- ated words are re-joined when the next line begins in lower case, so hyphenation "
        "disappears while the paragraph keeps running across the visual line break ok.",
    ]


def test_owner_password_only_pdf_is_readable() -> None:
    """Permissions-only encryption (empty user password) opens without a password: read it."""
    import io

    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf_bytes(pages=1))))
    writer.encrypt(user_password="", owner_password="owner", algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    doc = pdf.parse(out.getvalue())
    assert doc.blocks[0].text == "Section 1"
