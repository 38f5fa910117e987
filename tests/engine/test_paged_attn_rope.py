"""RoPE and the K/V store inside the decode attention kernel (`paged_attn_triton`, ``ROPE``) against the two
launches it replaces: `fused_ops.rope_qk` storing K/V, then `paged_attention` on the rotated q.

Under ``TRITON_INTERPRET=1`` (CI) on fp32 tensors; on a GPU the same test runs compiled on bf16."""

from __future__ import annotations

import contextlib
import os

import pytest
import torch

import engine.paged_attn_triton as pat
from engine.attention import pack_meta
from engine.fused_ops import rope_qk
from tests.engine.test_attention import _fill
from tests.engine.test_prefill_graphs import _seq, _tiny_runner
from tests.engine.test_split_kv import _interp

NH, KVH, HD, BS = 4, 2, 32, 16


def _rope_tables(pos: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / (10000.0 ** (torch.arange(0, HD, 2).float() / HD))
    ang = pos.float()[:, None] * inv[None, :]
    emb = torch.cat([ang, ang], -1)
    return emb.cos().to(dtype)[:, None, :], emb.sin().to(dtype)[:, None, :]


def _decode_case(ctxs: list[int], device: str, dtype: torch.dtype, seed: int):
    """Caches holding each sequence's context with the newest row (position ctx - 1) stale, and the qkv
    projection's q, k, v (strided views of one tensor, as the model splits it) of each sequence's token."""
    _, kc, vc, _, _, seqs = _fill([(1, c) for c in ctxs], bs=BS, kvh=KVH, nh=NH, hd=HD, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    slots = torch.tensor([t[(c - 1) // BS] * BS + (c - 1) % BS for _, _, c, t in seqs])
    kc.view(-1, KVH, HD)[slots] = 99.0  # stale rows: the kernel must take the projection's, and store them
    vc.view(-1, KVH, HD)[slots] = -99.0
    qkv = torch.randn(len(ctxs), (NH + 2 * KVH) * HD, generator=g).to(dtype)
    q, k, v = qkv.to(device).split([NH * HD, KVH * HD, KVH * HD], dim=-1)
    cos, sin = _rope_tables(torch.tensor([c - 1 for c in ctxs]), dtype)
    dseqs = [(i, 1, c, t) for i, (_, _, c, t) in enumerate(seqs)]
    t = len(ctxs)
    views = (q.view(t, NH, HD), k.view(t, KVH, HD), v.view(t, KVH, HD))
    caches = (kc.to(device, dtype), vc.to(device, dtype))
    meta = pack_meta(dseqs, torch.device(device))
    return views, caches, (cos.to(device), sin.to(device)), slots.to(device), meta


@pytest.mark.parametrize(
    ("ctxs", "override", "pre"),
    [
        ([40], {}, True),  # one sequence: a tile a split, the new key in the last
        ([48], {}, False),  # the context fills its last tile: the new key in an unmasked tile
        ([1, 33, 64], {"splits": 3}, True),  # a batch; one context of the new key alone; empty splits
        ([17, 90], {"splits": 2, "block_n": 32}, True),  # tiles of two cache blocks
    ],
)
def test_rope_in_the_decode_kernel_gives_the_same_bits_as_rope_then_attention(
    ctxs, override, pre, monkeypatch
):
    device = _interp(monkeypatch)
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    monkeypatch.setattr(pat, "OVERRIDE", override)
    monkeypatch.setattr(pat, "PRE_WAIT", pre)
    monkeypatch.setattr(pat, "ROPE_IN_KERNEL", True)
    (q, k, v), (kc, vc), (cos, sin), slots, meta = _decode_case(ctxs, device, dtype, seed=len(ctxs))
    kc2, vc2 = kc.clone(), vc.clone()

    qo, _ = rope_qk(q, k, cos, sin, (kc, vc, slots, v))
    want = pat.paged_attention(qo, kc, vc, None, None, meta, decode=True)

    assert pat.fuses_rope(q, kc2, None, meta, True)
    got = pat.paged_attention(q, kc2, vc2, None, None, meta, True, (k, v, cos, sin, slots))

    assert torch.equal(kc2, kc) and torch.equal(vc2, vc)  # the new rows stored, nothing else touched
    assert torch.equal(got, want)
    assert (kc.view(-1, KVH, HD)[slots] != 99.0).all()  # the stale rows were replaced


def test_rope_stays_out_of_prefill_int8_and_when_switched_off(monkeypatch):
    """Only decode rows over a cache of q's dtype fuse RoPE; a prefill chunk, int8 KV or the switch off keep
    the RoPE launch, and a wrong call is refused rather than computed."""
    device = _interp(monkeypatch)
    monkeypatch.setattr(pat, "ROPE_IN_KERNEL", True)
    (q, k, v), (kc, _), (cos, sin), slots, meta = _decode_case([20], device, torch.float32, seed=7)
    assert pat.fuses_rope(q, kc, None, meta, True)
    assert not pat.fuses_rope(q, kc, None, {**meta, "max_q": 3}, False)
    assert not pat.fuses_rope(q, kc.to(torch.int8), torch.ones(kc.shape[0], KVH), meta, True)
    assert not pat.fuses_rope(q, kc.half(), None, meta, True)
    monkeypatch.setattr(pat, "ROPE_IN_KERNEL", False)
    assert not pat.fuses_rope(q, kc, None, meta, True)
    with pytest.raises(ValueError, match="RoPE in the attention kernel"):
        pat.paged_attention(q, kc, kc.clone(), None, None, meta, True, (k, v, cos, sin, slots))


@pytest.fixture
def engine_still(request):
    """The session engine's lock under the interpreter (CI): forcing the fused path is global, and the
    engine's loop thread, feeding an earlier test's answer, would run interpreted kernels beside a test's,
    whose grids the interpreter keeps in one global (seen: "x >= grid_dim[0]"). Compiled on a GPU the tests
    run without conftest (`gpu_pending.sh`), so without that engine, and need no lock."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return request.getfixturevalue("engine")._cv
    return contextlib.nullcontext()


def prefill_then_decode(r, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A 35-token prefill, then 4 decode steps, through runner ``r`` (the fused path forced on): the decode
    steps' logits and the KV pool (the scratch block, the last, holds whatever padded prefill rows wrote
    there: no token's KV)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, 512, (40,), generator=g).tolist()
    blocks = [5, 2, 9, 11]
    r.run([(_seq(tokens[:35], 0, blocks), 35)])
    logits = [r.run([(_seq(tokens[: n + 1], n, blocks), 1)]) for n in range(35, 39)]
    if r.device.type == "cuda":
        torch.cuda.synchronize()
    return torch.cat(logits), r.kv[:, :, : r.scratch].clone()


def test_the_model_decodes_the_same_with_rope_in_the_kernel(engine_still, monkeypatch):
    """The runner's decode steps through the model (the fused path forced on, the Triton reader) give the
    same logits and leave the same KV cache with RoPE in the attention kernel as with its own launch. The
    session's engine is held still meanwhile (`engine_still`)."""
    with engine_still:
        _model_decodes_the_same(monkeypatch)


def _model_decodes_the_same(monkeypatch) -> None:
    _interp(monkeypatch)
    monkeypatch.setattr("engine.model.FUSED", True)
    runs = []
    real = pat.paged_attention
    for fused in (False, True):
        monkeypatch.setattr(pat, "ROPE_IN_KERNEL", fused)
        r = _tiny_runner(True, graph_tokens=None)
        calls: list[int] = []

        def counted(*a, calls=calls, **kw):
            calls.append(len(a))
            return real(*a, **kw)

        monkeypatch.setattr(pat, "paged_attention", counted)
        runs.append((*prefill_then_decode(r, seed=2), calls))  # the prefill: RoPE's own launch either way
    (want, kv_want, calls_off), (got, kv_got, calls_on) = runs
    assert calls_on[-1] == 8 and calls_off[-1] == 7  # the decode steps passed `rope` (or did not)
    assert torch.equal(got, want)
    assert torch.equal(kv_got, kv_want)
