"""Is the one-token int4 GEMV faster on tensor cores (mode 6, `engine.quant.triton_w4k_mma`) than the shipped
packed-fp16 GEMV?

    python3 bench/mma_probe.py --out $OUT     # GPU: graph timing, 8 layers of the 8B shape, int4 g128
    python3 bench/mma_probe.py --dry          # the script's logic on a CPU box (interpreter, smaller shapes)

Why: the shipped GEMVs take ~1.35x a plain read of their bytes (bench/RESULTS.md, issue 6), and neither
contiguous reads (panels) nor a persistent kernel closed that. Mode 6 spends ~1.4-1.9 SASS instructions a
weight in its loop against ~2.6-3.1 (offline sm_90 SASS), with float32 sums.

Measured, each as a chain of 8 launches with PDL in one CUDA graph (as decode replays them): per matrix the
plain read of its bytes, the shipped config, then mode-6 configs (column tiles, warps over columns and over
K, split-K), each checked against the shipped output; per layer (qkv, o, gate_up writing silu(gate) * up,
down) the reads, the shipped GEMVs, each matrix's fastest mode-6 config, and mode 6 only where it won.
Writes ``mma_tune.json`` (mode 6 where it beat the shipped config, in ``quant_e2e.py --tune``'s format)
for the whole-model A/B (`bash bench/gpu_pending.sh mma`); figures in bench/RESULTS.md (2026-12-07).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

if "--dry" in sys.argv:  # Triton's interpreter must be chosen before triton loads
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import panel_probe as pp  # noqa: E402
from engine.quant import gpu  # noqa: E402


def configs(name: str, n: int, k: int) -> list[tuple]:
    """Mode-6 configs worth timing: ``(block_n, split, warps, 1, 6, 16, kw, 0, prefetch)``, kw warps over a
    program's groups. gate_up: two column tiles (its SiLU epilogue) and no split, K spread over warps
    instead; the others: 1-2 tiles, warps over K and split-K that give 1,000-8,000 warps (132 SMs)."""
    if name == "gate_up":
        out = [
            (64 * cw, 1, cw * kw, 1, 6, 16, kw, 0, 1)
            for cw, kw in ((1, 1), (1, 4), (1, 8), (1, 16), (2, 4), (2, 8))
        ]
        return out[:2] if pp.DRY else out
    out, groups = [], k // 128
    for block_n, cw in ((64, 1), (64, 2), (128, 2), (128, 4)):
        tiles = -(-n // block_n)
        for kw in (1, 2, 4):
            for split in (4, 8, 16, 32):
                warps = tiles * split * cw * kw
                if groups // split >= kw and cw * kw <= 16 and (pp.DRY or 1000 <= warps <= 8192):
                    out.append((block_n, split, cw * kw, 1, 6, 16, kw, 0, 1))
    return out[:2] if pp.DRY else out[:30]


def sweep(name: str, weights: list, x: torch.Tensor, a, want: torch.Tensor) -> list[dict]:
    rows = []
    for cfg in configs(name, *pp.SHAPES[name]):
        rows.append(pp.time_config(name, cfg, weights, x, a, want))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="bench/out")
    p.add_argument("--dry", action="store_true")
    args = p.parse_args()
    bw, gpu_name = pp.start()
    print(json.dumps({"copy_gbps": round(bw, 1), "gpu": gpu_name}), flush=True)
    weights, xs, amaxes, floors, best, shipped_us = {}, {}, {}, {}, {}, {}
    for name in pp.NAMES:
        n, k = pp.SHAPES[name]
        weights[name], x, a = pp.matrix(name)
        xs[name], amaxes[name], g0 = x, a, weights[name][0]
        floors[name] = pp.reads(g0.nbytes())
        want = pp.call(name, g0, x, a)()
        shipped = shipped_us[name] = pp.graph_ms([pp.call(name, g, x, a) for g in weights[name]]) * 1e3
        row = {"matrix": name, "mb": round(g0.nbytes() / 1e6, 2), "read_us": round(floors[name][1], 2)}
        row |= {"shipped_config": list(gpu._config("int4k", n, k, 128, 1)), "shipped_us": round(shipped, 2)}
        print(json.dumps(row), flush=True)
        ok = [r for r in sweep(name, weights[name], x, a, want) if "us" in r and r["rel_err"] < 2e-2]
        best[name] = min(ok, key=lambda r: r["us"]) if ok else None
        print(json.dumps({"matrix": name, "best_mma": best[name], "shipped_us": round(shipped, 2)}),
              flush=True)  # fmt: skip
        torch.cuda.empty_cache()

    layer_bytes = sum(weights[nm][0].nbytes() for nm in pp.NAMES)
    won = {nm: b for nm, b in best.items() if b and b["us"] < shipped_us[nm]}

    def chain(kind: str) -> float:
        fns = [
            floors[nm][0][i] if kind == "read" else pp.call(nm, weights[nm][i], xs[nm], amaxes[nm])
            for i in range(pp.LAYERS)
            for nm in pp.NAMES
        ]
        for nm, b in {"mma": best, "mixed": won}.get(kind, {}).items():
            if b:
                gpu.TUNING[("int4k", *pp.SHAPES[nm], 1)] = tuple(b["config"])
        try:
            return pp.graph_ms([lambda: [f() for f in fns]]) * 1e3 / pp.LAYERS
        finally:
            for nm in pp.NAMES:
                gpu.TUNING.pop(("int4k", *pp.SHAPES[nm], 1), None)

    for kind in ("read", "shipped", "mma", "mixed", "shipped", "mma", "mixed", "read"):
        us = chain(kind)
        pct = round(100 * layer_bytes / us / 1e3 / bw, 1)
        print(json.dumps({"layer_chain": kind, "us_layer": round(us, 2), "pct_copy_bw": pct}), flush=True)
    # the whole-model A/B's 'tuned' configs: mode 6 where it beat the shipped config here
    tune = {f"int4k_g128|{n}|{k}|1": b["config"] for nm, b in won.items() for n, k in [pp.SHAPES[nm]]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    source = f"bench/mma_probe.py on {gpu_name}: mode 6 where it beat the shipped config"
    (out / "mma_tune.json").write_text(json.dumps({"source": source, "tuning": {} if pp.DRY else tune}))


if __name__ == "__main__":
    main()
