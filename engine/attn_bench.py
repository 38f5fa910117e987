"""Attention-only microbenchmark of the GPU readers at the shapes that set TTFT (one layer, Llama-3-8B heads).

Why a separate, small benchmark: the engine-level TTFTs mix linear layers, scheduling and attention; to pick
tile shapes, split counts and the prefill reader (paged Triton kernel, gather + SDPA flash, dense SDPA) we
need each reader's time and error on the exact (new tokens, context) shapes of issue 3, in one process.
Every variant is checked against an fp32 reference (relative Frobenius error) before it is timed.

Run on a GPU: ``python -m engine.attn_bench --out DIR`` (also a phase of bench/engine_gpu.py).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

NH, KVH, HD, BS = 32, 8, 128, 64
# (name, new tokens per sequence, context per sequence, sequences, decode)
SHAPES = [
    ("turn256_ctx15.4K", 256, 15_424, 1, False),
    ("turn257_ctx15.6K", 257, 15_620, 1, False),  # what a 256-token turn reaches the engine as (tails)
    ("turn512_ctx15.4K", 512, 15_424, 1, False),
    ("turn1536_ctx14.1K", 1536, 14_080, 1, False),
    ("chunk2048_ctx16K", 2048, 16_384, 1, False),
    ("chunk2048_ctx8K", 2048, 8_192, 1, False),
    ("fresh2048", 2048, 2_048, 1, False),
    ("fresh1536", 1536, 1_536, 1, False),
    ("decode_b1_ctx192", 1, 192, 1, True),
    ("decode_b1_ctx16K", 1, 16_384, 1, True),
    ("decode_b32_ctx192", 1, 192, 32, True),
]
TILES = [
    {"block_m": bm, "block_n": bn, "num_warps": w, "num_stages": st}
    for bm, bn, w, st in [
        (128, 64, 8, 2),
        (128, 64, 8, 3),
        (128, 64, 4, 3),
        (128, 128, 8, 2),
        (128, 128, 8, 3),
        (64, 64, 4, 3),
        (64, 64, 4, 4),
        (64, 128, 4, 3),
        (64, 128, 8, 2),
        (128, 128, 4, 3),
        (64, 128, 4, 2),
    ]
]
# TMA tiles are one cache block of keys (block_n = BS); the sweep varies rows, warps and stages.
TMA_TILES = [
    {"block_m": bm, "block_n": BS, "num_warps": w, "num_stages": st}
    for bm in (64, 128)
    for w in (4, 8)
    for st in (2, 3, 4)
]


def flops(q_len: int, ctx: int, seqs: int) -> float:
    """Causal attention FLOPs (QK^T and PV): 4 * hd * heads * visible (query, key) pairs."""
    visible = sum(ctx - q_len + i + 1 for i in range(q_len))
    return 4.0 * HD * NH * visible * seqs


def setup(q_len: int, ctx: int, seqs: int, dev, int8: bool = False) -> dict:
    """Random q and paged K/V; ``int8``: the caches as the engine stores int8 KV (values and per-(block,
    head) scales), and the reference reads their dequantized values, so the error is the reader's."""
    g = torch.Generator(device=dev).manual_seed(q_len + ctx + seqs)
    nblk = (ctx + BS - 1) // BS
    pool = nblk * seqs + 1
    kc = torch.randn(pool, BS, KVH, HD, device=dev, generator=g, dtype=torch.bfloat16)
    vc = torch.randn(pool, BS, KVH, HD, device=dev, generator=g, dtype=torch.bfloat16)
    perm = torch.randperm(pool, device=dev, generator=g)
    tables = perm[: nblk * seqs].view(seqs, nblk)
    q = torch.randn(q_len * seqs, NH, HD, device=dev, generator=g, dtype=torch.bfloat16)
    seq_list = [(i * q_len, q_len, ctx, tables[i].tolist()) for i in range(seqs)]
    d = {"q": q, "kc": kc, "vc": vc, "tables": tables, "seqs": seq_list, "ks": None, "vs": None}
    if int8:
        from engine.attention import quantize_block

        d["kc"], d["ks"] = quantize_block(kc)
        d["vc"], d["vs"] = quantize_block(vc)
    return d


