"""Our own engine (`engine.llm_engine.Engine`) in this process.

The engine runs its own step thread and hands each request a blocking event queue; waits on it run in
worker threads of a dedicated limiter, so many concurrent streams never starve the server's default
thread pool (which the synchronous database routes use).
"""

from __future__ import annotations

import logging
import queue
import time
from typing import Any

import anyio
import anyio.to_thread

from services.chat.generators.base import (
    AsyncGenGeneration,
    BadGenerationRequest,
    Delta,
    Generation,
    GenerationRequest,
    Generator,
    GeneratorBusy,
    GeneratorError,
    GeneratorTimeout,
    Message,
    Usage,
)
from services.observability.metrics import observe_kv_sources

log = logging.getLogger(__name__)


class EngineGenerator(Generator):
    name = "engine"

    def __init__(
        self,
        engine: Any,
        model_name: str = "smollm2",
        timeout_s: float = 120.0,
        retry_after_s: float = 1.0,
        owns_engine: bool = True,
    ) -> None:
        self.engine = engine
        self.model = model_name
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self.owns_engine = owns_engine
        self._waiters = anyio.CapacityLimiter(4096)

    @classmethod
    def from_settings(cls, settings: Any) -> EngineGenerator:
        """Build the engine from `KB_ENGINE_*` settings (disk KV tier under the data dir)."""
        from engine.config import EngineConfig, default_model
        from engine.llm_engine import Engine

        model = settings.generator_model or default_model()
        config = EngineConfig(
            model=model,
            device=settings.engine_device,
            dtype=settings.engine_dtype,
            kv_cache_gb=settings.engine_kv_cache_gb,
            cpu_cache_gb=settings.engine_cpu_cache_gb,
            disk_dir=str(settings.data_dir / "kv_cache") if settings.engine_disk_cache else None,
            max_queue=settings.engine_max_queue,
            enable_prefix_cache=settings.engine_prefix_cache,
            overlap_decode=settings.engine_overlap_decode,
            quant=settings.engine_quant,
            gpu_memory_gb=settings.engine_gpu_memory_gb,
        )
        engine = Engine.from_config(config)
        name = settings.generator_model_name or _model_name(model)
        return cls(engine, name, settings.generator_timeout_s, settings.generator_retry_after_s)

    @property
    def max_context(self) -> int | None:
        model = getattr(self.engine, "model", None)
        cfg = getattr(model, "cfg", None)
        return getattr(cfg, "max_position", None)

    def count_tokens(self, messages: list[Message]) -> int:
        return len(self.engine.encode_prompt(messages))

    def _params(self, request: GenerationRequest) -> Any:
        from engine.sampling import SamplingParams

        try:
            return SamplingParams(
                max_tokens=request.max_tokens,
                temperature=request.temperature,
                top_p=request.top_p,
                seed=request.seed,
                stop=list(request.stop),
            )
        except ValueError as exc:
            raise BadGenerationRequest(str(exc)) from exc

    async def start(self, request: GenerationRequest) -> Generation:
        from engine.llm_engine import EngineClosed, QueueFull

        params = self._params(request)
        try:
            seq = await anyio.to_thread.run_sync(self.engine.submit, request.messages, params)
        except QueueFull as exc:
            raise GeneratorBusy(f"generator queue is full: {exc}", self.retry_after_s) from exc
        except EngineClosed as exc:
            raise GeneratorError("generator is shut down") from exc
        except ValueError as exc:  # prompt larger than the KV pool, empty prompt
            raise BadGenerationRequest(str(exc)) from exc
        return AsyncGenGeneration(self._events(seq), lambda: self.engine.cancel(seq, wait=False))

    async def _events(self, seq: Any):  # noqa: ANN202 - async generator of Delta
        deadline = time.monotonic() + self.timeout_s
        finished = False

        def next_event() -> Any:
            return seq.events.get(timeout=max(0.0, deadline - time.monotonic()))

        try:
            while True:
                try:
                    ev = await anyio.to_thread.run_sync(
                        next_event, limiter=self._waiters, abandon_on_cancel=True
                    )
                except queue.Empty:
                    raise GeneratorTimeout(f"no answer within {self.timeout_s:g} s") from None
                if ev.type == "token":
                    if ev.text:
                        yield Delta(ev.text)
                elif ev.type == "finish":
                    finished = True
                    u = ev.usage or {}
                    observe_kv_sources(u)  # prefix-cache hits per tier to /metrics (issue 7)
                    usage = Usage(
                        int(u.get("prompt_tokens", 0)),
                        int(u.get("cached_tokens", 0)),
                        int(u.get("completion_tokens", 0)),
                    )
                    yield Delta(ev.text, ev.finish_reason, usage)
                    return
                else:
                    finished = True
                    raise GeneratorError(f"generation failed: {ev.text}")
        finally:
            if not finished:
                # no await here: the surrounding scope may be cancelled (client gone)
                self.engine.cancel(seq, wait=False)
                log.debug("generation %s cancelled", getattr(seq, "id", "?"))

    async def forget(self, messages: list[Message]) -> bool:
        """Drop the session's own KV blocks from the device pool, the CPU tier and the disk tier.

        The system prompt's blocks stay (every session with that prompt shares them), and so do blocks
        in use by a running request. Returns True when it could run.
        """
        return await anyio.to_thread.run_sync(self._forget, messages)

    def _forget(self, messages: list[Message]) -> bool:
        eng = self.engine
        try:
            shared = len(eng.tokenizer.apply_chat_template(messages[:1], add_generation_prompt=False))
            eng.forget(messages, keep_tokens=shared)
            return True
        except (ValueError, RuntimeError, OSError) as exc:
            log.warning("could not drop a session's KV blocks: %s", exc)
            return False

    async def aclose(self) -> None:
        if self.owns_engine:
            await anyio.to_thread.run_sync(self.engine.close)


def _model_name(model: str) -> str:
    from pathlib import Path

    stem = Path(model.rstrip("/")).name
    return stem.removesuffix(".gguf") or "model"
