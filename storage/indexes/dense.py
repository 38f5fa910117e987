"""FAISS vector index of one collection, keyed by chunk id.

Exact inner product (`flat`) by default: on normalised vectors that is cosine
similarity with perfect recall, and at 100k x 384 a scan is a few milliseconds.
`hnsw` trades a little recall for sub-linear search on large collections; it
cannot delete in place, so removals rebuild it from its own stored vectors.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import faiss
import numpy as np

from storage.files import atomic_write_bytes

_MAGIC = b"KBFAISS1"
_HEADER = struct.Struct("<8sqQI")  # magic, generation, payload length, crc32


class IndexFileError(Exception):
    """An index file is missing, truncated or corrupt: the caller rebuilds from the DB."""


@dataclass(frozen=True, slots=True)
class DenseParams:
    kind: Literal["flat", "hnsw"] = "flat"
    hnsw_m: int = 32
    ef_search: int = 128


class DenseIndex:
    def __init__(self, dim: int, params: DenseParams = DenseParams()) -> None:
        self.dim = dim
        self.params = params
        self._index = self._empty()

    def _empty(self) -> faiss.IndexIDMap2:
        if self.params.kind == "hnsw":
            inner = faiss.IndexHNSWFlat(self.dim, self.params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efSearch = self.params.ef_search
        else:
            inner = faiss.IndexFlatIP(self.dim)
        return faiss.IndexIDMap2(inner)

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    def ids(self) -> np.ndarray:
        return faiss.vector_to_array(self._index.id_map).astype(np.int64)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
        self._index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))

    def remove(self, ids: np.ndarray) -> None:
        if len(ids) == 0 or self.ntotal == 0:
            return
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if self.params.kind == "flat":
            self._index.remove_ids(faiss.IDSelectorBatch(ids))
            return
        keep_ids = self.ids()
        keep = ~np.isin(keep_ids, ids)
        vectors = self._index.index.reconstruct_n(0, self.ntotal)[keep]
        self._index = self._empty()
        self.add(keep_ids[keep], vectors)

    def search(
        self, query: np.ndarray, k: int, allowed_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (ids, scores), best first; `allowed_ids` restricts the search (filters)."""
        if self.ntotal == 0 or k <= 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, self.dim)
        params = None
        if allowed_ids is not None:
            if len(allowed_ids) == 0:
                return np.empty(0, np.int64), np.empty(0, np.float32)
            selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed_ids, dtype=np.int64))
            if self.params.kind == "hnsw":
                params = faiss.SearchParametersHNSW(sel=selector, efSearch=self.params.ef_search)
            else:
                params = faiss.SearchParameters(sel=selector)
        # One query: no parallel region to gain, and one would leave this (request) thread an OpenMP pool
        # in the libgomp that torch loaded first, which FAISS's regions bind to; with the engine's pool
        # that makes two, and libgomp then stops spinning: SmolLM2's CPU decode went from 33 to 55 ms a
        # token after the first chat with retrieval (engine/devices.py). Per thread, so restored after.
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            scores, ids = self._index.search(q, min(k, self.ntotal), params=params)
        finally:
            faiss.omp_set_num_threads(threads)
        keep = ids[0] >= 0
        return ids[0][keep], scores[0][keep]

    # -- persistence -------------------------------------------------------------------

    def save(self, path: Path, generation: int) -> None:
        payload = faiss.serialize_index(self._index).tobytes()
        header = _HEADER.pack(_MAGIC, generation, len(payload), zlib.crc32(payload))
        atomic_write_bytes(path, header + payload)

    @classmethod
    def load(cls, path: Path, dim: int, params: DenseParams = DenseParams()) -> tuple[DenseIndex, int]:
        """Load and verify; raises IndexFileError for anything not exactly as written."""
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise IndexFileError(f"cannot read {path}: {exc}") from exc
        if len(raw) < _HEADER.size:
            raise IndexFileError(f"{path} is truncated")
        magic, generation, length, crc = _HEADER.unpack_from(raw)
        payload = memoryview(raw)[_HEADER.size :]
        if magic != _MAGIC or len(payload) != length or zlib.crc32(payload) != crc:
            raise IndexFileError(f"{path} is corrupt or truncated")
        index = faiss.deserialize_index(np.frombuffer(payload, dtype=np.uint8))
        if index.d != dim:
            raise IndexFileError(f"{path} has dim {index.d}, collection has {dim}")
        inner_is_hnsw = isinstance(faiss.downcast_index(index.index), faiss.IndexHNSWFlat)
        if inner_is_hnsw != (params.kind == "hnsw"):
            raise IndexFileError(f"{path} was built as another index kind")
        dense = cls(dim, params)
        dense._index = faiss.downcast_index(index) if not isinstance(index, faiss.IndexIDMap2) else index
        if inner_is_hnsw:
            faiss.downcast_index(dense._index.index).hnsw.efSearch = params.ef_search
        return dense, int(generation)
