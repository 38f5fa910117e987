"""Decode one step ahead: launch step N+1 on the GPU before step N's tokens reach the host.

Why: at batch 1 an int4 8B decode step is ~2.3 ms of kernels, and the host work between two graph replays
(waiting for the sampled token, streaming its text, the scheduler, the next step's input copies) left the
GPU idle for ~0.5 ms a step on the H200 (bench/RESULTS.md). A greedy step's next input is the argmax of its
logits, which the device already holds: so the next step is launched from it, and the host does this
step's work while the GPU runs the next. When a sequence stops (EOS, a stop string, a cancel), the step
launched for it is dropped; the KV it wrote went to a slot of the sequence's own block and is kept: it is
the last token's (`engine.answer_feed`).

Only whole decode batches run ahead: every sequence greedy, its prompt done, at least one more token
allowed, and no request waiting to join (it is admitted at the next ordinary step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from engine.block_manager import NoFreeBlocks
from engine.sampling import argmax_rows
from engine.sequence import Sequence, Status

Batch = list[tuple[Sequence, int]]


@dataclass
class Ahead:
    """A launched step: its sequences (one token each) and its logits, which live in a buffer the next
    launch overwrites, so they are read (argmax on the device) before anything else is launched."""

    batch: Batch
    logits: torch.Tensor


class Lookahead:
    """Launches the next decode step from the device's argmax and hands the current step's tokens back."""

    def __init__(self, runner: Any, scheduler: Any) -> None:
        self.runner = runner
        self.scheduler = scheduler
        self.pending: Ahead | None = None
        self.launched = 0  # steps launched ahead (tests, stats)
        self.dropped = 0  # rows of launched steps whose sequence had stopped meanwhile
        self._host: dict[int, torch.Tensor] = {}  # pinned token buffers by batch size

    @staticmethod
    def eligible(batch: Batch, others_waiting: bool) -> bool:
        """Every sequence of ``batch`` samples greedily from this step and may take another token."""
        return not others_waiting and all(
            s.params.greedy
            and not s.cancelled
            and s.num_computed == len(s.tokens)
            and s.num_completion + 1 < s.params.max_tokens
            for s, _ in batch
        )

    def carries_last_token(self, seq: Sequence) -> bool:
        """Whether the pending step computes ``seq``'s newest token, which has no KV yet: it writes that
        row into ``seq``'s own block before any later step can read the block."""
        return (
            self.pending is not None
            and seq.num_computed == len(seq.tokens) - 1
            and any(s is seq for s, _ in self.pending.batch)
        )

    def take(self) -> tuple[Batch, torch.Tensor] | None:
        """The pending step's live sequences and their logits rows (None: nothing pending, or all stopped)."""
        ahead, self.pending = self.pending, None
        if ahead is None:
            return None
        keep = [i for i, (s, _) in enumerate(ahead.batch) if s.status is Status.RUNNING and not s.cancelled]
        self.dropped += len(ahead.batch) - len(keep)
        if not keep:
            return None
        if len(keep) == len(ahead.batch):
            return ahead.batch, ahead.logits
        return [ahead.batch[i] for i in keep], ahead.logits[keep]

    def launch(self, batch: Batch, logits: torch.Tensor) -> list[int]:
        """This step's greedy tokens; the next step is launched first (on the device's argmax) unless the
        pool has no block for a sequence's next position, where the caller's next step schedules as usual.
        ``batch``'s ``num_computed`` already counts this step."""
        ids = self.runner.graph_argmax(logits)  # the decode graph's own argmax when it has one
        if ids is None:
            ids = argmax_rows(logits)
        done = None
        if ids.is_cuda:
            host = self._host.get(len(batch))
            if host is None:
                host = self._host[len(batch)] = torch.empty(len(batch), dtype=torch.long, pin_memory=True)
            host.copy_(ids, non_blocking=True)
            done = torch.cuda.Event()
            done.record(torch.cuda.current_stream(ids.device))  # the stream the copy went to
        else:
            host = ids.clone()  # ids may be the runner's ids buffer, which the next step overwrites
        try:
            for s, _ in batch:
                self.scheduler.ensure_slots(s, s.num_computed + 1)
        except NoFreeBlocks:
            pass
        else:
            nxt = [(s, 1) for s, _ in batch]
            self.pending = Ahead(nxt, self.runner.run(nxt, ahead=ids))
            self.launched += 1
        if done is not None:
            done.synchronize()
        return host.tolist()
