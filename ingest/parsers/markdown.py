"""Markdown via markdown-it-py's token stream (CommonMark + GFM tables and strikethrough).

A real CommonMark parser, rather than regexes, gets the edge cases right: '#' inside
fenced code is not a heading, setext headings are headings, lists nest. The heading
tree becomes each block's heading path; paragraphs, list items, code blocks and
table rows (as "cell | cell") become blocks; raw HTML blocks contribute their text.
YAML front matter is stripped (and its `title:` used); otherwise the title is the
first h1.
"""

from __future__ import annotations

import re

from bs4 import BeautifulSoup
from markdown_it import MarkdownIt
from markdown_it.token import Token

from ingest.parsers.base import HeadingStack, clean, clean_code, one_line, reading, require_text
from ingest.sniff import MARKDOWN, decode_text
from ingest.types import Block, ParsedDocument

_MD = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])
_FRONT_MATTER = re.compile(r"\A\ufeff?---[ \t]*\n(.*?)\n(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.S)
_FM_TITLE = re.compile(r"^title:[ \t]*[\"']?(.*?)[\"']?[ \t]*$", re.M)


def parse(data: bytes, filename: str | None = None) -> ParsedDocument:
    """Decode and parse Markdown."""
    return parse_text(decode_text(data))


def parse_text(text: str) -> ParsedDocument:
    """Parse already-decoded Markdown."""
    title: str | None = None
    if fm := _FRONT_MATTER.match(text):
        text = text[fm.end() :]
        if t := _FM_TITLE.search(fm.group(1)):
            title = one_line(t.group(1)) or None
    with reading("Markdown"):
        tokens = _MD.parse(text)
        blocks, first_h1 = _blocks(tokens)
    return ParsedDocument(MARKDOWN, require_text(blocks), title=title or first_h1)


def _blocks(tokens: list[Token]) -> tuple[list[Block], str | None]:
    headings = HeadingStack()
    blocks: list[Block] = []
    first_h1: str | None = None
    heading_level: int | None = None
    row: list[str] | None = None
    for token in tokens:
        kind = token.type
        if kind == "heading_open":
            heading_level = int(token.tag[1])
        elif kind == "tr_open":
            row = []
        elif kind == "tr_close" and row is not None:
            if any(row):
                blocks.append(Block(" | ".join(row).strip(" |"), heading_path=headings.path))
            row = None
        elif kind == "inline":
            text = _inline_text(token)
            if heading_level is not None:
                text = one_line(text)
                if text:
                    headings.push(heading_level, text)
                    first_h1 = first_h1 or (text if heading_level == 1 else None)
                    blocks.append(Block(text, heading_path=headings.path))
                heading_level = None
            elif row is not None:
                row.append(one_line(text))
            elif text := clean(text):
                blocks.append(Block(text, heading_path=headings.path))
        elif kind in ("fence", "code_block"):
            if (text := clean_code(token.content)).strip():
                blocks.append(Block(text, heading_path=headings.path))
        elif kind == "html_block" and (text := one_line(BeautifulSoup(token.content, "lxml").get_text(" "))):
            blocks.append(Block(text, heading_path=headings.path))
    return blocks, first_h1


def _inline_text(token: Token) -> str:
    """Plain text of an inline token: markup dropped, image alt text kept, breaks as spaces/newlines."""
    parts: list[str] = []
    for child in token.children or []:
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type == "softbreak":
            parts.append(" ")
        elif child.type == "hardbreak":
            parts.append("\n")
        elif child.type == "image":
            parts.append(_inline_text(child))
    return "".join(parts)
