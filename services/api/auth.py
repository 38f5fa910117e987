"""API keys: creation (CLI), verification and per-route scope and collection checks (FastAPI dependencies).

A key is `kb_` + 43 url-safe characters (256 random bits); only its SHA-256 is stored (see
storage/auth_models.py for why no salt is needed). Scopes: `search`, `chat`, `ingest` on one collection,
or `admin` on everything. A key bound to collection A asking for collection B gets the very same 404 as
for a collection that does not exist, so it cannot even learn that B exists; list endpoints filter.

With `KB_AUTH=off` (the embedded default) every request is the anonymous admin, so routes behave as
before; only the rate limit (per client IP, if one is set) still applies.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import or_, select

from services.api.deps import KBDep
from services.observability.metrics import AUTH_REFUSED, RATE_LIMITED
from storage.auth_models import ApiKey
from storage.db import Database
from storage.job_models import IngestJob
from storage.models import Collection
from storage.store import NotFound

log = logging.getLogger("kb.auth")

SCOPES = ("search", "chat", "ingest", "admin")
KEY_PREFIX = "kb_"
_PREFIX_LEN = 10  # "kb_" + 7 characters: enough to tell keys apart in a listing, useless to an attacker


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a key, or the anonymous caller when auth is off."""

    key_id: int | None
    prefix: str
    scopes: frozenset[str]
    collection: str | None  # None: every collection

    @property
    def admin(self) -> bool:
        return "admin" in self.scopes

    def allows(self, scope: str) -> bool:
        return self.admin or scope in self.scopes

    def sees(self, collection: str) -> bool:
        return self.collection is None or self.collection == collection

    def check_collection(self, collection: str) -> None:
        """Raise the same NotFound as the store does for a missing collection."""
        if not self.sees(collection):
            raise NotFound(f"collection '{collection}' not found")


ANONYMOUS = Principal(None, "anonymous", frozenset({"admin"}), None)


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: int
    name: str | None
    prefix: str
    collection: str | None
    scopes: list[str]
    created_at: dt.datetime
    revoked_at: dt.datetime | None

    def as_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__slots__}
        for k in ("created_at", "revoked_at"):
            out[k] = out[k].isoformat() if out[k] else None
        return out


def _info(row: ApiKey, collection: str | None) -> KeyInfo:
    return KeyInfo(
        row.id, row.name, row.prefix, collection, sorted(row.scope_set), row.created_at, row.revoked_at
    )


def parse_scopes(raw: Iterable[str]) -> list[str]:
    """Scopes from `--scopes search,chat` (also repeated options); ValueError names the bad one."""
    scopes = sorted({s.strip().lower() for part in raw for s in part.split(",") if s.strip()})
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise ValueError(f"unknown scope {unknown[0]!r}; choose from {', '.join(SCOPES)}")
    return scopes


def create_key(
    db: Database, collection: str | None, scopes: Iterable[str], admin: bool = False, name: str | None = None
) -> tuple[str, KeyInfo]:
    """A new key: (the key itself, shown once; its stored description). ValueError/NotFound on bad input."""
    chosen = parse_scopes(scopes)
    if admin:
        if collection:
            raise ValueError("an admin key sees every collection; do not give --collection with --admin")
        chosen = sorted(set(chosen) | {"admin"})
    elif "admin" in chosen:
        raise ValueError("use --admin for an admin key")
    elif not collection:
        raise ValueError("a key needs --collection NAME (or --admin)")
    elif not chosen:
        raise ValueError("a collection key needs --scopes (search, chat, ingest)")
    raw = generate_key()
    with db.session() as s:
        coll_id = None
        if collection:
            coll_id = s.scalar(select(Collection.id).where(Collection.name == collection))
            if coll_id is None:
                raise NotFound(f"collection '{collection}' not found")
        row = ApiKey(
            name=name,
            prefix=raw[:_PREFIX_LEN],
            key_hash=hash_key(raw),
            collection_id=coll_id,
            scopes=",".join(chosen),
        )
        s.add(row)
        s.flush()
        s.refresh(row)
        return raw, _info(row, collection)


def list_keys(db: Database, include_revoked: bool = False) -> list[KeyInfo]:
    with db.session() as s:
        stmt = (
            select(ApiKey, Collection.name)
            .outerjoin(Collection, Collection.id == ApiKey.collection_id)
            .order_by(ApiKey.id)
        )
        if not include_revoked:
            stmt = stmt.where(ApiKey.revoked_at.is_(None))
        return [_info(row, name) for row, name in s.execute(stmt)]


def revoke_key(db: Database, ident: str) -> KeyInfo:
    """Revoke by id, by listed prefix, or by the key itself. NotFound if none, ValueError if ambiguous."""
    with db.session() as s:
        conds = [ApiKey.prefix == ident, ApiKey.key_hash == hash_key(ident)]
        if ident.isdigit():
            conds.append(ApiKey.id == int(ident))
        rows = list(s.scalars(select(ApiKey).where(or_(*conds))))
        if not rows:
            raise NotFound(f"no API key matches '{ident}'")
        if len(rows) > 1:
            raise ValueError(f"'{ident}' matches {len(rows)} keys; give the id from `kb keys list`")
        row = rows[0]
        if row.revoked_at is None:
            row.revoked_at = dt.datetime.now(dt.UTC)
        name = s.scalar(select(Collection.name).where(Collection.id == row.collection_id))
        return _info(row, name)


