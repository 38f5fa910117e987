"""`engine.dma_batch`: on a GPU box with a CUDA 12.8+ driver, scattered pinned pieces land where asked in
one call; without one, it says so instead of crashing."""

from __future__ import annotations

import pytest
import torch

from engine import dma_batch


def test_a_batch_lands_each_piece_or_says_why_it_cannot():
    if not dma_batch.available():  # CI: no CUDA driver
        with pytest.raises(RuntimeError, match="cuMemcpyBatchAsync is not available"):
            dma_batch.copy_batch([0], [0], [1], None)
        return
    g = torch.Generator().manual_seed(0)
    host = torch.randint(-127, 128, (6, 2, 4096), generator=g, dtype=torch.int8).pin_memory()
    dev = torch.zeros(2, 8, 4096, dtype=torch.int8, device="cuda")
    order = [5, 0, 3]  # pool blocks for host slots 0, 1, 2; slots 3-5 not asked for
    dsts = [dev[kv, b].data_ptr() for b in order for kv in (0, 1)]
    srcs = [host[i, kv].data_ptr() for i in range(3) for kv in (0, 1)]
    dma_batch.copy_batch(dsts, srcs, [4096] * 6, torch.cuda.current_stream())
    torch.cuda.synchronize()
    for i, b in enumerate(order):
        assert torch.equal(dev[:, b].cpu(), host[i])
    rest = [b for b in range(8) if b not in order]
    assert dev[:, rest].abs().sum() == 0
