"""Decode-step microbenchmarks that pick between kernel variants, timed as decode runs them (CUDA graphs).

    python3 bench/decode_probe.py --out $OUT [--h2-ref FILE[,FILE...]] [--parts h2,attn]

Why: at batch 1 the int4 decode step is a chain of ~290 small kernels, so a variant's worth is its time
inside a graph replay, where launch overhead is ~1 us, not under ``do_bench`` of single launches.
- ``h2``: the packed-fp16 int4 GEMV (`engine.quant.triton_w4k_h2`) at its shipped configs for the
  Llama-3-8B layers, against the kernels of ``--h2-ref`` (earlier versions of that module, same
  signature) in the same process: both checked against the bf16 GEMM of the dequantized weight.
- ``chain``: whether PDL (`engine.pdl`) shortens chains of dependent kernels in a graph.
- ``attn``: the paged decode attention (`engine.paged_attn_triton`) at short and long contexts, batch 1
  and 16, over tile widths, warps and KV splits, with the table width a decode graph gives it.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import itertools
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.pdl_check import mlp_block  # noqa: E402
from bench.quant_gpu import SHAPES, clone_weight, copies, copy_gbps, graph_ms, make  # noqa: E402
from engine import pdl  # noqa: E402
from engine.quant import gpu  # noqa: E402
from engine.quant import triton_w4k_h2 as th2  # noqa: E402


def _load(path: str):
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@triton.jit
def _no_split_sum(y_ptr, ws_ptr, lock_ptr, M, N, stride_ym, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  SPLIT: tl.constexpr):  # fmt: skip
    """`_finish_split` left out: for timing what the split-K sum costs (the output is left unwritten)."""
    pass


def _without_split_sum():
    """A fresh copy of the fp16 GEMV whose programs store their partial rows and stop: no arrival
    ticket, no sum by the last program. Timing only (y stays unwritten)."""
    mod = _load(th2.__file__)
    mod._finish_split = _no_split_sum
    return mod.w4k_gemv_h2_kernel


def h2_ab(
    ref_path: str | None,
    ms: tuple[int, ...],
    launches: str = "",
    amax_in: bool = False,
    no_tail: bool = False,
) -> list[dict]:
    """Each layer at each batch: microseconds of the current kernel and of each reference, same config
    (references launch without PDL); ``launches`` ("0,1"): the current kernel also with PDL off / on;
    ``amax_in``: also with each row's absmax given (AMAX_IN: no absmax pass in the kernel; the absmax is
    made before the timed graph, as a producer kernel would hand it over); ``no_tail``: also without the
    split-K sum at its end (`_without_split_sum`), whose cost is the difference: the most any scheme that
    moves the sum elsewhere could save (handing the partials to the next kernel cost more: RESULTS.md)."""
    bw = copy_gbps()
    current = th2.w4k_gemv_h2_kernel
    variants = {"current": (current, pdl.ENABLED, False)}  # kernel, PDL, absmax given
    for path in filter(None, (ref_path or "").split(",")):  # each reference file, named by its stem
        variants[Path(path).stem] = (_load(path).w4k_gemv_h2_kernel, False, False)
    for item in filter(None, launches.split(",")):
        variants[f"pdl{item}"] = (current, bool(int(item)), False)
    if amax_in:
        variants["amax_in"] = (current, pdl.ENABLED, True)
    if no_tail:
        variants["no_tail"] = (_without_split_sum(), pdl.ENABLED, False)
    rows = []
    for name, (n, k) in SHAPES.items():
        if name == "lm_head":
            continue
        w = (torch.randn(n, k, device="cuda") * 0.02).bfloat16()
        g = make("int4k_g128", w.float())
        dense = gpu.dense_weight(g, torch.bfloat16)
        gs = [g] + [clone_weight(g) for _ in range(copies(g.nbytes()) - 1)]
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            x[:, 7] = 900.0  # a down_proj-like outlier: the scaling must keep the rest exact
            want = F.linear(x, dense).float()
            row = {"layer": name, "M": m, "config": list(gpu._config("int4k", n, k, 128, m))}
            for label, (kern, on, given) in variants.items():
                if given and row["config"][4] not in (4, 5):  # only the fp16 GEMV takes an absmax
                    continue
                amax = x.abs().amax(-1).float() if given else None  # made before the timed graph
                th2.w4k_gemv_h2_kernel = kern
                pdl.ENABLED = on
                try:
                    got = gpu.matmul_small(g, x, amax=amax).float()
                    if label != "no_tail":  # its output is left unwritten
                        row[label + "_err"] = float(((got - want).norm() / want.norm()).item())
                    us = graph_ms([lambda c=c, x=x, a=amax: gpu.matmul_small(c, x, amax=a) for c in gs]) * 1e3
                    row[label + "_us"] = round(us, 2)
                    row[label + "_pct_bw"] = round(100 * g.nbytes() / us / 1e3 / bw, 1)
                finally:
                    th2.w4k_gemv_h2_kernel = current
                    pdl.ENABLED = variants["current"][1]
            rows.append(row)
            print(json.dumps(row), flush=True)
        del gs, g, dense, w
        torch.cuda.empty_cache()
    return rows


def chain_probe() -> list[dict]:
    """Whether PDL takes effect inside a CUDA graph, per kernel: 256 dependent one-row RMSNorms, and 4 MLP
    blocks (`bench.pdl_check.mlp_block`: add + RMSNorm -> int4 gate_up -> SiLU * up -> int4 down -> add +
    RMSNorm) on their own weights, each timed with PDL off and on, twice, alternating."""
    from engine import fused_ops

    hidden, inter = 4096, 14336
    w = torch.rand(hidden, device="cuda", dtype=torch.bfloat16) + 0.5
    x = torch.randn(1, hidden, device="cuda", dtype=torch.bfloat16)
    gus = [make("int4k_g128", (torch.randn(2 * inter, hidden, device="cuda") * 0.02)) for _ in range(4)]
    downs = [make("int4k_g128", (torch.randn(hidden, inter, device="cuda") * 0.02)) for _ in range(4)]

    def norms() -> None:
        y = x
        for _ in range(256):
            y = fused_ops.rmsnorm(y, w, 1e-5)

    def mlps() -> None:
        y = x
        for gu, dn in zip(gus, downs, strict=True):
            y = mlp_block(y, w, gu, dn, inter)

    rows, default = [], pdl.ENABLED
    for name, fn, per in (("rmsnorm x256", norms, 256), ("mlp x4", mlps, 4)):
        row = {"chain": name}
        for on in (False, True, False, True):
            pdl.ENABLED = on
            try:
                row.setdefault(f"pdl{int(on)}_us", []).append(round(graph_ms([fn]) * 1e3 / per, 2))
            finally:
                pdl.ENABLED = default
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def attn_probe() -> list[dict]:
    """Decode attention: (batch, context) x (block_n, warps, splits); stages 2-3."""
    import engine.paged_attn_triton as pat
    from engine.attention import pack_meta

    nh, kvh, hd, bs = 32, 8, 128, 64
    rows = []
    for batch, ctx in ((1, 160), (1, 1100), (1, 4200), (16, 160), (16, 1100)):
        nblk = -(-ctx // bs)
        width = 1 << (nblk - 1).bit_length()
        pool = nblk * batch + 1
        # 8 pools, one a call of the graph: each layer of a step reads its own KV from HBM, not from L2
        kvs = [torch.randn(2, pool, bs, kvh, hd, device="cuda", dtype=torch.bfloat16) for _ in range(8)]
        kc, vc = kvs[0]
        tables = torch.randperm(pool, device="cuda")[: nblk * batch].view(batch, nblk)
        q = torch.randn(batch, nh, hd, device="cuda", dtype=torch.bfloat16)
        seqs = [(i, 1, ctx, tables[i].tolist()) for i in range(batch)]
        meta = pack_meta(seqs, q.device, width=width)
        meta["max_ctx"] = width * bs  # as a decode graph sets it
        auto = pat.plan(nh // kvh, width * bs, batch, kvh, bs, True, q.device)
        ref = pat.paged_attention(q, kc, vc, None, None, meta, True).float()
        grid = itertools.product((32, 64, 128), (2, 4, 8), (2, 3), (1, 2, 4, 8))
        for bn, warps, stages, splits in [(None, None, None, None), *grid]:
            over = {"block_n": bn, "num_warps": warps, "num_stages": stages, "splits": splits}
            over = {} if bn is None else over
            if splits and splits > 1 and -(-ctx // bn) < splits:
                continue
            pat.OVERRIDE = over
            try:
                out = pat.paged_attention(q, kc, vc, None, None, meta, True).float()
                err = float(((out - ref).norm() / ref.norm()).item())
                us = graph_ms([functools.partial(pat.paged_attention, q, kv[0], kv[1], None, None, meta, True)
                               for kv in kvs]) * 1e3  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - a config that does not compile is a result too
                print(f"  skip {over}: {type(exc).__name__}: {str(exc)[:100]}", flush=True)
                continue
            finally:
                pat.OVERRIDE = {}
            row = {"batch": batch, "ctx": ctx, **(over or {"auto": auto}), "us": round(us, 2), "err": err}
            rows.append(row)
        mine = [r for r in rows if r["batch"] == batch and r["ctx"] == ctx]
        best = min((r for r in mine if r["err"] < 1e-2), key=lambda r: r["us"])
        print(f"attn b{batch} ctx{ctx}: auto {mine[0]['us']} us {mine[0].get('auto')}; best {best}",
              flush=True)  # fmt: skip
        del kvs, kc, vc
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="bench/out")
    p.add_argument("--h2-ref", default=None, help="earlier triton_w4k_h2.py files, comma-separated")
    p.add_argument("--ms", default="1,4")
    p.add_argument("--launches", default="", help="h2 also with PDL off/on: '0,1'")
    p.add_argument("--amax-in", action="store_true", help="h2 also with each row's absmax given")
    p.add_argument("--no-tail", action="store_true", help="h2 also without the split-K sum (timing only)")
    p.add_argument("--parts", default="h2,attn")
    a = p.parse_args()
    torch.manual_seed(0)
    res = {"gpu": torch.cuda.get_device_name(0)}
    parts = a.parts.split(",")
    if "h2" in parts:
        res["h2"] = h2_ab(a.h2_ref, tuple(int(v) for v in a.ms.split(",")), a.launches, a.amax_in, a.no_tail)
    if "chain" in parts:
        res["chain"] = chain_probe()
    if "attn" in parts:
        res["attn"] = attn_probe()
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "decode_probe.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
