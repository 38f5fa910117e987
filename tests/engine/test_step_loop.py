"""The engine's step loop (`engine.step_loop`) on the packaged SmolLM2 (CPU): the idle write-back to the
disk tier lets requests in between its batches, waits for a slow disk, and survives a failing one."""

from __future__ import annotations

import logging
import random
import threading
import time

from engine.sampling import SamplingParams
from engine.step_loop import WRITE_BACK_BATCH, WRITE_BACK_QUEUE
from tests.engine.test_llm_engine import _small_engine


def test_a_request_during_idle_write_back_waits_for_one_batch_not_the_backlog(model_dir, tmp_path):
    """The idle write-back lets go of the engine's lock between small batches, so a request that arrives
    while a long backlog is being written is served at once; the backlog still reaches the disk after it."""
    sp = SamplingParams(max_tokens=1, ignore_eos=True)
    with _small_engine(model_dir, disk_dir=str(tmp_path / "kv"), write_back_idle_s=0.05) as eng:
        started = threading.Event()
        done: list[str] = []
        put = eng.disk_tier.put

        def slow_put(key, data):  # a slow disk: each block takes 30 ms to hand over
            started.set()
            time.sleep(0.03)
            put(key, data)
            done.append(key)

        eng.disk_tier.put = slow_put
        for i in range(5):
            eng.complete([random.Random(i).randrange(100, 40000) for _ in range(200)], sp)
        backlog = len(eng.tiers)
        assert backlog >= 50
        assert started.wait(5)
        r = eng.complete([random.Random(99).randrange(100, 40000) for _ in range(40)], sp)
        assert r.usage["completion_tokens"] == 1
        assert len(done) < backlog // 2  # served before most of the backlog was written
        eng.flush()
        assert len(eng.tiers) == 0 and len(done) >= backlog


def test_idle_write_back_waits_for_a_slow_disk_instead_of_queueing_the_pool(model_dir, tmp_path):
    """Host copies queued for the disk writer stay a few blocks deep while a slow disk catches up; all
    blocks still reach it."""
    sp = SamplingParams(max_tokens=1, ignore_eos=True)
    with _small_engine(model_dir, disk_dir=str(tmp_path / "kv"), write_back_idle_s=0.05) as eng:
        depth: list[int] = []
        write, put = eng.disk_tier._write, eng.disk_tier.put

        def slow_write(key, data):  # a slow disk: 20 ms a block
            time.sleep(0.02)
            write(key, data)

        def watched_put(key, data):
            put(key, data)
            depth.append(eng.disk_tier.pending())

        eng.disk_tier._write, eng.disk_tier.put = slow_write, watched_put
        for i in range(5):
            eng.complete([random.Random(i).randrange(100, 40000) for _ in range(200)], sp)
        backlog = len(eng.tiers)
        assert backlog >= 50
        eng.flush()
        assert len(eng.tiers) == 0 and len(depth) == backlog
        assert max(depth) <= WRITE_BACK_QUEUE + WRITE_BACK_BATCH
        assert len(list((tmp_path / "kv").glob("*/*.kvb"))) >= backlog


def test_a_failing_write_back_leaves_the_engine_serving(model_dir, tmp_path, caplog):
    sp = SamplingParams(max_tokens=2, ignore_eos=True)
    prompt = [random.Random(3).randrange(100, 40000) for _ in range(100)]
    with _small_engine(model_dir, disk_dir=str(tmp_path / "kv"), write_back_idle_s=0.01) as eng:
        ref = eng.complete(prompt, sp).token_ids
        write = eng.tiers.write
        failed = threading.Event()

        def broken(limit):
            failed.set()
            eng.tiers.write = write  # fails once
            raise OSError("disk gone")

        with caplog.at_level(logging.ERROR, logger="engine.step_loop"):
            eng.tiers.write = broken
            eng.complete([random.Random(4).randrange(100, 40000) for _ in range(100)], sp)
            assert failed.wait(5)
            seq = eng.submit(prompt, sp)  # the loop still runs (a dead one would leave this queue empty)
            ids = []
            while (ev := seq.events.get(timeout=30)).type not in ("finish", "error"):
                ids.extend(ev.token_ids)
            assert ev.type == "finish" and ids + ev.token_ids == ref
        assert "idle write-back failed" in caplog.text
