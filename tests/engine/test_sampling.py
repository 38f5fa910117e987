from __future__ import annotations

import pytest
import torch

from engine.sampling import SamplingParams, make_generator, sample_batch, sample_one


def _logits():
    torch.manual_seed(1)
    return torch.randn(50)


def test_seed_makes_sampling_reproducible():
    p = SamplingParams(temperature=1.0, seed=42)
    a = [sample_one(_logits(), p, g) for g in [make_generator(p)] for _ in range(20)]
    b = [sample_one(_logits(), p, g) for g in [make_generator(p)] for _ in range(20)]
    c_gen = make_generator(SamplingParams(temperature=1.0, seed=7))
    c = [sample_one(_logits(), p, c_gen) for _ in range(20)]
    assert a == b and a != c


def test_top_k_and_top_p_restrict_support():
    x = _logits()
    top5 = set(torch.topk(x, 5).indices.tolist())
    p = SamplingParams(temperature=2.0, top_k=5, seed=0)
    g = make_generator(p)
    assert {sample_one(x, p, g) for _ in range(200)} <= top5
    p = SamplingParams(temperature=1.0, top_p=1e-6, seed=0)
    g = make_generator(p)
    assert {sample_one(x, p, g) for _ in range(20)} == {int(x.argmax())}


def test_greedy_batch_and_validation():
    x = torch.randn(3, 10)
    ps = [SamplingParams(), SamplingParams(top_k=1, temperature=0.7), SamplingParams()]
    assert sample_batch(x, ps, [None, None, None]) == x.argmax(-1).tolist()
    with pytest.raises(ValueError):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError):
        SamplingParams(max_tokens=0)
