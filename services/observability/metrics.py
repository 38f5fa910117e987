"""Prometheus metrics: what is counted where, and the `/metrics` route.

Two kinds, on purpose:
- event metrics (request latency per route template, generation TTFT, tokens/s, tokens by KV source,
  rate-limit and auth refusals) are recorded where the event happens, in prometheus_client's default
  registry;
- state metrics (ingestion jobs and backlog from the database, the engine's KV blocks and batch, GPU
  memory) are read at scrape time by `StateCollector`, so nothing polls in the background and a scrape
  always shows the present.

Route labels are route *templates* (`/v1/collections/{name}/search`), never raw paths, so one label
per route and no unbounded series from ids. `/metrics` itself is open unless KB_METRICS_AUTH=true;
keep it behind the firewall (it names collections' counts, not their contents).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import Depends, FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client import generate_latest as _generate
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.chat.generators.base import Delta, Generation, GeneratorError

HTTP_LATENCY = Histogram(
    "kb_http_request_duration_seconds",
    "Time from request start to the end of the response body, by route template.",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
RATE_LIMITED = Counter("kb_rate_limited", "Requests refused with 429 by KB_RATE_LIMIT.")
AUTH_REFUSED = Counter("kb_auth_refused", "Requests refused for their API key.", ["status"])
TTFT = Histogram(
    "kb_generation_ttft_seconds",
    "Time from submitting a generation to its first token (queue + prefill).",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)
TOKENS_PER_S = Histogram(
    "kb_generation_tokens_per_second",
    "Decode speed of one generation: completion tokens after the first over the time they took.",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
)
GEN_TOKENS = Counter("kb_generation_tokens", "Tokens of finished generations.", ["kind"])
GENERATIONS = Counter("kb_generations", "Generations by outcome.", ["outcome"])
PROMPT_TOKENS_BY_SOURCE = Counter(
    "kb_engine_prompt_tokens",
    "Prompt tokens of the in-process engine by where their KV came from (gpu, cpu, disk: prefix-cache "
    "hits per tier; computed: prefilled). Hit rate of a tier = its rate over the sum.",
    ["source"],
)


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    HTTP_LATENCY.labels(method, route, str(status)).observe(seconds)


def observe_kv_sources(usage: dict[str, Any] | None) -> None:
    """From the engine's finish-event usage (`prompt_tokens`, `cached_from` per tier)."""
    if not usage:
        return
    cached = usage.get("cached_from") or {}
    hits = 0
    for tier in ("gpu", "cpu", "disk"):
        n = int(cached.get(tier, 0) or 0)
        hits += n
        PROMPT_TOKENS_BY_SOURCE.labels(tier).inc(n)
    PROMPT_TOKENS_BY_SOURCE.labels("computed").inc(max(0, int(usage.get("prompt_tokens", 0) or 0) - hits))


class ObservedGeneration(Generation):
    """Wraps any backend's Generation: TTFT from submission, decode tokens/s, tokens and outcome.

    Lives in the service layer so the API (in-process or remote generator) and `kb engine-serve`
    record the same metrics, without the engine knowing about Prometheus."""

    def __init__(self, inner: Generation) -> None:
        self.inner = inner
        self.submitted = time.perf_counter()
        self.first_at: float | None = None
        self.done = False

    async def __anext__(self) -> Delta:
        try:
            delta = await self.inner.__anext__()
        except StopAsyncIteration:
            self._finish("stopped", None)
            raise
        except GeneratorError:
            self._finish("error", None)
            raise
        now = time.perf_counter()
        if delta.text and self.first_at is None:
            self.first_at = now
            TTFT.observe(now - self.submitted)
        if delta.usage is not None:
            self._finish(delta.finish_reason or "stop", delta, now)
        return delta

    def _finish(self, outcome: str, delta: Delta | None, now: float | None = None) -> None:
        if self.done:
            return
        self.done = True
        GENERATIONS.labels(outcome).inc()
        if delta is None or delta.usage is None:
            return
        u = delta.usage
        GEN_TOKENS.labels("prompt").inc(u.prompt_tokens)
        GEN_TOKENS.labels("cached").inc(u.cached_tokens)
        GEN_TOKENS.labels("completion").inc(u.completion_tokens)
        if self.first_at is not None and now is not None and u.completion_tokens > 1 and now > self.first_at:
            TOKENS_PER_S.observe((u.completion_tokens - 1) / (now - self.first_at))

    async def aclose(self) -> None:
        self._finish("cancelled", None)
        await self.inner.aclose()


def observe_generation(generation: Generation | None) -> Generation | None:
    if generation is None or isinstance(generation, ObservedGeneration):
        return generation
    return ObservedGeneration(generation)


# --- state read at scrape time ---------------------------------------------------------------------
def engine_of(generator: Any) -> Any:
    """The in-process engine behind a generator (EngineGenerator.engine), or None (remote, fake)."""
    return getattr(generator, "engine", None)


