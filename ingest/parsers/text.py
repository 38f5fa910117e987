"""Plain text: decoded by charset-normalizer (via ingest.sniff.decode_text), split on blank lines.

charset-normalizer rather than chardet: it is pure Python, maintained, and scores
decodings by how "natural" the result reads, which copes with cp1252/latin-1 and
UTF-16 files that users export from old tools. Plain text has no title.
"""

from __future__ import annotations

from ingest.parsers.base import require_text, split_paragraphs
from ingest.sniff import TEXT, decode_text
from ingest.types import Block, ParsedDocument


def parse_text(text: str) -> ParsedDocument:
    """Parse already-decoded text (parse_document decodes once while sniffing)."""
    return ParsedDocument(TEXT, require_text([Block(p) for p in split_paragraphs(text)]))


def parse(data: bytes, filename: str | None = None) -> ParsedDocument:
    """Decode and parse; UnsupportedDocument for binary data or no text."""
    return parse_text(decode_text(data))
