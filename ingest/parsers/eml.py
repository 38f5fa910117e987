"""E-mail (RFC 822 / MIME, .eml) via the stdlib `email` package with policy.default.

policy.default decodes encoded-word headers (=?utf-8?...?=) and part charsets for us.
The body prefers the text/plain alternative; an HTML-only mail goes through the HTML
parser. A first block "Subject/From/To/Date" makes the sender and date searchable.
Attachments are listed by name in metadata["attachments"], not parsed: a mail with a
PDF attached is two documents, and the attachment can be ingested on its own.
"""

from __future__ import annotations

from contextlib import suppress
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import parsedate_to_datetime

from ingest.parsers.base import one_line, reading, require_text, split_paragraphs
from ingest.parsers.html import parse_html_text
from ingest.sniff import EMAIL
from ingest.types import Block, ParsedDocument, UnsupportedDocument

_FIELDS = ("subject", "from", "to", "cc", "date")


def parse(data: bytes, filename: str | None = None) -> ParsedDocument:
    """Parse an .eml message; UnsupportedDocument if it has neither subject nor body text."""
    with reading("e-mail"):
        message = BytesParser(policy=policy.default).parsebytes(data)
        metadata: dict[str, object] = {}
        for field in _FIELDS:
            value = one_line(str(message.get(field, "") or ""))
            if value:
                metadata[field] = value
        if "date" in metadata:
            with suppress(TypeError, ValueError):  # keep the raw header when it is not a date
                metadata["date"] = parsedate_to_datetime(str(metadata["date"])).isoformat()
        attachments = _attachment_names(message)
        if attachments:
            metadata["attachments"] = attachments
        body = _body_blocks(message)
    subject = str(metadata.get("subject", "")) or None
    if not body and not subject:
        raise UnsupportedDocument("no text found")
    header = "\n".join(f"{f.capitalize()}: {metadata[f]}" for f in _FIELDS if f in metadata)
    blocks = ([Block(header)] if header else []) + body
    return ParsedDocument(EMAIL, require_text(blocks), title=subject, metadata=metadata)


def _body_blocks(message: EmailMessage) -> list[Block]:
    part = message.get_body(preferencelist=("plain", "html"))
    if part is None:
        return []
    try:
        content = part.get_content()
    except (LookupError, UnicodeError):  # unknown or lying charset: decode leniently
        content = (part.get_payload(decode=True) or b"").decode("utf-8", "replace")
    if not isinstance(content, str):
        return []
    if part.get_content_subtype() == "html":
        try:
            return parse_html_text(content).blocks
        except UnsupportedDocument:
            return []
    return [Block(p) for p in split_paragraphs(content)]


def _attachment_names(message: EmailMessage) -> list[str]:
    names = []
    for part in message.walk():
        if part.is_multipart():
            continue
        name = part.get_filename()
        if name and (part.is_attachment() or part.get_content_maintype() not in ("text", "multipart")):
            names.append(one_line(name))
        elif part.is_attachment():
            names.append(f"unnamed {part.get_content_type()} attachment")
    return names
