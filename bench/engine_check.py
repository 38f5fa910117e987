"""Why greedy runs part from transformers on random weights: teacher-forced logits, step by step.

    python3 bench/engine_check.py --out $OUT     (GPU; ``--tiny --cpu`` to test the script here)

Free-running greedy agreement is a weak test on random weights: their next-token distributions are
nearly flat, so two correct bf16 implementations pick different tokens at near-ties, and every step after
the first difference sees a different prefix. This script feeds every implementation the *same* tokens
(transformers bf16's greedy continuation) and compares, at each of the 16 generated positions:
  - our engine's choice through each attention path (decode kernel, prefix/paged prefill, gather), made
    with the same cached prefix the engine uses in production,
  - transformers bf16's choice and transformers fp32's (the reference both approximate),
  - the fp32 top-1/top-2 margin there, and the max |logit diff| of each bf16 implementation vs fp32.
A bf16 implementation is as correct as transformers' own when its disagreements with fp32 are as few
and all sit where fp32's margin is within bf16 noise.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.engine_gpu import Bench  # noqa: E402
from engine.sampling import SamplingParams  # noqa: E402

PROMPT, NEW = 64, 16


def all_logits(bench: Bench, eng, ids: list[int]) -> torch.Tensor:
    """Our logits for every position of `ids` in one prefill (the path a fresh prompt takes)."""
    from engine.attention import pack_meta

    r = eng.runner
    n = len(ids)
    table = torch.arange((n + r.bs - 1) // r.bs, device=bench.dev)
    ab = r._ab(torch.arange(n, device=bench.dev))
    ab.seqs = [(0, n, n, table)]
    if r.triton:
        ab.meta = pack_meta([(0, n, n, table.tolist())], bench.dev)
    with torch.inference_mode():
        h = r.model(torch.tensor(ids, device=bench.dev), torch.arange(n, device=bench.dev), ab)
        return r.model.logits(h).float()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--out", default="bench/out")
    p.add_argument("--block-size", type=int, default=16)
    a = p.parse_args()
    a.check_layers = a.layers
    b = Bench(a)
    b.dtype = torch.float32
    hf32 = b.hf_model(layers=a.layers)
    low = torch.bfloat16 if b.dev.type == "cuda" else torch.float32
    hf16 = copy.deepcopy(hf32).to(low)
    b.dtype = low
    ours = b.ours_from({k: v.clone() for k, v in hf16.state_dict().items()}, hf16.config.to_dict())
    variants = {"paged": {}, "gather": {"attn_backend": "gather"}}
    report: dict = {"layers": a.layers, "prompts": [], "dtype": str(low)}
    totals: dict[str, int] = {}
    for _ in range(a.prompts):
        prompt = b.rand_ids(PROMPT)
        with torch.inference_mode():
            seq = hf16.generate(
                torch.tensor([prompt], device=b.dev), max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False
            )[0].tolist()
            l32 = hf32(torch.tensor([seq], device=b.dev)).logits[0].float()
            l16 = hf16(torch.tensor([seq], device=b.dev)).logits[0].float()
        pos = range(PROMPT - 1, PROMPT + NEW - 1)  # logits at pos predict token pos+1
        top2 = l32[list(pos)].topk(2, dim=-1).values
        margin = (top2[:, 0] - top2[:, 1]).tolist()
        ref = l32[list(pos)].argmax(-1).tolist()
        row: dict = {"fp32_margin": [round(m, 4) for m in margin]}
        row["hf_bf16_vs_fp32_disagree"] = [
            i for i, (x, y) in enumerate(zip(seq[PROMPT:], ref, strict=True)) if x != y
        ]
        row["hf_bf16_max_abs_diff"] = (l16 - l32).abs().max().item()
        for name, kw in variants.items():
            eng = b.engine(ours, kv_cache_gb=1.0, **kw)
            full = all_logits(b, eng, seq)
            row[f"{name}_prefill_max_abs_diff"] = (full - l32).abs().max().item()
            row[f"{name}_prefill_vs_fp32_disagree"] = [
                i for i, q in enumerate(pos) if int(full[q].argmax()) != ref[i]
            ]
            # teacher-forced steps through the engine itself: prefix cached, one new token each time,
            # which runs the decode/paged kernel on exactly transformers' prefix
            steps = []
            for i in range(NEW):
                ev = eng.complete(seq[: PROMPT + i], SamplingParams(max_tokens=1, ignore_eos=True))
                steps.append(ev.token_ids[0])
            row[f"{name}_stepwise_vs_fp32_disagree"] = [i for i in range(NEW) if steps[i] != ref[i]]
            row[f"{name}_stepwise_vs_hf_bf16_disagree"] = [
                i for i in range(NEW) if steps[i] != seq[PROMPT + i]
            ]
            free = eng.complete(seq[:PROMPT], SamplingParams(max_tokens=NEW, ignore_eos=True)).token_ids
            row[f"{name}_free_running_equal_prefix"] = next(
                (i for i in range(NEW) if free[i] != seq[PROMPT + i]), NEW
            )
            eng.close()
        for k, v in row.items():
            if k.endswith("disagree"):
                totals[k] = totals.get(k, 0) + len(v)
        bad = {i for k, v in row.items() if k.endswith("vs_fp32_disagree") for i in v}
        row["fp32_margin_at_disagreements"] = {i: round(margin[i], 4) for i in sorted(bad)}
        report["prompts"].append(row)
    report["totals_of_positions"] = {"positions": a.prompts * NEW, **totals}
    report["median_fp32_margin"] = float(
        torch.tensor([m for r in report["prompts"] for m in r["fp32_margin"]]).median()
    )
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "engine_check.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report["totals_of_positions"], indent=1))
    for r in report["prompts"]:
        print({k: v for k, v in r.items() if k != "fp32_margin"})
    print("median fp32 top1-top2 margin", report["median_fp32_margin"])


if __name__ == "__main__":
    main()
