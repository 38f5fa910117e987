"""Document parsers, one module per format, chosen by sniffing the content (ingest.sniff).

`parse_document` is the only entry point the pipeline needs: it sniffs the type from
the bytes (the filename only settles ties among text formats), decodes text once, and
dispatches. Every failure reaches the caller as UnsupportedDocument with a message
meant for the user.
"""

from __future__ import annotations

from collections.abc import Callable

from ingest import sniff
from ingest.parsers import csv, docx, eml, html, markdown, pdf, pptx, text, xlsx
from ingest.types import ParsedDocument

_BINARY: dict[str, Callable[[bytes, str | None], ParsedDocument]] = {
    sniff.PDF: pdf.parse,
    sniff.DOCX: docx.parse,
    sniff.PPTX: pptx.parse,
    sniff.XLSX: xlsx.parse,
    sniff.EMAIL: eml.parse,  # the email package wants bytes: each MIME part has its own charset
}
_TEXT: dict[str, Callable[[str, str | None], ParsedDocument]] = {
    sniff.HTML: lambda t, _name: html.parse_html_text(t),
    sniff.MARKDOWN: lambda t, _name: markdown.parse_text(t),
    sniff.CSV: csv.parse_text,
    sniff.TEXT: lambda t, _name: text.parse_text(t),
}
SUPPORTED_MIME_TYPES: frozenset[str] = frozenset(_BINARY) | frozenset(_TEXT)

__all__ = ["SUPPORTED_MIME_TYPES", "parse_document"]


def parse_document(data: bytes, filename: str | None = None) -> ParsedDocument:
    """Sniff, then parse; raises UnsupportedDocument with a user-facing reason."""
    mime, decoded = sniff.sniff(data, filename)
    if mime == sniff.HTML:
        return html.parse(data, filename)  # honours <meta charset> over the statistical guess
    if decoded is not None and mime in _TEXT:
        return _TEXT[mime](decoded, filename)
    return _BINARY[mime](data, filename)
