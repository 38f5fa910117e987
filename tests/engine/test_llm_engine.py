"""Engine integration on the packaged SmolLM2 (CPU): reuse, tiers, concurrency, cancellation."""

from __future__ import annotations

import logging
import random
import shutil
import threading
from pathlib import Path

import pytest

from engine.block_manager import chain_hashes
from engine.config import EngineConfig, default_block_size
from engine.llm_engine import Engine, QueueFull
from engine.sampling import SamplingParams
from tests.engine.conftest import hf_greedy

CHAT = [
    {"role": "system", "content": "You are a concise customer-service assistant."},
    {"role": "user", "content": "My parcel 4471 is late. What can I do?"},
]


def _small_engine(model_dir, **kw) -> Engine:
    kw.setdefault("num_kv_blocks", 256)
    kw.setdefault("dtype", "float32")  # the reference numerics; bf16 has its own tests (test_devices.py)
    return Engine.from_config(EngineConfig(model=str(model_dir), device="cpu", **kw))


def test_turn2_reuses_turn1_prompt_and_answer(engine, hf_model):
    sp = SamplingParams(max_tokens=24)
    r1 = engine.complete(CHAT, sp)
    turn1_len = r1.usage["prompt_tokens"] + r1.usage["completion_tokens"]
    msgs = CHAT + [
        {"role": "assistant", "content": r1.text},
        {"role": "user", "content": "And if it never arrives?"},
    ]
    r2 = engine.complete(msgs, sp)
    bs = engine.config.block_size
    assert r2.usage["cached_tokens"] >= (turn1_len - 1) // bs * bs > r1.usage["prompt_tokens"] - bs
    assert r2.usage["cached_from"]["gpu"] == r2.usage["cached_tokens"]
    assert r2.token_ids == hf_greedy(hf_model, engine.encode_prompt(msgs), 24)  # same as recompute


def _turn_with_partial_tail(engine, question: str) -> tuple[list[int], list[int]]:
    """A first turn whose computed tokens (prompt + answer - its last) end inside a block."""
    bs = engine.config.block_size
    ids1 = engine.encode_prompt(CHAT + [{"role": "user", "content": question}])
    n1 = next(n for n in range(9, 9 + bs) if (len(ids1) + n - 1) % bs not in (0, 1))
    return ids1, engine.complete(ids1, SamplingParams(max_tokens=n1, ignore_eos=True)).token_ids


def test_block_size_left_unset_follows_the_device(engine):
    """Unset (0), a KV block holds 16 tokens on a CPU and 64 on a GPU, where every GPU figure was
    measured and the reader's prefill tile is one block; the pool, scheduler and runner use the resolved
    size."""
    assert EngineConfig(model="m").block_size == 0
    assert engine.config.block_size == 16 and engine.bm.block_size == 16 and engine.runner.bs == 16
    assert default_block_size("cuda") == 64 and default_block_size("cpu") == 16


def test_turn2_reuses_turn1_partial_last_block_too(engine, hf_model, monkeypatch):
    """The previous answer's last, partial block is taken over (`BlockManager.keep_tail`): turn 2
    recomputes only the one token turn 1 never fed (its last; no idle feed here, `engine.answer_feed`),
    then its own, and gives recompute's tokens."""
    monkeypatch.setattr(engine.feed, "on", False)
    bs = engine.config.block_size
    ids1, answer = _turn_with_partial_tail(engine, "Can I change the delivery address?")
    ids2 = ids1 + answer + engine.tokenizer.encode("Thanks. And the return label?")
    r2 = engine.complete(ids2, SamplingParams(max_tokens=12))
    computed = len(ids1) + len(answer) - 1
    assert r2.usage["cached_tokens"] == computed > computed // bs * bs
    assert r2.usage["cached_from"]["gpu"] == r2.usage["cached_tokens"]
    assert r2.token_ids == hf_greedy(hf_model, ids2, 12)


def test_an_edited_turn_reuses_the_rows_it_shares_with_the_kept_tail(engine, hf_model):
    """A turn that keeps all but the last two answer tokens and then goes on differently (an edit) takes
    the tail's common rows only; the rows after them are recomputed, so its tokens are recompute's."""
    ids1, answer = _turn_with_partial_tail(engine, "Do you deliver on Sundays?")
    edited = ids1 + answer[:-2] + engine.tokenizer.encode(" Actually, what about Saturdays?")
    r = engine.complete(edited, SamplingParams(max_tokens=12))
    assert r.usage["cached_tokens"] == len(ids1) + len(answer) - 2
    assert r.token_ids == hf_greedy(hf_model, edited, 12)


