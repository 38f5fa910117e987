"""The `kb` command: serve, migrate, ingest, search, reindex (and `kb engine ...`)."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from services.api.keys_cli import keys_app
from services.core.config import get_settings

app = typer.Typer(help="kb: a self-hosted knowledge service.", no_args_is_help=True, add_completion=False)
console = Console(stderr=True)

app.add_typer(keys_app, name="keys", help="API keys: create, list, revoke (issue 7).")

try:  # the engine ships its own sub-commands; kb works without them
    from engine.cli import app as engine_app

    app.add_typer(engine_app, name="engine", help="The generator engine: chat, benchmarks.")
except ImportError:  # pragma: no cover - only while the engine package is incomplete
    pass


def _kb():
    from services.core.container import build_kb

    return build_kb(get_settings())


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (KB_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (KB_PORT).")] = None,
    workers: Annotated[
        int, typer.Option(help="Server processes (KB_WORKERS); each loads its own models.")
    ] = 0,
) -> None:
    """Migrate the database, check the indexes, and serve the REST API."""
    import uvicorn

    from services.api.app import create_app
    from services.observability.logs import configure_logging

    settings = get_settings()
    configure_logging(settings.log_format)  # JSON lines with request ids (KB_LOG_FORMAT, issue 7)
    console.print(
        f"kb: data in {settings.data_dir.resolve()}, database {settings.sqlalchemy_url.split('@')[-1]}"
    )
    bind = host or settings.host
    if not settings.auth_required:
        local = bind in ("127.0.0.1", "localhost", "::1")
        where = "fine on localhost only" if local else "ANYONE can call it"
        console.print(f"kb: KB_AUTH=off, no API keys needed ({where}; `kb keys create` + KB_AUTH=required)")
    uvicorn.run(
        create_app(settings),
        host=bind,
        port=port or settings.port,
        log_level="info",
        log_config=None,  # keep configure_logging's handler; kb.access logs each request
        access_log=False,
    )


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema (also run by `kb serve`)."""
    from storage import migrate as migrations
    from storage.db import Database

    db = Database(get_settings().sqlalchemy_url)
    migrations.upgrade(db)
    console.print("database is at the latest schema")


def _iter_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")))
        elif path.is_file():
            files.append(path)
        else:
            raise typer.BadParameter(f"{path} does not exist")
    return files


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files and folders to ingest.")],
    collection: Annotated[str, typer.Option("--collection", "-c", help="Target collection.")],
    create: Annotated[bool, typer.Option(help="Create the collection if it does not exist.")] = True,
    embedder: Annotated[str | None, typer.Option(help="Embedder for a new collection.")] = None,
    via_workers: Annotated[
        bool, typer.Option("--via-workers", help="Submit each folder/archive as a job to `kb worker`s.")
    ] = False,
) -> None:
    """Ingest files in this process, with a progress bar; exits 1 if any file failed."""
    from ingest.embedders.factory import get_embedder
    from ingest.pipeline import SourceFile
    from storage.store import Conflict, NotFound

    kb = _kb()
    files = _iter_files(paths)
    with kb.db.session() as s:
        try:
            kb.store.get_collection(s, collection)
        except NotFound:
            if not create:
                raise typer.BadParameter(f"collection '{collection}' does not exist") from None
            name = embedder or kb.settings.default_embedder
            emb = get_embedder(name)
            with contextlib.suppress(Conflict):
                kb.store.create_collection(collection, None, name, emb.fingerprint, emb.dim)
    if via_workers:  # batch ingestion on Celery workers (issue 5)
        from services.jobs.follow import ingest_via_workers

        if ingest_via_workers(kb, paths, collection, console):
            raise typer.Exit(1)
        return
    sources = (SourceFile(p.read_bytes(), str(p), p.name) for p in files)
    errors: list[tuple[str, str]] = []
    counts = {"new": 0, "replaced": 0, "duplicate": 0, "chunks": 0}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(f"ingesting into {collection}", total=len(files))
        for outcome in kb.pipeline.ingest(collection, sources):
            progress.advance(task)
            if outcome.error is not None:
                errors.append((outcome.source_id, outcome.error))
                continue
            result = outcome.result
            assert result is not None
            key = "duplicate" if result.duplicate else "replaced" if result.replaced else "new"
            counts[key] += 1
            counts["chunks"] += 0 if result.duplicate else result.chunks
    console.print(
        f"{len(files)} files: {counts['new']} new, {counts['replaced']} replaced, "
        f"{counts['duplicate']} duplicates, {len(errors)} failed; {counts['chunks']} chunks indexed"
    )
    if errors:
        # Plain lines, not a table: paths must survive narrow terminals and grep.
        console.print("failed files:")
        for path, error in errors:
            console.print(f"  {path}: {error}", soft_wrap=True, markup=False)
        raise typer.Exit(1)


