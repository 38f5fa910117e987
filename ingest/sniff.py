"""Decide what a file is from its bytes, not its name.

Uploads arrive with names that lie (``report.txt`` that is really a PDF, ``data``
without any extension, a JPEG renamed ``.md``), so the type comes from content:
magic numbers for binary containers (PDF, ZIP-based Office files, OLE2), then a
charset-normalizer text check that refuses binary data, then cheap structural
hints to tell e-mail, HTML, CSV, Markdown and plain text apart. The filename may
only break ties *among text formats*; it never turns binary into text.

``decode_text`` lives here (not in the parsers) because sniffing must decode to
tell text from binary, and the text parsers reuse the exact same decision.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
import zipfile

from charset_normalizer import from_bytes

from ingest.types import UnsupportedDocument

PDF, DOCX, PPTX, XLSX = (
    "application/pdf",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
)
EMAIL, HTML, CSV, MARKDOWN, TEXT = "message/rfc822", "text/html", "text/csv", "text/markdown", "text/plain"

_OLE2 = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_BINARY_MAGIC = [  # a clearer message than "binary data" for the usual suspects
    ((b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"II*\x00", b"MM\x00*"), "an image (OCR is not supported)"),
    ((b"\x1f\x8b", b"7z\xbc\xaf", b"Rar!"), "a compressed archive"),
]
_BOMS = [  # longest first: the UTF-32-LE BOM starts with the UTF-16-LE one
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
]
_NOT_TEXT = "the file is not a supported document (it looks like binary data, not text)"
_SAMPLE = 64 * 1024
_BAD_CHARS = re.compile(r"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f\x7f-\x9f\ufffd]")  # controls bar \t\n\f\r ESC

_HEADER_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9-]*):[ \t]*\S?")
_MAIL_KEYS = {"from", "to", "cc", "subject", "date", "mime-version", "message-id", "received", "return-path"}
_MAIL_STRONG = {"from", "subject", "date", "mime-version", "message-id", "received"}
_HTML_START = re.compile(
    r"^(?:<!--.*?-->\s*)*(?:<\?xml[^>]*>\s*)?(?:<!doctype\s+html|<html[\s>]|<head[\s>])", re.I | re.S
)
_HTML_TAG = re.compile(
    r"^(?:<!--.*?-->\s*)*<(?:body|div|p|h[1-6]|table|ul|ol|section|article|main|span|a|br|meta|title|link)[\s>/]",
    re.I | re.S,
)
_MD_STRONG = re.compile(r"^(?:#{1,6}[ \t]+\S|```|~~~|\s*\|?\s*:?-{3,}:?\s*\|)|\[[^\]\n]+\]\([^)\s]+\)", re.M)
_MD_WEAK = re.compile(r"^(?:\s*(?:[-*+]|\d{1,3}[.)])[ \t]+\S|>[ \t]|\*\*[^*\n]+\*\*)", re.M)
# A structured-text name beats the content guess among plain/Markdown/CSV (a .csv whose
# rows happen to contain "- " is still CSV); ".txt" says nothing beyond "text".
_HINTS = {".csv": CSV, ".tsv": CSV, ".md": MARKDOWN, ".markdown": MARKDOWN}


def sniff_mime(data: bytes, filename: str | None = None) -> str:
    """The MIME type kb will parse ``data`` as; UnsupportedDocument if it can't."""
    return sniff(data, filename)[0]


def sniff(data: bytes, filename: str | None = None) -> tuple[str, str | None]:
    """Like sniff_mime, plus the decoded text for text formats (so it is decoded once)."""
    if not data or data.isspace():
        raise UnsupportedDocument("the file is empty")
    head = data[:1024]  # slices, not the whole upload: no copies of a large file
    if head.lstrip(b" \t\r\n\xef\xbb\xbf").startswith(b"%PDF-") or (
        b"%PDF-" in head and b"\x00" in head[: head.find(b"%PDF-")]  # MacBinary-style prefix
    ):
        return PDF, None
    if data.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return _zip_kind(data), None
    if data.startswith(_OLE2):
        raise UnsupportedDocument(
            "legacy Microsoft Office files (.doc, .xls, .ppt) are not supported; "
            "open it and save it as DOCX, XLSX or PPTX, then upload again"
        )
    if head.lstrip().startswith(b"{\\rtf"):
        raise UnsupportedDocument(
            "RTF files are not supported; save it as DOCX or plain text, then upload again"
        )
    for magics, what in _BINARY_MAGIC:
        if data.startswith(magics):
            raise UnsupportedDocument(f"the file is {what}, not a supported document")
    text = decode_text(data)
    if not text.strip():
        raise UnsupportedDocument("the file is empty")
    return _text_kind(text, filename), text


