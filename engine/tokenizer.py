"""Tokenizer, chat template and UTF-8-correct streaming detokenisation.

The tokenizer and its chat template come from the model folder (for GGUF, the converted folder holds
what the GGUF carried), so prompts are rendered exactly as the model was trained to see them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

Message = dict[str, Any]


class Tokenizer:
    """Thin wrapper over the folder's HF tokenizer; knows the chat template and stop ids."""

    def __init__(self, model_dir: str | Path) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoTokenizer

        self.hf = AutoTokenizer.from_pretrained(str(model_dir))
        self.eos_ids: set[int] = set()
        if self.hf.eos_token_id is not None:
            self.eos_ids.add(int(self.hf.eos_token_id))
        for name in ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>"):
            tid = self.hf.convert_tokens_to_ids(name)
            if isinstance(tid, int) and tid != self.hf.unk_token_id and tid >= 0:
                self.eos_ids.add(tid)

    def encode(self, text: str) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def apply_chat_template(self, messages: list[Message], add_generation_prompt: bool = True):
        """Render chat messages to token ids with the model's own template."""
        out = self.hf.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=True
        )
        if isinstance(out, dict) or hasattr(out, "input_ids"):
            out = out["input_ids"]
        return list(out)


class IncrementalDetokenizer:
    """Emit text deltas token by token without splitting multi-byte UTF-8 characters.

    Decodes a small window (``prefix``..end) each time and holds back output that ends in U+FFFD
    (an incomplete byte sequence), so the deltas always concatenate to ``decode(all ids)``.
    """

    def __init__(self, tok: Tokenizer) -> None:
        self.tok = tok
        self.ids: list[int] = []
        self.prefix = 0
        self.read = 0

    def push(self, tid: int) -> str:
        self.ids.append(tid)
        prev = self.tok.decode(self.ids[self.prefix : self.read])
        new = self.tok.decode(self.ids[self.prefix :])
        if len(new) > len(prev) and not new.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return new[len(prev) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back at the end (e.g. a truncated character)."""
        prev = self.tok.decode(self.ids[self.prefix : self.read])
        new = self.tok.decode(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return new[len(prev) :]
