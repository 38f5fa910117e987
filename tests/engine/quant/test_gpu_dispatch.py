"""`engine.quant.gpu`'s dispatch: which kernel and config a shape and batch get, what reaches them (the
norm's row absmax), and shapes the configured kernels cannot take. Interpreter in CI, compiled on a GPU."""

from __future__ import annotations

import pytest
import torch

from engine.quant import gpu
from engine.quant.cuda_linear import cuda_linear
from engine.quant.quantize import prune_2_4, quantize_int4, quantize_int8
from tests.engine.quant.test_gpu_kernels import (  # noqa: F401 - _interpreter: the autouse fixture
    DEVICE,
    TOL,
    K,
    N,
    _interpreter,
    _on_device,
    _ref,
    _weight,
    _x,
)


@pytest.mark.parametrize("m", [1, 2, 4, 5, 16])
def test_fp16_gemv_config_reaches_only_one_to_four_rows(m: int, monkeypatch) -> None:
    """A mode 4 config under the shape-wide key: batches of 1-4 take the fp16 GEMV (M_ROWS = m), 5-16 the
    tensor cores with the same steps, as the fp16 GEMV is written for at most 4 rows."""
    from engine.quant import triton_w4k_h2 as th2

    calls, kernel = [], th2.w4k_gemv_h2_kernel

    class Spy:
        def __getitem__(self, grid):
            calls.append(grid)
            return kernel[grid]

    monkeypatch.setattr(th2, "w4k_gemv_h2_kernel", Spy())
    q = quantize_int4(_weight(3), group=64)
    monkeypatch.setitem(gpu.TUNING, ("int4k", N, K), (32, 2, 4, 2, 4, 16, 2, 1))
    x = _x(m)
    got = gpu.matmul_small(_on_device(gpu.pack(q)), x.to(DEVICE)).cpu()
    want = x @ _ref(q).t()
    assert float((got - want).abs().max() / want.abs().max()) < 4e-3
    assert bool(calls) == (m <= 4)


@pytest.mark.parametrize("rows", [1, 2, 20, gpu.CHUNK_ROWS + 6])
@pytest.mark.parametrize("fmt", ["int4", "int8", "int4_24"])
def test_quant_linear_dispatch_after_packing(rows: int, fmt: str, monkeypatch) -> None:
    """`prepare_model` packs and frees the canonical tensors; decode batches use the fused kernel (16
    rows a launch up to `CHUNK_ROWS`, no dense copy of the weight), longer inputs the dequantize (int8:
    weight times its scale in one kernel) + GEMM path, both with the bias and the same numbers. 2:4
    weights take their kernel for `SPARSE24_MAX_ROWS` (one) only: at 16 rows it took up to 12 ms a call."""
    from engine.quant.linear import QuantLinear

    w = _weight(7)
    if fmt == "int8":
        q = quantize_int8(w)
    else:
        q = quantize_int4(w, group=64, mask=prune_2_4(w) if fmt == "int4_24" else None)
    bias = torch.randn(N)
    layer = QuantLinear(q, bias).to(DEVICE)
    want_w = q.dequantize(torch.float32) if fmt == "int8" else _ref(q)
    packed = gpu.prepare_model(torch.nn.Sequential(layer))
    assert packed == layer.gpu.nbytes() > 0
    assert layer.qweight.q.device.type == "meta"  # the canonical copy no longer holds memory
    x = torch.randn(rows, K)
    launches = []
    small = gpu.matmul_small

    def counted(g, xs, thresh=None, amax=None):
        launches.append(len(xs))
        return small(g, xs, thresh, amax)

    monkeypatch.setattr(gpu, "matmul_small", counted)
    got = cuda_linear(layer, x.to(DEVICE)).cpu()
    torch.testing.assert_close(got, x @ want_w.t() + bias, **TOL)
    limit = gpu.SPARSE24_MAX_ROWS if fmt == "int4_24" else gpu.CHUNK_ROWS
    fused = [min(16, rows - i) for i in range(0, rows, 16)] if rows <= limit else []
    assert launches == fused


@pytest.mark.parametrize("rows", [1, 3, 20])
def test_quant_linear_takes_the_norms_row_absmax(rows: int, monkeypatch) -> None:
    """A norm asked for its rows' absmax (`fused_ops.row_amax`) feeds it to the fp16 GEMV (AMAX_IN) in
    each 16-row launch, which then gives the product with no pass of its own; a plain input passes
    none, and an absmax for other rows than x's is refused rather than read out of bounds."""
    from engine import fused_ops
    from engine.quant.linear import QuantLinear

    q = quantize_int4(_weight(13), group=64)
    layer = QuantLinear(q).to(DEVICE)
    gpu.prepare_model(torch.nn.Sequential(layer))
    x = fused_ops.rmsnorm(_x(rows, seed=8).to(DEVICE), torch.ones(K, device=DEVICE), 1e-5, row_amax=True)
    given = []
    small = gpu.matmul_small

    def recorded(g, xs, thresh=None, amax=None):
        given.append(None if amax is None else amax.cpu())
        return small(g, xs, thresh, amax)

    monkeypatch.setattr(gpu, "matmul_small", recorded)
    # the fp16 GEMV, split-K, up to 4 rows
    monkeypatch.setitem(gpu.TUNING, ("int4k", N, K), (32, 2, 4, 2, 4, 8, 2, 1))
    got = cuda_linear(layer, x).cpu()
    plain = cuda_linear(layer, x.clone()).cpu()
    assert fused_ops.row_amax(x[:1]) is None  # a view is another tensor: it carries nothing stale
    bad = x.clone()
    setattr(bad, fused_ops.ROW_AMAX, torch.ones(rows + 1, device=DEVICE))
    with pytest.raises(ValueError, match="row absmax"):
        cuda_linear(layer, bad)
    want = x.float().cpu() @ _ref(q).t()
    assert float((got - want).abs().max() / want.abs().max()) < 4e-3
    assert float((plain - want).abs().max() / want.abs().max()) < 4e-3
    amax = x.float().abs().amax(-1).cpu()
    launches = -(-rows // 16)
    assert [a is None for a in given] == [False] * launches + [True] * launches
    torch.testing.assert_close(torch.cat(given[:launches]), amax, rtol=0, atol=0)


@pytest.mark.parametrize("k, group", [(576, 64), (192, 64), (64, 32)])
@pytest.mark.parametrize("m", [1, 2, 5, 16])
def test_k_packed_batches_where_the_step_does_not_tile_k(k: int, group: int, m: int, monkeypatch) -> None:
    """K = 576 (SmolLM2-135M's hidden size, int4 g64) is 72 word rows, which 16-row tensor-core steps do
    not tile: the kernels do not mask rows, and the default batch config (block_r 16) left the last 8
    rows out (30-70 % error; found on the GPU). Such shapes take 16-row steps where those tile K and
    dequantize + GEMM where nothing does (K = 64); a configured 32-row step on K = 192 falls back to 16."""
    w = torch.randn(N, k, generator=torch.Generator().manual_seed(12)) * 0.05
    q = quantize_int4(w, group=group)
    gw = _on_device(gpu.pack(q))
    assert gw.kind == "int4k"
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(13))
    want = x @ _ref(q).t()
    monkeypatch.setitem(gpu.TUNING, ("int4k", N, k), (32, 2, 4, 2, 16, 32))
    got = gpu.matmul_small(gw, x.to(DEVICE)).cpu()
    torch.testing.assert_close(got, want, **TOL)
