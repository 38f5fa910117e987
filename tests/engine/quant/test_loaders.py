"""GPTQ / AWQ / GGUF loaders on small generated checkpoints against their reference dequantization."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize

from engine.quant.formats import Int4Weight, Int8Weight
from engine.quant.loaders.awq import awq_to_int4
from engine.quant.loaders.gguf import block_to_int4, tensor_to_qweight
from engine.quant.loaders.gptq import gptq_to_int4
from engine.quant.quantize import quantize_int4

K, N, GROUP = 256, 64, 64
AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]  # AutoAWQ WQLinear_GEMM.from_linear's order_map


def _ints(shape, lo: int, hi: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(lo, hi + 1, size=shape).astype(np.uint32)


def _pack_rows(v: np.ndarray) -> np.ndarray:
    """AutoGPTQ ``pack``: rows 8i..8i+7 into one int32 row, row 8i+j at bits 4j."""
    out = np.zeros((v.shape[0] // 8, v.shape[1]), dtype=np.uint32)
    for j in range(8):
        out |= (v[j::8, :] & 0xF) << np.uint32(4 * j)
    return out.view(np.int32)


def _pack_cols(v: np.ndarray, order: list[int]) -> np.ndarray:
    """Columns 8c..8c+7 into one int32 column; nibble i holds column 8c + order[i]."""
    out = np.zeros((v.shape[0], v.shape[1] // 8), dtype=np.uint32)
    for c in range(v.shape[1] // 8):
        for i in range(8):
            out[:, c] |= (v[:, 8 * c + order[i]] & 0xF) << np.uint32(4 * i)
    return out.view(np.int32)


def _reference(q: np.ndarray, z: np.ndarray, s: np.ndarray, g_idx: np.ndarray) -> torch.Tensor:
    """The published formula, element by element over K: ``w[n, k] = s[g, n] * (q[k, n] - z[g, n])``."""
    w = np.zeros((N, K), dtype=np.float32)
    for k in range(K):
        g = g_idx[k]
        w[:, k] = s[g].astype(np.float32) * (q[k].astype(np.float32) - z[g].astype(np.float32))
    return torch.from_numpy(w)


@pytest.mark.parametrize("fmt", ["gptq", "gptq_v2"])
def test_gptq_loader_matches_reference(fmt: str) -> None:
    q = _ints((K, N), 0, 15, 1)
    z = _ints((K // GROUP, N), 1, 15, 2)  # v1 stores z - 1, so z = 0 is not representable there
    s = (np.random.default_rng(3).random((K // GROUP, N)) * 0.01 + 1e-3).astype(np.float16)
    g_idx = np.arange(K) // GROUP
    stored = z - 1 if fmt == "gptq" else z
    w4 = gptq_to_int4(
        torch.from_numpy(_pack_rows(q)),
        torch.from_numpy(_pack_cols(stored, list(range(8)))),
        torch.from_numpy(s),
        torch.from_numpy(g_idx.astype(np.int32)),
        GROUP,
        checkpoint_format=fmt,
    )
    assert isinstance(w4, Int4Weight) and w4.shape == (N, K)
    assert torch.equal(w4.dequantize(), _reference(q, z, s, g_idx))


def test_gptq_act_order_is_refused_with_a_clear_message() -> None:
    q = _ints((K, N), 0, 15, 1)
    g_idx = np.random.default_rng(0).permutation(np.arange(K) // GROUP).astype(np.int32)
    with pytest.raises(ValueError, match="act-order"):
        gptq_to_int4(
            torch.from_numpy(_pack_rows(q)),
            torch.zeros(K // GROUP, N // 8, dtype=torch.int32),
            torch.ones(K // GROUP, N, dtype=torch.float16),
            torch.from_numpy(g_idx),
            GROUP,
        )
    with pytest.raises(ValueError, match="4-bit"):
        gptq_to_int4(torch.zeros(1, 8, dtype=torch.int32), torch.zeros(1, 1), torch.ones(1, 8), bits=8)


def test_awq_loader_matches_reference_with_its_interleaved_order() -> None:
    q = _ints((K, N), 0, 15, 4)
    z = _ints((K // GROUP, N), 0, 15, 5)
    s = (np.random.default_rng(6).random((K // GROUP, N)) * 0.01 + 1e-3).astype(np.float16)
    qw = torch.from_numpy(_pack_cols(q, AWQ_ORDER))
    qz = torch.from_numpy(_pack_cols(z, AWQ_ORDER))
    w4 = awq_to_int4(qw, qz, torch.from_numpy(s), GROUP)
    assert torch.equal(w4.dequantize(), _reference(q, z, s, np.arange(K) // GROUP))
    # the natural (GPTQ-style) order would give a different weight: the interleave matters
    plain = awq_to_int4(torch.from_numpy(_pack_cols(q, list(range(8)))), qz, torch.from_numpy(s), GROUP)
    assert not torch.equal(plain.dequantize(), w4.dequantize())


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1"])
def test_gguf_q4_blocks_convert_exactly(qtype: str) -> None:
    w = np.random.default_rng(7).standard_normal((N, K)).astype(np.float32) * 0.05
    w[3, 32:64] = 0.01  # a flat block (Q4_1: d == 0)
    t = getattr(GGMLQuantizationType, qtype)
    raw = quantize(w, t)
    w4 = block_to_int4(raw, qtype, N, K)
    assert w4.group == 32 and w4.shape == (N, K)
    ref = torch.from_numpy(dequantize(raw, t).reshape(N, K))
    torch.testing.assert_close(w4.dequantize(), ref, rtol=1e-6, atol=1e-7)
    regroup = tensor_to_qweight(SimpleNamespace(tensor_type=t, shape=[K, N], data=raw, name="x"), 128)
    assert regroup.group == 128  # requantized from the exact blocks with our int4 quantizer
    assert torch.equal(regroup.dequantize(), quantize_int4(w4.dequantize(), 128).dequantize())
    rel = ((regroup.dequantize() - ref) ** 2).mean().sqrt() / ref.std()
    assert 0 < rel < 0.2


def test_gguf_q8_0_requantized_to_int8() -> None:
    w = np.random.default_rng(8).standard_normal((N, K)).astype(np.float32) * 0.05
    raw = quantize(w, GGMLQuantizationType.Q8_0)
    t = SimpleNamespace(tensor_type=GGMLQuantizationType.Q8_0, shape=[K, N], data=raw, name="x")
    w8 = tensor_to_qweight(t)
    assert isinstance(w8, Int8Weight)
    ref = torch.from_numpy(dequantize(raw, GGMLQuantizationType.Q8_0).reshape(N, K))
    assert ((w8.dequantize() - ref).abs() <= w8.scale[:, None] / 2 + 1e-7).all()
    with pytest.raises(ValueError, match="supported"):
        tensor_to_qweight(
            SimpleNamespace(tensor_type=GGMLQuantizationType.F16, shape=[K, N], data=raw, name="x")
        )
