"""``kb engine bench-quality``: perplexity, weight bytes and sparsity of each quantization mode.

Every mode starts from a fresh load of the same weights, shares one calibration pass (taken from answers
that are not in the evaluated text) and is scored on the same token ids, so the numbers differ only by
the quantization. A sparse mode is flagged ``wins`` when it costs at most 2% perplexity
(`SPARSE_MAX_LOSS`) relative to its dense counterpart: only such a mode is worth turning on by default.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from engine.loader import load_model
from engine.quant.calibrate import calibrate
from engine.quant.evaluate import eval_text, perplexity
from engine.quant.linear import teal_everywhere
from engine.quant.policy import QuantPolicy, apply_policy
from engine.tokenizer import Tokenizer

# mode name -> (policy, dense counterpart for sparse modes); "gguf" modes only for .gguf models
MODES: dict[str, tuple[str, str | None]] = {
    "unquantized": ("none", None),
    "int8": ("int8", None),
    "int4-g128": ("int4:g128+gptq", None),
    "int4-g64": ("int4:g64+gptq", None),
    "int4-g128+2:4": ("int4:g128+gptq+2:4wanda", "int4-g128"),
    "int4-g128+teal0.4": ("int4:g128+gptq+teal0.4", "int4-g128"),
    "int4-g32-gguf": ("gguf", None),
    "int4-g32-gguf+teal0.25": ("gguf+teal0.25", "int4-g32-gguf"),
    "int4-g32-gguf+teal0.3": ("gguf+teal0.3", "int4-g32-gguf"),
    "int4-g32-gguf+teal0.4": ("gguf+teal0.4", "int4-g32-gguf"),
    "int4-g32-gguf+teal0.5": ("gguf+teal0.5", "int4-g32-gguf"),
}
SPARSE_MAX_LOSS = 0.02


def run_bench(
    model_dir: Path,
    source: str | Path,
    modes: list[str] | None = None,
    max_tokens: int = 1024,
    window: int = 512,
    device: str = "cpu",
    calib_tokens: int = 4096,
) -> dict[str, dict[str, Any]]:
    """``{mode: {perplexity, weight_bytes, sparsity, ...}}`` for the requested modes.

    ``source`` is the model as configured (a .gguf file enables the ``int4-g32-gguf`` modes: the
    file's own Q4 blocks); by default every mode available for it runs."""
    is_gguf = str(source).endswith(".gguf")
    modes = modes or [m for m in MODES if is_gguf or not m.startswith("int4-g32-gguf")]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"unknown modes {unknown}; choose from {list(MODES)}")
    dev = torch.device(device)
    dtype = torch.float32 if dev.type == "cpu" else torch.bfloat16
    tok = Tokenizer(model_dir)
    ids = tok.encode(eval_text())[:max_tokens]
    policies = {m: QuantPolicy.parse(MODES[m][0]) for m in modes}
    calib = None
    if any(p.needs_calibration for p in policies.values()):
        base = load_model(model_dir, dev, dtype)
        gptq = any(s.gptq for p in policies.values() for s in p.layers.values())
        calib = calibrate(base, tokenizer=tok, max_tokens=calib_tokens, hessians=gptq)
        del base
    out: dict[str, dict[str, Any]] = {}
    for mode in modes:
        t0 = time.perf_counter()
        model = load_model(model_dir, dev, dtype)
        report = apply_policy(model, policies[mode], calib=calib, source=source)
        with teal_everywhere():
            ppl = perplexity(model, ids, window)
        out[mode] = {
            "perplexity": round(ppl, 4),
            "weight_bytes": report["weight_bytes"],
            "sparsity": {
                "weights": round(report["weight_sparsity"], 4),
                "activations": round(report["act_sparsity"], 4),
            },
            "policy": MODES[mode][0],
            "tokens": len(ids),
            "seconds": round(time.perf_counter() - t0, 1),
        }
    base_ppl = out.get("unquantized", {}).get("perplexity")
    for mode, row in out.items():
        if base_ppl:
            row["vs_unquantized"] = round(row["perplexity"] / base_ppl - 1, 4)
        dense = MODES[mode][1]
        if dense in out:
            row["vs_dense"] = round(row["perplexity"] / out[dense]["perplexity"] - 1, 4)
            row["wins"] = row["vs_dense"] <= SPARSE_MAX_LOSS
    return out
