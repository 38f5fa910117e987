"""Chooses the generator backend from `KB_GENERATOR` (engine | remote | fake)."""

from __future__ import annotations

from typing import Any

from services.chat.generators.base import Generator


def build_generator(settings: Any) -> Generator:
    kind = settings.generator
    if kind == "engine":
        from services.chat.generators.engine_local import EngineGenerator

        return EngineGenerator.from_settings(settings)
    if kind == "remote":
        from services.chat.generators.openai_remote import OpenAIRemoteGenerator

        return OpenAIRemoteGenerator.from_settings(settings)
    if kind == "fake":
        from services.chat.generators.fake import FakeGenerator

        return FakeGenerator()
    raise ValueError(f"unknown KB_GENERATOR {kind!r}: use engine, remote or fake")
