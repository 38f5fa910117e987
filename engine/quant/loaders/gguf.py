"""GGUF Q4_0 / Q4_1 / Q8_0 tensors -> our formats, read with the ``gguf`` package (no dequantize pass).

Q4_0 (``w = d * (q - 8)``) and Q4_1 (``w = d * q + m``) blocks are 32 weights with one fp16 scale (and
min): they map exactly onto `Int4Weight` with ``group=32`` (zero ``8`` or ``-m / d``). Asking for another
group (64, 128: what the GPU kernels are tuned for) requantizes from the dequantized values. Q8_0 (32
weights per fp16 scale) is requantized to per-channel `Int8Weight`.

The default GGUF path is unchanged (`engine.loader.convert_gguf`: dequantize once through transformers);
`apply_gguf_weights` then swaps the model's linears for the file's own 4-bit blocks. llama.cpp stores
``q_proj``/``k_proj`` rows permuted for its RoPE layout; the inverse permutation (as in transformers) is
applied to whole rows, which leaves the per-row groups intact.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engine.quant.formats import Int4Weight, Int8Weight
from engine.quant.linear import QuantLinear
from engine.quant.quantize import quantize_int4, quantize_int8

BLOCK = 32
# GGUF tensor name (blk.N.<name>.weight) -> (our module suffix, HF projection it fills)
GGUF_LINEARS = {
    "attn_q": ("self_attn.qkv_proj", "q"),
    "attn_k": ("self_attn.qkv_proj", "k"),
    "attn_v": ("self_attn.qkv_proj", "v"),
    "attn_output": ("self_attn.o_proj", None),
    "ffn_gate": ("mlp.gate_up_proj", "gate"),
    "ffn_up": ("mlp.gate_up_proj", "up"),
    "ffn_down": ("mlp.down_proj", None),
}
FUSE_ORDER = {"self_attn.qkv_proj": ("q", "k", "v"), "mlp.gate_up_proj": ("gate", "up")}


def _nibbles(qs: np.ndarray) -> torch.Tensor:
    """``[..., 16]`` bytes -> ``[..., 32]`` values: low nibbles are weights 0..15, high ones 16..31."""
    out = np.empty((*qs.shape[:-1], 2 * qs.shape[-1]), dtype=np.uint8)
    np.bitwise_and(qs, 0xF, out=out[..., : qs.shape[-1]])
    np.right_shift(qs, 4, out=out[..., qs.shape[-1] :])
    return torch.from_numpy(out)


def block_to_int4(raw: np.ndarray, qtype: str, n: int, k: int) -> Int4Weight:
    """Raw Q4_0/Q4_1 bytes ``uint8 [N, K/32 * bytes]`` -> exact `Int4Weight` with ``group=32``."""
    if k % BLOCK:
        raise ValueError(f"GGUF {qtype} rows must be a multiple of {BLOCK}, got {k}")
    g = k // BLOCK
    hdr = 2 if qtype == "Q4_0" else 4
    blocks = np.array(raw, dtype=np.uint8, copy=True).reshape(n, g, hdr + BLOCK // 2)  # off the mmap
    d = torch.from_numpy(blocks[..., :2].copy().view(np.float16)[..., 0].astype(np.float32))
    q = _nibbles(blocks[..., hdr:])  # [N, G, 32]
    if qtype == "Q4_0":
        zero = torch.full_like(d, 8.0)
        scale = d
    elif qtype == "Q4_1":
        m = torch.from_numpy(blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32))
        flat = d == 0  # every weight of the block equals m: q = 0, (0 - (-1)) * m
        scale, zero = d, -m / d
        if bool(flat.any()):
            scale = torch.where(flat, m, d)
            zero = torch.where(flat, torch.full_like(d, -1.0), -m / torch.where(flat, torch.ones_like(d), d))
            q = torch.where(flat[..., None], torch.zeros_like(q), q)
    else:
        raise ValueError(f"not a 4-bit GGUF block type: {qtype}")
    return Int4Weight(q.reshape(n, k).contiguous(), scale, zero, BLOCK)


def tensor_to_qweight(tensor, group: int | None = None) -> Int4Weight | Int8Weight:
    """A ``gguf.ReaderTensor`` (Q4_0, Q4_1 or Q8_0) -> our format (see module doc)."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    qtype = tensor.tensor_type.name
    k, n = (int(x) for x in tensor.shape)  # GGUF lists dims innermost first
    if qtype in ("Q4_0", "Q4_1"):
        w4 = block_to_int4(tensor.data, qtype, n, k)
        if group in (None, BLOCK):
            return w4
        return quantize_int4(w4.dequantize(torch.float32), group)
    if qtype == "Q8_0":
        w = torch.from_numpy(dequantize(np.asarray(tensor.data), GGMLQuantizationType.Q8_0).reshape(n, k))
        return quantize_int8(w)
    raise ValueError(f"GGUF tensor {tensor.name} is {qtype}; supported: Q4_0, Q4_1, Q8_0")


