"""The one-token tensor-core int4 GEMV (`engine.quant.triton_w4k_mma`, config mode 6).

In CI its PTX runs on the 32-lane emulator of `tests/engine/quant/warp_ptx.py` (fragments, shuffles, sums)
and the kernel's interpreter path through `gpu.matmul_small`; on a GPU box the same tests run compiled,
where the kernel's result checks Triton's layout too (a thread's 4 elements, one asm call).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.quant import gpu
from engine.quant import triton_w4k_mma as tm
from engine.quant.quantize import quantize_int4
from tests.engine.quant import warp_ptx
from tests.engine.quant.test_gpu_kernels import DEVICE, _interpreter, _on_device, _ref  # noqa: F401

UNIT = 2.0**-24


def _bf16_pairs(x: np.ndarray) -> np.ndarray:
    """x (float32, even length) as bf16, two a uint32 (the first in the low half), and the bf16 values."""
    bits = (x.astype(np.float32).view(np.uint32) + 0x8000) >> 16  # round to nearest (no ties in random x)
    pairs = (bits[0::2] | (bits[1::2] << 16)).astype(np.uint32)
    return pairs, (bits << 16).astype(np.uint32).view(np.float32)


@pytest.mark.parametrize("quads, cols", [(4, 1), (4, 2), (2, 1), (2, 2)])
def test_group_asm_sums_each_lanes_own_columns(quads: int, cols: int) -> None:
    """One warp runs `group_asm` on one group (quads of 4 word rows, 32 columns a tile): lane (g, t) holds
    row 4q + t of columns 32c + 4g .. + 3 and x of quad g % quads; every lane must come out with its four
    columns' sums of code * 2**-24 * fp16(x * v), and the group's sum of x * v."""
    rng = np.random.default_rng(quads * 10 + cols)
    rows, ncol = 4 * quads, 32 * cols
    words = rng.integers(0, 2**32, size=(rows, ncol), dtype=np.uint64).astype(np.uint32)
    x32, xb = _bf16_pairs(rng.standard_normal(8 * rows).astype(np.float32) * 3)
    v = np.float32(2.0**11)
    lanes = np.arange(32)
    g, t = lanes // 4, lanes % 4
    operands = [x32[4 * (4 * (g % quads) + t) + u] for u in range(4)]
    operands += [np.full(32, v, np.float32).view(np.uint32)] * 4
    for q in range(quads):
        for c in range(cols):
            operands += [words[4 * q + t, 32 * c + 4 * g + u] for u in range(4)]
    out = warp_ptx.run(tm.group_asm(quads, cols), operands, 4 * (cols + 1))
    xh = (xb.astype(np.float64) * v).astype(np.float16).astype(np.float64)
    codes = np.stack([(words >> (4 * j)) & 0xF for j in range(8)], axis=-1).astype(np.float64)  # [r, col, j]
    want = np.einsum("rcj,rj->c", codes, xh.reshape(rows, 8)) * UNIT
    for c in range(cols):
        for u in range(4):
            got = out[4 * c + u].view(np.float32)
            np.testing.assert_allclose(got, want[32 * c + 4 * g + u], rtol=1e-5)
    xs = float((xb.astype(np.float64) * v).sum())
    for u in range(4):
        np.testing.assert_allclose(out[4 * cols + u].view(np.float32), xs, rtol=1e-5)


def _mma_cfg(block_n: int, split: int, warps: int, group: int, prefetch: int = 1, kw: int = 1) -> tuple:
    return (block_n, split, warps, 1, 6, group // 8, kw, 0, prefetch)


@pytest.mark.parametrize("group", [64, 128])
@pytest.mark.parametrize(
    "block_n, split, warps, prefetch, kw",
    [
        (128, 1, 4, 0, 1),
        (128, 2, 4, 1, 1),
        (64, 3, 1, 1, 1),
        (64, 1, 2, 1, 1),
        (256, 2, 4, 1, 1),
        (64, 1, 4, 1, 4),  # four warps over K on 64 columns
        (64, 1, 8, 1, 8),  # more K warps than groups: some add nothing (RAGGED)
        (128, 3, 4, 1, 2),  # two column warps, two over K, split-K over programs of uneven groups
    ],
)
def test_mma_gemv_matches_dequantized(
    group: int, block_n: int, split: int, warps: int, prefetch: int, kw: int
) -> None:
    """Mode 6 through `gpu.matmul_small` for one bf16 token: 1-2 column tiles of 32 a warp, warps that
    split a program's groups (their sums added after the loop), split-K over programs, a partial tile
    (N 192 against 128 and 256 wide tiles), the next group loaded ahead or not; an activation of 3000 and
    ones near 1e-4 in range by the power-of-two scale, with the absmax given too."""
    n, k = 192, 512
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(3)) * 0.05
    q = quantize_int4(w, group=group)
    gw, ref = _on_device(gpu.pack(q)), _ref(q)
    key = ("int4k", n, k)
    gpu.TUNING[key] = _mma_cfg(block_n, split, warps, group, prefetch, kw)
    try:
        x = torch.randn(1, k, generator=torch.Generator().manual_seed(4))
        x[0, 7] = 3000.0
        for xi in (x, x * 1e-4):
            xb = xi.bfloat16()
            want = xb.float() @ ref.t()
            amax = xb.float().abs().amax(-1).to(DEVICE)
            for got in (gpu.matmul_small(gw, xb.to(DEVICE)), gpu.matmul_small(gw, xb.to(DEVICE), amax=amax)):
                assert got.shape == (1, n) and got.dtype == torch.bfloat16
                err = float((got.float().cpu() - want).abs().max() / want.abs().max())
                assert err < 8e-3, err  # bf16 output; the sums are float32
    finally:
        gpu.TUNING.pop(key)


@pytest.mark.parametrize("warps, kw", [(2, 1), (4, 2)])
def test_mma_gemv_writes_silu_mul_as_the_two_kernels(warps: int, kw: int) -> None:
    """SILU_MUL in mode 6 (two column tiles: gate's and the same columns of up's, with and without warps
    over K): ``silu(gate) * up`` with the plain product's bits followed by `fused_ops.silu_mul`."""
    from engine import fused_ops

    inter, k = 128, 256
    w = torch.randn(2 * inter, k, generator=torch.Generator().manual_seed(5)) * 0.05
    q = quantize_int4(w, group=128)
    gw = _on_device(gpu.pack(q))
    x = (torch.randn(1, k, generator=torch.Generator().manual_seed(6)) * 2).bfloat16().to(DEVICE)
    key = ("int4k", 2 * inter, k)
    gpu.TUNING[key] = _mma_cfg(128, 1, warps, 128, kw=kw)  # 64 gate and 64 up columns a program
    try:
        want = fused_ops.silu_mul(gpu.matmul_small(gw, x), inter)
        got = gpu.matmul_small(gw, x, silu_inter=inter)
    finally:
        gpu.TUNING.pop(key)
    assert got is not None and got.shape == (1, inter)
    assert torch.equal(got, want)


