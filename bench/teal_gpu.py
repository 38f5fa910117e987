"""Issue 6: activation sparsity (TEAL) at one token against the dense int4 GEMV kb ships, per layer (GPU).

    python3 bench/teal_gpu.py --out $OUT [--sparsities 0.25,0.3,0.4,0.5] [--shapes qkv,o,gate_up,down]

For each linear of the Llama-3-8B shape: a random N(0, 0.02) weight quantized int4 g128, packed K-packed
for the dense GEMV (`engine.quant.gpu.matmul_small`, the shipped config: what a batch-1 decode runs) and
N-packed for the TEAL GEMV (`engine.quant.triton_teal`). The threshold drops the given share of x's
smallest values (a quantile, so the sparsity is exact). Every variant is checked against the bf16 GEMM of
the dequantized weight on the kept activations, then timed as quant_gpu.py times kernels: calls on
rotated weight copies captured in one CUDA graph (HBM, not L2), median of replays. The TEAL GEMV is timed
with its live-row list made beforehand (as a list made inside the norm ahead would cost), and with the
list's own kernel in the graph (as it runs standalone). Its launch configs are swept at the first
sparsity; the other sparsities take that layer's three best.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.quant_gpu import SHAPES, clone_weight, copies, copy_gbps, graph_ms  # noqa: E402
from engine.quant import gpu  # noqa: E402
from engine.quant import triton_teal as teal  # noqa: E402
from engine.quant.quantize import quantize_int4  # noqa: E402

DEVICE = "cuda"  # the CPU dry run in tests sets "cpu" (Triton interpreter)
BLOCK_NS, ROWS, WARPS, WAVES, PREFETCH = (2048, 4096), (8, 16), (4,), (1, 2), (True, False)


def _err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want).norm() / want.norm())


def _splits(n: int, block_n: int) -> list[int]:
    """Programs a column tile for about 1, 2 and 4 waves of 132 SMs."""
    tiles = -(-n // block_n)
    return sorted({max(1, round(w * gpu._sm_count() / tiles)) for w in WAVES})


def _kw(cfg: tuple) -> dict:
    return dict(zip(("block_n", "rows", "warps", "split", "prefetch"), cfg, strict=True))


def _sweep(ts: list, x: torch.Tensor, thresh: float, want: torch.Tensor, configs: list[tuple]) -> list[tuple]:
    """``(us, config, error)`` of each config that gives the right product, fastest first; the list of
    live rows made beforehand."""
    timed = []
    for cfg in configs:
        kw = _kw(cfg)
        listed = teal.compact(x, thresh, 128, kw["rows"])
        err = _err(teal.teal_matmul(ts[0], x, thresh, listed=listed, **kw), want)
        if err > 1e-2:
            print(f"  {kw} WRONG: err {err:.1e}", flush=True)
            continue
        calls = [lambda c=c, li=listed, kw=kw: teal.teal_matmul(c, x, thresh, listed=li, **kw) for c in ts]
        timed.append((1e3 * graph_ms(calls), cfg, err))
    return sorted(timed)


def _best(ts: list, x: torch.Tensor, thresh: float, timed: list[tuple], dense_us: float) -> dict:
    """The fastest config's figures, with the list's kernel alone and in the graph with the GEMV."""
    us, cfg, err = timed[0]
    kw = _kw(cfg)
    list_us = 1e3 * graph_ms([lambda: teal.compact(x, thresh, 128, kw["rows"])] * 8)
    both_us = 1e3 * graph_ms([lambda c=c: teal.teal_matmul(c, x, thresh, **kw) for c in ts])
    return {
        "live": float((x.abs() >= thresh).float().mean()), "gemv_us": us, "list_us": list_us,
        "with_list_us": both_us, "config": cfg, "err": err, "speedup": dense_us / us,
        "speedup_with_list": dense_us / both_us, "top": [(round(t, 2), c) for t, c, _ in timed[:5]],
    }  # fmt: skip


def layer(name: str, n: int, k: int, sparsities: list[float]) -> dict:
    w = torch.randn(n, k, device=DEVICE) * 0.02
    q = quantize_int4(w, group=128, clip_grid=(1.0,))
    dense, sparse = gpu.pack(q), teal.pack_teal(q)
    ref_w = gpu.dense_weight(dense, torch.bfloat16)
    x = torch.randn(1, k, device=DEVICE, dtype=torch.bfloat16)
    gs = [dense] + [clone_weight(dense) for _ in range(copies(dense.nbytes()) - 1)]
    dense_us = 1e3 * graph_ms([lambda c=c: gpu.matmul_small(c, x) for c in gs])
    dense_err = _err(gpu.matmul_small(dense, x), F.linear(x, ref_w).float())
    del gs
    ts = [sparse] + [clone_weight(sparse) for _ in range(copies(sparse.nbytes()) - 1)]
    row = {"layer": name, "N": n, "K": k, "dense_us": dense_us, "dense_err": dense_err, "sparse": {}}
    print(f"{name:8s} dense int4 GEMV {dense_us:7.2f} us (err {dense_err:.1e})", flush=True)
    ranked: list[tuple] = []
    for s in sparsities:
        thresh = float(x.float().abs().flatten().quantile(s))
        want = F.linear(x.masked_fill(x.abs() < thresh, 0), ref_w).float()
        grid = itertools.product(BLOCK_NS, ROWS, WARPS, PREFETCH)
        configs = ranked[:3] or [(bn, r, wp, sp, pf) for bn, r, wp, pf in grid for sp in _splits(n, bn)]
        timed = _sweep(ts, x, thresh, want, configs)
        ranked = [cfg for _, cfg, _ in timed]
        res = _best(ts, x, thresh, timed, dense_us)
        row["sparse"][f"{s:g}"] = res
        print(
            f"  sparsity {s:.2f} (live {res['live']:.3f}): GEMV {res['gemv_us']:7.2f} us "
            f"({res['speedup']:.2f}x dense), list {res['list_us']:5.2f} us, "
            f"both {res['with_list_us']:7.2f} us ({res['speedup_with_list']:.2f}x); err {res['err']:.1e}; "
            f"cfg {res['config']}",
            flush=True,
        )
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("bench/out"))
    ap.add_argument("--sparsities", default="0.4,0.25,0.3,0.5")
    ap.add_argument("--shapes", default="qkv,o,gate_up,down")
    ap.add_argument(
        "--grid", default="", help="narrow the sweep: 'block_ns;rows;waves;prefetch', e.g. '2048;16;1,2;1'"
    )
    args = ap.parse_args()
    if args.grid:
        global BLOCK_NS, ROWS, WAVES, PREFETCH
        bn, rows, waves, pf = ([int(v) for v in part.split(",")] for part in args.grid.split(";"))
        BLOCK_NS, ROWS, WAVES, PREFETCH = tuple(bn), tuple(rows), tuple(waves), tuple(bool(v) for v in pf)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    sparsities = [float(v) for v in args.sparsities.split(",")]
    res = {"gpu": torch.cuda.get_device_name(0), "copy_gbps": copy_gbps(), "rows": []}
    print(f"{res['gpu']}, copy {res['copy_gbps']:.0f} GB/s", flush=True)
    for name in args.shapes.split(","):
        res["rows"].append(layer(name, *SHAPES[name], sparsities))
        (args.out / "teal_gpu.json").write_text(json.dumps(res, indent=1))
    dense = sum(r["dense_us"] for r in res["rows"])
    print("\n| sparsity | dense layer (us) | TEAL GEMVs | x dense | with 4 list kernels | x dense |")
    print("|---|---:|---:|---:|---:|---:|")
    for s in sparsities:
        key = f"{s:g}"
        gemv = sum(r["sparse"][key]["gemv_us"] for r in res["rows"])
        both = sum(r["sparse"][key]["with_list_us"] for r in res["rows"])
        print(
            f"| {s:.2f} | {dense:.1f} | {gemv:.1f} | {dense / gemv:.2f} | {both:.1f} | {dense / both:.2f} |"
        )


if __name__ == "__main__":
    main()
