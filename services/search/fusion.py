"""Combining the dense and lexical rankings into one.

Three methods, all over the union of both candidate lists:
- `zscore` (default): each list's scores are standardised (z-scores) and added
  with weights. A hit missing from one list gets that list's floor (lowest
  dense score; BM25 0 = no matching term). Standardising per query keeps one
  distinctive exact-term match (a product code, a Swedish legal term) able to
  stand out, while a weak lexical list cannot drown a confident dense one.
  On the FAQ evaluation this is the only method that beat dense alone (see
  bench/RESULTS.md: RRF lost 5.9 nDCG points, z-score 1:0.25 gained 1.1).
- `rrf`: reciprocal-rank fusion (Cormack et al. 2009), score-free.
- `weighted`: min-max normalised scores, added with weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Method = Literal["zscore", "rrf", "weighted"]


@dataclass(frozen=True, slots=True)
class FusionParams:
    method: Method = "zscore"
    rrf_k: int = 60
    dense_weight: float = 1.0
    lexical_weight: float = 0.25


def _standardise(values: np.ndarray) -> np.ndarray:
    std = values.std()
    return (values - values.mean()) / std if std > 0 else np.zeros_like(values)


def _minmax(values: np.ndarray) -> np.ndarray:
    lo, hi = values.min(), values.max()
    return (values - lo) / (hi - lo) if hi > lo else np.ones_like(values)


def fuse(
    dense: tuple[np.ndarray, np.ndarray],
    lexical: tuple[np.ndarray, np.ndarray],
    params: FusionParams,
) -> list[tuple[int, float]]:
    """(chunk id, fused score) best first. Inputs are (ids, scores), each best first."""
    dense_ids, dense_scores = dense
    lexical_ids, lexical_scores = lexical
    candidates = list(dict.fromkeys([*dense_ids.tolist(), *lexical_ids.tolist()]))
    if not candidates:
        return []
    if params.method == "rrf":
        fused = np.zeros(len(candidates))
        position = {c: i for i, c in enumerate(candidates)}
        for ids, weight in ((dense_ids, params.dense_weight), (lexical_ids, params.lexical_weight)):
            for rank, chunk_id in enumerate(ids.tolist(), start=1):
                fused[position[chunk_id]] += weight / (params.rrf_k + rank)
    else:
        normalise = _standardise if params.method == "zscore" else _minmax
        dense_floor = float(dense_scores.min()) if len(dense_scores) else 0.0
        dense_map = dict(zip(dense_ids.tolist(), dense_scores.tolist(), strict=True))
        lexical_map = dict(zip(lexical_ids.tolist(), lexical_scores.tolist(), strict=True))
        d = np.array([dense_map.get(c, dense_floor) for c in candidates], dtype=np.float64)
        lex = np.array([lexical_map.get(c, 0.0) for c in candidates], dtype=np.float64)
        fused = np.zeros(len(candidates))
        if len(dense_ids):
            fused += params.dense_weight * normalise(d)
        if len(lexical_ids):
            fused += params.lexical_weight * normalise(lex)
    order = sorted(range(len(candidates)), key=lambda i: (-fused[i], candidates[i]))
    return [(candidates[i], float(fused[i])) for i in order]
