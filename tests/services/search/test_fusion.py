from __future__ import annotations

import numpy as np
import pytest

from services.search.filters import FilterError, normalize_filter
from services.search.fusion import FusionParams, fuse


def _lists(dense: dict[int, float], lexical: dict[int, float]):
    d = (np.array(list(dense), np.int64), np.array(list(dense.values()), np.float32))
    lx = (np.array(list(lexical), np.int64), np.array(list(lexical.values()), np.float32))
    return d, lx


def test_rrf_rewards_agreement_and_respects_weights() -> None:
    d, lx = _lists({1: 0.9, 2: 0.8, 3: 0.7}, {3: 12.0, 2: 5.0, 9: 4.0})
    ranked = [i for i, _ in fuse(d, lx, FusionParams("rrf", 60, 1.0, 1.0))]
    assert ranked[0] in (2, 3) and set(ranked) == {1, 2, 3, 9}
    lexical_only = [i for i, _ in fuse(d, lx, FusionParams("rrf", 60, 0.0, 1.0))]
    assert lexical_only[:3] == [3, 2, 9]


def test_zscore_lets_a_standout_lexical_hit_win_but_not_a_flat_list() -> None:
    # Dense is unsure (evenly spread scores); BM25 has one hit far above the rest.
    dense = {i: 0.50 - 0.01 * i for i in range(10)}
    lexical = {9: 30.0, **{i: 2.0 - 0.01 * i for i in range(9)}}
    d, lx = _lists(dense, lexical)
    assert fuse(d, lx, FusionParams("zscore", 60, 1.0, 1.0))[0][0] == 9
    assert fuse(d, lx, FusionParams("zscore", 60, 1.0, 0.0))[0][0] == 0
    # Dense is confident; BM25 is flat noise: dense order survives at a small lexical weight.
    d, lx = _lists({1: 0.9, 2: 0.3, 3: 0.29}, {3: 2.1, 2: 2.0, 1: 1.9})
    assert fuse(d, lx, FusionParams("zscore", 60, 1.0, 0.25))[0][0] == 1


def test_one_empty_list_falls_back_to_the_other() -> None:
    d, _ = _lists({5: 0.7, 6: 0.6}, {})
    empty = (np.empty(0, np.int64), np.empty(0, np.float32))
    for method in ("zscore", "rrf", "weighted"):
        assert [i for i, _ in fuse(d, empty, FusionParams(method))] == [5, 6]
        assert fuse(empty, empty, FusionParams(method)) == []


def test_filter_normalisation() -> None:
    assert normalize_filter({"team": "hr", "lang": {"in": ["en", "de"]}, "v": {"eq": 2}}) == {
        "team": ["hr"],
        "lang": ["en", "de"],
        "v": [2],
    }
    assert normalize_filter(None) == {}
    for bad in ({"a": {"in": []}}, {"a": {"gt": 1}}, {"a": {"in": [{"x": 1}]}}, {"a": [1, 2]}):
        with pytest.raises(FilterError):
            normalize_filter(bad)
