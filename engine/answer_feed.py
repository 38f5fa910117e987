"""A finished answer's last token, fed into the KV cache once the engine is idle.

Why: a sampled token gets its KV when the next step reads it, and an answer's last token has no next
step. So the next turn of the conversation (the history, that answer, the new message) computed it
again: a turn of 256 new tokens reached the engine as 257, one row past a 128-row attention tile and
a prefill-graph bucket (bench/RESULTS.md). After a quiet spell (``EngineConfig.feed_idle_s``) the
engine now runs one decode step that computes the last tokens of the answers finished meanwhile and
keeps them with each answer's partial block (`BlockManager.keep_tail`), so the next turn computes only
its own tokens.

Why only when idle: the step costs a decode step (a few ms for an 8B model on an H100), which nobody
waits for between a person's turns, but a client that sends its next request at once would. Work that
arrives first discards the pending feeds, and that turn computes the token itself, as before. Nothing
is held meanwhile: a feed re-admits the finished tokens from the prefix cache, and runs only if all of
them but the last still have KV on the GPU (evicted or forgotten meanwhile: dropped).

A greedy answer stopped by EOS or a stop string needs no step where decode ran ahead
(`engine.lookahead`): the step launched ahead computed its last token, which the loop then counts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine.sampling import SamplingParams
from engine.sequence import Sequence


class AnswerFeed:
    """Answers waiting for their last token's KV, and the one step that computes them."""

    def __init__(self, scheduler: Any, runner: Any, on: bool) -> None:
        self.scheduler = scheduler
        self.runner = runner
        self.on = on
        self.pending: list[list[int]] = []  # a finished answer's tokens (prompt + answer)
        self.fed = 0  # last tokens computed by a feed step
        self.from_ahead = 0  # last tokens a step launched ahead had computed already
        self.dropped = 0  # discarded: work came first, or the tokens had left the GPU

    def offer(self, seq: Sequence) -> None:
        """Queue a finished answer whose tokens have KV up to all but the last."""
        if self.on and self.scheduler.prefix_cache and seq.remaining == 1:
            self.pending.append(seq.tokens)

    def discard(self) -> None:
        self.dropped += len(self.pending)
        self.pending.clear()

    def stats(self) -> dict[str, int]:
        return {
            "pending": len(self.pending),
            "fed": self.fed,
            "from_ahead": self.from_ahead,
            "dropped": self.dropped,
        }

    def run(self, commit: Callable[[Sequence], None]) -> int:
        """One decode step over the pending answers still on the GPU; returns how many were fed.

        Each is admitted like a request with a one-token prompt left: its full blocks are prefix hits,
        its partial block the kept tail. ``commit`` registers blocks the fed token completes. On a
        failing step the blocks go back with the rows they held before, so nothing wrong is kept."""
        batch: list[tuple[Sequence, int]] = []
        tokens, self.pending = self.pending, []
        for toks in tokens:
            seq = Sequence(toks, SamplingParams(max_tokens=1))
            if self.scheduler.admit_resident(seq):
                batch.append((seq, 1))
        self.dropped += len(tokens) - len(batch)
        if not batch:
            return 0
        ok = False
        try:
            self.runner.run(batch)  # logits unused: nothing is sampled
            ok = True
        finally:
            for seq, n in batch:
                seq.num_computed += n if ok else 0
                commit(seq)
                self.scheduler.free(seq, keep_tail=True)
        self.fed += len(batch)
        return len(batch)
