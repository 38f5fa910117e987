"""Restores from the CPU tier that overlap the prefill: the copy runs layer by layer beside the model.

Why: a session coming back from the CPU tier used to copy every block, all layers, before its prefill
started, so the turn paid the copy and then the compute (a 15K-token history is 1 GB of int8 KV, ~19 ms
over PCIe at 54 GB/s, before a 256-token turn's ~17 ms). Layer l's attention needs only layer l's KV, so
layers l+1.. can cross the bus while layer l computes (the layer-wise pipelining LMCache does).

How: the tier keeps a block as one slot ``[L, 2, X]`` (all layers), so one layer of N blocks is 2N strided
pieces: too many ``cudaMemcpyAsync`` calls. One Triton kernel a layer instead reads the pinned slots in
place (pinned host memory is mapped into the GPU's address space) and writes the pool, on a side stream,
with an event after each layer; the model's attention at layer l waits for event l only
(`AttnBatch.layer_ready`). The CPU tier keeps the slots it reads from held until the step is over.

A step that a prefill CUDA graph replays (a chat turn: one short chunk) keeps its graph: every prefill
graph holds the 32 copies on a side stream and the per-layer waits, and reads the step's slots and their
count from device buffers (`stage`); a replay without a restore finds a count of 0 and copies nothing.
Eagerly such a turn paid ~5-10 ms of launches, which ate most of what the overlap saved (32 sessions of
~15.4K tokens on an H100: 45.0 ms a turn layer by layer eagerly against 47.4 ms copied first; in the graph
35.1 against 48.4, bench/RESULTS.md).

Without CUDA (tests) the same object copies layer l when layer l is waited for, so a forward that read a
layer before waiting for it would read an empty block there too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger(__name__)

try:
    from engine.kv_restore_triton import copy_layer
except ImportError:  # pragma: no cover - a CPU box without triton copies with torch
    copy_layer = None


# For steps no prefill graph serves (they run eagerly): below this many bytes a restore is copied whole
# before the step instead, which may then replay a graph:
# eager costs a short chunk ~5 ms of host launches over its graph (a 256-token turn on an H100: 14.2 against
# 8.8 ms), about what ~256 MB take over the bus at ~50 GB/s. An estimate from those figures.
MIN_BYTES = 256 << 20
# whether engines on CUDA restore this way unless configured: on an H100, a turn restoring 9.6K of its 15.6K
# tokens (int8 KV) took 39.8 ms eagerly against 48.3-49.6 copied before the step (bench/restore_probe.py,
# bench/RESULTS.md 2026-12-06)
ON_BY_DEFAULT = True
# whether prefill graphs hold the copies (see the module docstring); False: such steps run eagerly. H100s,
# a turn restoring 9.9K tokens: 16.3-18.8 ms against 24.8-26.7 copied first (two machines), 27.0 against
# 26.0 (a third)
IN_GRAPHS = True


class LayerwiseRestore:
    """Pending host -> pool block copies of one step, issued per layer (see the module docstring)."""

    def __init__(self, kv: torch.Tensor, cpu_tier: Any, use_kernel: bool | None = None) -> None:
        self.kv = kv  # the runner's whole pool, [L, 2, blocks, ...]
        self.layers = kv.shape[0]
        self.kv8 = kv.view(torch.uint8).view(self.layers, 2, kv.shape[2], -1)  # bytes: [L, 2, blocks, X]
        self.x = self.kv8.shape[-1]
        self.cpu = cpu_tier
        self.cuda = kv.is_cuda
        self.use_kernel = (copy_layer is not None) if use_kernel is None else use_kernel
        self.items: list[tuple[int, torch.Tensor, str]] = []  # (pool block, host slot, key)
        self.started = False
        self.done = 0  # layers copied so far (CPU)
        self.stream = torch.cuda.Stream(kv.device) if self.cuda else None
        self.events = [torch.cuda.Event() for _ in range(self.layers)] if self.cuda else []
        # slot 0, each slot's byte offset from it, each slot's pool block: built once a step, and kept (on
        # CUDA the side stream's kernels read them) until the next start
        self._args: tuple = ()
        self.min_bytes = MIN_BYTES
        self.broken = False  # the kernel failed once: the scheduler copies blocks itself again
        self.copied_blocks = 0  # totals for `Engine.stats`
        self.steps = 0
        self.layerwise_steps = 0
        self.graph_steps = 0
        # prefill graphs (`graph_copies`): the step's slots as offsets from `g_origin`, their pool blocks
        # and count, in buffers the captured copies read; tests set it on CPU (graph bodies run eagerly)
        self.in_graphs = IN_GRAPHS and self.cuda and self.use_kernel
        self._staged = False  # this step's slots are in those buffers
        self.replayed = False  # and the graph (or its body) that copies them ran (set by `PrefillGraphs.run`)
        if self.cuda:
            dev = kv.device
            self.g_off = torch.zeros(kv.shape[2], dtype=torch.int64, device=dev)
            self.g_blk = torch.zeros(kv.shape[2], dtype=torch.int32, device=dev)
            self.g_n = torch.zeros(1, dtype=torch.int32, device=dev)
            self.g_origin = torch.empty(16, dtype=torch.uint8).pin_memory()
            self.g_stream = torch.cuda.Stream(dev)
            self.g_events = [torch.cuda.Event() for _ in range(self.layers)]
            self.g_fence = torch.zeros(1, dtype=torch.int32, device=dev)

    def add(self, block: int, host: torch.Tensor, key: str) -> None:
        """Queue ``host`` (a CPU-tier slot, ``[L, 2, ...]``) for pool block ``block``; hold the slot."""
        self.cpu.hold(key)
        self.items.append((block, host, key))

    def pending(self) -> bool:
        return bool(self.items) and not self.started

    def worth_it(self) -> bool:
        """Whether the pending copy is large enough to run the step eagerly beside it (`MIN_BYTES`)."""
        if self.broken:
            return False
        return sum(h.numel() * h.element_size() for _, h, _ in self.items) >= self.min_bytes

    def start(self) -> None:
        """Launch every layer's copy (CUDA: on the side stream, after what the model stream queued so far,
        e.g. a spill of the block being overwritten)."""
        self._begin()
        base = self.items[0][1]
        dev = self.kv.device
        offs, blks = self._slot_tensors(base)
        self._args = (base, offs.to(dev, non_blocking=True), blks.to(dev, non_blocking=True))
        if not self.cuda:
            return
        self.stream.wait_stream(torch.cuda.current_stream(dev))
        try:
            with torch.cuda.stream(self.stream):
                for layer in range(self.layers):
                    self._launch(layer)
                    self.events[layer].record(self.stream)
        except Exception:  # noqa: BLE001 - e.g. a kernel this GPU or driver refuses: copy as before, stop
            log.exception("layer-wise KV restore failed; copying blocks before each step from now on")
            self.broken = True
            torch.cuda.current_stream(dev).wait_stream(self.stream)
            self._copy_whole()

    def rides_graph(self, prefill: Any, batch: list, ahead: Any) -> bool:
        """Whether this step (``batch``: (sequence, new tokens) pairs) replays a prefill graph
        (`engine.prefill_graphs`), whose copies then serve it."""
        if not self.in_graphs or self.broken or ahead is not None or len(batch) != 1 or batch[0][1] < 2:
            return False
        return prefill.serves([(0, batch[0][1], 0, [])], False, None)

    def stage(self) -> None:
        """For a step a prefill graph replays: its slots into the buffers the graph's copies read (CPU:
        as `start`, each layer copied when waited for)."""
        if not self.cuda:
            self.start()
        else:
            self._begin()
            n = len(self.items)
            offs, blks = self._slot_tensors(self.g_origin)
            self.g_off[:n].copy_(offs, non_blocking=True)
            self.g_blk[:n].copy_(blks, non_blocking=True)
            self.g_n.fill_(n)
        self._staged, self.replayed = True, False
        self.graph_steps += 1

    def graph_copies(self) -> Callable[[int], None]:
        """In a prefill graph's body (captured, or run eagerly): every layer's copy of the staged slots on
        a side stream, an event after each; returns the wait layer l's attention calls. The wait adds a
        one-element fill on the model stream, a kernel launched without PDL, so it starts only once the
        copy has finished; the next kernel, launched with PDL, may overlap the fill but not the copy (its
        own edge from the copy could let it start, and load old K/V before its PDL wait,
        `paged_attn_triton.PRE_WAIT`, while the copy still runs). `graph_join` ends the fork."""
        if not self.cuda:
            return self.wait_layer if self._staged else (lambda layer: None)
        cur = torch.cuda.current_stream(self.kv.device)
        self.g_stream.wait_stream(cur)
        with torch.cuda.stream(self.g_stream):
            for layer in range(self.layers):
                copy_layer(self.g_origin, self.g_off, self.kv8[layer], self.g_blk, self.x, self.kv8.stride(1),
                           layer * 2 * self.x, self.g_n)  # fmt: skip
                self.g_events[layer].record(self.g_stream)

        def wait(layer: int) -> None:
            cur.wait_event(self.g_events[layer])
            self.g_fence.zero_()

        return wait

    def graph_join(self) -> None:
        if self.cuda:
            torch.cuda.current_stream(self.kv.device).wait_stream(self.g_stream)

    def _begin(self) -> None:
        """A step's restore starts: counted for `Engine.stats`."""
        self.started, self.done = True, 0
        self.steps += 1
        self.copied_blocks += len(self.items)

    def _slot_tensors(self, origin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each queued slot's byte offset from ``origin`` (int64) and its pool block (int32), on the host."""
        offs = [h.data_ptr() - origin.data_ptr() for _, h, _ in self.items]
        return (
            torch.tensor(offs, dtype=torch.int64),
            torch.tensor([b for b, _, _ in self.items], dtype=torch.int32),
        )

    def _copy_whole(self) -> None:
        """Every queued block, all layers, on the model stream (a failed kernel, a graph that never ran)."""
        for b, h, _ in self.items:
            self.kv[:, :, b].copy_(h, non_blocking=True)

    def _launch(self, layer: int) -> None:
        base, off_t, blk_t = self._args
        if not self.use_kernel:
            for b, h, _ in self.items:
                self.kv[layer, :, b].copy_(h[layer], non_blocking=True)
            return
        src = base.view(torch.uint8)  # the kernel counts offsets in bytes
        copy_layer(src, off_t, self.kv8[layer], blk_t, self.x, self.kv8.stride(1), layer * 2 * self.x)

    def wait_all(self) -> None:
        """The whole copy before the step (a small restore: the step may replay a graph)."""
        if self.cuda:
            torch.cuda.current_stream(self.kv.device).wait_event(self.events[-1])
        else:
            self._copy_upto(self.layers)

    def wait_layer(self, layer: int) -> None:
        """Called by layer ``layer``'s attention before it touches the cache."""
        if self.cuda:
            torch.cuda.current_stream(self.kv.device).wait_event(self.events[layer])
            return
        self._copy_upto(layer + 1)

    def _copy_upto(self, layers: int) -> None:
        while self.done < layers:
            self._launch(self.done)
            self.done += 1

    def finish(self) -> None:
        """After the step's forward (also when it raised): the model stream waits for the last layer's
        copy, so anything it queues later (spills, write-back, the next step) sees the restored blocks;
        then the held slots go back to the tier."""
        if not self.started:
            return
        if self._staged and self.cuda:
            if not self.replayed:  # the step raised before its graph ran: copy the blocks whole
                self._copy_whole()
            self.g_n.zero_()  # later replays copy nothing
        else:
            self.wait_all()
        self.cpu.release([k for _, _, k in self.items])
        self.items, self.started, self._staged = [], False, False
