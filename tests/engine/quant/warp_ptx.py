"""A 32-lane interpreter for the few PTX instructions of `engine.quant.triton_w4k_mma.group_asm`.

Why: the interpreter that runs the kernels in CI cannot run inline PTX, and the asm's lane arithmetic (which
word and which x land in which mma fragment, which lane a shuffle reads) is exactly what a CPU test can get
wrong in no other way. This runs the generated text itself, lane by lane, with ``mma.m16n8k16``'s fragment
layouts from the PTX ISA, so a wrong operand number, mask or lane index fails here instead of on a GPU.
"""

from __future__ import annotations

import re

import numpy as np

LANES = 32


def _f32(u: np.ndarray) -> np.ndarray:
    return u.astype(np.uint32).view(np.float32)


def _u32(f: np.ndarray) -> np.ndarray:
    return np.asarray(f, dtype=np.float32).view(np.uint32)


def _halves(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An f16x2 register's (low, high) halves as float64."""
    lo = (u & 0xFFFF).astype(np.uint16).view(np.float16).astype(np.float64)
    hi = (u >> 16).astype(np.uint16).view(np.float16).astype(np.float64)
    return lo, hi


def _mma(a: list[np.ndarray], b: list[np.ndarray], c: list[np.ndarray]) -> list[np.ndarray]:
    """``D = A @ B + C`` of ``mma.sync.m16n8k16.row.col.f32.f16.f16.f32`` from per-lane fragments: lane
    ``4g + t`` holds A rows g / g + 8 at k ``2t, 2t + 1`` (regs 0, 1) and ``2t + 8, 2t + 9`` (regs 2, 3),
    B rows k ``2t, 2t + 1`` / ``2t + 8, 2t + 9`` of column g, C rows g / g + 8 of columns 2t, 2t + 1."""
    am, bm, cm = np.zeros((16, 16)), np.zeros((16, 8)), np.zeros((16, 8))
    for lane in range(LANES):
        g, t = divmod(lane, 4)
        for reg, (row, k) in enumerate(((g, 2 * t), (g + 8, 2 * t), (g, 2 * t + 8), (g + 8, 2 * t + 8))):
            lo, hi = _halves(a[reg][lane : lane + 1])
            am[row, k], am[row, k + 1] = lo[0], hi[0]
        for reg, k in enumerate((2 * t, 2 * t + 8)):
            lo, hi = _halves(b[reg][lane : lane + 1])
            bm[k, g], bm[k + 1, g] = lo[0], hi[0]
        for reg, (row, col) in enumerate(((g, 2 * t), (g, 2 * t + 1), (g + 8, 2 * t), (g + 8, 2 * t + 1))):
            cm[row, col] = _f32(c[reg][lane : lane + 1])[0]
    d = (am @ bm + cm).astype(np.float32)
    out = [np.zeros(LANES, np.uint32) for _ in range(4)]
    for lane in range(LANES):
        g, t = divmod(lane, 4)
        for reg, (row, col) in enumerate(((g, 2 * t), (g, 2 * t + 1), (g + 8, 2 * t), (g + 8, 2 * t + 1))):
            out[reg][lane] = _u32(d[row, col])
    return out


def run(asm: str, operands: list[np.ndarray], n_out: int) -> list[np.ndarray]:
    """Runs ``asm`` on 32 lanes: ``operands`` the inputs ``$n_out ..`` (uint32 bits, one value a lane);
    returns the ``n_out`` outputs' bits."""
    regs: dict[str, np.ndarray] = {f"${n_out + i}": np.asarray(v, np.uint32) for i, v in enumerate(operands)}
    lanes = np.arange(LANES, dtype=np.uint32)

    def val(tok: str) -> np.ndarray:
        tok = tok.strip()
        if tok in regs:
            return regs[tok]
        if tok == "%laneid":
            return lanes.copy()
        if tok.startswith("0f"):
            return np.full(LANES, int(tok[2:], 16), np.uint32)
        return np.full(LANES, int(tok, 0), np.uint32)

    def group(tok: str) -> list[str]:
        return [s.strip() for s in tok.strip().strip("{}").split(",")]

    body = asm.strip().removeprefix("{").removesuffix("}")
    for stmt in (s.strip() for s in body.split(";")):
        if not stmt or stmt.startswith(".reg"):
            continue
        op, rest = stmt.split(None, 1)
        if op.startswith("mma."):
            d, a, b, c = re.findall(r"\{[^}]*\}", rest)
            out = _mma([val(x) for x in group(a)], [val(x) for x in group(b)], [val(x) for x in group(c)])
            for name, v in zip(group(d), out, strict=True):
                regs[name] = v
            continue
        args = [x.strip() for x in rest.split(",")]
        dst, src = args[0], args[1:]
        if op in ("mov.b32", "mov.u32"):
            res = val(src[0])
        elif op == "mul.f32":
            res = _u32(_f32(val(src[0])) * _f32(val(src[1])))
        elif op == "add.f32":
            res = _u32(_f32(val(src[0])) + _f32(val(src[1])))
        elif op == "add.u32":
            res = val(src[0]) + val(src[1])
        elif op == "shl.b32":
            res = val(src[0]) << val(src[1])
        elif op == "shr.u32":
            res = val(src[0]) >> val(src[1])
        elif op == "and.b32":
            res = val(src[0]) & val(src[1])
        elif op == "cvt.rn.f16x2.f32":  # d.hi = a, d.lo = b
            hi = _f32(val(src[0])).astype(np.float16).view(np.uint16).astype(np.uint32)
            lo = _f32(val(src[1])).astype(np.float16).view(np.uint16).astype(np.uint32)
            res = (hi << 16) | lo
        elif op == "shfl.sync.idx.b32":
            res = val(src[0])[val(src[1]) & 31]
        elif op == "shfl.sync.bfly.b32":
            res = val(src[0])[lanes ^ val(src[1])]
        else:
            raise ValueError(f"instruction not emulated: {op}")
        regs[dst] = res.astype(np.uint32)
    return [regs[f"${i}"] for i in range(n_out)]
