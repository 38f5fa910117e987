"""Policy parsing, apply_policy on a small random Llama, memory budget refusal and fingerprints."""

from __future__ import annotations

import logging

import pytest
import torch

from engine.config import EngineConfig, ModelConfig
from engine.llm_engine import Engine
from engine.model import LlamaForCausalLM
from engine.quant.calibrate import calibrate
from engine.quant.evaluate import forward_dense
from engine.quant.linear import QuantLinear
from engine.quant.memory import ModelTooLarge, check_budget, weight_bytes
from engine.quant.policy import INT4_QUANTIZER, LayerSpec, QuantPolicy, apply_policy

CFG = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2)


def tiny(tied: bool = True) -> LlamaForCausalLM:
    torch.manual_seed(0)
    m = LlamaForCausalLM(ModelConfig(**CFG, head_dim=16, tie_word_embeddings=tied))
    m.finish_load(torch.device("cpu"))
    return m.eval().requires_grad_(False)


def test_parse_resolves_targets_and_canonical_fingerprints() -> None:
    p = QuantPolicy.parse("int4:g64, attn=int8, lm_head=bf16")
    assert p.layers["qkv"] == p.layers["o"] == LayerSpec("int8")
    assert p.layers["gate_up"] == p.layers["down"] == LayerSpec("int4", 64)
    assert p.layers["lm_head"] == LayerSpec()
    assert QuantPolicy.parse("int4").fingerprint() == QuantPolicy.parse("INT4:g128").fingerprint()
    assert QuantPolicy.parse("int4:g128+2:4").layers["down"].sparse24 == "magnitude"
    assert QuantPolicy.parse("int4:g128+2:4wanda+gptq").layers["qkv"].canonical() == "int4:g128+gptq+2:4wanda"
    assert QuantPolicy.parse("int4:g128+teal0.4").layers["o"].teal == pytest.approx(0.4)
    assert QuantPolicy.parse("int8,lm_head=int8").layers["lm_head"] == LayerSpec("int8")
    assert QuantPolicy.parse("none").fingerprint() == "" and not QuantPolicy.parse("bf16").enabled
    assert QuantPolicy.parse("int8").fingerprint() != QuantPolicy.parse("int8,down=int4").fingerprint()
    # the int4 quantizer's version is part of an int4 fingerprint: an older kb's disk cache is not reused
    assert QuantPolicy.parse("int8,down=int4").fingerprint().endswith(f"|{INT4_QUANTIZER}")
    assert INT4_QUANTIZER not in QuantPolicy.parse("int8").fingerprint()
    assert INT4_QUANTIZER not in QuantPolicy.parse("gguf").fingerprint()  # the file's own blocks


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("int5", "bad quantization spec"),
        ("int8+2:4", "int4 only"),
        ("int4+teal1.5", r"\(0, 1\)"),
        ("bf16+teal0.3", "needs a quantized layer"),
        ("int4,ffn=int8", "unknown target"),
        ("attn=int8", "must start with a default"),
        ("int4:g7", "multiple of 8"),
        ("int8+gptq", "int4 only"),
        ("gguf,attn=int8", "no per-layer overrides"),
        ("int4+sparse", "unknown modifier"),
    ],
)
def test_parse_rejects_bad_policies_with_a_message(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        QuantPolicy.parse(text)


def test_apply_policy_replaces_linears_and_keeps_outputs_close() -> None:
    ids = torch.randint(0, 256, (40,), generator=torch.Generator().manual_seed(1))
    ref_model = tiny()
    ref = ref_model.logits(forward_dense(ref_model, ids))
    calib = calibrate(ref_model, [list(range(0, 200, 3)), list(range(5, 250, 7))], hessians=True)
    assert set(calib.hessians) == {n for n, _ in ref_model.named_modules() if n.endswith("_proj")}
    for text, tol in [("int8", 0.02), ("int4:g32,attn=int8", 0.15), ("int4:g32+gptq", 0.15)]:
        m = tiny()
        before = weight_bytes(m)
        rep = apply_policy(m, text, calib=calib)
        assert isinstance(m.model.layers[1].mlp.down_proj, QuantLinear)
        assert not hasattr(m, "lm_head")  # tied head left alone unless asked
        assert rep["weight_bytes"] < before == rep["weight_bytes_before"]
        assert rep["fingerprint"].startswith(QuantPolicy.parse(text).fingerprint())
        out = m.logits(forward_dense(m, ids))
        assert (out - ref).abs().max() / ref.abs().max() < tol, text
    with pytest.raises(TypeError, match="quantized twice"):
        apply_policy(m, "int8")


def test_sparse_policies_report_their_sparsity_and_tied_head_quantization(caplog) -> None:
    m = tiny()
    calib = calibrate(m, [list(range(0, 256, 2))])
    with caplog.at_level(logging.WARNING, logger="engine.quant.policy"):
        apply_policy(tiny(), "int4:g32", calib=calib)
        assert not caplog.records  # dense int4: no warning
        rep = apply_policy(m, "int4:g32+2:4wanda+teal0.5", calib=calib)
    assert "slower than dense int4" in caplog.text  # a user who turns sparsity on to go faster is told
    assert rep["weight_sparsity"] == pytest.approx(0.5)
    assert rep["act_sparsity"] == pytest.approx(0.5)
    down = m.model.layers[0].mlp.down_proj
    assert (down.qweight.mask.view(64, -1, 4).sum(-1) == 2).all() and down.act_threshold > 0
    m = tiny()
    rep = apply_policy(m, "int4:g32+2:4,lm_head=int8", calib=calib)
    assert 0.3 < rep["weight_sparsity"] < 0.5  # the int8 head is dense
    assert isinstance(m.lm_head, QuantLinear) and m.lm_head.act_threshold is None
    logits = m.logits(torch.randn(3, 64))
    assert logits.shape == (3, 256) and logits.dtype == torch.float32


def test_gpu_memory_budget_refuses_with_numbers_and_counts_quantized_bytes(caplog) -> None:
    m = tiny()
    full = weight_bytes(m)
    budget_gb = 0.8 * full / 1024**3  # the fp32 weights do not fit, int8 ones do
    cfg = EngineConfig(model="tiny", device="cpu", gpu_memory_gb=budget_gb, kv_cache_gb=0.001)
    with pytest.raises(ModelTooLarge, match=r"weights 0\.\d+ MiB.*> budget 0\.\d+ MiB.*quantize"):
        Engine(cfg, model=m, fingerprint="tiny")
    with caplog.at_level(logging.INFO, logger="engine.kv_pool"):
        eng = Engine(EngineConfig(**{**cfg.__dict__, "quant": "int8"}), model=tiny(), fingerprint="tiny")
    try:
        assert eng.quant["weight_bytes"] < 0.8 * full
        assert any("KV pool:" in r.message and "tokens" in r.message for r in caplog.records)
        plain = Engine(
            EngineConfig(model="tiny", device="cpu", kv_cache_gb=0.001), model=tiny(), fingerprint="tiny"
        )
        assert plain.fingerprint != eng.fingerprint  # KV caches of two quantizations never mix
        plain.close()
        out = eng.complete([5, 6, 7], None)
        assert out.finish_reason in ("length", "stop")
    finally:
        eng.close()


def test_check_budget_reserves_activations_and_reports_the_numbers() -> None:
    gib = 1024**3
    assert check_budget(8 * gib, 2 * gib, 11.0, "cuda:0") == 1 * gib
    with pytest.raises(
        ModelTooLarge, match=r"weights 10\.000 GiB \+ activation reserve 2\.000 GiB = 12\.000 GiB"
    ):
        check_budget(10 * gib, 2 * gib, 11.0, "cuda:0")


def test_dequant_reserve_is_the_largest_prefill_weight_and_the_head_only_for_wide_batches() -> None:
    """The KV pool leaves room for the bf16 copy a prefill makes of one quantized weight; the LM head
    (one row per sequence) joins only when more sequences run than its fused kernel takes: `CHUNK_ROWS`,
    or one for a 2:4 head (`SPARSE24_MAX_ROWS`)."""
    from engine.quant.gpu import CHUNK_ROWS
    from engine.quant.memory import dequant_reserve

    m = tiny(tied=False)
    assert dequant_reserve(m, 64, 2) == 0  # nothing quantized: no copy is ever made
    apply_policy(m, "int4:g64")
    c = m.cfg
    body = max(2 * c.intermediate_size * c.hidden_size, c.hidden_size * c.hidden_size) * 2
    assert dequant_reserve(m, CHUNK_ROWS, 2) == body
    head = c.vocab_size * c.hidden_size * 2
    assert dequant_reserve(m, CHUNK_ROWS + 1, 2) == max(body, head)
    for head_spec, rows in (("int4:g64", CHUNK_ROWS), ("int4:g64+2:4", 1)):  # 2:4: its kernel takes one row
        m = tiny(tied=False)
        apply_policy(m, f"bf16,qkv=int4:g64,lm_head={head_spec}")
        qkv = m.model.layers[0].self_attn.qkv_proj
        small = qkv.in_features * qkv.out_features * 2
        assert small < head
        assert dequant_reserve(m, rows, 2) == small
        assert dequant_reserve(m, rows + 1, 2) == head


def test_kv_budget_keeps_room_for_the_prefill_graphs_own_dequantized_weight() -> None:
    """Prefill graphs of more than CHUNK_ROWS tokens dequantize inside the graphs' pool, apart from the
    eager allocator's copy: the derived KV pool gives up one more largest weight (no LM head: one row)."""
    from dataclasses import replace

    from engine.kv_pool import kv_block_bytes, kv_pool_blocks
    from engine.quant.gpu import CHUNK_ROWS
    from engine.quant.memory import dequant_reserve

    m = tiny(tied=False)
    apply_policy(m, "int4:g64")
    base = EngineConfig(model="<in-memory>", gpu_memory_gb=1.5, max_batch_tokens=64)
    cuda, bf16 = torch.device("cuda"), torch.bfloat16  # sizes only: nothing is allocated
    blocks = {t: kv_pool_blocks(m, replace(base, prefill_graph_tokens=t), cuda, bf16) for t in (0, 64, 512)}
    per_block = kv_block_bytes(m.cfg, base.for_device("cuda").block_size, bf16, False)
    assert blocks[CHUNK_ROWS] == blocks[0]  # its buckets run the GEMV kernels: no copy
    extra = dequant_reserve(m, 1, 2)
    assert extra > 0 and blocks[0] - blocks[512] in (extra // per_block, extra // per_block + 1)
