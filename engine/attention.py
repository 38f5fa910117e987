"""Paged-KV attention: cache writes (bf16/fp16/fp32 or int8 with per-(block, head) scales) and readers.

Two readers share one contract (`AttnBatch`):
- the gather path (CPU, CI, fp32 on CUDA, and the reference the GPU kernel is checked against): gather a
  sequence's blocks into a contiguous tensor, dequantise if int8, run SDPA;
- the Triton path (`engine.paged_attn_triton`, CUDA bf16/fp16): reads K/V blocks in place through the block
  table, no prefix copy; one kernel for prefill-with-prefix and decode, with split-KV for short query tiles
  over long prefixes (`split_reference` is its math in torch, tested on CPU).
A prefill with no cached prefix (one sequence, ``q_len == ctx``) needs no cache read at all: its K/V are the
chunk's own contiguous tensors, so `attend_dense` runs SDPA's causal flash/cuDNN kernel on them, exactly the
call `transformers` makes, and the cache is only written.

int8 KV: each block keeps one fp32 scale per KV head (``absmax / 127``). Tokens arrive a few at a time
(decode appends one), so when a write raises a block's absmax the block's existing int8 values are
re-quantised to the new scale. The final scale of a full block is the max over its tokens, independent of
how it was written. A block whose first slot is written in this step is fresh: its stale scale is ignored.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right


@dataclass
class AttnBatch:
    """Where each new token's K/V goes and what each sequence attends to.

    ``seqs`` holds ``(q_start, q_len, ctx_len, block_table)`` per sequence (ctx_len counts cached + new
    tokens). For decode-only steps ``block_tables``/``context_lens`` are padded tensors for one batched
    read instead of a Python loop. ``k_scale``/``v_scale`` are per-layer ``[num_blocks, kv_heads]`` fp32
    tensors when the cache is int8. ``meta`` holds the Triton path's packed tensors (`pack_meta`).
    """

    slot_mapping: torch.Tensor
    seqs: list[tuple[int, int, int, torch.Tensor]]
    k_cache: list[torch.Tensor]  # per layer [num_blocks, block_size, kv_heads, head_dim]
    v_cache: list[torch.Tensor]
    block_tables: torch.Tensor | None = None
    context_lens: torch.Tensor | None = None
    k_scale: list[torch.Tensor] | None = None
    v_scale: list[torch.Tensor] | None = None
    meta: dict | None = None  # {"tables","q_starts","q_lens","ctx_lens","max_q"} for the Triton kernel
    decode: bool = False
    kv_plan: torch.Tensor | None = None  # int8 KV on CUDA: `engine.kv_int8_store.store_plan`, [blocks, 3]
    int8_store: bool = False  # the runner's choice: `engine.kv_int8_store` can write these int8 caches
    # a layer-wise restore in flight (`engine.kv_restore`): layer l calls it before touching its cache
    layer_ready: Callable[[int], None] | None = None


def quantize_block(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [.., block, kvh, hd]`` -> int8 values and ``[.., kvh]`` scales (absmax / 127 per head)."""
    s = x.float().abs().amax(dim=(-3, -1)) / 127.0
    q = torch.round(x.float() / s.clamp_min(1e-12)[..., None, :, None]).clamp(-127, 127).to(torch.int8)
    return q, s


def dequantize(q: torch.Tensor, s: torch.Tensor, dtype) -> torch.Tensor:
    return (q.float() * s[..., None, :, None]).to(dtype)


