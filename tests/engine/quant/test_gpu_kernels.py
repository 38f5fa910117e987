"""The CUDA kernels of engine.quant (run by Triton's CPU interpreter in CI) against the canonical formats.

Each packed form must give the same matmul as the reference dequantization of the canonical weight, at
decode sizes (fused kernels, split-K on and off) and through the prefill path (dequantize + GEMM).
"""

from __future__ import annotations

import pytest
import torch

from engine.quant import gpu
from engine.quant.formats import Int4Weight, Int8Weight
from engine.quant.quantize import prune_2_4, quantize_int4, quantize_int8
from tests.engine.test_attention import _interpreter_scalar_fix

N, K = 64, 256


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# compiled on a GPU, fp32 tl.dot runs in TF32 (10-bit mantissa); the interpreter computes in fp32
TOL = {"rtol": 1e-2, "atol": 5e-3} if DEVICE == "cuda" else {"rtol": 1e-4, "atol": 1e-4}


@pytest.fixture(autouse=True)
def _interpreter(monkeypatch) -> None:
    """Kernels run in Triton's CPU interpreter here (tests/engine/conftest.py); on a GPU box, compiled."""
    if DEVICE == "cpu":
        _interpreter_scalar_fix(monkeypatch)


def _on_device(gw: gpu.GpuWeight) -> gpu.GpuWeight:
    moved = {k: t.to(DEVICE) for k, t in gw.tensors.items()}
    return gpu.GpuWeight(gw.kind, gw.n, gw.k, moved, gw.group, gw.extra)


def _weight(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, K, generator=g) * 0.05


