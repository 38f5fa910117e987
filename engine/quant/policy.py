"""Per-layer quantization policy: parse ``EngineConfig.quant`` and swap ``nn.Linear`` for `QuantLinear`.

Syntax: ``DEFAULT[,TARGET=SPEC...]``. A SPEC is ``int8``, ``int4[:gN]`` (group 128 by default) or ``bf16``
(``fp``/``none``: keep the layer as loaded), optionally followed by ``+2:4`` (magnitude 2:4 pruning, int4
only), ``+2:4wanda`` (Wanda 2:4, calibrated) and ``+tealP`` (TEAL activation sparsity ``P`` at decode,
calibrated thresholds). TARGETs: ``attn`` (``qkv`` + ``o``), ``mlp`` (``gate_up`` + ``down``), ``qkv``,
``o``, ``gate_up``, ``down``, ``lm_head``. Examples: ``int4:g128``, ``int8``, ``int4:g64,attn=int8,
lm_head=bf16``, ``int4:g128+2:4``, ``int4:g128+teal0.4``.

``lm_head`` stays as loaded unless named: it is the most sensitive layer, and with tied embeddings
(SmolLM2, Llama-3.2-1B) quantizing it adds a second copy instead of saving memory.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.quant.calibrate import Calibration, calibrate
from engine.quant.linear import QuantLinear
from engine.quant.loaders.gguf import apply_gguf_weights
from engine.quant.memory import weight_bytes
from engine.quant.quantize import gptq_int4, prune_2_4, quantize_int4, quantize_int8

log = logging.getLogger(__name__)
TARGETS = ("qkv", "o", "gate_up", "down", "lm_head")
GROUPS = {"attn": ("qkv", "o"), "mlp": ("gate_up", "down")}
SUFFIX = {
    "qkv": "self_attn.qkv_proj",
    "o": "self_attn.o_proj",
    "gate_up": "mlp.gate_up_proj",
    "down": "mlp.down_proj",
}
# Part of every int4 fingerprint; changed whenever our int4 quantizer's output changes for the same spec,
# so that KV a disk tier kept from an older kb (computed on other weights) is never reused.
INT4_QUANTIZER = "int4fit=lsq2"  # real-valued zeros, two least-squares rounds, GPTQ over partial groups
_SPEC = re.compile(r"^(int8|int4(?::g(\d+))?|gguf|bf16|fp16|fp32|fp|none)((?:\+[a-z0-9:.]+)*)$")


@dataclass(frozen=True)
class LayerSpec:
    """How one kind of linear layer is stored."""

    fmt: str = "none"  # "none" | "int8" | "int4"
    group: int = 128
    sparse24: str | None = None  # None | "magnitude" | "wanda"
    teal: float | None = None
    gptq: bool = False  # int4 through GPTQ (calibrated Hessians) instead of RTN + clipping

    def canonical(self) -> str:
        if self.fmt in ("none", "gguf"):
            return "bf16" if self.fmt == "none" else "gguf" + (f"+teal{self.teal:.2f}" if self.teal else "")
        s = "int8" if self.fmt == "int8" else f"int4:g{self.group}"
        if self.gptq:
            s += "+gptq"
        if self.sparse24:
            s += "+2:4" + ("wanda" if self.sparse24 == "wanda" else "")
        if self.teal is not None:
            s += f"+teal{self.teal:.2f}"
        return s


def parse_spec(text: str) -> LayerSpec:
    """One SPEC (see module doc); raises ``ValueError`` naming the bad part."""
    m = _SPEC.match(text.strip().lower())
    if not m:
        raise ValueError(
            f"bad quantization spec {text!r}: expected int8, int4[:gN] or bf16, then +2:4 / +tealP"
        )
    base, group, mods = m.group(1), m.group(2), m.group(3)
    fmt = {"int8": "int8", "gguf": "gguf"}.get(base, "int4" if base.startswith("int4") else "none")
    g = int(group) if group else 128
    if fmt == "int4" and (g < 8 or g % 8):
        raise ValueError(f"int4 group must be a multiple of 8 (>= 8), got {g}")
    sparse24, teal, gptq = None, None, False
    for mod in filter(None, mods.split("+")):
        if mod in ("2:4", "2:4wanda"):
            if fmt != "int4":
                raise ValueError(f"2:4 sparsity is combined with int4 only, not {base!r} (in {text!r})")
            sparse24 = "wanda" if mod.endswith("wanda") else "magnitude"
        elif mod == "gptq":
            if fmt != "int4":
                raise ValueError(f"+gptq applies to int4 only, not {base!r} (in {text!r})")
            gptq = True
        elif mod.startswith("teal"):
            try:
                teal = float(mod[4:] or 0.4)
            except ValueError:
                raise ValueError(f"bad TEAL sparsity in {text!r}: use e.g. +teal0.4") from None
            if not 0.0 < teal < 1.0:
                raise ValueError(f"TEAL sparsity must be in (0, 1), got {teal} in {text!r}")
            if fmt == "none":
                raise ValueError(f"TEAL needs a quantized layer (int8/int4), not {base!r} (in {text!r})")
        else:
            raise ValueError(f"unknown modifier +{mod} in {text!r}: use +gptq, +2:4, +2:4wanda or +tealP")
    return LayerSpec(fmt, g, sparse24, teal, gptq)


@dataclass(frozen=True)
class QuantPolicy:
    """Resolved spec per target kind; ``none`` leaves the model untouched."""

    layers: dict[str, LayerSpec] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str | None) -> QuantPolicy:
        text = (text or "none").strip()
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts or "=" in parts[0]:
            raise ValueError(
                f"quant policy {text!r} must start with a default spec, e.g. 'int4:g128,attn=int8'"
            )
        default = parse_spec(parts[0])
        if default.fmt == "gguf" and len(parts) > 1:
            raise ValueError(f"'gguf' (the file's own 4/8-bit blocks) takes no per-layer overrides: {text!r}")
        layers = {t: default for t in TARGETS if t != "lm_head"}
        layers["lm_head"] = LayerSpec()
        for p in parts[1:]:
            if "=" not in p:
                raise ValueError(f"bad policy part {p!r} in {text!r}: overrides are TARGET=SPEC")
            target, spec = (s.strip().lower() for s in p.split("=", 1))
            names = GROUPS.get(target, (target,))
            if names[0] not in TARGETS:
                known = sorted([*GROUPS, *TARGETS])
                raise ValueError(f"unknown target {target!r} in {text!r}: use one of {known}")
            for t in names:
                layers[t] = parse_spec(spec)
        return cls(layers)

    @property
    def enabled(self) -> bool:
        return any(s.fmt != "none" for s in self.layers.values())

    @property
    def needs_calibration(self) -> bool:
        """TEAL thresholds, Wanda and GPTQ need it; int4 clipping uses it when it can be had."""
        return self.requires_calibration or any(s.fmt == "int4" for s in self.layers.values())

    @property
    def requires_calibration(self) -> bool:
        return any(s.teal is not None or s.sparse24 == "wanda" or s.gptq for s in self.layers.values())

    @property
    def gguf(self) -> bool:
        return self.layers.get("qkv", LayerSpec()).fmt == "gguf"

    def fingerprint(self) -> str:
        """Canonical text: equal for equivalent spellings, ``""`` when nothing is quantized."""
        if not self.enabled:
            return ""
        text = ",".join(f"{t}={self.layers[t].canonical()}" for t in TARGETS)
        return text + (f"|{INT4_QUANTIZER}" if any(s.fmt == "int4" for s in self.layers.values()) else "")


def _gguf_file(source: str | Path | None) -> Path:
    """The .gguf file behind ``source`` (a file, or a folder holding exactly one)."""
    p = Path(source) if source else None
    if p is not None and p.is_dir():
        found = sorted(p.glob("*.gguf"))
        p = found[0] if len(found) == 1 else None
    if p is None or p.suffix != ".gguf" or not p.is_file():
        raise ValueError(f"quant='gguf' needs the model to be a .gguf file, got {source!r}")
    return p


def _linears(model: nn.Module, target: str) -> list[str]:
    if target == "lm_head":
        return ["lm_head"]
    return [f"model.layers.{i}.{SUFFIX[target]}" for i in range(len(model.model.layers))]


def _set(model: nn.Module, name: str, mod: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, mod)


@torch.no_grad()
def apply_policy(
    model: nn.Module,
    policy: QuantPolicy | str,
    calib: Calibration | None = None,
    tokenizer: Any = None,
    source: str | Path | None = None,
) -> dict[str, Any]:
    """Replace the model's linears in place; returns a report (counts, bytes, sparsity, fingerprint).

    Calibration (input norms for Wanda and the int4 clipping weights, TEAL thresholds) runs on the
    still-unquantized model when the policy needs it and ``calib`` is not given (needs ``tokenizer``).
    ``source``: the model path as configured; the ``gguf`` policy reads its quantized blocks from it.
    """
    if isinstance(policy, str):
        policy = QuantPolicy.parse(policy)
    if any(s.teal is not None or s.sparse24 for s in policy.layers.values()):
        log.warning(
            "quant policy %s: the sparse modes are for experiments; as last measured they decode slower "
            "than dense int4 (on an H100 at batch 1, TEAL 40%%: 201.4 against 426.5 tok/s; 2:4: 202.4 "
            "against 411.5 tok/s) and cost perplexity (bench/RESULTS.md, issue 6)",
            policy.fingerprint(),
        )
    before = weight_bytes(model)
    report: dict[str, Any] = {"fingerprint": policy.fingerprint(), "layers": {}}
    report["weight_bytes_before"] = before
    if not policy.enabled:
        return {**report, "weight_bytes": before, "weight_sparsity": 0.0, "act_sparsity": 0.0}
    gptq = any(s.gptq for s in policy.layers.values())
    if calib is None and (policy.requires_calibration or (policy.needs_calibration and tokenizer)):
        # GPTQ's Hessians (K up to 14336) want more tokens than input norms and TEAL quantiles do
        calib = calibrate(model, tokenizer=tokenizer, max_tokens=4096 if gptq else 1024, hessians=gptq)
    if gptq and not calib.hessians:
        raise ValueError("a +gptq policy needs a calibration with hessians (calibrate(..., hessians=True))")
    pruned = total = 0
    teal_w = teal_n = 0.0
    thresholds: dict[float, dict[str, float]] = {}
    if policy.gguf:
        spec = policy.layers["qkv"]
        report["layers"]["gguf"] = apply_gguf_weights(model, _gguf_file(source))
        thr = calib.teal_thresholds(spec.teal) if spec.teal is not None else {}
        for name, mod in model.named_modules():
            if isinstance(mod, QuantLinear):
                mod.act_threshold = thr.get(name)
                n = mod.in_features * mod.out_features
                teal_w, teal_n = teal_w + (spec.teal or 0.0) * n, teal_n + n
    for target, spec in policy.layers.items():
        if spec.fmt in ("none", "gguf"):
            continue
        for name in _linears(model, target):
            if name == "lm_head" and not hasattr(model, "lm_head"):
                w, bias = model.model.embed_tokens.weight, None  # tied: a quantized copy for the head
            else:
                lin = model.get_submodule(name)
                if not isinstance(lin, nn.Linear):
                    raise TypeError(f"{name} is {type(lin).__name__}, not nn.Linear (quantized twice?)")
                w, bias = lin.weight, lin.bias
            norms = calib.act_norms.get(name) if calib is not None else None
            mask = None
            if spec.sparse24:
                mask = prune_2_4(w, norms if spec.sparse24 == "wanda" else None)
                pruned += int((~mask).sum())
            if spec.fmt == "int8":
                qw = quantize_int8(w)
            elif spec.gptq and name in calib.hessians:  # lm_head has no calibrated inputs: RTN
                qw = gptq_int4(w, calib.hessians[name], spec.group, mask)
            else:
                qw = quantize_int4(w, spec.group, norms, mask)
            thr = None
            if spec.teal is not None:
                thr = thresholds.setdefault(spec.teal, calib.teal_thresholds(spec.teal)).get(name)
                teal_w += spec.teal * w.numel()
            teal_n += w.numel()
            total += w.numel()
            _set(model, name, QuantLinear(qw.to(w.device), bias, thr))
            report["layers"][spec.canonical()] = report["layers"].get(spec.canonical(), 0) + 1
    if calib is not None and policy.needs_calibration:  # thresholds, masks, clipping depend on it
        report["fingerprint"] += f"|calib={calib.source}"
    report["weight_bytes"] = weight_bytes(model)
    report["weight_sparsity"] = pruned / total if total else 0.0
    report["act_sparsity"] = teal_w / teal_n if teal_n else 0.0
    return report
