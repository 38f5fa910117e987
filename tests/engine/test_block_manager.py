from __future__ import annotations

import pytest
import torch

from engine.block_manager import BlockManager, NoFreeBlocks, block_hash, chain_hashes


def _bm(n=4, on_evict=None):
    return BlockManager(torch.zeros(2, 2, n, 4, 1, 2), 4, on_evict)


def test_keys_chain_and_depend_on_fingerprint():
    toks = list(range(10))
    a = chain_hashes(toks, 4, "fpA")
    assert len(a) == 2 and a[1] == block_hash(a[0], "fpA", toks[4:8])
    assert chain_hashes(toks, 4, "fpB")[0] != a[0]
    # same block contents after a different prefix -> different key
    assert chain_hashes([9, 9, 9, 9] + toks[4:8], 4, "fpA")[1] != a[1]


def test_refcount_lru_eviction_and_spill():
    evicted = []
    bm = _bm(3, on_evict=lambda k, b: evicted.append((k, b)))
    b0, b1, b2 = bm.allocate(), bm.allocate(), bm.allocate()
    bm.register(b0, "k0")
    bm.register(b1, "k1")
    with pytest.raises(NoFreeBlocks):
        bm.allocate()
    bm.release([b0, b1])  # b1 released first -> older in the LRU
    assert bm.lookup("k0") == b0 and bm.num_free == 2
    bm.acquire(b0)  # a prefix hit takes it off the free list
    assert bm.allocate() == b1 and evicted == [("k1", b1)] and bm.lookup("k1") is None
    bm.release([b0, b1, b2])
    assert bm.num_free == 3 and bm.num_referenced == 0
    with pytest.raises(RuntimeError):
        bm.release([b2])


def test_read_write_block_roundtrip():
    bm = _bm()
    data = torch.randn(2, 2, 4, 1, 2)
    bm.write_block(2, data)
    assert torch.equal(bm.read_block(2), data)
    assert not bm.register(2, "x") or not bm.register(1, "x")  # one block per key