def _gauge(name: str, doc: str, value: float | None = None, labels: list[str] | None = None) -> Metric:
    g = GaugeMetricFamily(name, doc, value=value, labels=labels)
    return g


class StateCollector(Collector):
    """Reads the database (ingestion), the engine (`Engine.stats()`) and torch.cuda at each scrape."""

    def __init__(
        self,
        db: Callable[[], Any] | None = None,
        engine: Callable[[], Any] | None = None,
        queue: Callable[[], int | None] | None = None,
    ) -> None:
        self.db = db
        self.engine = engine
        self.queue = queue

    def collect(self) -> Iterator[Metric]:
        if self.db is not None:
            db = self.db()
            if db is not None:
                yield from ingestion_metrics(db)
        if self.queue is not None and (tasks := self.queue()) is not None:
            yield _gauge("kb_ingest_queue_tasks", "Batch tasks waiting in the Celery queue (Redis).", tasks)
        if self.engine is not None:
            engine = self.engine()
            if engine is not None:
                yield from engine_metrics(engine.stats())
        yield from gpu_metrics()


def ingestion_metrics(db: Any) -> Iterator[Metric]:
    from sqlalchemy import func, select

    from storage.job_models import IngestItem, IngestJob
    from storage.models import Document

    with db.session() as s:
        jobs = dict(s.execute(select(IngestJob.status, func.count()).group_by(IngestJob.status)).all())
        items = dict(s.execute(select(IngestItem.status, func.count()).group_by(IngestItem.status)).all())
        backlog = s.scalar(
            select(func.count())
            .select_from(IngestItem)
            .join(IngestJob, IngestJob.id == IngestItem.job_id)
            .where(IngestItem.status == "pending", IngestJob.status.in_(("queued", "running")))
        )
        documents = dict(s.execute(select(Document.status, func.count()).group_by(Document.status)).all())
    g = _gauge("kb_ingest_jobs", "Ingest jobs by status.", labels=["status"])
    for status in ("queued", "running", "succeeded", "failed", "cancelled"):
        g.add_metric([status], jobs.get(status, 0))
    yield g
    g = _gauge("kb_ingest_items", "Files of ingest jobs by status (a running count).", labels=["status"])
    for status in ("pending", "succeeded", "duplicate", "failed", "cancelled"):
        g.add_metric([status], items.get(status, 0))
    yield g
    yield _gauge("kb_ingest_backlog_files", "Files still to ingest in queued or running jobs.", backlog or 0)
    g = _gauge("kb_documents", "Documents stored, by status.", labels=["status"])
    for status, n in sorted(documents.items()):
        g.add_metric([str(status)], n)
    yield g


def engine_metrics(stats: dict[str, Any]) -> Iterator[Metric]:
    total = int(stats.get("num_blocks", 0))
    free = int(stats.get("free_blocks", 0))
    g = _gauge("kb_engine_kv_blocks", "KV blocks of the GPU/device pool by state.", labels=["state"])
    g.add_metric(["used"], total - free)
    g.add_metric(["free"], free)
    g.add_metric(["referenced"], int(stats.get("referenced_blocks", 0)))
    g.add_metric(["cached"], int(stats.get("cached_blocks", 0)))
    yield g
    yield _gauge("kb_engine_kv_blocks_total", "KV blocks in the device pool.", total)
    yield _gauge("kb_engine_batch_size", "Sequences in the running batch.", int(stats.get("running", 0)))
    yield _gauge("kb_engine_waiting", "Sequences waiting to be scheduled.", int(stats.get("waiting", 0)))


def gpu_metrics() -> Iterator[Metric]:
    """GPU memory, only where torch is already loaded and CUDA initialised: never import or
    initialise CUDA for a scrape (the API box has no GPU; absent means no series, not an error)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return
    allocated = _gauge("kb_gpu_memory_allocated_bytes", "Memory held by tensors.", labels=["device"])
    reserved = _gauge("kb_gpu_memory_reserved_bytes", "Memory torch's allocator holds.", labels=["device"])
    total = _gauge("kb_gpu_memory_total_bytes", "Device memory.", labels=["device"])
    for i in range(torch.cuda.device_count()):
        allocated.add_metric([str(i)], torch.cuda.memory_allocated(i))
        reserved.add_metric([str(i)], torch.cuda.memory_reserved(i))
        total.add_metric([str(i)], torch.cuda.get_device_properties(i).total_memory)
    yield from (allocated, reserved, total)


def install_metrics(app: FastAPI, collector: StateCollector, guard: Callable[..., Any] | None = None) -> None:
    """`GET /metrics`: the process-wide metrics plus this app's state collector."""
    local = CollectorRegistry(auto_describe=False)
    local.register(collector)
    deps = [Depends(guard)] if guard is not None else []

    @app.get("/metrics", include_in_schema=False, dependencies=deps)
    def metrics() -> Response:  # sync: the collector queries the database, off the event loop
        return Response(_generate(REGISTRY) + _generate(local), media_type=CONTENT_TYPE_LATEST)
