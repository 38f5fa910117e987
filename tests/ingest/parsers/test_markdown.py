"""Markdown parser: heading tree, lists, code, tables, front matter."""

from __future__ import annotations

import pytest

from ingest.parsers import markdown, parse_document
from ingest.types import UnsupportedDocument


def test_heading_tree_and_blocks(load) -> None:
    doc = parse_document(load("guide.md"), "guide.md")
    assert doc.mime_type == "text/markdown"
    assert doc.title == "Operations Guide"
    assert [(b.text, b.heading_path) for b in doc.blocks] == [
        ("Operations Guide", ("Operations Guide",)),
        (
            "Intro paragraph with a link and bold text that wraps onto a second line.",
            ("Operations Guide",),
        ),
        ("Backups", ("Operations Guide", "Backups")),
        ("Daily snapshots at 02:00", ("Operations Guide", "Backups")),
        ("Weekly full backups", ("Operations Guide", "Backups")),
        ("kept for 90 days", ("Operations Guide", "Backups")),
        ("# this is a comment, not a heading\nrestic backup /data", ("Operations Guide", "Backups")),
        ("Restore", ("Operations Guide", "Backups", "Restore")),
        ("Step | Command", ("Operations Guide", "Backups", "Restore")),
        ("1 | restic restore latest", ("Operations Guide", "Backups", "Restore")),
        ("Monitoring", ("Operations Guide", "Monitoring")),
        ("Watch the disk usage graph.", ("Operations Guide", "Monitoring")),
    ]


def test_front_matter_is_stripped_and_its_title_used() -> None:
    doc = markdown.parse(b'---\ntitle: "Runbook"\ntags: [ops]\n---\n\nSome *text* here.\n')
    assert doc.title == "Runbook"
    assert [b.text for b in doc.blocks] == ["Some text here."]


def test_code_indentation_is_kept() -> None:
    doc = markdown.parse(b"# Code\n\n```python\ndef f():\n    return 1\n```\n")
    assert doc.blocks[-1].text == "def f():\n    return 1"


def test_markdown_without_text_is_refused() -> None:
    with pytest.raises(UnsupportedDocument, match="no text found"):
        markdown.parse(b"---\n\n***\n")
