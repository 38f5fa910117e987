"""Issue 3's restart path without a GPU: restoring KV blocks from the disk tier against the I/O floor.

    sudo python bench/restore_disk.py --blocks 128 --out bench/out   # root: it drops the page cache

Writes ``--blocks`` blocks of Llama-3-8B's shape (64 tokens x 32 layers x K/V x 8 heads x 128 dims, bf16:
8 MiB each) through `engine.kv_tiers.DiskTier`, once with SHA-256 checksums (the format before) and once with
xxh3-128 (now), then, with the page cache dropped before each run:
- the I/O floor: every file read once, in one thread (bench/engine_gpu_pool.py's `disk_read_gbps`);
- "read all, then copy": every block read and verified in parallel, then copied into a KV pool tensor
  (the scheduler's restore before);
- "copy as read": each block copied as soon as it is read, while later reads run (`DiskTier.iter_many`).
On a GPU box the copy is host -> device; here it is host -> host, the same shape of work.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gpu_base import drop_page_cache  # noqa: E402
from engine import kv_tiers  # noqa: E402
from engine.kv_tiers import DiskTier  # noqa: E402

SHAPE = (32, 2, 64, 8, 128)  # layers, K/V, block tokens, KV heads, head dim


def timed(fn) -> float:
    drop_page_cache()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--blocks", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dir", default=None, help="disk tier directory (default: a temporary one)")
    p.add_argument("--out", default="bench/out")
    a = p.parse_args()
    root = Path(a.dir or tempfile.mkdtemp(prefix="kb-restore-"))
    keys = [f"{i:064x}" for i in range(a.blocks)]
    block = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)).bfloat16()
    tiers = {}
    for algo in ("sha256", "xxh3_128"):
        kv_tiers.CHECKSUM = algo  # the files' format; reading follows each file's header
        tier = tiers[algo] = DiskTier(root / algo, max_bytes=1 << 40, fingerprint="bench")
        for k in keys:
            tier.put(k, block)
        tier.flush()
    files = sorted((root / "sha256").glob("*/*.kvb"))
    nbytes = sum(f.stat().st_size for f in files)
    pool = torch.empty((SHAPE[0], SHAPE[1], a.blocks, *SHAPE[2:]), dtype=torch.bfloat16)

    def floor() -> None:
        for f in files:
            f.read_bytes()

    def read_all_then_copy(tier: DiskTier) -> None:
        got = list(tier.iter_many(keys))
        for i, t in enumerate(got):
            pool[:, :, i].copy_(t)

    def copy_as_read(tier: DiskTier) -> None:
        for i, t in enumerate(tier.iter_many(keys)):
            pool[:, :, i].copy_(t)

    runs = {"io_floor": floor}
    for algo, tier in tiers.items():
        runs[f"{algo}, read all then copy"] = lambda t=tier: read_all_then_copy(t)
        runs[f"{algo}, copy as read"] = lambda t=tier: copy_as_read(t)
    res: dict = {"blocks": a.blocks, "bytes": nbytes, "cpus": os.cpu_count()}
    res["cache_dropped"] = drop_page_cache()
    for name, fn in runs.items():
        pool.zero_()
        res[name + "_s"] = sorted(timed(fn) for _ in range(a.repeats))[a.repeats // 2]
        assert name == "io_floor" or torch.equal(pool[:, :, -1], block)
    floor_s = res["io_floor_s"]
    print(f"{a.blocks} blocks, {nbytes / 1e9:.2f} GB, {os.cpu_count()} CPUs, dropped: {res['cache_dropped']}")
    print("| path | seconds (median) | GB/s | x I/O floor |")
    print("|---|---|---|---|")
    for name in runs:
        sec = res[name + "_s"]
        print(f"| {name} | {sec:.3f} | {nbytes / sec / 1e9:.2f} | {sec / floor_s:.2f} |")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "restore_disk.json").write_text(json.dumps(res, indent=1))
    for tier in tiers.values():
        tier.close()
    if a.dir is None:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
