"""The packed-fp16 one-token GEMV (engine.quant.triton_w4k_h2) against the reference dequantization, and
its options against each other: activations of every range, 2-4 rows, prefetching, the SiLU epilogue.

Run by Triton's CPU interpreter in CI; with a GPU, compiled (bench/gpu_pending.sh's compiled_tests).
"""

from __future__ import annotations

import pytest
import torch

from engine.quant import gpu
from engine.quant.quantize import quantize_int4
from tests.engine.quant.test_gpu_kernels import DEVICE, K, N, _interpreter, _on_device, _ref, _weight, _x  # noqa: F401


@pytest.mark.parametrize("group", [64, 128])
@pytest.mark.parametrize("split", [1, 2])
@pytest.mark.parametrize(
    "mode, block_r, chain, cols, block_n",
    [
        (4, 8, 2, 1, 32),
        (4, 16, 2, 1, 32),
        (4, 32, 2, 1, 32),
        (4, 16, 1, 1, 32),
        (4, 32, 4, 2, 32),
        (4, 16, 2, 2, 128),
        (5, 16, 2, 1, 32),
        (5, 32, 4, 2, 32),
        (5, 16, 2, 2, 128),
    ],  # fmt: skip
)
def test_k_packed_fp16_gemv_keeps_large_and_small_activations_in_range(
    group: int, split: int, mode: int, block_r: int, chain: int, cols: int, block_n: int
) -> None:
    """The packed-fp16 one-token GEMVs (4: codes under 1024.0; 5: codes as fp16 subnormals), with chains
    of 1-4 words a column, column tiles sharing the activations and a partial tile (block_n 128 > N): a
    fp16 sum of unscaled x * q overflows for an activation of 3000 and underflows for ones near 1e-6, so
    this checks the per-program power-of-two scaling. The interpreter emulates the fp16 roundings, so the
    tolerance is fp16's (the output is bf16 on a GPU anyway), not float32's."""
    q = quantize_int4(_weight(9), group=group)
    gw, ref = _on_device(gpu.pack(q)), _ref(q)
    big = _x(1, seed=2)
    big[0, 5] = 3000.0
    gpu.TUNING[("int4k", N, K)] = (block_n, split, 4, 2, mode, block_r, chain, cols)
    try:
        for x in (_x(1), big, _x(1, seed=3) * 1e-6):
            want = x @ ref.t()
            amax = x.abs().amax(-1).to(DEVICE)  # AMAX_IN: the row's absmax given, no pass in the kernel
            for got in (gpu.matmul_small(gw, x.to(DEVICE)), gpu.matmul_small(gw, x.to(DEVICE), amax=amax)):
                assert torch.isfinite(got).all()
                assert float((got.cpu() - want).abs().max() / want.abs().max()) < 4e-3
        xb = big.bfloat16().to(DEVICE)  # read two values an int32: the float32 copy's sums, in bf16
        got, want = gpu.matmul_small(gw, xb).float(), gpu.matmul_small(gw, xb.float())
        torch.testing.assert_close(got.cpu(), want.cpu(), rtol=2**-7, atol=0)  # the interpreter truncates
    finally:
        gpu.TUNING.pop(("int4k", N, K))


@pytest.mark.parametrize("m", [2, 3, 4])
@pytest.mark.parametrize("split", [1, 2])
@pytest.mark.parametrize(
    "mode, block_r, chain, cols, block_n",
    [(4, 16, 2, 1, 32), (4, 32, 4, 2, 32), (4, 16, 2, 2, 128), (5, 16, 2, 1, 32), (5, 32, 4, 2, 128)],
)
def test_k_packed_fp16_gemv_takes_two_to_four_rows_each_in_range(
    m: int, split: int, mode: int, block_r: int, chain: int, cols: int, block_n: int
) -> None:
    """The packed-fp16 GEMV with ``M_ROWS`` = m (2-4) rows sharing each code pair: an activation of 3000
    in the first row and ones near 1e-6 in the last, so a scale shared by the rows would overflow or
    flush one of them; each row has its own, and is checked against its own magnitude. Rows read with a
    stride (a view of a wider tensor), steps across groups (64), a partial tile (block_n 128 > N), split-K;
    bf16 x as in the one-row test."""
    q = quantize_int4(_weight(9), group=64)
    gw, ref = _on_device(gpu.pack(q)), _ref(q)
    x = _x(m, seed=4)
    x[0, 5] = 3000.0
    x[m - 1] *= 1e-6
    wide = torch.zeros(m, K + 8)
    wide[:, :K] = x
    gpu.TUNING[("int4k", N, K, m)] = (block_n, split, 4, 2, mode, block_r, chain, cols)
    try:
        for xi in (x, wide[:, :K], _x(m, seed=5)):
            want = xi @ ref.t()
            amax = xi.abs().amax(-1).to(DEVICE)  # each row's own, given (AMAX_IN)
            for got in (gpu.matmul_small(gw, xi.to(DEVICE)), gpu.matmul_small(gw, xi.to(DEVICE), amax=amax)):
                got = got.cpu()
                assert got.shape == (m, N) and torch.isfinite(got).all()
                err = (got - want).abs().amax(1) / want.abs().amax(1)
                assert float(err.max()) < 4e-3, err
        xb = x.bfloat16().to(DEVICE)
        got, want = gpu.matmul_small(gw, xb).float(), gpu.matmul_small(gw, xb.float())
        torch.testing.assert_close(got.cpu(), want.cpu(), rtol=2**-7, atol=0)
    finally:
        gpu.TUNING.pop(("int4k", N, K, m))


