"""Layer-wise restores from the CPU tier (`engine.kv_restore`): the copy kernel (interpreted on CPU; on a
GPU compiled, reading pinned slots) puts each host slot's layer into the right pool block and nothing else;
on CPU a layer is there only once it was waited for; the tier keeps held slots; and an engine that restores
this way gives recompute's tokens."""

from __future__ import annotations

import random

import pytest
import torch

from engine.config import EngineConfig
from engine.kv_restore import LayerwiseRestore, copy_layer
from engine.kv_tiers import CpuTier
from engine.llm_engine import Engine
from engine.sampling import SamplingParams
from tests.engine.test_prefill_graphs import DEVICE

L, BS, KVH, HD = 3, 4, 2, 8


class _Tier:
    """What the restore asks of the CPU tier."""

    def __init__(self) -> None:
        self.held: list[str] = []
        self.released: list[str] = []

    def hold(self, key: str) -> None:
        self.held.append(key)

    def release(self, keys: list[str]) -> None:
        self.released.extend(keys)


def _pool(int8: bool, blocks: int = 10) -> torch.Tensor:
    if int8:  # the runner's int8 layout: each block's rows then its fp32 scales, one int8 row
        return torch.zeros(L, 2, blocks, BS * KVH * HD + 4 * KVH, dtype=torch.int8, device=DEVICE)
    return torch.zeros(L, 2, blocks, BS, KVH, HD, dtype=torch.bfloat16, device=DEVICE)


