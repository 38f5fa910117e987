"""Write-back of cached KV blocks to the disk tier, through the CPU tier when the GPU block is reused.

Why a separate piece: a block registered under its content key is "dirty" until the disk tier holds it.
Three events move it there: the engine is idle (write back a few at a time, so disk I/O stays out of the
next request's TTFT), the GPU block is evicted (`spill`: one async copy into the CPU tier, the block stays
dirty there), or the CPU tier drops it (`cpu_evicted`: written to disk first). `close` writes the rest.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch

IN_CPU = -1  # a dirty block whose data now lives in the CPU tier (its GPU block was reused)


class WriteBack:
    def __init__(self, disk_tier: Any, sync: Callable[[], None]) -> None:
        self.disk_tier = disk_tier
        self.sync = sync
        self.cpu_tier: Any = None  # set once built (the CPU tier takes `cpu_evicted` as its callback)
        self.bm: Any = None  # likewise the block manager (`spill`)
        self.dirty: OrderedDict[str, int] = OrderedDict()  # key -> GPU block, or IN_CPU

    def __len__(self) -> int:
        return len(self.dirty)

    def mark(self, key: str, block: int) -> None:
        """A newly registered block the disk tier does not hold yet."""
        if self.disk_tier is not None and key not in self.disk_tier:
            self.dirty[key] = block

    def drop(self, key: str) -> None:
        self.dirty.pop(key, None)

    def spill(self, key: str, block: int) -> None:
        """A cached block is about to be overwritten: keep it in the CPU tier, write it if dirty.

        Why one async copy: eviction happens inside the step that needs the block (a long prefill evicts
        hundreds), so each spill is a single pinned device->host copy queued on the stream, with no host
        sync; a dirty block then stays dirty with its data in the CPU tier (``IN_CPU``). Two synchronous
        copies per spill (one pageable for the disk queue) put ~0.5 s into some TTFTs."""
        data = self.bm.read_block(block)
        dirty = key in self.dirty
        if self.cpu_tier is not None and self.cpu_tier.put(key, data, non_blocking=True):
            if dirty:
                self.dirty[key] = IN_CPU
            return
        if dirty:
            del self.dirty[key]
            self.disk_tier.put(key, data)

    def cpu_evicted(self, key: str, host: torch.Tensor) -> None:
        """The CPU tier is about to reuse ``key``'s buffer: a dirty block goes to disk first."""
        if self.dirty.get(key) == IN_CPU:
            del self.dirty[key]
            self.sync()  # its async copy from the GPU must have landed
            self.disk_tier.put(key, host)

    def write(self, limit: int) -> None:
        """Persist up to ``limit`` dirty blocks, oldest first."""
        synced = False
        for _ in range(min(limit, len(self.dirty))):
            key, block = self.dirty.popitem(last=False)
            if block != IN_CPU:
                self.disk_tier.put(key, self.bm.read_block(block))
                continue
            data = self.cpu_tier.get(key) if self.cpu_tier is not None else None
            if data is not None:
                if not synced:
                    self.sync()
                    synced = True
                self.disk_tier.put(key, data)
