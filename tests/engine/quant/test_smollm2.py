"""Quantized SmolLM2-135M (the packaged Q4_1 GGUF): perplexity bounds, GGUF blocks, a coherent int4 answer.

The packaged weights already sit on GGUF's Q4_1 grid (group 32, fp16 scale and min), which the
"unquantized" reference is the dequantization of. Loading those blocks as int4 g32 is exact; int8 must
stay within 1%; re-gridding to int4 g128/g64 stacks a second 4-bit rounding on the first, and with GPTQ
and real-valued zeros stays within 5% on the benchmark's text (`kb engine bench-quality`'s protocol).
"""

from __future__ import annotations

import pytest
import torch

from engine.config import EngineConfig, default_model
from engine.llm_engine import Engine
from engine.loader import load_model
from engine.quant.bench import run_bench
from engine.quant.calibrate import calibrate
from engine.quant.evaluate import eval_text, perplexity
from engine.quant.linear import QuantLinear, teal_everywhere
from engine.quant.loaders.gguf import apply_gguf_weights
from engine.quant.policy import apply_policy
from engine.sampling import SamplingParams
from engine.tokenizer import Tokenizer

pytestmark = pytest.mark.slow
TOKENS = 384


@pytest.fixture(scope="module")
def setup(model_dir):
    ids = Tokenizer(model_dir).encode(eval_text())[:TOKENS]
    base = load_model(model_dir, torch.device("cpu"), torch.float32)
    return ids, perplexity(base, ids, TOKENS), base


@pytest.fixture(scope="module")
def calib(model_dir, setup):
    return calibrate(setup[2], tokenizer=Tokenizer(model_dir), max_tokens=1024)


def _ppl(model_dir, ids, policy: str, calib=None) -> float:
    m = load_model(model_dir, torch.device("cpu"), torch.float32)
    apply_policy(m, policy, calib=calib, source=default_model())
    with teal_everywhere():  # one prefill scored with the per-token numerics of decode
        return perplexity(m, ids, TOKENS)


def test_gguf_q4_1_blocks_are_exact_int4_g32(model_dir, setup) -> None:
    ids, ppl0, base = setup
    m = load_model(model_dir, torch.device("cpu"), torch.float32)
    assert apply_gguf_weights(m, default_model()) == 4 * m.cfg.num_layers  # qkv, o, gate_up, down
    mods = {n: x for n, x in m.named_modules() if isinstance(x, QuantLinear)}
    assert len(mods) == 4 * m.cfg.num_layers
    for name, mod in mods.items():  # against transformers' dequantization (the converted cache)
        assert mod.qweight.group == 32
        ref = base.get_submodule(name).weight
        torch.testing.assert_close(mod.qweight.dequantize(), ref, rtol=0, atol=2e-6 * ref.abs().max().item())
    assert perplexity(m, ids, TOKENS) == pytest.approx(ppl0, rel=1e-4)


def test_int8_within_one_percent(model_dir, setup) -> None:
    ids, ppl0, _ = setup
    ppl = _ppl(model_dir, ids, "int8")
    assert ppl != ppl0 and ppl / ppl0 - 1 < 0.01


def test_int4_g128_and_g64_within_five_percent_on_the_benchmark_text(model_dir) -> None:
    """The issue's bound, on what `kb engine bench-quality --max-tokens 2048` scores: 2,048 tokens of the
    FAQ text, GPTQ calibrated on 4,096 others. Measured +4.25 % (g128) and +1.99 % (g64); with integer
    zeros and plain rounding of K's partial last group they were +22.0 % and +8.0 % (bench/RESULTS.md)."""
    rows = run_bench(model_dir, default_model(), ["unquantized", "int4-g128", "int4-g64"], max_tokens=2048)
    assert rows["int4-g128"]["tokens"] == 2048
    for mode in ("int4-g128", "int4-g64"):
        assert 0 < rows[mode]["vs_unquantized"] < 0.05, rows
    assert rows["int4-g64"]["perplexity"] < rows["int4-g128"]["perplexity"]


