"""Many small host <-> GPU copies in one driver call (`cuMemcpyBatchAsync`, CUDA 12.8+), done by the copy
engines rather than the SMs.

Why: a layer of a CPU-tier restore is 2N separate pieces (K and V of each of N blocks; a tier slot keeps
all layers of a block). One `cudaMemcpyAsync` each is thousands of calls a step, so `engine.kv_restore`
reads the pinned slots with a Triton kernel instead. On H100s that kernel read pinned memory at 49 GB/s
on one host and 29 GB/s on another, while the copy engine did 54-55 GB/s on both (`bench/h2d_probe.py`,
bench/RESULTS.md 2026-12-06). A batched call hands all pieces of a layer to the copy engines at once.

Bound through ctypes from the driver (torch already made its primary context current): CUDA 13.0 dropped
the ``failIdx`` argument, so the entry point is asked for by version (`cuGetProcAddress_v2`), 13000 first,
then 12080. Not yet used by the engine: `bench/h2d_probe.py` times it against the kernel first.
"""

from __future__ import annotations

import ctypes
from functools import lru_cache

import torch

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


def available() -> bool:
    return torch.cuda.is_available() and _entry() is not None


def copy_batch(dsts: list[int], srcs: list[int], sizes: list[int], stream: torch.cuda.Stream) -> None:
    """Queue ``len(dsts)`` copies (raw pointers, bytes) on ``stream``, sources read in stream order; in
    no particular order among themselves. Raises RuntimeError with the driver's code on failure."""
    entry = _entry()
    if entry is None:
        raise RuntimeError("cuMemcpyBatchAsync is not available (CUDA driver 12.8 or newer)")
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
