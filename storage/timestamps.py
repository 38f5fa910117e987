"""Every timestamp kb reads from the database is timezone-aware UTC, on SQLite too.

kb writes aware UTC datetimes (`storage.models.utcnow`) into `DateTime(timezone=True)` columns.
PostgreSQL hands them back aware; SQLite has no time zone type and hands them back naive, so the API
answered "2026-11-23T12:31:13" on SQLite and "2026-11-23T12:31:13Z" on PostgreSQL, and the former is
not an RFC 3339 `date-time` as the OpenAPI document promises (found by the schemathesis test). One
ORM hook for every mapped class fixes it at the source instead of in each response model.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import DateTime, event
from sqlalchemy.orm import Mapper
from sqlalchemy.orm.attributes import set_committed_value


def _datetime_keys(mapper: Mapper[Any]) -> list[str]:
    keys = getattr(mapper, "_kb_datetime_keys", None)
    if keys is None:
        keys = [c.key for c in mapper.column_attrs if isinstance(c.columns[0].type, DateTime)]
        mapper._kb_datetime_keys = keys  # type: ignore[attr-defined]
    return keys


def _make_aware(target: object, keys: list[str] | None = None) -> None:
    state = target.__dict__
    mapper = getattr(type(target), "__mapper__", None)
    if mapper is None:
        return
    for key in _datetime_keys(mapper):
        if keys is not None and key not in keys:
            continue
        value = state.get(key)
        if isinstance(value, dt.datetime) and value.tzinfo is None:
            set_committed_value(target, key, value.replace(tzinfo=dt.UTC))


@event.listens_for(Mapper, "load")
def _on_load(target: object, _context: object) -> None:
    _make_aware(target)


@event.listens_for(Mapper, "refresh")
def _on_refresh(target: object, _context: object, attrs: Any) -> None:
    _make_aware(target, list(attrs) if attrs else None)
