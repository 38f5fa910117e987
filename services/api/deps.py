"""FastAPI dependencies: the routers get finished parts, never build them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from services.core.container import KB


def get_kb(request: Request) -> KB:
    return request.app.state.kb


KBDep = Annotated[KB, Depends(get_kb)]


def get_session(kb: KBDep) -> Iterator[Session]:
    with kb.db.session() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]
