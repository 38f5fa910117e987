"""Perplexity of our decoder on the shipped FAQ text (``engine/data/faq_answers.txt``, CC-BY-4.0).

The evaluation text is the file's first answers (up to a token budget); calibration (`calib_texts`) takes
answers from the end of the file, so the two never overlap and the calibrated thresholds are not fitted to
the text they are judged on.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from engine.attention import AttnBatch
from engine.model import LlamaForCausalLM

DATA = Path(__file__).resolve().parent.parent / "data" / "faq_answers.txt"


def faq_answers() -> list[str]:
    """The shipped answers, one per line (header comment dropped)."""
    return [ln for ln in DATA.read_text(encoding="utf-8").splitlines() if ln and not ln.startswith("#")]


def eval_text() -> str:
    return "\n".join(faq_answers())


def calib_texts(n: int = 100) -> list[str]:
    """The last ``n`` answers: disjoint from the evaluation prefix for any budget under ~15k tokens."""
    return faq_answers()[-n:]


@torch.inference_mode()
def forward_dense(model: LlamaForCausalLM, ids: torch.Tensor) -> torch.Tensor:
    """Final hidden states ``[T, hidden]`` of one fresh sequence (SDPA causal, no cache reuse)."""
    cfg = model.cfg
    t = ids.shape[0]
    dev = model.model.embed_tokens.weight.device
    dtype = model.model.embed_tokens.weight.dtype
    shape = (t, 1, cfg.num_kv_heads, cfg.head_dim)  # block size 1: slot i is block i
    kc = [torch.empty(shape, dtype=dtype, device=dev) for _ in range(cfg.num_layers)]
    vc = [torch.empty(shape, dtype=dtype, device=dev) for _ in range(cfg.num_layers)]
    slots = torch.arange(t, device=dev)
    ab = AttnBatch(slots, [], kc, vc, meta={"mode": "dense"})
    model.ensure_rope(t)
    return model(ids.to(dev), slots, ab)


@torch.inference_mode()
def perplexity(model: LlamaForCausalLM, ids: list[int], window: int = 512) -> float:
    """exp(mean NLL) over non-overlapping windows of ``window`` tokens (each window starts fresh)."""
    nll, count = 0.0, 0
    for s in range(0, len(ids) - 1, window):
        chunk = torch.tensor(ids[s : s + window], dtype=torch.long)
        if chunk.numel() < 2:
            break
        hidden = forward_dense(model, chunk)
        logits = model.logits(hidden[:-1])
        target = chunk[1:].to(logits.device)
        nll += F.cross_entropy(logits.float(), target, reduction="sum").item()
        count += target.numel()
    return math.exp(nll / count)