@functools.lru_cache(maxsize=2)
def _reader(path: str, mtime_ns: int):
    """Parsed GGUF header (memory-mapped data); cached: parsing the vocabulary metadata takes seconds."""
    from gguf import GGUFReader

    return GGUFReader(path)


def _unpermute(n_rows: int, heads: int) -> torch.Tensor:
    """Row order undoing llama.cpp's q/k permutation (transformers' ``reverse_permute_weights``)."""
    dim = n_rows // heads // 2
    return torch.arange(n_rows).reshape(heads, dim, 2).swapaxes(2, 1).reshape(n_rows)


def _rows(w: Int4Weight | Int8Weight, idx: torch.Tensor) -> Int4Weight | Int8Weight:
    if isinstance(w, Int8Weight):
        return Int8Weight(w.q[idx], w.scale[idx])
    return Int4Weight(w.q[idx], w.scale[idx], w.zero[idx], w.group, None if w.mask is None else w.mask[idx])


def _cat(parts: list[Int4Weight | Int8Weight]) -> Int4Weight | Int8Weight:
    if all(isinstance(p, Int8Weight) for p in parts):
        return Int8Weight(torch.cat([p.q for p in parts]), torch.cat([p.scale for p in parts]))
    if not all(isinstance(p, Int4Weight) and p.group == parts[0].group for p in parts):
        raise ValueError("cannot fuse GGUF projections of different types into one layer")
    return Int4Weight(
        *(torch.cat([getattr(p, a) for p in parts]) for a in ("q", "scale", "zero")), parts[0].group
    )


@torch.no_grad()
def apply_gguf_weights(model: nn.Module, gguf_path: str | Path, group: int | None = None) -> int:
    """Replace the decoder's linears with the GGUF file's own quantized blocks; returns how many."""
    cfg = model.cfg
    pieces: dict[str, dict[str | None, Int4Weight | Int8Weight]] = {}
    p = Path(gguf_path).resolve()
    for t in _reader(str(p), p.stat().st_mtime_ns).tensors:
        parts = t.name.split(".")
        if len(parts) != 4 or parts[0] != "blk" or parts[2] not in GGUF_LINEARS:
            continue
        suffix, proj = GGUF_LINEARS[parts[2]]
        w = tensor_to_qweight(t, group)
        if proj in ("q", "k"):
            w = _rows(w, _unpermute(w.shape[0], cfg.num_heads if proj == "q" else cfg.num_kv_heads))
        pieces.setdefault(f"model.layers.{parts[1]}.{suffix}", {})[proj] = w
    for name, parts in pieces.items():
        order = FUSE_ORDER.get(name.split(".", 3)[3], (None,))
        missing = [p for p in order if p not in parts]
        if missing:
            raise KeyError(f"GGUF file lacks {missing} for {name}")
        old = model.get_submodule(name)
        qw = _cat([parts[p] for p in order]) if len(order) > 1 else parts[None]
        if qw.shape != tuple(old.weight.shape):
            raise ValueError(f"{name}: GGUF shape {qw.shape} != model {tuple(old.weight.shape)}")
        parent, _, leaf = name.rpartition(".")
        bias = getattr(old, "bias", None)
        setattr(model.get_submodule(parent), leaf, QuantLinear(qw.to(old.weight.device), bias))
    return len(pieces)
