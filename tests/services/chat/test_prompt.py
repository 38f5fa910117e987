"""The prompt builder: append-only history, global numbering, the context-window policy."""

from __future__ import annotations

from services.chat.generators.fake import FakeGenerator
from services.chat.prompt import (
    Passage,
    PromptTooLong,
    Turn,
    Window,
    build_messages,
    fit_window,
    number_passages,
    system_message,
)

SYSTEM = system_message(None, "Be helpful.")
count = FakeGenerator().count_tokens


def passage(chunk_id: int, words: int = 20) -> Passage:
    return Passage(0, chunk_id, chunk_id, f"doc{chunk_id}", None, chunk_id, [], " ".join(["word"] * words))


def test_new_turn_appends_and_reuses_numbers() -> None:
    shown, refs = number_passages([], Window(), [passage(1), passage(2)])
    t1 = Turn("q1", shown, refs, answer="a1 [1]")
    assert [p.n for p in shown] == [1, 2] and refs == []
    shown2, refs2 = number_passages([t1], Window(), [passage(2), passage(3)])
    assert [p.n for p in shown2] == [3] and refs2 == [2]
    t2 = Turn("q2", shown2, refs2)
    before = build_messages(SYSTEM, [t1, Turn("q2")])[:-1]
    after = build_messages(SYSTEM, [t1, t2])
    assert after[: len(before)] == before  # earlier turns are byte-identical
    assert "[3] (doc3, page 3)" in after[-1]["content"] and "[2]" in after[-1]["content"]
    assert "[1]" not in after[-1]["content"].split("Question:")[0].replace("[1", "")  # not repeated


def test_window_drops_oldest_context_first_then_turns() -> None:
    history = []
    for i in range(4):
        shown, refs = number_passages(history, Window(), [passage(10 + i, 60)])
        history.append(Turn(f"question {i}", shown, refs, answer=f"answer {i}"))
    full = count(build_messages(SYSTEM, history))
    messages, window, turn = fit_window(
        SYSTEM, history, "q5", [passage(99, 60)], Window(), count, full, 20, 0.6
    )
    assert window.context_from >= 1 and window.turns_from == 0
    assert count(messages) <= int(full * 0.6)
    assert "question 0" in messages[1]["content"] and "Sources" not in messages[1]["content"]
    assert turn.passages[0].chunk_id == 99
    # the next turn keeps the same cut: its prompt starts with this one (append-only again)
    nxt = Turn("q5", turn.passages, turn.refs, answer="a5")
    messages2, window2, _ = fit_window(SYSTEM, [*history, nxt], "q6", [], window, count, full, 20, 0.6)
    assert window2 == window and messages2[: len(messages)] == [*messages[:-1], messages[-1]]
    # a tiny window drops whole turns, then fails clearly when even the question does not fit
    messages3, window3, _ = fit_window(SYSTEM, history, "q", [], Window(), count, 60, 10, 0.6)
    assert window3.turns_from > 0
    try:
        fit_window(SYSTEM, history, "q " * 200, [], Window(), count, 60, 10, 0.6)
    except PromptTooLong as exc:
        assert "question alone" in str(exc)
    else:
        raise AssertionError("expected PromptTooLong")


def test_trimmed_passage_is_shown_again_under_its_number() -> None:
    shown, _ = number_passages([], Window(), [passage(1)])
    t1 = Turn("q1", shown, [], answer="a1")
    shown2, refs2 = number_passages([t1], Window(context_from=1), [passage(1)])
    assert refs2 == [] and [p.n for p in shown2] == [1]