@pytest.mark.parametrize(
    "m, dtype, n, cfg",
    [
        (2, torch.float32, 192, (128, 1, 4, 1, 6, 16)),  # two rows: tensor-core dots
        (1, torch.bfloat16, 200, (128, 1, 4, 1, 6, 16)),  # N not a multiple of 16
        (1, torch.bfloat16, 192, (128, 1, 1, 1, 6, 16)),  # 4 tiles of 32 a warp
    ],
)
def test_mma_config_falls_back_where_it_cannot_run(m: int, dtype: torch.dtype, n: int, cfg: tuple) -> None:
    """A mode-6 config met by a batch, an N the kernel's 16-byte lanes cannot tile, or a tile that is not
    1-2 tiles of 32 a warp runs another kernel (gemv2 or the dots), with the same result."""
    k = 256
    q = quantize_int4(torch.randn(n, k, generator=torch.Generator().manual_seed(7)) * 0.05, group=128)
    gw, ref = _on_device(gpu.pack(q)), _ref(q)
    tiled, h2 = gpu._int4k_config(gw, cfg, m)
    assert tiled is not None and tiled[4] != 6 and h2 is None
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(8)).to(dtype)
    gpu.TUNING[("int4k", n, k)] = cfg
    try:
        got = gpu.matmul_small(gw, x.to(DEVICE)).float().cpu()
    finally:
        gpu.TUNING.pop(("int4k", n, k))
    want = x.float() @ ref.t()
    assert float((got - want).abs().max() / want.abs().max()) < 8e-3