def decode_text(data: bytes) -> str:
    """Decode bytes that should be text; UnsupportedDocument when they are binary.

    BOMs win, then strict UTF-8 (charset-normalizer can mislabel short UTF-8), then
    charset-normalizer's best guess. NUL bytes mean binary unless the data is
    BOM-less UTF-16 (NULs all on one byte parity). The decoded sample must not be
    more than 2% control characters / replacement characters.
    """
    text: str | None = None
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            text = _try_decode(data[len(bom) :], encoding)
            break
    else:
        sample = data[:_SAMPLE]
        if b"\x00" in sample:
            text = _try_decode(data, enc) if (enc := _bomless_utf16(sample)) else None
        else:
            text = _try_decode(data, "utf-8")
            if text is None and (encoding := _guess_encoding(data)):
                text = _try_decode(data, encoding) or data.decode(encoding, "replace")
    if text is None or _control_share(text[:_SAMPLE]) > 0.02:
        raise UnsupportedDocument(_NOT_TEXT)
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _guess_encoding(data: bytes) -> str | None:
    """charset-normalizer's best guess, but cp1252 when it reads (almost) as cleanly.

    Short Western European texts tie between the Windows code pages (cp1252 vs cp1257
    vs cp1250); cp1252 is by far the most common legacy encoding in uploads, and picking
    a Baltic code page turns "crêpes" into "crźpes".
    """
    results = from_bytes(data)
    best = results.best()
    if best is None:
        return None
    western = next((m for m in results if "cp1252" in m.could_be_from_charset), None)
    if western is not None and western is not best and western.chaos <= best.chaos + 0.05:
        return "cp1252"
    return best.encoding


def _try_decode(data: bytes, encoding: str) -> str | None:
    try:
        return data.decode(encoding)
    except (UnicodeDecodeError, LookupError):
        return None


def _bomless_utf16(sample: bytes) -> str | None:
    """'utf-16-le'/'-be' when NULs sit on one byte parity only, as in ASCII-heavy UTF-16."""
    even, odd = sample[0::2].count(0), sample[1::2].count(0)
    half = max(len(sample) // 2, 1)
    if odd > 0.3 * half and even == 0:
        return "utf-16-le"
    if even > 0.3 * half and odd == 0:
        return "utf-16-be"
    return None


def _control_share(text: str) -> float:
    return len(_BAD_CHARS.findall(text)) / len(text) if text else 0.0


def _zip_kind(data: bytes) -> str:
    """Office Open XML files are ZIPs; their member names say which application wrote them."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = zf.namelist()
            mimetype = zf.read("mimetype")[:100].decode("ascii", "replace") if "mimetype" in names else ""
    except Exception as exc:  # zipfile raises BadZipFile, OSError, EOFError, NotImplementedError...
        raise UnsupportedDocument("the file is a damaged ZIP archive (or a damaged Office file)") from exc
    for prefix, mime in (("word/", DOCX), ("ppt/", PPTX), ("xl/", XLSX)):
        if any(n.startswith(prefix) for n in names):
            return mime
    if "opendocument" in mimetype:
        raise UnsupportedDocument("OpenDocument files are not supported; save it as DOCX, XLSX or PPTX")
    raise UnsupportedDocument("ZIP archives are not supported; upload the documents inside it one by one")


def _text_kind(text: str, filename: str | None) -> str:
    """Content decides; a filename hint only settles ties (plain/Markdown/CSV, HTML fragment/Markdown)."""
    sample = text[:_SAMPLE].lstrip("\ufeff")
    start = sample.lstrip()
    if _looks_like_email(start):
        return EMAIL
    if _HTML_START.match(start):
        return HTML  # a whole HTML document
    if _MD_STRONG.search(sample):
        kind = MARKDOWN  # even when it opens with a tag, as READMEs with a centred logo do
    elif _HTML_TAG.match(start):
        kind = HTML
    elif _looks_like_csv(sample):
        kind = CSV
    else:  # list markers and bold are common in plain text too, so they count only in numbers
        kind = MARKDOWN if len(_MD_WEAK.findall(sample[:8192])) >= 3 else TEXT
    suffix = ("." + filename.rsplit(".", 1)[-1].lower()) if filename and "." in filename else ""
    hint = _HINTS.get(suffix, kind)
    return kind if kind == HTML and hint != MARKDOWN else hint  # Markdown may embed HTML


def _looks_like_email(text: str) -> bool:
    """RFC 822: the file opens with a header block, including mail-specific fields."""
    keys: set[str] = set()
    for line in text.split("\n", 60)[:60]:
        if not line.strip():
            break
        if line[0] in " \t" and keys:
            continue  # folded header continuation
        m = _HEADER_LINE.match(line)
        if not m:
            return False
        keys.add(m.group(1).lower())
    return len(keys & _MAIL_KEYS) >= 2 and bool(keys & _MAIL_STRONG)


def _looks_like_csv(text: str) -> bool:
    """csv.Sniffer finds a delimiter and 3+ rows agree on a column count of 2+."""
    lines = [ln for ln in text[:16384].split("\n")[:50] if ln.strip()]
    if len(text) > 16384 and len(lines) > 1:
        lines = lines[:-1]  # the sample may end mid-row
    if len(lines) < 3:
        return False
    sample = "\n".join(lines)
    try:
        dialect = csv.Sniffer().sniff(sample, delimiters=",;\t|")
        widths = {len(row) for row in csv.reader(io.StringIO(sample), dialect) if row}
    except csv.Error:
        return False
    return len(widths) == 1 and widths.pop() >= 2
