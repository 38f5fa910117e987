"""Generator backends behind one async interface (see `base.Generator`)."""

from services.chat.generators.base import (
    BadGenerationRequest,
    Delta,
    Generation,
    GenerationRequest,
    Generator,
    GeneratorBusy,
    GeneratorError,
    GeneratorTimeout,
    Usage,
)

__all__ = [
    "BadGenerationRequest",
    "Delta",
    "Generation",
    "GenerationRequest",
    "Generator",
    "GeneratorBusy",
    "GeneratorError",
    "GeneratorTimeout",
    "Usage",
]
