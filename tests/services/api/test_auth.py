"""API keys against the real app and database: 401/403/404 rules and collection isolation everywhere."""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.api.app import create_app
from services.api.auth import create_key, hash_key, list_keys, revoke_key
from services.chat.generators.fake import FakeGenerator
from services.core.container import KB
from storage.auth_models import ApiKey

SECRET_B = "The vault code of collection beta is 7341."


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.fixture
def secured(make_kb: Callable[..., KB]) -> Any:
    """Auth on, collections alpha and beta with one document each, an admin key and alpha keys."""
    kb = make_kb(auth="required", generator="fake")
    kb.generator = FakeGenerator(reply="From the sources [1].")
    admin, _ = create_key(kb.db, None, [], admin=True)
    with TestClient(create_app(kb=kb)) as client:
        for name, text in (("alpha", "Alpha handbook: the office opens at 8."), ("beta", SECRET_B)):
            assert (
                client.post("/v1/collections", json={"name": name}, headers=bearer(admin)).status_code == 201
            )
            r = client.post(f"/v1/collections/{name}/documents", json={"text": text}, headers=bearer(admin))
            assert r.status_code == 201, r.text
        keys = {
            "admin": admin,
            "alpha": create_key(kb.db, "alpha", ["search", "chat", "ingest"])[0],
            "alpha_search": create_key(kb.db, "alpha", ["search"])[0],
        }
        yield client, kb, keys


def test_missing_and_invalid_keys_get_401_with_a_bearer_challenge(secured: Any) -> None:
    client, kb, keys = secured
    r = client.post("/v1/collections/alpha/search", json={"query": "office"})
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert "API key" in r.json()["detail"]
    r = client.get("/v1/collections", headers=bearer("kb_not-a-real-key"))
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]
    # X-API-Key works as well as the bearer header
    assert client.get("/v1/collections", headers={"x-api-key": keys["alpha"]}).status_code == 200
    # open routes stay open
    for path in ("/healthz", "/readyz", "/metrics"):
        assert client.get(path).status_code == 200, path
    # a revoked key is refused at once
    info = revoke_key(kb.db, keys["alpha_search"][:10])
    assert info.revoked_at is not None
    assert client.get("/v1/collections", headers=bearer(keys["alpha_search"])).status_code == 401


def test_only_the_hash_and_a_prefix_are_stored(secured: Any) -> None:
    _, kb, keys = secured
    with kb.db.session() as s:
        rows = list(s.query(ApiKey))
    stored = {r.key_hash for r in rows}
    assert hash_key(keys["alpha"]) in stored
    for r in rows:
        assert all(key not in (r.key_hash, r.prefix, r.name) for key in keys.values())
        assert len(r.key_hash) == 64 and len(r.prefix) == 10
    listed = {k.prefix: k for k in list_keys(kb.db)}
    assert listed[keys["alpha"][:10]].collection == "alpha"
    assert listed[keys["admin"][:10]].scopes == ["admin"]


def test_a_collection_key_never_sees_another_collection(secured: Any) -> None:
    client, _, keys = secured
    alpha = bearer(keys["alpha"])
    missing = client.post("/v1/collections/nosuch/search", json={"query": "x"}, headers=alpha)
    foreign = client.post("/v1/collections/beta/search", json={"query": "vault code"}, headers=alpha)
    assert missing.status_code == foreign.status_code == 404
    assert foreign.json()["detail"] == missing.json()["detail"].replace("nosuch", "beta")
    assert "7341" not in foreign.text
    ok = client.post(
        "/v1/collections/alpha/search", json={"query": "when does the office open"}, headers=alpha
    )
    assert ok.status_code == 200 and ok.json()["results"][0]["text"].startswith("Alpha handbook")
    # lists filter, item routes answer 404
    assert [c["name"] for c in client.get("/v1/collections", headers=alpha).json()["collections"]] == [
        "alpha"
    ]
    everything = client.get("/v1/collections", headers=bearer(keys["admin"])).json()["collections"]
    assert sorted(c["name"] for c in everything) == ["alpha", "beta"]
    assert client.get("/v1/collections/beta", headers=alpha).status_code == 404
    assert client.get("/v1/collections/beta/documents", headers=alpha).status_code == 404
    assert client.get("/v1/collections/beta/documents/1", headers=alpha).status_code == 404
    assert client.delete("/v1/collections/beta/documents/1", headers=alpha).status_code == 404
    r = client.post("/v1/collections/beta/documents", json={"text": "planted"}, headers=alpha)
    assert r.status_code == 404
    assert client.get("/v1/collections/alpha/documents", headers=alpha).json()["total"] == 1


