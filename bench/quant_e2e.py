"""Whole-model decode with quantized / sparse weights (issue 6), Llama-3-8B shape, 24 GiB cap, vs HF compiled.

    python3 bench/quant_e2e.py --out $OUT [--modes bf16,int8,int4,...] [--tune quant_kernels.json]
    python3 bench/quant_e2e.py --tiny --cpu --modes bf16,int4   # tests the script on the CPU

Each mode builds the random-weight model (N(0, 0.02), seed 0), quantizes it through the product path
(`engine.quant.policy.apply_policy`, the same spec strings as ``KB_ENGINE_QUANT``; TEAL and Wanda calibrate
on random token ids, the only text a random model has), packs it for the GPU, and runs our engine with CUDA
graphs: decode tok/s at batch 1 and 16 (+ % of the bandwidth roofline: bytes that must be read per step /
measured copy bandwidth), a 2K-token prefill's TTFT, peak GPU memory and the KV tokens that fit. The
baseline, `transformers` bf16 with a static cache + torch.compile, runs first, in a child process of the
same run (`hf_baseline`).
``--tune``: launch configs measured by ``bench/quant_gpu.py kernels`` (else the built-in heuristic).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.chat_gpu import random_llama8b  # noqa: E402
from bench.engine_gpu import Bench  # noqa: E402
from bench.gpu_base import rerun_in_child  # noqa: E402
from bench.quant_e2e_switches import PANELS, _apply, _knobs, drop_graphs, load_tuning  # noqa: E402
from engine.config import EngineConfig  # noqa: E402
from engine.llm_engine import Engine  # noqa: E402
from engine.quant import gpu  # noqa: E402
from engine.quant.calibrate import calibrate  # noqa: E402
from engine.quant.memory import weight_bytes  # noqa: E402
from engine.quant.policy import QuantPolicy, apply_policy  # noqa: E402
from engine.sampling import SamplingParams  # noqa: E402

GiB = 1024**3
MODES = {  # name -> KB_ENGINE_QUANT spec; int4 modes keep lm_head at int8 (the mixed policy users ask for)
    "bf16": "none",
    "int8": "int8,lm_head=int8",
    "int4": "int4:g128,lm_head=int8",
    "int4_g64": "int4:g64,lm_head=int8",
    "int4_24": "int4:g128+2:4,lm_head=int8",
    "int4_teal": "int4:g128+teal0.4,lm_head=int8",
}


def build(b: Bench, spec: str, tiny: bool) -> tuple[torch.nn.Module, dict]:
    model = random_llama8b(b.shape["vocab_size"], [], tiny)
    policy = QuantPolicy.parse(spec)
    calib = None
    if policy.needs_calibration:
        calib = calibrate(model, token_ids=[b.rand_ids(512) for _ in range(2)], max_tokens=1024)
    report = apply_policy(model, policy, calib=calib)
    if b.dev.type == "cuda":
        gc.collect()
        gpu.prepare_model(model)  # pack now: the KV pool is sized from what is left
    return model, report


@contextlib.contextmanager
def recomputing(eng: Engine) -> Iterator[None]:
    """Prefix reuse off inside: every timed prompt is computed, not found in the cache of an earlier run."""
    eng.scheduler.prefix_cache = False
    try:
        yield
    finally:
        eng.scheduler.prefix_cache = True


def decode(b: Bench, eng: Engine, batch: int, n_new: int) -> float:
    prompts = [b.rand_ids(128) for _ in range(batch)]

    def run(n: int) -> None:
        seqs = [eng.submit(p, SamplingParams(max_tokens=n, ignore_eos=True)) for p in prompts]
        for s in seqs:
            while s.events.get().type != "finish":
                pass

    with recomputing(eng):
        run(n_new)
        run(n_new)
        # alternated, best of 5 each: a median of 3 let one slow prefill in the short runs shrink the
        # difference (one call read 522.7 tok/s from a graph that needs 2.34 ms a step)
        t1 = tn = float("inf")
        for _ in range(5):
            t1 = min(t1, b.timed(lambda: run(1)))
            tn = min(tn, b.timed(lambda: run(n_new)))
    return batch * (n_new - 1) / ((tn - t1) / 1e3)


def profile_kernels(title: str, fn, per: int = 1) -> None:
    """The GPU kernels of ``fn`` by total time, and their sum against the wall time: where a quantized
    prefill loses to bf16, and how much of a decode step is kernels rather than gaps between them."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    wall_us = (time.perf_counter() - t0) * 1e6
    events = prof.key_averages()
    busy_us = sum(e.device_time_total for e in events if e.device_time_total > 0)
    print(f"== {title}: kernels {busy_us / per:.0f} us / step of {wall_us / per:.0f} us wall (profiled)")
    print(events.table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))


