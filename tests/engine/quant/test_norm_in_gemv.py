"""The fp16 one-token GEMV that computes the residual add + RMSNorm ahead of it (engine.quant.triton_norm_in)
against the two kernels it replaces: `fused_ops.add_rmsnorm` (with its row absmax), then the GEMV.

Run by Triton's CPU interpreter in CI (the same bits: numpy sums the squares alike); with a GPU, compiled,
where the GEMV's warps reduce the squares in another order than the norm kernel's (an fp32 ulp of rstd).
"""

from __future__ import annotations

import pytest
import torch

from engine import fused_ops
from engine.quant import gpu
from engine.quant.quantize import quantize_int4
from tests.engine.quant.test_gpu_kernels import DEVICE, _interpreter, _on_device, _ref  # noqa: F401

EPS = 1e-5


def _rows(k: int, seed: int, big: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A sublayer output, the residual stream and a norm weight: bf16 rows of ``k`` (``big``: an outlier
    of 3000 in the residual, as Llama's residual streams carry)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, k, generator=g) * 0.5
    res = torch.randn(1, k, generator=g) * 2
    if big:
        res[0, 7] = 3000.0
    w = 0.5 + torch.rand(k, generator=g)
    return tuple(t.bfloat16().to(DEVICE) for t in (x, res, w))


def _both(gw, x, res, w, inter: int = 0):
    """(the two kernels' product and new residual, the fused GEMV's)."""
    normed, rout_want = fused_ops.add_rmsnorm(x, res, w, EPS, row_amax=True)
    want = gpu.matmul_small(gw, normed, amax=fused_ops.row_amax(normed), silu_inter=inter)
    rout = torch.empty_like(res)
    got = gpu.matmul_small(gw, x, silu_inter=inter, norm=(res, w, EPS, rout))
    return (want, rout_want), (got, rout)


def _same(got: torch.Tensor, want: torch.Tensor) -> None:
    if DEVICE == "cpu":
        assert torch.equal(got, want)
    else:  # an fp32 ulp of rstd may move a normed value by a bf16 ulp
        torch.testing.assert_close(got.float(), want.float(), rtol=2**-6, atol=1e-3)


@pytest.mark.parametrize("big", [False, True])
@pytest.mark.parametrize(
    "config",
    [
        (32, 1, 4, 2, 5, 16, 2, 1, 2),  # split 1, a step ahead (PREFETCH 2), weights before PDL's wait
        (32, 2, 4, 2, 5, 16, 2, 1, 2),  # split-K: every program still norms the whole row
        (16, 1, 8, 1, 5, 32, 2, 1, 3),  # all steps ahead (PREFETCH 3), as the H100 table's qkv
        (32, 1, 4, 2, 4, 16, 2, 2, 0),  # mode 4 (codes under 1024.0), two column tiles, no prefetch
    ],
)
def test_gemv_with_the_norm_inside_gives_the_norm_kernel_then_the_gemv(config: tuple, big: bool) -> None:
    n, k = 64, 256
    q = quantize_int4(torch.randn(n, k, generator=torch.Generator().manual_seed(31)) * 0.05, group=64)
    gw = _on_device(gpu.pack(q))
    x, res, w = _rows(k, 32, big)
    gpu.TUNING[("int4k", n, k)] = config
    try:
        (want, rout_want), (got, rout) = _both(gw, x, res, w)
    finally:
        gpu.TUNING.pop(("int4k", n, k))
    assert got is not None and got.shape == (1, n) and got.dtype == torch.bfloat16
    assert torch.equal(rout, rout_want)  # the residual stream: x + residual rounded to bf16, as torch adds
    _same(got, want)
    h = x.cpu().float() + res.cpu().float()
    ref = (w.cpu().float() * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + EPS))) @ _ref(q).t()
    err = float((got.cpu().float() - ref).abs().max() / ref.abs().max())
    assert err < 2e-2  # bf16 roundings of the normed row and the output


@pytest.mark.parametrize("prefetch", [2, 3])
def test_gate_up_gemv_with_the_norm_inside_writes_silu_mul(prefetch: int) -> None:
    """The MLP's case: NORM and SILU_MUL together, as gate_up's one-token launch has them."""
    inter, k = 96, 256
    q = quantize_int4(torch.randn(2 * inter, k, generator=torch.Generator().manual_seed(33)) * 0.05, group=64)
    gw = _on_device(gpu.pack(q))
    x, res, w = _rows(k, 34, big=True)
    key = ("int4k", 2 * inter, k)
    gpu.TUNING[key] = (32, 1, 4, 2, 5, 16, 2, 2, prefetch)
    try:
        (want, rout_want), (got, rout) = _both(gw, x, res, w, inter)
    finally:
        gpu.TUNING.pop(key)
    assert got is not None and got.shape == (1, inter)
    assert torch.equal(rout, rout_want)
    _same(got, want)


@pytest.mark.parametrize(
    "config, rows, dtype",
    [
        ((32, 1, 4, 2, 5, 16, 2, 1, 2), 2, torch.bfloat16),  # two rows: the fp16 GEMV norms one
        ((64, 1, 4, 2, 16, 16), 1, torch.bfloat16),  # the tensor-core kernel
        ((64, 2, 4, 2, 2, 16), 1, torch.bfloat16),  # gemv2 (float32 math)
        ((32, 1, 4, 2, 5, 16, 2, 1, 2), 1, torch.float32),  # rows it reads as bf16 pairs only
    ],
)
def test_gemv_declines_the_norm_where_its_launch_cannot(config: tuple, rows: int, dtype: torch.dtype) -> None:
    """None (the caller runs the norm kernel, then the layer), with nothing written: the residual
    output keeps what it held."""
    n, k = 64, 256
    gw = _on_device(gpu.pack(quantize_int4(torch.randn(n, k) * 0.05, group=64)))
    x, res, w = (t.to(dtype) for t in _rows(k, 35))
    x, res = x.expand(rows, k).contiguous(), res.expand(rows, k).contiguous()
    rout = torch.full_like(res, 7.0)
    gpu.TUNING[("int4k", n, k)] = config
    try:
        assert gpu.matmul_small(gw, x, norm=(res, w, EPS, rout)) is None
    finally:
        gpu.TUNING.pop(("int4k", n, k))
    assert bool((rout == 7.0).all())
