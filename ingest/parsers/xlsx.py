"""XLSX via openpyxl (read-only, cached values): one block per row, sheet number as page.

openpyxl's read-only mode streams rows instead of building the whole workbook, so
large sheets stay cheap; data_only gives the values Excel last computed rather than
formulas (a workbook never opened in Excel has no cached values for formula cells).
When the first row looks like a header, rows read "Header: value; ..." so a chunk
holding row 900 still says what its numbers mean; otherwise cells are joined with
" | ". Rows beyond MAX_ROWS_PER_SHEET are dropped and the sheet is named in
metadata["truncated_sheets"].
"""

from __future__ import annotations

import datetime as dt
import io

from openpyxl import load_workbook

from ingest.parsers.base import check_zip, header_row_text, one_line, reading, require_text
from ingest.sniff import XLSX
from ingest.types import Block, ParsedDocument

MAX_ROWS_PER_SHEET = 100_000


def parse(data: bytes, filename: str | None = None) -> ParsedDocument:
    """Parse an XLSX; UnsupportedDocument if it is damaged or every sheet is empty."""
    check_zip(data, "XLSX")
    blocks: list[Block] = []
    truncated: list[str] = []
    with reading("XLSX"):
        workbook = load_workbook(io.BytesIO(data), read_only=True, data_only=True)
        try:
            title = one_line(workbook.properties.title or "") or None
            for number, sheet in enumerate(workbook.worksheets, start=1):
                rows, cut = _sheet_rows(sheet)
                blocks.extend(Block(text, page=number, heading_path=(sheet.title,)) for text in rows)
                if cut:
                    truncated.append(sheet.title)
            sheets = len(workbook.worksheets)
        finally:
            workbook.close()  # read-only workbooks keep the ZIP open until closed
    metadata: dict[str, object] = {"sheet_count": sheets}
    if truncated:
        metadata["truncated_sheets"] = truncated
        metadata["max_rows_per_sheet"] = MAX_ROWS_PER_SHEET
    return ParsedDocument(XLSX, require_text(blocks), title=title, metadata=metadata)


def _sheet_rows(sheet) -> tuple[list[str], bool]:  # noqa: ANN001 - openpyxl ReadOnlyWorksheet
    """The sheet's row texts, and whether the row cap cut it short."""
    out: list[str] = []
    header: list[str] | None = None
    first = True
    sheet.reset_dimensions()  # the stored dimension is often wrong; read what is really there
    for values in sheet.iter_rows(values_only=True):
        cells = [_cell(v) for v in values]
        while cells and not cells[-1]:
            cells.pop()
        if not cells:
            continue
        if first:
            first = False
            if _is_header(values):
                header = cells
                continue
        if len(out) >= MAX_ROWS_PER_SHEET:
            return out, True
        out.append(_row_text(cells, header))
    if header is not None and not out:
        out.append(" | ".join(header))  # a header-only sheet still says what it is about
    return out, False


def _is_header(values: tuple[object, ...]) -> bool:
    """2+ distinct, short text labels and nothing else: the usual column header row."""
    labels = [v.strip() for v in values if isinstance(v, str) and v.strip()]
    others = [v for v in values if v is not None and not (isinstance(v, str) and not v.strip())]
    return (
        len(labels) >= 2
        and len(labels) == len(others)
        and len(set(labels)) == len(labels)
        and all(len(v) <= 80 for v in labels)
    )


def _row_text(cells: list[str], header: list[str] | None) -> str:
    if header is None:
        return " | ".join(cells)
    return header_row_text(cells, header)


def _cell(value: object) -> str:
    """A cell as text: 3.0 -> "3", dates without a time -> "2024-05-01", None -> ""."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, dt.datetime):
        return value.date().isoformat() if value.time() == dt.time() else value.isoformat(sep=" ")
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return one_line(str(value))
