"""Programmatic dependent launch (PDL, Hopper and later) for the decode step's chain of Triton kernels.

Why: an int4 decode step of an 8B model is ~290 kernels of 2-30 us, and in a CUDA graph each still waits
for the one before to finish, then for its own launch and ramp-up. With PDL a kernel is launched while its
predecessor still runs: its programs are resident, past their index math, and wait at
``griddepcontrol.wait`` for the predecessor to finish and flush its writes. The predecessor says when its
successor may launch (``griddepcontrol.launch_dependents``): a matmul after its main loop (during its
split-K tail), the small kernels between matmuls at once. Measured on an H200 (bench/RESULTS.md, issue 6):
a one-row RMSNorm chain 1.81 -> 1.19 us a kernel, a whole int4 decode step 2477 -> 2333 us of GPU time.
Pulling the next GEMV's weights into L2 before the wait (per-line or bulk prefetch) was measured too and
made the step slower (2.75-2.87 ms): HBM is already busy with the kernel ahead.

The rule that keeps it correct: a kernel launched with PDL reads nothing a previous kernel writes, and
writes nothing, before its `wait`. Waits chain: a kernel's predecessor finished only after its own wait,
so every earlier kernel has finished too. Kernels launched without PDL (torch's, and ours where the flag
is off) start only after the kernel ahead has finished, as always. A library kernel launched with PDL
would be safe only if it waits too; that is unchecked for cuBLAS, so models that run cuBLAS GEMMs (bf16
layers) keep PDL off (`uses_library_matmuls`), and quantized ones, all our kernels, use it.

CUDA graphs keep it: stream capture turns the launch attribute into a programmatic edge (CUDA >= 12.3).
``KB_ENGINE_PDL=0`` turns it off (for A/B runs); Triton's interpreter and GPUs before sm_90 never use it.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

ENABLED: bool | None = None  # None: on where supported (set False/True by benchmarks and tests)
# Set by the model runner: the loaded model also runs library matmuls (cuBLAS for bf16/fp16 layers).
LIBRARY_MATMULS = False


def uses_library_matmuls(model: torch.nn.Module) -> bool:
    """Whether ``model`` runs a matmul that is not one of our kernels: a plain ``nn.Linear`` (bf16/fp16
    layers; quantized ones are `QuantLinear`) or logits through the tied embeddings (``F.linear``).

    Why it matters: our small kernels release the next kernel as they start. Every kernel we launch with
    PDL waits before its first load, so that is safe for ours; a cuBLAS GEMM launched with PDL right after
    one of them would be safe only if it waits too, which this project has not checked on a GPU. So PDL
    stays off for such models (the unquantized default) until it is; quantized models, whose every matmul
    is ours, run with it."""
    linear = any(type(m) is torch.nn.Linear for m in model.modules())
    return linear or getattr(model, "lm_head", None) is None


@functools.cache
def _supported(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


def enabled(t: torch.Tensor) -> bool:
    """Whether kernels on ``t``'s device launch with PDL (their ``PDL`` constexpr and ``launch_pdl``)."""
    if ENABLED is False or not t.is_cuda or torch.version.hip is not None:
        return False
    if LIBRARY_MATMULS and ENABLED is None:
        return False
    if os.environ.get("TRITON_INTERPRET") == "1" or os.environ.get("KB_ENGINE_PDL", "1") == "0":
        return False
    return _supported(t.device.index if t.device.index is not None else torch.cuda.current_device())


def kwargs(t: torch.Tensor) -> dict:
    """A launch's PDL arguments for a kernel reading ``t``: the kernel's ``PDL`` constexpr and Triton's
    ``launch_pdl`` together (a kernel launched with PDL must wait), or none (every ``PDL`` defaults to off,
    and the interpreter knows no ``launch_pdl``)."""
    return {"PDL": True, "launch_pdl": True} if enabled(t) else {}


@triton.jit
def wait(PDL: tl.constexpr):
    """Block until the previous kernel has finished and its writes are visible (nothing without PDL)."""
    if PDL:
        tl.extra.cuda.gdc_wait()


@triton.jit
def release(PDL: tl.constexpr):
    """Let the next kernel launch once every program of this one got here (or exited)."""
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def start(PDL: tl.constexpr):
    """A small kernel's first step: release the next kernel, then wait for the previous one. Matmuls
    release only after their main loop, so launches run at most a matmul ahead."""
    release(PDL)
    wait(PDL)
