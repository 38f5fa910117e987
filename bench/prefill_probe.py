"""Why a short prefill's TTFT is bimodal on the GPU (issue 3: 256 new tokens took 16 ms at some turns of
bench/engine_gpu.py and 36-39 ms at others, which makes "reuse vs new tokens alone" unreliable).

One engine (Llama-3-8B shape, random bf16 weights, 24 GiB cap), a 15K-token history in its cache, then
256-token prompts with prefix reuse off: back to back, right after a recompute of the history (which evicts
cached blocks to the CPU tier), and after an idle spell (the disk write-back runs then); reuse over the
history last. Each case with the disk tier on, then off (a second engine), and one prompt of each kind under
torch.profiler: GPU kernel time against wall time says whether the slow ones wait on the GPU or the host.

Run:  python3 bench/prefill_probe.py --out $OUT   (``--tiny``: two small layers on the CPU, to test it)
Cases: ``--disk on,off``, ``--graph-tokens 0,512`` (prefill graphs), ``--kv-dtype auto,int8``;
``--quant int4`` quantizes the weights of every case.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.chat_gpu import random_llama8b  # noqa: E402
from engine.config import EngineConfig  # noqa: E402
from engine.llm_engine import Engine  # noqa: E402
from engine.sampling import SamplingParams  # noqa: E402

ONE = SamplingParams(max_tokens=1, ignore_eos=True)


def ttft(eng: Engine, ids: list[int]) -> float:
    return round(eng.complete(ids, ONE).usage["ttft_ms"], 1)


def clock_mhz() -> int | None:
    try:
        return torch.cuda.clock_rate()
    except Exception:  # noqa: BLE001 - needs pynvml; the figure is a hint, not the point
        return None


def profiled(eng: Engine, ids: list[int], cuda: bool) -> dict:
    """Kernel time and host time of one prompt: a host-bound prefill shows wall >> kernels."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        ms = ttft(eng, ids)
        wall = (time.perf_counter() - t0) * 1e3
    ev = prof.key_averages()
    busy = sum(e.device_time_total for e in ev if e.device_time_total > 0) / 1e3

    def cost(e) -> float:
        return e.device_time_total if cuda else e.cpu_time_total

    top = sorted(ev, key=cost, reverse=True)[:8]
    return {
        "ttft_ms": ms,
        "wall_ms": round(wall, 1),
        "kernels_ms": round(busy, 1),
        "launches": sum(e.count for e in ev if e.key.startswith(("cudaLaunchKernel", "cuLaunchKernel"))),
        "top": [(e.key[:60], round(cost(e) / 1e3, 2)) for e in top],
    }


def host_profile(eng: Engine, prompts: list[list[int]], top: int = 30) -> str:
    """cProfile of the engine thread's steps (the scheduler and the runner run there, not in this
    thread): where a host-bound prefill spends its time."""
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    step = eng._step

    def profiled_step() -> None:
        prof.enable()
        try:
            step()
        finally:
            prof.disable()

    eng._step = profiled_step  # the loop looks it up on the instance each time
    try:
        for p in prompts:
            ttft(eng, p)
    finally:
        del eng._step
    buf = io.StringIO()
    st = pstats.Stats(prof, stream=buf).strip_dirs()
    st.sort_stats("tottime").print_stats(top)
    st.sort_stats("cumulative").print_stats(top)
    return buf.getvalue()


