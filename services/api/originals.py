"""Original uploaded files, kept so a citation can open the source document at its page.

The database keeps only the extracted text, which is enough for search and re-chunking but not for
showing a PDF page. Files uploaded one by one through the documents API are therefore also stored
under `KB_DATA_DIR/originals`, named by their sha256: content addressing makes a re-upload free, and
a document row that is replaced or deleted can never point at someone else's bytes (the row names
the hash, the hash names the file). Dumps ingested as batch jobs are not copied; their documents
have no original, and the web UI shows the stored chunk text instead.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from fastapi import HTTPException
from fastapi.responses import FileResponse
from sqlalchemy import select

from services.core.config import Settings
from storage.db import Database
from storage.files import atomic_write_bytes
from storage.models import Document

_SHA256 = re.compile(r"[0-9a-f]{64}")
# Types a browser may render inline. Anything else (HTML, SVG, Office files ...) is sent as a download
# in a sandbox, so an uploaded page can never run script on kb's origin, where the API key lives.
_INLINE = {"application/pdf", "text/plain"}


def original_path(settings: Settings, sha256: str) -> Path:
    if not _SHA256.fullmatch(sha256):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return settings.data_dir / "originals" / sha256[:2] / sha256


def save_original(settings: Settings, sha256: str, data: bytes) -> None:
    """Idempotent: the name is the content hash, so an existing file already holds these bytes."""
    path = original_path(settings, sha256)
    if not path.exists():
        atomic_write_bytes(path, data)


def drop_original_if_unused(settings: Settings, db: Database, sha256: str) -> bool:
    """After a delete: remove the file unless another document (any collection) has the same bytes."""
    with db.session() as s:
        still_used = s.scalars(select(Document.id).where(Document.content_sha256 == sha256).limit(1)).first()
    if still_used is not None:
        return False
    original_path(settings, sha256).unlink(missing_ok=True)
    return True


def sweep_originals(settings: Settings, db: Database) -> int:
    """Remove kept files that no document names any more (after a collection delete or a replacement by
    ``source_id``, whose old bytes are no longer a document's); returns how many were removed."""
    root = settings.data_dir / "originals"
    if not root.is_dir():
        return 0
    with db.session() as s:
        used = set(s.scalars(select(Document.content_sha256)).all())
    removed = 0
    for path in root.glob("??/*"):
        if _SHA256.fullmatch(path.name) and path.name not in used:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def original_response(settings: Settings, document: Document) -> FileResponse:
    """The stored upload of `document`; 404 with the reason when it was never kept."""
    path = original_path(settings, document.content_sha256)
    if not path.is_file():
        raise HTTPException(
            404,
            f"the original file of document {document.id} is not stored (only files uploaded one by one "
            "are kept, not batch-job dumps); its text is available through search and citations",
        )
    filename = PurePosixPath(document.source_id).name or f"document-{document.id}"
    inline = document.mime_type in _INLINE
    headers = {"x-content-type-options": "nosniff"}
    if not inline:
        headers["content-security-policy"] = "sandbox"
    return FileResponse(
        path,
        media_type=document.mime_type,
        filename=filename,
        headers=headers,
        content_disposition_type="inline" if inline else "attachment",
    )
