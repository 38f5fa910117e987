"""MiniLM embedder against the real packaged model (no fakes)."""

from __future__ import annotations

import numpy as np
import pytest

from ingest.embedders.base import Embedder
from ingest.embedders.minilm import MiniLMEmbedder

QUERY = "How do I install the server on Linux?"
RELEVANT = "Installation on Linux: install Python 3.11, create a virtualenv and run the setup script."
UNRELATED = "Bananas are a good source of potassium and are often eaten at breakfast."


def test_interface_values(minilm):
    assert isinstance(minilm, Embedder)
    assert (minilm.name, minilm.dim, minilm.max_tokens) == ("minilm", 384, 256)
    assert minilm.precision in {"fp32", "bf16"}


def test_passages_are_normalised_float32_of_the_right_shape(minilm):
    vectors = minilm.embed_passages([RELEVANT, UNRELATED, "短い", "x"], batch_size=3)
    assert vectors.dtype == np.float32 and vectors.shape == (4, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert minilm.embed_passages([]).shape == (0, 384)


def test_query_is_normalised_and_ranks_the_relevant_passage_first(minilm):
    q = minilm.embed_query(QUERY)
    assert q.dtype == np.float32 and q.shape == (384,)
    assert abs(float(np.linalg.norm(q)) - 1.0) < 1e-5
    p = minilm.embed_passages([UNRELATED, RELEVANT])
    scores = p @ q
    assert scores[1] > scores[0] + 0.2


def test_order_and_batch_size_do_not_change_vectors(minilm):
    texts = [RELEVANT, "short", UNRELATED * 3, QUERY, "a b c " * 50]
    together = minilm.embed_passages(texts, batch_size=2)
    alone = np.stack([minilm.embed_passages([t])[0] for t in texts])
    assert np.all(np.sum(together * alone, axis=1) > 0.999)  # row i is still text i


def test_count_tokens_matches_the_model_tokenizer(minilm):
    tok = minilm._model.tokenizer
    texts = ["", "Hello world", "Ünïcödé naïve café", "中文测试一下", "don't stop-me now!!", RELEVANT]
    expected = [len(ids) for ids in tok(texts, add_special_tokens=True)["input_ids"]]
    assert minilm.count_tokens(texts) == expected
    assert minilm.count_tokens([""]) == [2]  # [CLS] [SEP]
    assert minilm.count_tokens([]) == []


def test_count_tokens_is_untruncated_and_max_tokens_is_what_the_model_sees(minilm):
    long_text = "word " * 400
    (n,) = minilm.count_tokens([long_text])
    assert n == 402  # 400 word pieces + 2 specials, not cut at 128 (tokenizer.json) or 256
    features = minilm._model.tokenize([long_text, RELEVANT])
    seen = features["attention_mask"].sum(dim=1).tolist()
    assert seen[0] == minilm.max_tokens  # the model truncates at 256
    assert seen[1] == minilm.count_tokens([RELEVANT])[0]


def test_bf16_and_fp32_vectors_agree():
    fp32 = MiniLMEmbedder(precision="fp32")
    bf16 = MiniLMEmbedder(precision="bf16")
    texts = [RELEVANT, UNRELATED, QUERY]
    cos = np.sum(fp32.embed_passages(texts) * bf16.embed_passages(texts), axis=1)
    assert np.all(cos > 0.999)
    assert fp32.fingerprint == bf16.fingerprint
    with pytest.raises(ValueError, match="precision"):
        MiniLMEmbedder(precision="int8")


def test_fingerprint_identifies_the_model(minilm):
    fp = minilm.fingerprint
    assert fp.startswith("minilm:384:sha256-") and len(fp.split("sha256-")[1]) == 16
    assert fp == minilm.fingerprint


def test_forward_passes_leave_the_calling_thread_without_an_openmp_pool(minilm, monkeypatch):
    """Each forward runs in a thread that ends with it (engine.devices.in_passing_thread), so request
    threads that embed keep no OpenMP pool that would slow the in-process engine's decode."""
    import threading

    import ingest.embedders.minilm as mod

    seen: list[int] = []
    real = mod.MiniLMEmbedder._encode
    monkeypatch.setattr(
        mod.MiniLMEmbedder, "_encode", lambda self, *a: seen.append(threading.get_ident()) or real(self, *a)
    )
    vector = minilm.embed_query(QUERY)
    assert vector.shape == (384,) and seen and seen[0] != threading.get_ident()
