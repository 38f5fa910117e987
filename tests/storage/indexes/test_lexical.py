from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from storage.indexes.dense import IndexFileError
from storage.indexes.lexical import LexicalIndex
from storage.indexes.tokenize import tokenize


def test_tokenize_english_and_chinese() -> None:
    assert tokenize("The Refunds were REFUNDED") == ["refund", "refund"]
    zh = tokenize("退货政策")
    assert {"退货", "货政", "政策", "退"} <= set(zh)
    assert tokenize("the of and") == []


def test_bm25_add_delete_filter_and_reopen(tmp_path: Path) -> None:
    index = LexicalIndex(tmp_path / "lex")
    index.apply(
        [
            (1, "refund policy for returned goods"),
            (2, "退货政策：七天无理由退货"),
            (3, "shipping and refund times"),
        ],
        [],
        generation=1,
    )
    ids, scores = index.search("what is the refund policy", 5)
    assert list(ids) == [1, 3] and scores[0] > scores[1]
    assert list(index.search("退货政策是什么", 5)[0]) == [2]
    assert list(index.search("refund", 5, np.array([3]))[0]) == [3]
    assert len(index.search("the of", 5)[0]) == 0

    index.apply([], [1], generation=2)
    assert list(index.search("refund policy", 5)[0]) == [3]
    reopened = LexicalIndex(tmp_path / "lex")
    assert reopened.generation() == 2 and reopened.num_docs == 2


def test_missing_generation_marker_means_rebuild(tmp_path: Path) -> None:
    index = LexicalIndex(tmp_path / "lex")
    with pytest.raises(IndexFileError):
        index.generation()
