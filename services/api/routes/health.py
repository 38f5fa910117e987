"""Liveness (the process answers) and readiness (the database answers)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from services.api.deps import KBDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(kb: KBDep) -> JSONResponse:
    try:
        with kb.db.session() as s:
            s.execute(text("SELECT 1"))
    except Exception as exc:  # any driver error means "not ready", never a 500
        return JSONResponse(status_code=503, content={"status": "unavailable", "detail": f"database: {exc}"})
    return JSONResponse(content={"status": "ready"})
