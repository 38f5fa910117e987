from __future__ import annotations

import pytest
import torch

from engine.sampling import (
    SamplingParams,
    argmax_rows,
    make_generator,
    sample_batch,
    sample_one,
    sliced_argmax,
)


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


@pytest.mark.parametrize("parts", [64, 8])
def test_sliced_argmax_is_argmax_with_ties_and_nan(parts: int):
    """The two-step argmax of greedy decode on CUDA gives torch's index everywhere: the first maximum,
    for ties inside a slice, across slices, at slice edges, for -inf rows and NaN (which argmax takes)."""
    v = 64 * 520
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, v, generator=g)
    x[1, [5, 900, v - 1]] = 50.0  # a tie across slices: the first wins
    x[2, [1000, 1001]] = 60.0  # a tie inside one slice
    x[3, [v // parts - 1, v // parts]] = 70.0  # both sides of a slice edge
    x[4] = float("-inf")
    x[5, 4321] = float("nan")
    x[6] = x[6].round()  # many ties
    want = x.argmax(-1)
    assert torch.equal(sliced_argmax(x, parts), want)
    assert torch.equal(argmax_rows(x), want)  # CPU: argmax itself
    assert argmax_rows(torch.randn(3, 97)).shape == (3,)  # no slicing fits: argmax
