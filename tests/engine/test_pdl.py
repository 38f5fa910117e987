"""Programmatic dependent launch (engine.pdl): where it is used and what the compiled kernels do with it.
On a Hopper GPU, ``bench/pdl_check.py`` checks that a decode-like chain in a CUDA graph gives the same bits
with it as without (run by ``bench/gpu_pending.sh pdl``; CI has no GPU).

The SASS check compiles for sm_90 with Triton's bundled ptxas, so it runs on a CPU box: the order of the
wait, the loads, the release and the stores in the machine code is what makes PDL safe and useful.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import torch

from engine import pdl


def test_pdl_is_off_on_cpu_under_the_interpreter_and_when_disabled(monkeypatch) -> None:
    assert not pdl.enabled(torch.zeros(1))
    assert pdl.kwargs(torch.zeros(1)) == {}
    with monkeypatch.context() as m:  # on: the kernel's constexpr and Triton's launch option together
        m.setattr(pdl, "enabled", lambda t: True)
        assert pdl.kwargs(torch.zeros(1)) == {"PDL": True, "launch_pdl": True}
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


def _sass(consts: dict, script: str = COMPILE) -> list[str]:
    """A kernel's SASS for sm_90 (the fp16 GEMV's, or what ``script`` prints given ``consts``), compiled in a
    process without the interpreter (tests run under it), as a list of instructions."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", script, repr(consts)], capture_output=True, text=True,
                          env=env, cwd=root, check=True)  # fmt: skip
    return [m.group(1) for m in re.finditer(r"/\*[0-9a-f]+\*/\s+(.*?)\s*;", done.stdout)]


def _first(instrs: list[str], pattern: str) -> int:
    return next(i for i, ins in enumerate(instrs) if re.search(pattern, ins))


def test_gemv_waits_before_its_first_load_and_releases_before_its_stores() -> None:
    """With PDL (and without PRE_WAIT, the next test's) the GEMV loads nothing before
    ``griddepcontrol.wait`` (ACQBULK), and releases the next kernel (PREEXIT) after the main loop's loads,
    before the split-K stores; without PDL neither instruction is there."""
    instrs = _sass({"PDL": True})
    wait, release = _first(instrs, r"\bACQBULK\b"), _first(instrs, r"\bPREEXIT\b")
    loads = [i for i, ins in enumerate(instrs) if re.search(r"\bLDG\b", ins)]
    stores = [i for i, ins in enumerate(instrs) if re.search(r"\b(STG|ATOMG|RED)\b", ins)]
    assert loads and min(loads) > wait
    assert release > wait and stores and min(stores) > release
    plain = _sass({"PDL": False})
    assert not any(re.search(r"\b(ACQBULK|PREEXIT)\b", ins) for ins in plain)


def test_gemv_with_pre_wait_loads_its_first_step_of_weights_before_the_wait_and_x_after() -> None:
    """PRE_WAIT (with PREFETCH 2): the first step's words, scales and biases issue before ACQBULK, the
    activations' loads (the absmax pass over x) only after it; without PRE_WAIT nothing loads before."""
    pre = _sass({"PDL": True, "PREFETCH": 2, "PRE_WAIT": True})
    after = _sass({"PDL": True, "PREFETCH": 2, "PRE_WAIT": False})
    wait = _first(pre, r"\bACQBULK\b")
    early = [ins for ins in pre[:wait] if re.search(r"\bLDG\b", ins)]
    # a step of words (64 rows, 2 column tiles) plus its scales and biases: several loads, all weights
    assert len(early) >= 3
    late = [ins for ins in pre[wait:] if re.search(r"\bLDG\b", ins)]
    assert late  # x (and the later steps' weights)
    assert not any(re.search(r"\bLDG\b", ins) for ins in after[: _first(after, r"\bACQBULK\b")])
    # the loads moved, not added: the same number in all
    assert len(early) + len(late) == sum(bool(re.search(r"\bLDG\b", ins)) for ins in after)


def test_pdl_is_kept_for_models_whose_every_matmul_is_ours() -> None:
    """A bf16 model runs cuBLAS GEMMs after our early-releasing kernels (not checked on a GPU with PDL),
    so it keeps PDL off; a quantized one with a quantized LM head runs only our kernels. Tied embeddings
    without a quantized head compute logits with ``F.linear``: a library matmul too."""
    from engine.quant.policy import QuantPolicy, apply_policy
    from tests.engine.quant.test_policy import tiny

    assert pdl.uses_library_matmuls(tiny(tied=False))
    quant = tiny(tied=False)
    apply_policy(quant, QuantPolicy.parse("int8,lm_head=int8"))
    assert not pdl.uses_library_matmuls(quant)
    tied = tiny(tied=True)
    apply_policy(tied, QuantPolicy.parse("int8"))  # lm_head stays the embeddings' F.linear
    assert pdl.uses_library_matmuls(tied)
    head = tiny(tied=False)
    apply_policy(head, QuantPolicy.parse("int8,lm_head=bf16"))
    assert pdl.uses_library_matmuls(head)
