"""The engine's step loop: one background thread turns submitted requests into model steps.

Why apart from `engine.llm_engine`: that module is the public API (building the parts, submitting,
cancelling, closing); this one is what runs between those calls: take new requests and cancels under the
lock, schedule and run one step (continuous batching), push tokens into each request's events, register
newly full blocks, and, while idle, feed finished answers' last tokens (`engine.answer_feed`) and write
dirty blocks back to disk. `Engine` inherits it, so tests and benchmarks still reach (and patch)
``engine._step`` on the instance.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import torch

from engine.block_manager import block_hash
from engine.sampling import sample_batch
from engine.sequence import Event, Sequence, Status

WRITE_BACK_BATCH = 2  # dirty blocks written per hold of the engine's lock while idle (8 MiB each, 8B model)
WRITE_BACK_QUEUE = 8  # blocks queued for the disk writer before the idle write-back waits for it
log = logging.getLogger(__name__)


class StepLoop:
    """The loop's half of `engine.llm_engine.Engine` (which sets every attribute used here)."""

    device: torch.device
    config: Any
    fingerprint: str
    scheduler: Any
    runner: Any
    bm: Any
    tiers: Any
    disk_tier: Any
    cost: Any
    streams: Any
    ahead: Any
    feed: Any
    _cv: threading.Condition
    _inbox: list[Sequence]
    _cancels: list[Sequence]
    _closed: bool

    # --- step loop --------------------------------------------------------------------------
    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()

    def _idle(self) -> bool:
        return not (self._closed or self._inbox or self._cancels or self.scheduler.has_work())

    def _feed_while_idle(self) -> None:
        """After ``feed_idle_s`` of quiet, one step computes the pending answers' last tokens; work that
        comes first discards them. Under the lock: a request submitted meanwhile waits for one decode
        step, and `stats` never sees the step's blocks half held."""
        if not self.feed.pending:
            return
        with self._cv:
            if self._idle():
                self._cv.wait_for(lambda: not self._idle(), timeout=self.config.feed_idle_s)
            if not self._idle():
                self.feed.discard()
                return
            try:
                self.feed.run(self._commit_blocks)
            finally:
                self._cv.notify_all()

    def _write_back_while_idle(self) -> None:
        """Persist dirty blocks after a quiet spell (between a chat's turns, not inside a burst: disk I/O
        and its Python work would slow the next prefill), a couple at a time.

        Why the lock is let go between batches: a request submitted meanwhile then waits for one batch, not
        for the whole backlog. Holding it throughout stalled the first request after half a second of idle
        for 1.2 s on an H200 (`bench/prefill_probe.py`). Each batch still runs under the lock, so `forget`
        never interleaves with a write that it must cancel."""
        if not self.tiers:
            return
        with self._cv:
            if not self._idle():
                return
            self._cv.wait_for(lambda: not self._idle(), timeout=self.config.write_back_idle_s)
        while True:
            with self._cv:
                if not (self.tiers and self._idle()):
                    return
                if self.disk_tier.pending() >= WRITE_BACK_QUEUE:
                    # the disk is behind: wait for it rather than hold host copies of the whole pool
                    # (a slow disk and an int4 8B pool would otherwise queue ~16 GB of them)
                    self._cv.wait_for(lambda: not self._idle(), timeout=0.01)
                    continue
                self.tiers.write(WRITE_BACK_BATCH)
                self._cv.notify_all()
            time.sleep(0)  # a submit blocked on the lock takes it now, before the next batch

    def _loop(self) -> None:
        while True:
            try:
                self._feed_while_idle()
            except Exception:  # noqa: BLE001 - an unfed token costs the next turn one token, not the engine
                log.exception("feeding finished answers' last tokens failed")
            try:
                self._write_back_while_idle()
            except Exception:  # noqa: BLE001 - an unwritten block costs a later recompute, not the engine
                log.exception("idle write-back failed")
            with self._cv:
                self._cv.wait_for(lambda: not self._idle())
                self.feed.discard()  # work came first: those turns compute their last token themselves
                if self._closed:
                    for s in self.scheduler.running + self.scheduler.waiting + self._inbox:
                        self._finish(s, "cancelled")
                    self._cv.notify_all()
                    return
                for s in self._inbox:
                    self.scheduler.add(s)
                self._inbox.clear()
                for s in self._cancels:
                    if s.status is not Status.FINISHED:
                        self._finish(s, "cancelled")
                self._cancels.clear()
                self._cv.notify_all()
            try:
                self._step()
            except Exception as e:  # noqa: BLE001 - fail the batch, keep serving
                log.exception("engine step failed")
                with self._cv:
                    for s in list(self.scheduler.running):
                        s.events.put(Event("error", text=f"{type(e).__name__}: {e}"))
                        self._finish(s, "error", emit=False)
                    self._cv.notify_all()

    def _step(self) -> None:
        pending = self.ahead.take()  # a step launched ahead last time: its logits are this step's
        if pending is not None:
            batch, logits = pending
        else:
            batch = self.scheduler.schedule()
            if not batch:
                return
            logits = self.runner.run(batch)
        if self.runner.last_prefill[0]:
            self.cost.observe_prefill(*self.runner.last_prefill)
            self.runner.last_prefill = (0, 0.0)
        done = [(s, n) for s, n in batch if s.num_computed + n == len(s.tokens)]
        for s, n in batch:
            s.num_computed += n
        rows = [i for i, (s, n) in enumerate(batch) if s.num_computed == len(s.tokens)]
        assert len(rows) == len(done)
        waiting = bool(self.scheduler.waiting or self._inbox or self._cancels)
        if self.overlaps and self.ahead.eligible(batch, waiting):  # every row samples
            toks = self.ahead.launch(batch, logits)
        else:
            rows_logits = logits[rows] if len(rows) != len(batch) else logits
            toks = sample_batch(
                rows_logits,
                [s.params for s, _ in done],
                [s.generator for s, _ in done],
                greedy_ids=self.runner.graph_argmax(rows_logits),
            )
        finished = []
        for (s, _), tok in zip(done, toks, strict=True):
            if s.cancelled:
                continue
            reason = self.streams.push(s, tok)
            if reason:
                finished.append((s, reason))
        for s, _ in batch:
            self._commit_blocks(s)
        if finished:
            with self._cv:
                for s, reason in finished:
                    self._finish(s, reason)
                self._cv.notify_all()

    def _commit_blocks(self, s: Sequence) -> None:
        """Register newly full blocks under their content keys; write them through to disk."""
        bs = self.config.block_size
        while len(s.block_keys) < s.num_computed // bs and s.block_table:
            i = len(s.block_keys)
            parent = s.block_keys[-1] if s.block_keys else None
            key = block_hash(parent, self.fingerprint, s.tokens[i * bs : (i + 1) * bs])
            s.block_keys.append(key)
            if self.bm.register(s.block_table[i], key):
                self.tiers.mark(key, s.block_table[i])

    def _finish(self, s: Sequence, reason: str, emit: bool = True) -> None:
        """Free blocks now and close the stream. Caller holds ``_cv``."""
        if s.status is Status.FINISHED:
            return
        if s in self.scheduler.running:
            self.scheduler.running.remove(s)
        if s in self.scheduler.waiting:
            self.scheduler.waiting.remove(s)
        if s in self._inbox:
            self._inbox.remove(s)
        if s.block_table:
            if reason != "error" and self.ahead.carries_last_token(s):
                s.num_computed += 1
                self.feed.from_ahead += 1
            self._commit_blocks(s)
            self.scheduler.free(s, keep_tail=reason != "error")  # after an error its KV is not trusted
            if reason in ("stop", "length"):
                self.feed.offer(s)
        s.status = Status.FINISHED
        rest = self.streams.close(s)
        if emit:
            s.events.put(Event("finish", rest, [], reason, s.usage()))
