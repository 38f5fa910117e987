from __future__ import annotations

import logging
from dataclasses import asdict

import torch

from engine.kv_tiers import CostModel, CpuTier, DiskTier


def _blk(seed=0):
    torch.manual_seed(seed)
    return torch.randn(2, 2, 4, 1, 8).to(torch.bfloat16)


def test_disk_roundtrip_and_new_instance_finds_blocks(tmp_path):
    d = DiskTier(tmp_path, 1 << 20, "fp")
    d.put("ab" * 32, _blk())
    d.close()
    d2 = DiskTier(tmp_path, 1 << 20, "fp")
    got = d2.get("ab" * 32)
    assert got is not None and torch.equal(got, _blk()) and got.dtype == torch.bfloat16
    d2.close()


def test_corrupt_truncated_and_foreign_files_are_skipped(tmp_path, caplog):
    d = DiskTier(tmp_path, 1 << 20, "fp")
    keys = [f"{i:02d}" * 32 for i in range(3)]
    for i, k in enumerate(keys):
        d.put(k, _blk(i))
    d.close()
    raw = d.path(keys[0]).read_bytes()
    d.path(keys[0]).write_bytes(raw[:-5] + bytes([raw[-5] ^ 0xFF]) + raw[-4:])  # flip a byte
    raw1 = d.path(keys[1]).read_bytes()
    d.path(keys[1]).write_bytes(raw1[: len(raw1) // 2])  # truncate
    other = DiskTier(tmp_path, 1 << 20, "another-model")
    with caplog.at_level(logging.WARNING):
        assert other.get(keys[2]) is None  # another model's file is never used
        d2 = DiskTier(tmp_path, 1 << 20, "fp")
        assert d2.get(keys[0]) is None and d2.get(keys[1]) is None
    assert "checksum" in caplog.text and "truncated" in caplog.text and "fingerprint" in caplog.text
    assert not d2.path(keys[0]).exists() and keys[1] not in d2
    assert d2.path(keys[2]).exists() and torch.equal(d2.get(keys[2]), _blk(2))
    other.close()
    d2.close()


def test_earlier_sha256_files_still_verify_and_unknown_checksums_are_kept_not_used(
    tmp_path, monkeypatch, caplog
):
    """New files carry xxh3-128; files written with SHA-256 (earlier versions, or a box without xxhash)
    still verify, corrupt ones still fail; a checksum this process cannot compute means recompute, and
    the file stays for a process that can."""
    from engine import kv_tiers

    assert kv_tiers.CHECKSUM == "xxh3_128"
    monkeypatch.setattr(kv_tiers, "CHECKSUM", "sha256")
    old = DiskTier(tmp_path, 1 << 20, "fp")
    old.put("aa" * 32, _blk(1))
    old.put("bb" * 32, _blk(2))
    old.close()
    assert b'"checksum": "sha256"' in old.path("aa" * 32).read_bytes()
    raw = old.path("bb" * 32).read_bytes()
    old.path("bb" * 32).write_bytes(raw[:-3] + bytes([raw[-3] ^ 1]) + raw[-2:])
    monkeypatch.setattr(kv_tiers, "CHECKSUM", "xxh3_128")
    d = DiskTier(tmp_path, 1 << 20, "fp")
    assert torch.equal(d.get("aa" * 32), _blk(1))
    with caplog.at_level(logging.WARNING):
        assert d.get("bb" * 32) is None
    d.put("cc" * 32, _blk(3))
    d.flush()
    assert b'"checksum": "xxh3_128"' in d.path("cc" * 32).read_bytes()
    monkeypatch.setattr(kv_tiers, "CHECKSUM", "sha256")  # as on a box without xxhash
    d2 = DiskTier(tmp_path, 1 << 20, "fp")
    with caplog.at_level(logging.WARNING):
        assert d2.get("cc" * 32) is None
    assert "unavailable" in caplog.text and d2.path("cc" * 32).exists()
    d.close()
    d2.close()


def test_disk_size_limit_evicts_oldest(tmp_path):
    one = DiskTier(tmp_path / "probe", 1 << 20, "fp")
    one.put("aa" * 32, _blk())
    one.flush()
    size = one.bytes
    one.close()
    d = DiskTier(tmp_path / "lim", int(size * 2.5), "fp")
    for i in range(4):
        d.put(f"{i:02d}" * 32, _blk(i))
    d.flush()
    assert list(d.index) == ["02" * 32, "03" * 32] and d.bytes <= size * 2.5
    d.close()


def test_cpu_tier_lru_limit():
    b = _blk()
    nbytes = b.numel() * b.element_size()
    c = CpuTier(nbytes * 2)
    c.put("a", b)
    c.put("b", b)
    assert c.get("a") is not None  # touch a -> b is now oldest
    c.put("c", b)
    assert "b" not in c and "a" in c and "c" in c


def test_cost_model_prefers_recompute_on_slow_restore():
    cm = CostModel(disk_gbps=0.001, cpu_gbps=10.0, prefill_tok_s=10000)
    assert cm.restore_ms(0, 10**7) > cm.recompute_ms(1000)
    assert cm.restore_ms(10**7, 0) < cm.recompute_ms(1000)
    cm.observe_prefill(1000, 1.0)
    assert cm.prefill_tok_s < 10000


def test_cost_model_prices_a_prefix_at_the_rate_of_long_prefills():
    """Short host-bound chunks (a chat's turns) do not make recomputing a long prefix look dearer: the
    rate is the best recent one; older observations leave the window."""
    cm = CostModel()
    cm.observe_prefill(2048, 0.080)  # 25.6K tok/s: a long chunk, near the marginal rate
    for _ in range(20):
        cm.observe_prefill(256, 0.030)  # 8.5K tok/s: mostly per-step cost
    assert cm.prefill_tok_s == 2048 / 0.080
    assert 600 < cm.recompute_ms(16384) < 700
    assert "recent_rates" not in asdict(cm)  # the engine's stats report the fields as JSON
    for _ in range(64):
        cm.observe_prefill(256, 0.030)
    assert cm.prefill_tok_s == 256 / 0.030


def test_cpu_tier_on_evict_sees_the_data_before_reuse():
    """The engine writes a dirty block to disk when the CPU tier drops it: the hook must get the key and
    the block's bytes before its buffer is reused; ``put`` reports whether the tier holds the key."""
    seen = []
    blocks = [_blk(i) for i in range(3)]
    nbytes = blocks[0].numel() * blocks[0].element_size()
    c = CpuTier(nbytes * 2, on_evict=lambda k, t: seen.append((k, t.clone())))
    assert c.put("a", blocks[0], non_blocking=True) and c.put("b", blocks[1])
    assert c.put("a", blocks[0])  # already held
    assert c.put("c", blocks[2]) and [k for k, _ in seen] == ["a"]
    assert torch.equal(seen[0][1], blocks[0])
    assert not CpuTier(nbytes // 2).put("x", blocks[0])  # larger than the whole tier


def test_cpu_tier_reserve_allocates_every_slot_up_front():
    b = _blk()
    nbytes = b.numel() * b.element_size()
    c = CpuTier(nbytes * 40 + 7)
    c.reserve(b)
    assert len(c.free) == 40 and c.slab_bytes == nbytes * 40
    for i in range(45):
        assert c.put(f"k{i}", b)
    assert len(c.items) == 40 and c.slab_bytes == nbytes * 40  # no slab allocated after the reserve