def _slots(pool: torch.Tensor, n: int, seed: int) -> list[torch.Tensor]:
    """Host slots as the tier has them: ``[L, 2, ...]`` each, from two separate slabs (offsets of either
    sign from the first slot)."""
    g = torch.Generator().manual_seed(seed)
    shape = (n, *pool[:, :, 0].shape)
    if pool.dtype == torch.int8:
        slabs = [torch.randint(-127, 128, shape, generator=g, dtype=torch.int8) for _ in range(2)]
    else:
        slabs = [torch.randn(shape, generator=g).to(pool.dtype) for _ in range(2)]
    if pool.is_cuda:  # the tier's slots are pinned on a GPU box: the kernel reads them over the bus
        slabs = [x.pin_memory() for x in slabs]
    return [slabs[i % 2][i // 2] for i in range(n)][::-1]


@pytest.mark.parametrize("int8", [False, True])
@pytest.mark.parametrize("kernel", [True, False])
def test_each_layer_lands_in_its_block_only_once_waited_for(int8, kernel):
    if kernel and copy_layer is None:
        pytest.fail("triton is a dependency of the engine's CUDA path and of this test")
    pool = _pool(int8)
    slots = _slots(pool, 4, seed=int(int8))
    targets = [7, 2, 9, 4]
    tier = _Tier()
    r = LayerwiseRestore(pool, tier, use_kernel=kernel)
    for b, h in zip(targets, slots, strict=True):
        r.add(b, h, f"k{b}")
    assert r.pending() and tier.held == ["k7", "k2", "k9", "k4"]
    r.start()
    assert not r.pending()
    if not pool.is_cuda:  # nothing copied before a layer asks
        assert pool.abs().sum() == 0
    r.wait_layer(1)  # layers 0 and 1
    for b, h in zip(targets, slots, strict=True):
        assert torch.equal(pool[:2, :, b].cpu(), h[:2])
        if not pool.is_cuda:
            assert pool[2, :, b].abs().sum() == 0
    r.finish()
    for b, h in zip(targets, slots, strict=True):
        assert torch.equal(pool[:, :, b].cpu(), h)
    others = [b for b in range(pool.shape[2]) if b not in targets]
    assert pool[:, :, others].abs().sum() == 0
    assert tier.released == tier.held and not r.items
    assert (r.steps, r.copied_blocks) == (1, 4)


@pytest.mark.parametrize("int8", [False, True])
def test_the_graph_copy_reads_how_many_slots_from_the_device(int8, monkeypatch):
    """A prefill graph's copy (`LayerwiseRestore.graph_copies`) has fixed arguments: offsets from a fixed
    origin, a layer offset, and the slot count in a device tensor, which a replay without a restore finds
    at 0. Layer 1 of the first ``count`` slots lands; nothing else is written."""
    from tests.engine.test_attention import _interpreter_scalar_fix

    if copy_layer is None:
        pytest.fail("triton is a dependency of the engine's CUDA path and of this test")
    if DEVICE.type != "cuda":
        _interpreter_scalar_fix(monkeypatch)  # the interpreter's loop over a loaded count
    pool = _pool(int8)
    slots = _slots(pool, 4, seed=7)
    kv8 = pool.view(torch.uint8).view(L, 2, pool.shape[2], -1)
    x = kv8.shape[-1]
    origin = torch.empty(16, dtype=torch.uint8)
    origin = origin.pin_memory() if pool.is_cuda else origin
    offs = torch.tensor([h.data_ptr() - origin.data_ptr() for h in slots], device=DEVICE)
    blocks = torch.tensor([7, 2, 9, 4], dtype=torch.int32, device=DEVICE)
    count = torch.zeros(1, dtype=torch.int32, device=DEVICE)
    copy_layer(origin, offs, kv8[1], blocks, x, kv8.stride(1), 2 * x, count)
    assert pool.abs().sum() == 0
    count.fill_(2)
    copy_layer(origin, offs, kv8[1], blocks, x, kv8.stride(1), 2 * x, count)
    for b, h in zip([7, 2], slots, strict=False):
        assert torch.equal(pool[1, :, b].cpu(), h[1])
    pool[1, :, [7, 2]] = 0
    assert pool.abs().sum() == 0  # not layer 0 or 2, not blocks 9 and 4


@pytest.mark.parametrize("int8", [False, True])
def test_a_graph_holding_the_copies_restores_what_is_staged_and_nothing_else(int8):
    """What a prefill graph holds (`LayerwiseRestore.graph_copies`, the layer waits, `graph_join`),
    captured once on a GPU (on CPU run as the graphs' buffers are, eagerly): a replay with nothing staged
    copies nothing; one with slots staged lands them, and each layer, read after its wait, sees them;
    after `finish` the next replay copies nothing again."""
    pool = _pool(int8)
    slots = _slots(pool, 4, seed=11)
    targets = [7, 2, 9, 4]
    idx = torch.tensor(targets, device=DEVICE)
    tier = _Tier()
    r = LayerwiseRestore(pool, tier)
    r.in_graphs = True
    seen = torch.zeros(
        L, dtype=torch.float32, device=DEVICE
    )  # each layer's restored blocks, read after the wait

    def body():
        wait = r.graph_copies()
        for layer in range(L):
            wait(layer)
            seen[layer] = pool[layer][:, idx].float().sum()
        r.graph_join()

    run = body
    if DEVICE.type == "cuda":
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            body()  # warm-up: compiles the copy kernel
        torch.cuda.current_stream().wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            body()
        run = g.replay
    run()
    assert pool.abs().sum() == 0 and seen.abs().sum() == 0
    for b, h in zip(targets, slots, strict=True):
        r.add(b, h, f"k{b}")
    r.stage()
    run()
    r.replayed = True
    r.finish()
    want = [sum(h[layer].float().sum() for h in slots) for layer in range(L)]
    torch.testing.assert_close(seen.cpu(), torch.stack(want))
    for b, h in zip(targets, slots, strict=True):
        assert torch.equal(pool[:, :, b].cpu(), h)
    others = [b for b in range(pool.shape[2]) if b not in targets]
    assert pool[:, :, others].abs().sum() == 0
    assert tier.released == tier.held and r.graph_steps == 1
    pool.zero_()
    run()
    assert pool.abs().sum() == 0  # finished: the count went back to 0


def test_cpu_tier_keeps_held_slots_until_released():
    blk = torch.randn(L, 2, BS, KVH, HD)
    n = blk.numel() * blk.element_size()
    c = CpuTier(n * 2)
    assert c.put("a", blk) and c.put("b", blk * 2)
    slot_a = c.get("a")
    c.hold("a")
    c.hold("b")
    assert not c.put("c", blk * 3)  # every slot is being read: refused, nothing overwritten
    assert "a" in c and "b" in c and torch.equal(slot_a, blk)
    c.release(["b"])
    assert c.put("c", blk * 3) and "b" not in c and "a" in c  # b was the oldest unheld
    assert c.drop("a") and "a" not in c
    assert c.put("d", blk * 4) is False or torch.equal(slot_a, blk)  # a's slot is not reused while held
    assert torch.equal(slot_a, blk)
    c.release(["a"])
    assert c.pending  # a host-side write into a released slot synchronises first
    assert c.put("e", blk * 5)


def _engine(model_dir, layerwise: bool | None) -> Engine:
    return Engine.from_config(
        EngineConfig(
            model=str(model_dir),
            device="cpu",
            dtype="float32",
            num_kv_blocks=24,
            cpu_cache_gb=0.1,
            restore_layerwise=layerwise,
        )
    )


@pytest.mark.parametrize("mode", ["layerwise", "graph", "whole", "broken"])
def test_an_engine_restoring_from_the_cpu_tier_gives_recompute_tokens(model_dir, mode):
    """A tiny GPU pool pushes a first conversation to the CPU tier; its next turn is restored layer by
    layer (CPU: each layer copied when its attention asks), or inside its prefill graph (CPU: the graph's
    buffers, run eagerly, with the graph's copies and waits), or, below `min_bytes`, whole before the
    step, or (after the kernel failed once: ``broken``) by the scheduler as before, and writes the tokens
    of a recompute every time."""
    layerwise = mode in ("layerwise", "graph")
    sp = SamplingParams(max_tokens=6, ignore_eos=True)
    rng = random.Random(3)
    first = [rng.randrange(100, 40000) for _ in range(200)]
    others = [[rng.randrange(100, 40000) for _ in range(200)] for _ in range(2)]
    with _engine(model_dir, True) as eng:
        eng.runner.restore.min_bytes = 0 if layerwise else 1 << 40
        eng.runner.restore.broken = mode == "broken"
        eng.runner.restore.in_graphs = eng.runner.prefill.force = mode == "graph"
        a = eng.complete(first, sp)
        for p in others:  # evict the first conversation's blocks from the 24-block pool
            eng.complete(p, sp)
        turn2 = first + a.token_ids + [rng.randrange(100, 40000) for _ in range(20)]
        r = eng.complete(turn2, sp)
        assert r.usage["cached_from"]["cpu"] >= 160
        stats = eng.stats()["layerwise_restores"]
        assert (stats["steps"] >= 1 and stats["blocks"] >= 10) is (mode != "broken")
        assert (stats["layerwise_steps"] >= 1) is (mode == "layerwise")
        assert (stats["graph_steps"] >= 1) is (mode == "graph")
        assert not eng.cpu_tier.held  # released after the step
        eng.scheduler.prefix_cache = False
        assert r.token_ids == eng.complete(turn2, sp).token_ids


def test_the_default_on_cpu_copies_before_the_step(model_dir):
    with _engine(model_dir, None) as eng:
        assert eng.runner.restore is None and eng.scheduler.restorer is None


def test_cuda_engines_restore_layer_by_layer_unless_told_otherwise():
    """The default chosen from the H100 A/B (bench/RESULTS.md): on for CUDA, off for CPU, config wins."""
    from types import SimpleNamespace

    pick = Engine._restores_layerwise
    assert pick(SimpleNamespace(device=torch.device("cuda")), None) is True
    assert pick(SimpleNamespace(device=torch.device("cpu")), None) is False
    assert pick(SimpleNamespace(device=torch.device("cuda")), False) is False
    assert pick(SimpleNamespace(device=torch.device("cpu")), True) is True
