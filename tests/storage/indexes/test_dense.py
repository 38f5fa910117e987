from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from storage.indexes.dense import DenseIndex, DenseParams, IndexFileError
from tests.threads import counts_in_fresh_process


def _random_unit(n: int, dim: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_add_search_remove_save_load(tmp_path: Path, kind: str) -> None:
    vectors = _random_unit(500, 32, 0)
    ids = np.arange(1000, 1500, dtype=np.int64)
    index = DenseIndex(32, DenseParams(kind=kind))
    index.add(ids, vectors)
    found, scores = index.search(vectors[7], 3)
    assert found[0] == 1007 and scores[0] == pytest.approx(1.0, abs=1e-5)
    assert np.all(np.diff(scores) <= 0)

    index.remove(np.array([1007]))
    assert index.ntotal == 499
    assert 1007 not in index.search(vectors[7], 10)[0]

    allowed = np.array([1010, 1020, 1030])
    got, _ = index.search(vectors[20], 10, allowed)
    assert set(got) <= set(allowed) and got[0] == 1020

    path = tmp_path / "d.faiss"
    index.save(path, generation=9)
    loaded, generation = DenseIndex.load(path, 32, DenseParams(kind=kind))
    assert generation == 9 and loaded.ntotal == 499
    assert loaded.search(vectors[21], 1)[0][0] == 1021


def test_corrupt_truncated_and_mismatched_files_are_rejected(tmp_path: Path) -> None:
    index = DenseIndex(8)
    index.add(np.arange(10), _random_unit(10, 8, 1))
    path = tmp_path / "d.faiss"
    index.save(path, 1)
    raw = path.read_bytes()

    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(IndexFileError):
        DenseIndex.load(path, 8)
    flipped = bytearray(raw)
    flipped[-5] ^= 0xFF
    path.write_bytes(bytes(flipped))
    with pytest.raises(IndexFileError):
        DenseIndex.load(path, 8)
    path.write_bytes(raw)
    with pytest.raises(IndexFileError):
        DenseIndex.load(path, 16)
    with pytest.raises(IndexFileError):
        DenseIndex.load(tmp_path / "missing.faiss", 8)


def test_a_search_leaves_its_thread_without_an_openmp_pool() -> None:
    """A request thread that searched keeps no OpenMP pool (which would slow the in-process engine's
    decode, engine/devices.py), and FAISS's thread setting is restored afterwards."""
    ours, plain, torch_threads, faiss_threads = counts_in_fresh_process(
        "import numpy as np\n"
        "import torch\n"  # first, as in kb serve: FAISS's parallel regions then bind to torch's libgomp
        "import faiss\n"
        "from storage.indexes.dense import DenseIndex\n"
        "index = DenseIndex(8)\n"
        "vectors = np.random.default_rng(0).random((5000, 8), dtype=np.float32)\n"
        "index.add(np.arange(5000, dtype=np.int64), vectors)\n"
        "q = np.ones(8, np.float32)\n"
        "print(kept_pool_workers(lambda: index.search(q, 3)),"
        " kept_pool_workers(lambda: index._index.search(q[None], 3)),"  # FAISS as it comes
        " torch.get_num_threads(), faiss.omp_get_max_threads())\n"
    )
    assert ours == 0
    assert plain == torch_threads - 1  # the pool that our search avoids
    assert faiss_threads == torch_threads
