"""A small calibration pass: a few FAQ answers through the (unquantized) model on CPU.

It records, for every linear layer's input: the per-channel L2 norm over tokens (Wanda's pruning score,
and the importance weights of the int4 clipping search) and a fixed random sample of ``|x|`` from which
TEAL thresholds are read as quantiles. TEAL's threshold for a target sparsity ``p`` is the ``p``-quantile
of the input magnitudes, per linear: the activations of different layers differ by orders of magnitude,
so one global threshold would sparsify some layers fully and others not at all.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch
from torch import nn

from engine.model import LlamaForCausalLM
from engine.quant.evaluate import calib_texts, forward_dense

SAMPLES_PER_LINEAR = 1 << 16


@dataclass
class Calibration:
    """Per-linear input statistics keyed by module name (``model.layers.3.mlp.down_proj``)."""

    act_norms: dict[str, torch.Tensor] = field(default_factory=dict)  # [K] fp32
    abs_samples: dict[str, torch.Tensor] = field(default_factory=dict)  # [<= SAMPLES_PER_LINEAR] fp32
    hessians: dict[str, torch.Tensor] = field(default_factory=dict)  # [K, K] fp32 X^T X (GPTQ only)
    source: str = ""  # hash of the calibration token ids (goes into the policy fingerprint)
    tokens: int = 0

    def teal_thresholds(self, sparsity: float) -> dict[str, float]:
        """Per-linear magnitude threshold zeroing a ``sparsity`` fraction of its inputs."""
        if not 0.0 < sparsity < 1.0:
            raise ValueError(f"TEAL sparsity must be in (0, 1), got {sparsity}")
        return {k: torch.quantile(v, sparsity).item() for k, v in self.abs_samples.items()}


def linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


@torch.inference_mode()
def calibrate(
    model: LlamaForCausalLM,
    token_ids: list[list[int]] | None = None,
    tokenizer=None,
    max_tokens: int = 2048,
    hessians: bool = False,
) -> Calibration:
    """Run ``token_ids`` (or the shipped calibration answers, tokenized) and collect input statistics.

    ``hessians``: also keep ``X^T X`` per linear for GPTQ (``sum K^2 * 4`` bytes: 0.4 GB for SmolLM2-135M,
    tens of GB for 8B models, which should load pre-quantized GPTQ/AWQ checkpoints instead)."""
    if token_ids is None:
        if tokenizer is None:
            raise ValueError("calibrate needs token ids or a tokenizer")
        token_ids = [tokenizer.encode(t) for t in calib_texts()]
    seqs, total = [], 0
    for ids in token_ids:
        if total >= max_tokens:
            break
        ids = ids[: max_tokens - total]
        seqs.append(ids)
        total += len(ids)
    sq: dict[str, torch.Tensor] = {}
    hs: dict[str, torch.Tensor] = {}
    samples: dict[str, list[torch.Tensor]] = {}
    gen = torch.Generator().manual_seed(0)
    per_seq = max(1, SAMPLES_PER_LINEAR // max(1, len(seqs)))

    def hook(name: str):
        def fn(_mod: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].detach().float().reshape(-1, args[0].shape[-1]).cpu()
            sq[name] = sq.get(name, 0) + (x * x).sum(0)
            if hessians:
                hs[name] = hs.get(name, 0) + x.T @ x
            flat = x.abs().flatten()
            idx = torch.randint(0, flat.numel(), (min(per_seq, flat.numel()),), generator=gen)
            samples.setdefault(name, []).append(flat[idx])

        return fn

    mods = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"}
    handles = [m.register_forward_pre_hook(hook(n)) for n, m in mods.items()]
    try:
        for ids in seqs:
            forward_dense(model, torch.tensor(ids, dtype=torch.long))
    finally:
        for h in handles:
            h.remove()
    digest = hashlib.sha256(repr(seqs).encode()).hexdigest()[:12]
    return Calibration(
        act_norms={k: v.sqrt() for k, v in sq.items()},
        abs_samples={k: torch.cat(v) for k, v in samples.items()},
        hessians=hs,
        source=digest,
        tokens=total,
    )
