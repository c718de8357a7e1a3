"""Model loading and the lossless lookahead decode engine (one batched engine for every path).

    from generation import LookaheadGenerator
    print(LookaheadGenerator.load().generate("What is a trie?").text)

Names are imported on first use, so `generation.defaults` (which the service's config reads)
never pulls in torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "DEFAULT_MODEL": "generation.defaults",
    "BatchDecoder": "generation.batch",
    "Chunk": "generation.request",
    "DecodeStats": "generation.request",
    "GenerationResult": "generation.engine",
    "LookaheadConfig": "generation.engine",
    "LookaheadGenerator": "generation.engine",
    "LoadedModel": "generation.models",
    "ModelLoadError": "generation.models",
    "UnsupportedModelError": "generation.models",
    "load_model": "generation.models",
    "SamplingParams": "generation.sampling",
}

__all__ = [
    "DEFAULT_MODEL",
    "BatchDecoder",
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

if TYPE_CHECKING:
    from generation.batch import BatchDecoder
    from generation.defaults import DEFAULT_MODEL
    from generation.engine import GenerationResult, LookaheadConfig, LookaheadGenerator
    from generation.models import LoadedModel, ModelLoadError, UnsupportedModelError, load_model
    from generation.request import Chunk, DecodeStats
    from generation.sampling import SamplingParams


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'generation' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
