"""XLSX parser: sheet number as page, sheet name as heading, header-aware row blocks, row cap."""

from __future__ import annotations

import io

import pytest
from openpyxl import Workbook

from ingest.parsers import parse_document, xlsx
from ingest.types import UnsupportedDocument


def _save(workbook: Workbook) -> bytes:
    out = io.BytesIO()
    workbook.save(out)
    return out.getvalue()


def test_rows_with_a_header_read_as_header_value_pairs(load) -> None:
    doc = parse_document(load("stock.xlsx"), "stock.xlsx")
    assert doc.mime_type.endswith("spreadsheetml.sheet")
    sheet1 = [(b.text, b.page, b.heading_path) for b in doc.blocks if b.page == 1]
    assert sheet1 == [
        ("Item: Widget; Quantity: 12; Unit price: 2.5; Received: 2024-05-01", 1, ("Inventory",)),
        ("Item: Gadget; Quantity: 3; Unit price: 10; Received: 2024-06-02 14:30:00", 1, ("Inventory",)),
        ("Item: Gizmo; Unit price: 7", 1, ("Inventory",)),  # empty row skipped, empty cells omitted
    ]


def test_sheet_without_header_joins_cells(load) -> None:
    doc = xlsx.parse(load("stock.xlsx"))
    assert [(b.text, b.page, b.heading_path) for b in doc.blocks if b.page == 2] == [
        ("1 | 2.25 | ok", 2, ("Readings",)),
        ("2 | 3.5 | high", 2, ("Readings",)),
    ]
    assert doc.metadata == {"sheet_count": 2}


def test_row_cap_truncates_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    workbook = Workbook()
    workbook.active.title = "Big"
    workbook.active.append(["id", "value"])
    for i in range(50):
        workbook.active.append([i, f"v{i}"])
    monkeypatch.setattr(xlsx, "MAX_ROWS_PER_SHEET", 10)
    doc = xlsx.parse(_save(workbook))
    assert len(doc.blocks) == 10
    assert doc.blocks[-1].text == "id: 9; value: v9"
    assert doc.metadata["truncated_sheets"] == ["Big"]


def test_empty_workbook_has_no_text() -> None:
    with pytest.raises(UnsupportedDocument, match="no text found"):
        parse_document(_save(Workbook()))


def test_corrupt_xlsx_is_refused(load) -> None:
    data = load("stock.xlsx")
    with pytest.raises(UnsupportedDocument, match="damaged"):
        parse_document(data[: len(data) // 2])
