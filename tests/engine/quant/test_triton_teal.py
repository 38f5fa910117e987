"""The activation-sparse (TEAL) int4 GEMV and its live-row list, in Triton's CPU interpreter (compiled on a
GPU box), against the reference: the dequantized weight times x with its small values dropped."""

from __future__ import annotations

import itertools

import pytest
import torch

from engine.quant import triton_teal as teal
from engine.quant.quantize import prune_2_4, quantize_int4
from tests.engine.quant.test_gpu_kernels import DEVICE, _ref
from tests.engine.test_attention import _interpreter_scalar_fix


@pytest.fixture(autouse=True)
def _interpreter(monkeypatch) -> None:
    if DEVICE == "cpu":
        _interpreter_scalar_fix(monkeypatch)


def _weight(n: int, k: int, group: int, seed: int = 0):
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * 0.05
    q = quantize_int4(w, group=group)
    return q, teal.pack_teal(q)


def _on_device(g):
    return type(g)(g.kind, g.n, g.k, {k: t.to(DEVICE) for k, t in g.tensors.items()}, g.group)


def _x(k: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(1, k, generator=torch.Generator().manual_seed(seed))


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float().cpu() - want).abs().max() / want.abs().max())


@pytest.mark.parametrize(
    "n, k, group, block_n, split, rows, prefetch",
    [
        (64, 256, 128, 64, 1, 16, True),
        (64, 256, 64, 64, 3, 8, True),
        (72, 256, 128, 64, 2, 16, False),  # a partial column tile (N not a multiple of the tile)
        (64, 384, 128, 32, 4, 4, True),  # more programs than chunks: some add nothing
        (64, 256, 128, 64, 2, 32, True),  # the longest fp16 chain: 32 products a half
    ],
)
@pytest.mark.parametrize("denorm", [True, False])
def test_teal_gemv_matches_the_dense_product_of_the_live_rows(
    n, k, group, block_n, split, rows, prefetch, denorm
) -> None:
    q, g = _weight(n, k, group)
    g = _on_device(g)
    x = _x(k)
    thresh = float(x.abs().quantile(0.4))
    want = x.masked_fill(x.abs() < thresh, 0.0) @ _ref(q).t()
    kw = {"block_n": block_n, "split": split, "rows": rows, "denorm": denorm}
    got = teal.teal_matmul(g, x.to(DEVICE), thresh, prefetch=prefetch, **kw)
    assert got.shape == (1, n)
    assert _rel_err(got, want) < 4e-3
    # dropping nothing gives the dense product; the threshold really drops rows
    dense = x @ _ref(q).t()
    assert _rel_err(teal.teal_matmul(g, x.to(DEVICE), 0.0, **kw), dense) < 4e-3
    assert _rel_err(got, dense) > 1e-2


def test_live_rows_are_listed_in_order_by_group_and_padded_to_whole_chunks() -> None:
    k, group, rows = 384, 128, 16
    x = _x(k, seed=5)
    x[0, 128:256] = 0.0  # a group with no live row takes no chunk
    thresh = 0.5
    ent, meta = teal.compact(x.to(DEVICE), thresh, group, rows)
    ent, meta = ent.cpu().reshape(-1, teal.ENTRY), meta.cpu()
    live = (x[0].abs() >= thresh).nonzero().flatten()
    counts = [int(((live >= g0) & (live < g0 + group)).sum()) for g0 in range(0, k, group)]
    assert counts[1] == 0
    chunks = sum(-(-c // rows) for c in counts)
    assert int(meta[0]) == chunks
    listed = ent[: chunks * rows]
    xs = listed[:, 3].view(torch.float32)
    real = xs != 0
    assert listed[real, 0].tolist() == live.tolist()  # every live row once, in order
    scale = float(x.abs().max()) / float(xs.abs().max())  # x was scaled by one power of two
    assert scale == 2.0 ** round(torch.log2(torch.tensor(scale)).item())
    torch.testing.assert_close(xs[real] * scale, x[0, live])
    for c in range(chunks):  # each chunk lies in one group, padding (x = 0) only at a group's end
        ks = listed[c * rows : (c + 1) * rows, 0]
        assert (ks // group == ks[0] // group).all()


def test_teal_gemv_keeps_large_and_small_activations_in_range() -> None:
    """fp16 chunk sums of unscaled products overflow for an activation of 3000 and flush to zero near
    1e-6: the power-of-two scaling of x must keep both."""
    q, g = _weight(64, 256, 128, seed=3)
    g = _on_device(g)
    big = _x(256, seed=2)
    big[0, 7] = 3000.0
    for x, denorm in itertools.product((big, _x(256, seed=4) * 1e-6), (True, False)):
        thresh = float(x.abs().quantile(0.3))
        want = x.masked_fill(x.abs() < thresh, 0.0) @ _ref(q).t()
        got = teal.teal_matmul(g, x.to(DEVICE), thresh, block_n=64, split=2, denorm=denorm)
        assert torch.isfinite(got).all()
        assert _rel_err(got, want) < 4e-3


def test_an_input_with_no_live_row_gives_zeros() -> None:
    _, g = _weight(64, 256, 128)
    got = teal.teal_matmul(_on_device(g), _x(256).to(DEVICE), 100.0, block_n=64, split=2)
    assert got.abs().max() == 0


def test_teal_gemv_refuses_what_it_cannot_run() -> None:
    w = torch.randn(64, 256) * 0.05
    mask = prune_2_4(w)
    with pytest.raises(ValueError, match="dense int4"):
        teal.pack_teal(quantize_int4(w * mask, group=128, mask=mask))
    _, g = _weight(64, 256, 128)
    with pytest.raises(ValueError, match="one row"):
        teal.teal_matmul(_on_device(g), torch.randn(2, 256).to(DEVICE), 0.1)
