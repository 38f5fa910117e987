"""DOCX via python-docx: heading styles build the heading path, tables become one block per row.

python-docx is the standard reader for Office Open XML documents and gives us the
style of each paragraph, which is how Word marks structure (Title, Heading 1..9).
The body is walked in XML order so paragraphs and tables stay interleaved as the
author wrote them, including content controls (w:sdt). Each table row becomes
"cell | cell | cell"; nested tables follow the row that holds them. Headers and
footers are skipped: they repeat on every page and say nothing about the content.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import docx
from docx.document import Document as DocxDocument
from docx.enum.style import WD_STYLE_TYPE
from docx.oxml.ns import qn
from docx.styles.style import BaseStyle
from docx.table import Table, _Cell
from docx.text.paragraph import Paragraph

from ingest.parsers.base import HeadingStack, check_zip, clean, one_line, reading, require_text
from ingest.sniff import DOCX
from ingest.types import Block, ParsedDocument

_P, _TBL, _SDT, _SDT_CONTENT = qn("w:p"), qn("w:tbl"), qn("w:sdt"), qn("w:sdtContent")


def parse(data: bytes, filename: str | None = None) -> ParsedDocument:
    """Parse a DOCX; UnsupportedDocument if it is damaged or has no text."""
    check_zip(data, "DOCX")
    with reading("DOCX"):
        document = docx.Document(io.BytesIO(data))
        props = document.core_properties
        title = one_line(props.title or "") or None
        levels = _heading_levels(document)
        headings = HeadingStack()
        blocks: list[Block] = []
        for item in _items(document.element.body, document._body):
            if isinstance(item, Paragraph):
                text = clean(item.text)
                if not text:
                    continue
                level = levels.get(item._p.style or "")  # style id; Paragraph.style is slow
                if level is not None:
                    text = one_line(text)
                    headings.push(level, text)
                    if not title and level <= 1:
                        title = text
                blocks.append(Block(text, heading_path=headings.path))
            else:
                blocks.extend(Block(row, heading_path=headings.path) for row in _table_rows(item))
        metadata: dict[str, object] = {}
        if props.author:
            metadata["author"] = props.author
        if props.created:
            metadata["created"] = props.created.isoformat()
    return ParsedDocument(DOCX, require_text(blocks), title=title, metadata=metadata)


def _items(element, parent) -> Iterator[Paragraph | Table]:  # noqa: ANN001 - lxml element, docx parent
    """Paragraphs and tables in document order, looking inside content controls."""
    for child in element.iterchildren():
        if child.tag == _P:
            yield Paragraph(child, parent)
        elif child.tag == _TBL:
            yield Table(child, parent)
        elif child.tag == _SDT:
            content = child.find(_SDT_CONTENT)
            if content is not None:
                yield from _items(content, parent)


def _heading_levels(document: DocxDocument) -> dict[str, int]:
    """Style id -> heading level for the document's paragraph styles, computed once."""
    levels = {}
    for style in document.styles:
        if style.type == WD_STYLE_TYPE.PARAGRAPH and (level := _style_level(style)) is not None:
            levels[style.style_id] = level
    return levels


def _style_level(style: BaseStyle | None) -> int | None:
    """0 for Title, n for "Heading n", following custom styles based on those; else None."""
    for _ in range(5):  # custom heading styles are usually based on a built-in one
        if style is None:
            return None
        name = (style.name or "").strip()
        if name.lower() == "title":
            return 0
        if name.lower().startswith("heading"):
            tail = name[len("heading") :].strip()
            return int(tail) if tail.isdigit() and 1 <= int(tail) <= 9 else None
        style = style.base_style
    return None


def _table_rows(table: Table) -> list[str]:
    """One "a | b | c" line per row; cells merged across columns appear once."""
    rows: list[str] = []
    for row in table.rows:
        cells: list[str] = []
        nested: list[Table] = []
        previous = None
        for cell in row.cells:
            if previous is not None and cell._tc is previous:
                continue  # a cell spanning several grid columns is repeated by python-docx
            previous = cell._tc
            text, inner = _cell_content(cell)
            cells.append(text)
            nested.extend(inner)
        if any(cells):
            rows.append(" | ".join(cells).strip(" |"))
        for inner_table in nested:
            rows.extend(_table_rows(inner_table))
    return rows


def _cell_content(cell: _Cell) -> tuple[str, list[Table]]:
    parts: list[str] = []
    tables: list[Table] = []
    for item in _items(cell._tc, cell):
        if isinstance(item, Paragraph):
            parts.append(item.text)
        else:
            tables.append(item)
    return one_line(" ".join(parts)), tables
