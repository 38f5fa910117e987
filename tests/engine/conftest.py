"""Shared, session-scoped models: the packaged SmolLM2 is converted once and loaded once per run."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if not torch.cuda.is_available():  # Triton kernels (if triton is installed) run under its CPU interpreter;
    os.environ.setdefault("TRITON_INTERPRET", "1")  # set before anything imports triton (transformers does)

from engine.config import EngineConfig, default_model  # noqa: E402
from engine.llm_engine import Engine  # noqa: E402
from engine.loader import resolve_model_dir  # noqa: E402

torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def model_dir():
    return resolve_model_dir(default_model())


@pytest.fixture(scope="session")
def hf_model(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def engine(model_dir, tmp_path_factory):
    cfg = EngineConfig(
        model=str(model_dir),
        device="cpu",
        dtype="float32",  # compared token by token with transformers in fp32
        num_kv_blocks=768,
        cpu_cache_gb=0.05,
        disk_dir=str(tmp_path_factory.mktemp("kv_disk")),
    )
    eng = Engine.from_config(cfg)
    yield eng
    eng.close()


def hf_greedy(hf_model, ids: list[int], n: int) -> list[int]:
    """Reference: transformers generate, greedy, on the same weights."""
    with torch.inference_mode():
        out = hf_model.generate(
            torch.tensor([ids]), max_new_tokens=n, do_sample=False, attention_mask=torch.ones(1, len(ids))
        )
    return out[0, len(ids) :].tolist()
