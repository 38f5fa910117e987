"""Where do the one-token int4 GEMV's extra microseconds go? An ablation of the shipped fp16 GEMV.

    python3 bench/gemv_ablation.py --out $OUT    # GPU: graph timing, 8 layers of the 8B shape, int4 g128
    python3 bench/gemv_ablation.py --dry         # the script's logic on a CPU box (interpreter, small shapes)

Why: in a chain with PDL each of a layer's four GEMVs takes ~3-4 us more than a plain read of its bytes,
whatever its size (bench/RESULTS.md, issue 6, 2026-12-07), and neither the access pattern, the kernel
boundaries nor the instructions a weight explained it. A fixed cost a kernel points at its start or its
end, so each suspect is removed in turn (`triton_w4k_h2` PROBE, measurement only, wrong results):

- ``early``: PDL's release of the next kernel as the program starts, not after the main loop (a real
  option, `gpu.GEMV_EARLY_RELEASE`; correct either way);
- ``nofinish``: split-K's ticket and sum left out (partials only);
- ``nomath``: the step's math replaced by an integer sum of its words (the loads stay);
- and the combinations;
- then configs that load all of a program's steps before its first step's math (PREFETCH 3), in
  smaller steps than the shipped ones.

Each is timed as a chain of 8 launches with PDL in one CUDA graph (as decode replays them), per matrix on
the "9.0" table's fp16-GEMV configs (the H100's own table puts mode 6 on qkv and o: also timed, as
``table``), then per layer (qkv, o, gate_up writing silu(gate) * up, down). ``early`` and ``table_early``
are checked against the shipped output (same bits). Prints JSON lines and writes ``gemv_ablation.json``,
and ``ahead_tune.json`` (the fp16 configs with the ALL_AHEAD winners, for `quant_e2e.py --tune`).
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
from engine.quant import gpu, tuning  # noqa: E402

# variant -> (force the "9.0" fp16-GEMV config, early release, PROBE bits)
VARIANTS = {
    "fp16": (True, False, 0),
    "early": (True, True, 0),
    "nofinish": (True, False, 1),
    "nomath": (True, False, 2),
    "nomath_nofinish": (True, False, 3),
    "all_three": (True, True, 3),
    "table": (False, False, 0),
    "table_early": (False, True, 0),
}
EXACT = ("early", "table_early")  # real results: the same bits as their base
# fp16-GEMV configs whose programs load all their steps before the first step's math (PREFETCH 3), in
# smaller steps: if the math left after the last bytes arrive is the fixed cost, these shrink it
# Then split 1 for qkv and o: K spread over 8-16 warps of a narrow column tile, all of a program's rows in
# flight, so no split-K sum (1.7-2.0 us a GEMV, 2026-12-07); one wave each (72-74 registers on sm_90).
# down's 14336 rows do not fit a program's registers in one wave that way.
ALL_AHEAD = {
    "qkv": [(64, 8, 4, 2, 5, 32, 2, 2, 3), (64, 8, 4, 2, 5, 16, 2, 2, 3), (64, 8, 4, 2, 5, 8, 2, 2, 3)]
    + [(16, 1, 8, 1, 5, 128, 2, 1, 3)],
    "o": [(64, 16, 4, 4, 5, 16, 4, 2, 3), (64, 16, 4, 4, 5, 16, 2, 2, 3), (64, 16, 4, 4, 5, 8, 2, 2, 3)]
    + [(32, 1, 16, 1, 5, 256, 2, 1, 3), (16, 1, 8, 1, 5, 128, 2, 1, 3)],
    "gate_up": [],  # no split-K (its SiLU epilogue): a program's 512 word rows do not fit in registers
    "down": [(64, 28, 4, 3, 5, 16, 2, 2, 3), (64, 16, 4, 3, 5, 16, 2, 2, 3), (64, 28, 8, 3, 5, 16, 2, 2, 3)],
}


def fp16_config(name: str) -> tuple[int, ...]:
    """The "9.0" table's one-token config (the fp16 GEMV) for this matrix at the 8B shape."""
    n, k = pp.quant_gpu.SHAPES[name]
    return tuning.shipped("9.0")[("int4k", 128, n, k)][1]