def dequantized(d: dict, which: str) -> torch.Tensor:
    """The cache ``which`` ("k" or "v") as the values the reader should see."""
    c, s = d[which + "c"], d[which + "s"]
    return c if s is None else (c.float() * s[:, None, :, None]).to(torch.bfloat16)


def reference(d: dict) -> torch.Tensor:
    """fp32 attention per sequence (bottom-right causal), heads expanded: the error yardstick."""
    outs = []
    for q_start, q_len, ctx, _ in d["seqs"]:
        t = d["tables"][len(outs)]
        k = dequantized(d, "k")[t].flatten(0, 1)[:ctx].float().repeat_interleave(NH // KVH, 1).transpose(0, 1)
        v = dequantized(d, "v")[t].flatten(0, 1)[:ctx].float().repeat_interleave(NH // KVH, 1).transpose(0, 1)
        q = d["q"][q_start : q_start + q_len].float().transpose(0, 1)
        o = torch.empty_like(q)
        for h0 in range(0, NH, 8):  # bound the fp32 score matrix
            mask = (
                torch.arange(ctx, device=q.device)[None, :]
                <= torch.arange(ctx - q_len, ctx, device=q.device)[:, None]
            )
            o[h0 : h0 + 8] = F.scaled_dot_product_attention(
                q[h0 : h0 + 8], k[h0 : h0 + 8], v[h0 : h0 + 8], attn_mask=mask
            )
        outs.append(o.transpose(0, 1))
    return torch.cat(outs)


def variants(
    d: dict,
    decode: bool,
    sweep_splits: tuple[int, ...] = (),
    quick: bool = False,
    tma_splits: tuple[int, ...] = (),
) -> dict:
    """name -> zero-argument callable returning ``[T, NH, HD]``; ``tma_splits``: every TMA tile shape at
    the plan's split count (0) and at each of these."""
    import engine.paged_attn_triton as pat
    from engine.attention import attend_dense, attend_prefix_flash, pack_meta

    meta = pack_meta(d["seqs"], d["q"].device)
    q, kc, vc = d["q"], d["kc"], d["vc"]

    def paged(override, tma: bool = False):
        def fn():
            pat.OVERRIDE, keep, pat.TMA = override, pat.TMA, tma
            try:
                return pat.paged_attention(q, kc, vc, d["ks"], d["vs"], meta, decode)
            finally:
                pat.OVERRIDE, pat.TMA = {}, keep

        return fn

    # "paged_auto": the plan as shipped (TMA tiles where `pat.TMA` allows); "paged_loads": per-thread loads
    out = {"paged_auto": paged({}, tma=pat.TMA), "paged_splits1": paged({"splits": 1}, tma=pat.TMA)}
    out["paged_loads"] = paged({})
    if d["ks"] is None:  # K/V tiles by TMA (bf16 caches, one block a tile: 64-key tiles)
        out["paged_tma"] = paged({}, tma=True)
        out["paged_tma_w8"] = paged({"block_n": BS, "num_warps": 8}, tma=True)
        out["paged_tma_w8_s2"] = paged({"block_n": BS, "num_warps": 8, "num_stages": 2}, tma=True)
        out["paged_n64_w8"] = paged({"block_n": BS, "num_warps": 8})
        for cfg in TMA_TILES if tma_splits and not decode else ():
            name = "paged_tma_m{block_m}_w{num_warps}_s{num_stages}".format(**cfg)
            for sp in tma_splits:  # 0: the plan's split count
                over = {**cfg, "splits": sp} if sp else cfg
                out[name + (f"_x{sp}" if sp else "")] = paged(over, tma=True)
    if not decode:  # the plan before 2026-12-06: 128-key tiles, 8 warps, splits up to one wave
        progs = -(-d["seqs"][0][1] * (NH // KVH) // 128) * KVH * len(d["seqs"])
        tiles = -(-max(s[2] for s in d["seqs"]) // 128)
        sms = pat._num_sms(q.device)
        old = max(1, min(sms // progs, tiles // 4, 32)) if tiles >= 8 else 1
        out["paged_plan_before"] = paged({"block_n": 128, "num_warps": 8, "splits": old})
    for s in () if quick else (2, 4, 8, 16):
        out[f"paged_splits{s}"] = paged({"splits": s})
    if not decode and not quick:
        for cfg in TILES:
            name = "paged_m{block_m}_n{block_n}_w{num_warps}_s{num_stages}".format(**cfg)
            out[name] = paged(cfg)
            for sp in sweep_splits:
                out[f"{name}_x{sp}"] = paged({**cfg, "splits": sp})
    if len(d["seqs"]) == 1 and not decode and d["ks"] is None:  # the SDPA readers take bf16 caches
        _, q_len, ctx, table = d["seqs"][0]
        t0 = d["tables"][0]
        out["prefix_flash"] = lambda: attend_prefix_flash(q, kc, vc, t0, ctx)
        if q_len == ctx:
            k = kc[t0].flatten(0, 1)[:ctx].contiguous()
            v = vc[t0].flatten(0, 1)[:ctx].contiguous()
            out["dense_sdpa"] = lambda: attend_dense(q, k, v)
            from torch.nn.attention import SDPBackend, sdpa_kernel

            for name, be in (
                ("dense_flash", SDPBackend.FLASH_ATTENTION),
                ("dense_cudnn", SDPBackend.CUDNN_ATTENTION),
            ):

                def fn(be=be):
                    with sdpa_kernel(be):
                        kk = k.repeat_interleave(NH // KVH, 1) if be == SDPBackend.CUDNN_ATTENTION else k
                        vv = v.repeat_interleave(NH // KVH, 1) if be == SDPBackend.CUDNN_ATTENTION else v
                        return attend_dense(q, kk, vv)

                out[name] = fn
    return out


def run(
    out_dir: Path | None = None,
    shapes: str = "",
    sweep: tuple[int, ...] = (),
    quick: bool = False,
    kv_dtypes: tuple[str, ...] = ("bf16",),
    tma_splits: tuple[int, ...] = (),
) -> dict:
    import triton.testing

    dev = torch.device("cuda")
    res: dict = {"probe": {}}
    try:
        import inspect

        from torch.nn.attention import varlen

        res["probe"]["varlen_attn"] = str(inspect.signature(varlen.varlen_attn))
    except Exception as e:  # noqa: BLE001
        res["probe"]["varlen_attn"] = f"unavailable: {e}"
    cases = [(s, kv) for s in SHAPES for kv in kv_dtypes]
    for (name, q_len, ctx, seqs, decode), kv in cases:
        if shapes and not any(name.startswith(x) for x in shapes.split(",")):
            continue
        d = setup(q_len, ctx, seqs, dev, int8=kv == "int8")
        name = name if kv == "bf16" else f"{name}_{kv}"
        ref = reference(d)
        fl = flops(q_len, ctx, seqs)
        rows = {}
        for vname, fn in variants(d, decode, sweep, quick, tma_splits).items():
            try:
                o = fn()
                err = ((o.float() - ref).norm() / ref.norm()).item()
                ms = triton.testing.do_bench(fn, warmup=10, rep=60, return_mode="median")
                rows[vname] = {
                    "ms": round(ms, 4),
                    "tflops": round(fl / ms / 1e9, 1),
                    "rel_err": float(f"{err:.2e}"),
                }
            except Exception as e:  # noqa: BLE001 - a config that does not compile is a result too
                rows[vname] = {"error": f"{type(e).__name__}: {str(e)[:120]}"}
        best = min((r["ms"], k) for k, r in rows.items() if "ms" in r and r["rel_err"] < 2e-2)
        res[name] = {"flops": fl, "variants": rows, "best": best[1]}
        auto = rows.get("paged_auto", {})
        print(f"{name:22s} auto {auto.get('ms')} ms ({auto.get('tflops')} TF/s, err {auto.get('rel_err')})"
              f"  best {best[1]} {best[0]:.4f} ms", flush=True)  # fmt: skip
        shown = ("prefix_flash", "dense_sdpa", "dense_flash", "dense_cudnn", "paged_splits1", "paged_loads")
        shown += ("paged_plan_before", "paged_tma", "paged_tma_w8", "paged_tma_w8_s2", "paged_n64_w8")
        for k in shown:
            if k in rows:
                print(f"    {k:16s} {rows[k]}", flush=True)
        del d, ref
        torch.cuda.empty_cache()
        if out_dir is not None:
            (out_dir / "attn_bench.json").write_text(json.dumps(res, indent=1))
    return res


def smoke(dev: torch.device) -> dict:
    """End to end on a 2-layer model of the 8B head shape: the Triton/dense readers (prefix turn with KV
    splits, CUDA-graph decode) against the gather path, same random weights and prompts."""
    import transformers

    from engine.config import EngineConfig, ModelConfig
    from engine.llm_engine import Engine
    from engine.loader import load_tensors
    from engine.model import LlamaForCausalLM
    from engine.sampling import SamplingParams

    kw = dict(vocab_size=2048, hidden_size=4096, intermediate_size=4096, num_hidden_layers=2)
    kw.update(num_attention_heads=NH, num_key_value_heads=KVH, max_position_embeddings=32768)
    torch.manual_seed(0)
    hf_cfg = transformers.LlamaConfig(**kw)
    state = transformers.LlamaForCausalLM(hf_cfg).to(torch.bfloat16).state_dict()
    with torch.device("meta"):
        m = LlamaForCausalLM(ModelConfig.from_hf(hf_cfg.to_dict()))
    m = m.to(torch.bfloat16).to_empty(device=dev)
    load_tensors(m, state)
    m.finish_load(dev)
    g = torch.Generator().manual_seed(1)
    p1 = torch.randint(10, 2048, (3000,), generator=g).tolist()
    new = torch.randint(10, 2048, (256,), generator=g).tolist()
    sp = SamplingParams(max_tokens=24, ignore_eos=True)
    out = {}
    for backend in ("gather", "auto"):
        cfg = EngineConfig(model="<mem>", device="cuda", block_size=BS, kv_cache_gb=1.0, attn_backend=backend)
        eng = Engine(cfg, model=m, fingerprint="smoke")
        a = eng.complete(p1, sp)
        b = eng.complete(p1 + a.token_ids + new, sp)
        out[backend] = {"t1": a.token_ids, "t2": b.token_ids, "cached2": b.usage["cached_tokens"]}
        eng.close()
    same = [sum(x == y for x, y in zip(out["gather"][k], out["auto"][k], strict=True)) for k in ("t1", "t2")]
    res = {"turn1_same": same[0], "turn2_same": same[1], "cached2": out["auto"]["cached2"], "of": 24}
    print("smoke", res, flush=True)
    return res


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="bench/out")
    p.add_argument("--shapes", default="", help="comma-separated name prefixes (default: all)")
    p.add_argument("--sweep", default="", help="comma-separated split counts to try with every tile shape")
    p.add_argument("--tma-sweep", default="", help="split counts (0: the plan's) for every TMA tile shape")
    p.add_argument("--no-smoke", action="store_true")
    p.add_argument("--quick", action="store_true", help="only the chosen plan and the SDPA readers")
    p.add_argument("--kv", default="bf16", help="KV dtypes, comma-separated: bf16, int8")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.cuda.set_per_process_memory_fraction(
        min(1.0, 24 * 1024**3 / torch.cuda.get_device_properties(0).total_memory)
    )
    sweep = tuple(int(x) for x in a.sweep.split(",") if x)
    tma = tuple(int(x) for x in a.tma_sweep.split(",") if x)
    res = run(out, a.shapes, sweep, a.quick, tuple(a.kv.split(",")), tma)
    if a.no_smoke:
        return
    try:
        res["smoke"] = smoke(torch.device("cuda"))
    except Exception as e:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        res["smoke"] = f"error: {e}"
    (out / "attn_bench.json").write_text(json.dumps(res, indent=1))
    print("peak GiB", round(torch.cuda.max_memory_allocated() / 1024**3, 2), "log2e", math.log2(math.e))


if __name__ == "__main__":
    main()
