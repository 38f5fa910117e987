"""A finished answer's last token fed while the engine is idle (`engine.answer_feed`), on the packaged
SmolLM2 (CPU): the next turn then computes only its own tokens and gives recompute's tokens; a request
that comes first, a forgotten conversation and a failing step each leave the engine as before, with no
blocks held."""

from __future__ import annotations

import logging
import time

from engine.sampling import SamplingParams
from tests.engine.conftest import hf_greedy
from tests.engine.test_llm_engine import CHAT, _small_engine, _turn_with_partial_tail


def _wait_for(pred, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


def _feed(eng) -> dict:
    return eng.stats()["answer_feed"]


def _next_turn(eng, ids1: list[int], answer: list[int]) -> list[int]:
    return ids1 + answer + eng.tokenizer.encode("Thanks. And the return label?")


def test_after_a_quiet_spell_the_next_turn_computes_only_its_own_tokens(engine, hf_model):
    """The default engine feeds the answer's last token once idle; turn 2's cached tokens then cover
    the whole of turn 1, answer included, and its tokens are recompute's."""
    fed = _feed(engine)["fed"]
    ids1, answer = _turn_with_partial_tail(engine, "Where do I find my invoice?")
    _wait_for(lambda: _feed(engine)["fed"] == fed + 1)
    ids2 = _next_turn(engine, ids1, answer)
    r2 = engine.complete(ids2, SamplingParams(max_tokens=12))
    assert r2.usage["cached_tokens"] == len(ids1) + len(answer)
    assert r2.usage["cached_from"]["gpu"] == r2.usage["cached_tokens"]
    assert r2.token_ids == hf_greedy(hf_model, ids2, 12)
    _wait_for(lambda: _feed(engine)["pending"] == 0)
    assert engine.stats()["referenced_blocks"] == 0


def test_a_request_that_comes_first_discards_the_feed(model_dir):
    """Within the quiet spell the next turn finds the engine as before: it computes the last token."""
    with _small_engine(model_dir, feed_idle_s=30.0) as eng:
        ids1, answer = _turn_with_partial_tail(eng, "Can I pay on delivery?")
        assert _feed(eng)["pending"] == 1
        r2 = eng.complete(_next_turn(eng, ids1, answer), SamplingParams(max_tokens=4))
        assert r2.usage["cached_tokens"] == len(ids1) + len(answer) - 1
        st = eng.stats()
        assert st["answer_feed"]["fed"] == 0 and st["answer_feed"]["dropped"] >= 1
        assert st["referenced_blocks"] == 0


def test_a_step_launched_ahead_already_computed_a_stopped_answers_last_token(model_dir, hf_model):
    """A greedy answer stopped by a stop string while decode ran ahead (`engine.lookahead`): that step
    computed the last token, so nothing is pending and the next turn, even at once, reuses it all."""
    with _small_engine(model_dir, overlap_decode=True, feed_idle_s=30.0) as eng:
        ids1 = eng.encode_prompt(CHAT)
        r1 = eng.complete(ids1, SamplingParams(max_tokens=40, stop=["."]))
        assert r1.finish_reason == "stop" and len(r1.token_ids) > 1
        st = eng.stats()["answer_feed"]
        assert st["from_ahead"] == 1 and st["pending"] == 0
        ids2 = _next_turn(eng, ids1, r1.token_ids)
        r2 = eng.complete(ids2, SamplingParams(max_tokens=8))
        assert r2.usage["cached_tokens"] == len(ids1) + len(r1.token_ids)
        assert r2.token_ids == hf_greedy(hf_model, ids2, 8)


def test_a_forgotten_conversation_is_not_fed(model_dir):
    """A conversation deleted before the quiet spell ends has no KV left to extend: its feed is dropped,
    not restored or recomputed, and nothing of it comes back."""
    with _small_engine(model_dir, feed_idle_s=0.3) as eng:
        ids1, answer = _turn_with_partial_tail(eng, "How do I close my account?")
        eng.forget(ids1 + answer)
        _wait_for(lambda: _feed(eng)["pending"] == 0)
        st = eng.stats()
        assert st["answer_feed"]["fed"] == 0 and st["answer_feed"]["dropped"] == 1
        assert st["referenced_blocks"] == 0 and not eng.bm.tails
        r = eng.complete(ids1 + answer, SamplingParams(max_tokens=1))
        assert r.usage["cached_tokens"] == 0


def test_a_failing_feed_step_keeps_the_rows_computed_before(model_dir, hf_model, caplog):
    """The feed's step raises: logged, its blocks back in the pool with the rows they held, and the next
    turn computes the last token itself and gives recompute's tokens."""

    class Broken:
        def run(self, batch):
            raise RuntimeError("device lost")

    with _small_engine(model_dir, feed_idle_s=0.01) as eng:
        eng.feed.runner = Broken()
        with caplog.at_level(logging.ERROR, logger="engine.step_loop"):
            ids1, answer = _turn_with_partial_tail(eng, "Is there a warranty?")
            _wait_for(lambda: "last tokens failed" in caplog.text)
        assert _feed(eng)["fed"] == 0
        assert eng.stats()["referenced_blocks"] == 0
        ids2 = _next_turn(eng, ids1, answer)
        r2 = eng.complete(ids2, SamplingParams(max_tokens=8))
        assert r2.usage["cached_tokens"] == len(ids1) + len(answer) - 1
        assert r2.token_ids == hf_greedy(hf_model, ids2, 8)
