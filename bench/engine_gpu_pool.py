"""Engine GPU phases where several sequences share one pool: int8 KV capacity, 32 sessions with CPU spill,
and a restart from the disk tier. Mixed into `bench.engine_gpu.Bench`."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from bench.gpu_base import USAGE_KEYS, GiB, drop_page_cache
from engine.llm_engine import Engine
from engine.sampling import SamplingParams


class PoolPhasesMixin:
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
        from engine import kv_int8_store, paged_attn_triton

        out = {}
        # int8 KV stored by torch (`attention.write_kv`: a GPU sync per layer in a prefill), then by the
        # one-launch kernel (`engine.kv_int8_store`), then with the reader's scales folded into scores and
        # probabilities (`paged_attn_triton.INT8_FOLD`), on the same conversation
        for kv, store, fold in (
            ("auto", True, False),
            ("int8", False, False),
            ("int8", True, False),
            ("int8", True, True),
        ):
            kv_int8_store.ENABLED, paged_attn_triton.INT8_FOLD = store, fold
            eng = self.engine(model, kv_dtype=kv, **kw)
            r = eng.runner
            out[kv] = {"pool_blocks": eng.bm.num_blocks, "pool_tokens": eng.bm.num_blocks * r.bs}
            out[kv]["block_bytes"] = r.kv[:, :, 0].numel() * r.kv.element_size()
            out[kv]["pool_gib"] = round(r.kv.numel() * r.kv.element_size() / GiB, 2)
            if kv == "int8" and more:
                self.warm(eng)
                size, tt = next(iter(more.items()))
                key = "int8_multiturn" + ("" if store else "_torch_store") + ("_fold" if fold else "")
                out[key] = {"turn_tokens": size, **self.ours_multiturn(eng, tt, key)}
                out[key].pop("history")
            eng.close()
            del eng, r  # the runner holds the pool: drop it before the next engine allocates its own
            self.free()
        kv_int8_store.ENABLED, paged_attn_triton.INT8_FOLD = True, False
        return out

    def sessions(self, model, kw) -> dict:
        """S sessions advance turn by turn in one shared pool; older sessions spill to the CPU tier."""
        a = self.args
        self.free()  # an A/B's first engine must be gone before this one sizes its pool
        eng = self.engine(model, kv_dtype=a.sessions_kv_dtype, **kw)  # int8: half the bytes to restore
        self.rng.manual_seed(1234)  # an A/B of two runs gets the same prompts
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
        layerwise = eng.stats()["layerwise_restores"]
        eng.scheduler.prefix_cache = False
        full = hist[0][: last[0]["prompt_tokens"]]
        rec = [eng.complete(full, SamplingParams(max_tokens=1)).usage["ttft_ms"] for _ in range(3)]
        alone = [eng.complete(new, SamplingParams(max_tokens=1)).usage["ttft_ms"] for _ in range(3)]
        eng.close()
        del eng
        self.free()
        ttft = sorted(r["ttft_ms"] for r in last)
        h2d = self.h2d_bandwidth()
        kv_tok = model.cfg.kv_bytes_per_token(2 if self.dtype != torch.float32 else 4)
        return {
            "kv_dtype": a.sessions_kv_dtype,
            # what bounds a restore from the CPU tier: a 16K-token history's KV over the host link
            "h2d_gbps": round(h2d, 1),
            "cpu_restore_floor_16k_ms": round(16384 * kv_tok / (h2d * 1e9) * 1e3, 1),
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
            "layerwise_restores": layerwise,  # None: CPU-tier blocks copied before the step
        }

    def restart(self, model, kw, disk: Path, turns) -> dict:
        """Turn 11 in a fresh engine (empty GPU and CPU tiers) restoring from the disk tier."""
        out = {}
        new = self.rand_ids(self.args.turn_tokens)
        prompt = self._hist + new
        nbytes = sum(p.stat().st_size for p in disk.glob("*/*.kvb"))
        out["page_cache_dropped"] = drop_page_cache()
        t0 = time.perf_counter()
        for p in disk.glob("*/*.kvb"):
            p.read_bytes()
        out["disk_read_gbps"] = round(nbytes / (time.perf_counter() - t0) / 1e9, 2)
        drop_page_cache()
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
            drop_page_cache()
        eng = self.engine(model, **{**kw, "enable_prefix_cache": False, "kv_cache_gb": 2.5})
        out["recompute_ttft_ms"] = eng.complete(prompt, SamplingParams(max_tokens=1)).usage["ttft_ms"]
        eng.close()
        return out
