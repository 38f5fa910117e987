"""CSV/TSV via the stdlib csv module with a sniffed dialect: one block per row, "header: value; ...".

The stdlib reader handles quoting and embedded newlines correctly and csv.Sniffer
finds the delimiter (comma, semicolon as in European Excel exports, tab, pipe). The
first non-empty row is taken as the header, so every row block is self-describing
when it lands alone in a chunk. Rows beyond MAX_ROWS are dropped and flagged in
metadata. CSV has no headings: heading_path is always ().
"""

from __future__ import annotations

import csv
import io

from ingest.parsers.base import header_row_text, one_line, reading, require_text
from ingest.sniff import CSV, decode_text
from ingest.types import Block, ParsedDocument

MAX_ROWS = 100_000
csv.field_size_limit(max(csv.field_size_limit(), 16 * 1024 * 1024))  # long text cells are legitimate


def parse(data: bytes, filename: str | None = None) -> ParsedDocument:
    """Decode and parse CSV/TSV."""
    return parse_text(decode_text(data), filename)


def parse_text(text: str, filename: str | None = None) -> ParsedDocument:
    """Parse already-decoded CSV; a .tsv name is the fallback when sniffing fails."""
    blocks: list[Block] = []
    truncated = False
    with reading("CSV"):
        dialect = _dialect(text, filename)
        rows = csv.reader(io.StringIO(text), dialect)
        header: list[str] | None = None
        for row in rows:
            cells = [one_line(c) for c in row]
            if not any(cells):
                continue
            if header is None:
                header = cells
                continue
            if len(blocks) >= MAX_ROWS:
                truncated = True
                break
            blocks.append(Block(header_row_text(cells, header)))
        if header is not None and not blocks:
            blocks.append(Block(" | ".join(c for c in header if c)))  # header-only file
    metadata: dict[str, object] = {"columns": [h for h in header or [] if h]}
    if truncated:
        metadata["truncated"] = True
        metadata["max_rows"] = MAX_ROWS
    return ParsedDocument(CSV, require_text(blocks), metadata=metadata)


def _dialect(text: str, filename: str | None) -> type[csv.Dialect] | csv.Dialect:
    sample = text[:32768]
    if len(text) > len(sample) and "\n" in sample:
        sample = sample[: sample.rindex("\n")]  # do not sniff a half row
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|")
    except csv.Error:
        is_tsv = (filename or "").lower().endswith(".tsv") or sample.count("\t") > sample.count(",")
        return csv.excel_tab if is_tsv else csv.excel
