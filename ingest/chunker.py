"""Structure-aware chunking: ParsedDocument -> ChunkDraft list, every chunk within the model limit.

Rules
- A *section* is a maximal run of consecutive blocks with the same (page, heading_path);
  a chunk never leaves its section.
- Blocks are cut into sentence *units* (Western .!? followed by space, CJK 。！？；, line
  breaks). Units wider than the budget are cut further: at whitespace if there is any,
  else at plain character positions (CJK, URLs, base64), sized from their token count.
- Units are packed greedily; a chunk prefers to end at a block boundary when the next
  block would fit in a chunk of its own.
- Overlap: the next chunk of a section starts with the trailing units of the previous
  chunk worth up to `overlap_tokens`.
- `embed_text` = " > ".join(heading_path) + "\\n" + text (just text without headings);
  `token_count` is the exact count of embed_text and is always <= max_tokens. A heading
  path costing more than half the budget is shortened to its last heading, then dropped.
- Offsets: `doc.text[c.start:c.end] == c.text`; chunk text never starts or ends with
  whitespace.

Speed: packing uses per-unit counts (plus the counted cost of the whitespace between
units), so the tokenizer runs in a handful of batched calls per document: once over all
units, a few times over the rare oversized pieces, once over the final embed_texts (which
both yields the exact `token_count` and catches the rare packing estimate that was low, in
which case that chunk is split and recounted).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from ingest.types import BLOCK_SEPARATOR, ChunkDraft, ParsedDocument

CountTokens = Callable[[list[str]], list[int]]

HEADING_JOINER = " > "
_PROBE = "a"  # one token in every tokenizer kb uses

# A unit ends after: Western terminal punctuation (plus closing quotes/brackets) that is
# followed by whitespace; CJK/full-width terminal punctuation (no space needed); a line break.
_BOUNDARY = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s)|[。！？；!?]+[」』”’）)\]\"']*|\n")
_SPACE = re.compile(r"\s")


@dataclass(slots=True)
class _Unit:
    start: int
    end: int
    cost: int  # content tokens (specials excluded)
    block: int  # index of the block it came from


def chunk_document(
    doc: ParsedDocument,
    count_tokens: CountTokens,
    max_tokens: int,
    overlap_tokens: int,
) -> list[ChunkDraft]:
    """Cut `doc` into ChunkDrafts whose embed_text is at most `max_tokens` by `count_tokens`."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    overlap_tokens = max(0, int(overlap_tokens))
    text = doc.text
    sections = _sections(doc)
    if not sections:
        return []

    # 1. Sentence units for every block, plus the constant pieces, counted in one call.
    spans: list[tuple[int, int, int]] = []  # (start, end, block)
    for _, _, blocks in sections:
        for b, b_start, b_end in blocks:
            spans.extend((s, e, b) for s, e in _sentence_spans(text, b_start, b_end))
    if not spans:
        return []
    paths = {path for _, path, _ in sections}
    heading_strs = sorted(({_heading_str(p) for p in paths} | {_heading_str(p[-1:]) for p in paths}) - {""})
    gap_strs = sorted({text[spans[i - 1][1] : spans[i][0]] for i in range(1, len(spans))})
    # Costs are marginal: what a piece adds to a text that already holds something. They
    # are measured around a one-token probe, which also captures tokenizer quirks at the
    # seams (e.g. e5's "passage: " swallowing the first word's space marker).
    fixed = ["", _PROBE, *(h + "\n" + _PROBE for h in heading_strs), *(_PROBE + g + _PROBE for g in gap_strs)]
    counts = count_tokens(fixed + [text[s:e] for s, e, _ in spans])
    base, probe = counts[0], counts[1]  # base: specials (+ the passage prefix) every text pays
    h_counts = counts[2 : 2 + len(heading_strs)]
    g_counts = counts[2 + len(heading_strs) : len(fixed)]
    heading_cost = {h: c - probe for h, c in zip(heading_strs, h_counts, strict=True)}
    heading_cost[""] = 0
    gap_cost = {g: max(0, c - 2 * probe + base) for g, c in zip(gap_strs, g_counts, strict=True)}
    unit_costs = [c - base for c in counts[len(fixed) :]]

    content_budget = max_tokens - base
    if content_budget < 1:
        raise ValueError(f"max_tokens={max_tokens} leaves no room for text (an empty text costs {base})")

    # 2. Per section: heading prefix and budget; units that do not fit are cut further.
    plans: list[_Plan] = []
    oversized: list[tuple[int, int, int, int, int]] = []  # (span index, start, end, budget, cost)
    budgets: list[int] = []
    prefixes: list[str] = []
    for _, path, _blocks in sections:
        prefix = _choose_prefix(path, heading_cost, content_budget)
        budgets.append(content_budget - heading_cost[prefix])
        prefixes.append(prefix)
    span_section = _span_sections(sections, spans)
    for i, (s, e, _b) in enumerate(spans):
        if unit_costs[i] > budgets[span_section[i]]:
            oversized.append((i, s, e, budgets[span_section[i]], unit_costs[i]))
    pieces = _cut_oversized(text, oversized, count_tokens, base) if oversized else {}

    sec_units: list[list[_Unit]] = [[] for _ in sections]
    for i, (s, e, b) in enumerate(spans):
        units = sec_units[span_section[i]]
        if i in pieces:
            units.extend(_Unit(a, z, c, b) for a, z, c in pieces[i])
        else:
            units.append(_Unit(s, e, unit_costs[i], b))

    for sec_idx, (key, path, _blocks) in enumerate(sections):
        units = sec_units[sec_idx]
        for k, j in _pack(text, units, budgets[sec_idx], overlap_tokens, gap_cost):
            plans.append(_Plan(key[0], path, prefixes[sec_idx], units[k].start, units[j - 1].end))

    # 3. Exact counts of the final embed_texts; split any chunk the estimate let through.
    return _finalise(text, plans, count_tokens, max_tokens)


