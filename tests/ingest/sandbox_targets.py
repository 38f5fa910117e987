"""Parsers that misbehave on purpose, run by ingest.sandbox in its child process (tests only)."""

from __future__ import annotations

import os
import signal

from ingest.types import ParsedDocument


def hang(data: bytes, filename: str | None) -> ParsedDocument:
    while True:  # a parser stuck in a loop on a crafted file
        pass


def hog(data: bytes, filename: str | None) -> ParsedDocument:
    chunks = []
    while True:  # a decompression bomb the library did not catch
        chunks.append(bytearray(64 << 20))


def segfault(data: bytes, filename: str | None) -> ParsedDocument:
    os.kill(os.getpid(), signal.SIGSEGV)  # a C library crashing the interpreter
    raise AssertionError("unreachable")
