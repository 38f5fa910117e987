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
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from engine.config import EngineConfig, ModelConfig  # noqa: E402
from engine.llm_engine import Engine  # noqa: E402
from engine.loader import load_tensors  # noqa: E402
from engine.model import LlamaForCausalLM  # noqa: E402
from engine.sampling import SamplingParams  # noqa: E402

GiB = 1024**3
BATCHES = [1, 8, 32]
USAGE_KEYS = ("prompt_tokens", "cached_tokens", "cached_from", "ttft_ms")
LLAMA3_8B = dict(
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=32768,
    rope_parameters={
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    tie_word_embeddings=False,
)
TINY = {**LLAMA3_8B, "vocab_size": 512, "hidden_size": 128, "intermediate_size": 256}
TINY.update(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dev = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
        self.dtype = torch.bfloat16 if self.dev.type == "cuda" else torch.float32
        self.shape = TINY if args.tiny else LLAMA3_8B
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.res: dict = {"device": self.describe(), "shape": "tiny" if args.tiny else "llama3-8b"}
        self.rng = torch.Generator().manual_seed(0)

    def describe(self) -> dict:
        d = {"torch": torch.__version__}
        if self.dev.type == "cuda":
            p = torch.cuda.get_device_properties(self.dev)
            d.update(name=p.name, total_gib=round(p.total_memory / GiB, 1))
        import transformers

        d["transformers"] = transformers.__version__
        return d

    def save(self) -> None:
        (self.out / "engine_gpu.json").write_text(json.dumps(self.res, indent=1))

    def sync(self) -> None:
        if self.dev.type == "cuda":
            torch.cuda.synchronize()

    def timed(self, fn, reps: int = 1) -> float:
        """Median wall time (ms) of ``fn`` after syncs (CUDA work is synchronised each time)."""
        ts = []
        for _ in range(reps):
            self.sync()
            t0 = time.perf_counter()
            fn()
            self.sync()
            ts.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(ts)

    def rand_ids(self, n: int) -> list[int]:
        return torch.randint(10, self.shape["vocab_size"], (n,), generator=self.rng).tolist()

    # --- models -------------------------------------------------------------------------------
    def hf_model(self, layers: int | None = None):
        import transformers

        kw = dict(self.shape)
        if layers:
            kw["num_hidden_layers"] = layers
        cfg = transformers.LlamaConfig(**kw)
        torch.manual_seed(0)
        prev = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        with torch.device(self.dev):
            m = transformers.LlamaForCausalLM(cfg)
        torch.set_default_dtype(prev)
        return m.eval()

    def ours_from(self, state: dict[str, torch.Tensor], hf_cfg: dict) -> LlamaForCausalLM:
        mc = ModelConfig.from_hf(hf_cfg)
        with torch.device("meta"):
            m = LlamaForCausalLM(mc)
        m = m.to(self.dtype).to_empty(device=self.dev)
        for k in list(state):
            load_tensors(m, {k: state.pop(k)})
        m.finish_load(self.dev)
        return m.eval()

    def engine(self, model, **kw) -> Engine:
        cfg = EngineConfig(model="<in-memory>", device=self.dev.type, block_size=self.args.block_size, **kw)
        return Engine(cfg, model=model, fingerprint="random-llama3-8b-seed0")

    # --- phase 1 ------------------------------------------------------------------------------
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

    def last_logits(self, eng: Engine, ids: list[int]) -> torch.Tensor:
        from engine.attention import pack_meta

        r = eng.runner
        n = len(ids)
        nblk = (n + r.bs - 1) // r.bs
        table = torch.arange(nblk, device=self.dev)
        ab = r._ab(torch.arange(n, device=self.dev))
        ab.seqs = [(0, n, n, table)]
        if r.triton:
            ab.meta = pack_meta([(0, n, n, table.tolist())], self.dev)
        with torch.inference_mode():
            h = r.model(torch.tensor(ids, device=self.dev), torch.arange(n, device=self.dev), ab)
            return r.model.logits(h[-1:])[0]

    def free(self) -> None:
        gc.collect()
        if self.dev.type == "cuda":
            torch.cuda.empty_cache()

    # --- phase 2: transformers --------------------------------------------------------------
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

    def ours_multiturn(self, eng: Engine, turns, prefix: str) -> dict:
        history: list[int] = []
        rows = []
        for new in turns:
            prompt = history + new
            ev = eng.complete(prompt, SamplingParams(max_tokens=self.args.answer_tokens, ignore_eos=True))
            rows.append({k: ev.usage[k] for k in USAGE_KEYS})
            history = prompt + ev.token_ids
        self.res[prefix + "_rows"] = rows
        return {"reuse_ms": [r["ttft_ms"] for r in rows], "history": history}

    def ours_recompute(self, eng: Engine, turns) -> dict:
        eng.scheduler.prefix_cache = False
        rec, alone = [], []
        hist = self._hist
        pos = 0
        for new in turns:
            pos += len(new)
            full = hist[:pos]
            rec.append(eng.complete(full, SamplingParams(max_tokens=1)).usage["ttft_ms"])
            alone.append(eng.complete(new, SamplingParams(max_tokens=1)).usage["ttft_ms"])
            pos += self.args.answer_tokens
        eng.scheduler.prefix_cache = True
        return {"recompute_ms": rec, "new_alone_ms": alone}

    def copy_bandwidth(self) -> float:
        if self.dev.type != "cuda":
            return 10.0
        x = torch.empty(GiB // 2, dtype=torch.uint8, device=self.dev)
        y = torch.empty_like(x)
        ms = self.timed(lambda x=x, y=y: y.copy_(x), 10)
        del x, y
        return 2 * (GiB // 2) / (ms / 1e3) / 1e9

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
            argv = [sys.executable, __file__, *sys.argv[1:], "--phase", "hf"]
            subprocess.run(argv, check=False)
            hf_json = self.out / "engine_gpu_hf.json"
            if hf_json.exists():
                self.res.update(json.loads(hf_json.read_text()))
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
        eng = self.engine(model, disk_dir=str(disk), **kw)
        self.res["pool_blocks"] = eng.bm.num_blocks
        self.section("ours_decode", lambda eng=eng: self.ours_decode(eng, BATCHES, a.decode_tokens))
        self.section("warmup", lambda eng=eng: self.warm(eng))
        mt = self.section("ours_multiturn", lambda eng=eng: self.ours_multiturn(eng, turns, "ours_turn"))
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
            self.section(f"ours_recompute_{size}", lambda eng=eng, tt=tt: self.ours_recompute(eng, tt))
        self._hist = hist_main
        eng.close()  # flushes the disk tier
        del eng
        self.free()
        self.section("int8_kv", lambda: self.int8_kv(model, kw, more))
        self.section("sessions", lambda: self.sessions(model, kw))
        self.section("restart", lambda: self.restart(model, kw, disk, turns))
        if self.dev.type == "cuda":
            self.res["peak_gib_ours"] = round(torch.cuda.max_memory_allocated() / GiB, 2)
        self.save()
        self.plot()
        self.summary()

    def summary(self) -> None:
        """The goal figures, printed last so they are in the tail of the log."""
        r = self.res
        for size in self.sizes():
            sfx = "" if size == self.args.turn_tokens else f"_{size}"
            mt, rc, hf = (r.get(k + sfx, {}) for k in ("ours_multiturn", "ours_recompute", "hf_multiturn"))
            if not mt or not rc:
                continue
            reuse, alone, rec = mt["reuse_ms"], rc["new_alone_ms"], rc["recompute_ms"]
            print(f"turns of {size}: reuse {[round(x) for x in reuse]}")
            print(f"   alone {[round(x) for x in alone]}  recompute {[round(x) for x in rec]}")
            if hf:
                held, hrec = hf["handheld_ms"], hf["recompute_ms"]
                print(f"   HF held {[round(x) for x in held]}  HF rec {[round(x) for x in hrec]}")
            ratio, speed = reuse[-1] / alone[-1], rec[-1] / reuse[-1]
            print(f"   turn10: reuse/alone {ratio:.2f}x  recompute/reuse {speed:.1f}x")
        for k in ("ours_decode", "hf_static_compile", "sessions", "int8_kv", "restart", "peak_gib_ours"):
            if k in r:
                print(k, json.dumps(r[k])[:600])
        print("errors", {k: v for k, v in r.items() if k.endswith("_error")})

    def warm(self, eng: Engine) -> dict:
        """Compile every kernel variant the measured turns use (dense prefill, prefix prefill with and
        without KV splits, split decode in a CUDA graph) so no TTFT below includes a Triton compile.
        Its own generator: the measured conversations keep their token ids."""
        g = torch.Generator().manual_seed(99)
        ids = torch.randint(10, self.shape["vocab_size"], (2800,), generator=g).tolist()
        t0 = time.perf_counter()
        a = eng.complete(ids[:2100], SamplingParams(max_tokens=2, ignore_eos=True))
        eng.complete(
            ids[:2100] + a.token_ids + ids[2100:2700], SamplingParams(max_tokens=40, ignore_eos=True)
        )
        return {"s": round(time.perf_counter() - t0, 1)}

    def int8_kv(self, model, kw, more) -> dict:
        """KV tokens that fit one budget (bf16 vs int8), and int8 reuse on the small-turn conversation."""
        out = {}
        for kv in ("auto", "int8"):
            eng = self.engine(model, kv_dtype=kv, **kw)
            r = eng.runner
            out[kv] = {"pool_blocks": eng.bm.num_blocks, "pool_tokens": eng.bm.num_blocks * r.bs}
            out[kv]["block_bytes"] = r.kv[:, :, 0].numel() * r.kv.element_size()
            out[kv]["pool_gib"] = round(r.kv.numel() * r.kv.element_size() / GiB, 2)
            if kv == "int8" and more:
                self.warm(eng)
                size, tt = next(iter(more.items()))
                out["int8_multiturn"] = {"turn_tokens": size, **self.ours_multiturn(eng, tt, "int8")}
                out["int8_multiturn"].pop("history")
            eng.close()
            del eng, r  # the runner holds the pool: drop it before the next engine allocates its own
            self.free()
        return out

    def sessions(self, model, kw) -> dict:
        """S sessions advance turn by turn in one shared pool; older sessions spill to the CPU tier."""
        a = self.args
        eng = self.engine(model, **kw)
        s_n, hist = a.sessions, {}
        last = []
        for t in range(a.turns):
            for s in range(s_n):
                new = self.rand_ids(a.session_first_tokens if t == 0 else a.session_turn_tokens)
                prompt = hist.get(s, []) + new
                ev = eng.complete(prompt, SamplingParams(max_tokens=4, ignore_eos=True))
                hist[s] = prompt + ev.token_ids
                if t == a.turns - 1:
                    last.append({k: ev.usage[k] for k in USAGE_KEYS})
        eng.scheduler.prefix_cache = False
        full = hist[0][: last[0]["prompt_tokens"]]
        rec = [eng.complete(full, SamplingParams(max_tokens=1)).usage["ttft_ms"] for _ in range(3)]
        alone = [eng.complete(new, SamplingParams(max_tokens=1)).usage["ttft_ms"] for _ in range(3)]
        eng.close()
        ttft = sorted(r["ttft_ms"] for r in last)
        return {
            "sessions": s_n,
            "first_turn_tokens": a.session_first_tokens,
            "turn_tokens": a.session_turn_tokens,
            "last_turn": last,
            "p50_last_ttft_ms": statistics.median(ttft),
            "p99_last_ttft_ms": ttft[min(len(ttft) - 1, round(0.99 * (len(ttft) - 1)))],
            "max_last_ttft_ms": ttft[-1],
            "recompute_same_size_ms": statistics.median(rec),
            "new_alone_ms": statistics.median(alone),
            "cached_from_sum": {k: sum(r["cached_from"][k] for r in last) for k in last[0]["cached_from"]},
        }

    def restart(self, model, kw, disk: Path, turns) -> dict:
        """Turn 11 in a fresh engine (empty GPU and CPU tiers) restoring from the disk tier."""
        out = {}
        new = self.rand_ids(self.args.turn_tokens)
        prompt = self._hist + new
        nbytes = sum(p.stat().st_size for p in disk.glob("*/*.kvb"))
        dropped = subprocess.run("sync; echo 3 > /proc/sys/vm/drop_caches", shell=True, capture_output=True)
        out["page_cache_dropped"] = dropped.returncode == 0
        t0 = time.perf_counter()
        for p in disk.glob("*/*.kvb"):
            p.read_bytes()
        out["disk_read_gbps"] = round(nbytes / (time.perf_counter() - t0) / 1e9, 2)
        subprocess.run("sync; echo 3 > /proc/sys/vm/drop_caches", shell=True, capture_output=True)
        for label, extra in (("cost_model", {}), ("forced_restore", {"disk_read_gbps": 1e6})):
            # explicit 2.5 GiB pool: a turn-11 prompt (~17K tokens) needs ~2.1 GiB
            opts = {**kw, "cpu_cache_gb": 0, "kv_cache_gb": 2.5, **extra}
            eng = self.engine(model, disk_dir=str(disk), **opts)
            eng.cost.prefill_tok_s = self.res.get("prefill_tok_s", eng.cost.prefill_tok_s)
            if label == "cost_model":
                eng.cost.disk_gbps = out["disk_read_gbps"]
            ev = eng.complete(prompt, SamplingParams(max_tokens=1))
            out[label] = {k: ev.usage[k] for k in ("cached_tokens", "cached_from", "ttft_ms", "reuse")}
            kv = ev.usage["cached_from"]["disk"] * model.cfg.kv_bytes_per_token(
                2 if self.dtype != torch.float32 else 4
            )
            out[label]["io_floor_ms"] = round(kv / (out["disk_read_gbps"] * 1e9) * 1e3, 1)
            eng.close()
            del eng
            self.free()
            subprocess.run("sync; echo 3 > /proc/sys/vm/drop_caches", shell=True, capture_output=True)
        eng = self.engine(model, **{**kw, "enable_prefix_cache": False, "kv_cache_gb": 2.5})
        out["recompute_ttft_ms"] = eng.complete(prompt, SamplingParams(max_tokens=1)).usage["ttft_ms"]
        eng.close()
        return out

    def section(self, name, fn):
        t0 = time.perf_counter()
        try:
            r = fn()
            if r is not None:
                self.res[name] = r
        except Exception as e:  # noqa: BLE001 - keep the other phases' numbers
            import traceback

            traceback.print_exc()
            self.res[name + "_error"] = f"{type(e).__name__}: {e}"
            r = None
        self.res.setdefault("phase_s", {})[name] = round(time.perf_counter() - t0, 1)
        print(f"[{name}] {time.perf_counter() - t0:.1f}s", flush=True)
        self.save()
        return r

    def plot(self) -> None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return
        r = self.res
        sizes = self.sizes()
        fig, axes = plt.subplots(1, len(sizes), figsize=(7 * len(sizes), 4.5), squeeze=False)
        for ax, size in zip(axes[0], sizes, strict=True):
            sfx = "" if size == self.args.turn_tokens else f"_{size}"
            series = [
                ("ours: reuse", r.get("ours_multiturn" + sfx, {}).get("reuse_ms")),
                ("ours: recompute", r.get("ours_recompute" + sfx, {}).get("recompute_ms")),
                ("ours: new tokens alone", r.get("ours_recompute" + sfx, {}).get("new_alone_ms")),
                ("HF: DynamicCache by hand", r.get("hf_multiturn" + sfx, {}).get("handheld_ms")),
                ("HF: recompute", r.get("hf_multiturn" + sfx, {}).get("recompute_ms")),
            ]
            if not sfx:
                sess = r.get("sessions", {})
                if sess:
                    ax.axhline(
                        sess["p50_last_ttft_ms"],
                        ls=":",
                        c="k",
                        label=f"{sess['sessions']} sessions: turn-10 p50",
                    )
            for label, ys in series:
                if ys:
                    ax.plot(range(1, len(ys) + 1), ys, marker="o", label=label)
            ax.set_xlabel("turn")
            ax.set_ylabel("TTFT (ms)")
            ax.set_yscale("log")
            ax.set_title(f"{size}-token turns, {r['shape']}, {r['device'].get('name', 'cpu')}")
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(self.out / "engine_gpu_ttft.png", dpi=120)


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
    p.add_argument("--turn-sizes", default="1536,256")
    p.add_argument("--compile-budget-s", type=float, default=150)
    p.add_argument("--phase", choices=["all", "hf", "ours"], default="all")
    a = p.parse_args()
    Bench(a).run()


if __name__ == "__main__":
    main()
