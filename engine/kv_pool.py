"""How many KV blocks a memory budget holds: what one block costs, and what the weights, activations and
graphs leave of ``gpu_memory_gb`` (the issue-6 budget: start-up refuses with the numbers when the model does
not fit)."""

from __future__ import annotations

import logging

import torch

from engine.config import EngineConfig
from engine.model import LlamaForCausalLM
from engine.prefill_graphs import prefill_graphs_dequantize
from engine.quant.memory import check_budget, dequant_reserve, weight_bytes

GiB = 1024**3
log = logging.getLogger(__name__)


def kv_block_bytes(m, block_size: int, dtype, int8: bool) -> int:
    """Bytes of one block across all layers (K and V), scales included for int8."""
    if int8:
        return 2 * m.num_layers * (block_size * m.num_kv_heads * m.head_dim + 4 * m.num_kv_heads)
    return m.kv_bytes_per_token(torch.finfo(dtype).bits // 8) * block_size


def kv_pool_blocks(model: LlamaForCausalLM, cfg: EngineConfig, device: torch.device, dtype) -> int:
    """How many blocks the budget allows (explicit counts/sizes win)."""
    if cfg.num_kv_blocks:
        return cfg.num_kv_blocks
    cfg = cfg.for_device(device.type)
    m = model.cfg
    per_block = kv_block_bytes(m, cfg.block_size, dtype, cfg.kv_dtype == "int8")
    # activations: logits of a full token budget in fp32 + MLP intermediates + the largest weight a
    # quantized prefill dequantizes, plus slack (reserved when the KV pool is derived on CUDA; otherwise the
    # budget bounds the weights alone: on CPU the pool is kv_cache_gb or 1 GiB of RAM, and an explicit
    # kv_cache_gb is the operator's call)
    derive = device.type == "cuda" and cfg.kv_cache_gb is None
    act = cfg.max_batch_tokens * (m.vocab_size * 4 + 4 * m.intermediate_size * 2) + GiB if derive else 0
    elt = torch.finfo(dtype).bits // 8
    act += dequant_reserve(model, cfg.max_num_seqs, elt) if derive else 0
    if derive and prefill_graphs_dequantize(cfg):  # their copy, in the graphs' pool (one LM-head row)
        act += dequant_reserve(model, 1, elt)
    weights = weight_bytes(model)  # quantized layers count their packed bytes
    left = check_budget(weights, act, cfg.gpu_memory_gb, str(device))
    if cfg.kv_cache_gb is not None:
        budget = cfg.kv_cache_gb * GiB
    elif device.type == "cuda":
        budget = left
    else:
        budget = 1 * GiB
    n = int(budget // per_block)
    if n < 4:
        raise ValueError(
            f"KV budget too small: {budget / GiB:.3f} GiB left for the KV pool holds {n} blocks of"
            f" {per_block} B ({n * cfg.block_size} tokens); at least 4 are needed"
        )
    log.info(
        "KV pool: %d blocks = %d tokens (%.3f GiB); weights %.3f GiB",
        n, n * cfg.block_size, n * per_block / GiB, weights / GiB,
    )  # fmt: skip
    return n
