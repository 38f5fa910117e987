"""`engine.quant.gpu`'s dispatch: which kernel and config a shape and batch get, what reaches them (the
norm's row absmax), and shapes the configured kernels cannot take. Interpreter in CI, compiled on a GPU."""

from __future__ import annotations

import pytest
import torch

from engine.quant import gpu
from engine.quant.quantize import quantize_int4, quantize_int8
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


@pytest.mark.parametrize("rows", [2, 20, gpu.CHUNK_ROWS + 6])
@pytest.mark.parametrize("fmt", ["int4", "int8"])
def test_quant_linear_dispatch_after_packing(rows: int, fmt: str, monkeypatch) -> None:
    """`prepare_model` packs and frees the canonical tensors; decode batches use the fused kernel (16
    rows a launch up to `CHUNK_ROWS`, no dense copy of the weight), longer inputs the dequantize (int8:
    weight times its scale in one kernel) + GEMM path, both with the bias and the same numbers."""
    from engine.quant.linear import QuantLinear

    q = quantize_int4(_weight(7), group=64) if fmt == "int4" else quantize_int8(_weight(7))
    bias = torch.randn(N)
    layer = QuantLinear(q, bias).to(DEVICE)
    want_w = _ref(q) if fmt == "int4" else q.dequantize(torch.float32)
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
    got = gpu.cuda_linear(layer, x.to(DEVICE)).cpu()
    torch.testing.assert_close(got, x @ want_w.t() + bias, **TOL)
    fused = [min(16, rows - i) for i in range(0, rows, 16)] if rows <= gpu.CHUNK_ROWS else []
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
    got = gpu.cuda_linear(layer, x).cpu()
    plain = gpu.cuda_linear(layer, x.clone()).cpu()
    assert fused_ops.row_amax(x[:1]) is None  # a view is another tensor: it carries nothing stale
    bad = x.clone()
    setattr(bad, fused_ops.ROW_AMAX, torch.ones(rows + 1, device=DEVICE))
    with pytest.raises(ValueError, match="row absmax"):
        gpu.cuda_linear(layer, bad)
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


@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("split", [1, 2])
def test_fp16_gemv_loading_first_weights_early_gives_the_same_bits(m: int, split: int, monkeypatch) -> None:
    """`gpu.EARLY_WEIGHTS` (the first step's words loaded before the PDL wait, then the loop from the
    second step) changes when the weights are read, not what is computed: the same bits, one step or
    several a program."""
    q = quantize_int4(_weight(14), group=64)
    gw = _on_device(gpu.pack(q))
    x = _x(m, seed=15).to(DEVICE)
    # 8 word rows a step: 4 or 2 steps a program
    monkeypatch.setitem(gpu.TUNING, ("int4k", N, K), (32, split, 4, 2, 5, 8, 2, 1))
    plain = gpu.matmul_small(gw, x)
    monkeypatch.setattr(gpu, "EARLY_WEIGHTS", True)
    early = gpu.matmul_small(gw, x)
    assert torch.equal(early, plain)
    want = x.float().cpu() @ _ref(q).t()
    assert float((early.float().cpu() - want).abs().max() / want.abs().max()) < 4e-3


