"""Packed CPU kernels for few bf16 rows (engine.quant.cpu_linear) against the dequantizing reference."""

from __future__ import annotations

import pytest
import torch

from engine.quant import cpu_linear
from engine.quant.formats import Int4Weight
from engine.quant.linear import QuantLinear
from engine.quant.quantize import prune_2_4, quantize_int4, quantize_int8


def _w(n: int = 96, k: int = 256, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * 0.05


def _gguf_like(n: int = 64, k: int = 256, group: int = 32) -> Int4Weight:
    """Q4_1's form: w = q * d + m with a real-valued minimum, i.e. a float zero = -m / d."""
    g = torch.Generator().manual_seed(1)
    d = torch.rand(n, k // group, generator=g) * 0.01 + 1e-3
    m = -torch.rand(n, k // group, generator=g) * 0.08
    q = torch.randint(0, 16, (n, k), generator=g, dtype=torch.uint8)
    return Int4Weight(q, d, -m / d, group)


def _bf16_bound(ref: torch.Tensor) -> float:
    return 0.02 * ref.abs().max().item()  # bf16 activations and scales: ~3 significant digits


@pytest.mark.parametrize(
    "kind", ["int8", "int4:g32", "int4:g64", "int4:g128", "gguf-like"], ids=lambda k: k.replace(":", "-")
)
def test_packed_matmul_matches_the_dequantized_weight(kind: str) -> None:
    if kind == "int8":
        qw = quantize_int8(_w())
    elif kind == "gguf-like":
        qw = _gguf_like()
    else:
        qw = quantize_int4(_w(), int(kind.split("g")[1]))
    packed = cpu_linear.pack(qw)
    assert packed is not None and packed.kind == kind[:4].replace("gguf", "int4")
    for rows in (1, 3, cpu_linear.MAX_ROWS):
        x = torch.randn(rows, qw.shape[1], generator=torch.Generator().manual_seed(rows))
        ref = x @ qw.dequantize().T
        out = cpu_linear.matmul(packed, x.to(torch.bfloat16))
        assert out.dtype == torch.bfloat16 and out.shape == ref.shape
        assert (out.float() - ref).abs().max().item() < _bf16_bound(ref)


def test_shapes_the_kernels_cannot_take_stay_on_the_reference_path() -> None:
    w = _w(96, 256)
    assert cpu_linear.pack(quantize_int4(w, 64, mask=prune_2_4(w))) is None  # 2:4 has its own numerics
    assert cpu_linear.pack(quantize_int4(_w(40, 256), 64)) is None  # tinygemm wants N % 16 == 0
    lin = QuantLinear(quantize_int4(_w(40, 256), 64))
    x = torch.randn(2, 256).to(torch.bfloat16)
    ref = x.float() @ lin.qweight.dequantize().T
    assert (lin(x).float() - ref).abs().max().item() < _bf16_bound(ref)
    assert lin.cpu is False  # tried once, remembered


def test_quant_linear_takes_the_packed_kernel_for_few_bf16_rows_only(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = cpu_linear.matmul
    monkeypatch.setattr(cpu_linear, "matmul", lambda p, x: calls.append(x.shape[0]) or real(p, x))
    bias = torch.randn(96)
    lin = QuantLinear(quantize_int4(_w(), 64), bias)
    ref_w = lin.qweight.dequantize()
    few = torch.randn(4, 256)
    many = torch.randn(cpu_linear.MAX_ROWS + 1, 256)
    torch.testing.assert_close(lin(few), few @ ref_w.T + bias, rtol=1e-5, atol=1e-5)  # fp32: reference
    assert calls == [] and lin.cpu is None
    out = lin(few.to(torch.bfloat16))
    assert calls == [4] and isinstance(lin.cpu, cpu_linear.CpuPacked)
    ref = few @ ref_w.T + bias
    assert (out.float() - ref).abs().max().item() < _bf16_bound(ref)
    lin(many.to(torch.bfloat16))  # a prefill chunk: dequantize and use the dense bf16 matmul
    assert calls == [4]
    lin.to("cpu")  # a move drops the packed form; the next decode packs the moved weight
    assert lin.cpu is None


def test_dequantize_by_groups_equals_the_expanded_form() -> None:
    """The broadcast dequantization (K a multiple of the group) gives the very values of the general one."""
    qw = _gguf_like(32, 256, 32)
    k = qw.shape[1]
    scale = qw.scale.repeat_interleave(qw.group, dim=1)[:, :k]
    zero = qw.zero.repeat_interleave(qw.group, dim=1)[:, :k]
    assert torch.equal(qw.dequantize(), (qw.q.float() - zero) * scale)
    assert torch.equal(qw.dequantize(rows=slice(8, 20)), ((qw.q.float() - zero) * scale)[8:20])
    ragged = quantize_int4(_w(32, 200), 64)  # 200 = 3 groups + 8: the expanding path
    assert ragged.dequantize().shape == (32, 200)
