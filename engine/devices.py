"""Which device and dtype ``"auto"`` means, and whether bf16 would pay on this CPU.

``dtype="auto"`` is bf16 on CUDA and fp32 on a CPU. bf16 on a CPU is opt-in (``dtype="bfloat16"``,
``KB_ENGINE_DTYPE``): on chips with AMX or AVX512-BF16, oneDNN runs bf16 matmuls natively, so a
1,024-token SmolLM2 prefill is 3-3.5x faster than fp32 on 2 cores, perplexity moves by +0.04 %, and the
packed int4/int8 decode kernels (`engine.quant.cpu_linear`) apply (bench/RESULTS.md "CPU engine"). It is
not the default because greedy text then depends on what was cached: a turn whose prefix is restored
attends through another kernel than a fresh prefill, and at bf16's precision that flips near-ties
(measured: `kb engine bench-turns` run twice gave two different second-process texts), while in fp32
a restored session writes the same text as a recompute, which the CI checks. The engine logs the hint.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch


def cpu_has_native_bf16() -> bool:
    """AMX tiles or AVX512-BF16: what oneDNN needs for native bf16 matmuls."""
    cpu = getattr(torch, "cpu", None)
    try:
        return bool(cpu._is_amx_tile_supported() or cpu._is_avx512_bf16_supported())
    except AttributeError:  # a torch build without these probes: assume the portable answer
        return False


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``"auto"``: bf16 on CUDA, fp32 elsewhere; otherwise the named floating dtype."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be 'auto', 'float32', 'bfloat16' or 'float16', not {name!r}")
    return dtype


def bf16_hint(device: torch.device, dtype: torch.dtype) -> str | None:
    """A start-up note for an fp32 CPU engine on a chip where bf16 would prefill faster."""
    if device.type == "cpu" and dtype == torch.float32 and cpu_has_native_bf16():
        return (
            "this CPU runs bf16 matmuls natively: dtype='bfloat16' (KB_ENGINE_DTYPE) prefills ~3x faster, "
            "but greedy text may then depend on what was cached (engine/devices.py)"
        )
    return None


def in_passing_thread(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a thread that ends when it returns, and re-raise what it raised.

    Why: libgomp gives each thread that runs a parallel torch op its own pool of OpenMP threads, and once
    the pools together hold more threads than there are cores it stops spinning between parallel regions,
    so every later region pays a futex wake-up. Loading a model in the caller's thread left one such pool
    behind, and the engine thread's decode ran at 53 ms a token instead of 33 on 2 cores (SmolLM2 fp32,
    bench/RESULTS.md "CPU engine"); a pool dies with its thread, so set-up work done here leaves none.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller as is
            box["error"] = e

    t = threading.Thread(target=run, name="kb-passing")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")