def test_streaming_events_usage_and_stop_strings(engine):
    events = list(engine.generate(CHAT, SamplingParams(max_tokens=20)))
    assert [e.type for e in events][-1] == "finish" and events[-1].usage["completion_tokens"] >= 1
    full = "".join(e.text for e in events)
    assert full == engine.tokenizer.decode([t for e in events for t in e.token_ids])
    assert len(full) > 10
    stop = full[5:9]
    r = engine.complete(CHAT, SamplingParams(max_tokens=20, stop=[stop]))
    assert r.text == full[: full.find(stop)] and r.finish_reason == "stop"
    r = engine.complete(CHAT, SamplingParams(max_tokens=3, ignore_eos=True))
    assert r.finish_reason == "length" and r.usage["completion_tokens"] == 3


def test_cancel_frees_blocks_at_once(engine):
    gen = engine.generate(CHAT, SamplingParams(max_tokens=200, ignore_eos=True))
    assert next(gen).type == "token"
    assert engine.stats()["referenced_blocks"] > 0
    gen.close()
    assert engine.stats()["referenced_blocks"] == 0


def test_disk_tier_restart_corruption_and_other_model(model_dir, tmp_path, caplog):
    disk = tmp_path / "kv"
    sp = SamplingParams(max_tokens=16)
    with _small_engine(model_dir, disk_dir=str(disk)) as e1:
        ref = e1.complete(CHAT, sp)
        e1.flush()
    # a fresh engine (empty GPU pool) restores from disk: same tokens
    with _small_engine(model_dir, disk_dir=str(disk)) as e2:
        r = e2.complete(CHAT, sp)
        assert r.usage["cached_from"]["disk"] >= 32 and r.token_ids == ref.token_ids
        assert r.usage["reuse"]["choice"] == "restore"
    # the cost model can decide to recompute instead (absurdly slow disk)
    with _small_engine(model_dir, disk_dir=str(disk), disk_read_gbps=1e-9) as e3:
        r = e3.complete(CHAT, sp)
        assert r.usage["reuse"]["choice"] == "recompute" and r.usage["cached_tokens"] == 0
        assert r.token_ids == ref.token_ids
    # corrupt every file: correct output, a warning, nothing restored
    files = list(Path(disk).glob("*/*.kvb"))
    assert files
    for f in files:
        raw = bytearray(f.read_bytes())
        raw[-10] ^= 0x55
        f.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING), _small_engine(model_dir, disk_dir=str(disk)) as e4:
        r = e4.complete(CHAT, sp)
    assert r.token_ids == ref.token_ids and r.usage["cached_from"]["disk"] == 0
    assert "checksum mismatch" in caplog.text
    # another model (different config -> different fingerprint) never reuses this cache
    other = tmp_path / "other"
    shutil.copytree(model_dir, other, ignore=shutil.ignore_patterns("*.safetensors"))
    (other / "model.safetensors").symlink_to(Path(model_dir) / "model.safetensors")
    cfg = (other / "config.json").read_text().replace('"rms_norm_eps": ', '"rms_norm_eps": 2e-05, "x": ')
    (other / "config.json").write_text(cfg)
    with _small_engine(model_dir, disk_dir=str(disk)) as e5:
        e5.complete(CHAT, sp)  # repopulate with valid files of model A
        e5.flush()
    with _small_engine(other, disk_dir=str(disk)) as e6:
        r = e6.complete(CHAT, sp)
        assert r.usage["cached_tokens"] == 0 and e6.fingerprint != e5.fingerprint


def test_concurrent_equals_sequential_with_chunked_prefill(model_dir):
    prompts = [[{"role": "user", "content": f"Tell me fact number {i} about Spain."}] for i in range(6)]
    prompts.append([{"role": "user", "content": "Summarise: " + "the order was late. " * 40}])
    sp = SamplingParams(max_tokens=8)
    with _small_engine(model_dir) as seq_eng:
        sequential = [seq_eng.complete(p, sp).token_ids for p in prompts]
    with _small_engine(model_dir, max_batch_tokens=48) as eng:
        eng.runner.force_static = True  # decode via the CUDA-graph path's padded static buffers
        out: list = [None] * len(prompts)

        def work(i):
            out[i] = eng.complete(prompts[i], sp).token_ids

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert out == sequential
        assert eng.stats()["referenced_blocks"] == 0 and eng.runner.graphs


