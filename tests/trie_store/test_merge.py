"""merge_drafts: one tree from the request and the global channel."""

import numpy as np
import pytest

from trie_store import REQUEST_WEIGHT, Draft, merge_drafts


def make(tokens, parent, scores) -> Draft:
    return Draft(
        tokens=np.array(tokens, dtype=np.int64),
        parent=np.array(parent, dtype=np.int32),
        depth=np.array(_depths(parent), dtype=np.int32),
        scores=np.array(scores, dtype=np.float64),
    )


def _depths(parent):
    depth = [0]
    for p in parent[1:]:
        depth.append(depth[p] + 1)
    return depth


REQUEST = make([1, 2, 3, 4], [-1, 0, 1, 0], [1.0, 0.8, 0.4, 0.2])  # 1 -> 2 -> 3, 1 -> 4
GLOBAL = make([1, 2, 5, 6], [-1, 0, 1, 0], [1.0, 0.5, 0.5, 0.5])  # 1 -> 2 -> 5, 1 -> 6


def test_shared_paths_appear_once_with_mixed_scores():
    merged = merge_drafts(REQUEST, GLOBAL, 10, primary_weight=0.5)
    merged.validate()
    paths = {}
    for i in range(1, len(merged)):
        paths[i] = (*paths.get(int(merged.parent[i]), ()), int(merged.tokens[i]))
    assert sorted(paths.values()) == [(2,), (2, 3), (2, 5), (4,), (6,)]
    score = dict(zip(paths.values(), merged.scores[1:].tolist(), strict=True))
    assert score[(2,)] == pytest.approx(0.5 * 0.8 + 0.5 * 0.5)
    assert score[(2, 3)] == pytest.approx(0.2)
    assert score[(2, 5)] == pytest.approx(0.25)
    assert merged.tokens[1] == 2  # the best node first


def test_request_dominates_by_default():
    merged = merge_drafts(REQUEST, GLOBAL, 10)
    merged.validate()
    assert REQUEST_WEIGHT == 0.9
    # the request's own 1 -> 4 (0.2 * 0.9) beats the global-only 1 -> 6 (0.5 * 0.1)
    order = merged.tokens[1:].tolist()
    assert order.index(4) < order.index(6)


def test_budget_cuts_best_first_and_an_empty_side_passes_through():
    merged = merge_drafts(REQUEST, GLOBAL, 2)
    merged.validate()
    assert merged.tokens.tolist() == [1, 2, 3]
    assert merge_drafts(REQUEST, Draft.root_only(1), 2) == REQUEST.truncate(2)
    assert merge_drafts(Draft.root_only(1), GLOBAL, 10) == GLOBAL
    assert merge_drafts(REQUEST, GLOBAL, 0) == Draft.root_only(1)


def test_bad_merges_raise():
    with pytest.raises(ValueError, match="different roots"):
        merge_drafts(REQUEST, Draft.root_only(9), 4)
    with pytest.raises(ValueError, match="primary_weight"):
        merge_drafts(REQUEST, GLOBAL, 4, primary_weight=2.0)
    with pytest.raises(ValueError, match="max_nodes"):
        merge_drafts(REQUEST, GLOBAL, -1)
