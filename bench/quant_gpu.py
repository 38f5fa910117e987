"""GPU benchmark for quantized and sparse weight kernels (issue 6); whole-model decode is bench/quant_e2e.py.

    python3 bench/quant_gpu.py kernels --out $OUT    # per-layer GEMV: check, sweep configs, % of copy BW
    python3 bench/quant_gpu.py ship --sweep $OUT/quant_kernels.json   # winners into engine/data (any box)

For each linear of the Llama-3-8B shape: random N(0, 0.02) weights quantized by `engine.quant.quantize`
and packed by `engine.quant.gpu`; each kernel is checked against the bf16 GEMM of its own dequantized
weight, then timed at M = 1 and 16 over a grid of launch configs, and the best is reported as GB/s of the
bytes that must be read and % of the measured copy bandwidth, beside bf16 `F.linear` and torch's tinygemm
int4 in the same run. Timing: several calls captured in one CUDA graph, as decode runs them (no Python or
launch overhead), each call on its own copy of the weight so that a replay streams > 2x the L2 from HBM;
CUDA events, median of replays (`triton.testing.do_bench`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.quant import gpu  # noqa: E402
from engine.quant.formats import Int4Weight  # noqa: E402
from engine.quant.quantize import prune_2_4, quantize_int4, quantize_int8  # noqa: E402

SHAPES = {  # name: (N, K) of y = x @ W.T, Llama-3-8B (q/k/v and gate/up fused as in our model)
    "qkv": (6144, 4096),
    "o": (4096, 4096),
    "gate_up": (28672, 4096),
    "down": (4096, 14336),
    "lm_head": (128256, 4096),
}


def bench_ms(fn) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=10, rep=40, return_mode="median"))


L2_BYTES = 50 * 2**20  # H100: 50 MB
# --modes sweeps: tile widths and split-K counts (--block-ns, --splits), and the most programs a config may
# launch (--max-programs; one-token GEMVs launch < 1 wave of 4-warp programs: ncu, RESULTS.md)
ONLY_BLOCK_NS, ONLY_SPLITS, MAX_PROGRAMS = (64, 128, 256), (1, 2, 4, 8), 8 * 132


def copies(nbytes: int) -> int:
    """How many copies of a weight make the calls of one graph replay stream > 2x the L2 from HBM."""
    return max(2, min(16, -(-2 * L2_BYTES // max(nbytes, 1))))


def graph_ms(fns: list) -> float:
    """GPU time per call with ``fns`` (one call each, on different copies of the weight) captured in one
    CUDA graph, as decode runs them (the engine replays graphs): Python and launch overheads, which would
    dominate a 10 us kernel, drop out."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for fn in fns:
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for fn in fns:
            fn()
    ms = bench_ms(graph.replay) / len(fns)
    del graph
    return ms


def clone_weight(g: gpu.GpuWeight) -> gpu.GpuWeight:
    return gpu.GpuWeight(g.kind, g.n, g.k, {k: t.clone() for k, t in g.tensors.items()}, g.group)


