"""Chunker properties with tiny fake token counters and with the real MiniLM tokenizer."""

from __future__ import annotations

import random

import pytest

from ingest.chunker import HEADING_JOINER, chunk_document
from ingest.types import BLOCK_SEPARATOR, Block, ChunkDraft, ParsedDocument

# --------------------------------------------------------------------------- counters


def words_counter(texts: list[str]) -> list[int]:
    """Whitespace words + 2 'specials', like a model that adds [CLS]/[SEP]."""
    return [len(t.split()) + 2 for t in texts]


def chars_counter(texts: list[str]) -> list[int]:
    """Every character is a token (whitespace included) + 1 special."""
    return [len(t) + 1 for t in texts]


class CallCounter:
    def __init__(self, inner):
        self.inner = inner
        self.calls = 0
        self.texts = 0

    def __call__(self, texts: list[str]) -> list[int]:
        self.calls += 1
        self.texts += len(texts)
        return self.inner(texts)


# --------------------------------------------------------------------------- helpers

EN_SENTENCES = [
    "The server stores every uploaded file in the data directory.",
    "Run the migration before starting the API.",
    "Is the index rebuilt after each upload?",
    "Chunks never cross a page boundary!",
    "Embeddings are normalised to unit length, so a dot product is the cosine.",
    "See section 3.2 for details, e.g. the retry policy.",
    "Workers pick jobs from the queue (Redis) and report progress.",
]
ZH_SENTENCES = [
    "知识库会把每个上传的文件保存在数据目录中。",
    "请在启动服务之前运行数据库迁移！",
    "每次上传之后都会重建索引吗？",
    "文本块不会跨越页面边界；",
    "向量被归一化为单位长度。",
]


