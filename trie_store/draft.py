"""The draft tree handed from the trie store to the verifier, flattened as arrays.

Node 0 is the root: the last accepted token, which is not yet in the KV cache. Nodes are
ordered best first: every parent comes before its children and `scores[1:]` never increases,
so the first `k` nodes of a draft are always a valid (ancestor-closed) smaller draft. That
lets the generation side cut a draft to the size its cost model pays for with a slice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True, eq=False)
class Draft:
    """A token tree in verification order.

    `scores[i]` estimates the probability that node `i` is accepted (the product of the
    conditional n-gram frequencies along its path, smoothed: see `TrieConfig.prior`);
    `scores[0] == 1`. The expected number
    of accepted draft tokens of the first `k` nodes is then `scores[1:k + 1].sum()`.
    """

    tokens: np.ndarray  # int64 [n]
    parent: np.ndarray  # int32 [n], parent[0] == -1, parent[i] < i
    depth: np.ndarray  # int32 [n], depth[0] == 0, depth[i] == depth[parent[i]] + 1
    scores: np.ndarray  # float64 [n], scores[0] == 1, scores[1:] non-increasing

    @classmethod
    def root_only(cls, token: int) -> Draft:
        """The empty draft: verifying it is an ordinary one-token decoding step."""
        return cls(
            tokens=np.array([token], dtype=np.int64),
            parent=np.array([-1], dtype=np.int32),
            depth=np.array([0], dtype=np.int32),
            scores=np.array([1.0], dtype=np.float64),
        )

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Draft):
            return NotImplemented
        return all(
            np.array_equal(getattr(self, f), getattr(other, f))
            for f in ("tokens", "parent", "depth", "scores")
        )

    __hash__ = None  # type: ignore[assignment]  # arrays: mutable, so unhashable

    @property
    def size(self) -> int:
        """Number of drafted nodes (the root excluded)."""
        return len(self) - 1

    def truncate(self, size: int) -> Draft:
        """The best `size` drafted nodes (plus the root)."""
        if size < 0:
            raise ValueError(f"draft size must be >= 0, got {size}")
        n = min(size, self.size) + 1
        return Draft(self.tokens[:n], self.parent[:n], self.depth[:n], self.scores[:n])

    def expected_accepted(self) -> np.ndarray:
        """`out[k]` = expected accepted draft tokens when the first `k` nodes are verified."""
        out = np.zeros(len(self), dtype=np.float64)
        np.cumsum(self.scores[1:], out=out[1:])
        return out

    def validate(self) -> None:
        """Raise ValueError unless the arrays describe a best-first tree rooted at node 0."""
        n = len(self)
        if n == 0:
            raise ValueError("a draft has at least its root")
        for name in ("parent", "depth", "scores"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"draft.{name} has shape {getattr(self, name).shape}, want ({n},)")
        if self.parent[0] != -1 or self.depth[0] != 0:
            raise ValueError("node 0 must be the root (parent -1, depth 0)")
        idx = np.arange(1, n)
        if np.any(self.parent[1:] < 0) or np.any(self.parent[1:] >= idx):
            raise ValueError("every parent must come before its child")
        if np.any(self.depth[1:] != self.depth[self.parent[1:]] + 1):
            raise ValueError("depth must be the parent's depth + 1")
        if np.any(self.tokens < 0):
            raise ValueError("token ids must be non-negative")
        if self.scores[0] != 1.0 or not np.all((self.scores >= 0) & (self.scores <= 1)):
            raise ValueError("scores must lie in [0, 1], the root's being 1")
        if n > 2 and np.any(np.diff(self.scores[1:]) > 1e-12):
            raise ValueError("scores must be non-increasing after the root (best first)")
        siblings = np.stack([self.parent[1:].astype(np.int64), self.tokens[1:]])
        if np.unique(siblings, axis=1).shape[1] != n - 1:
            raise ValueError("two children of one node carry the same token (a duplicate path)")


def ancestor_mask(draft: Draft) -> np.ndarray:
    """Boolean `[n, n]`: `mask[i, j]` is True iff node `j` is node `i` or one of its ancestors.

    Row by row in flattened order: a node sees what its parent sees, plus itself.
    """
    n = len(draft)
    mask = np.zeros((n, n), dtype=bool)
    mask[0, 0] = True
    for i in range(1, n):
        mask[i] = mask[draft.parent[i]]
        mask[i, i] = True
    return mask


class Drafter(Protocol):
    """What the decode loop asks of a draft source for one request."""

    def draft(self, context: np.ndarray, max_nodes: int) -> Draft:
        """A best-first tree continuing `context` (its last token is the root), at most `max_nodes`
        drafted nodes; `Draft.root_only(context[-1])` when nothing matches."""
        ...

    def observe(self, tokens: np.ndarray) -> None:
        """Append newly accepted output tokens, so later drafts can copy from the answer itself.
        Only the new n-gram windows are inserted."""
        ...