def graph_step_us(eng: Engine, replays: int = 200, batch: int = 1, widest: bool = False) -> float | None:
    """GPU time of one decode step at ``batch``: its captured graph replayed back to back (no host work
    between, so the host's jitter, which moves tok/s by several percent between runs, drops out). The
    graph of the narrowest block table captured (the figure every earlier run gave), or with ``widest``
    of the widest: the decode's longest context, where attention has the most KV tiles."""
    graphs = [v for k, v in sorted(eng.runner.graphs.items()) if k[0] == batch and v.get("graph")]
    st = (graphs[-1] if widest else graphs[0]) if graphs else None
    if st is None:
        return None
    st["graph"].replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = float("inf")
    for _ in range(3):
        start.record()
        for _ in range(replays):
            st["graph"].replay()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) * 1e3 / replays)
    return round(best, 1)


def greedy_ids(eng: Engine) -> list[int]:
    """A fixed prompt's 16 greedy tokens, computed (not reused): the same across runs of the same kernels."""
    with recomputing(eng):
        return eng.complete(list(range(100, 228)), SamplingParams(max_tokens=16)).token_ids


def decode_ahead(b: Bench, eng: Engine, batch: int, n_new: int) -> float:
    """`decode` with each step launched from the previous one's device argmax (the lookahead)."""
    eng.config.overlap_decode = True
    try:
        return decode(b, eng, batch, n_new)
    finally:
        eng.config.overlap_decode = False


def _one_setting(b: Bench, eng: Engine, a: argparse.Namespace) -> dict:
    """Batch-1 greedy ids, tok/s, graph step time (and tok/s with the lookahead) under the current setting."""
    ids = greedy_ids(eng)
    res = {"tok_s": round(decode(b, eng, 1, a.decode_tokens), 1), "greedy_ids": ids}
    res["graph_step_us"] = graph_step_us(eng)
    res["graph_step_us_widest"] = graph_step_us(eng, widest=True)
    res["b1_graph_widths"] = [
        k[1] for k, v in sorted(eng.runner.graphs.items()) if k[0] == 1 and v.get("graph")
    ]
    if a.overlap:
        res["overlap_tok_s"] = round(decode_ahead(b, eng, 1, a.decode_tokens), 1)
    return res


def launch_variants(b: Bench, eng: Engine, a: argparse.Namespace) -> dict:
    """Batch-1 decode (and with the lookahead) under each setting of ``--launches`` ("0,1,0,1": PDL off
    and on; "argmax0,argmax1": the graph's argmax), graphs captured again for each, on the same engine: an
    A/B free of the run-to-run spread between machines, and of the weights' RNG (the greedy tokens must
    match)."""
    out = {}
    default = [(obj, attr, getattr(obj, attr)) for obj, attr in _knobs(eng).values()]
    try:
        for item in a.launches.split(","):
            name = _apply(eng, item)
            drop_graphs(eng)
            try:
                res = _one_setting(b, eng, a)
            except Exception as exc:  # noqa: BLE001 - one setting's failure is its row; the others still run
                res = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            out[name if name not in out else f"{name}_again"] = res
            print(f"  launch {name}: {json.dumps(res)}", flush=True)
    finally:
        for obj, attr, value in default:
            setattr(obj, attr, value)
        drop_graphs(eng)
    return out