def test_int4_rtn_g128_and_2_4_at_measured_level(model_dir, setup, calib) -> None:
    ids, ppl0, _ = setup
    g128 = _ppl(model_dir, ids, "int4:g128", calib)
    assert ppl0 < g128 < 1.15 * ppl0  # RTN + clipping + least squares: +11.0 % measured at 384 tokens
    # 2:4 on top of int4 g128 does not win on a 135M model (+>100%): it is never on by default
    assert _ppl(model_dir, ids, "int4:g128+2:4wanda", calib) > 1.5 * g128


def test_teal_at_25_percent_wins_on_the_gguf_int4_weights(model_dir, setup, calib) -> None:
    """The sparse mode within 2% of its dense counterpart (bench/RESULTS.md); 50% is far off."""
    ids, ppl0, _ = setup
    assert _ppl(model_dir, ids, "gguf+teal0.25", calib) <= 1.02 * ppl0
    assert _ppl(model_dir, ids, "gguf+teal0.5", calib) > 1.1 * ppl0


def test_int4_answers_faq_style_prompts_coherently() -> None:
    cfg = EngineConfig(model=default_model(), device="cpu", quant="int4:g128", num_kv_blocks=64)
    eng = Engine.from_config(cfg)
    try:
        assert eng.quant["layers"] == {"int4:g128": 4 * 30}
        cases = [
            ("What is a building permit?", ("permit", "build")),
            ("Why do buildings need insulation?", ("insulation", "heat")),
        ]
        for question, words in cases:
            text = eng.complete([{"role": "user", "content": question}], SamplingParams(max_tokens=40)).text
            assert all(w in text.lower() for w in words), (question, text)
    finally:
        eng.close()


@pytest.mark.parametrize("policy", ["gguf", "int8"])
def test_bf16_with_packed_cpu_kernels_within_one_percent(model_dir, setup, monkeypatch, policy) -> None:
    """bf16 activations and the packed CPU kernels (bf16 scales) on every row: the numerics a decode
    step on a bf16 CPU sees, scored as one prefill (+0.1 % measured, bench/RESULTS.md "CPU engine")."""
    from engine.quant import cpu_linear

    ids, ppl0, _ = setup
    calls: list[int] = []
    real = cpu_linear.matmul
    monkeypatch.setattr(cpu_linear, "matmul", lambda p, x: calls.append(1) or real(p, x))
    monkeypatch.setattr(cpu_linear, "MAX_ROWS", TOKENS)
    m = load_model(model_dir, torch.device("cpu"), torch.bfloat16)
    apply_policy(m, policy, source=default_model())
    ppl = perplexity(m, ids, TOKENS)
    assert len(calls) == 4 * m.cfg.num_layers  # every quantized layer went through a packed kernel
    assert abs(ppl / ppl0 - 1) < 0.01, (ppl, ppl0)


def test_bf16_engine_with_the_gguf_blocks_answers_and_reuses_turns() -> None:
    """The fast CPU set-up end to end: bf16, the GGUF's own int4 blocks, packed decode kernels."""
    cfg = EngineConfig(model=default_model(), device="cpu", dtype="bfloat16", quant="gguf", num_kv_blocks=64)
    eng = Engine.from_config(cfg)
    try:
        msgs = [{"role": "user", "content": "What is a building permit?"}]
        r1 = eng.complete(msgs, SamplingParams(max_tokens=40))
        assert all(w in r1.text.lower() for w in ("permit", "build")), r1.text
        packed = [m for m in eng.model.modules() if isinstance(m, QuantLinear) and m.cpu]
        assert len(packed) == 4 * eng.model.cfg.num_layers  # decode steps went through the packed kernels
        turn2 = msgs + [
            {"role": "assistant", "content": r1.text},
            {"role": "user", "content": "Who issues it?"},
        ]
        r2 = eng.complete(turn2, SamplingParams(max_tokens=12))
        assert r2.usage["cached_tokens"] >= 16 * ((r1.usage["prompt_tokens"] + 24) // 16)
    finally:
        eng.close()