def random_text(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.45:
        return " ".join(rng.choice(EN_SENTENCES) for _ in range(rng.randint(1, 30)))
    if kind < 0.7:
        return "".join(rng.choice(ZH_SENTENCES) for _ in range(rng.randint(1, 30)))
    if kind < 0.8:  # long unbroken text: no spaces, no punctuation
        return rng.choice(["知识库向量检索", "abcdefghij", "0123456789"]) * rng.randint(5, 200)
    if kind < 0.85:
        return rng.choice(["", "   ", "\n"])
    if kind < 0.92:  # lines inside one block (table rows, lists)
        return "\n".join(f"row {i} | value {rng.randint(0, 999)}" for i in range(rng.randint(1, 40)))
    return rng.choice(EN_SENTENCES) + " " + "".join(rng.choice(ZH_SENTENCES) for _ in range(3))


def random_doc(seed: int) -> ParsedDocument:
    rng = random.Random(seed)
    paths = [(), ("Guide",), ("Guide", "Install"), ("Guide", "Install", "Linux"), ("参考", "接口")]
    blocks = []
    page = 1
    path = ()
    for _ in range(rng.randint(1, 25)):
        if rng.random() < 0.25:
            page += 1
        if rng.random() < 0.35:
            path = rng.choice(paths)
        blocks.append(Block(random_text(rng), page if seed % 3 else None, path))
    return ParsedDocument("text/plain", blocks)


def block_spans(doc: ParsedDocument) -> list[tuple[int, int, Block]]:
    out, pos = [], 0
    for b in doc.blocks:
        out.append((pos, pos + len(b.text), b))
        pos += len(b.text) + len(BLOCK_SEPARATOR)
    return out


def heading_prefix(path: tuple[str, ...]) -> str:
    return HEADING_JOINER.join(path)


def check_invariants(doc: ParsedDocument, chunks: list[ChunkDraft], count, max_tokens: int) -> None:
    text = doc.text
    spans = block_spans(doc)
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    exact = count([c.embed_text for c in chunks]) if chunks else []
    for c, n in zip(chunks, exact, strict=True):
        assert text[c.start : c.end] == c.text
        assert c.text and c.text == c.text.strip()
        assert c.token_count == n, "token_count must be the exact count of embed_text"
        assert c.token_count <= max_tokens
        full = heading_prefix(c.heading_path)
        last = heading_prefix(c.heading_path[-1:])
        assert c.embed_text in (c.text, f"{full}\n{c.text}", f"{last}\n{c.text}")
        # the path may only be shortened (to its last heading, then nothing) when it alone
        # would eat more than half the budget
        half = (max_tokens - count([""])[0]) // 2
        if full and not c.embed_text.startswith(full + "\n"):
            assert count([full + "\n"])[0] - count([""])[0] > half
            if not c.embed_text.startswith(last + "\n"):
                assert count([last + "\n"])[0] - count([""])[0] > half
        # one section only: every block the chunk touches has the chunk's page and headings
        touched = [b for s, e, b in spans if s < c.end and c.start < e]
        assert touched
        assert all(b.page == c.page and tuple(b.heading_path) == c.heading_path for b in touched)
        touched_idx = [i for i, (s, e, _) in enumerate(spans) if s < c.end and c.start < e]
        assert touched_idx == list(range(touched_idx[0], touched_idx[-1] + 1))
    # reading order and progress
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert a.start <= b.start and a.end < b.end
    # coverage: every non-space character is in some chunk
    covered = bytearray(len(text))
    for c in chunks:
        covered[c.start : c.end] = b"\x01" * (c.end - c.start)
    missing = [i for i, ch in enumerate(text) if not ch.isspace() and not covered[i]]
    assert not missing, f"uncovered text: {text[missing[0] : missing[0] + 40]!r}"


# --------------------------------------------------------------------------- property tests


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize(
    ("counter", "max_tokens", "overlap"),
    [(words_counter, 24, 8), (words_counter, 60, 0), (chars_counter, 40, 12), (chars_counter, 120, 30)],
    ids=["words24", "words60", "chars40", "chars120"],
)
def test_random_documents_fake_counters(seed, counter, max_tokens, overlap):
    doc = random_doc(seed)
    chunks = chunk_document(doc, counter, max_tokens, overlap)
    check_invariants(doc, chunks, counter, max_tokens)


@pytest.mark.parametrize("seed", range(25))
@pytest.mark.parametrize(("max_tokens", "overlap"), [(64, 16), (256, 48)])
def test_random_documents_minilm_tokenizer(minilm, seed, max_tokens, overlap):
    doc = random_doc(1000 + seed)
    chunks = chunk_document(doc, minilm.count_tokens, max_tokens, overlap)
    check_invariants(doc, chunks, minilm.count_tokens, max_tokens)


# --------------------------------------------------------------------------- specific behaviour


def test_blocks_of_one_section_are_packed_and_sections_are_not_mixed():
    doc = ParsedDocument(
        "text/markdown",
        [
            Block("Alpha one. Alpha two.", 1, ("Intro",)),
            Block("Beta three.", 1, ("Intro",)),
            Block("Gamma on the same page, other heading.", 1, ("Intro", "Details")),
            Block("Delta on the next page.", 2, ("Intro", "Details")),
            Block("Epsilon back under Intro.", 2, ("Intro",)),
        ],
    )
    chunks = chunk_document(doc, words_counter, 100, 0)
    assert [c.text for c in chunks] == [
        "Alpha one. Alpha two.\n\nBeta three.",
        "Gamma on the same page, other heading.",
        "Delta on the next page.",
        "Epsilon back under Intro.",
    ]
    assert [(c.page, c.heading_path) for c in chunks] == [
        (1, ("Intro",)),
        (1, ("Intro", "Details")),
        (2, ("Intro", "Details")),
        (2, ("Intro",)),
    ]
    assert chunks[0].embed_text == "Intro\nAlpha one. Alpha two.\n\nBeta three."
    assert chunks[1].embed_text == "Intro > Details\nGamma on the same page, other heading."
    check_invariants(doc, chunks, words_counter, 100)


def test_no_headings_means_plain_embed_text():
    doc = ParsedDocument("text/plain", [Block("Just a sentence.")])
    (chunk,) = chunk_document(doc, words_counter, 50, 0)
    assert chunk.embed_text == chunk.text == "Just a sentence."
    assert chunk.token_count == 3 + 2
    assert chunk.page is None and chunk.heading_path == ()


def test_heading_prefix_is_counted_in_the_budget():
    body = " ".join(f"w{i}." for i in range(200))
    doc = ParsedDocument("text/plain", [Block(body, None, ("One two three four five six",))])
    chunks = chunk_document(doc, words_counter, 30, 0)
    # 30 - 2 specials - 6 heading words = 22 content words per chunk at most
    assert all(c.token_count <= 30 for c in chunks)
    assert all(len(c.text.split()) <= 22 for c in chunks)
    assert max(len(c.text.split()) for c in chunks) == 22
    assert all(c.embed_text.startswith("One two three four five six\n") for c in chunks)


def test_huge_heading_is_shortened_then_dropped_instead_of_overflowing():
    long_heading = " ".join(["heading"] * 40)
    doc = ParsedDocument(
        "text/plain",
        [
            Block("Body one. Body two.", None, ("Short", long_heading)),
            Block("Body three.", None, (long_heading,)),
        ],
    )
    chunks = chunk_document(doc, words_counter, 20, 0)
    assert chunks[0].heading_path == ("Short", long_heading)
    assert chunks[0].embed_text == "Body one. Body two."  # last heading is too long as well
    assert chunks[1].embed_text == "Body three."
    check_invariants(doc, chunks, words_counter, 20)

    doc2 = ParsedDocument("text/plain", [Block("Body.", None, (long_heading, "Install"))])
    (only,) = chunk_document(doc2, words_counter, 20, 0)
    assert only.embed_text == "Install\nBody."  # full path too long, last heading fits


def test_overlap_repeats_trailing_sentences_of_the_previous_chunk():
    sentences = [f"Sentence number {i} is here." for i in range(60)]  # 5 words each
    doc = ParsedDocument("text/plain", [Block(" ".join(sentences), 3, ("H",))])
    max_tokens, overlap = 40, 10
    chunks = chunk_document(doc, words_counter, max_tokens, overlap)
    check_invariants(doc, chunks, words_counter, max_tokens)
    assert len(chunks) > 5
    for prev, nxt in zip(chunks, chunks[1:], strict=False):
        assert nxt.start < prev.end, "consecutive chunks of a section must overlap"
        shared = doc.text[nxt.start : prev.end]
        assert shared == nxt.text[: len(shared)] and prev.text.endswith(shared)
        # whole sentences, worth at most `overlap` tokens, and new text in every chunk
        assert shared.startswith("Sentence number") and shared.endswith("is here.")
        assert len(shared.split()) <= overlap
        assert len(shared.split()) == 10  # two 5-word sentences fit exactly
        assert nxt.end > prev.end


def test_no_overlap_across_sections_or_when_disabled():
    sentences = " ".join(f"Sentence number {i} is here." for i in range(30))
    doc = ParsedDocument("text/plain", [Block(sentences, 1), Block(sentences, 2)])
    with_overlap = chunk_document(doc, words_counter, 40, 10)
    page_change = [i for i in range(1, len(with_overlap)) if with_overlap[i].page != with_overlap[i - 1].page]
    assert len(page_change) == 1
    i = page_change[0]
    assert with_overlap[i].start >= with_overlap[i - 1].end
    without = chunk_document(doc, words_counter, 40, 0)
    assert all(b.start > a.end for a, b in zip(without, without[1:], strict=False))
    assert len(without) < len(with_overlap)


def test_chunk_prefers_to_end_at_a_block_boundary():
    first = " ".join(["alpha."] * 10)
    second = " ".join(["beta."] * 15)  # fits a chunk alone, not after `first`
    doc = ParsedDocument("text/plain", [Block(first), Block(second)])
    chunks = chunk_document(doc, words_counter, 22, 0)
    assert [c.text for c in chunks] == [first, second]


def test_cjk_text_is_split_at_cjk_sentence_ends_with_exact_offsets(minilm):
    text = "".join(ZH_SENTENCES[i % len(ZH_SENTENCES)] for i in range(120))
    doc = ParsedDocument("text/plain", [Block("Intro paragraph."), Block(text, None, ("中文",))])
    # every sentence costs <= 21 tokens, so an overlap of 24 always fits one sentence
    chunks = chunk_document(doc, minilm.count_tokens, 64, 24)
    check_invariants(doc, chunks, minilm.count_tokens, 64)
    zh = [c for c in chunks if c.heading_path == ("中文",)]
    assert len(zh) > 5
    assert all(c.text[-1] in "。！？；" for c in zh)
    assert all(c.embed_text.startswith("中文\n") for c in zh)
    assert sum(1 for a, b in zip(zh, zh[1:], strict=False) if b.start < a.end) == len(zh) - 1


@pytest.mark.parametrize(
    "unbroken",
    ["知识库向量检索系统" * 300, "https://example.com/" + "a.b/c-d_e" * 300, "Ab知识" * 400],
    ids=["chinese", "punctuated", "mixed"],
)
def test_long_unbroken_text_is_cut_by_tokens(minilm, unbroken):
    doc = ParsedDocument("text/plain", [Block(unbroken, 7, ("Blob",))])
    chunks = chunk_document(doc, minilm.count_tokens, 128, 20)
    check_invariants(doc, chunks, minilm.count_tokens, 128)
    assert len(chunks) >= 2
    assert "".join(c.text for c in chunks) == unbroken  # no overlap possible inside one "sentence"
    # cut by size, not into crumbs: all but the last piece use most of the budget
    assert all(c.token_count > 128 * 0.5 for c in chunks[:-1])


def test_minilm_sees_an_over_long_word_as_one_unknown_token(minilm):
    # WordPiece maps a "word" over 100 characters to [UNK]: one token, no need to cut.
    doc = ParsedDocument("text/plain", [Block("x" * 3000)])
    (chunk,) = chunk_document(doc, minilm.count_tokens, 64, 8)
    assert chunk.text == "x" * 3000 and chunk.token_count == 3


def test_long_unbroken_text_with_char_counter():
    doc = ParsedDocument("text/plain", [Block("a" * 5000)])
    chunks = chunk_document(doc, chars_counter, 100, 0)
    check_invariants(doc, chunks, chars_counter, 100)
    assert "".join(c.text for c in chunks) == "a" * 5000
    assert all(len(c.text) <= 99 for c in chunks)


def test_token_counting_is_batched():
    counter = CallCounter(words_counter)
    sentences = [f"Sentence number {i} says something." for i in range(2000)]
    blocks = [
        Block(" ".join(sentences[i : i + 20]), i // 100 + 1, ("H", str(i // 200))) for i in range(0, 2000, 20)
    ]
    doc = ParsedDocument("text/plain", blocks)
    chunks = chunk_document(doc, counter, 50, 10)
    check_invariants(doc, chunks, words_counter, 50)
    assert len(chunks) > 200
    assert counter.calls <= 3


def test_real_tokenizer_merges_are_caught_by_the_exact_recount(minilm):
    # Pieces joined without a space can tokenise into more word pieces than their
    # separate counts add up to; the final exact count must still hold the limit.
    rng = random.Random(5)
    text = "".join(rng.choice(["ab", "xy", "zq", "中", "。", "#", "éé"]) for _ in range(3000))
    doc = ParsedDocument("text/plain", [Block(text)])
    chunks = chunk_document(doc, minilm.count_tokens, 40, 8)
    check_invariants(doc, chunks, minilm.count_tokens, 40)
    assert len(chunks) > 10


def test_empty_and_whitespace_documents_give_no_chunks():
    assert chunk_document(ParsedDocument("text/plain", []), words_counter, 10, 2) == []
    doc = ParsedDocument("text/plain", [Block(""), Block("   \n "), Block("\n")])
    assert chunk_document(doc, words_counter, 10, 2) == []


def test_whitespace_blocks_between_text_do_not_leak_into_edges():
    doc = ParsedDocument("text/plain", [Block("  First.  "), Block(""), Block("\nSecond.\n")])
    (chunk,) = chunk_document(doc, words_counter, 50, 0)
    assert chunk.text == "First.  \n\n\n\n\nSecond."
    assert doc.text[chunk.start : chunk.end] == chunk.text


def test_too_small_budget_is_an_error():
    doc = ParsedDocument("text/plain", [Block("text")])
    with pytest.raises(ValueError, match="max_tokens"):
        chunk_document(doc, words_counter, 2, 0)  # the 2 specials leave nothing
    with pytest.raises(ValueError, match="max_tokens"):
        chunk_document(doc, words_counter, 0, 0)