def one_mode(b: Bench, name: str, spec: str, a: argparse.Namespace, bw: float) -> dict:
    if b.dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    model, report = build(b, spec, a.tiny)
    quant_s = time.perf_counter() - t0
    progress(name, t0, "built and quantized")
    cfg = EngineConfig(
        model="<in-memory>",
        device=b.dev.type,
        block_size=a.block_size,
        gpu_memory_gb=a.cap_gib - 1.5,
        num_kv_blocks=64 if a.tiny else None,
        max_batch_tokens=2048,
        overlap_decode=False,  # the plain step; --overlap times the lookahead beside it
        max_num_seqs=a.max_seqs,
        cuda_graph_precapture_tokens=a.precapture_tokens,
    )
    eng = Engine(cfg, model=model, fingerprint=f"random-llama3-8b-seed0-{name}")
    progress(name, t0, f"engine up, {eng.precaptured[0]} graphs captured at start")
    PANELS.model = model
    emb = model.model.embed_tokens.weight
    step_bytes = weight_bytes(model) - emb.numel() * emb.element_size()  # one embedding row is read
    del emb  # else this frame holds the embedding (1 GiB at 8B) past the mode's end, in `left_after_gib`
    row: dict = {
        "spec": spec,
        "quantize_s": round(quant_s, 1),
        "weight_gib": round(weight_bytes(model) / GiB, 2),
        "weight_sparsity": report.get("weight_sparsity", 0.0),
        "act_sparsity": report.get("act_sparsity", 0.0),
        "kv_tokens": eng.bm.num_blocks * a.block_size,
        "graphs_at_start": eng.precaptured[0],
        "graph_capture_s": round(eng.precaptured[1], 1),
    }
    row["greedy_ids"] = greedy_ids(eng)
    for batch in a.batches:
        tok_s = decode(b, eng, batch, a.decode_tokens)
        kv = batch * (128 + a.decode_tokens / 2) * model.cfg.kv_bytes_per_token(2)
        # TEAL reads (1 - s) of the sparse layers' bytes at batch 1 (the bound it is measured against)
        read = step_bytes * (1 - row["act_sparsity"] if batch == 1 else 1) + kv
        roof = bw * 1e9 / read * batch
        row[f"b{batch}"] = {
            "tok_s": round(tok_s, 1),
            "roofline_tok_s": round(roof, 1),
            "pct": round(100 * tok_s / roof, 1),
            "graph_step_us": graph_step_us(eng, batch=batch),
        }
        if a.overlap:
            ahead = decode_ahead(b, eng, batch, a.decode_tokens)
            row[f"b{batch}"] |= {
                "overlap_tok_s": round(ahead, 1),
                "overlap_pct": round(100 * ahead / roof, 1),
            }
        progress(name, t0, f"batch {batch} timed: {json.dumps(row[f'b{batch}'])}")
    if a.profile and b.dev.type == "cuda":
        prompt = b.rand_ids(128)
        with recomputing(eng):
            profile_kernels(
                f"{name}: decode 32 tokens at batch 1",
                lambda e=eng: e.complete(prompt, SamplingParams(max_tokens=33, ignore_eos=True)),
                33,
            )
    ids = b.rand_ids(a.prefill_tokens)
    eng.complete(ids, SamplingParams(max_tokens=1, ignore_eos=True))  # warm
    ttft = []
    one = SamplingParams(max_tokens=1, ignore_eos=True)
    for _ in range(3):
        with recomputing(eng):
            ttft.append(b.timed(lambda e=eng: e.complete(ids, one)))
    row["prefill_ttft_ms"] = round(sorted(ttft)[1], 1)
    progress(name, t0, "prefill timed")
    if a.profile and b.dev.type == "cuda":
        with recomputing(eng):
            profile_kernels(f"{name}: prefill {len(ids)} tokens", lambda e=eng: e.complete(ids, one))
    if b.dev.type == "cuda":
        row["peak_gib"] = round(torch.cuda.max_memory_allocated() / GiB, 2)
    if a.launches:  # last: graphs captured again may hold more memory. CPU (--tiny --cpu): the script only
        row["launches"] = launch_variants(b, eng, a)
    eng.close()
    PANELS.model = None  # else the next mode is built beside this one's model (seen: OOM at the 24 GiB cap)
    del eng, model
    b.free()
    if b.dev.type == "cuda":
        row["left_after_gib"] = round(torch.cuda.memory_allocated() / GiB, 2)  # graph pools count here too
        row["reserved_after_gib"] = round(torch.cuda.memory_reserved() / GiB, 2)
        if row["left_after_gib"] > 0.5:  # a previous mode's memory held (2:4 after TEAL ran out of it once)
            row["left_holders"] = live_cuda_tensors()
    print(name, json.dumps(row), flush=True)
    return row


def progress(mode: str, t0: float, what: str) -> None:
    """A line as each stage of a mode ends: where a mode that runs past a device call's limit spent its
    time (2:4 printed nothing in three calls of 170-330 s before these lines existed)."""
    print(f"  {mode}: {what} at {time.perf_counter() - t0:.0f} s", flush=True)


def live_cuda_tensors(top: int = 8) -> list[str]:
    """The largest CUDA tensors still reachable after a mode, each with its shape and what refers to it
    (types and, for dicts, the keys that hold it): where a closed engine's memory is still held."""
    found = []
    for obj in gc.get_objects():
        try:
            if isinstance(obj, torch.Tensor) and obj.is_cuda:
                found.append(obj)
        except Exception:  # noqa: BLE001, S112 - objects that fail isinstance (lazy proxies) hold no tensor
            continue
    found.sort(key=lambda t: -t.untyped_storage().nbytes())
    out = []
    for t in found[:top]:
        refs = []
        for r in gc.get_referrers(t):
            if r is found:
                continue
            desc = type(r).__name__
            if isinstance(r, dict):
                desc += "[" + ",".join(str(k) for k, v in r.items() if v is t)[:60] + "]"
            refs.append(desc)
        out.append(f"{t.untyped_storage().nbytes() / GiB:.2f} GiB {tuple(t.shape)} {t.dtype} <- {refs[:4]}")
    return out


