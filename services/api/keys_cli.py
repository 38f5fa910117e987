"""`kb keys create|list|revoke`: API key management from the shell (the API has no key routes on purpose:
a leaked key must not be able to mint others). Imports stay inside the commands so `kb --help` is fast.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

keys_app = typer.Typer(no_args_is_help=True, add_completion=False)
console = Console(stderr=True)


def _db():  # noqa: ANN202 - storage.db.Database, imported lazily
    from services.core.config import get_settings
    from storage import migrate
    from storage.db import Database

    db = Database(get_settings().sqlalchemy_url)
    migrate.upgrade(db)
    return db


@keys_app.command("create")
def create(
    collection: Annotated[str | None, typer.Option("--collection", "-c", help="Its collection.")] = None,
    scopes: Annotated[
        list[str] | None, typer.Option("--scopes", "-s", help="search,chat,ingest (comma-separated).")
    ] = None,
    admin: Annotated[bool, typer.Option("--admin", help="Every collection and route.")] = False,
    name: Annotated[str | None, typer.Option("--name", help="A label for `kb keys list`.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (with the key) instead.")] = False,
) -> None:
    """Create a key and print it ONCE (only its hash is stored)."""
    from services.api.auth import create_key
    from storage.store import NotFound

    db = _db()
    try:
        raw, info = create_key(db, collection, scopes or [], admin=admin, name=name)
    except (ValueError, NotFound) as exc:
        raise typer.BadParameter(str(exc.args[0]) if exc.args else str(exc)) from None
    finally:
        db.dispose()
    if as_json:
        json.dump({"key": raw, **info.as_dict()}, sys.stdout)
        sys.stdout.write("\n")
        return
    sys.stdout.write(raw + "\n")
    where = "every collection" if info.collection is None else f"collection '{info.collection}'"
    console.print(f"key {info.id} ({info.prefix}...): {', '.join(info.scopes)} on {where}")
    console.print(
        "Store it now: it cannot be shown again. Send it as 'Authorization: Bearer <key>'.", soft_wrap=True
    )


@keys_app.command("list")
def list_(
    all_: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List keys (prefix, scopes, collection; never the key)."""
    from services.api.auth import list_keys

    db = _db()
    try:
        keys = list_keys(db, include_revoked=all_)
    finally:
        db.dispose()
    if as_json:
        json.dump([k.as_dict() for k in keys], sys.stdout)
        sys.stdout.write("\n")
        return
    table = Table("id", "prefix", "name", "collection", "scopes", "created", "revoked")
    for k in keys:
        table.add_row(
            str(k.id),
            k.prefix,
            k.name or "",
            k.collection or "*",
            ",".join(k.scopes),
            k.created_at.strftime("%Y-%m-%d %H:%M"),
            k.revoked_at.strftime("%Y-%m-%d %H:%M") if k.revoked_at else "",
        )
    Console().print(table)


@keys_app.command("revoke")
def revoke(ident: Annotated[str, typer.Argument(help="Key id or prefix from `kb keys list`.")]) -> None:
    """Revoke a key: requests with it get 401 from now on."""
    from services.api.auth import revoke_key
    from storage.store import NotFound

    db = _db()
    try:
        info = revoke_key(db, ident)
    except (ValueError, NotFound) as exc:
        raise typer.BadParameter(str(exc.args[0]) if exc.args else str(exc)) from None
    finally:
        db.dispose()
    console.print(f"revoked key {info.id} ({info.prefix}...)")
