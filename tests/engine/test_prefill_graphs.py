"""Short prefill chunks through `engine.prefill_graphs`' padded static buffers: the same logits as the eager
path, with and without a cached prefix, for both readers. In CI the buffers run eagerly on CPU (the Triton
kernel in Triton's CPU interpreter); on a GPU (`bash bench/gpu_pending.sh pgraph`) the Triton case captures
and replays real CUDA graphs."""

from __future__ import annotations

import os

import pytest
import torch

from engine.config import EngineConfig, ModelConfig
from engine.model import LlamaForCausalLM
from engine.model_runner import ModelRunner
from engine.prefill_graphs import DEFAULT_PREFILL_GRAPH_TOKENS, prefill_graph_limit, token_buckets
from engine.sampling import SamplingParams
from engine.sequence import Sequence
from tests.engine.test_attention import _interpreter_scalar_fix

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = torch.device("cuda" if torch.cuda.is_available() and not INTERPRETED else "cpu")
CAPTURES = DEVICE.type == "cuda"  # with the Triton reader: real graphs


def _tiny_runner(
    triton: bool, kv_dtype: str = "auto", quant: str | None = None, graph_tokens: int | None = 64
):
    mc = ModelConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
        head_dim=16, rope_theta=10000.0, max_position=4096, eos_token_ids=[],
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(mc)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.ones_like(p) if "norm" in name else torch.randn_like(p) * 0.1)
    model = model.to(DEVICE, torch.bfloat16 if CAPTURES else torch.float32)
    model.finish_load(DEVICE)
    if quant:
        from engine.quant.policy import apply_policy

        apply_policy(model, quant)
        if DEVICE.type == "cuda":  # packed GPU forms before any capture, as the engine does
            from engine.quant.gpu import prepare_model

            prepare_model(model)
    cfg = EngineConfig(
        model="<in-memory>", device=DEVICE.type, num_kv_blocks=32, prefill_graph_tokens=graph_tokens,
        kv_dtype=kv_dtype,
    )  # fmt: skip
    r = ModelRunner(model.eval(), cfg, DEVICE)
    r.triton = triton
    r.prefill.force = not (CAPTURES and triton)  # else the buffers run eagerly
    return r


def _seq(tokens: list[int], computed: int, blocks: list[int]) -> Sequence:
    s = Sequence(tokens, SamplingParams(max_tokens=1))
    s.num_computed = computed
    s.block_table = blocks
    return s


