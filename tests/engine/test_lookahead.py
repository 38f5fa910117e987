"""Decoding one step ahead (engine.lookahead) on the packaged SmolLM2 (CPU): the same tokens, texts and
finish reasons as ordinary steps, through the eager and the CUDA-graph path's static buffers, with stops
(EOS, stop strings, length), concurrent batches and cancellations, and no blocks leaked."""

from __future__ import annotations

import threading

import pytest

from engine.sampling import SamplingParams
from tests.engine.test_llm_engine import CHAT, _small_engine

PROMPTS = [[{"role": "user", "content": f"Give me tip number {i} for a delayed parcel."}] for i in range(5)]
PARAMS = [
    SamplingParams(max_tokens=40),  # stops at EOS or length
    SamplingParams(max_tokens=12, ignore_eos=True),
    SamplingParams(max_tokens=30, stop=["."]),
    SamplingParams(max_tokens=2),
    SamplingParams(max_tokens=1),
]


def _run_all(eng, concurrent: bool) -> list[tuple]:
    out: list = [None] * len(PROMPTS)

    def work(i: int) -> None:
        r = eng.complete(PROMPTS[i], PARAMS[i])
        out[i] = (r.token_ids, r.text, r.finish_reason, r.usage["completion_tokens"])

    if not concurrent:
        for i in range(len(PROMPTS)):
            work(i)
        return out
    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


@pytest.mark.parametrize("static", [False, True])
def test_running_ahead_gives_the_tokens_of_ordinary_steps(model_dir, static: bool) -> None:
    """Alone and in a concurrent batch: the same outputs with and without running ahead; steps were
    launched ahead, those of stopped sequences dropped, and every block is back in the pool."""
    with _small_engine(model_dir) as plain:
        want = _run_all(plain, concurrent=False)
    assert {w[2] for w in want} >= {"length", "stop"}
    for concurrent in (False, True):
        with _small_engine(model_dir, overlap_decode=True) as eng:
            eng.runner.force_static = static  # decode through the padded buffers CUDA graphs replay
            assert _run_all(eng, concurrent) == want
            st = eng.stats()
            assert st["steps_ahead"]["launched"] > 0 and st["steps_ahead"]["dropped_rows"] > 0
            assert st["referenced_blocks"] == 0 and st["free_blocks"] == st["num_blocks"]


def test_sampled_and_waiting_requests_take_ordinary_steps(model_dir) -> None:
    """Temperature sampling never runs ahead (its token is drawn on the host); a request that arrives
    while a batch runs ahead joins at the next ordinary step and gets the same answer as alone."""
    with _small_engine(model_dir, overlap_decode=True) as eng:
        r = eng.complete(CHAT, SamplingParams(max_tokens=8, temperature=0.8, seed=3, ignore_eos=True))
        assert r.usage["completion_tokens"] == 8 and eng.ahead.launched == 0
        alone = eng.complete(PROMPTS[1], PARAMS[1]).token_ids
        launched = eng.ahead.launched
        long_run = eng.generate(CHAT, SamplingParams(max_tokens=60, ignore_eos=True))
        next(long_run)
        assert eng.complete(PROMPTS[1], PARAMS[1]).token_ids == alone
        assert sum(1 for _ in long_run) == 60  # 59 more tokens and the finish event
        assert eng.ahead.launched > launched


def test_cancel_while_a_step_runs_ahead_frees_every_block(model_dir) -> None:
    with _small_engine(model_dir, overlap_decode=True) as eng:
        streams = [eng.generate(p, SamplingParams(max_tokens=200, ignore_eos=True)) for p in PROMPTS[:3]]
        seqs = []
        for g in streams:
            assert next(g).type == "token"
        for s in list(eng.scheduler.running):
            seqs.append(s)
            eng.cancel(s)
        assert seqs and eng.stats()["referenced_blocks"] == 0
        for g in streams:
            assert [e.type for e in g][-1] == "finish"
        assert eng.stats()["referenced_blocks"] == 0


def test_running_ahead_is_on_by_default_for_cuda_only(model_dir, monkeypatch) -> None:
    """Unset, ``overlap_decode`` follows the device: on CPU the model runs in the engine's thread, so a
    step ahead would only hold back each token's text; on CUDA it hides the host's work (bench/RESULTS.md).
    An explicit setting wins either way."""
    import torch

    with _small_engine(model_dir) as eng:
        assert eng.config.overlap_decode is None and not eng.overlaps
        eng.complete(PROMPTS[1], PARAMS[1])
        assert eng.ahead.launched == 0
        monkeypatch.setattr(eng, "device", torch.device("cuda"))
        assert eng.overlaps
        eng.config.overlap_decode = False
        assert not eng.overlaps
        monkeypatch.undo()
