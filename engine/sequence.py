"""A request in flight: its tokens, KV blocks, progress and event stream."""

from __future__ import annotations

import itertools
import queue
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch

from engine.sampling import SamplingParams

_ids = itertools.count()


class Status(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class Event:
    """What ``Engine.generate`` yields: ``token`` deltas, then one ``finish`` (or ``error``)."""

    type: str
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None


class Sequence:
    """Token ids (prompt + generated), block table and how many tokens have KV (``num_computed``)."""

    def __init__(self, prompt: list[int], params: SamplingParams) -> None:
        self.id = next(_ids)
        self.tokens = list(prompt)
        self.num_prompt = len(prompt)
        self.params = params
        self.status = Status.WAITING
        self.block_table: list[int] = []
        self.block_keys: list[str] = []  # keys of the registered full blocks, in order
        self.num_computed = 0
        self.cached_tokens = 0
        self.cached_from = {"gpu": 0, "cpu": 0, "disk": 0}
        self.reuse: dict[str, Any] = {}
        self.generator: torch.Generator | None = None
        self.events: queue.Queue[Event] = queue.Queue()
        self.cancelled = False
        self.arrival = time.perf_counter()
        self.first_token_time: float | None = None
        self.admitted = False

    @property
    def num_completion(self) -> int:
        return len(self.tokens) - self.num_prompt

    @property
    def remaining(self) -> int:
        """Tokens still without KV; 1 means a plain decode step."""
        return len(self.tokens) - self.num_computed

    def usage(self) -> dict[str, Any]:
        ttft = None if self.first_token_time is None else self.first_token_time - self.arrival
        return {
            "prompt_tokens": self.num_prompt,
            "cached_tokens": self.cached_tokens,
            "cached_from": dict(self.cached_from),
            "completion_tokens": self.num_completion,
            "ttft_ms": None if ttft is None else round(ttft * 1e3, 3),
            "reuse": dict(self.reuse),
        }