def _x(m: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(m, K, generator=torch.Generator().manual_seed(seed))


def _ref(q: Int4Weight) -> torch.Tensor:
    """The canonical dequantization with scale and bias rounded to fp16, as the packed form stores them."""
    s = q.scale.half().float()
    b = (-q.zero * q.scale).half().float()
    w = q.q.float() * s.repeat_interleave(q.group, 1) + b.repeat_interleave(q.group, 1)
    return w if q.mask is None else w * q.mask


def _check(gw: gpu.GpuWeight, ref_w: torch.Tensor, m: int, thresh: float | None = None) -> None:
    x = _x(m)
    xs = x if thresh is None else x.masked_fill(x.abs() < thresh, 0.0)
    want = xs @ ref_w.t()
    got = gpu.matmul_small(_on_device(gw), x.to(DEVICE), thresh).cpu()
    torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("group", [64, 128])
@pytest.mark.parametrize("m", [1, 5, 16])
@pytest.mark.parametrize("n_major", [False, True])
def test_int4_kernel_matches_dequantized(group: int, m: int, n_major: bool) -> None:
    q = quantize_int4(_weight(), group=group)
    torch.testing.assert_close(_ref(q), q.dequantize(torch.float32), rtol=0, atol=2e-4)
    gw = gpu.pack(q, n_major=n_major)
    assert gw.kind == ("int4" if n_major else "int4k")
    _check(gw, _ref(q), m)


def test_k_packed_layout_holds_eight_k_codes_per_word() -> None:
    q = quantize_int4(_weight(1), group=128)
    words = gpu.pack(q).tensors["w"]
    assert words.shape == (K // 8, N) and words.dtype == torch.int32
    nibble = (words[3, 5] >> (4 * 7)) & 0xF  # word row 3, nibble 7 = q[n=5, k=31]
    assert int(nibble) == int(q.q[5, 31])


@pytest.mark.parametrize("group", [64, 128])
@pytest.mark.parametrize("split", [1, 2])
@pytest.mark.parametrize(
    "m, mode, block_r",
    [
        (1, 0, 16),
        (1, 2, 16),
        (1, 3, 8),
        (1, 3, 32),
        (1, 16, 16),
        (5, 16, 16),
        (16, 16, 32),
        (3, 16, 32),
        (5, 18, 16),
        (16, 18, 16),
        (1, 20, 16),
        (5, 20, 16),
        (16, 20, 32),
        (3, 21, 16),
        (16, 21, 16),
        (2, 22, 16),
        (16, 22, 16),
    ],  # fmt: skip
)
def test_k_packed_gemv_and_tensor_core_paths_agree(
    group: int, split: int, m: int, mode: int, block_r: int
) -> None:
    """The one-token CUDA-core GEMVs (mode 0; 2: one logic op a code, bias by row sums; 3: steps of
    ``block_r`` word rows with per-row scales, within and across groups) and the per-nibble tensor-core
    GEMMs (16; 18: codes as bf16 pairs, the dequantizing form where a step spans groups; 20: 18 with
    the codes as the dot's first operand), with split-K,
    with the group identity (a step inside one group) and with dequantization before the dot (steps
    across groups)."""
    q = quantize_int4(_weight(8), group=group)
    gpu.TUNING[("int4k", N, K)] = (32, split, 4, 2, mode, block_r)
    try:
        _check(gpu.pack(q), _ref(q), m)
    finally:
        gpu.TUNING.pop(("int4k", N, K))


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


@pytest.mark.parametrize("split", [1, 2])
@pytest.mark.parametrize("m, block_m", [(3, 16), (1, 16), (1, 1), (1, 0)])
@pytest.mark.parametrize("gather", [0, 1])
def test_split_k_and_one_token_paths_agree(split: int, m: int, block_m: int, gather: int) -> None:
    """Split-K partial sums, one token through tensor-core padding or the plain reduction, and both
    ways of unpacking the nibbles."""
    q = quantize_int4(_weight(2), group=64)
    gw = gpu.pack(q, n_major=True)
    gpu.TUNING[("int4", N, K)] = (32, split, 4, 2, block_m, gather, 32)
    try:
        _check(gw, _ref(q), m)
    finally:
        gpu.TUNING.pop(("int4", N, K))


def test_teal_kernel_skips_small_activations() -> None:
    q = quantize_int4(_weight(3), group=64)
    thresh = float(_x(1).abs().median())  # about half the activations are dropped
    gw = gpu.pack(q, n_major=True)
    _check(gw, _ref(q), 1, thresh)
    _check(gw, _ref(q), 4, thresh)
    with pytest.raises(ValueError, match="N-packed"):
        gpu.matmul_small(gpu.pack(q), _x(1), thresh)
    gpu.TUNING[("int4_teal", N, K)] = (64, 2, 4, 2, 0, 0, 32)  # the one-token GEMV kernel
    try:
        _check(gw, _ref(q), 1, thresh)
    finally:
        gpu.TUNING.pop(("int4_teal", N, K))


@pytest.mark.parametrize("m, block_m", [(1, 1), (1, 16), (3, 16)])
@pytest.mark.parametrize("magic", [0, 1])
def test_int8_kernel_matches_dequantized(m: int, block_m: int, magic: int) -> None:
    """Both int8 -> float conversions (cast, magic number), one token reduced plainly or padded."""
    q = quantize_int8(_weight(4))
    assert int(q.q.min()) < -100 and int(q.q.max()) > 100  # the full code range is exercised
    gpu.TUNING[("int8", N, K)] = (32, 2, 4, 2, block_m, magic)
    try:
        _check(gpu.pack(q), q.dequantize(torch.float32), m)
    finally:
        gpu.TUNING.pop(("int8", N, K))


@pytest.mark.parametrize("m", [1, 4])
@pytest.mark.parametrize("gather", [0, 1])
def test_2_4_kernel_reads_only_kept_values(m: int, gather: int) -> None:
    w = _weight(5)
    mask = prune_2_4(w)
    q = quantize_int4(w * mask, group=64)
    q = Int4Weight(q.q, q.scale, q.zero, q.group, mask)
    gw = gpu.pack(q)
    assert gw.kind == "int4_24"
    dense = gpu.pack(Int4Weight(q.q, q.scale, q.zero, q.group))
    codes = sum(gw.tensors[k].numel() * 4 for k in ("v", "i"))
    assert codes == dense.tensors["w"].numel() * 4 * 3 // 4  # half the codes + a 2-bit position each
    gpu.TUNING[("int4_24", N, K)] = (32, 1, 4, 2, 1, gather)
    try:
        _check(gw, _ref(q), m)
    finally:
        gpu.TUNING.pop(("int4_24", N, K))


def test_prefill_path_dequantizes_every_format() -> None:
    w = _weight(6)
    mask = prune_2_4(w)
    q4 = quantize_int4(w, group=64)
    cases = [
        (quantize_int8(w), False),
        (q4, False),
        (q4, True),
        (quantize_int4(w, group=128), False),
        (Int4Weight(q4.q, q4.scale, q4.zero, 64, mask), False),
    ]
    for q, n_major in cases:
        got = gpu.dense_weight(_on_device(gpu.pack(q, n_major=n_major)), torch.float32).cpu()
        want = q.dequantize(torch.float32) if isinstance(q, Int8Weight) else _ref(q)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_unpackable_shapes_fall_back_and_bad_masks_are_refused() -> None:
    q = quantize_int4(torch.randn(8, 96) * 0.05, group=64)  # K not a multiple of the group
    assert gpu.pack(q).kind == "fallback"
    bad = torch.zeros(N, K, dtype=torch.bool)
    bad[:, ::4] = True  # 1 of 4 kept
    q4 = quantize_int4(_weight(), group=64)
    with pytest.raises(ValueError, match="exactly 2 of every 4"):
        gpu.pack(Int4Weight(q4.q, q4.scale, q4.zero, 64, bad))


@pytest.mark.parametrize(
    "kind, cfg, m",
    [
        ("int4k", (32, 4, 4, 2, 3, 8), 1),  # gemv3: one row per program
        ("int4k", (32, 4, 4, 2, 4, 8, 2, 1), 3),  # the fp16 GEMV: 3 rows, a 4-row workspace tile
        ("int4k", (32, 2, 4, 2, 16, 16), 5),  # tensor cores (tl.dot: steps of 16 word rows)
        ("int8", (32, 2, 4, 2, 16, 0), 2),
        ("int4", (32, 2, 4, 2, 0, 0, 32), 1),  # the N-packed 2-D accumulator GEMV
    ],
)
def test_split_k_partials_are_summed_once_in_order_and_counters_reset(kind: str, cfg: tuple, m: int) -> None:
    """Split-K's last program per column tile adds the partial tiles: the result equals the unsplit one,
    comes out in x's dtype, is the same on every launch (a fixed order, not atomic adds), and each
    launch leaves the shared arrival counters at zero for the next (a left-over count would make a
    later launch sum too early or never)."""
    w = _weight(11)
    q = quantize_int8(w) if kind == "int8" else quantize_int4(w, group=64)
    gw = _on_device(gpu.pack(q, n_major=kind == "int4"))
    x = _x(m, seed=6).to(DEVICE)
    locks = gpu.split_locks(x.device)
    gpu.TUNING[(kind, N, K)] = (cfg[0], 1, *cfg[2:])
    try:
        whole = gpu.matmul_small(gw, x)
        gpu.TUNING[(kind, N, K)] = cfg
        first, second = gpu.matmul_small(gw, x), gpu.matmul_small(gw, x)
    finally:
        gpu.TUNING.pop((kind, N, K))
    assert first.dtype == x.dtype and first.shape == (m, N)
    assert torch.equal(first, second)
    torch.testing.assert_close(first, whole, rtol=4e-3, atol=1e-3)
    assert int(locks.count_nonzero()) == 0


@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("mode, split", [(4, 1), (5, 2), (5, 3)])
def test_fp16_gemv_prefetching_the_next_step_gives_the_same_bits(m: int, mode: int, split: int) -> None:
    """PREFETCH (1: the next step's words loaded before this step's math; 2: with its scales and biases,
    and the first step's loads before the absmax pass) changes only when loads issue: the same bits as
    without, for programs of 3 steps, of 2 and 1 (48 word rows in steps of 16 over 2 splits) and of 1
    step each, and the step after a program's last loads nothing (masked: K = 384 has no rows past the
    last program's). PRE_WAIT (the first step before PDL's wait) moves loads only: the same bits too.
    3 (every step before the first step's math) where the splits get equal steps (3 steps, 1), else 2
    (split 2: steps 2 and 1): the same bits again."""
    k = 384
    w = torch.randn(N, k, generator=torch.Generator().manual_seed(19)) * 0.05
    q = quantize_int4(w, group=64)
    gw = _on_device(gpu.pack(q))
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(20)).to(DEVICE)
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
    assert torch.equal(got[0, False], got[1, False])
    assert torch.equal(got[0, False], got[2, False])
    assert torch.equal(got[0, False], got[2, True])
    assert torch.equal(got[0, False], got[3, False])
    assert torch.equal(got[0, False], got[3, True])
    want = x.cpu() @ _ref(q).t()
    assert float((got[2, True].cpu() - want).abs().max() / want.abs().max()) < 4e-3


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


def _same_bits_on_panels(cfg: tuple, m: int, seed: int, panels: tuple, silu: int = 0) -> tuple:
    """A K = 512 weight's product with ``m`` rows under launch config ``cfg``, asserted to give the same bits
    from each width of ``panels`` as from rows; returns the packed weight, x and that product."""
    k = 512
    w = torch.randn(N, k, generator=torch.Generator().manual_seed(seed)) * 0.05
    gw = _on_device(gpu.pack(quantize_int4(w, group=64)))
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(seed + 1)).to(DEVICE)
    gpu.TUNING[("int4k", N, k)] = cfg
    try:
        want = gpu.matmul_small(gw, x, silu_inter=silu)
        for panel in panels:
            assert torch.equal(gpu.matmul_small(gpu.to_panels(gw, panel), x, silu_inter=silu), want), panel
    finally:
        gpu.TUNING.pop(("int4k", N, k))
    return gw, x, want


