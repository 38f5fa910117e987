"""Prompt building: numbered sources inside each user turn, rendered so the token stream only grows.

Why this shape. The engine reuses KV for any prompt prefix it has seen (whole blocks, keyed by content).
A turn's prompt is therefore built from the stored history *exactly as it was given before*:

    system  (fixed for the session)
    user    Sources: [1] ... [2] ...  Question: <turn 1>      <- context of turn 1 stays in turn 1
    assistant <answer 1, verbatim>
    user    Sources: [3] ...  (also [1])  Question: <turn 2>  <- only *new* passages are added
    assistant ...

Earlier turns and their passages are never re-rendered differently, so turn N's prompt starts with turn
N-1's prompt and answer, and only the new user turn is prefilled. Passage numbers are global within a
session: a passage already shown keeps its number and is referenced, not repeated.

Context-window policy (`fit_window`): when prompt + answer would exceed the window, the oldest turns lose
their passages first (question and answer stay), then the oldest whole turns are dropped, then the
current turn's lowest-ranked passages. Any such cut changes the prompt at the first trimmed turn, so the
prefix cache only serves what comes before it; to pay that once rather than on every turn, a cut goes
down to `trim_to` (default 60 %) of the window, and the cut points are stored with the turn so the next
turns render the same, shorter prefix again (see README "Chat" for the measured cost).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

Message = dict[str, str]

CITATION_RULES = (
    "Sources are numbered like [1]. Cite the numbers of the sources you use. "
    "Do not make up facts that are not in the sources."
)


@dataclass(slots=True)
class Passage:
    """One numbered source as it was put into a prompt (stored verbatim with the turn)."""

    n: int
    chunk_id: int
    document_id: int
    source_id: str
    title: str | None
    page: int | None
    heading: list[str]
    text: str
    score: float = 0.0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Passage:
        return cls(**{k: data.get(k) for k in cls.__slots__ if k in data})  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def label(self) -> str:
        label = self.title or self.source_id
        if self.page is not None:
            label += f", page {self.page}"
        if self.heading:
            label += " > " + " > ".join(self.heading)
        return label

    def citation(self, answer: str | None = None) -> dict[str, Any]:
        snippet = " ".join(self.text.split())
        return {
            "n": self.n,
            "chunk_id": self.chunk_id,
            "document_id": self.document_id,
            "source_id": self.source_id,
            "title": self.title,
            "page": self.page,
            "heading": list(self.heading),
            "snippet": snippet[:240] + ("…" if len(snippet) > 240 else ""),
            "cited": answer is not None and f"[{self.n}]" in answer,
        }


@dataclass(slots=True)
class Turn:
    """One exchange: the question, the passages newly shown with it, references to earlier ones."""

    question: str
    passages: list[Passage] = field(default_factory=list)
    refs: list[int] = field(default_factory=list)
    answer: str | None = None


@dataclass(slots=True)
class Window:
    """Where the history is cut: turns before `context_from` are shown without their passages,
    turns before `turns_from` are not shown at all. Only ever grows within a session."""

    context_from: int = 0
    turns_from: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"context_from": self.context_from, "turns_from": self.turns_from}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Window:
        data = data or {}
        return cls(int(data.get("context_from", 0)), int(data.get("turns_from", 0)))


def render_user(turn: Turn, show_passages: bool = True) -> str:
    parts: list[str] = []
    if show_passages and turn.passages:
        parts.append(
            "Sources:\n" + "\n".join(f"[{p.n}] ({p.label()}) {p.text.strip()}" for p in turn.passages)
        )
    if show_passages and turn.refs:
        parts.append("See also sources " + ", ".join(f"[{n}]" for n in turn.refs) + " above.")
    parts.append(f"Question: {turn.question.strip()}")
    return "\n\n".join(parts)


def system_message(session_prompt: str | None, default_prompt: str) -> Message:
    return {"role": "system", "content": f"{(session_prompt or default_prompt).strip()}\n\n{CITATION_RULES}"}


def build_messages(system: Message, turns: list[Turn], window: Window = Window()) -> list[Message]:
    """The full prompt: the last turn is the current one (no answer yet)."""
    messages = [system]
    for i, turn in enumerate(turns):
        if i < window.turns_from:
            continue
        messages.append({"role": "user", "content": render_user(turn, i >= window.context_from)})
        if turn.answer is not None:
            messages.append({"role": "assistant", "content": turn.answer})
    return messages


def visible_passages(turns: list[Turn], window: Window) -> dict[int, Passage]:
    """chunk_id -> passage still shown in the prompt (so a new turn may reference it by number)."""
    out: dict[int, Passage] = {}
    for i, turn in enumerate(turns):
        if i >= window.context_from and i >= window.turns_from:
            for p in turn.passages:
                out.setdefault(p.chunk_id, p)
    return out


def number_passages(
    history: list[Turn], window: Window, chosen: list[Passage]
) -> tuple[list[Passage], list[int]]:
    """Give this turn's chosen passages their numbers: already-visible ones are referenced by their old
    number, ones shown before but trimmed away are shown again under their old number, the rest get new
    numbers after the highest so far. Returns (passages to show, numbers referenced)."""
    known: dict[int, int] = {}
    highest = 0
    for turn in history:
        for p in turn.passages:
            known.setdefault(p.chunk_id, p.n)
            highest = max(highest, p.n)
    visible = visible_passages(history, window)
    shown: list[Passage] = []
    refs: list[int] = []
    for p in chosen:
        if p.chunk_id in visible:
            p.n = visible[p.chunk_id].n
            refs.append(p.n)
            continue
        if p.chunk_id in known:
            p.n = known[p.chunk_id]
        else:
            highest += 1
            p.n = highest
        shown.append(p)
    return shown, refs


def given(turn: Turn, chosen: list[Passage]) -> list[Passage]:
    """The chosen passages that made it into the prompt (shown or referenced), best first."""
    numbers = {p.n for p in turn.passages} | set(turn.refs)
    return [p for p in chosen if p.n in numbers]


class PromptTooLong(ValueError):
    """Even the current question alone does not fit the context window."""


def fit_window(
    system: Message,
    history: list[Turn],
    question: str,
    chosen: list[Passage],
    window: Window,
    count: Callable[[list[Message]], int],
    max_prompt_tokens: int,
    max_tokens: int,
    trim_to: float,
) -> tuple[list[Message], Window, Turn]:
    """Apply the context-window policy (module docstring) to history + the current question with its
    `chosen` passages (best first). Returns the prompt, the window used and the current turn as shown."""
    budget = max_prompt_tokens - max_tokens
    if budget <= 0:
        raise PromptTooLong(f"max_tokens {max_tokens} leaves no room in a window of {max_prompt_tokens}")
    chosen = list(chosen)
    window = Window(window.context_from, window.turns_from)

    def build() -> tuple[list[Message], Turn]:
        shown, refs = number_passages(history, window, chosen)
        turn = Turn(question, shown, refs)
        return build_messages(system, [*history, turn], window), turn

    messages, turn = build()
    if count(messages) <= budget:
        return messages, window, turn
    target = min(budget, int(max_prompt_tokens * trim_to))
    while True:
        if window.context_from < len(history):
            window.context_from += 1
            if not history[window.context_from - 1].passages:
                continue  # nothing shown there: no change, count again only after a real cut
        elif window.turns_from < len(history):
            window.turns_from += 1
        elif chosen:
            chosen.pop()
            target = budget  # the current turn is only cut as far as it must be
        else:
            raise PromptTooLong(
                f"the question alone needs more than {budget} tokens (window {max_prompt_tokens}, "
                f"answer {max_tokens})"
            )
        messages, turn = build()
        if count(messages) <= target:
            return messages, window, turn