def authenticate(db: Database, raw: str) -> Principal | None:
    """The principal of a presented key, or None if it is unknown or revoked."""
    if not raw.startswith(KEY_PREFIX) or len(raw) > 200:
        return None
    with db.session() as s:
        found = s.execute(
            select(ApiKey, Collection.name)
            .outerjoin(Collection, Collection.id == ApiKey.collection_id)
            .where(ApiKey.key_hash == hash_key(raw), ApiKey.revoked_at.is_(None))
        ).first()
    if found is None:
        return None
    row, collection = found
    if row.collection_id is not None and collection is None:  # pragma: no cover - cascade removes these
        return None
    return Principal(row.id, row.prefix, row.scope_set, collection)


# --- FastAPI dependencies --------------------------------------------------------------------------
def _unauthorized(detail: str, error: str | None = None) -> HTTPException:
    AUTH_REFUSED.labels("401").inc()
    challenge = 'Bearer realm="kb"' + (f', error="{error}"' if error else "")
    return HTTPException(401, detail, headers={"WWW-Authenticate": challenge})


# Declared as FastAPI security schemes so /docs has an "Authorize" button and the OpenAPI document says
# how to authenticate; neither fails by itself (auto_error=False): get_principal decides.
_BEARER = HTTPBearer(auto_error=False, description="An API key from `kb keys create` (kb_...).")
_API_KEY = APIKeyHeader(name="X-API-Key", auto_error=False, description="The same key, in its own header.")


def get_principal(
    kb: KBDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
    header: Annotated[str | None, Depends(_API_KEY)],
) -> Principal:
    """Sync on purpose (a DB lookup): FastAPI runs it in the thread pool."""
    if not kb.settings.auth_required:
        return ANONYMOUS
    raw = (bearer.credentials.strip() if bearer else "") or (header or "").strip()
    if not raw:
        raise _unauthorized("missing API key: send 'Authorization: Bearer kb_...' or 'X-API-Key: kb_...'")
    principal = authenticate(kb.db, raw)
    if principal is None:
        raise _unauthorized("invalid or revoked API key", "invalid_token")
    return principal


async def authorized(request: Request, principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    """The caller, after the rate limit (per key; per client IP without auth). Runs once per request."""
    request.state.principal = principal
    limiter = getattr(request.app.state, "rate_limiter", None)
    if limiter is not None:
        who = f"key:{principal.key_id}" if principal.key_id is not None else f"ip:{_client_ip(request)}"
        retry_after = await limiter.hit(who)
        if retry_after is not None:
            RATE_LIMITED.inc()
            wait = max(1, math.ceil(retry_after))
            raise HTTPException(
                429,
                f"rate limit of {limiter.limit} exceeded; retry in {wait} s (KB_RATE_LIMIT)",
                headers={"Retry-After": str(wait)},
            )
    return principal


def _client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


PrincipalDep = Annotated[Principal, Depends(authorized)]


def require(scope: str | None) -> Callable[..., Principal]:
    """Dependency: the caller must hold `scope` (403 otherwise); None: any valid key (reads)."""

    def check(principal: PrincipalDep) -> Principal:
        if scope is not None and not principal.allows(scope):
            AUTH_REFUSED.labels("403").inc()
            raise HTTPException(403, f"this API key lacks the '{scope}' scope")
        return principal

    check.__name__ = f"require_{scope or 'key'}"
    return check


def collection_access(scope: str | None) -> Callable[..., Principal]:
    """Dependency for routes with a `{name}` collection: scope, then collection (404 if not its own)."""
    scoped = require(scope)

    # a default, not Annotated[...]: string annotations cannot see this closure's `scoped`
    def check(name: str, principal: Principal = Depends(scoped)) -> Principal:
        principal.check_collection(name)
        return principal

    return check


def _owner_check(
    scope: str, lookup: Callable[[Any, str], str | None], what: str, param: str
) -> Callable[..., Principal]:
    scoped = require(scope)

    def check(request: Request, kb: KBDep, principal: Principal = Depends(scoped)) -> Principal:
        if principal.collection is None:
            return principal
        ident = request.path_params[param]
        with kb.db.session() as s:
            owner = lookup(s, ident)
        if owner != principal.collection:  # missing and foreign answer alike
            raise NotFound(f"{what} '{ident}' not found")
        return principal

    return check


def _session_collection(s: Any, session_id: str) -> str | None:
    from storage.chat_models import ChatSession

    return s.scalar(
        select(Collection.name)
        .join(ChatSession, ChatSession.collection_id == Collection.id)
        .where(ChatSession.id == session_id)
    )


def _job_collection(s: Any, job_id: str) -> str | None:
    return s.scalar(
        select(Collection.name)
        .join(IngestJob, IngestJob.collection_id == Collection.id)
        .where(IngestJob.id == job_id)
    )


def session_access(scope: str = "chat") -> Callable[..., Principal]:
    """Dependency for `/v1/chat/sessions/{session_id}...`: the session's collection must be the key's."""
    return _owner_check(scope, _session_collection, "chat session", "session_id")


def job_access(scope: str = "ingest") -> Callable[..., Principal]:
    """Dependency for `/v1/ingest-jobs/{job_id}...`: the job's collection must be the key's."""
    return _owner_check(scope, _job_collection, "ingest job", "job_id")


def announce(settings: Any) -> None:
    """Say at start whether keys are required: running open must be a visible choice."""
    if settings.auth_required:
        log.info("KB_AUTH=required: every /v1 route needs an API key (create one with `kb keys create`)")
    else:
        log.warning("KB_AUTH=off: the API accepts requests without keys; use KB_AUTH=required off localhost")
