from __future__ import annotations

import io
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from tests.services.api.docs import make_pdf

SECRET = "The launch code for project Heron is tangerine forty two."


def _search_texts(client: TestClient, query: str, mode: str = "hybrid") -> list[str]:
    r = client.post("/v1/collections/kb/search", json={"query": query, "mode": mode, "top_k": 10})
    assert r.status_code == 200, r.text
    return [hit["text"] for hit in r.json()["results"]]


@pytest.fixture
def kb_client(client: TestClient) -> TestClient:
    assert client.post("/v1/collections", json={"name": "kb"}).status_code == 201
    return client


def test_json_text_upload_and_get(kb_client: TestClient) -> None:
    r = kb_client.post(
        "/v1/collections/kb/documents",
        json={"text": SECRET, "source_id": "memo-1", "title": "Memo", "metadata": {"team": "ops"}},
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["source_id"] == "memo-1" and body["duplicate"] is False and body["chunks"] == 1
    assert body["status"] == "indexed" and len(body["content_sha256"]) == 64
    doc = kb_client.get(f"/v1/collections/kb/documents/{body['id']}").json()
    assert doc["title"] == "Memo" and doc["metadata"]["team"] == "ops" and doc["mime_type"] == "text/plain"
    assert any("tangerine" in t for t in _search_texts(kb_client, "launch code Heron"))


def test_same_content_twice_is_duplicate(kb_client: TestClient) -> None:
    first = kb_client.post("/v1/collections/kb/documents", files={"file": ("a.txt", SECRET.encode())}).json()
    again = kb_client.post("/v1/collections/kb/documents", files={"file": ("b.txt", SECRET.encode())})
    assert again.status_code == 201
    assert again.json()["duplicate"] is True and again.json()["id"] == first["id"]
    coll = kb_client.get("/v1/collections/kb").json()
    assert coll["documents"] == 1 and coll["chunks"] == first["chunks"]
    assert sum("tangerine" in t for t in _search_texts(kb_client, "launch code Heron")) == 1


def test_replace_by_source_id_removes_old_text_everywhere(
    kb_client: TestClient, make_client: Callable[..., TestClient]
) -> None:
    old = kb_client.post("/v1/collections/kb/documents", json={"text": SECRET, "source_id": "s"}).json()
    new_text = "Project Heron now uses the passphrase marmalade."
    new = kb_client.post("/v1/collections/kb/documents", json={"text": new_text, "source_id": "s"}).json()
    assert new["id"] == old["id"] and new["replaced"] is True and new["version"] == 2
    for mode in ("dense", "lexical", "hybrid"):
        texts = _search_texts(kb_client, "tangerine launch code Heron", mode)
        assert not any("tangerine" in t for t in texts), mode
        assert any("marmalade" in t for t in _search_texts(kb_client, "Heron passphrase", mode))
    # A fresh process on the same data dir and database: the old text stays gone.
    restarted = make_client()
    for mode in ("dense", "lexical", "hybrid"):
        assert not any("tangerine" in t for t in _search_texts(restarted, "tangerine launch code", mode))


def test_delete_document_never_comes_back(
    kb_client: TestClient, make_client: Callable[..., TestClient]
) -> None:
    doc = kb_client.post("/v1/collections/kb/documents", json={"text": SECRET}).json()
    kb_client.post("/v1/collections/kb/documents", json={"text": "Cafeteria opens at eight."})
    assert kb_client.delete(f"/v1/collections/kb/documents/{doc['id']}").status_code == 204
    assert kb_client.get(f"/v1/collections/kb/documents/{doc['id']}").status_code == 404
    assert kb_client.delete(f"/v1/collections/kb/documents/{doc['id']}").status_code == 404
    for mode in ("dense", "lexical", "hybrid"):
        assert not any("tangerine" in t for t in _search_texts(kb_client, "tangerine launch code", mode))
    restarted = make_client()
    for mode in ("dense", "lexical", "hybrid"):
        texts = _search_texts(restarted, "tangerine launch code", mode)
        assert not any("tangerine" in t for t in texts)
    assert any("Cafeteria" in t for t in _search_texts(restarted, "when does the cafeteria open"))
    assert restarted.get("/v1/collections/kb").json()["documents"] == 1


def test_pdf_page_is_cited(kb_client: TestClient) -> None:
    pages = [
        "Chapter one covers onboarding and the badge office.",
        "Chapter two describes parking rules for visitors.",
        "The emergency generator is tested every first Monday of the month.",
        "Chapter four lists the cafeteria menu.",
    ]
    r = kb_client.post(
        "/v1/collections/kb/documents", files={"file": ("manual.pdf", make_pdf(pages), "application/pdf")}
    )
    assert r.status_code == 201, r.text
    hits = kb_client.post(
        "/v1/collections/kb/search", json={"query": "When is the emergency generator tested?"}
    ).json()["results"]
    assert hits[0]["page"] == 3
    assert "generator" in hits[0]["text"]
    assert hits[0]["source_id"] == "manual.pdf"


def test_pagination(kb_client: TestClient) -> None:
    for i in range(5):
        kb_client.post("/v1/collections/kb/documents", json={"text": f"Note number {i} about topic {i * 7}."})
    page = kb_client.get("/v1/collections/kb/documents", params={"offset": 2, "limit": 2}).json()
    assert page["total"] == 5 and len(page["items"]) == 2
    assert [d["source_id"] for d in page["items"]] != []
    assert kb_client.get("/v1/collections/kb/documents", params={"limit": 0}).status_code == 422


def test_bad_uploads(kb_client: TestClient) -> None:
    post = kb_client.post
    url = "/v1/collections/kb/documents"
    r = post(url, files={"file": ("broken.pdf", b"%PDF-1.7\n1 0 obj <<>> garbage", "application/pdf")})
    assert r.status_code == 415 and "PDF" in r.json()["detail"]
    r = post(url, files={"file": ("notes.txt", bytes(range(256)) * 40, "text/plain")})
    assert r.status_code == 415
    r = post(url, files={"file": ("empty.txt", b"", "text/plain")})
    assert r.status_code == 415 and "empty" in r.json()["detail"]
    r = post(url, content=b"hello", headers={"content-type": "application/octet-stream"})
    assert r.status_code == 415
    r = post(url, files={"file": ("a.txt", b"hello there")}, data={"metadata": "{not json"})
    assert r.status_code == 422 and "metadata" in r.json()["detail"]
    r = post(url, files={"file": ("a.txt", b"hello there")}, data={"metadata": "[1, 2]"})
    assert r.status_code == 422
    r = post(url, json={"text": ""})
    assert r.status_code == 422 and "text" in r.json()["detail"]
    r = post(url, data={"source_id": "x"}, files={"other": ("a.txt", b"hi")})
    assert r.status_code == 422 and "file" in r.json()["detail"]
    assert post("/v1/collections/nope/documents", json={"text": "hi"}).status_code == 404
    assert kb_client.get("/v1/collections/kb").json()["documents"] == 0


def test_oversize_upload_is_413(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_upload_mb=0.01)
    client.post("/v1/collections", json={"name": "kb"})
    big = b"word " * 10_000
    r = client.post("/v1/collections/kb/documents", files={"file": ("big.txt", big)})
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    # Streaming without Content-Length is cut off as well.
    r = client.post(
        "/v1/collections/kb/documents",
        content=iter([b"x" * 8192] * 20),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413
    r = client.post("/v1/collections/kb/documents", json={"text": "word " * 4000})
    assert r.status_code == 413
    small = client.post("/v1/collections/kb/documents", files={"file": ("ok.txt", b"small file text")})
    assert small.status_code == 201


def test_upload_docx_via_multipart(kb_client: TestClient) -> None:
    import docx

    d = docx.Document()
    d.add_heading("Returns", level=1)
    d.add_paragraph("Customers may return items within 30 days with a receipt.")
    buf = io.BytesIO()
    d.save(buf)
    r = kb_client.post("/v1/collections/kb/documents", files={"file": ("policy.docx", buf.getvalue())})
    assert r.status_code == 201, r.text
    hit = kb_client.post("/v1/collections/kb/search", json={"query": "return window"}).json()["results"][0]
    assert hit["heading"] == ["Returns"] and "30 days" in hit["text"]
