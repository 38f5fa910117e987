"""Does the one-token int4 GEMV read faster when each program's column tile is one contiguous stream?

    python3 bench/panel_probe.py            # GPU: graph timing, 8 layers of the 8B shape, int4 g128

Why: read back to back with PDL, a layer's int4 bytes stream at ~89 % of the copy bandwidth (42.9 us on an
H100, `bench/persistent_probe.py`), but the layer's four GEMVs take ~60 us (bench/RESULTS.md, issue 6).
The plain read streams contiguous blocks; a GEMV program of the ``[K // 8, N]`` layout reads 64-128 bytes
from each of K / 8 rows, 16-114 KB apart. `gpu.to_panels` stores the same words, scales and biases as
``[N // P, rows, P]``, so that a program's tile is one run of memory (`triton_w4k_h2` ``PANEL``); same
bits, checked here on the GPU and in CI (`tests/engine/quant/test_gpu_kernels.py`).

Measured, each as a chain of 8 launches with PDL in one CUDA graph (as decode replays them):
- per matrix: the plain read of its bytes, the shipped GEMV on rows, the same config on panels (the
  tile's width, and the program's), then a few configs on panels;
- per layer (qkv, o, gate_up writing silu(gate) * up, down): the plain reads, the shipped GEMVs on rows,
  on panels, and on panels with each matrix's best config of this run.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

DRY = (
    "--dry" in sys.argv
)  # the script's logic on a CPU box: Triton's interpreter, N / 16 and K / 4, no timing
if DRY:
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import triton  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import quant_gpu  # noqa: E402
from bench.ncu_gemv import _read_sum  # noqa: E402
from bench.quant_gpu import make  # noqa: E402
from engine.quant import gpu  # noqa: E402

DEV = "cpu" if DRY else "cuda"
LAYERS = 2 if DRY else 8
SHAPES = {nm: (n // 16, k // 4) for nm, (n, k) in quant_gpu.SHAPES.items()} if DRY else quant_gpu.SHAPES
NAMES = ("qkv", "o", "gate_up", "down")
AMAX = ("qkv", "gate_up")  # the inputs that come with the norm's absmax in the model
INTER = SHAPES["gate_up"][0] // 2
PDL_KW = {} if DRY else {"PDL": True, "launch_pdl": True}  # the interpreter knows no PDL


def graph_ms(fns: list) -> float:
    if DRY:
        for fn in fns:
            fn()
        return 1.0
    return quant_gpu.graph_ms(fns)


def copy_gbps() -> float:
    return 1.0 if DRY else quant_gpu.copy_gbps()


def call(name: str, g: gpu.GpuWeight, x: torch.Tensor, amax: torch.Tensor | None):
    silu = INTER if name == "gate_up" else 0
    return lambda: gpu.matmul_small(g, x, amax=amax, silu_inter=silu)


def matrix(name: str) -> tuple[list[gpu.GpuWeight], torch.Tensor, torch.Tensor | None]:
    """``LAYERS`` copies of one random int4 g128 weight of this matrix (a chain reads each from HBM, not
    L2), a one-token bf16 input, and its absmax where the model gives one (``AMAX``)."""
    n, k = SHAPES[name]
    g0 = make("int4k_g128", torch.randn(n, k, device=DEV) * 0.02)
    weights = [g0] + [quant_gpu.clone_weight(g0) for _ in range(LAYERS - 1)]
    x = torch.randn(1, k, device=DEV, dtype=torch.bfloat16)
    return weights, x, x.abs().amax(-1).float() if name in AMAX else None


def time_config(name: str, cfg: tuple, weights: list, x: torch.Tensor, a, want: torch.Tensor) -> dict:
    """One launch config of this matrix: its chain time (us a call) and its error against ``want``, or
    the error that kept it from running (a config this shape cannot run: said, and the sweep goes on)."""
    key = ("int4k", *SHAPES[name], 1)
    return time_keyed(name, key, cfg, [call(name, g, x, a) for g in weights], want)


def time_keyed(name: str, key: tuple, cfg: tuple, fns: list, want: torch.Tensor) -> dict:
    """`time_config` for any kernel kind: ``cfg`` set at ``gpu.TUNING[key]``, ``fns`` one call a weight copy
    (the first one checked against ``want``)."""
    gpu.TUNING[key] = cfg
    try:
        got = fns[0]()
        err = float((got.float() - want.float()).abs().max() / want.float().abs().max())
        us = graph_ms(fns) * 1e3
        return {"matrix": name, "config": list(cfg), "us": round(us, 2), "rel_err": round(err, 5)}
    except Exception as e:
        return {"matrix": name, "config": list(cfg), "error": repr(e)[:200]}
    finally:
        gpu.TUNING.pop(key, None)


def reads(nbytes: int) -> tuple[list, float]:
    """The fastest PDL read of ``nbytes`` (three block shapes): its launches and us a call of a chain."""
    n = nbytes // 4
    bufs = [torch.randint(0, 7, (n,), dtype=torch.int32, device=DEV) for _ in range(LAYERS)]
    best = None
    for block, steps, warps in ((2048, 2, 4), (4096, 2, 8), (8192, 1, 8)):
        grid = (triton.cdiv(n, block * steps),)
        out = torch.empty(grid[0], dtype=torch.int32, device=DEV)
        fns = [
            lambda b=b, grid=grid, out=out, block=block, steps=steps, warps=warps: _read_sum[grid](
                b, out, n, BLOCK=block, STEPS=steps, num_warps=warps, **PDL_KW
            )
            for b in bufs
        ]
        us = graph_ms(fns) * 1e3
        if best is None or us < best[1]:
            best = (fns, us)
    return best


def start() -> tuple[float, str]:
    """Every probe's start: the interpreter's setup where dry, seed 0, then the copy bandwidth and the GPU's
    name ("dry" without one)."""
    if DRY:
        _dry_setup()
    torch.manual_seed(0)
    return copy_gbps(), "dry" if DRY else torch.cuda.get_device_name()


def _dry_setup() -> None:
    """Triton 3.6's interpreter scalars (as tests/engine/test_attention.py), and the 8B shapes' configs for
    the smaller shapes."""
    import triton.runtime.interpreter as ti

    orig, config = ti._patch_lang_tensor, gpu._config

    def patched(tensor, scope):
        orig(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    ti._patch_lang_tensor = patched
    from engine.quant import tuning

    table = tuning.shipped("9.0")
    gpu._config = lambda kind, n, k, group, m: (
        gpu.TUNING.get((kind, n, k, m))
        or table.get((kind, group, n * 16, k * 4), {}).get(m)
        or config(kind, n, k, group, m)
    )


def sweep(
    name: str, weights: list, x: torch.Tensor, a: torch.Tensor | None, cfg: tuple, best: tuple
) -> tuple:
    """A few configs on panels of their tile's width (wider / narrower tiles, steps, splits): the fastest
    of them and ``best`` (us, config, panel), each checked against the shipped config's output."""
    n, k = SHAPES[name]
    want = call(name, weights[0], x, a)()
    stages = cfg[3]
    if name == "gate_up":  # split-K would lose the SiLU epilogue
        grid = [(bn, 1, w, stages, 5, br, 2, 2, 2) for bn in (32, 64) for br in (32, 64, 128) for w in (4, 8)]
    else:
        sp = cfg[1]
        grid = [
            (bn, s, 4, stages, 5, br, 2, 2, 2)
            for bn in (32, 64, 128)
            for br in (32, 64)
            for s in sorted({max(1, sp // 2), sp, sp * 2})
        ]
    key = ("int4k", n, k, 1)
    for c in grid[:2] if DRY else grid:
        if c == tuple(cfg):
            continue
        gpu.TUNING[key] = c
        try:
            panel = c[0] // c[7]
            gp = [gpu.to_panels(g, panel) for g in weights]
            got = call(name, gp[0], x, a)()
            err = float((got.float() - want.float()).abs().max() / want.float().abs().max())
            us = graph_ms([call(name, g, x, a) for g in gp]) * 1e3
            print(json.dumps({"matrix": name, "config": list(c), "panel": panel, "us": round(us, 2),
                              "rel_err_vs_shipped": round(err, 5)}), flush=True)  # fmt: skip
            if err < 2e-2 and us < best[0]:
                best = (us, c, panel)
            del gp
        except Exception as e:  # a config this shape cannot run: say so, go on
            print(json.dumps({"matrix": name, "config": list(c), "error": repr(e)[:200]}), flush=True)
        finally:
            gpu.TUNING.pop(key, None)
    return best


def main() -> None:
    bw, gpu_name = start()
    print(json.dumps({"copy_gbps": round(bw, 1), "gpu": gpu_name}), flush=True)
    weights, xs, amaxes, floors, best_cfg, shipped = {}, {}, {}, {}, {}, {}
    for name in NAMES:
        n, k = SHAPES[name]
        weights[name], xs[name], amaxes[name] = matrix(name)
        g0 = weights[name][0]
        cfg, h2 = gpu._int4k_config(g0, gpu._config("int4k", n, k, 128, 1), 1)
        shipped[name] = cfg
        tile = cfg[0] // h2[1]
        floors[name] = reads(g0.nbytes())
        row = {"matrix": name, "mb": round(g0.nbytes() / 1e6, 2), "config": list(cfg)}
        row["read_us"] = round(floors[name][1], 2)
        x, a = xs[name], amaxes[name]
        want = call(name, g0, x, a)()
        row["rows_us"] = round(graph_ms([call(name, g, x, a) for g in weights[name]]) * 1e3, 2)
        best = (row["rows_us"], cfg, 0)
        for panel in sorted({tile, cfg[0]} if name != "gate_up" else {tile}):
            gp = [gpu.to_panels(g, panel) for g in weights[name]]
            ok = torch.equal(call(name, gp[0], x, a)(), want)
            us = graph_ms([call(name, g, x, a) for g in gp]) * 1e3
            row[f"panel{panel}_us"], row[f"panel{panel}_same_bits"] = round(us, 2), ok
            if ok and us < best[0]:
                best = (us, cfg, panel)
            del gp
        print(json.dumps(row), flush=True)
        best_cfg[name] = best
        torch.cuda.empty_cache()

    # the layer chain: qkv, o, gate_up (SiLU), down, LAYERS times
    layer_bytes = sum(weights[nm][0].nbytes() for nm in NAMES)

    def chain(layout: str) -> float:
        fns = []
        for i in range(LAYERS):
            for nm in NAMES:
                if layout == "read":
                    fns.append(floors[nm][0][i])
                    continue
                panel = {"rows": 0, "panel": shipped[nm][0] // (shipped[nm][7]), "best": best_cfg[nm][2]}[
                    layout
                ]
                g = weights[nm][i] if panel == 0 else gpu.to_panels(weights[nm][i], panel)
                fns.append(call(nm, g, xs[nm], amaxes[nm]))
        for nm in NAMES:
            if layout == "best":
                gpu.TUNING[("int4k", *SHAPES[nm], 1)] = tuple(best_cfg[nm][1])
        try:
            return graph_ms([lambda: [f() for f in fns]]) * 1e3 / LAYERS
        finally:
            for nm in NAMES:
                gpu.TUNING.pop(("int4k", *SHAPES[nm], 1), None)

    def report(layout: str) -> None:
        us = chain(layout)
        pct = round(100 * layer_bytes / us / 1e3 / bw, 1)
        print(json.dumps({"layer_chain": layout, "us_layer": round(us, 2), "pct_copy_bw": pct}), flush=True)
        torch.cuda.empty_cache()

    for layout in ("read", "rows", "panel", "rows", "panel", "read"):
        report(layout)
    for name in NAMES:  # then the configs, last: the chains above are what a short run must reach
        best = best_cfg[name] = sweep(
            name, weights[name], xs[name], amaxes[name], shipped[name], best_cfg[name]
        )
        print(json.dumps({"matrix": name, "best_us": round(best[0], 2), "best_config": list(best[1]),
                          "best_panel": best[2]}), flush=True)  # fmt: skip
    report("best")


if __name__ == "__main__":
    main()
