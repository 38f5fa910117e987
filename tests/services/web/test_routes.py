"""The web UI's server side: the page and its modules are served (with a strict CSP), and documents
uploaded one by one keep their original file for "open at page N" links, on SQLite and PostgreSQL."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from ingest.pipeline import SourceFile
from services.api.originals import original_path
from services.api.routes.web import STATIC_DIR
from tests.services.api.docs import make_pdf

PAGES = ["Page one is about the weather.", "The zebra quartermaster inspects the turbine on Tuesdays."]


@pytest.fixture
def kb_client(client: TestClient) -> TestClient:
    for name in ("kb", "other"):
        assert client.post("/v1/collections", json={"name": name}).status_code == 201
    return client


def _upload(client: TestClient, collection: str, name: str, data: bytes) -> dict:
    r = client.post(f"/v1/collections/{collection}/documents", files={"file": (name, data)})
    assert r.status_code == 201, r.text
    return r.json()


def test_page_and_every_module_it_loads_are_served(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert 'id="search-query"' in r.text and 'id="api-key"' in r.text and 'id="chat-input"' in r.text
    # every file the page references, and every module those import, exists and has the right type
    wanted = set(re.findall(r'(?:src|href)="ui/([\w.]+)"', r.text))
    assert {"main.js", "app.css"} <= wanted
    for js in STATIC_DIR.glob("*.js"):
        wanted |= set(re.findall(r'from "\./([\w.]+)"', js.read_text()))
    for name in sorted(wanted):
        asset = client.get(f"/ui/{name}")
        assert asset.status_code == 200, name
        kind = "text/css" if name.endswith(".css") else "text/javascript"
        assert asset.headers["content-type"].startswith(kind), name
        assert asset.headers["cache-control"] == "no-cache"
    assert client.get("/ui/nope.js").status_code == 404
    assert client.get("/ui/../routes/web.py").status_code == 404
    assert "/" not in client.get("/openapi.json").json()["paths"]


def test_pdf_original_is_served_inline(kb_client: TestClient) -> None:
    pdf = make_pdf(PAGES)
    doc = _upload(kb_client, "kb", "manual.pdf", pdf)
    r = kb_client.get(f"/v1/collections/kb/documents/{doc['id']}/file")
    assert r.status_code == 200 and r.content == pdf
    assert r.headers["content-type"] == "application/pdf"
    disposition = r.headers["content-disposition"]
    assert disposition.startswith("inline") and "manual.pdf" in disposition
    head = kb_client.head(f"/v1/collections/kb/documents/{doc['id']}/file")
    assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) == len(pdf)
    # the page a search hit names is the page the viewer opens with #page=N
    hits = kb_client.post("/v1/collections/kb/search", json={"query": "zebra quartermaster", "top_k": 1})
    assert hits.json()["results"][0]["page"] == 2


def test_html_original_is_a_sandboxed_download(kb_client: TestClient) -> None:
    html = b"<html><body><main><h1>Hi</h1><p>Hello there, reader.</p><script>alert(1)</script></main></body>"
    doc = _upload(kb_client, "kb", "page.html", html)
    r = kb_client.get(f"/v1/collections/kb/documents/{doc['id']}/file")
    assert r.status_code == 200 and r.content == html
    assert r.headers["content-disposition"].startswith("attachment")
    assert r.headers["content-security-policy"] == "sandbox"
    assert r.headers["x-content-type-options"] == "nosniff"


def test_original_lives_until_its_last_document_is_deleted(kb_client: TestClient) -> None:
    kb = kb_client.app.state.kb
    data = make_pdf(PAGES)
    a, b = _upload(kb_client, "kb", "a.pdf", data), _upload(kb_client, "other", "b.pdf", data)
    path = original_path(kb.settings, a["content_sha256"])
    assert path.read_bytes() == data
    assert kb_client.delete(f"/v1/collections/kb/documents/{a['id']}").status_code == 204
    assert kb_client.get(f"/v1/collections/kb/documents/{a['id']}/file").status_code == 404
    assert kb_client.get(f"/v1/collections/other/documents/{b['id']}/file").content == data
    assert kb_client.delete(f"/v1/collections/other/documents/{b['id']}").status_code == 204
    assert not path.exists()


def test_document_without_a_kept_original_gets_a_clear_404(kb_client: TestClient) -> None:
    kb = kb_client.app.state.kb  # the batch-job path: the pipeline alone, no copy of the file
    result = kb.pipeline.ingest_one("kb", SourceFile(b"Plain words about turbines.", "dump/x.txt", "x.txt"))
    r = kb_client.get(f"/v1/collections/kb/documents/{result.document.id}/file")
    assert r.status_code == 404 and "not stored" in r.json()["detail"]
    assert kb_client.get("/v1/collections/kb/documents/999999/file").status_code == 404
    assert kb_client.get("/v1/collections/nope/documents/1/file").status_code == 404


def test_replaced_and_collection_deleted_originals_are_removed(kb_client: TestClient) -> None:
    """A new version under the same source_id frees the old bytes; deleting a collection frees its files,
    except bytes another collection's document still names."""
    kb = kb_client.app.state.kb
    old, new = make_pdf(["version one of the manual"]), make_pdf(["version two of the manual"])
    first = _upload(kb_client, "kb", "manual.pdf", old)
    second = _upload(kb_client, "kb", "manual.pdf", new)
    assert second["replaced"] and second["id"] == first["id"]
    assert not original_path(kb.settings, first["content_sha256"]).exists()
    assert original_path(kb.settings, second["content_sha256"]).read_bytes() == new
    shared = _upload(kb_client, "other", "copy.pdf", new)
    only_kb = _upload(kb_client, "kb", "only.pdf", make_pdf(["only in kb"]))
    assert kb_client.delete("/v1/collections/kb").status_code == 204
    assert not original_path(kb.settings, only_kb["content_sha256"]).exists()
    assert kb_client.get(f"/v1/collections/other/documents/{shared['id']}/file").content == new
