"""Instructions per weight in the main loop of the int4 decode kernels, from their sm_90 SASS, offline.

    python bench/sass_count.py      # any box with triton installed: no GPU needed

Why: the one-token int4 GEMV is bound by instruction issue, not by HBM (bench/RESULTS.md), so the count
of SASS instructions per dequantized weight is the number to drive down. Triton compiles the kernel for
sm_90 here (its bundled ptxas), the launcher's multiple-of-16 specialisations included, and nvdisasm lists
the loop; the mix shows where the issue slots go (``LOP3`` per code, the magic-number ``FADD``, the ``FFMA``,
and the activation loads and conversions shared by a thread's columns).
"""

from __future__ import annotations

import collections
import inspect
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.quant import triton_w4k as tw  # noqa: E402
from engine.quant import triton_w4k_h2 as th2  # noqa: E402

BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
DIV16 = ("x_ptr", "w_ptr", "s_ptr", "b_ptr", "y_ptr", "N", "K")  # what the launcher specialises at 8B shapes
SIG = {"x_ptr": "*bf16", "w_ptr": "*i32", "s_ptr": "*fp16", "b_ptr": "*fp16", "y_ptr": "*bf16",
       "ws_ptr": "*fp32", "lock_ptr": "*i32", "amax_ptr": "*fp32", "N": "i32",
       "K": "i32", "rows_per_split": "i32", "GROUP": "constexpr", "BLOCK_N": "constexpr",
       "SPLIT": "constexpr"}  # fmt: skip


SIG_MM = {"x_ptr": "*bf16", "w_ptr": "*i32", "s_ptr": "*fp16", "b_ptr": "*fp16", "y_ptr": "*bf16",
          "ws_ptr": "*fp32", "lock_ptr": "*i32", "M": "i32",
          "N": "i32", "K": "i32", "stride_xm": "i32", "stride_ym": "i32", "rows_per_split": "i32",
          "GROUP": "constexpr", "BLOCK_M": "constexpr", "BLOCK_N": "constexpr", "BLOCK_R": "constexpr",
          "SPLIT": "constexpr"}  # fmt: skip


def sass(fn, consts: dict, warps: int, stages: int, sig: dict | None = None, div: tuple = ()) -> str:
    """The kernel's sm_90 SASS. Every defaulted constexpr is passed explicitly: Triton's offline compile
    cache keys the constants by value only (`ASTSource.hash`), so ``{"A": True}`` and ``{"B": True}``
    would share one cached binary (seen: one variant's build returned another's). ``sig`` and ``div``
    (the arguments specialised as multiples of 16): another kernel's than the int4 GEMVs'/GEMMs'."""
    empty = inspect.Parameter.empty
    defaults = {p.name: p.default for p in fn.params if p.is_constexpr and p.default is not empty}
    consts = defaults | consts
    base = sig or (SIG_MM if "M" in fn.arg_names else SIG)
    sig = {k: v for k, v in base.items() if k in fn.arg_names}  # args a kernel lacks (amax_ptr) dropped
    sig |= {k: "constexpr" for k in consts if k not in base}
    if not div:
        div = DIV16 + (("stride_xm", "stride_ym") if base is SIG_MM else ())
    attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a in div}
    src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    options = {"num_warps": warps, "num_stages": stages}
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(kernel.asm["cubin"])
    try:
        done = subprocess.run([BIN / "nvdisasm", "-c", f.name], capture_output=True, text=True, check=True)
        return done.stdout
    finally:
        os.unlink(f.name)


def main_loop(text: str) -> list[str]:
    """The longest span closed by a backward branch: the K loop."""
    labels, instrs = {}, []
    for line in text.splitlines():
        if m := re.match(r"\.(L_x_\d+):", line.strip()):
            labels[m.group(1)] = len(instrs)
        if m := re.match(r"\s*/\*[0-9a-f]+\*/\s+(.*)", line):
            instrs.append(m.group(1))
    best = (0, len(instrs) - 1)
    spans = [
        (labels[m.group(1)], j)
        for j, ins in enumerate(instrs)
        if (m := re.search(r"BRA\s+`?\(?\.?(L_x_\d+)", ins)) and labels.get(m.group(1), j) < j
    ]
    if spans:
        best = max(spans, key=lambda s: s[1] - s[0])
    return instrs[best[0] : best[1] + 1]