@app.command()
def worker(
    concurrency: Annotated[int, typer.Option("--concurrency", "-C", help="Worker processes.")] = 1,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
) -> None:
    """Run a Celery worker for batch ingestion jobs (broker: KB_REDIS_URL)."""
    import os

    from services.worker.celery_app import get_celery

    settings = get_settings()
    get_celery(settings).worker_main(
        [
            "worker",
            f"--concurrency={concurrency}",
            "--pool=prefork",
            f"--queues={settings.worker_queue}",
            f"--loglevel={loglevel}",
            f"--hostname=kb-{os.getpid()}@%h",
            "--without-gossip",
            "--without-mingle",
        ]
    )


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    collection: Annotated[str, typer.Option("--collection", "-c")],
    top_k: Annotated[int, typer.Option("--top-k", "-k")] = 5,
    mode: Annotated[str, typer.Option(help="dense | lexical | hybrid")] = "hybrid",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Search a collection from the command line."""
    import dataclasses

    from storage.store import NotFound

    kb = _kb()
    try:
        hits = kb.searcher.search(collection, query, top_k=top_k, mode=mode)  # type: ignore[arg-type]
    except NotFound as exc:
        console.print(f"error: {exc.args[0]}")
        raise typer.Exit(2) from None
    if as_json:
        json.dump([dataclasses.asdict(h) for h in hits], sys.stdout, ensure_ascii=False, indent=2)
        sys.stdout.write("\n")
        return
    table = Table("score", "source", "page", "text")
    for h in hits:
        table.add_row(f"{h.score:.3f}", h.source_id, str(h.page or ""), h.text[:160].replace("\n", " "))
    Console().print(table)


@app.command()
def reindex(
    collection: Annotated[list[str] | None, typer.Option("--collection", "-c", help="Only these.")] = None,
) -> None:
    """Rebuild FAISS and BM25 indexes from the database."""
    kb = _kb()
    for name, chunks in kb.reindex(collection).items():
        console.print(f"{name}: {chunks} chunks indexed")


@app.command()
def doctor(
    repair: Annotated[bool, typer.Option("--repair", help="Rebuild what disagrees from the DB.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    collection: Annotated[list[str] | None, typer.Option("--collection", "-c", help="Only these.")] = None,
) -> None:
    """Check that FAISS, BM25 and the database agree (exit 1 if not); --repair fixes it."""
    from services.ops.doctor import render, run_doctor

    report = run_doctor(_kb(), collection, repair=repair)
    if as_json:
        json.dump(report.as_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for line in render(report):
            console.print(line, markup=False, soft_wrap=True)
    if not report.ok:
        raise typer.Exit(1)


@app.command("engine-serve")
def engine_serve(
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (the API's KB_GENERATOR_URL points here).")] = 8001,
) -> None:
    """Serve kb's engine alone, OpenAI-compatible (/v1/chat/completions, /v1/models): the GPU box.

    The model and engine settings are the API's (`KB_GENERATOR_MODEL`, `KB_ENGINE_*`); the API box then
    runs with `KB_GENERATOR=remote KB_GENERATOR_URL=http://<this host>:<port>/v1`.
    """
    import uvicorn

    from services.chat.generators.engine_local import EngineGenerator
    from services.engine_server.app import create_engine_app
    from services.observability.logs import configure_logging

    settings = get_settings()
    configure_logging(settings.log_format)
    app_ = create_engine_app(
        build=lambda: EngineGenerator.from_settings(settings), default_max_tokens=settings.chat_max_tokens
    )
    uvicorn.run(app_, host=host, port=port, log_level="info", log_config=None, access_log=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