def test_1000_requests_with_cancellations_leak_no_blocks(model_dir):
    rng = random.Random(0)
    shared = list(range(100, 132))
    with _small_engine(model_dir, num_kv_blocks=None, kv_cache_gb=0.05, max_queue=2000) as eng:
        seqs = []
        for i in range(1000):
            ids = (shared if i % 2 else []) + [rng.randrange(200, 40000) for _ in range(rng.randint(1, 12))]
            sp = SamplingParams(max_tokens=rng.randint(1, 3), ignore_eos=True)
            seqs.append(eng.submit(ids, sp))
            if i % 3 == 0:
                eng.cancel(seqs[-1], wait=i % 2 == 0)
        reasons = []
        for s in seqs:
            while (ev := s.events.get()).type not in ("finish", "error"):
                pass
            reasons.append(ev.finish_reason)
        st = eng.stats()
        assert st["referenced_blocks"] == 0 and st["free_blocks"] == st["num_blocks"]
        assert reasons.count("cancelled") >= 300 and reasons.count("length") >= 300
        assert st["waiting"] == st["running"] == 0


def test_full_queue_raises_queue_full(model_dir):
    with _small_engine(model_dir, max_queue=4, max_num_seqs=1) as eng:
        sp = SamplingParams(max_tokens=50, ignore_eos=True)
        seqs = []
        with pytest.raises(QueueFull):
            for _ in range(50):
                seqs.append(eng.submit([1, 2, 3], sp))
        for s in seqs:
            eng.cancel(s)
        assert eng.stats()["referenced_blocks"] == 0


def test_evicted_dirty_blocks_reach_disk_through_the_cpu_tier(model_dir, tmp_path):
    """A tiny GPU pool evicts dirty blocks mid-request: they go to the CPU tier (one copy) and, still
    dirty, reach the disk when the CPU tier drops them or at close. A restart finds them all."""
    disk = tmp_path / "kv"
    sp = SamplingParams(max_tokens=4, ignore_eos=True)
    prompts = [[random.Random(i).randrange(100, 40000) for _ in range(200)] for i in range(6)]
    with _small_engine(model_dir, num_kv_blocks=24, cpu_cache_gb=0.004, disk_dir=str(disk)) as e1:
        refs = [e1.complete(p, sp).token_ids for p in prompts]
        assert e1.cpu_tier is not None and len(e1.cpu_tier.items) > 0
    with _small_engine(model_dir, disk_dir=str(disk)) as e2:
        for p, ref in zip(prompts, refs, strict=True):
            r = e2.complete(p, sp)
            assert r.usage["cached_from"]["disk"] >= 192 and r.token_ids == ref


def test_forget_drops_kv_from_every_tier_but_keeps_the_shared_head(model_dir, tmp_path):
    """A deleted conversation's KV is gone from the pool, the CPU tier and disk; its head stays shared."""
    disk = tmp_path / "kv"
    sp = SamplingParams(max_tokens=4, ignore_eos=True)
    prompt = [random.Random(7).randrange(100, 40000) for _ in range(200)]
    with _small_engine(model_dir, cpu_cache_gb=0.01, disk_dir=str(disk)) as e1:
        ref = e1.complete(prompt, sp).token_ids
        e1.flush()
        files_before = len(list(disk.glob("*/*.kvb")))
        assert files_before >= 3
        chain = chain_hashes(prompt, e1.config.block_size, e1.fingerprint)
        assert chain[-1] in e1.bm.tails  # the answer's partial block, kept on the GPU for a next turn
        dropped = e1.forget(prompt, keep_tokens=64)
        assert not set(chain) & set(e1.bm.tails)  # gone with the conversation
        assert dropped >= 2
        again = e1.complete(prompt, sp)
        # only the kept head (the full blocks within its 64 tokens) is reused
        assert again.usage["cached_tokens"] == 64 // e1.config.block_size * e1.config.block_size
        assert again.token_ids == ref
        e1.forget(prompt, keep_tokens=64)
    with _small_engine(model_dir, disk_dir=str(disk)) as e2:  # a restart does not bring them back
        r = e2.complete(prompt, sp)
        assert r.usage["cached_from"]["disk"] <= 64 and r.token_ids == ref
