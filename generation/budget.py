"""How many draft nodes one step should verify: the size with the best expected tokens per ms.

A step verifying the first `k` nodes of a best-first draft yields `1 + E[accepted | k]` tokens
and costs `t(k + 1)`. The plain step (k = 0) yields one token for `t(1)`, so a draft is cut to
the `k` that maximises the rate, and to nothing when no `k` beats the plain step; lookahead is
then never slower than plain decoding by the cost model's own measure (SmartSpec's goodput).
"""

from __future__ import annotations

import numpy as np

from generation.step_cost import StepCostCurve
from trie_store.draft import Draft


def choose_draft_size(draft: Draft, curve: StepCostCurve, max_size: int) -> int:
    """The `k` in [0, min(max_size, draft.size)] maximising (1 + out[k]) / t(k + 1), where
    `out = draft.expected_accepted()`; ties go to the smaller `k` (0 unless a draft pays)."""
    if max_size < 0:
        raise ValueError(f"max_size must be >= 0, got {max_size}")
    k_max = min(max_size, draft.size)
    expected = draft.expected_accepted()[: k_max + 1]
    rate = (1.0 + expected) / curve.times(np.arange(1, k_max + 2))
    return int(np.argmax(rate))  # the first maximum
