"""Lexical tokenisation shared by indexing and querying, for English and Chinese alike.

Latin-script words are lower-cased, stop-word filtered and Snowball-stemmed. Han,
kana and hangul have no spaces, so each run is indexed as overlapping character
bigrams plus unigrams (the scheme of Lucene's CJKAnalyzer): no dictionary to ship,
and a query's bigrams match any document containing the same phrase.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

import Stemmer

_CJK = r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_TOKEN_RE = re.compile(rf"[{_CJK}]+|[^\W_{_CJK}]+", re.UNICODE)
_CJK_RE = re.compile(rf"[{_CJK}]")

STOPWORDS_EN = frozenset(
    """a an and are as at be but by for from has have he her his i if in into is it its me my no not of on
    or our she so such than that the their them then there these they this to was we were what when where
    which while who whom why will with you your do does did can could would should been being""".split()
)


@lru_cache(maxsize=1)
def _stemmer() -> Stemmer.Stemmer:
    return Stemmer.Stemmer("english")


def tokenize(text: str) -> list[str]:
    """Terms for BM25; the same function must serve documents and queries."""
    text = unicodedata.normalize("NFKC", text).lower()
    out: list[str] = []
    words: list[str] = []
    for match in _TOKEN_RE.finditer(text):
        run = match.group()
        if _CJK_RE.match(run):
            out.extend(run)
            out.extend(run[i : i + 2] for i in range(len(run) - 1))
        elif run not in STOPWORDS_EN and len(run) < 64:
            words.append(run)
    if words:
        out.extend(_stemmer().stemWords(words))
    return out
