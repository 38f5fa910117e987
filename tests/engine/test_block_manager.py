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


def test_a_partial_tail_is_taken_over_once_and_only_by_matching_tokens():
    """`keep_tail`: a finished turn's partial last block, findable under its parent's key until taken
    (then it is the new sequence's own block), evicted (LRU, like cached blocks) or dropped."""
    bm = _bm(3)
    full, tail = bm.allocate(), bm.allocate()
    bm.register(full, "k0")
    bm.keep_tail(tail, "k0", [7, 8])
    bm.release([full, tail])
    assert bm.num_free == 3 and bm.num_referenced == 0
    assert bm.take_tail("k0", [9, 8, 1]) is None and bm.take_tail("other", [7, 8, 1]) is None
    assert bm.take_tail("k0", []) is None  # nothing to serve
    bm.acquire(full)
    assert bm.take_tail("k0", [7, 8, 1]) == (tail, 2)
    assert bm.ref[tail] == 1 and bm.take_tail("k0", [7, 8, 1]) is None  # taken: no longer findable
    bm.release([full, tail])
    assert bm.num_free == 3 and tail in bm.free_plain  # an unkeyed block again: plain free
    for needed, rows in (([7], 1), ([7, 9, 1], 1)):  # the rows both start with: a regenerated or edited turn
        t = bm.allocate()
        bm.keep_tail(t, "k0", [7, 8])
        bm.release([t])
        assert bm.take_tail("k0", needed) == (t, rows)
        bm.release([t])

    # a referenced tail is not handed out; the newest tail under a parent replaces the older one
    a, b = bm.allocate(), bm.allocate()
    bm.keep_tail(a, None, [1])
    assert bm.take_tail(None, [1, 2]) is None  # its sequence still holds it
    bm.release([a])
    bm.keep_tail(b, None, [3])
    bm.release([b])
    assert bm.take_tail(None, [1, 2]) is None and bm.take_tail(None, [3, 4]) == (b, 1)
    bm.release([b])
    assert bm.num_free == 3


def test_tails_are_evicted_least_recently_used_and_dropped_on_request():
    bm = _bm(2)
    t0, t1 = bm.allocate(), bm.allocate()
    bm.keep_tail(t0, "p0", [1])
    bm.keep_tail(t1, "p1", [2])
    bm.release([t0])
    bm.release([t1])
    assert bm.allocate() == t0  # the oldest unreferenced block goes first, tail or not
    assert bm.take_tail("p0", [1, 5]) is None and bm.tails.keys() == {"p1"}
    bm.drop_tail("p1")  # its conversation was deleted
    assert bm.take_tail("p1", [2, 5]) is None and t1 in bm.free_plain and not bm.free_cached
    bm.release([t0])
    assert bm.num_free == 2
