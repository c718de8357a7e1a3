"""Validation of token-id input: every public entry point goes through here first."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trie_store.config import TrieConfig, as_int

MAX_TOKEN_ID = 2**31 - 1  # vocabularies are far smaller; keeps (token, node) keys in 63 bits


def as_tokens(values: object, name: str = "tokens") -> np.ndarray:
    """A 1-D int64 array of valid token ids (possibly empty), or a ValueError saying why not."""
    arr = _as_array(values, name)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of token ids, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integer token ids, got dtype {arr.dtype}")
    low, high = int(arr.min()), int(arr.max())
    if low < 0:
        raise ValueError(f"{name} holds a negative token id ({low})")
    if high > MAX_TOKEN_ID:
        raise ValueError(f"{name} holds a token id beyond {MAX_TOKEN_ID} ({high})")
    return arr.astype(np.int64, copy=False)


def _as_array(values: object, name: str) -> np.ndarray:
    try:
        return np.asarray(values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a 1-D sequence of token ids: {err}") from None


@dataclass(frozen=True)
class DraftQuery:
    """A checked draft request: the root, the node budget, and the context suffixes to try."""

    root: int
    budget: int
    suffix: list[int]  # the last `lengths.start` context tokens
    lengths: range  # context lengths to match, longest first; empty when there is no budget

    def context(self, k: int) -> list[int]:
        return self.suffix[len(self.suffix) - k :]


def draft_query(context: object, max_nodes: object, config: TrieConfig) -> DraftQuery:
    """Check a draft call's arguments; the context must hold at least the root token.

    Only the tokens a draft reads (the last `max_context`) are range-checked, so a step costs
    the same however long the context grows; the rest of the context is the caller's business.
    """
    ctx = _as_array(context, "context")
    ctx = as_tokens(ctx[-config.max_context :] if ctx.ndim == 1 else ctx, "context")
    if ctx.size == 0:
        raise ValueError("context must hold at least one token (the root of the draft)")
    budget = as_int(max_nodes, "max_nodes")
    lengths = config.context_lengths(len(ctx)) if budget else range(0)
    suffix = ctx[len(ctx) - lengths.start :].tolist() if lengths else []
    return DraftQuery(int(ctx[-1]), budget, suffix, lengths)
