"""Settings shared by the request and the global trie."""

from __future__ import annotations

import math
import numbers
import operator
from dataclasses import dataclass


def is_int(value: object) -> bool:
    """An integer (numpy's too), but not a bool: what every integer setting accepts."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def as_int(value: object, name: str, minimum: int = 0) -> int:
    """An integer setting or budget, as a plain int, with a clear error instead of a deep one."""
    if not is_int(value):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    number = operator.index(value)
    if number < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {number}")
    return number


MAX_CONTEXT = 64  # context lengths are tagged into index keys; longer ones never pay anyway


@dataclass(frozen=True)
class TrieConfig:
    """How n-grams are stored and matched.

    branch_length: every position `i` of a source stores the n-gram `tokens[i : i + branch_length
        + 1]`. A draft matched on `k` context tokens is at most `branch_length + 1 - k` deep, so
        `branch_length = 0` stores unigrams only and every draft is empty.
    max_context: the longest context suffix tried (last 1..max_context tokens, longest first).
    prior: pseudo-count of an unseen continuation at every node. A node's score is
        `score(parent) * count(node) / (count(parent) + prior)`: a continuation seen once scores
        1/2 per step, one seen c times out of c scores c/(c + 1), so scores stay honest
        probabilities that fall with depth. `prior = 0` gives raw conditional frequencies.
        Measured on 9 dev prompts (6 RAG, 3 summarisation; 128 greedy tokens of the default
        model; request channel, D = 16): prior 1 predicts 1.05 accepted tokens a step against
        1.05 measured (0.5: 1.58, 0.25: 2.30), and per score bin within a few points.
    """

    branch_length: int = 12
    max_context: int = 3
    prior: float = 1.0

    def __post_init__(self) -> None:
        as_int(self.branch_length, "branch_length")
        if as_int(self.max_context, "max_context", minimum=1) > MAX_CONTEXT:
            raise ValueError(f"max_context must be <= {MAX_CONTEXT}, got {self.max_context}")
        if isinstance(self.prior, bool) or not isinstance(self.prior, (int, float)):
            raise ValueError(f"prior must be a number, got {self.prior!r}")
        if not math.isfinite(self.prior) or self.prior < 0:
            raise ValueError(f"prior must be finite and >= 0, got {self.prior}")

    def context_lengths(self, available: int) -> range:
        """Context suffix lengths to try, longest first: each must leave room for a draft token."""
        return range(min(self.max_context, self.branch_length, available), 0, -1)


# Scores are ranked as integers in units of 2**-40 (floored): float noise then never reorders
# what are ties in exact arithmetic (ties go to the shallower, then the more recent node), and
# a drafted score, `units / SCORE_UNIT`, is exact, so a draft's scores never increase.
SCORE_UNIT = 1 << 40
