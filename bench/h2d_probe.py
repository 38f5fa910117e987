"""Host -> GPU rates on this machine: the copy engine (one large ``copy_`` from pinned memory) against the
restore copy kernel (`engine.kv_restore_triton`, SMs reading mapped pinned memory) at several program
counts, on an int8 Llama-3-8B block's layout (issue 3: which of the two a CPU-tier restore should use).

Why: the layer-wise restore's gain varied between H100 machines (bench/RESULTS.md, 2026-12-06): a turn
restoring 9.9K tokens took 17.7 ms on one and 27.0 on another, against 26-27 ms copied first on both.

The copy engines fed a layer's pieces in one `cuMemcpyBatchAsync` (CUDA 12.8+, bound here through ctypes:
CUDA 13.0 dropped its ``failIdx`` argument, so the entry point is asked for by version, 13000 then 12080)
were measured too, as a way around the kernel's slower hosts: on an H100 (2026-12-06, third session) 480
pieces of 64 KB a call moved 39.5 GB/s against the kernel's 49 and took 753 us of host time a call (32 a
step), so the engine does not use them.

Run:  python3 bench/h2d_probe.py --out $OUT
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import kv_restore_triton  # noqa: E402

X = 64 * 8 * 128 + 8 * 4  # an int8 block's K (or V) rows and scales, one layer
SRC_ORDER_STREAM = 1  # CU_MEMCPY_SRC_ACCESS_ORDER_STREAM: the source is read in stream order
FLAG_PREFER_OVERLAP = 1  # CU_MEMCPY_FLAG_PREFER_OVERLAP_WITH_COMPUTE


class _Location(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("id", ctypes.c_int)]


class _Attributes(ctypes.Structure):  # CUmemcpyAttributes_v1
    _fields_ = [
        ("src_access_order", ctypes.c_int),
        ("src_loc_hint", _Location),
        ("dst_loc_hint", _Location),
        ("flags", ctypes.c_uint),
    ]


_PTRS = ctypes.POINTER(ctypes.c_uint64)
_SIZES = ctypes.POINTER(ctypes.c_size_t)
_V13 = ctypes.CFUNCTYPE(
    ctypes.c_int, _PTRS, _PTRS, _SIZES, ctypes.c_size_t, ctypes.POINTER(_Attributes), _SIZES,
    ctypes.c_size_t, ctypes.c_void_p,
)  # fmt: skip
_V12 = ctypes.CFUNCTYPE(
    ctypes.c_int, _PTRS, _PTRS, _SIZES, ctypes.c_size_t, ctypes.POINTER(_Attributes), _SIZES,
    ctypes.c_size_t, _SIZES, ctypes.c_void_p,
)  # fmt: skip


@lru_cache(maxsize=1)
def _entry() -> tuple[int, object] | None:
    """(API version, function) of the driver's batched copy, or None (no driver, an older one)."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
        get = lib.cuGetProcAddress_v2
    except (OSError, AttributeError):
        return None
    get.argtypes = [
        ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_uint64,
        ctypes.POINTER(ctypes.c_int),
    ]  # fmt: skip
    get.restype = ctypes.c_int
    for version, proto in ((13000, _V13), (12080, _V12)):
        fn, status = ctypes.c_void_p(), ctypes.c_int()
        rc = get(b"cuMemcpyBatchAsync", ctypes.byref(fn), version, 0, ctypes.byref(status))
        if rc == 0 and status.value == 0 and fn.value:
            return version, proto(fn.value)
    return None


def copy_batch(dsts: list[int], srcs: list[int], sizes: list[int], stream: torch.cuda.Stream) -> None:
    """Queue ``len(dsts)`` copies (raw pointers, bytes) on ``stream``, sources read in stream order; in
    no particular order among themselves. Raises RuntimeError with the driver's code on failure."""
    entry = _entry()
    if entry is None:
        raise RuntimeError("cuMemcpyBatchAsync is not available (CUDA driver 12.8 or newer)")
    if not stream.cuda_stream:
        raise RuntimeError("cuMemcpyBatchAsync refuses the legacy default stream: pass a torch.cuda.Stream()")
    version, fn = entry
    n = len(dsts)
    d, s = (ctypes.c_uint64 * n)(*dsts), (ctypes.c_uint64 * n)(*srcs)
    z = (ctypes.c_size_t * n)(*sizes)
    attr = _Attributes(SRC_ORDER_STREAM, _Location(0, 0), _Location(0, 0), FLAG_PREFER_OVERLAP)
    first = (ctypes.c_size_t * 1)(0)
    handle = ctypes.c_void_p(stream.cuda_stream)
    if version >= 13000:
        rc = fn(d, s, z, n, ctypes.byref(attr), first, 1, handle)
    else:
        fail = (ctypes.c_size_t * 1)(0)
        rc = fn(d, s, z, n, ctypes.byref(attr), first, 1, fail, handle)
    if rc != 0:
        raise RuntimeError(f"cuMemcpyBatchAsync failed: CUresult {rc}")


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
    """The same K and V pieces by the copy engines, ``per_call`` pieces a `copy_batch` call (a
    layer of a 240-block restore, a 15.4K-token history, is 480): GPU rate, and host time a call."""
    if _entry() is None:
        return {"batch": "cuMemcpyBatchAsync unavailable"}
    x = host.shape[-1]
    srcs = [host[i, kv].data_ptr() for i in range(n) for kv in (0, 1)]
    dsts = [dev[kv, i].data_ptr() for i in range(n) for kv in (0, 1)]
    stream = torch.cuda.current_stream()  # a side stream: the driver refuses the legacy default one
    host_s: list[float] = []

    def run():
        for a in range(0, len(srcs), per_call):
            t0 = time.perf_counter()
            part = slice(a, a + per_call)
            copy_batch(dsts[part], srcs[part], [x] * len(srcs[part]), stream)
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
    p.add_argument("--batch-pieces", type=int, default=480, help="pieces a cuMemcpyBatchAsync call (a layer)")
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
    with torch.cuda.stream(torch.cuda.Stream()):
        res.update(batched(host, dev, n, a.batch_pieces))
    print(json.dumps({k: v for k, v in res.items() if k != "topo"}))
    print(res["topo"])
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "h2d_probe.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
