"""Merging two drafts of the same root (the request and the global channel) into one tree."""

from __future__ import annotations

import numpy as np

from trie_store.config import SCORE_UNIT, as_int
from trie_store.draft import Draft

# The request channel dominates: its n-grams come from this very request's passages, prompt and
# answer. A node's merged score is REQUEST_WEIGHT * request score + (1 - REQUEST_WEIGHT) * global
# score (0 where a draft lacks the path), so a global-only branch outranks a request branch only
# when it is 9 times more likely by its own channel's estimate.
REQUEST_WEIGHT = 0.9


def merge_drafts(
    primary: Draft, secondary: Draft, max_nodes: int, primary_weight: float = REQUEST_WEIGHT
) -> Draft:
    """One best-first tree holding every path of both drafts once, cut to `max_nodes` nodes.

    Scores mix as `primary_weight * p + (1 - primary_weight) * s`. When one draft is empty (its
    channel had no match) the other is returned as it is: an absent channel is no evidence.
    """
    budget = as_int(max_nodes, "max_nodes")
    if not 0.0 <= primary_weight <= 1.0:
        raise ValueError(f"primary_weight must be in [0, 1], got {primary_weight}")
    root = int(primary.tokens[0])
    if int(secondary.tokens[0]) != root:
        raise ValueError(f"drafts have different roots ({root} and {int(secondary.tokens[0])})")
    if secondary.size == 0:
        return primary.truncate(budget)
    if primary.size == 0:
        return secondary.truncate(budget)
    # The primary's nodes are unique already: take them whole, then walk the secondary's in.
    tokens = primary.tokens.tolist()
    parents = primary.parent.tolist()
    depths = primary.depth.tolist()
    scores = (primary.scores * primary_weight).tolist()
    keys = (primary.parent[1:].astype(np.int64) << 32 | primary.tokens[1:]).tolist()
    index = dict(zip(keys, range(1, len(tokens)), strict=True))  # (parent, token) -> node
    weight = 1.0 - primary_weight
    where = [0]  # secondary node -> merged node
    for token, up, score in zip(
        secondary.tokens[1:].tolist(),
        secondary.parent[1:].tolist(),
        secondary.scores[1:].tolist(),
        strict=True,
    ):
        parent = where[up]
        node = index.get(parent << 32 | token)
        if node is None:
            node = index[parent << 32 | token] = len(tokens)
            tokens.append(token)
            parents.append(parent)
            depths.append(depths[parent] + 1)
            scores.append(weight * score)
        else:
            scores[node] += weight * score
        where.append(node)
    # Best first; a parent scores at least as much as its child and is shallower, so it comes
    # first and any prefix of the order is a tree.
    ranked = sorted(
        (-int(score * SCORE_UNIT), depth, node)
        for node, (score, depth) in enumerate(zip(scores, depths, strict=True))
        if node
    )[:budget]
    rank = {0: 0}
    for i, (_, _, node) in enumerate(ranked, start=1):
        rank[node] = i
    return Draft(
        tokens=np.array([root] + [tokens[n] for _, _, n in ranked], dtype=np.int64),
        parent=np.array([-1] + [rank[parents[n]] for _, _, n in ranked], dtype=np.int32),
        depth=np.array([0] + [d for _, d, _ in ranked], dtype=np.int32),
        scores=np.array([SCORE_UNIT] + [-u for u, _, _ in ranked], dtype=np.float64) / SCORE_UNIT,
    )
