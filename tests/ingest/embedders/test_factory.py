"""get_embedder: names, caching, thread-safe lazy init, errors."""

from __future__ import annotations

import threading

import pytest

from ingest.embedders import factory
from ingest.embedders.base import Embedder
from ingest.embedders.factory import EMBEDDER_NAMES, get_embedder


def test_names():
    assert EMBEDDER_NAMES == ("minilm", "e5-multilingual")
    assert factory.DEFAULT_EMBEDDER == "minilm"


def test_default_is_minilm_and_instances_are_cached():
    default = get_embedder()
    assert default.name == "minilm"
    assert get_embedder("minilm") is default
    e5 = get_embedder("e5-multilingual")
    assert e5.name == "e5-multilingual" and get_embedder("e5-multilingual") is e5
    for name in EMBEDDER_NAMES:
        assert isinstance(get_embedder(name), Embedder)


def test_fingerprints_differ_between_models():
    a, b = get_embedder("minilm").fingerprint, get_embedder("e5-multilingual").fingerprint
    assert a != b and a.startswith("minilm:") and b.startswith("e5-multilingual:")


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError) as err:
        get_embedder("bert-large")
    message = str(err.value)
    assert "bert-large" in message and "minilm" in message and "e5-multilingual" in message


def test_concurrent_first_use_builds_once(monkeypatch):
    builds = []
    real_builder = factory._BUILDERS["e5-multilingual"]

    def counting_builder():
        builds.append(threading.get_ident())
        return real_builder()

    monkeypatch.setattr(factory, "_cache", {})  # a fresh process-wide cache, restored afterwards
    monkeypatch.setitem(factory._BUILDERS, "e5-multilingual", counting_builder)
    barrier = threading.Barrier(8)
    got = []

    def worker():
        barrier.wait()
        got.append(get_embedder("e5-multilingual"))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1
    assert len(got) == 8 and all(g is got[0] for g in got)