def copy_gbps() -> float:
    a = torch.empty(2**30 // 2, dtype=torch.bfloat16, device="cuda")
    b = torch.empty_like(a)
    ms = bench_ms(lambda: b.copy_(a))
    return 2 * a.numel() * 2 / ms / 1e6


def make(kind: str, w: torch.Tensor) -> gpu.GpuWeight:
    """``int8``, ``int4k_g128|g64`` (K-packed), ``int4_g128|g64`` (N-packed, as TEAL uses), ``int4_24``."""
    if kind == "int8":
        return gpu.pack(quantize_int8(w))
    group = 64 if kind.endswith("_g64") else 128
    if kind == "int4_24":
        mask = prune_2_4(w)
        q = quantize_int4(w * mask, group=group, mask=mask, clip_grid=(1.0,))
        return gpu.pack(Int4Weight(q.q, q.scale, q.zero, q.group, mask))
    return gpu.pack(quantize_int4(w, group=group, clip_grid=(1.0,)), n_major=not kind.startswith("int4k"))


def grid_for(
    g: gpu.GpuWeight, m: int, stages_grid: tuple[int, ...], one_only: bool = False, only: str = ""
) -> list[tuple]:
    """Launch configs to try: the K-packed int4 kernels get a coarse grid here and a warps x stages
    refinement of the winner in `sweep`; the older kernels keep the grid their earlier sweeps settled on.
    ``only`` ("18/16,5/64/4/2/1"): just these int4k modes (mode/block_r, for the fp16 GEMV also
    /chain/cols/prefetch), block_n 64-256, split 1-8."""
    if g.kind == "int4k" and only:
        modes = [tuple(int(v) for v in item.split("/")) for item in only.split(",")]
        grid = itertools.product(ONLY_BLOCK_NS, ONLY_SPLITS, modes)
        return [(bn, sp, 4, 3, *md) for bn, sp, md in grid]
    if g.kind == "int4k":
        # 4, 5: the packed-fp16 GEMV, (mode, block_r[, chain, cols]); 64 rows with 2 column tiles had
        # the fewest SASS instructions a weight at every block_n (bench/sass_count.py)
        h2 = [(4, 16), (4, 32), (4, 64, 2, 2), (4, 64, 4, 2), (5, 64, 2, 2), (5, 64, 4, 2)]
        # ... and loading the next step during this one's math (PREFETCH), which won all four one-token
        # layers on the H200 (RESULTS.md, third session of 2026-12-03); not yet swept at 2-4 rows
        h2 += [(5, 64, 4, 2, 1), (5, 32, 2, 2, 1), (4, 64, 4, 2, 1)]
        # ... and their scales and biases too (PREFETCH 2), which won all four one-token layers next
        h2 += [(5, 64, 4, 2, 2), (5, 32, 4, 2, 2), (5, 32, 2, 2, 2), (5, 64, 2, 2, 2)]
        # 2-4 rows: the same fp16 GEMV with a row's FMA per code pair (M_ROWS), against the tensor cores
        one = [(0, 16), (2, 16), (3, 16), (3, 32), (3, 64), *h2] if m == 1 else h2 if m <= 4 else []
        # 20: the tensor-core kernel with swapped operands, which won gate_up at 16 rows (RESULTS.md)
        modes = one + [(16, 16), (16, 32), (18, 16), (20, 16), (20, 32)] * (not one_only)
        sizes = itertools.product((64, 128, 256), (1, 2, 4, 8), modes)
        return [(bn, split, 4, 3, *mode) for bn, split, mode in sizes]
    blocks = (32, 64, 128) if g.kind == "int4_24" else (64, 128, 256)
    # one token: int4 reduces without tensor cores (per step, or once with a 2-D accumulator: block_m 0),
    # int8 pads to 16 rows (each won every shape in an earlier full sweep)
    one = m == 1 and g.kind == "int4"
    gathers = (0, 1)  # int8: the slot says the magic-number conversion
    return [
        (bn, split, 4, stages, bm, gather, bk)
        for bn, split, stages, gather in itertools.product(blocks, (1, 2, 4, 8), stages_grid, gathers)
        for bm, bk in ([(1, 0)] + [(0, 32), (0, 64)] * (bn <= 128) if one else [(16, 0)])
    ]


def sweep(
    kind: str,
    gs: list[gpu.GpuWeight],
    x: torch.Tensor,
    thresh: float | None,
    stages_grid: tuple[int, ...],
    one_only: bool = False,
    only: str = "",
) -> tuple[float, tuple]:
    """Fastest launch config for this weight and batch: (ms, config)."""
    g = gs[0]
    m = x.shape[0]
    key = (g.kind + ("_teal" if thresh else ""), g.n, g.k, m)
    best = (float("inf"), None)

    def trial(cfg: tuple) -> None:
        nonlocal best
        bn, split = cfg[0], cfg[1]
        if split > 1 and (g.n // bn) * split > MAX_PROGRAMS:
            return
        gpu.TUNING[key] = cfg
        try:
            ms = graph_ms([lambda c=c: gpu.matmul_small(c, x, thresh) for c in gs])
        except Exception as exc:  # noqa: BLE001 - a config that does not compile is skipped, and said
            print(f"  skip {key} {cfg}: {type(exc).__name__}: {str(exc)[:120]}", flush=True)
            return
        if ms < best[0]:
            best = (ms, cfg)

    for cfg in grid_for(g, m, stages_grid, one_only, only):
        trial(cfg)
    if g.kind == "int4k" and best[1] is not None:
        top = best[1]
        for warps, stages in itertools.product((4, 8), (2, 3, 4)):
            if (warps, stages) != (4, 3):
                trial((top[0], top[1], warps, stages, *top[4:]))
    gpu.TUNING[key] = best[1]
    return best


def tinygemm_ms(w: torch.Tensor, x: torch.Tensor) -> float | None:
    """torch's int4 (``_weight_int4pack_mm``), g128, as the baseline the issue names."""
    try:
        n, k = w.shape
        q = quantize_int4(w, group=128, clip_grid=(1.0,))
        try:  # torch >= 2.5 takes two 4-bit codes per uint8
            packed = torch._convert_weight_to_int4pack((q.q[:, ::2] << 4 | q.q[:, 1::2]).contiguous(), 8)
        except Exception:  # noqa: BLE001 - older torch: one code per int32
            packed = torch._convert_weight_to_int4pack(q.q.to(torch.int32).contiguous(), 8)
        sz = torch.stack([q.scale, (8 - q.zero) * q.scale], dim=-1).transpose(0, 1).contiguous().bfloat16()
        packs = [packed] + [packed.clone() for _ in range(copies(packed.numel() * packed.element_size()) - 1)]
        return graph_ms([lambda p=p: torch._weight_int4pack_mm(x, p, 128, sz) for p in packs])
    except Exception as exc:  # noqa: BLE001 - API differs between torch versions: report, continue
        print(f"  tinygemm unavailable: {type(exc).__name__}: {exc}"[:200], flush=True)
        return None


def kernels(args: argparse.Namespace) -> dict:
    ms_list = tuple(int(v) for v in args.ms.split(","))
    torch.manual_seed(0)
    bw = copy_gbps()
    print(f"copy bandwidth {bw:.0f} GB/s", flush=True)
    cap = ".".join(map(str, torch.cuda.get_device_capability(0)))
    res: dict = {"copy_gbps": bw, "gpu": torch.cuda.get_device_name(0), "arch": cap, "rows": [], "tuning": {}}
    kinds = args.kinds.split(",")
    for name, (n, k) in SHAPES.items():
        if args.shapes and name not in args.shapes.split(","):
            continue
        w = (torch.randn(n, k, device="cuda") * 0.02).bfloat16()
        # one token's input always exists: tinygemm and the TEAL threshold are measured on it
        xs = {m: torch.randn(m, k, device="cuda", dtype=torch.bfloat16) for m in sorted({1, *ms_list})}
        ws = [w] + [w.clone() for _ in range(copies(w.numel() * 2) - 1)]
        base = {m: graph_ms([lambda m=m, c=c, xs=xs: F.linear(xs[m], c) for c in ws]) for m in ms_list}
        del ws
        tg = tinygemm_ms(w, xs[1]) if name != "lm_head" else None
        for kind in kinds:
            if kind in ("int4_24", "int4_g128_teal", "int4_g128") and name == "lm_head":
                continue
            g = make(kind.replace("_teal", ""), w.float())
            dense = gpu.dense_weight(g, torch.bfloat16)
            thresh = None
            if kind.endswith("_teal"):
                thresh = float(xs[1].float().abs().quantile(args.teal))  # TEAL-style: drop the smallest
            for m in ms_list:
                x = xs[m]
                xr = x if thresh is None else x.masked_fill(x.abs() < thresh, 0)
                want = F.linear(xr, dense).float()
                gs = [g] + [clone_weight(g) for _ in range(copies(g.nbytes()) - 1)]
                stages = tuple(int(v) for v in args.stages.split(","))
                key = (g.kind + ("_teal" if thresh else ""), n, k, m)
                gpu.TUNING.pop(key, None)  # the config kb ships for this shape, timed first
                shipped = gpu._config(*key[:3], g.group or 128, m)
                shipped_ms = graph_ms([lambda c=c, x=x, t=thresh: gpu.matmul_small(c, x, t) for c in gs])
                ms, cfg = sweep(kind, gs, x, thresh, stages, args.gemv_only, args.modes)
                swept = {"swept_us": ms * 1e3, "swept_config": cfg}  # the sweep's best, kept or not
                if shipped_ms <= ms:  # a narrowed sweep (--modes) that found nothing faster keeps it
                    ms, cfg = shipped_ms, shipped
                    gpu.TUNING[key] = cfg
                del gs
                got = gpu.matmul_small(g, x, thresh).float()  # the winner's error: sweep left it in TUNING
                err = ((got - want).norm() / want.norm()).item()
                read = g.nbytes() * ((1 - args.teal) if thresh and m == 1 else 1) + x.numel() * 2
                row = {
                    "layer": name, "N": n, "K": k, "kind": kind, "M": m, "rel_err": err, "us": ms * 1e3,
                    "bf16_us": base[m] * 1e3, "speedup_vs_bf16": base[m] / ms, "gbps": read / ms / 1e6,
                    "pct_copy_bw": 100 * read / ms / 1e6 / bw, "config": cfg,
                    "tinygemm_us": tg * 1e3 if (tg and m == 1) else None,
                    "shipped_us": shipped_ms * 1e3, "shipped_config": shipped, **swept,
                }  # fmt: skip
                res["rows"].append(row)
                print(
                    f"{name:8s} {kind:9s} M={m:2d} {ms * 1e3:7.1f} us (bf16 {base[m] * 1e3:6.1f}, "
                    f"tinygemm {row['tinygemm_us'] or 0:5.1f}) {row['gbps']:6.0f} GB/s "
                    f"{row['pct_copy_bw']:5.1f}% err {err:.1e} cfg {cfg} (shipped {shipped_ms * 1e3:.1f} us, "
                    f"swept best {swept['swept_us']:.1f} us {swept['swept_config']})",
                    flush=True,
                )
                res["tuning"][f"{kind}|{n}|{k}|{m}"] = cfg  # bench kind: the group size is in the name
                args.out_path.write_text(json.dumps(res, indent=1))  # a cut-short run keeps its rows
                gpu.TUNING.pop((g.kind + ("_teal" if thresh else ""), n, k, m), None)
            del g, dense
            torch.cuda.empty_cache()
        del w
    return res


SHIP_KINDS = {
    "int8": ("int8", 0),
    "int4k_g128": ("int4k", 128),
    "int4k_g64": ("int4k", 64),
    "int4_24": ("int4_24", 128),
    "int4_g128_teal": ("int4_teal", 128),
}


def ship(args: argparse.Namespace) -> None:
    """Merge a sweep's winners into the table kb ships (`engine.quant.tuning`), for its compute capability."""
    from engine.quant import tuning

    sweep = json.loads(Path(args.sweep).read_text())
    arch = sweep.get("arch") or args.arch
    if not arch:
        raise SystemExit("the sweep does not say its compute capability: pass --arch (e.g. 9.0)")
    table = tuning.merge(sweep, arch, SHIP_KINDS)
    text = json.dumps(table, indent=1, sort_keys=True)
    text = re.sub(r"\[\s+([-\d,\s]+?)\s+\]", lambda mt: "[" + " ".join(mt.group(1).split()) + "]", text)
    tuning.TABLE.write_text(text + "\n")  # one config a line
    print(f"{tuning.TABLE}: {len(table['configs'][arch])} configs for {arch} ({table['sources'][arch]})")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument(
        "phase", choices=["kernels", "ship"], help="ship: --sweep quant_kernels.json into kb's table"
    )
    p.add_argument("--sweep", default="bench/out/quant_kernels.json")
    p.add_argument("--arch", default="")
    p.add_argument("--out", default="bench/out")
    p.add_argument("--kinds", default="int8,int4k_g128,int4k_g64,int4_g128,int4_24,int4_g128_teal")
    p.add_argument("--shapes", default="")
    p.add_argument("--stages", default="3", help="software-pipelining depths to sweep, e.g. 2,3,4")
    p.add_argument("--ms", default="1,4,16", help="batch sizes (rows) to time")
    p.add_argument("--gemv-only", action="store_true")
    modes_help = "int4k: only these mode/block_r[/chain/cols/prefetch], e.g. 18/16,5/64/4/2/1"
    p.add_argument("--modes", default="", help=modes_help)
    p.add_argument("--block-ns", default="64,128,256", help="with --modes: tile widths to sweep")
    p.add_argument("--splits", default="1,2,4,8", help="with --modes: split-K counts to sweep")
    p.add_argument("--max-programs", type=int, default=8 * 132, help="skip split configs launching more")
    p.add_argument("--teal", type=float, default=0.4, help="fraction of activations TEAL zeroes")
    args = p.parse_args()
    global ONLY_BLOCK_NS, ONLY_SPLITS, MAX_PROGRAMS
    ONLY_BLOCK_NS = tuple(int(v) for v in args.block_ns.split(","))
    ONLY_SPLITS = tuple(int(v) for v in args.splits.split(","))
    MAX_PROGRAMS = args.max_programs
    if args.phase == "ship":
        ship(args)
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.out_path = out / "quant_kernels.json"
    res = kernels(args)
    args.out_path.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
