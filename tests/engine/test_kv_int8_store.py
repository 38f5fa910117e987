"""The one-launch int8 KV store (Triton, interpreted on CPU) against `attention.write_kv`: identical bytes and
scales for prefill chunks that start mid-block, fresh blocks with stale scales, strided K/V and decode steps;
plan padding that touches nothing; and the host-side plan."""

from __future__ import annotations

import pytest
import torch

from engine.attention import write_kv
from engine.kv_int8_store import plan_entries, store_kv_int8, store_plan, supported
from tests.engine.test_prefill_graphs import CAPTURES, DEVICE, _seq, _tiny_runner

BS, KVH, HD = 16, 2, 32


def _caches(nblk: int, seed: int, packed: bool = True):
    """int8 caches already holding quantized rows, and stale scales on every block. ``packed``: the model
    runner's layout, each block's fp32 scales stored after its rows in one int8 row (strided views)."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(-127, 128, (2, nblk, BS, KVH, HD), generator=g, dtype=torch.int8)
    scales = torch.rand(2, nblk, KVH, generator=g) * 0.05
    if not packed:
        return [x.to(DEVICE) for x in (rows[0], rows[1], scales[0], scales[1])]
    payload = BS * KVH * HD
    kv = torch.cat([rows.flatten(2), scales.view(torch.int8)], -1).to(DEVICE)
    caches = [kv[i, :, :payload].unflatten(-1, (BS, KVH, HD)) for i in (0, 1)]
    return caches + [kv[i, :, payload:].view(torch.float32) for i in (0, 1)]


def _clone(caches):
    return [c.clone() for c in caches]


def _qkv(t: int, seed: int):
    """K and V as the model makes them: strided bf16 views of one qkv projection."""
    g = torch.Generator().manual_seed(seed)
    qkv = (torch.randn(t, (4 + 2 * KVH) * HD, generator=g) * torch.linspace(0.2, 4, t)[:, None]).bfloat16()
    _, k, v = qkv.split([4 * HD, KVH * HD, KVH * HD], dim=-1)
    return k.view(t, KVH, HD).to(DEVICE), v.view(t, KVH, HD).to(DEVICE)


def _reference(caches, slots, k, v, decode: bool):
    kc, vc, ks, vs = caches
    write_kv(kc, ks, slots, k, decode)
    write_kv(vc, vs, slots, v, decode)


def _assert_same(a, b):
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


@pytest.mark.parametrize("seed,packed", [(0, True), (1, True), (2, False)])
def test_prefill_chunks_match_write_kv(seed, packed):
    """Three sequences in one step: one continues mid-block across four blocks, one starts fresh blocks
    (their stale scales must be ignored), one adds a single token to a half-full block."""
    nblk = 24
    caches = _caches(nblk, seed, packed)
    tables = [[3, 7, 11, 2, 9], [5, 6, 20], [15, 1]]
    chunks = [(0, 5, 60, tables[0]), (60, 0, 40, tables[1]), (100, 24, 1, tables[2])]
    slots = torch.tensor(
        [t[p // BS] * BS + p % BS for _, start, n, t in chunks for p in range(start, start + n)],
        device=DEVICE,
    )
    k, v = _qkv(101, seed)
    ref = _clone(caches)
    _reference(ref, slots, k, v, decode=False)
    plan = torch.tensor(store_plan(chunks, BS), device=DEVICE).view(-1, 3)
    store_kv_int8(k, v, caches, plan, slots)
    _assert_same(caches, ref)
    assert not torch.equal(caches[2][5], _caches(nblk, seed, packed)[2][5])  # a fresh block's new scale


def test_decode_step_matches_write_kv():
    """One token per sequence, each in its own block, at offsets 0 (a fresh block) to 15; no plan."""
    caches = _caches(12, 3)
    slots = torch.tensor([4 * BS + 0, 9 * BS + 7, 1 * BS + 15, 10 * BS + 3], device=DEVICE)
    k, v = _qkv(4, 3)
    ref = _clone(caches)
    _reference(ref, slots, k, v, decode=True)
    store_kv_int8(k, v, caches, None, slots)
    _assert_same(caches, ref)


def test_padding_entries_touch_nothing():
    """A graph pads its plan with zero-count entries; they must not rescale or write any block."""
    caches = _caches(6, 4)
    before = _clone(caches)
    k, v = _qkv(3, 4)
    plan = torch.tensor([[0, 0, 2 * BS + 5], [0, 0, 0]], device=DEVICE)
    store_kv_int8(k, v, caches, plan, torch.zeros(3, dtype=torch.long, device=DEVICE))
    _assert_same(caches, before)


def test_store_plan_splits_a_chunk_at_block_edges():
    plan = store_plan([(7, 14, 20, [4, 8, 2])], BS)
    assert plan == [7, 2, 4 * BS + 14, 9, 16, 8 * BS, 25, 2, 2 * BS]
    assert store_plan([(0, 0, 0, [1])], BS) == []


def test_plan_entries_bounds_every_start_offset():
    for n in (1, 15, 16, 17, 64, 100):
        worst = max(len(store_plan([(0, s, n, list(range(20)))], BS)) // 3 for s in range(BS))
        assert plan_entries(n, BS) == worst


def test_supported_needs_dense_int8_blocks_with_power_of_two_dims():
    assert supported(torch.zeros(2, BS, KVH, HD, dtype=torch.int8))
    assert supported(_caches(2, 0)[0])
    assert not supported(torch.zeros(2, BS, KVH, HD, dtype=torch.bfloat16))
    assert not supported(torch.zeros(2, BS, KVH, 48, dtype=torch.int8))
    assert not supported(torch.zeros(2, BS, 2 * KVH, HD, dtype=torch.int8)[:, :, ::2])


def test_runner_steps_through_the_kernel_match_the_torch_path(monkeypatch):
    """A tiny model's int8 engine steps with the CUDA path's kernels (interpreted) against the torch path:
    two sequences prefilled in one step (the plan's rows and offsets), two decode steps (no plan), then
    chunks that continue mid-block. Same logits, and the same KV bytes up to one int8 step where the fused
    RMSNorm rounds an ulp apart from torch's."""
    from tests.engine.test_attention import _interpreter_scalar_fix

    if not CAPTURES:
        _interpreter_scalar_fix(monkeypatch)
    g = torch.Generator().manual_seed(5)
    ta, tb = (
        torch.randint(1, 512, (60,), generator=g).tolist(),
        torch.randint(1, 512, (60,), generator=g).tolist(),
    )
    runs = []
    for fused in (False, True):
        monkeypatch.setattr("engine.model.FUSED", fused)
        r = _tiny_runner(CAPTURES, "int8")  # a GPU: the Triton reader and decode graphs, as served
        r.prefill.enabled = False
        a, b = _seq(ta, 0, [5, 2, 9, 30]), _seq(tb, 0, [7, 11, 3, 19])
        logits = []
        for na, nb in ((37, 20), (1, 1), (1, 1), (12, 25)):
            logits.append(r.run([(a, na), (b, nb)]))
            a.num_computed += na
            b.num_computed += nb
        runs.append((torch.cat(logits), r.kv.clone()))
    (ref, kv_ref), (out, kv) = runs
    tol = 5e-2 if CAPTURES else 1e-3  # a bf16 model on a GPU (and its decode graphs), fp32 on CPU
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
    payload = 16 * 2 * 16  # a block's int8 rows; its fp32 scales follow them
    used = [5, 2, 9, 30, 7, 11, 3]
    step = (kv[:, :, used, :payload].int() - kv_ref[:, :, used, :payload].int()).abs()
    assert step.max() <= (2 if CAPTURES else 1) and (step == 0).float().mean() > (0.9 if CAPTURES else 0.99)
    scales = [x[..., payload:].contiguous().view(torch.float32) for x in (kv, kv_ref)]
    torch.testing.assert_close(*scales, rtol=2e-2 if CAPTURES else 1e-5, atol=0)
    assert (scales[0][:, :, used] > 0).all()  # every used block holds written rows


@pytest.mark.skipif(CAPTURES, reason="the CPU interpreter's run of the CUDA path; a GPU runs it compiled")
def test_smollm2_int8_chat_through_the_cuda_path_kernels(model_dir, monkeypatch):
    """The packaged SmolLM2 with int8 KV, its layers through the CUDA path's kernels (fused norms, RoPE,
    SiLU and this store; interpreted): the torch path's greedy tokens for two chat turns, and turn 2
    reuses turn 1's blocks."""
    from engine.config import EngineConfig
    from engine.llm_engine import Engine
    from engine.sampling import SamplingParams
    from tests.engine.test_attention import _interpreter_scalar_fix

    _interpreter_scalar_fix(monkeypatch)
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    runs = []
    for fused in (False, True):
        monkeypatch.setattr("engine.model.FUSED", fused)
        eng = Engine.from_config(
            EngineConfig(model=str(model_dir), device="cpu", num_kv_blocks=64, kv_dtype="int8")
        )
        try:
            assert eng.runner.int8_store
            r1 = eng.complete(msgs, SamplingParams(max_tokens=6))
            turn2 = msgs + [
                {"role": "assistant", "content": r1.text},
                {"role": "user", "content": "And Spain?"},
            ]
            r2 = eng.complete(turn2, SamplingParams(max_tokens=6))
            assert r2.usage["cached_tokens"] >= 16
            runs.append((r1.token_ids, r2.token_ids))
        finally:
            eng.close()
    assert runs[0] == runs[1]