@dataclass(slots=True)
class _Plan:
    page: int | None
    path: tuple[str, ...]
    prefix: str
    start: int
    end: int
    count: int | None = None


# --------------------------------------------------------------------------- helpers


def _sections(doc: ParsedDocument) -> list[tuple[tuple[int | None, tuple[str, ...]], tuple[str, ...], list]]:
    """[(key, heading_path, [(block index, start, end), ...])] for runs of same (page, path)."""
    out: list = []
    pos = 0
    sep = len(BLOCK_SEPARATOR)
    for i, block in enumerate(doc.blocks):
        start, end = pos, pos + len(block.text)
        pos = end + sep
        key = (block.page, tuple(block.heading_path))
        if out and out[-1][0] == key:
            out[-1][2].append((i, start, end))
        else:
            out.append((key, key[1], [(i, start, end)]))
    return out


def _span_sections(sections, spans) -> list[int]:
    """Section index of every span (spans are in block order, sections are block runs)."""
    block_section = {}
    for sec_idx, (_, _, blocks) in enumerate(sections):
        for b, _, _ in blocks:
            block_section[b] = sec_idx
    return [block_section[b] for _, _, b in spans]


def _heading_str(path: tuple[str, ...]) -> str:
    return HEADING_JOINER.join(h.strip() for h in path if h and h.strip())


def _choose_prefix(path: tuple[str, ...], heading_cost: dict[str, int], content_budget: int) -> str:
    """Full heading path, else its last heading, else nothing: whatever costs <= half the budget."""
    full = _heading_str(path)
    if not full:
        return ""
    if heading_cost[full] <= content_budget // 2:
        return full
    last = _heading_str(path[-1:])
    if last in heading_cost and heading_cost[last] <= content_budget // 2:
        return last
    return ""


def _strip_span(text: str, s: int, e: int) -> tuple[int, int]:
    while s < e and text[s].isspace():
        s += 1
    while e > s and text[e - 1].isspace():
        e -= 1
    return s, e


