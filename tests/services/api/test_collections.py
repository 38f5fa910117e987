from __future__ import annotations

from fastapi.testclient import TestClient


def test_create_get_list_delete(client: TestClient) -> None:
    r = client.post("/v1/collections", json={"name": "handbook", "description": "HR"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["name"] == "handbook" and body["embedder"] == "minilm" and body["dim"] == 384
    assert body["documents"] == 0 and body["chunks"] == 0

    client.post("/v1/collections/handbook/documents", json={"text": "Holidays are 25 days a year."})
    got = client.get("/v1/collections/handbook").json()
    assert got["documents"] == 1 and got["chunks"] >= 1

    names = [c["name"] for c in client.get("/v1/collections").json()["collections"]]
    assert names == ["handbook"]

    assert client.delete("/v1/collections/handbook").status_code == 204
    assert client.get("/v1/collections/handbook").status_code == 404
    assert client.get("/v1/collections").json()["collections"] == []


def test_duplicate_name_is_409(client: TestClient) -> None:
    assert client.post("/v1/collections", json={"name": "a"}).status_code == 201
    r = client.post("/v1/collections", json={"name": "a"})
    assert r.status_code == 409
    assert "already exists" in r.json()["detail"]


def test_validation_errors_are_422_with_message(client: TestClient) -> None:
    r = client.post("/v1/collections", json={"name": "has space"})
    assert r.status_code == 422
    assert "name" in r.json()["detail"]
    r = client.post("/v1/collections", json={"name": "x", "embedder": "nope"})
    assert r.status_code == 422
    assert "unknown embedder" in r.json()["detail"]
    r = client.post("/v1/collections", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422


def test_unknown_collection_is_404(client: TestClient) -> None:
    assert client.get("/v1/collections/missing").status_code == 404
    assert client.delete("/v1/collections/missing").status_code == 404
    r = client.post("/v1/collections/missing/search", json={"query": "x"})
    assert r.status_code == 404
    assert "missing" in r.json()["detail"]


def test_recreated_collection_starts_empty(client: TestClient) -> None:
    client.post("/v1/collections", json={"name": "c"})
    client.post("/v1/collections/c/documents", json={"text": "The zebra password is violet."})
    client.delete("/v1/collections/c")
    client.post("/v1/collections", json={"name": "c"})
    hits = client.post("/v1/collections/c/search", json={"query": "zebra password"}).json()["results"]
    assert hits == []


def test_health(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
