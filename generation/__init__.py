"""Model loading and the lossless lookahead decode loop."""

from generation.decode import Chunk, DecodeStats
from generation.engine import GenerationResult, LookaheadConfig, LookaheadGenerator
from generation.models import (
    DEFAULT_MODEL,
    LoadedModel,
    ModelLoadError,
    UnsupportedModelError,
    load_model,
)
from generation.sampling import SamplingParams

__all__ = [
    "DEFAULT_MODEL",
    "Chunk",
    "DecodeStats",
    "GenerationResult",
    "LoadedModel",
    "LookaheadConfig",
    "LookaheadGenerator",
    "ModelLoadError",
    "SamplingParams",
    "UnsupportedModelError",
    "load_model",
]
