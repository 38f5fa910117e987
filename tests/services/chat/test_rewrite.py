"""Follow-up rewriting: generator when it looks like a follow-up, heuristic fallback otherwise."""

from __future__ import annotations

import asyncio

from services.chat.generators.fake import FakeGenerator
from services.chat.rewrite import heuristic, looks_like_follow_up, rewrite_query

HISTORY = [("How long is the warranty on the Lumo lamp?", "warranty Lumo lamp", "Two years [1].")]


def test_follow_up_detection() -> None:
    assert looks_like_follow_up("And does it cover the switch?")
    assert looks_like_follow_up("What about refunds?")
    assert not looks_like_follow_up("How many days does delivery from the Rotterdam warehouse take?")
    assert (
        heuristic("Does it cover falls?", ["warranty Lumo lamp"]) == "warranty Lumo lamp Does it cover falls?"
    )
    assert heuristic("Does it cover falls?", []) == "Does it cover falls?"


def test_generator_rewrite_and_fallbacks() -> None:
    fake = FakeGenerator()
    r = asyncio.run(rewrite_query("Does it cover falls?", HISTORY, fake, "auto"))
    assert r.method == "generator" and "warranty" in r.query.lower() and "falls" in r.query
    # a self-contained question is not sent to the generator in auto mode
    n = len(fake.requests)
    r = asyncio.run(rewrite_query("How many days does delivery from Rotterdam take?", HISTORY, fake, "auto"))
    assert r.method == "none" and len(fake.requests) == n
    # an implausible answer (nothing in common with the conversation) falls back to the heuristic
    r = asyncio.run(
        rewrite_query("Does it cover falls?", HISTORY, FakeGenerator(reply="zzz qqq"), "generator")
    )
    assert r.method == "heuristic" and r.query == "warranty Lumo lamp Does it cover falls?"
    # a small model echoing the previous answer, or dropping the question's topic, is not a rewrite
    for reply in ("Two years", "The warranty on the Lumo lamp"):
        r = asyncio.run(rewrite_query("And the switch?", HISTORY, FakeGenerator(reply=reply), "generator"))
        assert r.method == "heuristic" and r.query == "warranty Lumo lamp And the switch?"
    good = FakeGenerator(reply="Lumo lamp switch warranty")
    r = asyncio.run(rewrite_query("And the switch?", HISTORY, good, "generator"))
    assert r.method == "generator"
    # a generator that is busy falls back too
    r = asyncio.run(rewrite_query("Does it cover falls?", HISTORY, FakeGenerator(max_running=0), "generator"))
    assert r.method == "heuristic"
