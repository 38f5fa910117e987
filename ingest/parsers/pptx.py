"""PPTX via python-pptx: one page per slide, the slide title as heading, speaker notes labelled.

python-pptx is the standard reader for PowerPoint's Open XML format. Page = slide
number so citations can say "slide 4". Shapes are read top-to-bottom, left-to-right
(their XML order is z-order, not reading order); groups are opened; tables become one
block per row. Speaker notes often hold the actual explanation, so they are kept as a
block starting with "Speaker notes:".
"""

from __future__ import annotations

import io

from pptx import Presentation
from pptx.shapes.base import BaseShape

from ingest.parsers.base import check_zip, clean, one_line, reading, require_text
from ingest.sniff import PPTX
from ingest.types import Block, ParsedDocument


def parse(data: bytes, filename: str | None = None) -> ParsedDocument:
    """Parse a PPTX; UnsupportedDocument if it is damaged or has no text."""
    check_zip(data, "PPTX")
    with reading("PPTX"):
        presentation = Presentation(io.BytesIO(data))
        title = one_line(presentation.core_properties.title or "") or None
        blocks: list[Block] = []
        for number, slide in enumerate(presentation.slides, start=1):
            title_shape = slide.shapes.title
            slide_title = one_line(title_shape.text_frame.text) if title_shape is not None else ""
            heading = (slide_title,) if slide_title else ()
            title = title or slide_title or None
            if slide_title:
                blocks.append(Block(slide_title, page=number, heading_path=heading))
            for shape in _reading_order(slide.shapes):
                if title_shape is not None and shape.shape_id == title_shape.shape_id:
                    continue
                blocks.extend(Block(t, page=number, heading_path=heading) for t in _shape_texts(shape))
            if slide.has_notes_slide and slide.notes_slide.notes_text_frame is not None:
                notes = clean(slide.notes_slide.notes_text_frame.text or "")
                if notes:
                    blocks.append(Block(f"Speaker notes: {notes}", page=number, heading_path=heading))
        metadata: dict[str, object] = {"slide_count": len(presentation.slides)}
    return ParsedDocument(PPTX, require_text(blocks), title=title, metadata=metadata)


def _reading_order(shapes) -> list[BaseShape]:  # noqa: ANN001 - SlideShapes / GroupShapes
    return sorted(shapes, key=lambda s: ((s.top or 0) // 50_000, s.left or 0))  # ~1.4 mm rows


def _shape_texts(shape: BaseShape) -> list[str]:
    """Text of one shape: a text frame as one block (lines kept), a table as one block per row."""
    out: list[str] = []
    if getattr(shape, "has_text_frame", False):
        text = clean(shape.text_frame.text)
        if text:
            out.append(text)
    if getattr(shape, "has_table", False):
        for row in shape.table.rows:
            cells = [one_line(cell.text) for cell in row.cells if not cell.is_spanned]
            if any(cells):
                out.append(" | ".join(cells).strip(" |"))
    if shape.shape_type is not None and hasattr(shape, "shapes"):  # group shape
        for child in _reading_order(shape.shapes):
            out.extend(_shape_texts(child))
    return out
