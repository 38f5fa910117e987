from __future__ import annotations

import pytest

from engine.tokenizer import IncrementalDetokenizer, Tokenizer


@pytest.fixture(scope="module")
def tok(model_dir):
    return Tokenizer(model_dir)


def test_chat_template_from_model_folder(tok):
    ids = tok.apply_chat_template([{"role": "user", "content": "Hello there"}])
    text = tok.hf.decode(ids)
    assert "<|im_start|>user\nHello there<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    assert tok.hf.convert_tokens_to_ids("<|im_end|>") in tok.eos_ids


def test_streaming_keeps_multibyte_characters_whole(tok):
    text = "Zaragoza: ñandú, naïve, 世界你好, emoji 🎉👩‍💻 and Ελληνικά."
    ids = tok.encode(text)
    det = IncrementalDetokenizer(tok)
    deltas = [det.push(t) for t in ids] + [det.flush()]
    assert "".join(deltas) == tok.decode(ids) == text
    assert all("\ufffd" not in d for d in deltas)
    # at least one token carried an incomplete character (so the hold-back really ran)
    assert any(d == "" for d in deltas[:-1])
