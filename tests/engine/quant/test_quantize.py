"""Quantize/dequantize round trips within their error bounds, packed sizes, 2:4 masks, GPTQ vs RTN."""

from __future__ import annotations

import pytest
import torch

from engine.quant.formats import Int4Weight, Int8Weight
from engine.quant.quantize import gptq_int4, prune_2_4, quantize_int4, quantize_int8


def _w(n: int = 48, k: int = 256, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) * torch.linspace(0.02, 0.2, n)[:, None]


def test_int8_round_trip_within_half_a_step() -> None:
    w = _w()
    q = quantize_int8(w)
    assert q.q.dtype == torch.int8 and q.scale.shape == (48,)
    err = (q.dequantize() - w).abs()
    assert (err <= q.scale[:, None] / 2 + 1e-7).all()
    assert err.max() > 0  # really quantized
    assert q.nbytes_packed() == 48 * 256 + 48 * 2


@pytest.mark.parametrize("group", [128, 64, 96])
def test_int4_round_trip_without_clipping_within_half_a_step(group: int) -> None:
    w = _w(k=320)  # 320 is not a multiple of 128 or 96: the last group is partial
    q = quantize_int4(w, group, clip_grid=(1.0,), fit_iters=0)  # the grid spans [min, max]
    g = -(-320 // group)
    assert q.scale.shape == (48, g) and q.zero.shape == (48, g) and int(q.q.max()) <= 15
    assert not torch.equal(q.zero, q.zero.round())  # real-valued zero points (the range's minimum)
    step = q.scale.repeat_interleave(group, dim=1)[:, :320]
    assert ((q.dequantize() - w).abs() <= step / 2 + 1e-6).all()
    assert q.nbytes_packed() == 48 * 320 // 2 + 2 * 48 * g * 2


def test_int4_clipping_search_never_worse_than_plain_rounding() -> None:
    w = _w(k=256)
    w[:, 5] *= 12  # an outlier per row widens the first group's range
    plain = ((quantize_int4(w, 128, clip_grid=(1.0,)).dequantize() - w) ** 2).sum()
    clipped = ((quantize_int4(w, 128).dequantize() - w) ** 2).sum()
    assert clipped < plain


def test_int4_least_squares_fit_never_worse_than_the_min_max_grid() -> None:
    w = _w(k=256, seed=3)
    act = torch.linspace(0.5, 2.0, 256)  # input norms weight the error
    minmax = quantize_int4(w, 64, act, clip_grid=(1.0,), fit_iters=0)
    fitted = quantize_int4(w, 64, act, clip_grid=(1.0,))

    def err(q: Int4Weight) -> torch.Tensor:  # per group, weighted as the search weighs it
        return (((q.dequantize() - w) ** 2 * act**2).view(48, 4, 64)).sum(-1)

    assert (err(fitted) <= err(minmax) * (1 + 1e-5) + 1e-12).all()
    assert err(fitted).sum() < 0.97 * err(minmax).sum()


def test_int4_recovers_weights_on_a_q4_1_grid_that_integer_zeros_cannot() -> None:
    """Weights already on a 4-bit grid with a real minimum (GGUF Q4_1, as the packaged SmolLM2) come back
    exactly at the same group size: the reason zeros are real-valued."""
    g = torch.Generator().manual_seed(1)
    d = torch.rand(32, 8, 1, generator=g) * 0.01 + 0.002
    m = -(torch.rand(32, 8, 1, generator=g) * 0.05 + 0.05)
    codes = torch.randint(0, 16, (32, 8, 32), generator=g)
    codes[..., 0], codes[..., 1] = 0, 15  # every level range used
    w = (m + codes * d).reshape(32, 256)
    q = quantize_int4(w, 32)
    assert (q.dequantize() - w).abs().max() < 1e-5
    old = quantize_int4(w, 32, mask=torch.ones_like(w, dtype=torch.bool))  # a mask keeps integer zeros
    assert torch.equal(old.zero, old.zero.round())
    assert (old.dequantize() - w).abs().max() > 10 * 1e-5


def test_int4_dequantize_row_ranges_and_dtype() -> None:
    q = quantize_int4(_w(), 64)
    full = q.dequantize(torch.float32)
    assert torch.equal(q.dequantize(torch.float32, slice(10, 20)), full[10:20])
    assert q.dequantize(torch.bfloat16).dtype == torch.bfloat16
    assert q.shape == (48, 256) and q.to("cpu").shape == (48, 256)


def test_formats_reject_bad_layouts() -> None:
    with pytest.raises(ValueError, match="int8"):
        Int8Weight(torch.zeros(4, 8), torch.ones(4))
    with pytest.raises(ValueError, match="scale must be"):
        Int4Weight(torch.zeros(4, 8, dtype=torch.uint8), torch.ones(4, 2), torch.zeros(4, 1), 8)
    with pytest.raises(ValueError, match="mask"):
        Int4Weight(
            torch.zeros(4, 8, dtype=torch.uint8), torch.ones(4, 1), torch.zeros(4, 1), 8, torch.ones(4, 8)
        )


def test_prune_2_4_keeps_exactly_two_of_every_four() -> None:
    w = _w(k=256)
    for norms in (None, torch.rand(256) * 10):
        mask = prune_2_4(w, norms)
        assert mask.dtype == torch.bool and mask.shape == w.shape
        assert (mask.view(48, 64, 4).sum(-1) == 2).all()
    mag = prune_2_4(w)
    kept = w.abs().view(48, 64, 4)
    # magnitude: every kept weight is at least as large as every pruned one of its quad
    assert (
        torch.where(mag.view(48, 64, 4), kept, float("inf")).amin(-1)
        >= torch.where(mag.view(48, 64, 4), -1.0, kept).amax(-1)
    ).all()
    norms = torch.ones(256)
    norms[::4] = 1e6  # Wanda keeps the weight that meets a huge activation
    assert prune_2_4(w, norms).view(48, 64, 4)[..., 0].all()
    with pytest.raises(ValueError, match="multiple of 4"):
        prune_2_4(torch.randn(4, 6))


def test_int4_with_mask_zeroes_pruned_weights_and_counts_compressed_bytes() -> None:
    w = _w()
    mask = prune_2_4(w)
    q = quantize_int4(w, 128, mask=mask)
    d = q.dequantize()
    assert (d[~mask] == 0).all()
    assert (q.dequantize() == Int4Weight(q.q, q.scale, q.zero, 128).dequantize()).all()  # q holds zeros
    assert q.nbytes_packed() == 48 * 256 // 4 + 48 * 256 // 8 + 2 * 48 * 2 * 2


def test_gptq_beats_rtn_on_the_layer_output() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2048, 128, generator=g) @ torch.randn(128, 128, generator=g)  # correlated inputs
    w = _w(n=64, k=128)
    h = x.T @ x
    rtn = quantize_int4(w, 32)
    gq = gptq_int4(w, h, 32)
    assert isinstance(gq, Int4Weight) and gq.q.max() <= 15
    ref = x @ w.T
    e_rtn = ((x @ rtn.dequantize().T - ref) ** 2).mean()
    e_gptq = ((x @ gq.dequantize().T - ref) ** 2).mean()
    assert e_gptq < 0.7 * e_rtn
    masked = gptq_int4(w, h, 32, mask=prune_2_4(w))
    assert (masked.dequantize()[~masked.mask] == 0).all()


@pytest.mark.parametrize("act_order", [True, False])
def test_gptq_with_a_partial_last_group_still_compensates(act_order: bool) -> None:
    """K = 320 at group 128 (SmolLM2's 576 likewise) ends in a group of 64: GPTQ runs on it too, where it
    used to fall back to plain rounding."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4096, 320, generator=g) @ torch.randn(320, 320, generator=g) / 18
    w = _w(n=64, k=320)
    h = x.T @ x
    gq = gptq_int4(w, h, 128, act_order=act_order)
    assert gq.scale.shape == (64, 3) and gq.q.shape == (64, 320) and int(gq.q.max()) <= 15
    rtn = quantize_int4(w, 128, h.diagonal().sqrt())
    ref = x @ w.T
    e_rtn = ((x @ rtn.dequantize().T - ref) ** 2).mean()
    e_gptq = ((x @ gq.dequantize().T - ref) ** 2).mean()
    assert e_gptq < 0.7 * e_rtn