def write_kv(cache, scale, slots: torch.Tensor, x: torch.Tensor, unique_blocks: bool) -> None:
    """Store new K or V rows ``x [T, kvh, hd]`` at ``slots`` (block * block_size + offset).

    ``unique_blocks``: each token lands in a different block (decode), so no ``torch.unique`` (which
    syncs and cannot be captured in a CUDA graph) is needed.
    """
    if scale is None:
        cache.view(-1, *cache.shape[2:])[slots] = x.to(cache.dtype)
        return
    bs = cache.shape[1]
    blk, off = slots // bs, slots % bs
    amax = x.float().abs().amax(-1) / 127.0  # [T, kvh]
    if unique_blocks:
        ub, inv = blk, torch.arange(blk.shape[0], device=blk.device)
        cand, fresh = amax, off == 0
    else:
        ub, inv = torch.unique(blk, return_inverse=True)
        cand = torch.zeros(ub.shape[0], amax.shape[1], device=x.device)
        cand.scatter_reduce_(0, inv[:, None].expand_as(amax), amax, "amax")
        first = torch.full_like(ub, bs).scatter_reduce_(0, inv, off, "amin")
        fresh = first == 0
    old = torch.where(fresh[:, None], torch.zeros_like(cand), scale[ub])
    new = torch.maximum(old, cand)
    ratio = torch.where(new > 0, old / new.clamp_min(1e-12), torch.zeros_like(new))
    cache[ub] = torch.round(cache[ub].float() * ratio[:, None, :, None]).to(torch.int8)
    scale[ub] = new
    q = torch.round(x.float() / new[inv].clamp_min(1e-12)[..., None]).clamp(-127, 127).to(torch.int8)
    cache[blk, off] = q


def _gather(cache, scale, table, dtype) -> torch.Tensor:
    if scale is None:
        return cache[table].to(dtype)
    return dequantize(cache[table], scale[table], dtype)


def attend_gather(q, kc, vc, ks, vs, ab: AttnBatch, nh: int, kvh: int) -> torch.Tensor:
    """The simple, obviously-correct reader: gather each sequence's blocks and run SDPA."""
    if ab.block_tables is not None:
        return _decode_gather(q, kc, vc, ks, vs, ab, nh, kvh)
    return torch.cat([_one(q, kc, vc, ks, vs, nh, kvh, *s) for s in ab.seqs], 0)


