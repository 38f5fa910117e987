"""Schemathesis over the whole OpenAPI document: no 5xx, and every answer matches the schema.

A real kb app (SQLite, the MiniLM embedder, the fake chat generator, auth off) with one collection
holding a document, so generated requests can reach the code behind the 404s. Every operation gets
`KB_API_FUZZ_EXAMPLES` generated cases (CI: 20), positive and negative; the checks are
schemathesis' response checks: not_a_server_error, status_code_conformance (only documented
statuses), content_type_conformance, response_schema_conformance and response_headers_conformance.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode, checks

from services.api.app import create_app
from services.core.config import Settings
from services.core.container import build_kb

EXAMPLES = int(os.environ.get("KB_API_FUZZ_EXAMPLES", "20"))
ONLY = os.environ.get("KB_API_FUZZ_ONLY", "")  # e.g. "POST /v1/chat/completions", to chase one failure
CALLS: Counter[int] = Counter()
# Ids that exist, for a pass whose path parameters reach past the 404s into the handlers.
KNOWN: dict[str, object] = {"name": "plant"}
# Operations that stream (server-sent events): schemathesis cannot validate an event stream body.
STREAMING = {"GET /v1/ingest-jobs/{job_id}/events"}
# Whether a schema-valid body is accepted / a schema-invalid one refused: kb checks some rules the
# schema cannot state (top_k <= KB_MAX_TOP_K, `metadata` form field is JSON, OpenAI roles) and answers
# 422 with a reason; that is a documented answer, not a failure of the contract tested here.
EXCLUDED = [checks.positive_data_acceptance, checks.negative_data_rejection]


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    root: Path = tmp_path_factory.mktemp("apifuzz")
    settings_ = Settings(
        data_dir=root / "data",
        database_url=f"sqlite:///{root / 'kb.sqlite3'}",
        generator="fake",
        generator_preload=False,
        auth="off",
        rate_limit="off",
    )
    app_ = create_app(kb=build_kb(settings_))
    with TestClient(app_) as client:  # runs the lifespan: app.state is ready for schemathesis' calls
        assert client.post("/v1/collections", json={"name": "plant"}).status_code == 201
        r = client.post("/v1/collections/plant/documents", json={"text": "Pumps are primed weekly."})
        assert r.status_code == 201, r.text
        KNOWN["document_id"] = r.json()["id"]
        r = client.post("/v1/chat/sessions", json={"collection": "plant"})
        assert r.status_code == 201, r.text
        KNOWN["session_id"] = r.json()["id"]
        yield app_
    app_.state.kb.close()


@pytest.fixture(scope="module")
def api_schema(app: FastAPI) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def _run(operation: schemathesis.APIOperation, mode: GenerationMode, known: bool) -> None:
    params = {p: KNOWN[p] for p in re.findall(r"{(\w+)}", operation.path) if p in KNOWN} if known else None

    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=params))
    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def run(case: schemathesis.Case) -> None:
        response = case.call()
        CALLS[response.status_code] += 1
        assert response.status_code < 500, (case.method, case.formatted_path, response.text[:500])
        if operation.label not in STREAMING:
            case.validate_response(response, excluded_checks=EXCLUDED)

    run()


@pytest.mark.parametrize(
    ("mode", "known"),
    [(GenerationMode.POSITIVE, False), (GenerationMode.NEGATIVE, False), (GenerationMode.POSITIVE, True)],
    ids=["positive", "negative", "positive-existing-ids"],
)
def test_every_operation(api_schema: schemathesis.BaseSchema, mode: GenerationMode, known: bool) -> None:
    """One hypothesis run per operation, so a failure names its operation and the others still run."""
    failures: list[str] = []
    labels = []
    for result in api_schema.get_all_operations():
        operation = result.ok()
        labels.append(operation.label)
        if ONLY and operation.label != ONLY:
            continue
        if known and (operation.method.upper() == "DELETE" or "{" not in operation.path):
            continue  # this pass is about existing ids; deleting them would end it
        try:
            _run(operation, mode, known)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Unsatisfiable:
            assert mode == GenerationMode.NEGATIVE, operation.label  # nothing in it can be made invalid
            continue
        except BaseException as exc:  # schemathesis' FailureGroup is a BaseExceptionGroup
            parts = exc.exceptions if isinstance(exc, BaseExceptionGroup) else [exc]
            detail = "\n".join(f"{type(e).__name__}: {str(e)[:1500]}" for e in parts)
            failures.append(f"{operation.label}: {detail}")
    assert len(labels) >= 15 or ONLY, labels
    assert not failures, "\n\n".join(failures)


def teardown_module() -> None:
    print(f"\nopenapi fuzz: {sum(CALLS.values())} calls, statuses {dict(sorted(CALLS.items()))}")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"/v1/collections/plant/documents/{2**70}"),
        ("GET", f"/v1/collections/plant/documents/{2**70}/file"),
        ("DELETE", f"/v1/collections/plant/documents/{2**70}"),
        ("GET", f"/v1/collections/plant/documents?offset={2**70}"),
    ],
)
def test_numbers_past_64_bits_are_422_not_500(app: FastAPI, method: str, path: str) -> None:
    """Regression: found by the run above; the database driver raised OverflowError (a 500)."""
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.request(method, path)
    assert r.status_code == 422 and r.json()["detail"].startswith("invalid request: "), r.text
