"""E-mail parser: subject as title, header metadata, text/plain preferred, attachments listed."""

from __future__ import annotations

import pytest

from ingest.parsers import eml, parse_document
from ingest.types import UnsupportedDocument


def test_multipart_mail_prefers_plain_text_and_lists_attachments(load) -> None:
    doc = parse_document(load("mail.eml"), "mail.eml")
    assert doc.mime_type == "message/rfc822"
    assert doc.title == "Maintenance window on Saturday – ünïcode"
    assert doc.metadata["from"] == "Alice Example <alice@example.com>"
    assert doc.metadata["to"] == "ops@example.com"
    assert doc.metadata["date"] == "2024-05-14T09:30:00+02:00"
    assert doc.metadata["attachments"] == ["runbook.pdf"]
    texts = [b.text for b in doc.blocks]
    assert texts[0].startswith("Subject: Maintenance window on Saturday")
    assert "From: Alice Example <alice@example.com>" in texts[0]
    assert texts[1:] == ["Hello team,", "The database upgrade starts at 06:00.\nExpect 30 minutes."]
    assert "HTML body" not in doc.text  # the HTML alternative is not read twice
    assert "Section 1" not in doc.text  # the attached PDF is not parsed


def test_html_only_mail_goes_through_the_html_parser(load) -> None:
    doc = eml.parse(load("html_only.eml"))
    assert doc.blocks[-1].text == "The HTML body says: database upgrade at 06:00."
    assert "Mail nav" not in doc.text
    assert "attachments" not in doc.metadata


def test_mail_without_subject_or_body_is_refused() -> None:
    with pytest.raises(UnsupportedDocument, match="no text found"):
        eml.parse(b"From: a@example.com\nTo: b@example.com\nMIME-Version: 1.0\n\n   \n")
