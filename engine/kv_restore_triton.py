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
def _copy_item(src, src_off, lay, dst, dst_blk, X, kv_stride, it, CHUNK: tl.constexpr, CHUNKS: tl.constexpr):
    """Item (block i, K or V, chunk c): bytes ``[c*CHUNK, (c+1)*CHUNK)`` of the layer's K or V slice of
    host slot i (at byte offset ``src_off[i] + lay`` from ``src``; ``lay``: the layer's offset in a slot)
    into pool block ``dst_blk[i]`` of this layer (``dst``)."""
    i = it // (2 * CHUNKS)
    r = it % (2 * CHUNKS)
    kv = r // CHUNKS
    o = (r % CHUNKS) * CHUNK + tl.arange(0, CHUNK)
    so = tl.multiple_of(tl.load(src_off + i) + lay, 16)
    b = tl.load(dst_blk + i).to(tl.int64)
    m = o < X
    x = tl.load(src + so + kv * X + o, mask=m)
    tl.store(dst + kv * kv_stride + b * X + o, x, mask=m)


@triton.jit
def _copy_layer(src, src_off, lay, dst, dst_blk, X, kv_stride, n_items, count, CHUNK: tl.constexpr,
                CHUNKS: tl.constexpr, LOOP: tl.constexpr, DEV_N: tl.constexpr):  # fmt: skip
    """``LOOP``: programs stride over the items (a loop bound from an argument, which the interpreter
    cannot run); else program p copies item p. ``DEV_N``: the slot count is read from ``count`` on the
    device (a CUDA graph's copy, whose items change between replays)."""
    if DEV_N:
        n_items = tl.load(count) * (2 * CHUNKS)
    if LOOP:
        for it in range(tl.program_id(0), n_items, tl.num_programs(0)):
            _copy_item(src, src_off, lay, dst, dst_blk, X, kv_stride, it, CHUNK, CHUNKS)
    else:
        _copy_item(src, src_off, lay, dst, dst_blk, X, kv_stride, tl.program_id(0), CHUNK, CHUNKS)


def copy_layer(src: torch.Tensor, offsets: torch.Tensor, dst: torch.Tensor, blocks: torch.Tensor, x: int,
               kv_stride: int, lay: int = 0, count: torch.Tensor | None = None) -> None:  # fmt: skip
    """``src``: a uint8 tensor (pinned, on CUDA), the origin of ``offsets`` (int64): each slot's byte offset
    from it;
    ``lay``: the layer's byte offset inside a slot; ``dst``: the layer's pool as bytes ``[2, blocks, x]``;
    ``blocks`` (int32): each slot's pool block. ``count`` (int32 ``[1]`` on the device): how many of
    ``offsets``/``blocks`` to copy, read by the kernel (CUDA: `PROGRAMS` programs loop over them); else
    all of them."""
    chunks = triton.cdiv(x, CHUNK)
    interp = not dst.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"
    dev_n = count is not None
    n_items = blocks.shape[0] * 2 * chunks
    loop = dev_n or (PROGRAMS > 0 and not interp)
    grid = (max(PROGRAMS, 1) if dev_n else min(n_items, PROGRAMS) if loop else n_items,)
    cnt = count if dev_n else blocks
    _copy_layer[grid](src, offsets, lay, dst, blocks, x, kv_stride, n_items, cnt, CHUNK, chunks, loop, dev_n,
                      num_warps=8)  # fmt: skip