class Setting:
    """One variant applied to the launcher's module state for the span of a `with`."""

    def __init__(self, variant: str, names: tuple[str, ...]):
        self.force, self.early, self.probe = VARIANTS[variant]
        self.names = names

    def __enter__(self) -> None:
        gpu.GEMV_EARLY_RELEASE, gpu.H2_PROBE = self.early, self.probe
        if self.force:
            for nm in self.names:
                gpu.TUNING[("int4k", *pp.SHAPES[nm], 1)] = fp16_config(nm)

    def __exit__(self, *exc) -> None:
        gpu.GEMV_EARLY_RELEASE, gpu.H2_PROBE = False, 0
        for nm in self.names:
            gpu.TUNING.pop(("int4k", *pp.SHAPES[nm], 1), None)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="bench/out")
    p.add_argument("--dry", action="store_true")
    p.add_argument("--variants", default=",".join(VARIANTS), help="which of VARIANTS to time (fp16 always)")
    args = p.parse_args()
    variants = ["fp16", *(v for v in args.variants.split(",") if v != "fp16")]
    if "table_early" in variants and "table" not in variants:  # the bits it is checked against
        variants.insert(1, "table")
    if unknown := set(variants) - set(VARIANTS):
        p.error(f"unknown variants {sorted(unknown)}; choose from {list(VARIANTS)}")
    bw, gpu_name = pp.start()
    rows: list[dict] = [{"copy_gbps": round(bw, 1), "gpu": gpu_name}]
    print(json.dumps(rows[-1]), flush=True)
    weights, xs, amaxes, floors = {}, {}, {}, {}
    ahead: dict[str, tuple[tuple, float]] = {}  # matrix -> its fastest ALL_AHEAD config, where it beat fp16
    for name in pp.NAMES:
        weights[name], xs[name], amaxes[name] = pp.matrix(name)
        floors[name] = pp.reads(weights[name][0].nbytes())
        base = {}
        for variant in variants:
            if variant in ("nofinish", "nomath_nofinish") and name == "gate_up":
                continue  # gate_up has no split-K
            with Setting(variant, (name,)):
                got = pp.call(name, weights[name][0], xs[name], amaxes[name])()
                us = pp.graph_ms([pp.call(name, g, xs[name], amaxes[name]) for g in weights[name]]) * 1e3
            base.setdefault(VARIANTS[variant][0], got)  # fp16 / table: the bits the exact ones must give
            row = {"matrix": name, "variant": variant, "us": round(us, 2)}
            row["read_us"] = round(floors[name][1], 2)
            if variant in EXACT:
                row["same_bits"] = bool(torch.equal(got, base[VARIANTS[variant][0]]))
            rows.append(row)
            print(json.dumps(row), flush=True)
        for cfg in ALL_AHEAD[name][: 1 if pp.DRY else None]:
            rows.append(pp.time_config(name, cfg, weights[name], xs[name], amaxes[name], base[True]))
            rows[-1]["variant"] = (
                "all_ahead"  # other step sizes sum in another order: close, not the same bits
            )
            print(json.dumps(rows[-1]), flush=True)
            fp16_us = next(r["us"] for r in rows if r.get("matrix") == name and r.get("variant") == "fp16")
            if rows[-1].get("rel_err", 1) < 1e-2 and rows[-1]["us"] < ahead.get(name, (None, fp16_us))[1]:
                ahead[name] = (cfg, rows[-1]["us"])
        torch.cuda.empty_cache() if not pp.DRY else None

    layer_bytes = sum(weights[nm][0].nbytes() for nm in pp.NAMES)
    again = [v for v in ("fp16", "early", "table", "table_early") if v in variants]
    for kind in ("read", *variants, "ahead", "read", *again, "ahead"):
        fns = [
            floors[nm][0][i] if kind == "read" else pp.call(nm, weights[nm][i], xs[nm], amaxes[nm])
            for i in range(pp.LAYERS)
            for nm in pp.NAMES
        ]
        with Setting(kind if kind in VARIANTS else "fp16", pp.NAMES):
            if kind == "ahead":  # fp16 with each matrix's winning ALL_AHEAD config
                gpu.TUNING.update({("int4k", *pp.SHAPES[nm], 1): cfg for nm, (cfg, _) in ahead.items()})
            us = pp.graph_ms([lambda fns=fns: [f() for f in fns]]) * 1e3 / pp.LAYERS
        pct = round(100 * layer_bytes / us / 1e3 / bw, 1)
        rows.append({"layer_chain": kind, "us_layer": round(us, 2), "pct_copy_bw": pct})
        if kind == "ahead":
            rows[-1]["configs"] = {nm: list(cfg) for nm, (cfg, _) in ahead.items()}
        print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gemv_ablation.json").write_text(json.dumps(rows, indent=1))
    # the whole-model A/B's 'tuned' configs (quant_e2e.py --tune): the fp16 GEMV's, with the winners above
    tune = {nm: fp16_config(nm) for nm in pp.NAMES} | {nm: cfg for nm, (cfg, _) in ahead.items()}
    shapes = pp.quant_gpu.SHAPES
    tune = {f"int4k_g128|{n}|{k}|1": list(cfg) for nm, cfg in tune.items() for n, k in [shapes[nm]]}
    source = f"bench/gemv_ablation.py on {gpu_name}: the fp16 GEMV, all steps ahead where that won"
    (out / "ahead_tune.json").write_text(json.dumps({"source": source, "tuning": tune}))


if __name__ == "__main__":
    main()
