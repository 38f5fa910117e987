"""The copy kernel of `engine.kv_restore`: one layer of N pinned host slots into N pool blocks."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

CHUNK = 16384  # bytes a program copies (8 warps: four 128-bit loads a thread, all in flight at once)


@triton.jit
def _copy_layer(src, src_off, dst, dst_blk, X, kv_stride, CHUNK: tl.constexpr, CHUNKS: tl.constexpr):
    """Program (block i, K or V, chunk c) copies bytes ``[c*CHUNK, (c+1)*CHUNK)`` of the layer's K or V
    slice of host slot i (at byte offset ``src_off[i]`` from ``src``, the layer already added) into pool
    block ``dst_blk[i]`` of this layer (``dst``)."""
    it = tl.program_id(0)
    i = it // (2 * CHUNKS)
    r = it % (2 * CHUNKS)
    kv = r // CHUNKS
    o = (r % CHUNKS) * CHUNK + tl.arange(0, CHUNK)
    so = tl.multiple_of(tl.load(src_off + i), 16)
    b = tl.load(dst_blk + i).to(tl.int64)
    m = o < X
    x = tl.load(src + so + kv * X + o, mask=m)
    tl.store(dst + kv * kv_stride + b * X + o, x, mask=m)


def copy_layer(src: torch.Tensor, offsets: torch.Tensor, dst: torch.Tensor, blocks: torch.Tensor, x: int,
               kv_stride: int) -> None:  # fmt: skip
    """``src``: bytes of slot 0's layer; ``offsets`` (int64): each slot's byte offset from slot 0;
    ``dst``: the layer's pool as bytes ``[2, blocks, x]``; ``blocks`` (int32): each slot's pool block."""
    chunks = triton.cdiv(x, CHUNK)
    grid = (offsets.shape[0] * 2 * chunks,)
    _copy_layer[grid](src, offsets, dst, blocks, x, kv_stride, CHUNK, chunks, num_warps=8)
