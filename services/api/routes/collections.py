"""Collections: named sets of documents searched with one embedder."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Response

from ingest.embedders.factory import EMBEDDER_NAMES, get_embedder
from services.api.auth import PrincipalDep, collection_access, require
from services.api.deps import KBDep, SessionDep
from services.api.originals import sweep_originals
from services.api.schemas import CollectionCreate, CollectionList, CollectionOut, ErrorOut
from storage.models import Collection
from storage.store import KnowledgeStore

router = APIRouter(prefix="/v1/collections", tags=["collections"])


def collection_out(store: KnowledgeStore, session, collection: Collection) -> CollectionOut:  # noqa: ANN001
    documents, chunks = store.counts(session, collection)
    return CollectionOut(
        name=collection.name,
        description=collection.description,
        embedder=collection.embedder,
        dim=collection.dim,
        documents=documents,
        chunks=chunks,
        created_at=collection.created_at,
    )


@router.post(
    "",
    status_code=201,
    response_model=CollectionOut,
    responses={409: {"model": ErrorOut}},
    dependencies=[Depends(require("admin"))],
)
def create_collection(body: CollectionCreate, kb: KBDep, session: SessionDep) -> CollectionOut:
    embedder_name = body.embedder or kb.settings.default_embedder
    if embedder_name not in EMBEDDER_NAMES:
        raise HTTPException(
            422, f"unknown embedder '{embedder_name}'; choose one of {sorted(EMBEDDER_NAMES)}"
        )
    embedder = get_embedder(embedder_name)
    collection = kb.store.create_collection(
        body.name, body.description, embedder_name, embedder.fingerprint, embedder.dim
    )
    return collection_out(kb.store, session, collection)


@router.get("", response_model=CollectionList)
def list_collections(kb: KBDep, session: SessionDep, principal: PrincipalDep) -> CollectionList:
    visible = [c for c in kb.store.list_collections(session) if principal.sees(c.name)]
    return CollectionList(collections=[collection_out(kb.store, session, c) for c in visible])


@router.get(
    "/{name}",
    response_model=CollectionOut,
    responses={404: {"model": ErrorOut}},
    dependencies=[Depends(collection_access(None))],
)
def get_collection(name: str, kb: KBDep, session: SessionDep) -> CollectionOut:
    return collection_out(kb.store, session, kb.store.get_collection(session, name))


@router.delete(
    "/{name}",
    status_code=204,
    responses={404: {"model": ErrorOut}},
    dependencies=[Depends(require("admin"))],
)
def delete_collection(name: str, kb: KBDep) -> Response:
    kb.store.delete_collection(name)
    sweep_originals(kb.settings, kb.db)  # the kept uploads of its documents, unless shared
    return Response(status_code=204)
