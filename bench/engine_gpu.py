"""GPU benchmark for engine/ (issue 3): correctness vs transformers, decode tok/s, multi-turn TTFT, restart.

One process, phases in order (each phase's results are written to JSON as soon as it ends):
  1. correctness: engine vs transformers on the same random weights (few layers, bf16)
  2. transformers baselines on the full shape: generate eager / static cache + compile; multi-turn with a
     hand-held DynamicCache, full recompute and "new tokens alone"
  3. our engine under a 24 GiB cap: decode tok/s batch 1/8/32 (+ % of bandwidth roofline), multi-turn
     reuse vs recompute, several sessions sharing the pool with CPU spill, restart from the disk tier
Run:  python bench/engine_gpu.py [--tiny]  (``--tiny`` = small shapes, runs on CPU to test the script)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.engine_gpu_pool import PoolPhasesMixin  # noqa: E402
from bench.engine_gpu_report import ReportMixin  # noqa: E402
from bench.gpu_base import USAGE_KEYS, BenchBase, GiB, rerun_in_child  # noqa: E402
from engine.llm_engine import Engine  # noqa: E402
from engine.sampling import SamplingParams  # noqa: E402

BATCHES = [1, 8, 32]


class Bench(PoolPhasesMixin, ReportMixin, BenchBase):
    def correctness(self) -> None:
        """fp32 (tight) and bf16 (tolerance = HF's own bf16-vs-fp32 gap) on the same random weights."""
        import copy

        keep = self.dtype
        out = {"layers": self.args.check_layers}
        self.dtype = torch.float32
        hf32 = self.hf_model(layers=self.args.check_layers)
        ids = self.rand_ids(64)
        ref32 = None
        for dt in (torch.float32, torch.bfloat16):
            self.dtype = dt
            hf = hf32 if dt == torch.float32 else copy.deepcopy(hf32).to(dt)
            ours = self.ours_from({k: v.clone() for k, v in hf.state_dict().items()}, hf.config.to_dict())
            with torch.inference_mode():
                ref = hf(torch.tensor([ids], device=self.dev)).logits[0, -1].float()
                gen = hf.generate(
                    torch.tensor([ids], device=self.dev),
                    max_new_tokens=16,
                    min_new_tokens=16,
                    do_sample=False,
                )[0, 64:].tolist()
            ref32 = ref if ref32 is None else ref32
            variants = [("", {})]
            if dt != torch.float32:  # default = Triton paged kernel; vs the old gather path and int8 KV
                variants += [("_gather", {"attn_backend": "gather"}), ("_int8kv", {"kv_dtype": "int8"})]
            logits = {}
            for name, extra in variants:
                eng = self.engine(ours, kv_cache_gb=1.0, **extra)
                eng.complete(ids, SamplingParams(max_tokens=1, ignore_eos=True))
                got = logits[name] = self.last_logits(eng, ids)
                ev = eng.complete(ids, SamplingParams(max_tokens=16, ignore_eos=True))
                backend = "triton" if eng.runner.triton else "gather"
                eng.close()
                pairs = list(zip(ev.token_ids, gen, strict=True))
                out[str(dt).split(".")[-1] + name] = {
                    "attn": backend,
                    "max_abs_logit_diff_vs_hf": (got - ref).abs().max().item(),
                    "hf_own_diff_vs_hf_fp32": (ref - ref32).abs().max().item(),
                    "logit_absmax": ref.abs().max().item(),
                    "same_argmax": int(got.argmax()) == int(ref.argmax()),
                    "greedy_tokens_equal": f"{sum(a == b for a, b in pairs)}/16",
                    "greedy_identical_prefix": next((i for i, (a, b) in enumerate(pairs) if a != b), 16),
                }
                del eng
            if "_gather" in logits:
                out["bf16_triton_vs_gather_max_abs_logit_diff"] = (
                    (logits[""] - logits["_gather"]).abs().max().item()
                )
            del hf, ours
            self.free()
        self.dtype = keep
        self.res["correctness"] = out
        del hf32
        self.free()

    def hf_decode(self, hf, batches, n_new, static: bool) -> dict:
        out = {}
        deadline = time.perf_counter() + self.args.compile_budget_s
        for b in batches:
            if static and time.perf_counter() > deadline:
                out[b] = "skipped: compile time budget spent"
                continue
            ids = torch.tensor([self.rand_ids(128) for _ in range(b)], device=self.dev)
            kw = dict(do_sample=False, attention_mask=torch.ones_like(ids))
            if static:
                kw["cache_implementation"] = "static"

            def run(n, ids=ids, kw=kw):
                with torch.inference_mode():
                    hf.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw)

            t_warm = time.perf_counter()
            run(n_new)  # warm-up (compiles the static-cache decode step)
            run(n_new)
            t1 = self.timed(lambda run=run: run(1), 3)
            tn = self.timed(lambda run=run: run(n_new), 3)
            out[b] = {
                "tok_s": round(b * (n_new - 1) / ((tn - t1) / 1e3), 1),
                "warmup_s": round(time.perf_counter() - t_warm, 1),
            }
            self.save()
        return out

    def conversation(self, size: int | None = None) -> list[list[int]]:
        """10 turns of new user tokens (random ids), growing to ~16K with the answers. Turns smaller than
        ``--turn-tokens`` start with one long first turn (a shared document) so turn 10 still follows a
        ~15K history: the issue's "16K history + 256-token turn" case."""
        a = self.args
        size = size or a.turn_tokens
        full = a.turns * (a.turn_tokens + a.answer_tokens) - a.answer_tokens
        first = full - (a.turns - 1) * (size + a.answer_tokens)
        return [self.rand_ids(first)] + [self.rand_ids(size) for _ in range(a.turns - 1)]

    def sizes(self) -> list[int]:
        return [int(x) for x in self.args.turn_sizes.split(",")]

    def hf_multiturn(self, hf, turns) -> dict:
        from transformers import DynamicCache

        held, recompute, alone = [], [], []
        cache = DynamicCache(config=hf.config)
        history: list[int] = []
        with torch.inference_mode():
            for new in turns:
                x = torch.tensor([new], device=self.dev)
                t = self.timed(lambda x=x: hf(x, past_key_values=cache, use_cache=True, logits_to_keep=1))
                held.append(t)
                history += new
                # the answer: greedy tokens fed through the held cache (grows it like a real chat)
                tok = None
                for _ in range(self.args.answer_tokens):
                    tok = (
                        hf(
                            torch.tensor([[history[-1] if tok is None else tok]], device=self.dev),
                            past_key_values=cache,
                            use_cache=True,
                            logits_to_keep=1,
                        )
                        .logits[0, -1]
                        .argmax()
                        .item()
                    )
                    history.append(tok)
                full = torch.tensor([history[: -self.args.answer_tokens]], device=self.dev)
                recompute.append(self.timed(lambda full=full: hf(full, use_cache=False, logits_to_keep=1)))
                alone.append(self.timed(lambda x=x: hf(x, use_cache=False, logits_to_keep=1)))
        return {"handheld_ms": held, "recompute_ms": recompute, "new_alone_ms": alone}

    # --- phase 3: ours ----------------------------------------------------------------------

    def ours_decode(self, eng: Engine, batches, n_new) -> dict:
        out = {}
        model_bytes = sum(p.numel() * p.element_size() for p in eng.model.parameters())
        emb = eng.model.model.embed_tokens.weight
        bytes_step = model_bytes - emb.numel() * emb.element_size()
        for b in batches:
            prompts = [self.rand_ids(128) for _ in range(b)]

            def run(n, prompts=prompts):
                seqs = [eng.submit(p, SamplingParams(max_tokens=n, ignore_eos=True)) for p in prompts]
                for s in seqs:
                    while s.events.get().type != "finish":
                        pass

            eng.scheduler.prefix_cache = False  # decode speed, not reuse
            run(n_new)
            run(n_new)
            t1 = self.timed(lambda run=run: run(1), 3)
            tn = self.timed(lambda run=run: run(n_new), 3)
            eng.scheduler.prefix_cache = True
            tok_s = b * (n_new - 1) / ((tn - t1) / 1e3)
            kv_bytes = b * (128 + n_new / 2) * eng.model.cfg.kv_bytes_per_token(2)
            roof = self.res.get("copy_gbps", 1.0) * 1e9 / (bytes_step + kv_bytes) * b
            out[b] = {
                "tok_s": round(tok_s, 1),
                "roofline_tok_s": round(roof, 1),
                "pct": round(100 * tok_s / roof, 1),
            }
            self.save()
        return out

    def ours_multiturn(self, eng: Engine, turns, prefix: str, think_ms: int = 0) -> dict:
        """The conversation's turns back to back, or ``think_ms`` apart (a person reads the answer, and
        the engine feeds its last token meanwhile: `engine.answer_feed`)."""
        history: list[int] = []
        rows = []
        for new in turns:
            if think_ms and history:
                time.sleep(think_ms / 1e3)
            prompt = history + new
            ev = eng.complete(prompt, SamplingParams(max_tokens=self.args.answer_tokens, ignore_eos=True))
            rows.append({k: ev.usage[k] for k in USAGE_KEYS})
            history = prompt + ev.token_ids
        self.res[prefix + "_rows"] = rows
        return {"reuse_ms": [r["ttft_ms"] for r in rows], "history": history}

    def ours_recompute(self, eng: Engine, turns) -> dict:
        eng.scheduler.prefix_cache = False
        rec, alone, seen = [], [], []
        hist = self._hist
        pos = 0
        for new in turns:
            # back to back, a turn reaches the engine with the previous answer's last token before it
            as_seen = hist[pos - 1 : pos + len(new)] if pos else new
            pos += len(new)
            full = hist[:pos]
            rec.append(eng.complete(full, SamplingParams(max_tokens=1)).usage["ttft_ms"])
            alone.append(eng.complete(new, SamplingParams(max_tokens=1)).usage["ttft_ms"])
            seen.append(eng.complete(as_seen, SamplingParams(max_tokens=1)).usage["ttft_ms"])
            pos += self.args.answer_tokens
        eng.scheduler.prefix_cache = True
        return {"recompute_ms": rec, "new_alone_ms": alone, "alone_as_seen_ms": seen}

    def think_runs(self, eng: Engine, size: int, sfx: str) -> None:
        """The same kind of conversation (new ids: nothing cached) with each ``--think-ms`` pause."""
        for ms in (int(x) for x in self.args.think_ms.split(",") if x and int(x) > 0):
            tt = self.conversation(size)
            name = f"ours_multiturn{sfx}_think{ms}"
            mt = self.section(name, lambda tt=tt, ms=ms, name=name: self.ours_multiturn(eng, tt, name, ms))
            if mt:
                mt.pop("history")

    def run(self) -> None:
        """``--phase all`` runs the transformers baselines in a child process first (torch.compile keeps
        references to the weights, so only process exit returns that memory), then ours in this one."""
        a = self.args
        if self.dev.type == "cuda":
            total = torch.cuda.get_device_properties(self.dev).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, a.cap_gib * GiB / total))
        if a.phase == "hf":
            self.run_hf()
            return
        if a.phase == "all":
            self.res.update(rerun_in_child(__file__, ["--phase", "hf"], self.out / "engine_gpu_hf.json"))
        self.run_ours()

    def run_hf(self) -> None:
        a = self.args
        self.res["copy_gbps"] = round(self.copy_bandwidth(), 1)
        hf = self.hf_model()
        turns = self.conversation()
        self.section("hf_eager", lambda hf=hf: self.hf_decode(hf, BATCHES, a.decode_tokens, static=False))
        for size in self.sizes():
            tt = turns if size == a.turn_tokens else self.conversation(size)
            sfx = "" if size == a.turn_tokens else f"_{size}"
            self.section("hf_multiturn" + sfx, lambda hf=hf, tt=tt: self.hf_multiturn(hf, tt))
        if self.dev.type == "cuda" and not a.no_compile:
            n = a.decode_tokens
            self.section("hf_static_compile", lambda hf=hf: self.hf_decode(hf, BATCHES, n, True))
        (self.out / "engine_gpu_hf.json").write_text(json.dumps(self.res, indent=1))

    def section(self, name, fn):
        """`gpu_base.Bench.section`, unless ``--skip`` names it (a rerun of only what changed)."""
        if name in self.args.skip.split(","):
            return None
        return super().section(name, fn)

    def run_ours(self) -> None:
        a = self.args
        self.res.setdefault("copy_gbps", round(self.copy_bandwidth(), 1))
        self.section("correctness", self.correctness)
        hf = self.hf_model()  # same seed -> same weights as the child's baselines
        turns = self.conversation()
        more = {s: self.conversation(s) for s in self.sizes() if s != a.turn_tokens}
        cfg = hf.config.to_dict()
        state = {k: v.to("cpu") for k, v in hf.state_dict().items()}
        del hf
        self.free()
        if self.dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        model = self.ours_from(state, cfg)
        disk = Path(a.disk_dir)
        shutil.rmtree(disk, ignore_errors=True)
        kw = dict(gpu_memory_gb=a.cap_gib - 2, cpu_cache_gb=a.cpu_cache_gb)
        kw["prefill_graph_tokens"] = a.prefill_graph_tokens
        eng = self.engine(model, disk_dir=str(disk), **kw)
        self.res["pool_blocks"] = eng.bm.num_blocks
        self.res["graphs_at_start"] = [eng.precaptured[0], round(eng.precaptured[1], 1)]  # count, seconds
        self.section("ours_decode", lambda eng=eng: self.ours_decode(eng, BATCHES, a.decode_tokens))
        self.section("warmup", lambda eng=eng: self.warm(eng))
        mt = self.section("ours_multiturn", lambda eng=eng: self.ours_multiturn(eng, turns, "ours_turn"))
        self.think_runs(eng, a.turn_tokens, "")
        self._hist = mt.pop("history") if mt else []
        self.res["prefill_tok_s"] = round(eng.cost.prefill_tok_s, 1)
        self.section("ours_recompute", lambda eng=eng: self.ours_recompute(eng, turns))
        hist_main = self._hist
        for size, tt in more.items():
            mt = self.section(
                f"ours_multiturn_{size}",
                lambda eng=eng, tt=tt, size=size: self.ours_multiturn(eng, tt, f"t{size}"),
            )
            self._hist = mt.pop("history") if mt else []
            self.think_runs(eng, size, f"_{size}")
            self.section(f"ours_recompute_{size}", lambda eng=eng, tt=tt: self.ours_recompute(eng, tt))
        self._hist = hist_main
        eng.close()  # flushes the disk tier
        del eng
        self.free()
        self.section("int8_kv", lambda: self.int8_kv(model, kw, more))
        skw = {**kw, "cpu_cache_gb": a.sessions_cpu_cache_gb or a.cpu_cache_gb}
        if a.sessions_ab:  # the same sessions with CPU-tier blocks copied before the step / layer-wise
            before = {**skw, "restore_layerwise": False}
            self.section("sessions_before_step", lambda: self.sessions(model, before))
        skw["restore_layerwise"] = a.sessions_layerwise
        self.section("sessions", lambda: self.sessions(model, skw))
        self.section("restart", lambda: self.restart(model, kw, disk, turns))
        if self.dev.type == "cuda":
            self.res["peak_gib_ours"] = round(torch.cuda.max_memory_allocated() / GiB, 2)
        self.save()
        self.plot()
        self.summary()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--out", default="bench/out")
    p.add_argument("--disk-dir", default="/tmp/kb_engine_bench_disk")
    p.add_argument("--cap-gib", type=float, default=24.0)
    p.add_argument("--cpu-cache-gb", type=float, default=24.0)
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--check-layers", type=int, default=4)
    p.add_argument("--turns", type=int, default=10)
    p.add_argument("--turn-tokens", type=int, default=1536)
    p.add_argument("--answer-tokens", type=int, default=32)
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--sessions", type=int, default=32)
    p.add_argument("--session-first-tokens", type=int, default=2048)
    p.add_argument("--session-turn-tokens", type=int, default=256)
    p.add_argument("--sessions-kv-dtype", default="auto", help="the sessions phase's KV dtype (auto, int8)")
    p.add_argument("--sessions-cpu-cache-gb", type=float, default=None, help="default: --cpu-cache-gb")
    p.add_argument(
        "--sessions-layerwise",
        type=lambda v: {"on": True, "off": False, "auto": None}[v],
        default="auto",
        help="restore_layerwise of the sessions' engine: on, off, auto (the engine's default)",
    )
    p.add_argument(
        "--sessions-ab",
        action="store_true",
        help="also run the sessions with CPU-tier restores copied before the step (restore_layerwise=False)",
    )
    p.add_argument("--turn-sizes", default="1536,256")
    p.add_argument(
        "--think-ms",
        default="",
        help="also run each conversation size with these pauses between turns (ms, e.g. 100)",
    )
    p.add_argument(
        "--prefill-graph-tokens",
        type=int,
        default=None,
        help="EngineConfig.prefill_graph_tokens (unset: its default)",
    )
    p.add_argument("--compile-budget-s", type=float, default=150)
    p.add_argument("--phase", choices=["all", "hf", "ours"], default="all")
    p.add_argument("--skip", default="", help="sections of ours to leave out, e.g. correctness,int8_kv")
    a = p.parse_args()
    Bench(a).run()


if __name__ == "__main__":
    main()
