"""API keys (issue 7).

Only a SHA-256 of each key is stored: the key itself is shown once, at creation. SHA-256 without a salt
or stretching is enough here because keys are 256 random bits, not passwords a person chose; it also
lets a request find its key by an indexed equality lookup. `prefix` (the first characters) is kept in
clear so `kb keys list` can show which key is which. A key bound to a collection goes away with it
(ON DELETE CASCADE), so a new collection of the same name never inherits an old key.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import DateTime, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from storage.models import Base, BigId, utcnow


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str | None] = mapped_column(String(128))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # NULL: not bound to a collection (admin keys); otherwise the only collection the key can see.
    collection_id: Mapped[int | None] = mapped_column(
        ForeignKey("collections.id", ondelete="CASCADE"), index=True
    )
    # Comma-separated, sorted: search, chat, ingest, admin.
    scopes: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))

    @property
    def scope_set(self) -> frozenset[str]:
        return frozenset(s for s in self.scopes.split(",") if s)
