"""Sampling parameters and the sampler (greedy, temperature, top-k, top-p, per-request seed)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SamplingParams:
    """Per-request decoding settings. ``temperature == 0`` means greedy."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError("need temperature >= 0, 0 < top_p <= 1, top_k >= 0")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1


def make_generator(params: SamplingParams) -> torch.Generator | None:
    """CPU generator so a seed gives the same text on any device."""
    if params.greedy:
        return None
    g = torch.Generator()
    g.manual_seed(params.seed if params.seed is not None else torch.seed() % (2**63))
    return g


def argmax_rows(logits: torch.Tensor) -> torch.Tensor:
    """``logits.argmax(-1)`` for ``[B, V]`` rows, the same index (the first maximum), in two reductions on
    CUDA: the max of each of ~64 slices of a row, then the best slice. Why: torch reduces a 128K-wide row
    in one kernel with few blocks (27.5 us on an H200 at batch 1, 1.1% of an int4 decode step), where
    the slices spread over the GPU (bench/RESULTS.md)."""
    v = logits.shape[-1]
    parts = next((p for p in (64, 128, 32, 96, 48) if v % p == 0 and v // p >= 512), 0)
    if not logits.is_cuda or parts == 0 or logits.dim() != 2:
        return logits.argmax(-1)
    return sliced_argmax(logits, parts)


def sliced_argmax(logits: torch.Tensor, parts: int) -> torch.Tensor:
    """`argmax_rows` through ``parts`` equal slices of each row (``V % parts == 0``)."""
    b, v = logits.shape
    vals, idx = logits.reshape(b, parts, v // parts).max(-1)  # each slice's first maximum
    best = vals.argmax(-1, keepdim=True)  # the first slice holding the row's maximum
    return (best * (v // parts) + idx.gather(1, best)).squeeze(1)


def sample_one(logits: torch.Tensor, p: SamplingParams, gen: torch.Generator | None) -> int:
    """Sample from one row of fp32 logits (already on CPU for the non-greedy case)."""
    if p.greedy:
        return int(logits.argmax())
    x = logits.float() / p.temperature
    if p.top_k:
        kth = torch.topk(x, min(p.top_k, x.numel())).values[-1]
        x = x.masked_fill(x < kth, float("-inf"))
    if p.top_p < 1.0:
        sorted_x, idx = torch.sort(x, descending=True)
        probs = sorted_x.softmax(-1)
        drop = probs.cumsum(-1) - probs > p.top_p  # keep the smallest set with mass >= top_p
        sorted_x = sorted_x.masked_fill(drop, float("-inf"))
        x = torch.full_like(x, float("-inf")).scatter(0, idx, sorted_x)
    return int(torch.multinomial(x.softmax(-1), 1, generator=gen))


def sample_batch(
    logits: torch.Tensor,
    params: list[SamplingParams],
    gens: list[torch.Generator | None],
    greedy_ids: torch.Tensor | None = None,
) -> list[int]:
    """Greedy rows stay on the device (one argmax, or ``greedy_ids`` when the caller has them: a decode
    graph computes its own); others go to CPU one row at a time."""
    greedy = []
    if any(p.greedy for p in params):  # no device argmax for a batch that only samples
        greedy = (argmax_rows(logits) if greedy_ids is None else greedy_ids).tolist()
    return [greedy[i] if p.greedy else sample_one(logits[i].cpu(), p, gens[i]) for i, p in enumerate(params)]
