"""Parse one file in a child process with a time limit and a memory cap.

Why: parsers are big C and Python libraries (pdfium, lxml, zip) fed with files from anywhere. A crafted
or damaged file can make one loop forever, allocate gigabytes or crash the interpreter. In a batch job
that would stall or kill the worker, and the batch would be redelivered and kill the next one. In a
child, the worst case is that *this file* fails with a reason ("took longer than 60 s", "needed more
than 2048 MiB", "the parser crashed") and the batch goes on.

The children come from a `forkserver`: a small single-threaded process that has imported the parsers
once, so each file costs a fork (milliseconds), not an interpreter start, and never forks the
multi-threaded worker (torch, Celery, database pools) itself. The memory cap is RLIMIT_AS on top of
what the child already maps when it starts, so it limits what parsing allocates, not the libraries.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import logging
import math
import multiprocessing
import resource
import sys
import threading
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection

from ingest.types import ParsedDocument, UnsupportedDocument

log = logging.getLogger(__name__)

_ctx_lock = threading.Lock()
_ctx: multiprocessing.context.BaseContext | None = None


START_TIMEOUT_S = 20.0  # a child's start signal; the first start also boots the forkserver


def _restart_forkserver() -> None:
    """Forget the current forkserver (multiprocessing starts a new one on the next Process)."""
    from multiprocessing import forkserver

    with contextlib.suppress(Exception):
        forkserver._forkserver._stop()


def _context() -> multiprocessing.context.BaseContext:
    global _ctx
    with _ctx_lock:
        if _ctx is None:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(["ingest.parsers"])
            _ctx = ctx
        return _ctx


@contextlib.contextmanager
def _children_allowed() -> Iterator[None]:
    """Let a Celery pool process start our child (found by tests/services/ops/test_crash.py on a real
    `kb worker`). Celery's prefork pool (billiard) marks its processes daemonic, and multiprocessing
    refuses children there because it could not clean them up at exit; we do (every child is joined or
    killed in `parse_isolated`, and RLIMIT_CPU ends an orphan). Billiard also leaves its own authkey
    type, which multiprocessing's pickler refuses to send to the forkserver: hand it a plain one.
    Last, a `__main__` run from a path (the `kb` script) would be re-imported in every child (2 s each,
    measured); a `__main__` spec tells multiprocessing to leave it alone, as it does for `python -m`."""
    config = getattr(multiprocessing.current_process(), "_config", None)
    if config is None:
        yield
        return
    saved = {k: config[k] for k in ("daemon", "authkey") if k in config}
    if config.get("daemon"):
        config["daemon"] = False
    key = config.get("authkey")
    plain = multiprocessing.process.AuthenticationString
    if key is not None and type(key) is not plain:
        config["authkey"] = plain(bytes(key))
    main = sys.modules.get("__main__")
    fake_spec = main is not None and getattr(main, "__spec__", None) is None
    if fake_spec:  # see below
        main.__spec__ = importlib.machinery.ModuleSpec("__main__", None)  # type: ignore[union-attr]
    try:
        yield
    finally:
        config.update(saved)
        if fake_spec:
            main.__spec__ = None  # type: ignore[union-attr]


def _mapped_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _child(
    conn: Connection, data: bytes, filename: str | None, memory_bytes: int, cpu_s: int, target: str
) -> None:
    """Runs in the child: say it started, cap memory, parse, send ("ok", doc) or ("error", message)."""
    conn.send(("started", None))
    module, _, name = target.partition(":")
    parse_document = getattr(importlib.import_module(module), name)
    limit = _mapped_bytes() + memory_bytes
    with contextlib.suppress(ValueError, OSError):  # a lower hard limit set by the admin stays
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    # If the worker that waits for us is SIGKILLed, nobody kills us at the timeout: the kernel will.
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 5))
    try:
        result: tuple[str, object] = ("ok", parse_document(data, filename))
    except UnsupportedDocument as exc:
        result = ("error", str(exc))
    except MemoryError:
        result = ("error", f"the parser needed more than {memory_bytes >> 20} MiB")
    except RecursionError:
        result = ("error", "the file is nested too deeply to read")
    except Exception as exc:  # a parser bug: the file fails alone, with the reason recorded
        result = ("error", f"the parser failed ({type(exc).__name__}: {str(exc)[:160]})")
    try:
        conn.send(result)
    except MemoryError:
        conn.send(("error", f"the parser needed more than {memory_bytes >> 20} MiB"))
    finally:
        conn.close()


def parse_isolated(
    data: bytes,
    filename: str | None = None,
    timeout_s: float = 60.0,
    memory_mb: int = 2048,
    target: str = "ingest.parsers:parse_document",
) -> ParsedDocument:
    """`parse_document` in a child; raises UnsupportedDocument for bad input *and* for a parser that
    hangs, runs out of memory or crashes. `target` ("module:function") lets tests stand in a parser
    that misbehaves on purpose."""
    ctx = _context()
    for attempt in range(3):
        parent, child = ctx.Pipe(duplex=False)
        try:
            with _children_allowed():  # the Process copies the current process' config when made
                proc = ctx.Process(
                    target=_child,
                    args=(child, data, filename, memory_mb << 20, math.ceil(timeout_s) + 5, target),
                    daemon=True,
                )
                proc.start()
            child.close()
            # A child that never says it started came from a broken forkserver (seen once in a fresh
            # Celery pool process after a SIGKILL): restart the server instead of waiting the full
            # parse timeout for nothing.
            if parent.poll(START_TIMEOUT_S) and parent.recv()[0] == "started":
                break
            problem: BaseException = TimeoutError(f"no start signal in {START_TIMEOUT_S:g} s")
        except (EOFError, ConnectionError) as exc:  # the forkserver died (killed?): it is restarted
            child.close()
            problem = exc
        parent.close()
        if "proc" in locals() and proc.pid is not None and proc.is_alive():
            proc.kill()
        _restart_forkserver()
        log.warning("parser sandbox: could not start a child (%r), attempt %d", problem, attempt + 1)
        if attempt == 2:
            raise UnsupportedDocument(f"the parser sandbox could not start ({problem!r})") from None
    try:
        if not parent.poll(timeout_s):
            raise UnsupportedDocument(f"parsing took longer than {timeout_s:g} s; the file was skipped")
        try:
            status, value = parent.recv()
        except EOFError:
            proc.join(5)
            code = proc.exitcode
            raise UnsupportedDocument(
                f"the parser crashed on this file (exit code {code}); it may need more than {memory_mb} MiB"
            ) from None
    finally:
        parent.close()
        if proc.is_alive():
            proc.kill()
        proc.join(5)
    if status == "ok":
        assert isinstance(value, ParsedDocument)
        return value
    raise UnsupportedDocument(str(value))


def isolated_parser(timeout_s: float, memory_mb: int) -> Callable[[bytes, str | None], ParsedDocument]:
    """A drop-in for `parse_document` with these limits (IngestPipeline.prepare's `parse`)."""

    def parse(data: bytes, filename: str | None = None) -> ParsedDocument:
        return parse_isolated(data, filename, timeout_s, memory_mb)

    return parse
