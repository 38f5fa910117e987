"""Batch ingestion jobs: submit a dump (server path or uploaded archive), follow it, cancel it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from services.api.auth import collection_access, job_access
from services.api.deps import KBDep
from services.api.schemas import ErrorOut
from services.jobs.runner import BrokerUnavailable
from services.jobs.service import JobService, NotAnArchive, PathForbidden

router = APIRouter(tags=["ingest jobs"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (403, 404, 409, 413, 415, 422, 503)
}
_SUBMIT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["path"],
                    "properties": {"path": {"type": "string", "description": "Server folder or archive"}},
                }
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            },
        },
    }
}


def _jobs(request: Request) -> JobService:
    return request.app.state.jobs


def _check_collection(kb: KBDep, name: str) -> None:
    with kb.db.session() as s:
        kb.store.get_collection(s, name)


async def _path_from_json(request: Request) -> str:
    try:
        body = json.loads(await request.body() or b"null")
    except json.JSONDecodeError as exc:
        raise HTTPException(422, f"invalid request: body is not valid JSON ({exc.msg})") from exc
    except UnicodeDecodeError as exc:  # found by tests/services/api/test_fuzz_openapi.py
        raise HTTPException(422, "invalid request: body is not UTF-8 JSON") from exc
    if not isinstance(body, dict) or not isinstance(body.get("path"), str) or not body["path"].strip():
        raise HTTPException(422, "invalid request: path: a non-empty string is required")
    return body["path"]


@router.post(
    "/v1/collections/{name}/ingest-jobs",
    status_code=202,
    responses=_ERRORS,
    openapi_extra=_SUBMIT_BODY,
    dependencies=[Depends(collection_access("ingest"))],
)
async def submit_job(name: str, request: Request, kb: KBDep) -> JSONResponse:
    jobs = _jobs(request)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    await run_in_threadpool(_check_collection, kb, name)
    try:
        if content_type == "application/json":
            raw = await _path_from_json(request)
            path = await run_in_threadpool(jobs.check_path, raw)
            job_id = await run_in_threadpool(jobs.submit, name, path)
        elif content_type == "multipart/form-data":
            form = await request.form(max_files=1, max_fields=4)
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise HTTPException(422, "invalid request: multipart field 'file' is required")
            staged = await run_in_threadpool(jobs.stage_upload, upload.file, upload.filename)
            job_id = await run_in_threadpool(jobs.submit, name, staged, True, upload.filename or staged.name)
        else:
            raise HTTPException(
                415, "send JSON {\"path\": ...} or a multipart/form-data upload with a 'file' field"
            )
    except PathForbidden as exc:
        raise HTTPException(403, str(exc)) from exc
    except NotAnArchive as exc:
        raise HTTPException(415, f"not a dump kb can read: {exc}") from exc
    except BrokerUnavailable as exc:
        raise HTTPException(503, f"job queue unavailable: {exc}") from exc
    return JSONResponse(
        status_code=202,
        content={"job_id": job_id, "status": "queued"},
        headers={"location": f"/v1/ingest-jobs/{job_id}"},
    )


@router.get("/v1/ingest-jobs/{job_id}", responses=_ERRORS, dependencies=[Depends(job_access())])
def get_job(job_id: str, request: Request) -> dict[str, Any]:
    return _jobs(request).get(job_id).as_dict()


@router.delete("/v1/ingest-jobs/{job_id}", responses=_ERRORS, dependencies=[Depends(job_access())])
def cancel_job(job_id: str, request: Request) -> dict[str, Any]:
    jobs = _jobs(request)
    before = jobs.get(job_id, with_errors=False)
    if before.done:
        raise HTTPException(409, f"ingest job '{job_id}' already {before.status}")
    return jobs.cancel(job_id).as_dict()


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


@router.get("/v1/ingest-jobs/{job_id}/events", responses=_ERRORS, dependencies=[Depends(job_access())])
async def job_events(job_id: str, request: Request, poll_s: float = 0.5) -> StreamingResponse:
    """Server-sent events: `progress` whenever the counts change, then one `done` with the final job."""
    jobs = _jobs(request)
    await run_in_threadpool(jobs.get, job_id, False)  # 404 before the stream starts
    poll_s = min(max(poll_s, 0.05), 5.0)

    async def stream():  # noqa: ANN202
        last = None
        while True:
            view = await run_in_threadpool(jobs.get, job_id, False)
            key = (view.status, view.processed, view.cancelled)
            if view.done:
                final = await run_in_threadpool(jobs.get, job_id)
                yield _sse("done", final.as_dict())
                return
            if key != last:
                last = key
                yield _sse("progress", view.as_dict())
            if await request.is_disconnected():
                return
            await asyncio.sleep(poll_s)

    headers = {"cache-control": "no-cache", "x-accel-buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)
