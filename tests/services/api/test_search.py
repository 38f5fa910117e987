from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

DOCS = [
    ("vpn", "To connect to the VPN, install the client and sign in with your badge number.", "it", "en"),
    ("payroll", "Salaries are paid on the 25th of each month by bank transfer.", "hr", "en"),
    ("leave", "Parental leave is sixteen weeks, paid in full.", "hr", "en"),
    ("printer", "The third floor printer jams if you use thick paper.", "it", "en"),
]


@pytest.fixture
def loaded(client: TestClient) -> TestClient:
    client.post("/v1/collections", json={"name": "kb"})
    for source_id, text, team, lang in DOCS:
        r = client.post(
            "/v1/collections/kb/documents",
            json={"text": text, "source_id": source_id, "metadata": {"team": team, "lang": lang}},
        )
        assert r.status_code == 201, r.text
    return client


def _search(client: TestClient, **body: object) -> list[dict]:
    r = client.post("/v1/collections/kb/search", json=body)
    assert r.status_code == 200, r.text
    return r.json()["results"]


@pytest.mark.parametrize("mode", ["dense", "lexical", "hybrid"])
def test_modes_find_the_right_document(loaded: TestClient, mode: str) -> None:
    hits = _search(loaded, query="when are salaries paid", mode=mode)
    assert hits[0]["source_id"] == "payroll"
    assert set(hits[0]) >= {
        "chunk_id",
        "document_id",
        "title",
        "text",
        "score",
        "page",
        "heading",
        "start",
        "end",
    }
    assert hits[0]["metadata"] == {"team": "hr", "lang": "en"}


def test_dense_understands_paraphrase(loaded: TestClient) -> None:
    hits = _search(loaded, query="how do I access the company network from home", mode="dense")
    assert hits[0]["source_id"] == "vpn"


def test_equality_and_in_filters(loaded: TestClient) -> None:
    hits = _search(loaded, query="paid", filter={"team": "it"}, top_k=10)
    assert hits and {h["source_id"] for h in hits} <= {"vpn", "printer"}
    hits = _search(loaded, query="paid", filter={"source_id": {"in": ["leave", "vpn"]}}, top_k=10)
    assert {h["source_id"] for h in hits} == {"leave", "vpn"}
    assert _search(loaded, query="paid", filter={"team": "finance"}) == []
    # top_k is filled from matching chunks, not post-filtered away
    assert len(_search(loaded, query="printer", filter={"team": "hr"}, top_k=2)) == 2


def test_bad_search_requests(loaded: TestClient) -> None:
    bad = [
        {"query": ""},
        {"query": "x", "mode": "magic"},
        {"query": "x", "top_k": 0},
        {"query": "x", "top_k": 1000},
        {"query": "x", "filter": {"team": {"like": "h%"}}},
        {"query": "x", "filter": {"team": {"in": []}}},
        {"query": "x", "unknown": 1},
    ]
    for body in bad:
        r = loaded.post("/v1/collections/kb/search", json=body)
        assert r.status_code == 422, body
        assert isinstance(r.json()["detail"], str) and r.json()["detail"]


CHINESE = [
    ("returns-zh", "退货政策：商品在收到后七天内可以无理由退货，请保留发票。"),
    ("shipping-zh", "我们的仓库每天下午三点发货，偏远地区需要五到七天送达。"),
    ("returns-en", "Our return policy allows returns within seven days of delivery."),
]


@pytest.mark.parametrize("embedder", ["e5-multilingual", "minilm"])
def test_chinese_question_finds_chinese_document(client: TestClient, embedder: str) -> None:
    client.post("/v1/collections", json={"name": "zh", "embedder": embedder})
    for source_id, text in CHINESE:
        assert (
            client.post(
                "/v1/collections/zh/documents", json={"text": text, "source_id": source_id}
            ).status_code
            == 201
        )
    modes = ["lexical", "dense", "hybrid"] if embedder == "e5-multilingual" else ["lexical"]
    for mode in modes:
        r = client.post("/v1/collections/zh/search", json={"query": "退货政策是什么？", "mode": mode})
        assert r.json()["results"][0]["source_id"] == "returns-zh", mode
    r = client.post(
        "/v1/collections/zh/search",
        json={"query": "仓库几点发货", "mode": "dense" if embedder != "minilm" else "lexical"},
    )
    assert r.json()["results"][0]["source_id"] == "shipping-zh"
