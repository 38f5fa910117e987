"""Damaged input of every format must surface as UnsupportedDocument, never a library exception."""

from __future__ import annotations

import random

import pytest

from ingest.parsers import SUPPORTED_MIME_TYPES, parse_document
from ingest.types import UnsupportedDocument

NAMES = [
    "report.pdf", "handbook.docx", "deck.pptx", "stock.xlsx", "page.html",
    "guide.md", "utf16.txt", "people.csv", "mail.eml",
]  # fmt: skip


def test_every_fixture_parses_to_a_supported_type(docs) -> None:
    for name in NAMES:
        doc = parse_document(docs[name].read_bytes(), name)
        assert doc.mime_type in SUPPORTED_MIME_TYPES
        assert doc.blocks and all(b.text.strip() == b.text and b.text for b in doc.blocks)


@pytest.mark.parametrize("name", NAMES)
def test_truncated_and_mutated_input_raises_only_unsupported_document(docs, name: str) -> None:
    data = docs[name].read_bytes()
    rng = random.Random(name)
    variants = [data[: rng.randrange(1, len(data))] for _ in range(15)]
    for _ in range(30):
        mutated = bytearray(data)
        for _ in range(rng.choice([1, 5, 40])):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        variants.append(bytes(mutated))
    for variant in variants:
        try:
            parse_document(variant, name)
        except UnsupportedDocument as exc:
            assert str(exc)  # a message the user can read