def test_scopes_are_enforced_with_403(secured: Any) -> None:
    client, _, keys = secured
    search_only = bearer(keys["alpha_search"])
    assert (
        client.post("/v1/collections/alpha/search", json={"query": "x"}, headers=search_only).status_code
        == 200
    )
    r = client.post("/v1/collections/alpha/documents", json={"text": "new"}, headers=search_only)
    assert r.status_code == 403 and "'ingest' scope" in r.json()["detail"]
    assert (
        client.post("/v1/chat/sessions", json={"collection": "alpha"}, headers=search_only).status_code == 403
    )
    # collection management is for admin keys only
    alpha = bearer(keys["alpha"])
    assert client.post("/v1/collections", json={"name": "gamma"}, headers=alpha).status_code == 403
    assert client.delete("/v1/collections/alpha", headers=alpha).status_code == 403
    r = client.post(
        "/v1/collections/alpha/documents", json={"text": "An ingest key may add this."}, headers=alpha
    )
    assert r.status_code == 201


def test_chat_sessions_and_openai_models_are_bound_to_the_key_collection(secured: Any) -> None:
    client, _, keys = secured
    alpha, admin = bearer(keys["alpha"]), bearer(keys["admin"])
    assert client.post("/v1/chat/sessions", json={"collection": "beta"}, headers=alpha).status_code == 404
    beta_sid = client.post("/v1/chat/sessions", json={"collection": "beta"}, headers=admin).json()["id"]
    own_sid = client.post("/v1/chat/sessions", json={"collection": "alpha"}, headers=alpha).json()["id"]
    turn = {"content": "What is the vault code?"}
    for method, path, body in (
        ("GET", f"/v1/chat/sessions/{beta_sid}", None),
        ("POST", f"/v1/chat/sessions/{beta_sid}/messages", turn),
        ("DELETE", f"/v1/chat/sessions/{beta_sid}", None),
    ):
        r = client.request(method, path, json=body, headers=alpha)
        assert r.status_code == 404 and r.json()["detail"] == f"chat session '{beta_sid}' not found"
    assert client.get(f"/v1/chat/sessions/{beta_sid}", headers=admin).status_code == 200  # still there
    r = client.post(
        f"/v1/chat/sessions/{own_sid}/messages", json={"content": "When does the office open?"}, headers=alpha
    )
    assert r.status_code == 200 and "7341" not in r.text
    models = [m["id"] for m in client.get("/v1/models", headers=alpha).json()["data"]]
    assert "kb:alpha" in models and "kb:beta" not in models
    ask = {"messages": [{"role": "user", "content": "What is the vault code?"}]}
    r = client.post("/v1/chat/completions", json={**ask, "model": "kb:beta"}, headers=alpha)
    assert r.status_code == 404 and "7341" not in r.text
    r = client.post("/v1/chat/completions", json={**ask, "model": "kb:alpha"}, headers=alpha)
    assert r.status_code == 200 and "7341" not in r.text


def _zip(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return buf.getvalue()


def test_ingest_jobs_are_bound_to_the_key_collection(secured: Any) -> None:
    client, _, keys = secured
    alpha, admin = bearer(keys["alpha"]), bearer(keys["admin"])
    dump = {"file": ("dump.zip", _zip({"a.md": "# Beta runbook\nRestart the pump."}), "application/zip")}
    assert client.post("/v1/collections/beta/ingest-jobs", files=dump, headers=alpha).status_code == 404
    job = client.post("/v1/collections/beta/ingest-jobs", files=dump, headers=admin).json()["job_id"]
    for method, path in (("GET", ""), ("GET", "/events"), ("DELETE", "")):
        r = client.request(method, f"/v1/ingest-jobs/{job}{path}", headers=alpha)
        assert r.status_code == 404 and r.json()["detail"] == f"ingest job '{job}' not found"
    search_only = bearer(keys["alpha_search"])
    assert (
        client.post("/v1/collections/alpha/ingest-jobs", files=dump, headers=search_only).status_code == 403
    )
    own = client.post("/v1/collections/alpha/ingest-jobs", files=dump, headers=alpha).json()["job_id"]
    deadline = time.monotonic() + 60
    while (view := client.get(f"/v1/ingest-jobs/{own}", headers=alpha).json())["status"] in (
        "queued",
        "running",
    ):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert view["status"] == "succeeded" and view["collection"] == "alpha"


def test_auth_off_is_the_embedded_default(make_client: Callable[..., TestClient]) -> None:
    client = make_client()
    assert client.post("/v1/collections", json={"name": "open"}).status_code == 201
    assert client.get("/v1/collections").json()["collections"][0]["name"] == "open"


def test_key_creation_rejects_bad_requests(make_kb: Callable[..., KB]) -> None:
    from storage.store import NotFound

    kb = make_kb()
    with pytest.raises(NotFound):
        create_key(kb.db, "nosuch", ["search"])
    for collection, scopes, admin, message in (
        (None, ["search"], False, "--collection"),
        ("x", [], False, "--scopes"),
        ("x", ["search", "fly"], False, "unknown scope 'fly'"),
        ("x", ["admin"], False, "--admin"),
        ("x", [], True, "do not give --collection"),
    ):
        with pytest.raises(ValueError, match=message):
            create_key(kb.db, collection, scopes, admin=admin)
