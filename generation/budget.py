"""How many draft nodes a step should verify: the choice with the best expected tokens per ms.

A step verifying the first `k` nodes of a best-first draft yields `1 + E[accepted | k]` tokens
and costs `t(k + 1)`. The plain step (k = 0) yields one token for `t(1)`, so a draft is cut to
the `k` that maximises the rate, and to nothing when no `k` beats the plain step; lookahead is
then never slower than plain decoding by the cost model's own measure (SmartSpec's goodput).

In a batch every sequence's tree is padded to the longest, so a step costs `t(b, q)` for `q`
rows per sequence whatever each one verifies; for a given `q` each sequence takes the best
`min(q - 1, its draft)` nodes, and the joint choice is the `q` that maximises the batch's
goodput `sum_i (1 + E_i[accepted | min(q - 1, k_i)]) / t(b, q)`. One request alone is the
batch of one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def choose_rows(
    expected: Sequence[np.ndarray],
    times: Callable[[np.ndarray], np.ndarray],
    floor: int = 1,
) -> int:
    """The rows per sequence `q >= floor` maximising `sum_i (1 + expected[i][min(q - 1, k_i)])
    / times(q)`, where `expected[i][k]` is sequence i's expected accepted tokens when it
    verifies k nodes (k_i = len - 1 at most); ties go to the smaller `q`."""
    top = max(floor, max(len(e) for e in expected))
    qs = np.arange(floor, top + 1)
    tokens = sum(1.0 + e[np.minimum(qs - 1, len(e) - 1)] for e in expected)
    return int(qs[np.argmax(tokens / times(qs))])  # the first maximum
