"""Online calibration of a draft's acceptance estimates from the request's own history.

A trie node's score is a product of conditional frequencies with a pseudo-count prior
(`TrieConfig.prior`), so a chain seen once scores 1/2, 1/4, 1/8...: the prior caps how deep a
draft pays. Some requests copy (a translation repeating names, a summary quoting its source)
and accept such chains nearly whole; others accept almost nothing. Scaling the scores cannot
fix a geometric decay, so the calibration is per edge: the conditional `score(node) /
score(parent)` falls into a bin, each bin keeps this request's record of "accepted, given its
parent was" (Beta-smoothed towards the trie's own estimate, older steps fading), and a node's
new score is the product of the calibrated conditionals along its path. A parent still scores
at least its child, so the re-sorted draft stays best-first and every prefix is a tree.
Calibration only reorders and rescores drafted nodes: what is accepted never changes.
"""

from __future__ import annotations

import numpy as np

from trie_store.draft import Draft

# Bin edges on the trie's conditional estimate; 1/2 (a continuation seen once) has its own bin.
EDGES = np.array([0.3, 0.45, 0.55, 0.7, 0.85])
STRENGTH = 2.0  # pseudo-trials at the trie's own estimate: evidence outweighs it after a few
DECAY = 0.95  # per observed step: a request that changes regime is followed within ~20 steps


class Calibrator:
    """One request's record of which drafted edges were accepted, and the rescoring it implies.

    `rescore` a draft, verify a prefix of the result, then `observe` that prefix and the nodes
    accepted; the bins of the last rescored draft are remembered between the two calls.
    """

    def __init__(self, strength: float = STRENGTH, decay: float = DECAY) -> None:
        self.strength = strength
        self.decay = decay
        self.hits = np.zeros(len(EDGES) + 1)
        self.trials = np.zeros(len(EDGES) + 1)
        self._bins = np.zeros(0, dtype=np.int64)  # per node of the last rescored draft

    def rescore(self, draft: Draft) -> Draft:
        """The draft with calibrated scores, best first."""
        conditional = edge_conditionals(draft)
        bins = np.digitize(conditional, EDGES)
        if draft.size == 0 or not self.trials.any():
            self._bins = bins
            return draft
        calibrated = (self.hits[bins] + self.strength * conditional) / (
            self.trials[bins] + self.strength
        )
        calibrated[0] = 1.0
        scores = calibrated.copy()
        parent = draft.parent
        for node in range(1, len(draft)):  # parents come first
            scores[node] *= scores[parent[node]]
        order = np.lexsort((np.arange(len(draft)), draft.depth, -scores))
        order = order[order != 0]  # the root leads: it scores 1 at depth 0
        order = np.concatenate([[0], order])
        rank = np.empty(len(draft), dtype=np.int64)
        rank[order] = np.arange(len(draft))
        new_parent = parent[order].copy()
        new_parent[1:] = rank[new_parent[1:]]
        self._bins = bins[order]
        return Draft(
            draft.tokens[order],
            new_parent.astype(np.int32),
            draft.depth[order],
            scores[order],
        )

    def observe(self, draft: Draft, kept: np.ndarray) -> None:
        """`draft`: the verified prefix of the last rescored draft; `kept`: its accepted nodes
        (the root first). Every verified node whose parent was accepted is one trial."""
        self.hits *= self.decay
        self.trials *= self.decay
        if draft.size == 0:
            return
        accepted = np.zeros(len(draft), dtype=bool)
        accepted[kept] = True
        tried = accepted[draft.parent[1:]]
        bins = self._bins[1 : len(draft)]
        np.add.at(self.trials, bins[tried], 1.0)
        np.add.at(self.hits, bins[tried & accepted[1:]], 1.0)


def edge_conditionals(draft: Draft) -> np.ndarray:
    """`score(node) / score(parent)` per node (1 at the root; 0 under a zero-score parent)."""
    parent_scores = draft.scores[np.maximum(draft.parent, 0)]
    out = np.divide(draft.scores, parent_scores, out=np.zeros(len(draft)), where=parent_scores > 0)
    out[0] = 1.0
    return np.minimum(out, 1.0)
