"""Metadata filters: `{"lang": "en"}` (equality) and `{"team": {"in": ["a", "b"]}}`.

Keys address the document's metadata; `source_id`, `mime_type`, `title` and
`document_id` address the document's own fields. Filters are applied before
ranking (as allowed-id sets inside FAISS and tantivy), so top_k is always filled
from matching chunks instead of being post-filtered down to nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import Chunk, Collection, Document

DOCUMENT_FIELDS = {"source_id", "mime_type", "title", "document_id"}
Scalar = str | int | float | bool | None


class FilterError(ValueError):
    """The filter is malformed; the message says how (API: 422)."""


def normalize_filter(spec: dict[str, Any] | None) -> dict[str, list[Scalar]]:
    """Turn the user's filter into {key: allowed values}; reject anything else clearly."""
    if not spec:
        return {}
    out: dict[str, list[Scalar]] = {}
    for key, cond in spec.items():
        if isinstance(cond, dict):
            if set(cond) == {"in"} and isinstance(cond["in"], list) and cond["in"]:
                values = cond["in"]
            elif set(cond) == {"eq"}:
                values = [cond["eq"]]
            else:
                raise FilterError(f"filter on '{key}' must be a value, {{'eq': value}} or {{'in': [values]}}")
        else:
            values = [cond]
        for value in values:
            if isinstance(value, dict | list):
                raise FilterError(f"filter values for '{key}' must be strings, numbers, booleans or null")
        out[key] = list(values)
    return out


def _matches(document: Document, conditions: dict[str, list[Scalar]]) -> bool:
    for key, allowed in conditions.items():
        if key == "document_id":
            value: Any = document.id
        elif key in DOCUMENT_FIELDS:
            value = getattr(document, key)
        else:
            value = (document.metadata_ or {}).get(key)
        if value not in allowed:
            return False
    return True


def allowed_chunk_ids(
    session: Session, collection: Collection, conditions: dict[str, list[Scalar]]
) -> np.ndarray:
    """Chunk ids of the collection's documents that satisfy every condition."""
    docs = session.execute(
        select(Document).where(Document.collection_id == collection.id, Document.status == "indexed")
    ).scalars()
    doc_ids = [d.id for d in docs if _matches(d, conditions)]
    if not doc_ids:
        return np.empty(0, np.int64)
    ids: list[int] = []
    for start in range(0, len(doc_ids), 500):
        batch = doc_ids[start : start + 500]
        ids.extend(session.scalars(select(Chunk.id).where(Chunk.document_id.in_(batch))))
    return np.asarray(ids, dtype=np.int64)
