"""PPTX parser: a page per slide, slide title as heading, tables, groups and labelled notes."""

from __future__ import annotations

import io

import pytest

from ingest.parsers import parse_document
from ingest.types import UnsupportedDocument


def test_slides_are_pages_with_their_title_as_heading(load) -> None:
    doc = parse_document(load("deck.pptx"), "deck.pptx")
    assert doc.mime_type.endswith("presentationml.presentation")
    assert doc.title == "Quarterly Results"
    assert doc.metadata["slide_count"] == 2
    slide1 = [(b.text, b.heading_path) for b in doc.blocks if b.page == 1]
    assert slide1 == [
        ("Quarterly Results", ("Quarterly Results",)),
        ("Revenue grew 12 percent\nCosts fell in every region", ("Quarterly Results",)),
        ("Speaker notes: Mention the new Berlin office.", ("Quarterly Results",)),
    ]


def test_tables_text_boxes_and_groups(load) -> None:
    doc = parse_document(load("deck.pptx"))
    slide2 = [b.text for b in doc.blocks if b.page == 2]
    assert slide2 == ["Regional Sales", "Region | Sales", "EMEA | 410", "Figures in kEUR", "Grouped remark"]
    assert all(b.heading_path == ("Regional Sales",) for b in doc.blocks if b.page == 2)


def test_corrupt_pptx_is_refused(load) -> None:
    data = load("deck.pptx")
    with pytest.raises(UnsupportedDocument):
        parse_document(data[: len(data) // 3])


def test_deck_without_text_is_refused() -> None:
    from pptx import Presentation

    deck = Presentation()
    deck.slides.add_slide(deck.slide_layouts[6])  # blank layout
    out = io.BytesIO()
    deck.save(out)
    with pytest.raises(UnsupportedDocument, match="no text found"):
        parse_document(out.getvalue())
