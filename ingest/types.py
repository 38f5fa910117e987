"""Plain data passed between the ingestion stages (parse -> chunk -> embed).

Kept free of any database or web type so parsers and the chunker can be tested
and reused (Celery workers, CLI, API) without the rest of kb.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class UnsupportedDocument(Exception):
    """The bytes are not a document kb can read (wrong type, corrupt, encrypted, empty).

    The message is shown to users as-is (API 415, CLI error list, job errors), so it
    must say what is wrong with *their* file in plain words.
    """


@dataclass(frozen=True, slots=True)
class Block:
    """One structural unit of a document: a paragraph, a table row, a slide's text.

    `page` is 1-based for paged formats (PDF pages, PPTX slides, XLSX sheets as
    sheet number) and None otherwise. `heading_path` is the chain of headings the
    block sits under, outermost first, e.g. ("Installation", "Linux").
    """

    text: str
    page: int | None = None
    heading_path: tuple[str, ...] = ()


@dataclass(slots=True)
class ParsedDocument:
    """What a parser returns: the blocks in reading order plus what it learned."""

    mime_type: str
    blocks: list[Block]
    title: str | None = None
    metadata: dict[str, object] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """The document's plain text; chunk offsets index into this string."""
        return BLOCK_SEPARATOR.join(b.text for b in self.blocks)


BLOCK_SEPARATOR = "\n\n"


@dataclass(slots=True)
class ChunkDraft:
    """A chunk before it has an id: text plus everything a citation needs.

    `start`/`end` are character offsets into `ParsedDocument.text`, so
    `doc.text[start:end] == text` always holds. `embed_text` is what the
    embedder sees (heading path prepended); its token count is `token_count`.
    """

    ordinal: int
    text: str
    start: int
    end: int
    page: int | None
    heading_path: tuple[str, ...]
    token_count: int
    embed_text: str
