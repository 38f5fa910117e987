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
