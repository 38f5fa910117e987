"""Inputs of a captured decode graph: one device buffer per graph, filled by one host-to-device copy a step.

Why: a replayed graph reads its inputs from fixed device buffers. Copying them one by one (token ids,
positions, KV slots, block tables and context lengths from pageable memory, then the Triton reader's
int32 tables and lengths device to device) put seven small operations on the stream between two replays,
plus the device argmax of the logits, each issued from Python: host time a step spends before the GPU can
go on (on an H200 the host kept ahead of the ~2.3 ms int4 step either way, so tok/s did not move there,
bench/RESULTS.md; the saving is the host's). Here the fields are packed into one pinned buffer (int64 and
int32 fields side by side in one byte buffer) and copied at once; the token ids live in a buffer shared by
every graph, which the graph itself fills with its argmax (`engine.model_runner`), so a greedy step
launched ahead copies its other fields only.
"""

from __future__ import annotations

import numpy as np
import torch


class PinnedRing:
    """Two host staging buffers used in turn (pinned on CUDA, so the copy is truly asynchronous): a buffer
    is written again only after the copy that read it has run, which its event tells."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.bufs: list[torch.Tensor | None] = [None, None]
        self.events: list[torch.cuda.Event | None] = [None, None]
        self.turn = 0

    def take(self, nbytes: int) -> torch.Tensor:
        """A host byte buffer of ``nbytes`` that no pending copy reads."""
        self.turn ^= 1
        ev = self.events[self.turn]
        if ev is not None:
            ev.synchronize()
        buf = self.bufs[self.turn]
        if buf is None or buf.numel() < nbytes:
            size = max(nbytes, 2 * (buf.numel() if buf is not None else 0), 4096)
            buf = self.bufs[self.turn] = torch.empty(size, dtype=torch.uint8, pin_memory=self.cuda)
        return buf[:nbytes]

    def copied(self) -> None:
        """Mark the copies just queued from the current buffer (they read it before the event fires)."""
        if self.cuda:
            ev = self.events[self.turn] = self.events[self.turn] or torch.cuda.Event()
            ev.record()


class StaticInputs:
    """The device fields one decode graph reads, as views of one byte buffer.

    int64: ``pos``, ``slots`` and, for the gather reader, ``lens`` and ``tables``; int32 (the Triton
    reader): ``tables32`` and ``lens32``. Unused rows of a padded batch point at the scratch block."""

    def __init__(self, b: int, width: int, device: torch.device, int32_meta: bool) -> None:
        f64 = [("pos", (b,)), ("slots", (b,))]
        f64 += [] if int32_meta else [("lens", (b,)), ("tables", (b, width))]
        f32 = [("tables32", (b, width)), ("lens32", (b,))] if int32_meta else []
        self.layout: list[tuple[str, int, np.dtype, tuple[int, ...]]] = []
        off = 0
        for fields, dt in ((f64, np.int64), (f32, np.int32)):
            for name, shape in fields:
                self.layout.append((name, off, np.dtype(dt), shape))
                off += int(np.prod(shape)) * np.dtype(dt).itemsize
        self.nbytes = off
        self.dev = torch.zeros(off, dtype=torch.uint8, device=device)
        torch_dt = {np.dtype(np.int64): torch.int64, np.dtype(np.int32): torch.int32}
        self.views = {
            name: self.dev[o : o + int(np.prod(shape)) * dt.itemsize].view(torch_dt[dt]).view(shape)
            for name, o, dt, shape in self.layout
        }

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.views[name]

    def pack(self, host: torch.Tensor, pos: list[int], slots: list[int], tables: list[list[int]],
             lens: list[int]) -> None:  # fmt: skip
        """Write one step's fields into ``host`` (``nbytes`` of a `PinnedRing` buffer) in this layout."""
        raw = host.numpy()
        data = {"pos": pos, "slots": slots, "lens": lens, "tables": tables}
        data |= {"lens32": lens, "tables32": tables}
        for name, off, dt, shape in self.layout:
            n = int(np.prod(shape)) * dt.itemsize
            raw[off : off + n].view(dt).reshape(shape)[...] = data[name]

    def load(self, host: torch.Tensor) -> None:
        """Queue the copy of a packed ``host`` buffer into the device fields."""
        self.dev.copy_(host[: self.nbytes], non_blocking=True)

    @property
    def ids_offset(self) -> int:
        """Where host token ids may follow the fields in one staging buffer (int64-aligned)."""
        return -(-self.nbytes // 8) * 8

    def host_ids(self, host: torch.Tensor, ids: list[int]) -> torch.Tensor:
        """``ids`` written after the fields in ``host`` (``ids_offset + 8 * len(ids)`` bytes), as int64."""
        out = host[self.ids_offset : self.ids_offset + 8 * len(ids)].view(torch.int64)
        out.numpy()[:] = ids
        return out