def _sentence_spans(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Whitespace-trimmed sentence spans of text[start:end] (absolute offsets)."""
    out = []
    pos = start
    for m in _BOUNDARY.finditer(text, start, end):
        s, e = _strip_span(text, pos, m.end())
        if s < e:
            out.append((s, e))
        pos = m.end()
    s, e = _strip_span(text, pos, end)
    if s < e:
        out.append((s, e))
    return out


def _cut_points(text: str, s: int, e: int, parts: int) -> list[tuple[int, int]]:
    """Cut text[s:e] into about `parts` pieces, at whitespace near each cut when there is some."""
    n = e - s
    parts = max(2, min(parts, n))
    pieces = []
    prev = s
    for k in range(1, parts):
        target = s + (n * k) // parts
        cut = target
        window = max(1, n // (parts * 4))  # look back/forward at most a quarter piece for a space
        lo, hi = max(prev + 1, target - window), min(e - 1, target + window)
        best = None
        for d in range(0, window + 1):
            for c in (target - d, target + d):
                if lo <= c <= hi and _SPACE.match(text, c):
                    best = c
                    break
            if best is not None:
                break
        if best is not None:
            cut = best
        if cut <= prev:
            continue
        pieces.append((prev, cut))
        prev = cut
    pieces.append((prev, e))
    out = []
    for a, b in pieces:
        a, b = _strip_span(text, a, b)
        if a < b:
            out.append((a, b))
    return out


def _cut_oversized(text, oversized, count_tokens, base) -> dict[int, list[tuple[int, int, int]]]:
    """Cut each oversized unit into pieces that fit its budget: {span index: [(start, end, cost)]}.

    Pieces are sized from the measured tokens-per-character, then all recounted in one
    batch per round; the rare piece still too long is cut again in the next round.
    """
    done: dict[int, list[tuple[int, int, int]]] = {i: [] for i, *_ in oversized}
    work = list(oversized)
    while work:
        candidates = []
        for i, s, e, budget, cost in work:
            parts = math.ceil(cost * 1.15 / max(1, budget))
            candidates.extend((i, a, b, budget) for a, b in _cut_points(text, s, e, parts))
        counts = count_tokens([text[a:b] for _, a, b, _ in candidates])
        work = []
        for (i, a, b, budget), c in zip(candidates, counts, strict=True):
            cost = c - base
            if cost <= budget or b - a <= 1:
                done[i].append((a, b, cost))
            else:
                work.append((i, a, b, budget, cost))
    for pieces in done.values():
        pieces.sort()
    return done


def _pack(
    text: str, units: list[_Unit], budget: int, overlap_tokens: int, gap_cost: dict[str, int]
) -> list[tuple[int, int]]:
    """Greedy packing of one section's units into [k, j) ranges (with overlap)."""
    n = len(units)
    gaps = [0] + [gap_cost.get(text[units[i - 1].end : units[i].start], 1) for i in range(1, n)]
    # Cost of each block's units from a given unit to the block end, for the boundary rule.
    block_rest = [0] * n
    for i in range(n - 1, -1, -1):
        same = i + 1 < n and units[i + 1].block == units[i].block
        block_rest[i] = units[i].cost + (gaps[i + 1] + block_rest[i + 1] if same else 0)
    out: list[tuple[int, int]] = []
    i = 0
    prev_start = -1
    while i < n:
        k = i
        total = units[i].cost
        if overlap_tokens and out:
            ov = 0
            while k - 1 > prev_start:
                add = units[k - 1].cost + gaps[k]
                if ov + add > overlap_tokens or total + add > budget:
                    break
                ov += add
                total += add
                k -= 1
        j = i + 1
        while j < n:
            add = gaps[j] + units[j].cost
            if total + add > budget:
                break
            new_block = units[j].block != units[j - 1].block
            if new_block and total + gaps[j] + block_rest[j] > budget and block_rest[j] <= budget:
                break  # the next block fits in a chunk of its own: start it there
            total += add
            j += 1
        out.append((k, j))
        prev_start = k
        i = j
    return out


def _finalise(text: str, plans: list[_Plan], count_tokens: CountTokens, max_tokens: int) -> list[ChunkDraft]:
    """Exact token counts for every embed_text; split (and recount) any chunk over max_tokens."""
    while True:
        pending = [p for p in plans if p.count is None]
        if not pending:
            break
        counts = count_tokens([_embed_text(p.prefix, text[p.start : p.end]) for p in pending])
        for p, c in zip(pending, counts, strict=True):
            p.count = c
        next_plans: list[_Plan] = []
        for p in plans:
            if p.count <= max_tokens:
                next_plans.append(p)
            elif p.end - p.start > 1:
                next_plans.extend(
                    _Plan(p.page, p.path, p.prefix, a, b) for a, b in _split_chunk(text, p.start, p.end)
                )
            elif p.prefix:  # one character still too long with the heading: drop the heading
                next_plans.append(_Plan(p.page, p.path, "", p.start, p.end))
            else:
                raise ValueError(f"max_tokens={max_tokens} is too small to hold even one character")
        plans = next_plans
    return [
        ChunkDraft(
            ordinal=i,
            text=text[p.start : p.end],
            start=p.start,
            end=p.end,
            page=p.page,
            heading_path=p.path,
            token_count=p.count,
            embed_text=_embed_text(p.prefix, text[p.start : p.end]),
        )
        for i, p in enumerate(plans)
    ]


def _split_chunk(text: str, s: int, e: int) -> list[tuple[int, int]]:
    """Split an over-budget chunk in two: at the sentence boundary nearest its middle if any."""
    sents = _sentence_spans(text, s, e)
    if len(sents) > 1:
        mid = (s + e) // 2
        best = min(range(1, len(sents)), key=lambda i: abs(sents[i][0] - mid))
        return [(s, sents[best - 1][1]), (sents[best][0], e)]
    return _cut_points(text, s, e, 2)


def _embed_text(prefix: str, chunk_text: str) -> str:
    return f"{prefix}\n{chunk_text}" if prefix else chunk_text
