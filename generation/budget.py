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

In a ragged pass (docs/batching.md, "Ragged verify") a row pays for the nodes it verifies, so
each sequence gets its own count: a pass of `N` tokens over `b` rows costs about `t(b, N / b)`,
and for a given `N` the best split is the `N - b` nodes with the largest acceptance
probabilities (a best-first draft's are non-increasing, so taking the largest ones overall
takes a prefix of every draft). The choice is the `N` with the best goodput.
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


def choose_nodes(
    expected: Sequence[np.ndarray],
    times: Callable[[np.ndarray], np.ndarray],
    floors: Sequence[int] | None = None,
) -> list[int]:
    """Nodes per sequence `n_i` (its root included, `floors[i] <= n_i <= len(expected[i])`)
    maximising `sum_i (1 + expected[i][n_i - 1]) / times(N / b)` with `N = sum_i n_i`, where
    `expected[i][k]` is concave in k (a best-first draft's); ties go to the smaller `N`."""
    b = len(expected)
    floors = (
        [1] * b
        if floors is None
        else [max(1, min(f, len(e))) for f, e in zip(floors, expected, strict=True)]
    )
    base = sum(1.0 + e[f - 1] for e, f in zip(expected, floors, strict=True))
    gains, owner = [], []
    for i, (e, f) in enumerate(zip(expected, floors, strict=True)):
        gains.append(np.diff(e[f - 1 :]))
        owner.append(np.full(len(e) - f, i))
    gains_all, owner_all = np.concatenate(gains), np.concatenate(owner)
    order = np.argsort(-gains_all, kind="stable")  # within a sequence: its own node order
    tokens = base + np.concatenate([[0.0], np.cumsum(gains_all[order])])
    total = sum(floors) + np.arange(len(tokens))
    best = int(np.argmax(tokens / times(total / b)))
    return (np.asarray(floors) + np.bincount(owner_all[order[:best]], minlength=b)).tolist()
