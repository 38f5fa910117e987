"""The one-token GEMVs' launch configs on this GPU with early release on, per matrix and per layer.

    python3 bench/gemv_candidates.py --out $OUT    # GPU: chains of 8 launches with PDL in one CUDA graph
    python3 bench/gemv_candidates.py --dry         # the script's logic on a CPU box (interpreter, small)

Why: the H100 table ("9.0 H100") holds qkv and o only, both split 1, chosen while early release was off;
gate_up, down and the int8 LM head still run the H200's configs. Early release (on since 2026-12-07) lets
the next kernel launch during a GEMV, which changes what a split-K tail costs.

Per matrix: the shipped config, then each candidate (``CANDIDATES``), each checked against the shipped
output (relative error; other step sizes sum in another order). Then a layer (qkv, o, gate_up writing
silu(gate) * up, down) as shipped and with each matrix's fastest config. Then the LM head (int8, 128256 x
4096). Prints JSON lines, writes ``gemv_candidates.json`` and ``candidates_tune.json`` (the winners, for
`quant_e2e.py --tune`: a chain's winner is not the model's, bench/RESULTS.md, 2026-12-07, fourth session).
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
from bench.quant_gpu import clone_weight, make  # noqa: E402
from engine.quant import gpu  # noqa: E402

# fp16-GEMV configs: (block_n, split, warps, stages, mode, block_r, chain, cols, prefetch)
CANDIDATES = {
    "qkv": [
        (16, 1, 8, 1, 5, 128, 2, 2, 3),  # the shipped one with two tiles of 8
        (32, 1, 8, 1, 5, 128, 2, 2, 3),
        (32, 1, 16, 1, 5, 256, 2, 2, 3),
        (16, 1, 16, 1, 5, 256, 2, 1, 3),
        (64, 8, 4, 2, 5, 32, 2, 2, 2),  # the "9.0" (H200) split-K config
    ],
    "o": [
        (16, 1, 8, 1, 5, 128, 2, 1, 3),
        (32, 1, 8, 1, 5, 128, 2, 2, 3),
        (16, 1, 16, 1, 5, 256, 2, 1, 3),
        (64, 16, 4, 4, 5, 32, 4, 2, 2),  # "9.0"
    ],
    "gate_up": [
        (32, 1, 4, 3, 5, 64, 2, 2, 2),
        (32, 1, 8, 4, 5, 64, 2, 2, 2),
        (64, 1, 8, 3, 5, 64, 2, 2, 2),
        (32, 1, 4, 4, 5, 128, 2, 2, 2),
        (16, 1, 4, 4, 5, 64, 2, 2, 2),
        (32, 1, 8, 1, 5, 128, 2, 2, 3),
        (64, 1, 8, 1, 5, 128, 2, 2, 3),
    ],
    "down": [
        (64, 8, 4, 3, 5, 32, 2, 2, 2),
        (64, 28, 4, 3, 5, 32, 2, 2, 2),
        (32, 16, 4, 3, 5, 32, 2, 2, 2),
        (128, 16, 8, 3, 5, 32, 2, 2, 2),
        (16, 1, 8, 2, 5, 256, 2, 1, 2),  # split 1, a step ahead: no split-K sum
        (32, 1, 16, 2, 5, 256, 2, 2, 2),
        (16, 2, 8, 1, 5, 128, 2, 1, 3),
    ],
}
# int8 LM head, one token: (block_n, split, warps, stages, block_m, magic, _)
LM_HEAD = [
    (64, 1, 4, 3, 16, 1, 0),
    (256, 1, 4, 3, 16, 1, 0),
    (128, 1, 8, 3, 16, 1, 0),
    (128, 1, 4, 4, 16, 1, 0),
    (128, 1, 4, 2, 16, 1, 0),
    (128, 2, 4, 3, 16, 1, 0),
    (256, 1, 8, 3, 16, 1, 0),
]


def lm_head(rows: list[dict]) -> dict | None:
    """The int8 LM head's shipped config against ``LM_HEAD``: rows appended; the winner, if any."""
    n, k = (128256 // 16, 1024) if pp.DRY else (128256, 4096)
    g0 = make("int8", torch.randn(n, k, device=pp.DEV) * 0.02)
    weights = [g0] + [clone_weight(g0) for _ in range(2)]
    dtype = torch.float32 if pp.DRY else torch.bfloat16  # the interpreter's int8 kernel: fp32 x
    x = torch.randn(1, k, device=pp.DEV, dtype=dtype)
    key = ("int8", n, k, 1)
    want = gpu.matmul_small(g0, x)
    fns = [lambda g=g: gpu.matmul_small(g, x) for g in weights]
    shipped = pp.graph_ms(fns) * 1e3
    rows.append({"matrix": "lm_head", "config": "shipped", "us": round(shipped, 2)})
    print(json.dumps(rows[-1]), flush=True)
    best = None
    for cfg in LM_HEAD[: 1 if pp.DRY else None]:
        rows.append(pp.time_keyed("lm_head", key, cfg, fns, want))
        print(json.dumps(rows[-1]), flush=True)
        if rows[-1].get("rel_err", 1) < 1e-2 and rows[-1]["us"] < (best or {}).get("us", shipped):
            best = rows[-1]
    return best


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="bench/out")
    p.add_argument("--dry", action="store_true")
    args = p.parse_args()
    bw, gpu_name = pp.start()
    rows: list[dict] = [{"copy_gbps": round(bw, 1), "gpu": gpu_name, "early_release": gpu.GEMV_EARLY_RELEASE}]
    print(json.dumps(rows[-1]), flush=True)
    weights, xs, amaxes, won = {}, {}, {}, {}
    for name in pp.NAMES:
        weights[name], xs[name], amaxes[name] = pp.matrix(name)
        w, x, a = weights[name], xs[name], amaxes[name]
        want = pp.call(name, w[0], x, a)()
        shipped = pp.graph_ms([pp.call(name, g, x, a) for g in w]) * 1e3
        rows.append({"matrix": name, "config": "shipped", "us": round(shipped, 2)})
        rows[-1]["read_us"] = round(pp.reads(w[0].nbytes())[1], 2)
        print(json.dumps(rows[-1]), flush=True)
        best = (None, shipped)
        for cfg in CANDIDATES[name][: 1 if pp.DRY else None]:
            rows.append(pp.time_config(name, cfg, w, x, a, want))
            print(json.dumps(rows[-1]), flush=True)
            if rows[-1].get("rel_err", 1) < 1e-2 and rows[-1]["us"] < best[1]:
                best = (cfg, rows[-1]["us"])
        won[name] = best[0]
        torch.cuda.empty_cache() if not pp.DRY else None

    layer_bytes = sum(weights[nm][0].nbytes() for nm in pp.NAMES)
    for kind in ("shipped", "winners", "shipped"):
        fns = [pp.call(nm, weights[nm][i], xs[nm], amaxes[nm]) for i in range(pp.LAYERS) for nm in pp.NAMES]
        if kind == "winners":
            gpu.TUNING.update({("int4k", *pp.SHAPES[nm], 1): c for nm, c in won.items() if c is not None})
        us = pp.graph_ms([lambda fns=fns: [f() for f in fns]]) * 1e3 / pp.LAYERS
        gpu.TUNING.clear()
        rows.append({"layer_chain": kind, "us_layer": round(us, 2)})
        rows[-1]["pct_copy_bw"] = round(100 * layer_bytes / us / 1e3 / bw, 1)
        print(json.dumps(rows[-1]), flush=True)
    head = lm_head(rows)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gemv_candidates.json").write_text(json.dumps(rows, indent=1))
    # quant_e2e's 'tuned' configs: the winners
    shapes = pp.quant_gpu.SHAPES
    tune = {f"int4k_g128|{n}|{k}|1": list(c) for nm, c in won.items() if c for n, k in [shapes[nm]]}
    if head is not None:
        tune["int8|128256|4096|1"] = head["config"]
    source = f"bench/gemv_candidates.py on {gpu_name}: one-token configs with early release"
    (out / "candidates_tune.json").write_text(json.dumps({"source": source, "tuning": tune}))


if __name__ == "__main__":
    main()
