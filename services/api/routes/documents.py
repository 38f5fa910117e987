"""Documents: upload (multipart file or JSON text), list, get, delete."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.responses import FileResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from ingest.pipeline import SourceFile, sha256_hex
from ingest.types import UnsupportedDocument
from services.api.auth import collection_access, require
from services.api.deps import KBDep, SessionDep
from services.api.originals import (
    drop_original_if_unused,
    original_response,
    save_original,
    sweep_originals,
)
from services.api.schemas import DocumentIngested, DocumentOut, DocumentPage, ErrorOut, TextDocumentIn
from storage.models import Document

# Ids and offsets are 64-bit in the database: a larger number is a 422, not a driver OverflowError (a 500;
# found by the schemathesis test).
MAX_ID = 2**63 - 1
DocumentId = Annotated[int, Path(ge=1, le=MAX_ID)]

# reads need any key of the collection (issue 7); writes need the ingest scope
router = APIRouter(
    prefix="/v1/collections/{name}/documents",
    tags=["documents"],
    dependencies=[Depends(collection_access(None))],
)

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "source_id": {"type": "string"},
                        "title": {"type": "string"},
                        "metadata": {"type": "string", "description": "A JSON object, as a string."},
                    },
                }
            },
            "application/json": {"schema": TextDocumentIn.model_json_schema()},
        },
    }
}


def document_out(document: Document, chunks: int) -> DocumentOut:
    return DocumentOut(
        id=document.id,
        source_id=document.source_id,
        title=document.title,
        mime_type=document.mime_type,
        content_sha256=document.content_sha256,
        version=document.version,
        status=document.status,
        error=document.error,
        size_bytes=document.size_bytes,
        chunks=chunks,
        metadata=document.metadata_ or {},
        created_at=document.created_at,
        updated_at=document.updated_at,
    )


async def _source_from_multipart(request: Request, max_bytes: int) -> SourceFile:
    form = await request.form(max_files=1, max_fields=16)
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise HTTPException(422, "invalid request: multipart field 'file' is required")
    data = await upload.read()
    if len(data) > max_bytes:
        raise HTTPException(413, f"file exceeds the upload limit of {max_bytes / 1024 / 1024:g} MB")
    metadata = _parse_metadata(form.get("metadata"))
    filename = upload.filename or None
    source_id = _text_field(form.get("source_id")) or filename or f"sha256:{sha256_hex(data)}"
    return SourceFile(data, source_id, filename, _text_field(form.get("title")), metadata)


def _text_field(value: Any) -> str | None:
    if value is None or isinstance(value, UploadFile):
        return None
    return str(value).strip() or None


def _parse_metadata(raw: Any) -> dict[str, Any]:
    if raw is None or raw == "":
        return {}
    try:
        value = json.loads(str(raw))
    except json.JSONDecodeError as exc:
        raise HTTPException(422, f"invalid request: metadata is not valid JSON ({exc.msg})") from exc
    if not isinstance(value, dict):
        raise HTTPException(422, "invalid request: metadata must be a JSON object")
    return value


async def _source_from_json(request: Request, max_bytes: int) -> SourceFile:
    try:
        body = TextDocumentIn.model_validate_json(await request.body())
    except ValidationError as exc:
        detail = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
        raise HTTPException(422, f"invalid request: {detail}") from exc
    data = body.text.encode("utf-8")
    if len(data) > max_bytes:
        raise HTTPException(413, f"text exceeds the upload limit of {max_bytes / 1024 / 1024:g} MB")
    source_id = body.source_id or f"sha256:{sha256_hex(data)}"
    return SourceFile(data, source_id, None, body.title, body.metadata)


@router.post(
    "",
    status_code=201,
    response_model=DocumentIngested,
    openapi_extra=_UPLOAD_BODY,
    responses={404: {"model": ErrorOut}, 413: {"model": ErrorOut}, 415: {"model": ErrorOut}},
    dependencies=[Depends(require("ingest"))],
)
async def upload_document(name: str, request: Request, kb: KBDep) -> DocumentIngested:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        source = await _source_from_multipart(request, kb.settings.max_upload_bytes)
    elif content_type == "application/json":
        source = await _source_from_json(request, kb.settings.max_upload_bytes)
    else:
        raise HTTPException(
            415, "send a multipart/form-data upload with a 'file' field, or JSON {\"text\": ...}"
        )
    if not source.data.strip():
        raise UnsupportedDocument("the file is empty")
    result = await run_in_threadpool(kb.pipeline.ingest_one, name, source)
    doc = result.document
    # kept for the web UI's "open at page N" links (services/api/originals.py)
    await run_in_threadpool(save_original, kb.settings, doc.content_sha256, source.data)
    if result.replaced:  # the replaced version's bytes may now be unused
        await run_in_threadpool(sweep_originals, kb.settings, kb.db)
    return DocumentIngested(
        id=doc.id,
        source_id=doc.source_id,
        status=doc.status,
        content_sha256=doc.content_sha256,
        chunks=result.chunks,
        duplicate=result.duplicate,
        version=doc.version,
        replaced=result.replaced,
    )


@router.get("", response_model=DocumentPage, responses={404: {"model": ErrorOut}})
def list_documents(
    name: str,
    kb: KBDep,
    session: SessionDep,
    offset: int = Query(0, ge=0, le=MAX_ID),
    limit: int = Query(50, ge=1, le=500),
) -> DocumentPage:
    collection = kb.store.get_collection(session, name)
    items, total = kb.store.list_documents(session, collection, offset, limit)
    return DocumentPage(
        items=[document_out(d, kb.store.chunk_count(session, d)) for d in items],
        total=total,
        offset=offset,
        limit=limit,
    )


@router.get("/{document_id}", response_model=DocumentOut, responses={404: {"model": ErrorOut}})
def get_document(name: str, document_id: DocumentId, kb: KBDep, session: SessionDep) -> DocumentOut:
    collection = kb.store.get_collection(session, name)
    document = kb.store.get_document(session, collection, document_id)
    return document_out(document, kb.store.chunk_count(session, document))


@router.delete(
    "/{document_id}",
    status_code=204,
    responses={404: {"model": ErrorOut}},
    dependencies=[Depends(require("ingest"))],
)
def delete_document(name: str, document_id: DocumentId, kb: KBDep) -> Response:
    with kb.db.session() as s:
        sha256 = kb.store.get_document(s, kb.store.get_collection(s, name), document_id).content_sha256
    kb.store.delete_document(name, document_id)
    drop_original_if_unused(kb.settings, kb.db, sha256)
    return Response(status_code=204)


@router.get(
    "/{document_id}/file",
    response_class=FileResponse,
    # */*: the original comes back with its own type (PDF, text, ...); found by the schemathesis test.
    responses={200: {"content": {"*/*": {}}}, 404: {"model": ErrorOut}},
)
@router.head("/{document_id}/file", response_class=FileResponse, include_in_schema=False)
def get_document_file(name: str, document_id: DocumentId, kb: KBDep, session: SessionDep) -> FileResponse:
    """The file as uploaded (PDFs inline, so `#page=N` opens the cited page); 404 if not kept."""
    document = kb.store.get_document(session, kb.store.get_collection(session, name), document_id)
    return original_response(kb.settings, document)
