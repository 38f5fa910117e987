"""Decode CUDA-graph bookkeeping of `engine.model_runner`: batch buckets, padding and capture at start.

The graphs themselves need a GPU (bench/engine_check.py runs them); here the same static, padded buffers
run eagerly on CPU (``force_static``), and the capture plan is checked without capturing.
"""

from __future__ import annotations

import pytest
import torch

from engine.model_runner import graph_batches
from engine.sampling import SamplingParams


@pytest.mark.parametrize(
    "max_seqs, want",
    [(64, [1, 2, 4, 8, 16, 32, 48, 64]), (16, [1, 2, 4, 8, 16]), (20, [1, 2, 4, 8, 16, 20]), (1, [1])],
)
def test_graph_batches_end_at_the_sequence_limit(max_seqs: int, want: list[int]) -> None:
    assert graph_batches(max_seqs) == want


def test_bucket_pads_up_to_the_next_graph_size(engine) -> None:
    r = engine.runner
    assert [r.bucket(b) for b in (1, 3, 5, 9, 17, 33, 64)] == [1, 4, 8, 16, 32, 48, 64]
    assert r.bucket(r.batch_buckets[-1] + 1) == r.batch_buckets[-1] + 1  # beyond the limit: exact


def test_precapture_plans_every_bucket_and_width_once(engine, monkeypatch) -> None:
    r = engine.runner
    made: list[tuple[int, int]] = []
    monkeypatch.setattr(r, "use_graphs", True)
    monkeypatch.setattr(r.prefill, "enabled", False)  # decode graphs only (prefill ones: test_prefill_graphs)
    monkeypatch.setattr(r, "triton", False)
    assert r.precapture(10_000) == 0  # the gather reader captures on first use only
    monkeypatch.setattr(r, "triton", True)
    monkeypatch.setattr(r, "graphs", {(1, 1): {}})  # already captured: not again
    assert not torch.is_inference_mode_enabled()
    spy = []
    monkeypatch.setattr(r, "_make_static", lambda b, w: spy.append(torch.is_inference_mode_enabled()))
    r.precapture(1)
    assert spy and all(spy)  # captured like `run`: autograd never records writes into the KV pool
    monkeypatch.setattr(r, "_make_static", lambda b, w: made.append((b, w)))
    n = r.precapture(5 * r.bs + 1)  # 6 blocks: widths 1, 2, 4, 8
    widths = [1, 2, 4, 8]
    assert made == [(b, w) for b in r.batch_buckets for w in widths if (b, w) != (1, 1)]
    assert n == len(made)
    monkeypatch.setattr(r, "use_graphs", False)
    assert r.precapture(10_000) == 0  # CPU: nothing to capture


def test_padded_static_decode_gives_the_same_tokens(engine) -> None:
    """Three sequences decode together through the graph path's buffers, padded to a batch of 4 (the
    padded row writes and reads only the scratch block), with the same tokens as alone."""
    prompts = [[{"role": "user", "content": f"Name a colour, then the number {i}."}] for i in range(3)]
    sp = SamplingParams(max_tokens=6)
    alone = [engine.complete(p, sp).token_ids for p in prompts]
    engine.runner.force_static = True
    try:
        with engine._cv:  # re-entrant: the engine thread takes all three in one step
            seqs = [engine.submit(p, sp) for p in prompts]
        together = []
        for s in seqs:
            ids = []
            while True:
                ev = s.events.get()
                ids.extend(ev.token_ids)
                if ev.type in ("finish", "error"):
                    break
            together.append(ids)
        assert together == alone
        sizes = {b for b, _ in engine.runner.graphs}
        assert 4 in sizes and sizes <= set(engine.runner.batch_buckets)
    finally:
        engine.runner.force_static = False
        engine.runner.graphs.clear()
