"""Does folding each RMSNorm's weight into the next layer's weights before int4 quantization cost quality?

    python bench/fold_norm_quality.py [--max-tokens 1024]   # CPU, SmolLM2-135M (packaged), ~5 min

Why: a decode layer's norm kernel could go away without the extra L2 reads that sank the last attempt
(bench/RESULTS.md, 2026-12-07 eighth session) if the GEMV behind it multiplied by ``rstd`` alone, the norm's
weight ``gamma`` having been folded into its weights (``W diag(gamma)``, exact in real arithmetic). What
changes is what is quantized: this measures the perplexity of int4 (RTN with the clipping search and GPTQ,
as kb quantizes) with and without the fold, on the same calibration and text as `kb engine bench-quality`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.cli import default_model  # noqa: E402
from engine.loader import load_model, resolve_model_dir  # noqa: E402
from engine.quant.calibrate import calibrate  # noqa: E402
from engine.quant.evaluate import eval_text, perplexity  # noqa: E402
from engine.quant.policy import apply_policy  # noqa: E402
from engine.tokenizer import Tokenizer  # noqa: E402


@torch.no_grad()
def fold_norms(model) -> None:
    """``gamma`` of each layer's two norms into qkv and gate_up (input columns), the norms set to ones."""
    for layer in model.model.layers:
        for norm, lin in (
            (layer.input_layernorm, layer.self_attn.qkv_proj),
            (layer.post_attention_layernorm, layer.mlp.gate_up_proj),
        ):
            lin.weight.mul_(norm.weight.to(lin.weight.dtype)[None, :])
            norm.weight.fill_(1.0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--max-tokens", type=int, default=1024)
    p.add_argument("--policies", default="int4:g128,int4:g128+gptq,int4:g64+gptq")
    a = p.parse_args()
    model_dir = resolve_model_dir(default_model())
    tok = Tokenizer(model_dir)
    ids = tok.encode(eval_text())[: a.max_tokens]
    rows = {}
    base = load_model(model_dir, torch.device("cpu"), torch.float32)
    rows["unquantized"] = perplexity(base, ids)
    folded = load_model(model_dir, torch.device("cpu"), torch.float32)
    fold_norms(folded)
    rows["unquantized, folded"] = perplexity(folded, ids)  # exact in real arithmetic: fp32 rounding only
    calib = {
        False: calibrate(base, tokenizer=tok, max_tokens=4096, hessians=True),
        True: calibrate(folded, tokenizer=tok, max_tokens=4096, hessians=True),
    }
    del base, folded
    for spec in a.policies.split(","):
        for fold in (False, True):
            m = load_model(model_dir, torch.device("cpu"), torch.float32)
            if fold:
                fold_norms(m)
            apply_policy(m, spec, calib=calib[fold])
            rows[f"{spec}{', folded' if fold else ''}"] = perplexity(m, ids)
    ref = rows["unquantized"]
    print("| weights | perplexity | vs unquantized |")
    print("|---|---:|---:|")
    for name, ppl in rows.items():
        print(f"| {name} | {ppl:.4f} | {ppl / ref - 1:+.2%} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
