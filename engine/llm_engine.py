"""Public API: ``Engine.from_config(...)`` and ``engine.generate(messages | ids, SamplingParams)``.

Requests are submitted from any thread; one background thread runs the step loop (continuous batching)
and pushes events into each request's own queue. The service can therefore call ``generate`` from many
threads or async tasks (via a thread pool) at once.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from typing import Any

from engine.answer_feed import AnswerFeed
from engine.block_manager import BlockManager, chain_hashes
from engine.config import EngineConfig
from engine.devices import bf16_hint, in_passing_thread, resolve_device, resolve_dtype
from engine.kv_tiers import CostModel, CpuTier, DiskTier
from engine.loader import load_model, resolve_model_dir, weight_fingerprint
from engine.lookahead import Lookahead
from engine.model import LlamaForCausalLM
from engine.model_runner import GiB, ModelRunner
from engine.quant.policy import apply_policy
from engine.sampling import SamplingParams, make_generator
from engine.scheduler import Scheduler
from engine.sequence import Event, Sequence, Status
from engine.step_loop import StepLoop
from engine.text_stream import TextStreams
from engine.tokenizer import Tokenizer
from engine.write_back import WriteBack

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """Admission control: too many requests are waiting; retry later (HTTP 429/503)."""


class EngineClosed(RuntimeError):
    """The engine was closed; no new requests are accepted."""


Prompt = list[dict[str, Any]] | list[int] | str


class Engine(StepLoop):
    def __init__(
        self,
        config: EngineConfig,
        model: LlamaForCausalLM | None = None,
        tokenizer: Tokenizer | None = None,
        fingerprint: str | None = None,
    ) -> None:
        """Load ``config.model``; or adopt an in-memory ``model`` (benchmarks with random weights)."""
        self.device = resolve_device(config.device)
        self.config = config = config.for_device(self.device.type)
        if model is not None and config.dtype == "auto":
            self.dtype = next(model.parameters()).dtype  # an in-memory model comes in its own dtype
        else:
            self.dtype = resolve_dtype(config.dtype, self.device)
        if hint := bf16_hint(self.device, self.dtype):
            log.info(hint)
        if self.device.type == "cpu":  # see `in_passing_thread`: the caller's thread stays OpenMP-free
            in_passing_thread(lambda: self._build(config, model, tokenizer, fingerprint))
        else:
            self._build(config, model, tokenizer, fingerprint)
        self._thread = threading.Thread(target=self._loop, daemon=True, name="kb-engine")
        self._thread.start()

    def _build(
        self,
        config: EngineConfig,
        model: LlamaForCausalLM | None,
        tokenizer: Tokenizer | None,
        fingerprint: str | None,
    ) -> None:
        """Load the weights and size the pools and tiers."""
        if model is None:
            self.model_dir = resolve_model_dir(config.model)
            self.model = load_model(self.model_dir, self.device, self.dtype)
            self.tokenizer: Tokenizer | None = Tokenizer(self.model_dir)
            fingerprint = weight_fingerprint(self.model_dir)
        else:
            self.model, self.tokenizer = model, tokenizer
            if fingerprint is None:
                raise ValueError("an in-memory model needs an explicit fingerprint")
        self.model.requires_grad_(False)  # an in-memory model may come with trainable parameters
        # weight quantization (engine.quant): before the KV pool is sized from the remaining budget
        self.quant = apply_policy(self.model, config.quant, tokenizer=self.tokenizer, source=config.model)
        if self.device.type == "cuda" and self.quant.get("layers"):
            from engine.quant.gpu import prepare_model

            prepare_model(self.model)  # packed GPU forms now, so the KV pool is sized from what is left
        if config.kv_dtype not in ("auto", "int8"):
            raise ValueError(f"kv_dtype must be 'auto' or 'int8', not {config.kv_dtype!r}")
        kv = "int8-block-absmax" if config.kv_dtype == "int8" else str(self.dtype)
        # the KV dtype is part of every block key: int8 and bf16 caches of one model never mix
        fp_src = f"{fingerprint}|{self.dtype}|kv={kv}|bs={config.block_size}"
        fp_src += f"|quant={self.quant['fingerprint']}" if self.quant["fingerprint"] else ""
        self.fingerprint = hashlib.sha256(fp_src.encode()).hexdigest()[:32]
        self.runner = ModelRunner(self.model, config, self.device)
        self.disk_tier = (
            DiskTier(config.disk_dir, int(config.disk_cache_gb * GiB), self.fingerprint)
            if config.disk_dir
            else None
        )
        self.tiers = WriteBack(self.disk_tier, self._sync)
        self.cpu_tier = (
            CpuTier(
                int(config.cpu_cache_gb * GiB),
                pin=self.device.type == "cuda",
                on_evict=self.tiers.cpu_evicted,
            )
            if config.cpu_cache_gb > 0
            else None
        )
        self.tiers.cpu_tier = self.cpu_tier
        self.cost = CostModel(disk_gbps=config.disk_read_gbps or 2.0, cpu_gbps=config.cpu_restore_gbps)
        self.bm = BlockManager(self.runner.pool_kv, config.block_size, on_evict=self.tiers.spill)
        self.tiers.bm = self.bm
        if self.cpu_tier is not None and self.device.type == "cuda" and config.cpu_cache_reserve:
            self.cpu_tier.reserve(self.bm.read_block(0))
        self.scheduler = Scheduler(
            self.bm,
            self.fingerprint,
            config.max_batch_tokens,
            config.max_num_seqs,
            self.cpu_tier,
            self.disk_tier,
            self.cost,
            prefix_cache=config.enable_prefix_cache,
        )
        if self.cpu_tier is not None and self._restores_layerwise(config.restore_layerwise):
            from engine.kv_restore import LayerwiseRestore

            self.runner.restore = LayerwiseRestore(self.runner.kv, self.cpu_tier)
            self.scheduler.restorer = self.runner.restore
        self._cv = threading.Condition()
        self._inbox: list[Sequence] = []
        self._cancels: list[Sequence] = []
        self._closed = False
        self.streams = TextStreams(self.tokenizer, set(self.model.cfg.eos_token_ids))
        self.ahead = Lookahead(self.runner, self.scheduler)
        self.feed = AnswerFeed(self.scheduler, self.runner, config.feed_last_token)
        self.precaptured = (0, 0.0)  # (graphs, seconds) captured at start, for start-up reports
        if config.cuda_graph_precapture_tokens > 0 and self.runner.use_graphs:
            t0 = time.perf_counter()
            n = self.runner.precapture(min(config.cuda_graph_precapture_tokens, self.model.cfg.max_position))
            self.precaptured = (n, time.perf_counter() - t0)
            log.info("captured %d decode CUDA graphs in %.1f s", *self.precaptured)

    def _restores_layerwise(self, asked: bool | None) -> bool:
        if asked is not None:
            return asked
        if self.device.type != "cuda":
            return False
        from engine.kv_restore import ON_BY_DEFAULT

        return ON_BY_DEFAULT

    @classmethod
    def from_config(cls, config: EngineConfig | dict[str, Any] | None = None, **kw: Any) -> Engine:
        """Build from an `EngineConfig`, a dict of its fields, or keyword arguments."""
        if config is None:
            config = EngineConfig(**kw)
        elif isinstance(config, dict):
            config = EngineConfig(**{**config, **kw})
        elif kw:
            config = replace(config, **kw)
        return cls(config)

    # --- submission -------------------------------------------------------------------------
    def encode_prompt(self, prompt: Prompt) -> list[int]:
        if self.tokenizer is None and (isinstance(prompt, str) or (prompt and isinstance(prompt[0], dict))):
            raise ValueError("this engine has no tokenizer: pass token ids")
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt)
        if prompt and isinstance(prompt[0], dict):
            return self.tokenizer.apply_chat_template(prompt)  # type: ignore[arg-type]
        return [int(t) for t in prompt]  # type: ignore[union-attr]

    def submit(self, prompt: Prompt, params: SamplingParams | None = None) -> Sequence:
        """Queue a request; raises `QueueFull` when ``max_queue`` requests are already waiting."""
        params = params or SamplingParams()
        ids = self.encode_prompt(prompt)
        if not ids:
            raise ValueError("empty prompt")
        need = (len(ids) + params.max_tokens + self.config.block_size - 1) // self.config.block_size
        if need > self.bm.num_blocks:
            raise ValueError(f"request needs {need} KV blocks; the pool has {self.bm.num_blocks}")
        seq = Sequence(ids, params)
        seq.generator = make_generator(params)
        with self._cv:
            if self._closed:
                raise EngineClosed("engine is closed")
            if len(self._inbox) + len(self.scheduler.waiting) >= self.config.max_queue:
                raise QueueFull(f"{self.config.max_queue} requests already waiting")
            self._inbox.append(seq)
            self._cv.notify()
        return seq

    def generate(self, prompt: Prompt, params: SamplingParams | None = None) -> Iterator[Event]:
        """Yield ``token`` events then one ``finish`` event (with usage); closing it cancels."""
        seq = self.submit(prompt, params)
        done = False
        try:
            while True:
                ev = seq.events.get()
                if ev.type in ("finish", "error"):
                    done = True
                yield ev
                if done:
                    return
        finally:
            if not done:
                self.cancel(seq)

    def complete(self, prompt: Prompt, params: SamplingParams | None = None) -> Event:
        """Run to completion; the finish event with ``text`` and ``token_ids`` of the whole answer."""
        text, ids = [], []
        for ev in self.generate(prompt, params):
            if ev.type == "error":
                raise RuntimeError(ev.text)
            text.append(ev.text)
            ids.extend(ev.token_ids)
            if ev.type == "finish":
                return Event("finish", "".join(text), ids, ev.finish_reason, ev.usage)
        raise RuntimeError("stream ended without finish")

    def cancel(self, seq: Sequence, wait: bool = True) -> None:
        """Stop a request; its blocks are released before this returns (``wait=True``)."""
        with self._cv:
            if seq.status is Status.FINISHED:
                return
            seq.cancelled = True
            self._cancels.append(seq)
            self._cv.notify()
            if wait:
                self._cv.wait_for(lambda: seq.status is Status.FINISHED or self._closed, 30)

    def close(self) -> None:
        """Stop the loop (in-flight requests end as ``cancelled``) and persist all dirty blocks."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout=30)
        if self.disk_tier is not None:
            self.tiers.write(len(self.tiers))
            self.disk_tier.close()

    def forget(self, prompt: Prompt, keep_tokens: int = 0) -> int:
        """Delete the cached KV of ``prompt``'s full blocks past ``keep_tokens`` from every tier, and the
        partial blocks kept after them on the GPU (`BlockManager.keep_tail`).

        Why: a chat session deleted by its user must not leave its text's KV on disk; the shared head
        (e.g. a system prompt, ``keep_tokens``) stays. Blocks in use by a running request stay as well.
        Returns how many tier entries were dropped."""
        bs = self.config.block_size
        chain = chain_hashes(self.encode_prompt(prompt), bs, self.fingerprint)
        head, keys = chain[: keep_tokens // bs], chain[keep_tokens // bs :]
        dropped = 0
        with self._cv:
            self.bm.drop_tail(head[-1] if head else None)  # a partial block past the kept head
            for key in keys:
                self.bm.drop_tail(key)
                self.tiers.drop(key)  # never written back
                dropped += self.bm.forget(key)
                dropped += self.cpu_tier is not None and self.cpu_tier.drop(key)
                dropped += self.disk_tier is not None and self.disk_tier.drop(key)
        return dropped

    def flush(self) -> None:
        """Wait until every cached block is on disk (the loop writes them back when idle)."""
        if self.disk_tier is not None:
            with self._cv:
                self._cv.wait_for(lambda: not self.tiers or self._closed)
            self.disk_tier.flush()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def overlaps(self) -> bool:
        """Whether greedy decode runs a step ahead: ``config.overlap_decode``, or on CUDA when unset (read
        each step, so a benchmark can flip it between runs)."""
        on = self.config.overlap_decode
        return self.device.type == "cuda" if on is None else on

    def stats(self) -> dict[str, Any]:
        with self._cv:  # between steps: no feed step's blocks half held (`engine.answer_feed`)
            return self._stats()

    def _stats(self) -> dict[str, Any]:
        return {
            "num_blocks": self.bm.num_blocks,
            "free_blocks": self.bm.num_free,
            "referenced_blocks": self.bm.num_referenced,
            "cached_blocks": len(self.bm.by_key),
            "waiting": len(self.scheduler.waiting),
            "running": len(self.scheduler.running),
            "cost_model": asdict(self.cost),
            "steps_ahead": {"launched": self.ahead.launched, "dropped_rows": self.ahead.dropped},
            "answer_feed": self.feed.stats(),
            "layerwise_restores": (
                {
                    "steps": r.steps,
                    "layerwise_steps": r.layerwise_steps,
                    "graph_steps": r.graph_steps,
                    "blocks": r.copied_blocks,
                }
                if (r := self.runner.restore) is not None
                else None
            ),
        }
