"""`KB_ENGINE_QUANT` (and `KB_ENGINE_OVERLAP_DECODE`, `KB_ENGINE_DTYPE`) reach the in-process engine, and a
bad policy fails at start with its reason."""

from __future__ import annotations

import pydantic
import pytest
import torch

from services.chat.generators.base import GenerationRequest
from services.chat.generators.engine_local import EngineGenerator
from services.core.config import Settings


def test_bad_policy_is_refused_when_settings_load(tmp_path) -> None:
    with pytest.raises(pydantic.ValidationError, match="int3"):
        Settings(data_dir=tmp_path, engine_quant="int3")
    with pytest.raises(pydantic.ValidationError, match="unknown target"):
        Settings(data_dir=tmp_path, engine_quant="int8,ffn=int4")


@pytest.mark.anyio
async def test_int8_policy_quantizes_the_packaged_model_and_answers(tmp_path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        engine_quant="int8",
        engine_disk_cache=False,
        engine_cpu_cache_gb=0,
        engine_overlap_decode=True,
    )
    gen = EngineGenerator.from_settings(settings)
    try:
        report = gen.engine.quant
        assert report["layers"] == {"int8": 30 * 4}  # qkv, o, gate_up, down in each of SmolLM2's 30 layers
        assert report["weight_bytes"] < report["weight_bytes_before"]
        request = GenerationRequest(
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=8,
            temperature=0,
        )
        generation = await gen.start(request)
        text = "".join([d.text async for d in generation])
        assert "Paris" in text
        assert gen.engine.stats()["steps_ahead"]["launched"] > 0  # greedy steps ran ahead
    finally:
        await gen.aclose()


def test_engine_dtype_reaches_the_engine_and_a_bad_one_is_refused(tmp_path) -> None:
    with pytest.raises(pydantic.ValidationError, match="engine_dtype"):
        Settings(data_dir=tmp_path, engine_dtype="int8")
    settings = Settings(
        data_dir=tmp_path, engine_dtype="float32", engine_disk_cache=False, engine_cpu_cache_gb=0
    )
    gen = EngineGenerator.from_settings(settings)
    try:
        assert gen.engine.dtype == torch.float32 and gen.engine.runner.kv.dtype == torch.float32
    finally:
        gen.engine.close()