def run_case(args, model, vocab: int, disk: bool, graph_tokens: int, kv_dtype: str) -> dict:
    g = torch.Generator().manual_seed(1)

    def ids(n: int) -> list[int]:
        return torch.randint(10, vocab, (n,), generator=g).tolist()

    d = Path("/tmp/kb_prefill_probe")
    shutil.rmtree(d, ignore_errors=True)
    dev = "cpu" if args.tiny else "cuda"
    cfg = EngineConfig(
        model="<in-memory>",
        device=dev,
        gpu_memory_gb=22,
        cpu_cache_gb=24,
        disk_dir=str(d) if disk else None,
        prefill_graph_tokens=graph_tokens,
        kv_dtype=kv_dtype,
    )
    t0 = time.perf_counter()
    eng = Engine(cfg, model=model, fingerprint=f"probe-{disk}-{graph_tokens}-{kv_dtype}-{args.quant}")
    out: dict = {"start_s": round(time.perf_counter() - t0, 1), "graphs_at_start": eng.precaptured[0]}
    hist, n = ids(args.history), args.new
    # warm every kernel shape: a fresh prefill, a prefix prefill, a recompute
    ttft(eng, ids(2100))
    ttft(eng, hist)
    ttft(eng, hist + ids(n))
    out["clock_mhz_start"] = clock_mhz()
    # the same prompt's greedy tokens in every case: prefill graphs must not change them (bf16 near-ties
    # of random weights aside)
    out["greedy_ids"] = eng.complete(ids(200), SamplingParams(max_tokens=16, ignore_eos=True)).token_ids
    eng.scheduler.prefix_cache = False
    out["alone_back_to_back"] = [ttft(eng, ids(n)) for _ in range(args.reps)]
    after_rec, rec = [], []
    for _ in range(args.reps):
        rec.append(ttft(eng, hist + ids(n)))
        after_rec.append(ttft(eng, ids(n)))
    out["recompute"] = rec
    out["alone_after_recompute"] = after_rec
    after_idle = []
    for _ in range(args.reps):
        time.sleep(cfg.write_back_idle_s + 0.3)
        after_idle.append(ttft(eng, ids(n)))
    out["alone_after_idle"] = after_idle
    out["clock_mhz_end"] = clock_mhz()
    cuda = dev == "cuda"
    out["profile_alone"] = profiled(eng, ids(n), cuda)
    ttft(eng, hist + ids(n))
    out["profile_alone_after_recompute"] = profiled(eng, ids(n), cuda)
    eng.scheduler.prefix_cache = True
    out["reuse"] = [ttft(eng, hist + ids(n)) for _ in range(args.reps)]
    hist2 = hist + ids(n)
    ttft(eng, hist2)
    out["profile_reuse"] = profiled(eng, hist2 + ids(n), cuda)
    out["write_back_pending"] = len(eng.tiers) if eng.tiers else 0
    if args.host_profile:
        eng.scheduler.prefix_cache = False
        out["host_profile_alone"] = host_profile(eng, [ids(n) for _ in range(args.reps)])
        print(out["host_profile_alone"])
    eng.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="bench/out")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--history", type=int, default=15360)
    p.add_argument("--new", type=int, default=256)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--host-profile", action="store_true", help="cProfile the engine thread's prefill steps")
    p.add_argument("--disk", default="on,off", help="cases: the disk tier on, off")
    p.add_argument("--graph-tokens", default="0", help="cases: prefill_graph_tokens values, e.g. 0,512")
    p.add_argument("--kv-dtype", default="auto", help="cases: KV cache dtypes, e.g. auto,int8")
    p.add_argument("--quant", default="", help="a weight policy for every case, e.g. int4 (RTN g128)")
    a = p.parse_args()
    if a.tiny:
        a.history, a.new = min(a.history, 300), min(a.new, 16)
    vocab = 512 if a.tiny else 128256
    model = random_llama8b(vocab, [], a.tiny, max_position=32768)
    if a.quant:  # through the product path, packed before the KV pool is sized (as bench/quant_e2e.py)
        from engine.quant.policy import apply_policy

        apply_policy(model, a.quant)
        if not a.tiny:
            from engine.quant.gpu import prepare_model

            prepare_model(model)
    res = {}
    cases = [
        (d == "on", int(g), kv)
        for kv in a.kv_dtype.split(",")
        for d in a.disk.split(",")
        for g in a.graph_tokens.split(",")
    ]
    for disk, graphs, kv in cases:
        tag = f"disk {'on ' if disk else 'off'} graphs {graphs}" + (f" kv {kv}" if kv != "auto" else "")
        tag += f" {a.quant}" if a.quant else ""
        res[tag.replace(" ", "_")] = r = run_case(a, model, vocab, disk, graphs, kv)
        print(f"{tag} start {r['start_s']} s, {r['graphs_at_start']} graphs; greedy {r['greedy_ids']}")
        for k, v in r.items():
            if isinstance(v, list) and v and isinstance(v[0], float):
                print(f"{tag} {k:24s} median {statistics.median(v):7.1f}  {v}")
            elif k.startswith("profile"):
                print(f"{tag} {k:30s} {json.dumps({x: v[x] for x in v if x != 'top'})}")
                print("    top:", v["top"][:5])
        if not a.tiny:
            torch.cuda.empty_cache()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "prefill_probe.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
