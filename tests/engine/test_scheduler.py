from __future__ import annotations

import torch

from engine.block_manager import BlockManager, chain_hashes
from engine.sampling import SamplingParams
from engine.scheduler import Scheduler
from engine.sequence import Sequence


def _sched(blocks=64, budget=32):
    bm = BlockManager(torch.zeros(1, 2, blocks, 4, 1, 2), 4)
    return Scheduler(bm, "fp", max_batch_tokens=budget, max_num_seqs=8)


def test_short_first_chunked_prefill_and_decodes_first():
    s = _sched()
    long_, short = Sequence(list(range(100)), SamplingParams()), Sequence([1, 2, 3], SamplingParams())
    s.add(long_)
    s.add(short)
    batch = s.schedule()
    assert [(q is short, n) for q, n in batch] == [(True, 3), (False, 29)]  # budget 32, chunked
    for q, n in batch:
        q.num_computed += n
    short.tokens.append(7)  # short now decodes
    batch = s.schedule()
    assert batch[0] == (short, 1) and batch[1] == (long_, 31)


def test_prefix_hit_and_preemption_release_blocks():
    s = _sched(blocks=8, budget=64)
    a = Sequence(list(range(13)), SamplingParams())
    s.add(a)
    ((q, n),) = s.schedule()
    a.num_computed += n
    for i, k in enumerate(["k0", "k1", "k2"]):
        s.bm.register(a.block_table[i], k)
    b = Sequence(list(range(40)), SamplingParams())  # needs 10 blocks > pool: waits
    s.add(b)
    assert all(q is not b for q, _ in s.schedule())
    s.free(a)
    assert s.bm.num_free == 8 and s.bm.num_referenced == 0


def test_long_waiting_request_is_not_starved():
    s = _sched(budget=8)
    old = Sequence(list(range(40)), SamplingParams())
    old.arrival -= 10.0  # waited longer than max_wait_s
    s.add(old)
    s.add(Sequence([1, 2], SamplingParams()))
    assert s.schedule()[0] == (old, 8)


def test_admit_resident_takes_only_a_prefix_wholly_on_the_gpu():
    """`Scheduler.admit_resident` (what `engine.answer_feed` re-admits with): a finished answer whose
    tokens but the last have KV in cached blocks and a kept tail comes back with one token left; with its
    tail or a full block gone it is refused, and nothing stays held."""
    s = _sched(blocks=8, budget=64)
    toks = list(range(10))
    a = Sequence(toks, SamplingParams())
    s.add(a)
    s.schedule()
    a.num_computed = 9  # an answer's last token has no KV
    for i, k in enumerate(chain_hashes(toks[:8], 4, "fp")):
        s.bm.register(a.block_table[i], k)
        a.block_keys.append(k)
    s.running.remove(a)
    s.free(a, keep_tail=True)
    feed = Sequence(toks, SamplingParams())
    assert s.admit_resident(feed) and feed.num_computed == 9 and feed.remaining == 1
    s.free(feed, keep_tail=True)
    s.bm.drop_tail(chain_hashes(toks[:8], 4, "fp")[-1])  # the tail is gone: 1 row to recompute
    assert not s.admit_resident(Sequence(toks, SamplingParams()))
    assert s.bm.num_referenced == 0
    s.bm.forget(chain_hashes(toks[:8], 4, "fp")[0])  # a full block is gone: refused before admission
    refused = Sequence(toks, SamplingParams())
    assert not s.admit_resident(refused) and refused.block_table == [] and s.bm.num_referenced == 0