def _one(q, kc, vc, ks, vs, nh, kvh, q_start: int, q_len: int, ctx: int, table: torch.Tensor):
    k = _gather(kc, ks, table, q.dtype).flatten(0, 1)[:ctx].transpose(0, 1).unsqueeze(0)
    v = _gather(vc, vs, table, q.dtype).flatten(0, 1)[:ctx].transpose(0, 1).unsqueeze(0)
    qs = q[q_start : q_start + q_len].transpose(0, 1).unsqueeze(0)
    gqa = nh != kvh
    if gqa and q.is_cuda:  # expand heads so SDPA can pick flash/mem-efficient kernels with a mask
        k = k.repeat_interleave(nh // kvh, dim=1)
        v = v.repeat_interleave(nh // kvh, dim=1)
        gqa = False
    mask, causal = None, False
    if q_len == ctx:
        causal = q_len > 1
    elif q_len > 1 and q.is_cuda:
        mask = causal_lower_right(q_len, ctx)  # keeps flash/mem-efficient kernels (a bool mask would not)
    elif q_len > 1:
        qpos = torch.arange(ctx - q_len, ctx, device=q.device)[:, None]
        mask = torch.arange(ctx, device=q.device)[None, :] <= qpos
    o = F.scaled_dot_product_attention(qs, k, v, attn_mask=mask, is_causal=causal, enable_gqa=gqa)
    return o[0].transpose(0, 1)


def _decode_gather(q, kc, vc, ks, vs, ab: AttnBatch, nh: int, kvh: int):
    b, hd = q.shape[0], q.shape[-1]
    k = _gather(kc, ks, ab.block_tables, q.dtype).flatten(1, 2).transpose(1, 2)
    v = _gather(vc, vs, ab.block_tables, q.dtype).flatten(1, 2).transpose(1, 2)
    s = k.shape[2]
    mask = (torch.arange(s, device=q.device)[None, :] < ab.context_lens[:, None]).view(b, 1, 1, s)
    o = F.scaled_dot_product_attention(q.view(b, nh, 1, hd), k, v, attn_mask=mask, enable_gqa=nh != kvh)
    return o.view(b, nh, hd)


def attend_dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention of one fresh sequence over its own K/V (``[T, heads, hd]`` each): SDPA as in HF."""
    o = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None],
        k.transpose(0, 1)[None],
        v.transpose(0, 1)[None],
        is_causal=q.shape[0] > 1,
        enable_gqa=q.shape[1] != k.shape[1],
    )
    return o[0].transpose(0, 1)


def attend_prefix_flash(q, kc, vc, table: torch.Tensor, ctx: int) -> torch.Tensor:
    """One sequence with a cached prefix: gather its blocks (one copy, KV heads only) and run SDPA flash
    with the bottom-right causal mask. An alternative to the paged kernel, measured in bench/engine_gpu.py."""
    nh, kvh = q.shape[1], kc.shape[2]
    k = kc[table].flatten(0, 1)[:ctx].transpose(0, 1)[None]
    v = vc[table].flatten(0, 1)[:ctx].transpose(0, 1)[None]
    mask = causal_lower_right(q.shape[0], ctx) if q.shape[0] > 1 else None
    o = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k, v, attn_mask=mask, enable_gqa=nh != kvh)
    return o[0].transpose(0, 1)


def split_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, splits: int, block_n: int, group: int,
                    block_m: int) -> torch.Tensor:  # fmt: skip
    """The Triton kernel's split-KV math in torch (fp32), for tests: rows are (token, group head) pairs
    tiled by ``block_m``; each tile's visible KV tiles are cut into ``splits`` contiguous slices, each
    slice keeps an unnormalised (acc, max, sum) in the exp2 domain, and the slices are merged with weights
    ``2^(m_s - max_s m_s)``. ``q [q_len, nh, hd]`` are the last ``q_len`` positions of
    ``k, v [ctx, kvh, hd]``.
    """
    q_len, nh, hd = q.shape
    ctx, kvh = k.shape[0], k.shape[1]
    scale = 1.4426950408889634 / math.sqrt(hd)
    out = torch.empty(q_len, nh, hd)
    for h in range(kvh):
        rows = torch.arange(q_len * group)
        tok, head = rows // group, h * group + rows % group
        for m0 in range(0, q_len * group, block_m):
            r_tok, r_head = tok[m0 : m0 + block_m], head[m0 : m0 + block_m]
            qpos = ctx - q_len + r_tok
            n_tiles = -(-(int(qpos[-1]) + 1) // block_n)
            per = -(-n_tiles // splits)
            qs = q[r_tok, r_head].float()
            parts = []
            for s in range(splits):
                t0, t1 = s * per, min(s * per + per, n_tiles)
                m = torch.full((len(r_tok),), float("-inf"))
                lsum = torch.zeros(len(r_tok))
                acc = torch.zeros(len(r_tok), hd)
                for t in range(t0, t1):
                    n = torch.arange(t * block_n, min(t * block_n + block_n, ctx))
                    sc = qs @ k[n, h].float().T * scale
                    sc = sc.masked_fill(n[None, :] > qpos[:, None], float("-inf"))
                    m_new = torch.maximum(m, sc.amax(1))
                    m_new = torch.where(m_new == float("-inf"), torch.zeros_like(m_new), m_new)
                    p = torch.exp2(sc - m_new[:, None])
                    alpha = torch.exp2(m - m_new)
                    lsum = lsum * alpha + p.sum(1)
                    acc = acc * alpha[:, None] + p @ v[n, h].float()
                    m = m_new
                parts.append((acc, m, lsum))
            ms = torch.stack([p[1] for p in parts])
            w = torch.exp2(ms - ms.amax(0))
            num = sum(w[i, :, None] * parts[i][0] for i in range(splits))
            den = sum(w[i] * parts[i][2] for i in range(splits))
            out[r_tok, r_head] = num / den[:, None]
    return out


def pack_meta(seqs, device, width: int | None = None, pad_block: int = 0) -> dict:
    """Tensors the Triton kernel reads: padded block tables and per-sequence query/context extents."""
    width = width or max(len(t) for *_, t in seqs)
    tables = [list(t) + [pad_block] * (width - len(t)) for *_, t in seqs]

    def lt(x):
        return torch.tensor(x, dtype=torch.int32).to(device, non_blocking=True)

    return {
        "tables": lt(tables),
        "q_starts": lt([s[0] for s in seqs]),
        "q_lens": lt([s[1] for s in seqs]),
        "ctx_lens": lt([s[2] for s in seqs]),
        "max_q": max(s[1] for s in seqs),
        "max_ctx": max(s[2] for s in seqs),
    }