@pytest.mark.parametrize(
    "cfg, m, silu",
    [
        ((32, 2, 4, 2, 5, 16, 2, 1, 2), 1, False),  # split-K, one column tile, scales a step ahead
        ((64, 1, 4, 2, 5, 32, 2, 2, 1), 3, False),  # two column tiles, three rows, words a step ahead
        ((32, 1, 4, 2, 4, 16, 2, 2, 0), 1, True),  # gate's and up's tiles, writing silu(gate) * up
    ],
)
def test_fp16_gemv_on_panels_gives_the_same_bits(cfg: tuple, m: int, silu: bool) -> None:
    """The panel layout (`gpu.to_panels`: ``[N // P, rows, P]`` words, scales and biases) changes only
    where a program's words lie: panels half, once and twice a column tile's width give the bits of the
    ``[rows, N]`` layout, with split-K, several rows and the SiLU epilogue (gate's tile and up's in panels
    ``N // 2`` apart)."""
    tile = cfg[0] // cfg[7]
    _, _, want = _same_bits_on_panels(cfg, m, 23, (tile // 2, tile, 2 * tile), N // 2 if silu else 0)
    assert want.shape == (m, N // 2 if silu else N)


def test_panels_refuse_a_width_that_does_not_divide_n() -> None:
    gw = gpu.pack(quantize_int4(_weight(), group=64))
    with pytest.raises(ValueError, match="N divides"):
        gpu.to_panels(gw, 48)
    moved = gpu.to_panels(gw, 16)
    assert moved.panel == 16 and moved.nbytes() == gw.nbytes()
    flat, rows = moved.tensors["w"].reshape(-1), K // 8
    assert torch.equal(flat[: rows * 16].reshape(rows, 16), gw.tensors["w"][:, :16])  # panel 0: columns 0-15
    assert torch.equal(flat[rows * 16 : rows * 32].reshape(rows, 16), gw.tensors["w"][:, 16:32])
    scales = moved.tensors["s"].reshape(-1)
    assert torch.equal(scales[K // 64 * 16 : K // 64 * 32].reshape(K // 64, 16), gw.tensors["s"][:, 16:32])


@pytest.mark.parametrize(
    "cfg, m",
    [
        ((32, 2, 4, 2, 2, 16), 1),  # gemv2: a group a step
        ((32, 1, 4, 2, 3, 16), 1),  # gemv3: steps of 16 word rows
        ((64, 2, 4, 2, 16, 16), 5),  # tensor cores, a dot a nibble (K 16: the least a compiled dot takes)
        ((64, 1, 4, 2, 18, 16), 16),  # bf16 code pairs
        ((64, 2, 4, 2, 21, 8), 7),  # swapped operands, a dot a nibble pair
    ],
)
def test_every_int4k_kernel_reads_panels(cfg: tuple, m: int) -> None:
    """One packed layout serves every batch size, so each int4 kernel (and prefill's dequantization)
    must read panels: with panels narrower and wider than its column tile, the same bits as on rows."""
    gw, x, want = _same_bits_on_panels(cfg, m, 25, (16, 64))
    dense = gpu.dense_weight(gw, torch.float32)
    assert torch.equal(gpu.dense_weight(gpu.to_panels(gw, 16), torch.float32), dense)
    torch.testing.assert_close(want.cpu(), x.cpu() @ dense.cpu().t(), **TOL)


def test_panels_move_back_and_between_widths() -> None:
    gw = gpu.pack(quantize_int4(_weight(), group=64))
    wide = gpu.to_panels(gpu.to_panels(gw, 16), 32)
    assert torch.equal(wide.tensors["w"], gpu.to_panels(gw, 32).tensors["w"])
    back = gpu.to_panels(wide, 0)
    assert back.panel == 0
    for name, t in gw.tensors.items():
        assert torch.equal(back.tensors[name], t), name


def test_prepare_stores_panels_of_the_one_token_tile_where_on(monkeypatch) -> None:
    """With `gpu.PANELS` on, `prepare` packs K-packed int4 in panels of the one-token GEMV's column tile."""
    from engine.quant.linear import QuantLinear

    monkeypatch.setattr(gpu, "PANELS", True)
    gpu.TUNING[("int4k", N, K)] = (64, 1, 4, 2, 5, 16, 2, 2, 2)  # two column tiles of 32
    try:
        q = quantize_int4(_weight(), group=64)
        g = gpu.prepare(QuantLinear(q))
        assert g.panel == 32
        x = _x(1)
        got = gpu.matmul_small(_on_device(g), x.to(DEVICE)).cpu()
        torch.testing.assert_close(got, x @ _ref(q).t(), rtol=1e-2, atol=5e-3)
    finally:
        gpu.TUNING.pop(("int4k", N, K))
