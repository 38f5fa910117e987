"""What every GPU benchmark of the engine shares: device and memory cap, timing, random-weight models.

`BenchBase` builds `transformers` and our decoder on the same random weights (Llama-3-8B shape, seed 0),
times CUDA work with syncs, and keeps one result dict that each phase adds to and saves as it ends, so a
run cut short by its time limit still leaves every finished phase's numbers.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.config import EngineConfig, ModelConfig  # noqa: E402
from engine.llm_engine import Engine  # noqa: E402
from engine.loader import load_tensors  # noqa: E402
from engine.model import LlamaForCausalLM  # noqa: E402

GiB = 1024**3


def drop_page_cache() -> bool:
    """Flush and drop the OS page cache (root only), so the next file reads come from the disk."""
    done = subprocess.run("sync; echo 3 > /proc/sys/vm/drop_caches", shell=True, capture_output=True)
    return done.returncode == 0


def rerun_in_child(script: str, extra: list[str], out: Path) -> dict:
    """This run's command line again, in a child process with ``extra`` arguments, and the JSON the child
    leaves at ``out`` ({} if it left none; an older file there is removed first, so it is never read as this
    run's). Why: torch.compile keeps references to the weights and to example tensors for the life of the
    process, so the `transformers` baselines run in one that exits and returns that memory."""
    out.unlink(missing_ok=True)
    subprocess.run([sys.executable, script, *sys.argv[1:], *extra], check=False)
    return json.loads(out.read_text()) if out.exists() else {}


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


class BenchBase:
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
            if hasattr(torch._C, "_host_emptyCache"):  # a closed engine's pinned CPU tier goes back too
                torch._C._host_emptyCache()

    # --- phase 2: transformers --------------------------------------------------------------

    def copy_bandwidth(self) -> float:
        if self.dev.type != "cuda":
            return 10.0
        x = torch.empty(GiB // 2, dtype=torch.uint8, device=self.dev)
        y = torch.empty_like(x)
        ms = self.timed(lambda x=x, y=y: y.copy_(x), 10)
        del x, y
        return 2 * (GiB // 2) / (ms / 1e3) / 1e9

    def h2d_bandwidth(self) -> float:
        """Pinned host -> GPU copy rate (GB/s), the rate the CPU tier's restores run at, at best."""
        if self.dev.type != "cuda":
            return 10.0
        src = torch.empty(GiB // 2, dtype=torch.uint8).pin_memory()
        dst = torch.empty(GiB // 2, dtype=torch.uint8, device=self.dev)
        ms = self.timed(lambda src=src, dst=dst: dst.copy_(src, non_blocking=True), 5)
        del src, dst
        return (GiB // 2) / (ms / 1e3) / 1e9

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