@pytest.mark.parametrize("m", [1, 2, 4])
def test_split_partials_summed_by_the_norm_give_the_gemvs_bits(m: int, monkeypatch) -> None:
    """With ``partials`` the fp16 GEMV that splits K returns its partial rows unsummed
    (`engine.partials.SplitPartials`); the add + RMSNorm after it, adding them as it loads them, gives
    the same bits as the GEMV's own sum followed by the norm (output and new residual), and so does SiLU x
    up (gate_up's reader). A GEMV that does not split returns its output as before."""
    from engine import fused_ops
    from engine.partials import SplitPartials

    q = quantize_int4(_weight(16), group=64)
    gw = _on_device(gpu.pack(q))
    x = _x(m, seed=17).bfloat16().to(DEVICE)
    res = _x(m, seed=18).bfloat16().to(DEVICE) * 4
    w = (torch.rand(N) + 0.5).bfloat16().to(DEVICE)
    monkeypatch.setitem(gpu.TUNING, ("int4k", N, K), (32, 4, 4, 2, 5, 8, 2, 1))  # 4 splits of 8 word rows
    y = gpu.matmul_small(gw, x)
    parts = gpu.matmul_small(gw, x, partials=True)
    monkeypatch.setitem(gpu.TUNING, ("int4k", N, K), (32, 1, 4, 2, 5, 8, 2, 1))
    whole = gpu.matmul_small(gw, x, partials=True)
    assert isinstance(parts, SplitPartials) and parts.parts.shape == (4, m, N) and parts.dtype == y.dtype
    assert isinstance(whole, torch.Tensor)
    want, want_res = fused_ops.add_rmsnorm(y, res, w, 1e-5)
    got, got_res = fused_ops.add_rmsnorm(parts, res, w, 1e-5, row_amax=True)
    assert torch.equal(got_res, want_res) and torch.equal(got, want)
    assert torch.equal(fused_ops.row_amax(got), got.float().abs().amax(-1))
    assert torch.equal(fused_ops.silu_mul(parts, N // 2), fused_ops.silu_mul(y, N // 2))  # gate_up's reader
    with pytest.raises(ValueError, match="add \\+ RMSNorm"):
        fused_ops.rmsnorm(parts, w, 1e-5)
    with pytest.raises(ValueError, match="contiguous"):  # readers step from the first partial by its size
        SplitPartials(parts.parts[::2], parts.dtype)


def test_quant_linear_hands_over_partials_only_where_it_can(monkeypatch) -> None:
    """`cuda_linear(partials=True)` returns partials only for a 2-D input of up to 16 rows without a
    bias; otherwise the summed output, as before."""
    from engine.partials import SplitPartials
    from engine.quant.linear import QuantLinear

    q = quantize_int4(_weight(19), group=64)
    plain, biased = QuantLinear(q).to(DEVICE), QuantLinear(q, torch.randn(N)).to(DEVICE)
    gpu.prepare_model(torch.nn.Sequential(plain, biased))
    monkeypatch.setitem(gpu.TUNING, ("int4k", N, K), (32, 2, 4, 2, 5, 8, 2, 1))
    x = _x(2, seed=20).to(DEVICE)
    assert isinstance(gpu.cuda_linear(plain, x, partials=True), SplitPartials)
    assert isinstance(gpu.cuda_linear(biased, x, partials=True), torch.Tensor)
    assert isinstance(gpu.cuda_linear(plain, x[None], partials=True), torch.Tensor)
    assert isinstance(gpu.cuda_linear(plain, _x(20).to(DEVICE), partials=True), torch.Tensor)
    assert isinstance(gpu.cuda_linear(plain, x), torch.Tensor)


def test_rope_adds_qkv_partials_as_it_loads_them(monkeypatch) -> None:
    """qkv's split-K partials handed to the fused RoPE + KV store (`rope_qk(split=...)`, q, k and v views
    of the first partial) give the same q, k and cache contents as the GEMV's own sum."""
    from engine import fused_ops

    nh, kvh, hd, t = 2, 1, 16, 2  # 2 * 16 + 2 * 1 * 16 = N = 64
    q4 = quantize_int4(_weight(21), group=64)
    gw = _on_device(gpu.pack(q4))
    x = _x(t, seed=22).bfloat16().to(DEVICE)
    pos = torch.tensor([3, 9])
    inv = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
    ang = torch.cat([torch.outer(pos.float(), inv)] * 2, dim=-1)
    cos, sin = (f(ang).bfloat16().to(DEVICE)[:, None, :] for f in (torch.cos, torch.sin))
    monkeypatch.setitem(gpu.TUNING, ("int4k", N, K), (32, 4, 4, 2, 5, 8, 2, 1))
    y = gpu.matmul_small(gw, x)
    parts = gpu.matmul_small(gw, x, partials=True)

    def run(qkv: torch.Tensor, split=None):
        q, k, v = qkv.split([nh * hd, kvh * hd, kvh * hd], dim=-1)
        q, k, v = q.view(t, nh, hd), k.view(t, kvh, hd), v.view(t, kvh, hd)
        kc = torch.zeros(4, 4, kvh, hd, dtype=torch.bfloat16, device=DEVICE)
        vc = torch.zeros_like(kc)
        slots = torch.tensor([5, 10], device=DEVICE)
        qo, ko = fused_ops.rope_qk(q, k, cos, sin, (kc, vc, slots, v), split)
        return qo, ko, kc, vc

    want = run(y)
    got = run(parts.first, parts)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype == torch.bfloat16 and torch.equal(a, b)
    assert want[3].abs().sum() > 0  # v was stored
