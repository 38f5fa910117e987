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

Without CUDA (tests) the same object copies layer l when layer l is waited for, so a forward that read a
layer before waiting for it would read an empty block there too.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger(__name__)

try:
    from engine.kv_restore_triton import copy_layer
except ImportError:  # pragma: no cover - a CPU box without triton copies with torch
    copy_layer = None


# Below this many bytes a restore is copied whole before the step, which may then replay a prefill graph:
# eager costs a short chunk ~5 ms of host launches over its graph (a 256-token turn on an H100: 14.2 against
# 8.8 ms), about what ~256 MB take over the bus at ~50 GB/s. An estimate from those figures.
MIN_BYTES = 256 << 20
# whether engines on CUDA restore this way unless configured: on an H100, a turn restoring 9.6K of its 15.6K
# tokens (int8 KV) took 39.8 ms against 48.3-49.6 copied before the step (bench/restore_probe.py,
# bench/RESULTS.md 2026-12-06)
ON_BY_DEFAULT = True


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
        self.started, self.done = True, 0
        self.steps += 1
        self.copied_blocks += len(self.items)
        base = self.items[0][1]
        dev = self.kv.device
        offs = [h.data_ptr() - base.data_ptr() for _, h, _ in self.items]
        off_t = torch.tensor(offs, dtype=torch.int64).to(dev, non_blocking=True)
        blk_t = torch.tensor([b for b, _, _ in self.items], dtype=torch.int32).to(dev, non_blocking=True)
        self._args = (base, off_t, blk_t)
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
            cur = torch.cuda.current_stream(dev)
            cur.wait_stream(self.stream)
            for b, h, _ in self.items:
                self.kv[:, :, b].copy_(h, non_blocking=True)

    def _launch(self, layer: int) -> None:
        base, off_t, blk_t = self._args
        if not self.use_kernel:
            for b, h, _ in self.items:
                self.kv[layer, :, b].copy_(h[layer], non_blocking=True)
            return
        src = base.view(torch.uint8).view(-1)[layer * 2 * self.x :]  # slot 0's layer; offsets: the others
        copy_layer(src, off_t, self.kv8[layer], blk_t, self.x, self.kv8.stride(1))

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
        self.wait_all()
        self.cpu.release([k for _, _, k in self.items])
        self.items, self.started = [], False
