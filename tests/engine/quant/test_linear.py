"""QuantLinear (CPU reference path) against a matmul with the dequantized weight; TEAL at decode."""

from __future__ import annotations

import pytest
import torch

import engine.quant.linear as ql
from engine.quant.linear import QuantLinear, teal_everywhere
from engine.quant.quantize import prune_2_4, quantize_int4, quantize_int8


def _w(n: int = 96, k: int = 128) -> torch.Tensor:
    return torch.randn(n, k, generator=torch.Generator().manual_seed(0)) * 0.05


@pytest.mark.parametrize("kind", ["int8", "int4", "int4-2:4"])
def test_forward_matches_dequantized_matmul(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ql, "ROW_CHUNK_ELEMS", 128 * 40)  # 40-row chunks: the last one is partial
    w = _w()
    if kind == "int8":
        qw = quantize_int8(w)
    else:
        qw = quantize_int4(w, 64, mask=prune_2_4(w) if kind.endswith("2:4") else None)
    bias = torch.randn(96)
    lin = QuantLinear(qw, bias)
    x = torch.randn(2, 5, 128)
    ref = x @ qw.dequantize().T + bias
    torch.testing.assert_close(lin(x), ref, rtol=1e-5, atol=1e-5)
    xb = x.to(torch.bfloat16)
    out = lin(xb)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 5, 96)
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)
    # the reference path keeps no dequantized copy between calls
    assert [n for n, v in vars(lin).items() if isinstance(v, torch.Tensor)] == []
    assert list(lin.buffers()) == []


def test_module_moves_keep_quantized_dtypes() -> None:
    lin = QuantLinear(quantize_int4(_w(), 64))
    lin.to(torch.float64)
    assert lin.qweight.q.dtype == torch.uint8 and lin.qweight.scale.dtype == torch.float32
    lin.to("cpu")
    assert lin.qweight.q.device.type == "cpu"
    assert "int4 g64" in repr(lin)


def test_teal_zeroes_small_inputs_at_decode_only() -> None:
    qw = quantize_int8(_w())
    lin = QuantLinear(qw, act_threshold=0.5)
    dense = QuantLinear(qw)
    decode = torch.randn(4, 128)
    kept = decode.masked_fill(decode.abs() < 0.5, 0.0)
    torch.testing.assert_close(lin(decode), dense(kept))
    assert not torch.allclose(lin(decode), dense(decode))
    prefill = torch.randn(64, 128)  # more than TEAL_MAX_ROWS rows: untouched
    torch.testing.assert_close(lin(prefill), dense(prefill))
    with teal_everywhere():
        torch.testing.assert_close(lin(prefill), dense(prefill.masked_fill(prefill.abs() < 0.5, 0.0)))
    torch.testing.assert_close(lin(prefill), dense(prefill))  # the context manager restores
