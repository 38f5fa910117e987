"""Helpers every parser shares: whitespace clean-up, the heading stack, the "no text"
check, and the wrapper that turns library exceptions into UnsupportedDocument.

They live in one place so all formats agree on what a block looks like (single
spaces, no control characters, no empty blocks) and on what users are told when a
file cannot be read.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager

from ingest.types import Block, UnsupportedDocument

_SPACES = re.compile(r"[ \t\f\v\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]+")
_INVISIBLE = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f\u00ad\u200b-\u200d\u2060\ufeff\ufffe\uffff]")
_BLANK_LINE = re.compile(r"\n[ \t\f\v\u00a0]*\n")
MAX_UNZIPPED_BYTES = 1 << 30  # refuse zip bombs before a library inflates them


def clean(text: str) -> str:
    """Collapse runs of spaces, drop control/zero-width characters, trim lines; keeps line breaks."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n").replace("\u2029", "\n")
    lines = (_SPACES.sub(" ", line).strip() for line in _INVISIBLE.sub("", text).split("\n"))
    return "\n".join(line for line in lines if line)


def clean_code(text: str) -> str:
    """Like clean() but keeps indentation and inner blank lines: code and <pre> need them."""
    text = _INVISIBLE.sub("", text.replace("\r\n", "\n").replace("\r", "\n").expandtabs(4))
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")


def one_line(text: str) -> str:
    """All whitespace (line breaks included) collapsed to single spaces: for cells and headings."""
    return " ".join(clean(text).split())


def split_paragraphs(text: str) -> list[str]:
    """Paragraphs separated by blank lines, each cleaned; empty ones dropped."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return [p for p in (clean(part) for part in _BLANK_LINE.split(text)) if p]


class HeadingStack:
    """The chain of open headings: a level-n heading closes every heading at level >= n."""

    def __init__(self) -> None:
        self._open: list[tuple[int, str]] = []

    def push(self, level: int, text: str) -> tuple[str, ...]:
        self._open = [(lvl, h) for lvl, h in self._open if lvl < level] + [(level, text)]
        return self.path

    @property
    def path(self) -> tuple[str, ...]:
        return tuple(h for _, h in self._open)


def header_row_text(cells: list[str], header: list[str]) -> str:
    """A table row as "Header: value; ..." so a chunk far from the header row still says
    what its values mean (CSV and XLSX rows)."""
    pairs = []
    for i, value in enumerate(cells):
        if value:
            name = header[i] if i < len(header) and header[i] else f"Column {i + 1}"
            pairs.append(f"{name}: {value}")
    return "; ".join(pairs)


def require_text(blocks: list[Block]) -> list[Block]:
    """Drop empty blocks; a document with nothing left is refused rather than stored empty."""
    blocks = [b for b in blocks if b.text.strip()]
    if not blocks:
        raise UnsupportedDocument("no text found")
    return blocks


def check_zip(data: bytes, kind: str) -> None:
    """Office files are ZIPs: refuse damaged ones and ones that inflate absurdly (zip bombs)."""
    with reading(kind), zipfile.ZipFile(io.BytesIO(data)) as zf:
        total = sum(info.file_size for info in zf.infolist())
    if total > MAX_UNZIPPED_BYTES:
        raise UnsupportedDocument(f"the {kind} file is too large once unpacked ({total >> 20} MiB)")


@contextmanager
def reading(kind: str) -> Iterator[None]:
    """Any library exception becomes UnsupportedDocument naming the format.

    Parsing libraries raise everything from KeyError to zlib.error and lxml errors on
    damaged files; callers must only ever see UnsupportedDocument. MemoryError is left
    alone: it says the machine is short of memory, not that the file is bad.
    """
    try:
        yield
    except (UnsupportedDocument, MemoryError):
        raise
    except Exception as exc:
        detail = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        raise UnsupportedDocument(f"the {kind} file is damaged or unreadable ({detail[:160]})") from exc
