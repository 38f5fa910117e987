"""HTML via BeautifulSoup over lxml: the page's main text with its heading structure.

lxml is the fastest and most forgiving HTML parser BeautifulSoup can drive (broken
markup from CMS exports is the norm). Page chrome is removed before reading:
script/style/nav/aside/form/noscript/template (and svg/iframe/button), role=navigation,
hidden elements, and page-level header/footer (a <header> inside an <article> holds
the article's title, so it is kept). When the page marks its content with <main>,
or with a single <article>, only that is read. h1-h6 build the heading path; text
containers (p, li, pre, blockquote, dd, ...) become blocks, a table row becomes
"cell | cell", and loose text inside divs is not lost.
"""

from __future__ import annotations

import re

from bs4 import BeautifulSoup, Comment, NavigableString, Tag
from bs4.element import CData, Declaration, Doctype, ProcessingInstruction

from ingest.parsers.base import HeadingStack, clean, clean_code, one_line, reading, require_text
from ingest.sniff import HTML, decode_text
from ingest.types import Block, ParsedDocument

_DROP = ["script", "style", "nav", "aside", "form", "noscript", "template", "svg", "iframe", "button"]
_CONTENT = ["article", "main", "section"]
_HEADINGS = {f"h{i}": i for i in range(1, 7)}
_BLOCKS = {
    "address", "article", "blockquote", "body", "caption", "dd", "details", "dialog", "div", "dl", "dt",
    "fieldset", "figcaption", "figure", "header", "footer", "hr", "li", "main", "ol", "p", "section",
    "summary", "table", "tbody", "thead", "tfoot", "ul", "center",
}  # fmt: skip
_SKIP_STRINGS = (Comment, CData, Declaration, Doctype, ProcessingInstruction)
_META_CHARSET = re.compile(rb"<meta[^>]+charset\s*=\s*[\"']?([\w-]+)", re.I)


def parse(data: bytes, filename: str | None = None) -> ParsedDocument:
    """Decode (honouring <meta charset> when it is right) and parse."""
    declared = _META_CHARSET.search(data[:4096])
    if declared:
        try:
            return parse_html_text(data.decode(declared.group(1).decode("ascii")))
        except (LookupError, UnicodeDecodeError):
            pass
    return parse_html_text(decode_text(data))


def parse_html_text(markup: str) -> ParsedDocument:
    """Parse already-decoded HTML (also used for HTML-only e-mails)."""
    with reading("HTML"):
        soup = BeautifulSoup(markup, "lxml")
        title_tag = soup.find("title")
        title = one_line(title_tag.get_text(" ")) if title_tag else ""
        _strip_chrome(soup)
        root = _content_root(soup)
        reader = _Reader()
        reader.walk(root)
        reader.flush()
        first_h1 = soup.find("h1")
        title = title or (one_line(first_h1.get_text(" ")) if first_h1 else "")
    return ParsedDocument(HTML, require_text(reader.blocks), title=title or None)


def _strip_chrome(soup: BeautifulSoup) -> None:
    doomed = soup.find_all(_DROP) + soup.find_all(attrs={"role": "navigation"})
    doomed += soup.find_all(attrs={"hidden": True}) + soup.find_all(attrs={"aria-hidden": "true"})
    page_level = [t for t in soup.find_all(["header", "footer"]) if not t.find_parent(_CONTENT)]
    for tag in doomed + page_level:
        if not tag.decomposed:
            tag.decompose()


def _content_root(soup: BeautifulSoup) -> Tag:
    main = soup.find("main") or soup.find(attrs={"role": "main"})
    if main is not None and main.get_text(strip=True):
        return main
    articles = [a for a in soup.find_all("article") if a.get_text(strip=True)]
    if len(articles) == 1:
        return articles[0]
    return soup.body or soup


class _Reader:
    """Walks the tree in document order, cutting blocks at block-level element boundaries."""

    def __init__(self) -> None:
        self.blocks: list[Block] = []
        self.headings = HeadingStack()
        self._buffer: list[str] = []

    def flush(self) -> None:
        text = clean("".join(self._buffer))
        self._buffer = []
        if text:
            self.blocks.append(Block(" ".join(text.split()), heading_path=self.headings.path))

    def walk(self, node: Tag) -> None:
        for child in node.children:
            if isinstance(child, NavigableString):
                if not isinstance(child, _SKIP_STRINGS):
                    self._buffer.append(str(child))
            elif isinstance(child, Tag):
                self._element(child)

    def _element(self, tag: Tag) -> None:
        name = tag.name
        if name in _HEADINGS:
            self.flush()
            text = one_line(tag.get_text(" "))
            if text:
                self.headings.push(_HEADINGS[name], text)
                self.blocks.append(Block(text, heading_path=self.headings.path))
        elif name == "pre":
            self.flush()
            text = clean_code(tag.get_text())
            if text.strip():
                self.blocks.append(Block(text, heading_path=self.headings.path))
        elif name == "tr":
            self.flush()
            cells = [one_line(c.get_text(" ")) for c in tag.find_all(["td", "th"], recursive=False)]
            if any(cells):
                self.blocks.append(Block(" | ".join(cells).strip(" |"), heading_path=self.headings.path))
        elif name == "br":
            self._buffer.append("\n")
        elif name in _BLOCKS:
            self.flush()
            self.walk(tag)
            self.flush()
        else:  # inline element (a, span, em, td outside a row, ...)
            self.walk(tag)
