from __future__ import annotations

from storage import migrate
from storage.db import Database


def test_upgrade_creates_schema_and_is_idempotent(database_url: str) -> None:
    db = Database(database_url)
    try:
        assert "collections" not in migrate.table_names(db)
        migrate.upgrade(db)
        assert {"collections", "documents", "chunks", "alembic_version"} <= migrate.table_names(db)
        migrate.upgrade(db)  # second run is a no-op, not an error
        migrate.downgrade(db, "base")
        assert "chunks" not in migrate.table_names(db)
        migrate.upgrade(db)
        assert "chunks" in migrate.table_names(db)
    finally:
        db.dispose()
