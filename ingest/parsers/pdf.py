"""PDF via pypdfium2 (PDFium, the engine in Chrome): text per page, 1-based page numbers.

PDFium is an order of magnitude faster than pure-Python pypdf on long documents and
copes with the malformed PDFs real offices produce. PDF text comes as visual lines,
so lines are re-flowed into paragraphs: a block ends at a vertical gap larger than
the usual line pitch, a font-size change, a bullet, or a line clearly shorter than
the page's full lines (the last line of a paragraph); hyphenated line ends are
re-joined. Sentences therefore stay within one block. No OCR: a PDF without a text
layer (a scan) is refused with a message that says so.
"""

from __future__ import annotations

import re
import statistics
import threading
from dataclasses import dataclass

import pypdfium2 as pdfium

from ingest.parsers.base import clean, reading, require_text
from ingest.sniff import PDF
from ingest.types import Block, ParsedDocument, UnsupportedDocument

_PDFIUM_LOCK = threading.Lock()  # PDFium is not thread-safe; API threads and workers share the process
_BULLET = re.compile(r"^(?:[\u2022\u25aa\u25cf\u2023\u2043\u00b7*\u2013-]\s|\(?\d{1,3}[.)]\s|\(?[a-z][.)]\s)")
_SOFT_BREAK = ("\x02", "\ufffe", "\u00ad")  # PDFium's markers for a hyphen it removed at a line end
_WORD_HYPHEN = re.compile(r"[^\W\d_]-$")
_PDF_DATE = re.compile(r"D:(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?")
_DATE_DEFAULTS = ("", "01", "01", "00", "00", "00")


@dataclass(slots=True)
class _Line:
    text: str
    bottom: float | None = None  # baseline-ish y (PDF y grows upwards)
    height: float | None = None


def parse(data: bytes, filename: str | None = None) -> ParsedDocument:
    """Parse a PDF; UnsupportedDocument if encrypted, damaged, or without a text layer."""
    with _PDFIUM_LOCK:
        return _parse(data)


def _parse(data: bytes) -> ParsedDocument:
    try:
        pdf = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        if "password" in str(exc).lower():
            raise UnsupportedDocument(
                "the PDF is encrypted (password protected); upload a copy without a password"
            ) from exc
        raise UnsupportedDocument("the PDF is damaged or truncated and cannot be opened") from exc
    blocks: list[Block] = []
    with reading("PDF"):
        try:
            meta = {k: v.strip() for k, v in pdf.get_metadata_dict().items() if v and v.strip()}
            pages = len(pdf)
            for index in range(pages):
                page = pdf[index]
                try:
                    textpage = page.get_textpage()
                    try:
                        blocks.extend(Block(p, page=index + 1) for p in _paragraphs(_lines(textpage)))
                    finally:
                        textpage.close()
                finally:
                    page.close()
        finally:
            pdf.close()
    if pages == 0:
        raise UnsupportedDocument("the PDF has no pages")
    if not any(any(ch.isalnum() for ch in b.text) for b in blocks):
        raise UnsupportedDocument(
            "the PDF has no text layer (it looks scanned); OCR is not supported, so no text can be read"
        )
    metadata: dict[str, object] = {"page_count": pages}
    for key in ("Author", "Subject", "Creator", "Producer"):
        if key in meta:
            metadata[key.lower()] = meta[key]
    if m := _PDF_DATE.match(meta.get("CreationDate", "")):
        parts = (g or d for g, d in zip(m.groups(), _DATE_DEFAULTS, strict=True))
        metadata["created"] = "{}-{}-{}T{}:{}:{}".format(*parts)
    with_text = {b.page for b in blocks}
    if len(with_text) < pages:
        metadata["pages_without_text"] = pages - len(with_text)
    return ParsedDocument(PDF, require_text(blocks), title=meta.get("Title"), metadata=metadata)


def _lines(textpage: pdfium.PdfTextPage) -> list[_Line]:
    """The page's text lines, with their vertical position when PDFium can tell us."""
    text = textpage.get_text_range()
    geometry = len(text) == textpage.count_chars()  # char i of the text is char i of the page
    lines: list[_Line] = []
    for m in re.finditer(r"[^\r\n]+", text):
        raw = m.group().strip(" \t")
        if not raw.strip():
            continue
        line = _Line(raw)
        if geometry:
            first = m.start() + (len(m.group()) - len(m.group().lstrip()))
            left, bottom, right, top = textpage.get_charbox(first, loose=True)  # font box, not glyph
            if top > bottom:
                line.bottom, line.height = bottom, top - bottom
        lines.append(line)
    return lines


def _paragraphs(lines: list[_Line]) -> list[str]:
    """Re-flow visual lines into paragraphs (see the module docstring for the rules)."""
    if not lines:
        return []
    full = sorted(len(ln.text) for ln in lines)[int(0.9 * (len(lines) - 1))]
    pitches = [
        a.bottom - b.bottom
        for a, b in zip(lines, lines[1:], strict=False)
        if a.bottom is not None and b.bottom is not None and a.bottom > b.bottom
    ]
    pitch = statistics.median(pitches) if pitches else None
    paragraphs: list[str] = []
    current = [lines[0]]
    for prev, line in zip(lines, lines[1:], strict=False):
        if _breaks(prev, line, full, pitch):
            paragraphs.append(_join(current))
            current = []
        current.append(line)
    paragraphs.append(_join(current))
    return [p for p in paragraphs if p]


def _breaks(prev: _Line, line: _Line, full: int, pitch: float | None) -> bool:
    if _BULLET.match(line.text):
        return True
    ends_hyphenated = prev.text.endswith(_SOFT_BREAK) or bool(_WORD_HYPHEN.search(prev.text))
    if not ends_hyphenated and full >= 30 and len(prev.text) < 0.7 * full:
        return True  # a short line ends its paragraph (or is a heading / list item)
    if pitch and prev.bottom is not None and line.bottom is not None and prev.height and line.height:
        gap = prev.bottom - line.bottom
        if gap <= 0 or gap > 1.45 * pitch:
            return True  # new column/cell, or a paragraph gap
        if abs(prev.height - line.height) > 0.25 * max(prev.height, line.height):
            return True  # font size changed: heading vs body
    return False


def _join(lines: list[_Line]) -> str:
    """Join wrapped lines, undoing end-of-line hyphenation ("configu-" + "ration")."""
    out = ""
    for line in lines:
        text = line.text
        if not out:
            out = text
        elif out.endswith(_SOFT_BREAK) or (_WORD_HYPHEN.search(out) and text[:1].islower()):
            out = out[:-1] + text
        else:
            out += " " + text
    return " ".join(clean(out).split())
