"""Follow-up questions -> standalone search queries.

"And how long does it take?" retrieves nothing useful on its own. The generator rewrites it from the
recent history; when that is off, slow, fails or returns something implausible, a cheap rule takes over:
a question that looks like a follow-up (short, or leaning on "it/that/they/...") is searched together
with the previous standalone query. `auto` (the default) only asks the generator for such follow-ups, so
self-contained questions cost no extra model call.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass

from services.chat.generators.base import GenerationRequest, Generator, GeneratorError

log = logging.getLogger(__name__)

_WORD = re.compile(r"\w+", re.UNICODE)
_ANAPHORA = {
    "it", "its", "that", "this", "these", "those", "they", "them", "their", "there", "he", "she", "his",
    "her", "one", "ones", "same", "such", "above", "also", "else", "more", "former", "latter", "what about",
}  # fmt: skip
_MAX_WORDS_FOLLOW_UP = 6
# Words that carry no topic: a rewrite must keep at least one of the question's other words.
_FUNCTION_WORDS = _ANAPHORA | {
    "a", "an", "the", "and", "or", "but", "for", "of", "to", "in", "on", "at", "by", "with", "from", "is",
    "are", "was", "were", "be", "do", "does", "did", "can", "could", "will", "would", "should", "may",
    "how", "what", "when", "where", "which", "who", "whom", "why", "i", "you", "we", "me", "my", "your",
    "our", "so", "then", "about", "please", "ok", "okay", "any", "all",
}  # fmt: skip

REWRITE_SYSTEM = (
    "Rewrite the user's last question so it can be understood without the conversation. "
    "Reply with the rewritten question only, on one line."
)


@dataclass(slots=True)
class Rewrite:
    query: str
    method: str  # "none" | "generator" | "heuristic"


def looks_like_follow_up(question: str) -> bool:
    words = [w.lower() for w in _WORD.findall(question)]
    if not words:
        return False
    if len(words) <= _MAX_WORDS_FOLLOW_UP:
        return True
    text = " ".join(words)
    return any(re.search(rf"\b{re.escape(a)}\b", text) for a in _ANAPHORA)


def heuristic(question: str, previous_queries: list[str]) -> str:
    """The previous standalone query plus the follow-up: both feed BM25 and the embedding."""
    if not previous_queries or not looks_like_follow_up(question):
        return question.strip()
    return f"{previous_queries[-1].strip()} {question.strip()}"


def _plausible(candidate: str, question: str, history_text: str, answers: list[str]) -> bool:
    """Reject what small models tend to produce instead of a rewrite: a copy of an earlier answer, or
    text that drops the question's own topic words ("For how long?" must keep "long")."""
    if not candidate or len(candidate) > max(300, 3 * len(question)) or "\n" in candidate.strip():
        return False
    words = {w.lower() for w in _WORD.findall(candidate)}
    topic = {w.lower() for w in _WORD.findall(question)} - _FUNCTION_WORDS
    if topic and not topic & words:
        return False
    flat = " ".join(_WORD.findall(candidate.lower()))
    if any(flat and flat in " ".join(_WORD.findall(a.lower())) for a in answers):
        return False
    known = {w.lower() for w in _WORD.findall(question + " " + history_text)}
    return len(words & known) >= min(2, len(words))


async def rewrite_query(
    question: str,
    history: list[tuple[str, str, str | None]],
    generator: Generator | None,
    mode: str = "auto",
    timeout_s: float = 20.0,
) -> Rewrite:
    """`history` holds (question, standalone query, answer) of earlier turns, oldest first."""
    if not history or mode == "off":
        return Rewrite(question.strip(), "none")
    previous = [q for _, q, _ in history if q]
    if mode == "heuristic" or generator is None or (mode == "auto" and not looks_like_follow_up(question)):
        query = heuristic(question, previous)
        return Rewrite(query, "heuristic" if query != question.strip() else "none")
    lines = []
    for q, _, a in history[-2:]:
        lines.append(f"User: {q}")
        if a:
            lines.append(f"Assistant: {a[:400]}")
    history_text = "\n".join(lines)
    request = GenerationRequest(
        messages=[
            {"role": "system", "content": REWRITE_SYSTEM},
            {"role": "user", "content": f"{history_text}\nUser: {question}\n\nRewritten question:"},
        ],
        max_tokens=32,
        temperature=0.0,
        stop=["\n"],
    )
    try:
        result = await asyncio.wait_for(generator.complete(request), timeout_s)
        candidate = result.text.strip().strip('"').strip()
        answers = [a for _, _, a in history if a]
        if _plausible(candidate, question, history_text, answers):
            return Rewrite(candidate, "generator")
        log.info("rewrite %r rejected, using the heuristic", candidate)
    except (GeneratorError, TimeoutError) as exc:
        log.info("rewrite failed (%s), using the heuristic", exc)
    return Rewrite(heuristic(question, previous), "heuristic")