@pytest.mark.parametrize("m, dtype", [(1, torch.float32), (3, torch.float32), (1, torch.bfloat16)])
@pytest.mark.parametrize("mode, split", [(4, 1), (5, 2), (5, 3)])
def test_fp16_gemv_prefetching_the_next_step_gives_the_same_bits(
    m: int, dtype: torch.dtype, mode: int, split: int
) -> None:
    """PREFETCH (1: the next step's words loaded before this step's math; 2: with its scales and biases,
    and the first step's loads before the absmax pass) changes only when loads issue: the same bits as
    without, for programs of 3 steps, of 2 and 1 (48 word rows in steps of 16 over 2 splits) and of 1
    step each, and the step after a program's last loads nothing (masked: K = 384 has no rows past the
    last program's). PRE_WAIT (the first step before PDL's wait) moves loads only: the same bits too.
    3 (every step before the first step's math) where the splits get equal steps (3 steps, 1), else 2
    (split 2: steps 2 and 1): the same bits again; for float32 x (eight loads a word row) and bf16 (four
    int32 words of two values, as the model's activations come)."""
    k = 384
    w = torch.randn(N, k, generator=torch.Generator().manual_seed(19)) * 0.05
    q = quantize_int4(w, group=64)
    gw = _on_device(gpu.pack(q))
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(20)).to(dtype).to(DEVICE)
    got = {}
    shipped = gpu.H2_PRE_WAIT
    for prefetch, pre_wait in ((0, False), (1, False), (2, False), (2, True), (3, False), (3, True)):
        gpu.TUNING[("int4k", N, k)] = (32, split, 4, 2, mode, 16, 2, 1, prefetch)
        gpu.H2_PRE_WAIT = pre_wait  # the first step's weights before PDL's wait
        try:
            got[prefetch, pre_wait] = gpu.matmul_small(gw, x)
        finally:
            gpu.TUNING.pop(("int4k", N, k))
            gpu.H2_PRE_WAIT = shipped
    for run in list(got)[1:]:
        assert torch.equal(got[0, False], got[run]), run
    want = x.cpu().float() @ _ref(q).t()
    err = float((got[2, True].cpu().float() - want).abs().max() / want.abs().max())
    assert err < (4e-3 if dtype == torch.float32 else 2**-7)  # bf16 out: the interpreter truncates


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m, mode, prefetch", [(1, 5, 2), (3, 5, 1), (1, 4, 0), (1, 5, 3)])
def test_gate_up_gemv_writing_silu_mul_gives_the_two_kernels_bits(
    dtype: torch.dtype, m: int, mode: int, prefetch: int
) -> None:
    """SILU_MUL: the fp16 GEMV over ``[gate | up]`` takes column tile 0 from gate's half and tile 1 from
    the same columns of up's, and writes ``silu(gate) * up`` itself: the same bits as the plain product
    followed by `fused_ops.silu_mul` (the gate and up sums rounded as stored, then torch's rounding)."""
    from engine import fused_ops

    inter, k = 96, 256
    w = torch.randn(2 * inter, k, generator=torch.Generator().manual_seed(21)) * 0.05
    q = quantize_int4(w, group=64)
    gw = _on_device(gpu.pack(q))
    x = (torch.randn(m, k, generator=torch.Generator().manual_seed(22)) * 2).to(dtype).to(DEVICE)
    key = ("int4k", 2 * inter, k)
    gpu.TUNING[key] = (32, 1, 4, 2, mode, 16, 2, 2, prefetch)  # 16 columns of gate and 16 of up a program
    try:
        want = fused_ops.silu_mul(gpu.matmul_small(gw, x), inter)
        got = gpu.matmul_small(gw, x, silu_inter=inter)
    finally:
        gpu.TUNING.pop(key)
    assert got is not None and got.shape == (m, inter) and got.dtype == dtype
    assert torch.equal(got, want)
    g, u = (x.cpu().float() @ _ref(q).t()).split(inter, dim=-1)
    torch.testing.assert_close(got.cpu().float(), torch.nn.functional.silu(g) * u, rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize(
    "config, inter, rows",
    [
        ((32, 2, 4, 2, 5, 16, 2, 2, 2), 96, 1),  # split-K: no program holds a column's whole sum
        ((32, 1, 4, 2, 5, 16, 2, 1, 2), 96, 1),  # one column tile: gate's and up's columns not paired
        ((64, 1, 4, 2, 16, 16), 96, 1),  # the tensor-core kernel
        ((32, 1, 4, 2, 5, 16, 2, 2, 2), 96, 5),  # more rows than the fp16 GEMV takes
        ((64, 1, 4, 2, 5, 16, 2, 2, 2), 80, 1),  # a half of 80 columns is not tiled by 32
    ],
)
def test_gate_up_gemv_declines_silu_mul_where_its_config_cannot(config: tuple, inter: int, rows: int) -> None:
    """Where the launch cannot write ``silu(gate) * up`` itself, ``matmul_small`` says so (None) and the
    caller takes the product and `fused_ops.silu_mul`: nothing half-done, nothing wrong."""
    k = 256
    q = quantize_int4(torch.randn(2 * inter, k, generator=torch.Generator().manual_seed(23)) * 0.05, group=64)
    gw = _on_device(gpu.pack(q))
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(24)).to(DEVICE)
    key = ("int4k", 2 * inter, k)
    gpu.TUNING[key] = config
    try:
        assert gpu.matmul_small(gw, x, silu_inter=inter) is None
        assert gpu.matmul_small(gw, x).shape == (rows, 2 * inter)  # the plain product still runs
    finally:
        gpu.TUNING.pop(key)
