"""The qkv GEMV's ROPE mode (engine.quant.h2_rope): RoPE and the KV store done by the fp16 GEMV itself.

Without a GPU (CI) the kernels run in Triton's CPU interpreter; with one, compiled. The mode must give the
bits of the plain GEMV followed by `fused_ops.rope_qk` storing into the cache, in q and in both caches
(untouched slots included), and must decline (None, nothing written) where its config cannot.
"""

from __future__ import annotations

import pytest
import torch

from engine import fused_ops
from engine.quant import gpu
from engine.quant.h2_rope import RopeTarget, rope_fits
from engine.quant.quantize import quantize_int4
from tests.engine.quant.test_gpu_kernels import DEVICE, _on_device, _ref
from tests.engine.test_attention import _interpreter_scalar_fix

NH, KVH, HD, K = 4, 2, 32, 256
N = (NH + 2 * KVH) * HD
BLOCKS, BS = 3, 4


@pytest.fixture(autouse=True)
def _interpreter(monkeypatch) -> None:
    if DEVICE == "cpu":
        _interpreter_scalar_fix(monkeypatch)


def _rope_tables(pos: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos``/``sin`` ``[rows, HD]`` in the model dtype, as engine.model hands them over."""
    inv = 1.0 / (10000 ** (torch.arange(0, HD, 2).float() / HD))
    freqs = torch.outer(pos.float(), inv)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype).to(DEVICE), emb.sin().to(dtype).to(DEVICE)


def _caches(dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(BLOCKS, BS, KVH, HD, generator=g).to(dtype).to(DEVICE) for _ in range(2))


def _setup(m: int, dtype: torch.dtype):
    w = torch.randn(N, K, generator=torch.Generator().manual_seed(31)) * 0.05
    q = quantize_int4(w, group=64)
    x = (torch.randn(m, K, generator=torch.Generator().manual_seed(32)) * 2).to(dtype).to(DEVICE)
    pos = torch.tensor([7, 2, 9, 4][:m])
    slots = torch.tensor([5, 11, 0, 6][:m], dtype=torch.int32).to(DEVICE)
    return q, _on_device(gpu.pack(q)), x, pos, slots


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "m, config",
    [
        (1, (16, 1, 4, 2, 5, 16, 2, 1, 3)),  # one column tile in the table: taken as two of 8
        (1, (32, 1, 8, 1, 5, 32, 2, 2, 2)),  # two tiles of 16 (a whole half of a head)
        (3, (16, 1, 4, 2, 4, 16, 2, 2, 1)),  # three rows, each its own position and slot
    ],
)
def test_qkv_gemv_finishing_rope_gives_the_two_kernels_bits(m: int, config: tuple, dtype) -> None:
    q, gw, x, pos, slots = _setup(m, dtype)
    cos, sin = _rope_tables(pos, dtype)
    kc_want, vc_want = _caches(dtype, 33)
    kc_got, vc_got = kc_want.clone(), vc_want.clone()
    key = ("int4k", N, K)
    gpu.TUNING[key] = config
    try:
        y = gpu.matmul_small(gw, x)
        qp, kp, vp = y.split([NH * HD, KVH * HD, KVH * HD], dim=-1)
        q_want, _ = fused_ops.rope_qk(
            qp.view(m, NH, HD), kp.view(m, KVH, HD), cos.view(m, 1, HD), sin.view(m, 1, HD),
            (kc_want, vc_want, slots, vp.view(m, KVH, HD)),
        )  # fmt: skip
        got = gpu.matmul_small(gw, x, rope=RopeTarget(kc_got, vc_got, slots, cos, sin, NH, KVH, HD))
    finally:
        gpu.TUNING.pop(key)
    assert got is not None and got.shape == (m, NH * HD) and got.dtype == dtype
    assert torch.equal(got.view(m, NH, HD), q_want)
    assert torch.equal(kc_got, kc_want) and torch.equal(vc_got, vc_want)
    assert not torch.equal(kc_got, _caches(dtype, 33)[0])  # the rows were written
    # and the values are RoPE of the product: q's first head against float32 math
    prod = x.cpu().float() @ _ref(q).t()
    q0 = prod[:, :HD]
    rot = torch.cat((-q0[:, HD // 2 :], q0[:, : HD // 2]), dim=-1)
    want0 = q0 * cos.cpu().float() + rot * sin.cpu().float()
    torch.testing.assert_close(got[:, :HD].cpu().float(), want0, rtol=3e-2, atol=5e-2)


@pytest.mark.parametrize(
    "config, rows, heads",
    [
        ((16, 2, 4, 2, 5, 16, 2, 1, 2), 1, NH),  # split-K: no program holds a column's whole sum
        ((64, 1, 4, 2, 16, 16), 1, NH),  # the tensor-core kernel
        ((16, 1, 4, 2, 5, 16, 2, 1, 2), 5, NH),  # more rows than the fp16 GEMV takes
        ((64, 1, 4, 2, 5, 16, 2, 2, 2), 1, NH),  # a tile of 32 does not fit a half of 16 dims
        ((16, 1, 4, 2, 5, 16, 2, 1, 2), 1, NH - 1),  # the columns are not (nh + 2 kvh) heads
    ],
)
def test_qkv_gemv_declines_rope_where_its_config_cannot(config: tuple, rows: int, heads: int) -> None:
    """``matmul_small`` says None and writes nothing; the plain product still runs."""
    _, gw, x, _, _ = _setup(1, torch.bfloat16)
    x = x.expand(rows, K).contiguous()
    pos = torch.arange(rows)
    cos, sin = _rope_tables(pos, torch.bfloat16)
    kc, vc = _caches(torch.bfloat16, 34)
    before = (kc.clone(), vc.clone())
    slots = torch.arange(rows, dtype=torch.int32).to(DEVICE)
    key = ("int4k", N, K)
    gpu.TUNING[key] = config
    try:
        target = RopeTarget(kc, vc, slots, cos, sin, heads, KVH, HD)
        assert gpu.matmul_small(gw, x, rope=target) is None
        assert gpu.matmul_small(gw, x).shape == (rows, N)
    finally:
        gpu.TUNING.pop(key)
    assert torch.equal(kc, before[0]) and torch.equal(vc, before[1])


def test_rope_fits_needs_tiles_inside_a_half_head() -> None:
    assert rope_fits(N, 16, NH, KVH, HD) and rope_fits(N, 32, NH, KVH, HD)
    assert not rope_fits(N, 64, NH, KVH, HD)  # tiles of 32 > 16 dims a half
    assert not rope_fits(N, 24, NH, KVH, HD)  # tiles of 12 do not divide 16
    assert not rope_fits(N + HD, 16, NH, KVH, HD)
    assert rope_fits(6144, 16, 32, 8, 128) and rope_fits(6144, 128, 32, 8, 128)