def hf_json(a: argparse.Namespace) -> Path:
    """Where the ``--hf-only`` child leaves its figures for `hf_baseline`."""
    return Path(a.out) / "quant_e2e_hf.json"


def hf_baseline(a: argparse.Namespace) -> dict:
    """`transformers` compiled bf16, run by this script in a child process (``--hf-only``,
    `gpu_base.rerun_in_child`): in this one, torch.compile's references (~7 GiB of 8B-shaped tensors on
    2026-12-07) were held through every later mode, and the last, 2:4, found its KV pool over the 24 GiB
    cap. Keys: batch sizes."""
    got = rerun_in_child(__file__, ["--hf-only"], hf_json(a))
    return {int(batch): r for batch, r in got.items()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--out", default="bench/out")
    p.add_argument("--modes", default="bf16,int8,int4,int4_24,int4_teal")
    p.add_argument("--batches", default="1,16")
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--prefill-tokens", type=int, default=2048)
    p.add_argument("--cap-gib", type=float, default=24.0)
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--compile-budget-s", type=float, default=150)
    p.add_argument("--no-hf", action="store_true")
    p.add_argument("--hf-only", action="store_true", help="the child process of `hf_baseline`")
    p.add_argument("--max-seqs", type=int, default=64, help="max_num_seqs (so the graph batch sizes)")
    p.add_argument("--precapture-tokens", type=int, default=16384, help="decode graphs at start, up to")
    p.add_argument("--tune", default=None)
    p.add_argument("--profile", action="store_true", help="prefill and decode kernels (torch.profiler)")
    p.add_argument("--overlap", action="store_true", help="decode also with engine.lookahead (A/B)")
    p.add_argument("--launches", default="", help="A/B at batch 1: PDL '0,1', or 'amax0,amax1' etc. (_knobs)")
    p.add_argument("--dump-after", type=float, default=0, help="every thread's stack after this many s")
    a = p.parse_args()
    if a.dump_after:  # where a run that prints nothing is (2:4 at batch 16, 2026-12-07)
        import faulthandler

        faulthandler.dump_traceback_later(a.dump_after, repeat=True)
    a.batches = [int(x) for x in a.batches.split(",")]
    b = Bench(a)
    if b.dev.type == "cuda":
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, a.cap_gib * GiB / total))
    if a.hf_only:
        got = b.hf_decode(b.hf_model(), a.batches, a.decode_tokens, static=True)
        hf_json(a).parent.mkdir(parents=True, exist_ok=True)
        hf_json(a).write_text(json.dumps(got))
        return
    bw = b.copy_bandwidth()
    res: dict = {"device": b.describe(), "copy_gbps": round(bw, 1), "modes": {}}
    if not a.no_hf:
        res["hf_compiled_bf16"] = hf_baseline(a)
        print("hf", json.dumps(res["hf_compiled_bf16"]), flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in a.modes.split(","):
        load_tuning(a.tune, name)
        try:
            res["modes"][name] = one_mode(b, name, MODES[name], a, bw)
        except Exception as exc:  # noqa: BLE001 - one failing mode is reported, the others still run
            res["modes"][name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            print(name, "FAILED", res["modes"][name]["error"], flush=True)
            b.free()
        (out / "quant_e2e.json").write_text(json.dumps(res, indent=1))
    base = res.get("hf_compiled_bf16", {}).get(1, {})
    print(
        "| mode | weights GiB | b1 tok/s | b1 % roof | b16 tok/s | ahead b1 / b16 "
        f"| prefill {a.prefill_tokens} ms | peak GiB |"
    )
    for name, r in res["modes"].items():
        if "error" in r:
            continue
        b1, b16 = r.get("b1", {}), r.get("b16", {})
        print(
            f"| {name} | {r['weight_gib']} | {b1.get('tok_s', '-')} | {b1.get('pct', '-')} | "
            f"{b16.get('tok_s', '-')} | {b1.get('overlap_tok_s', '-')} / {b16.get('overlap_tok_s', '-')} | "
            f"{r['prefill_ttft_ms']} | {r.get('peak_gib', '-')} |"
        )
    print("HF compiled bf16 batch 1:", base)


if __name__ == "__main__":
    main()
