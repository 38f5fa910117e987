"""Our decoder against transformers: real SmolLM2 greedy outputs, random Llama-3/Qwen2 logits."""

from __future__ import annotations

import pytest
import torch

from engine.loader import load_model
from engine.model import AttnBatch
from engine.sampling import SamplingParams
from tests.engine.conftest import hf_greedy

SINGLE = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis in one sentence.",
    "List three prime numbers.",
    "How do I boil an egg?",
    "Translate 'good morning' into Spanish.",
    "What is 12 times 12?",
    "Give me a synonym for happy.",
    "Who wrote Romeo and Juliet?",
    "What does a customer-service agent do?",
    "Name a famous painting.",
    "Why is the sky blue?",
    "Suggest a name for a cat.",
    "What is Python used for?",
    "Describe a rainy day in Zaragoza.",
    "¿Qué hora es en Madrid?",
    "Write the word 'naïve' and explain it.",
]
MULTI = [
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "My name is Ana."},
        {"role": "assistant", "content": "Nice to meet you, Ana!"},
        {"role": "user", "content": "What is my name?"},
    ],
    [
        {"role": "user", "content": "I need help with my order."},
        {"role": "assistant", "content": "Sure, what is the order number?"},
        {"role": "user", "content": "It is 4471 and it is late."},
    ],
    [
        {"role": "user", "content": "Recommend a book."},
        {"role": "assistant", "content": "Try 'The Hobbit'."},
        {"role": "user", "content": "Who wrote it?"},
        {"role": "assistant", "content": "J. R. R. Tolkien."},
        {"role": "user", "content": "When was it published?"},
    ],
]


def test_greedy_matches_transformers_on_20_prompts(engine, hf_model):
    convs = [[{"role": "user", "content": p}] for p in SINGLE] + MULTI
    assert len(convs) >= 20
    n = 12
    streams = [engine.submit(c, SamplingParams(max_tokens=n)) for c in convs]
    for conv, seq in zip(convs, streams, strict=True):
        while seq.events.get().type != "finish":
            pass
        ours = seq.tokens[seq.num_prompt :]
        ref = hf_greedy(hf_model, engine.encode_prompt(conv), n)
        assert ours == ref and len(ours) >= 2, conv


def _paged_logits(model, ids: list[int], chunks: list[int], block_size: int = 4) -> torch.Tensor:
    """Run ``ids`` through our model in prefill chunks over a paged cache with a shuffled table."""
    c = model.cfg
    nblk = (len(ids) + block_size - 1) // block_size
    kv = [torch.zeros(nblk + 3, block_size, c.num_kv_heads, c.head_dim) for _ in range(c.num_layers)]
    vv = [torch.zeros_like(k) for k in kv]
    table = torch.randperm(nblk + 3)[:nblk]
    outs, start = [], 0
    for n in chunks:
        pos = torch.arange(start, start + n)
        slots = table[pos // block_size] * block_size + pos % block_size
        ctx = start + n
        ab = AttnBatch(slots, [(0, n, ctx, table[: (ctx + block_size - 1) // block_size])], kv, vv)
        outs.append(model.logits(model(torch.tensor(ids[start:ctx]), pos, ab)))
        start = ctx
    return torch.cat(outs)


@pytest.mark.parametrize("kind", ["llama3_scaled", "qwen2_bias"])
def test_random_shapes_match_transformers(kind, tmp_path):
    """Llama-3 rope scaling, GQA and Qwen2's QKV bias; sharded safetensors; chunked paged attention."""
    import transformers

    torch.manual_seed(0)
    common = dict(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    if kind == "llama3_scaled":
        rope = {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        }
        cfg = transformers.LlamaConfig(**common, rope_parameters=rope, tie_word_embeddings=False)
        ref = transformers.LlamaForCausalLM(cfg)
    else:
        cfg = transformers.Qwen2Config(**common, tie_word_embeddings=True)
        ref = transformers.Qwen2ForCausalLM(cfg)
        with torch.no_grad():
            for layer in ref.model.layers:
                layer.self_attn.q_proj.bias.normal_()
                layer.self_attn.k_proj.bias.normal_()
    ref = ref.eval()
    ref.save_pretrained(tmp_path, max_shard_size="40KB")
    assert len(list(tmp_path.glob("*.safetensors"))) > 1  # sharded
    ours = load_model(tmp_path, torch.device("cpu"), torch.float32)
    ids = torch.randint(0, 97, (40,)).tolist()
    with torch.inference_mode():
        want = ref(torch.tensor([ids])).logits[0]
        got = _paged_logits(ours, ids, [17, 9, 1, 1, 12])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