def main() -> None:
    g2 = {"ASM": True, "ROW_SUMS": True}
    h2 = {"ASM": True, "DENORM": False, "CHAIN": 2, "COLS": 1, "EVEN": True}  # EVEN: N % BLOCK_N == 0
    h2 |= {"stride_xm": 4096, "stride_ym": 4096, "M_ROWS": 1}  # strides: constants (not in SIG)
    c4 = {"BLOCK_R": 64, "CHAIN": 4, "COLS": 2}
    r4 = {"M_ROWS": 4}  # per weight, not per weight and row: 4 rows' FMAs count against one weight
    variants = [
        ("gemv (v1): cast-free magic, 2 logic ops", tw.w4k_gemv_kernel, {}),
        ("gemv2, no asm (as the interpreter runs it)", tw.w4k_gemv_kernel, {"ASM": False, "ROW_SUMS": True}),
        ("gemv2: one lop3 a code, bias by row sums", tw.w4k_gemv_kernel, {"ASM": True, "ROW_SUMS": True}),
        ("gemv3: gemv2 + per-row scales, 16 rows", tw.w4k_gemv_kernel, {**g2, "BLOCK_R": 16}),
        ("gemv3: 32 rows (2 groups) a step", tw.w4k_gemv_kernel, {**g2, "BLOCK_R": 32}),
        ("fp16 (mode 4): lop3 + sub + fma a pair, 32 rows", th2.w4k_gemv_h2_kernel, {**h2, "BLOCK_R": 32}),
        ("fp16: 64 rows, 2 column tiles", th2.w4k_gemv_h2_kernel, {**h2, "BLOCK_R": 64, "COLS": 2}),
        ("fp16: 64 rows, chains of 4, 2 column tiles", th2.w4k_gemv_h2_kernel, {**h2, **c4}),
        ("fp16 (mode 5): subnormal codes, as above", th2.w4k_gemv_h2_kernel, {**h2, **c4, "DENORM": True}),
        ("fp16, 4 rows (M_ROWS): 32 rows", th2.w4k_gemv_h2_kernel, {**h2, **r4, "BLOCK_R": 32}),
        ("fp16, 4 rows: 64 rows, chains of 4, 2 tiles", th2.w4k_gemv_h2_kernel, {**h2, **c4, **r4}),
        ("fp16, 4 rows: subnormal codes", th2.w4k_gemv_h2_kernel, {**h2, **c4, **r4, "DENORM": True}),
    ]
    mm = {"BLOCK_M": 16, "BLOCK_R": 16}
    tensor_core = [  # 16 rows: the weights a thread converts per step are the same count
        ("mm, M=16: magic floats, no asm", tw.w4k_mm_kernel, {**mm, "ASM": False}),
        ("mm, M=16: one lop3 a code", tw.w4k_mm_kernel, {**mm, "ASM": True}),
        ("mm2, M=16: bf16 pairs from one lop3", tw.w4k_mm2_kernel, {**mm, "ASM": True}),
        ("mmt (20): mm2, codes as the dot's first operand", tw.w4k_mmt_kernel, {**mm, "ASM": True}),
        ("mmt (21): a dot a nibble pair", tw.w4k_mmt_kernel, {**mm, "ASM": True, "JOIN": 2}),
        ("mmt (22): a dot a step", tw.w4k_mmt_kernel, {**mm, "ASM": True, "JOIN": 8}),
    ]
    print("| kernel | BLOCK_N x warps | loop instructions / weight | LOP3 | FADD | FFMA | LDG | other |")
    print("|---|---|---|---|---|---|---|---|")
    runs = [(v, bn, w, 2) for v in variants for bn, w in ((64, 4), (128, 4), (256, 8))]
    runs += [(v, bn, w, 3) for v in tensor_core for bn, w in ((128, 4), (256, 4))]
    for (name, fn, extra), bn, warps, stages in runs:
        body = main_loop(sass(fn, {"GROUP": 128, "BLOCK_N": bn, "SPLIT": 8, **extra}, warps, stages))
        ops = collections.Counter(re.match(r"(@!?U?P\w+\s+)?([A-Z0-9_]+)", i).group(2) for i in body)
        per = 8 * extra.get("BLOCK_R", 16) * bn / (32 * warps)  # weights a thread dequantizes per loop step
        main4 = [ops[o] / per for o in ("LOP3", "FADD", "FFMA", "LDG")]
        rest = (len(body) - sum(ops[o] for o in ("LOP3", "FADD", "FFMA", "LDG"))) / per
        cells = " | ".join(f"{v:.2f}" for v in main4)
        print(f"| {name} | {bn} x {warps} | {len(body) / per:.2f} | {cells} | {rest:.2f} |", flush=True)


if __name__ == "__main__":
    main()
