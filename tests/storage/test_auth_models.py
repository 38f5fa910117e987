"""api_keys rows: a collection's keys go with it, so a later collection of the same name inherits none."""

from __future__ import annotations

from sqlalchemy import func, select

from services.api.auth import authenticate, create_key
from storage import migrate
from storage.auth_models import ApiKey
from storage.db import Database
from storage.models import Collection


def test_keys_of_a_deleted_collection_are_gone(database_url: str) -> None:
    db = Database(database_url)
    try:
        migrate.upgrade(db)
        with db.session() as s:
            s.add(Collection(name="docs", embedder="minilm", embedder_fingerprint="f", dim=4))
        raw, info = create_key(db, "docs", ["search"])
        admin, _ = create_key(db, None, [], admin=True)
        principal = authenticate(db, raw)
        assert principal is not None and principal.collection == "docs" and principal.scopes == {"search"}
        with db.session() as s:
            s.delete(s.scalars(select(Collection).where(Collection.name == "docs")).one())
        with db.session() as s:
            assert s.scalar(select(func.count()).select_from(ApiKey)) == 1  # only the admin key is left
            s.add(Collection(name="docs", embedder="minilm", embedder_fingerprint="f", dim=4))
        assert authenticate(db, raw) is None
        assert authenticate(db, admin) is not None and authenticate(db, admin).admin
    finally:
        db.dispose()
