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


def test_migrations_match_models(database_url: str) -> None:
    """A model changed without a migration would only fail on a user's database; catch it here."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    import storage.auth_models  # noqa: F401
    import storage.chat_models  # noqa: F401
    import storage.job_models  # noqa: F401
    from storage.models import Base

    db = Database(database_url)
    try:
        migrate.upgrade(db)
        tables = {"chat_sessions", "chat_messages", "ingest_jobs", "ingest_items", "api_keys"}
        assert tables <= migrate.table_names(db)
        with db.engine.connect() as connection:
            diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        assert diff == []
    finally:
        db.dispose()