@pytest.mark.parametrize(
    "triton,kv_dtype,quant",
    [(False, "auto", None), (True, "auto", None), (False, "int8", None), (True, "int8", None)]
    + [(False, "auto", "int4:g32"), (True, "auto", "int4:g32")],
)
def test_padded_static_prefill_gives_the_eager_logits(
    triton: bool, kv_dtype: str, quant, monkeypatch
) -> None:
    """int4 weights: buckets up to 128 tokens, so on a GPU the 128 bucket dequantizes its weights inside
    the graph and the smaller ones run the GEMV kernels. int8 KV: both paths store through
    `engine.kv_int8_store` (on CPU its kernel runs interpreted). The static run rewrites the chunk the eager
    run wrote: blocks outside it (the scratch block too: padded tokens write nothing) keep every byte, and
    the chunk's blocks come out the same, up to one int8 step where the two readers round layer 0's output
    apart."""
    if (triton or kv_dtype == "int8") and INTERPRETED:
        _interpreter_scalar_fix(monkeypatch)
    if kv_dtype == "int8" and not CAPTURES:
        monkeypatch.setattr("engine.model.FUSED", True)  # the CUDA path's kernels, interpreted
    r = _tiny_runner(triton, kv_dtype, quant, graph_tokens=128 if quant else 64)
    assert r.int8_store == (kv_dtype == "int8")
    tol = {"atol": 5e-2, "rtol": 5e-2} if CAPTURES else {"atol": 1e-4, "rtol": 1e-4}
    buckets = [16, 32, 64] + ([128] if quant else [])
    assert r.prefill.enabled and r.prefill.buckets == buckets
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(1, 512, (90,), generator=g).tolist()
    blocks = [5, 2, 9, 11, 3, 7]  # shuffled: 96 token slots of 16
    # (already computed, new): a fresh chunk of 37 (padded to 64), then 20 over a cached 50 (to 32)
    for computed, n in ((0, 37), (50, 20), (70, 16)) + (((0, 80),) if quant else ()):
        seq = _seq(tokens[: computed + n], computed, blocks)
        r.prefill.enabled = False  # the eager path: the reference
        if computed:  # the prefix's K/V, written eagerly
            r.run([(_seq(tokens[:computed], 0, blocks), computed)])
        assert not r.prefill.serves([(0, n, computed + n, blocks)], False, None)
        eager = r.run([(seq, n)])
        r.prefill.enabled = True
        assert r.prefill.serves([(0, n, computed + n, blocks)], False, None)
        before = r.kv.clone()
        static = r.run([(seq, n)])
        torch.testing.assert_close(static, eager, **tol)
        assert static.shape == (1, 512)
        if kv_dtype == "int8":  # whole blocks: a write re-quantizes its block's earlier rows
            mine = blocks[computed // 16 : (computed + n - 1) // 16 + 1]
            others = [b for b in range(33) if b not in mine]  # the scratch block (32) too
            assert torch.equal(r.kv[:, :, others], before[:, :, others]), (computed, n)
            payload = 16 * 2 * 16  # the rows; each block's fp32 scales follow them
            step = (r.kv[:, :, mine, :payload].int() - before[:, :, mine, :payload].int()).abs().max()
            assert step <= (0 if not triton else 1), (computed, n)  # readers may round K/V apart
            scales = [kv[:, :, mine, payload:].contiguous().view(torch.float32) for kv in (r.kv, before)]
            torch.testing.assert_close(*scales, rtol=2e-2 if triton else 0, atol=0)
            continue
        # the padded rows wrote only the scratch block: every other slot outside the chunk is unchanged
        moved = (r.kv != before).flatten(4).any(-1).any(0).any(0)  # [blocks, slots]
        for i, b in enumerate(blocks):
            for o in range(16):
                if not computed <= i * 16 + o < computed + n:
                    assert not moved[b, o], (computed, n, b, o)
        assert not moved[[b for b in range(32) if b not in blocks]].any()
    assert {t for t, _ in r.prefill.graphs} == set(buckets)
    captured = [st["graph"] is not None for st in r.prefill.graphs.values()]
    assert all(captured) if CAPTURES and triton else not any(captured)


def test_prefill_graphs_decline_what_they_cannot_serve() -> None:
    r = _tiny_runner(False)
    blocks = [0, 1, 2, 3, 4, 5]
    assert not r.prefill.serves([(0, 65, 65, blocks)], False, None)  # beyond the largest bucket
    assert not r.prefill.serves([(0, 1, 40, blocks)], True, None)  # decode: its own graphs
    assert not r.prefill.serves([(0, 10, 10, blocks), (10, 5, 5, blocks)], False, None)  # two sequences
    assert token_buckets(0) == [] and token_buckets(100) == [16, 32, 64, 100]
    assert token_buckets(512) == [16, 32, 64, 128, 192, 256, 320, 384, 448, 512]
    assert token_buckets(300) == [16, 32, 64, 128, 192, 256, 300]
    assert token_buckets(2048)[-3:] == [512, 1024, 2048]


def test_prefill_graph_plan_covers_every_width_a_bucket_can_meet() -> None:
    r = _tiny_runner(True)
    plan = r.prefill.plan(200)  # 13 blocks of 16: widths 1..16
    assert (16, 1) in plan and (64, 2) not in plan and (64, 4) in plan and (64, 16) in plan
    assert all(w * 16 >= lo for (t, w), lo in zip(plan, [1] * len(plan), strict=True))
    assert r.prefill.precapture(200) == (len(plan) if CAPTURES else 0)  # on CPU nothing is captured


def test_chat_turns_through_the_static_prefill_match_transformers(engine, hf_model) -> None:
    """The packaged SmolLM2: a first turn (fresh) and a second (over the cached first) prefill through the
    padded buffers, and greedy decoding then gives transformers' tokens."""
    from engine.prefill_graphs import token_buckets
    from tests.engine.conftest import hf_greedy
    from tests.engine.test_llm_engine import CHAT

    p = engine.runner.prefill
    p.enabled, p.buckets, p.force = True, token_buckets(64), True
    runs = []
    p.run = lambda *a, run=p.run: runs.append(a[3][1]) or run(*a)  # noqa: E731 - counts the chunks served
    try:
        sp = SamplingParams(max_tokens=8)
        r1 = engine.complete(CHAT, sp)
        assert r1.token_ids == hf_greedy(hf_model, engine.encode_prompt(CHAT), 8)
        msgs = CHAT + [{"role": "assistant", "content": r1.text}, {"role": "user", "content": "And then?"}]
        r2 = engine.complete(msgs, sp)
        assert r2.usage["cached_tokens"] > 0
        assert r2.token_ids == hf_greedy(hf_model, engine.encode_prompt(msgs), 8)
        # each turn's prefill; an earlier test may have cached CHAT (its tail too), and a 1-token remainder
        # runs as a decode step
        new1 = r1.usage["prompt_tokens"] - r1.usage["cached_tokens"]
        new2 = r2.usage["prompt_tokens"] - r2.usage["cached_tokens"]
        assert new2 > 1 and runs == [n for n in (new1, new2) if n > 1]
    finally:
        del p.run
        p.enabled, p.buckets, p.force = False, [], False
        p.graphs.clear()


@pytest.mark.parametrize("triton", [False, True])
def test_a_mixed_step_runs_as_a_decode_graph_and_a_prefill_graph(triton: bool, monkeypatch) -> None:
    """Two decoding sequences and one 30-token chunk over a cached prefix, in one step: the logits of the
    eager mixed pass, in the batch's order, with the chunk's prefill recorded for the cost model."""
    if triton and INTERPRETED:
        _interpreter_scalar_fix(monkeypatch)
    r = _tiny_runner(triton)
    r.force_static = not CAPTURES  # the decode graph's buffers, eagerly on CPU
    g = torch.Generator().manual_seed(2)
    toks = [torch.randint(1, 512, (60,), generator=g).tolist() for _ in range(3)]
    tables = [[5, 2, 9, 11], [3, 7, 1, 4], [8, 0, 6, 10]]
    computed = [40, 21, 16]
    for t, c, tab in zip(toks, computed, tables, strict=True):  # the cached prefixes
        r.run([(_seq(t[:c], 0, tab), c)])
    seqs = [_seq(t[: c + n], c, tab) for t, c, tab, n in zip(toks, computed, tables, (1, 30, 1), strict=True)]
    batch = list(zip(seqs, (1, 30, 1), strict=True))
    r.prefill.enabled, r.force_static, use_graphs = False, False, r.use_graphs
    r.use_graphs = False
    assert r.prefill.run_mixed(batch) is None  # the eager mixed pass: the reference
    eager = r.run(batch)
    r.prefill.enabled, r.force_static, r.use_graphs = True, not CAPTURES, use_graphs
    r.last_prefill = (0, 0.0)
    split = r.run(batch)
    tol = {"atol": 5e-2, "rtol": 5e-2} if CAPTURES else {"atol": 1e-4, "rtol": 1e-4}
    torch.testing.assert_close(split, eager, **tol)
    assert split.shape == (3, 512) and r.last_prefill[0] == 30
    assert (32, 4) in r.prefill.graphs and r.graphs  # a prefill graph and a decode graph served it


def test_graphs_default_on_up_to_512_tokens_for_plain_and_quantized_models() -> None:
    """Unset, `prefill_graph_tokens` means graphs up to 512 tokens, with plain or quantized weights (both
    timed on a GPU); an explicit value wins, 0 turns them off."""
    assert prefill_graph_limit(EngineConfig(model="<in-memory>")) == DEFAULT_PREFILL_GRAPH_TOKENS == 512
    assert prefill_graph_limit(EngineConfig(model="<in-memory>", prefill_graph_tokens=0)) == 0
    plain = _tiny_runner(False, graph_tokens=None)
    assert plain.prefill.enabled and plain.prefill.buckets[-1] == 512
    quantized = _tiny_runner(False, quant="int4:g32", graph_tokens=None)
    assert quantized.prefill.enabled and quantized.prefill.buckets[-1] == 512
    assert _tiny_runner(False, quant="int4:g32", graph_tokens=128).prefill.buckets[-1] == 128
    assert _tiny_runner(False, graph_tokens=0).prefill.buckets == []
