"""Each running sequence's streamed text: tokens in, text deltas out.

Why its own place: a token is not always text (a UTF-8 character can span tokens, which the incremental
detokenizer holds until complete), and a stop string can begin in one delta and end in a later one, so
the last ``len(stop) - 1`` characters are held back until they cannot start one; the text a client sees
never contains a stop string, and the concatenated deltas are the final answer.
"""

from __future__ import annotations

import time

from engine.sequence import Event, Sequence
from engine.tokenizer import IncrementalDetokenizer, Tokenizer


class TextStreams:
    def __init__(self, tokenizer: Tokenizer | None, eos_ids: set[int]) -> None:
        self.tokenizer = tokenizer
        self.eos_ids = tokenizer.eos_ids if tokenizer is not None else eos_ids
        self._detok: dict[int, IncrementalDetokenizer] = {}
        self._text: dict[int, tuple[str, int]] = {}  # sequence id -> (text so far, characters sent)

    def push(self, s: Sequence, tok: int) -> str | None:
        """Add a sampled token to ``s``, stream its text; return a finish reason or None."""
        s.tokens.append(tok)
        if s.first_token_time is None:
            s.first_token_time = time.perf_counter()
        p = s.params
        text, sent = self._text.get(s.id, ("", 0))
        eos = tok in self.eos_ids and not p.ignore_eos
        det = None
        if self.tokenizer is not None:
            det = self._detok.setdefault(s.id, IncrementalDetokenizer(self.tokenizer))
            if not eos:
                text += det.push(tok)
        reason = "stop" if eos else ("length" if s.num_completion >= p.max_tokens else None)
        if reason and det is not None:
            text += det.flush()
        if p.stop:
            hits = [i for i in (text.find(x, max(0, sent - len(x))) for x in p.stop) if i >= 0]
            if hits:
                text, reason = text[: min(hits)], "stop"
        hold = 0 if reason or not p.stop else max(len(x) for x in p.stop) - 1
        upto = max(sent, len(text) - hold)
        s.events.put(Event("token", text[sent:upto], [tok]))
        self._text[s.id] = (text, upto)
        return reason

    def close(self, s: Sequence) -> str:
        """Forget ``s``; the text it has not been sent yet."""
        self._detok.pop(s.id, None)
        text, sent = self._text.pop(s.id, ("", 0))
        return text[sent:]
