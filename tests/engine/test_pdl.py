"""Programmatic dependent launch (engine.pdl): where it is used, what the compiled kernels do with it, and
(on a Hopper GPU) that a decode-like chain of kernels in a CUDA graph gives the same bits with it as without.

The SASS check compiles for sm_90 with Triton's bundled ptxas, so it runs on a CPU box: the order of the
wait, the loads, the release and the stores in the machine code is what makes PDL safe and useful.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine import pdl


def test_pdl_is_off_on_cpu_under_the_interpreter_and_when_disabled(monkeypatch) -> None:
    assert not pdl.enabled(torch.zeros(1))
    assert pdl.launch_kw(False) == {} and pdl.launch_kw(True) == {"launch_pdl": True}
    if torch.cuda.is_available():
        x = torch.zeros(1, device="cuda")
        monkeypatch.setenv("KB_ENGINE_PDL", "0")
        assert not pdl.enabled(x)
        monkeypatch.setenv("KB_ENGINE_PDL", "1")
        monkeypatch.setattr(pdl, "ENABLED", False)
        assert not pdl.enabled(x)


COMPILE = """
import sys
from bench.sass_count import sass
from engine.quant import triton_w4k_h2 as th2
h2 = {"ASM": True, "DENORM": True, "CHAIN": 2, "COLS": 2, "EVEN": True, "stride_xm": 4096, "stride_ym": 4096}
h2 |= {"M_ROWS": 1, "GROUP": 128, "BLOCK_N": 128, "SPLIT": 2, "BLOCK_R": 64}
print(sass(th2.w4k_gemv_h2_kernel, h2 | eval(sys.argv[1]), 4, 3))
"""


def _sass(consts: dict) -> list[str]:
    """The fp16 GEMV's SASS for sm_90, compiled in a process without the interpreter (tests run under it)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", COMPILE, repr(consts)], capture_output=True, text=True,
                          env=env, cwd=root, check=True)  # fmt: skip
    return [m.group(1) for m in re.finditer(r"/\*[0-9a-f]+\*/\s+(.*?)\s*;", done.stdout)]


def _first(instrs: list[str], pattern: str) -> int:
    return next(i for i, ins in enumerate(instrs) if re.search(pattern, ins))


def test_gemv_waits_before_its_first_load_and_releases_before_its_stores() -> None:
    """With PDL the GEMV loads nothing before ``griddepcontrol.wait`` (ACQBULK), not even its weights
    (prefetching them was slower: engine.pdl), and releases the next kernel (PREEXIT) after the main
    loop's loads, before the split-K stores; without PDL neither instruction is there."""
    instrs = _sass({"PDL": True})
    wait, release = _first(instrs, r"\bACQBULK\b"), _first(instrs, r"\bPREEXIT\b")
    loads = [i for i, ins in enumerate(instrs) if re.search(r"\bLDG\b", ins)]
    stores = [i for i, ins in enumerate(instrs) if re.search(r"\b(STG|ATOMG|RED)\b", ins)]
    assert loads and min(loads) > wait
    assert release > wait and stores and min(stores) > release
    plain = _sass({"PDL": False})
    assert not any(re.search(r"\b(ACQBULK|PREEXIT)\b", ins) for ins in plain)


CUDA_PDL = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9


@pytest.mark.skipif(not CUDA_PDL, reason="needs an sm_90+ GPU: bench/gpu_pending.sh runs it compiled")
def test_decode_chain_in_a_cuda_graph_is_bit_identical_with_and_without_pdl(monkeypatch) -> None:
    """norm -> int4 GEMV -> SiLU * up -> int4 GEMV -> norm, captured in one graph and
    replayed many times: a read before the wait would show as a difference from the same graph without
    PDL."""
    from engine import fused_ops
    from engine.quant import gpu
    from engine.quant.quantize import quantize_int4

    hidden, inter = 1024, 2048
    torch.manual_seed(0)
    gu = gpu.pack(quantize_int4(torch.randn(2 * inter, hidden) * 0.02, group=128))
    down = gpu.pack(quantize_int4(torch.randn(hidden, inter) * 0.02, group=128))
    gu, down = (gpu.GpuWeight(g.kind, g.n, g.k, {k: t.cuda() for k, t in g.tensors.items()}, g.group)
                for g in (gu, down))  # fmt: skip
    monkeypatch.setitem(gpu.TUNING, ("int4k", 2 * inter, hidden), (128, 2, 4, 3, 5, 64, 2, 2))
    monkeypatch.setitem(gpu.TUNING, ("int4k", hidden, inter), (128, 4, 4, 3, 5, 64, 2, 2))
    w = torch.rand(hidden, device="cuda", dtype=torch.bfloat16) + 0.5
    x0 = torch.randn(1, hidden, device="cuda", dtype=torch.bfloat16)

    def step(x: torch.Tensor) -> torch.Tensor:
        h, res = fused_ops.add_rmsnorm(x, x, w, 1e-5)
        a = fused_ops.silu_mul(gpu.matmul_small(gu, h), inter)
        return fused_ops.add_rmsnorm(gpu.matmul_small(down, a), res, w, 1e-5)[0]

    outs = {}
    for on in (False, True):
        monkeypatch.setattr(pdl, "ENABLED", on)
        gpu.split_locks(x0.device)
        x = x0.clone()
        step(x)  # compile outside capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y = x
            for _ in range(8):
                y = step(y)
        got = []
        for i in range(20):
            x.copy_(x0 * (1 + i / 10))
            graph.replay()
            got.append(y.clone())
        torch.cuda.synchronize()
        outs[on] = torch.stack(got)
    eager = x0 * (1 + 19 / 10)
    monkeypatch.setattr(pdl, "ENABLED", False)
    for _ in range(8):
        eager = step(eager)
    assert torch.equal(outs[True], outs[False])
    assert torch.equal(outs[False][-1], eager)
