"""The copy kernel of `engine.kv_restore`: one layer of N pinned host slots into N pool blocks."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

CHUNK = 16384  # bytes an item copies (8 warps: four 128-bit loads a thread, all in flight at once)
# programs a layer's copy runs on CUDA, each looping over items: the copy waits on the bus, not on SMs, and
# the model's kernels beside it want the SMs; 0: one program an item (the interpreter always does that).
# H100, bench/restore_probe.py: 64 -> 39.8 ms a turn (37.4-42.4), 32 -> 37.6 (35.6-51.1), 0 -> 47.0 (no
# better than copying before the step, 48.3-49.6)
PROGRAMS = 64


@triton.jit
def _copy_item(src, src_off, dst, dst_blk, X, kv_stride, it, CHUNK: tl.constexpr, CHUNKS: tl.constexpr):
    """Item (block i, K or V, chunk c): bytes ``[c*CHUNK, (c+1)*CHUNK)`` of the layer's K or V slice of
    host slot i (at byte offset ``src_off[i]`` from ``src``, the layer already added) into pool block
    ``dst_blk[i]`` of this layer (``dst``)."""
    i = it // (2 * CHUNKS)
    r = it % (2 * CHUNKS)
    kv = r // CHUNKS
    o = (r % CHUNKS) * CHUNK + tl.arange(0, CHUNK)
    so = tl.multiple_of(tl.load(src_off + i), 16)
    b = tl.load(dst_blk + i).to(tl.int64)
    m = o < X
    x = tl.load(src + so + kv * X + o, mask=m)
    tl.store(dst + kv * kv_stride + b * X + o, x, mask=m)


@triton.jit
def _copy_layer(src, src_off, dst, dst_blk, X, kv_stride, n_items, CHUNK: tl.constexpr, CHUNKS: tl.constexpr,
                LOOP: tl.constexpr):  # fmt: skip
    """``LOOP``: programs stride over the items (a loop bound from an argument, which the interpreter
    cannot run); else program p copies item p."""
    if LOOP:
        for it in range(tl.program_id(0), n_items, tl.num_programs(0)):
            _copy_item(src, src_off, dst, dst_blk, X, kv_stride, it, CHUNK, CHUNKS)
    else:
        _copy_item(src, src_off, dst, dst_blk, X, kv_stride, tl.program_id(0), CHUNK, CHUNKS)


def copy_layer(src: torch.Tensor, offsets: torch.Tensor, dst: torch.Tensor, blocks: torch.Tensor, x: int,
               kv_stride: int) -> None:  # fmt: skip
    """``src``: bytes of slot 0's layer; ``offsets`` (int64): each slot's byte offset from slot 0;
    ``dst``: the layer's pool as bytes ``[2, blocks, x]``; ``blocks`` (int32): each slot's pool block."""
    chunks = triton.cdiv(x, CHUNK)
    n_items = blocks.shape[0] * 2 * chunks
    loop = PROGRAMS > 0 and dst.is_cuda and os.environ.get("TRITON_INTERPRET") != "1"
    grid = (min(n_items, PROGRAMS) if loop else n_items,)
    _copy_layer[grid](src, offsets, dst, blocks, x, kv_stride, n_items, CHUNK, chunks, loop, num_warps=8)
