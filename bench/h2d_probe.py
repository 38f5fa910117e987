"""Host -> GPU rates on this machine: the copy engine (one large ``copy_`` from pinned memory) against the
restore copy kernel (`engine.kv_restore_triton`, SMs reading mapped pinned memory) at several program
counts, on an int8 Llama-3-8B block's layout (issue 3: which of the two a CPU-tier restore should use).

Why: the layer-wise restore's gain varied between H100 machines (bench/RESULTS.md, 2026-12-06): a turn
restoring 9.9K tokens took 17.7 ms on one and 27.0 on another, against 26-27 ms copied first on both.

Run:  python3 bench/h2d_probe.py --out $OUT
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import kv_restore_triton  # noqa: E402

X = 64 * 8 * 128 + 8 * 4  # an int8 block's K (or V) rows and scales, one layer


def timed(fn, reps: int = 5) -> float:
    """Median milliseconds of ``fn`` on the current stream."""
    fn()
    out = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b))
    return sorted(out)[len(out) // 2]


def batched(host: torch.Tensor, dev: torch.Tensor, n: int, per_call: int) -> dict:
    """The same K and V pieces by the copy engines, ``per_call`` pieces a `engine.dma_batch` call (a
    layer of a 154-block restore is 308): GPU rate, and host time a call."""
    from engine import dma_batch

    if not dma_batch.available():
        return {"batch": "cuMemcpyBatchAsync unavailable"}
    x = host.shape[-1]
    srcs = [host[i, kv].data_ptr() for i in range(n) for kv in (0, 1)]
    dsts = [dev[kv, i].data_ptr() for i in range(n) for kv in (0, 1)]
    stream = torch.cuda.current_stream()
    host_s: list[float] = []

    def run():
        for a in range(0, len(srcs), per_call):
            t0 = time.perf_counter()
            part = slice(a, a + per_call)
            dma_batch.copy_batch(dsts[part], srcs[part], [x] * len(srcs[part]), stream)
            host_s.append(time.perf_counter() - t0)

    dev.zero_()
    run()
    torch.cuda.synchronize()
    ok = torch.equal(dev[0].cpu(), host[:, 0]) and torch.equal(dev[1].cpu(), host[:, 1])
    host_s.clear()
    ms = timed(run)
    return {
        "batch_ok": ok,
        "batch_gbps": round(2 * n * x / ms / 1e6, 1),
        "batch_host_us_a_call": round(1e6 * sorted(host_s)[len(host_s) // 2], 1),
        "batch_pieces_a_call": per_call,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="bench/out")
    p.add_argument("--mb", type=int, default=512)
    p.add_argument("--programs", default="32,64,132,264,0")
    p.add_argument("--chunks", default="16384", help="bytes an item copies (kv_restore_triton.CHUNK), each")
    p.add_argument("--batch-pieces", type=int, default=308, help="pieces a cuMemcpyBatchAsync call (a layer)")
    a = p.parse_args()
    n = a.mb * 2**20 // (2 * X)
    host = torch.randint(-127, 128, (n, 2, X), dtype=torch.int8).pin_memory()
    dev = torch.empty(2, n, X, dtype=torch.int8, device="cuda")
    flat = torch.empty(n * 2 * X, dtype=torch.int8, device="cuda")
    nbytes = n * 2 * X
    res: dict = {"mb": round(nbytes / 2**20), "slots": n}
    try:
        res["affinity"] = sorted(os.sched_getaffinity(0))[:4] + ["..."]
        topo = subprocess.run(["nvidia-smi", "topo", "-m"], capture_output=True, text=True)
        res["topo"] = topo.stdout[-600:]
    except Exception as e:  # noqa: BLE001
        res["topo"] = str(e)
    res["dma_gbps"] = round(nbytes / timed(lambda: flat.copy_(host.view(-1), non_blocking=True)) / 1e6, 1)
    # the "before the step" path copies block by block, all layers of a block a piece
    per_block = dev.view(2, n, X)

    def slot_by_slot():
        for i in range(n):
            per_block[:, i].copy_(host[i], non_blocking=True)

    res["dma_per_slot_gbps"] = round(nbytes / timed(slot_by_slot, 3) / 1e6, 1)
    offs = torch.arange(n, dtype=torch.int64, device="cuda") * (2 * X)
    blocks = torch.arange(n, dtype=torch.int32, device="cuda")
    kv8 = dev.view(torch.uint8)
    src = host.view(torch.uint8).view(-1)
    chunks, programs = ([int(x) for x in v.split(",")] for v in (a.chunks, a.programs))
    grid = [(c, g) for c in chunks for g in programs]
    for chunk, progs in grid:
        kv_restore_triton.PROGRAMS, kv_restore_triton.CHUNK = progs, chunk

        def run():
            kv_restore_triton.copy_layer(src, offs, kv8, blocks, X, kv8.stride(0))

        run()
        assert torch.equal(dev[0].cpu(), host[:, 0]) and torch.equal(dev[1].cpu(), host[:, 1])
        name = f"kernel_{progs}" + ("" if chunk == 16384 else f"_chunk{chunk}")
        res[name + "_gbps"] = round(nbytes / timed(run) / 1e6, 1)
        dev.zero_()
    res.update(batched(host, dev, n, a.batch_pieces))
    print(json.dumps({k: v for k, v in res.items() if k != "topo"}))
    print(res["topo"])
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "h2d_probe.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
