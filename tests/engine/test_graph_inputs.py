"""One packed copy for a decode graph's inputs (`engine.graph_inputs`), and the graph's own argmax
(`engine.model_runner`): fields land where the graph reads them, a staging buffer is not rewritten while
a copy may read it, and greedy steps that take the graph's argmax give the tokens of a host argmax."""

from __future__ import annotations

import torch

from engine.graph_inputs import PinnedRing, StaticInputs
from engine.sampling import SamplingParams, argmax_rows, sample_batch


def _filled(int32_meta: bool) -> StaticInputs:
    inp = StaticInputs(3, 4, torch.device("cpu"), int32_meta=int32_meta)
    ring = PinnedRing(torch.device("cpu"))
    host = ring.take(inp.nbytes)
    tables = [[5, 6, 7, 9], [1, 2, 9, 9], [2**31 - 2, 9, 9, 9]]
    inp.pack(host, [10, 20, 2**40], [100, 200, 300], tables, [31, 17, 3])
    inp.load(host)
    return inp


def test_packed_fields_land_in_their_views_with_their_dtypes() -> None:
    inp = _filled(int32_meta=True)
    assert inp["pos"].tolist() == [10, 20, 2**40] and inp["pos"].dtype == torch.int64  # int64 kept whole
    assert inp["slots"].tolist() == [100, 200, 300]
    assert inp["tables32"].dtype == torch.int32 and inp["tables32"].shape == (3, 4)
    assert inp["tables32"].tolist() == [[5, 6, 7, 9], [1, 2, 9, 9], [2**31 - 2, 9, 9, 9]]
    assert inp["lens32"].tolist() == [31, 17, 3]
    assert "tables" not in inp.views and inp.nbytes == 3 * 8 * 2 + (12 + 3) * 4
    gather = _filled(int32_meta=False)  # the gather reader: int64 tables and lengths, no int32 fields
    assert gather["tables"].tolist()[1] == [1, 2, 9, 9] and gather["lens"].tolist() == [31, 17, 3]
    assert "tables32" not in gather.views


def test_host_ids_follow_the_fields_aligned_whatever_their_size() -> None:
    """The int32 fields can end the buffer off an 8-byte boundary (one sequence, a table two blocks
    wide: 28 bytes); the ids after them still start aligned, and the device copy takes the fields only."""
    inp = StaticInputs(1, 2, torch.device("cpu"), int32_meta=True)
    assert inp.nbytes == 28 and inp.ids_offset == 32
    host = PinnedRing(torch.device("cpu")).take(inp.ids_offset + 8)
    inp.pack(host, [7], [70], [[3, 4]], [9])
    ids = inp.host_ids(host, [123456789012])
    inp.load(host)
    assert ids.tolist() == [123456789012] and ids.dtype == torch.int64
    assert inp["tables32"].tolist() == [[3, 4]] and inp["lens32"].tolist() == [9]
    assert inp["pos"].tolist() == [7] and inp["slots"].tolist() == [70]


def test_ring_alternates_buffers_and_grows() -> None:
    ring = PinnedRing(torch.device("cpu"))
    a = ring.take(100)
    b = ring.take(100)
    assert a.data_ptr() != b.data_ptr()  # the next step never writes the buffer a pending copy reads
    assert ring.take(100).data_ptr() == a.data_ptr()
    big = ring.take(10_000)
    assert big.numel() == 10_000 and big.data_ptr() != b.data_ptr()


def test_decode_takes_the_graphs_argmax_and_gives_the_same_tokens(engine) -> None:
    """Static decode (the graph path, eager on CPU) writes its argmax into the shared ids buffer; the
    step's logits object is recognised as the graph's and its argmax is the host's; any other step (a
    prefill, or the same logits after another step ran) is not; with the argmax off, nothing is taken
    from the graph and the tokens are unchanged."""
    r = engine.runner
    prompt = [{"role": "user", "content": "Name three colours."}]
    sp = SamplingParams(max_tokens=8)
    seen: list[bool] = []
    real_run = r.run

    def spy(batch, ahead=None):
        logits = real_run(batch, ahead)
        ids = r.graph_argmax(logits)
        seen.append(ids is not None)
        if ids is not None:
            assert ids.tolist() == argmax_rows(logits).tolist()
            assert r.graph_argmax(logits.clone()) is None  # only the object the graph returned
        return logits

    engine.scheduler.prefix_cache = False  # each run prefills the whole prompt (a reused one may be 1 token)
    try:
        want = engine.complete(prompt, sp).token_ids
        r.run = spy
        r.force_static = True
        assert engine.complete(prompt, sp).token_ids == want
        assert seen[0] is False and all(seen[1:]) and len(seen) == len(want)  # prefill, then decode steps
        r.argmax_in_graph = False
        r.graphs.clear()
        seen.clear()
        assert engine.complete(prompt, sp).token_ids == want
        assert not any(seen)
    finally:
        r.run = real_run
        r.force_static = False
        r.argmax_in_graph = True
        r.graphs.clear()
        engine.scheduler.prefix_cache = True


def test_sample_batch_uses_given_greedy_ids_and_samples_the_rest() -> None:
    logits = torch.tensor([[0.0, 5.0, 1.0], [3.0, 0.0, 0.0]])
    given = torch.tensor([2, 0])  # deliberately not the argmax of row 0: proves the given ids are used
    greedy = SamplingParams()
    assert sample_batch(logits, [greedy, greedy], [None, None], greedy_ids=given) == [2, 0]
    assert sample_batch(logits, [greedy, greedy], [None, None]) == [1, 0]
    hot = SamplingParams(temperature=1.0, top_k=1)  # top_k 1 counts as greedy
    g = torch.Generator().manual_seed(0)
    cold = SamplingParams(temperature=0.5, seed=1)
    out = sample_batch(logits, [hot, cold], [None, g])
    assert out[0] == 1 and out[1] in (0, 1, 2)
