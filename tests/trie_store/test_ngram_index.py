"""NgramIndex (the request channel): hand-built token lists (vLLM test_ngram style)."""

import numpy as np
import pytest
from triehelpers import draft_paths

from trie_store import Draft, NgramIndex, TrieConfig, ancestor_mask


def test_draft_is_the_subtree_below_the_matched_context():
    index = NgramIndex([[1, 2, 3, 4, 1, 2, 3, 5, 1, 2, 6]], TrieConfig(prior=0.0))
    draft = index.draft([9, 1, 2], 10)
    draft.validate()
    # "1 2" is followed by "3 4 1 2 ...", "3 5 1 2 6" and "6"; at equal scores the shallower
    # node comes first, then the more recent one
    assert draft_paths(draft)[1:5] == [(3,), (6,), (3, 5), (3, 4)]
    assert draft.scores[1:5].tolist() == pytest.approx([2 / 3, 1 / 3, 1 / 3, 1 / 3])


def test_longest_context_wins():
    #                  "7 1" -> 8        "1" alone -> 9 (twice)
    index = NgramIndex([[7, 1, 8, 0, 1, 9, 5, 1, 9]])
    assert index.draft([7, 1], 1).tokens.tolist() == [1, 8]
    assert index.draft([3, 1], 1).tokens.tolist() == [1, 9]


def test_falls_back_to_shorter_context_when_longer_has_no_continuation():
    index = NgramIndex([[4, 5, 6, 2, 5, 7]])
    assert index.draft([2, 4, 5], 1).tokens.tolist() == [5, 6]  # "2 4 5" unseen, "4 5" -> 6
    # "6 7", then "7": its only occurrence ends the stream, so there is nothing to draft
    assert index.draft([9, 6, 7], 4) == Draft.root_only(7)


def test_branches_ranked_by_count_then_recency():
    index = NgramIndex([[1, 2, 1, 3, 1, 3, 1, 4, 1, 2]], TrieConfig(branch_length=1))
    draft = index.draft([1], 3)
    # "1" occurs 5 times: then 2 (at 1 and 9), 3 (at 3 and 5), 4 (at 7); equal counts go to
    # the most recent occurrence (9 beats 5). Scores: count / (5 + prior 1)
    assert draft.tokens.tolist() == [1, 2, 3, 4]
    assert draft.scores[1:].tolist() == pytest.approx([2 / 6, 2 / 6, 1 / 6])


def test_sibling_order_and_flattened_order():
    index = NgramIndex([[0, 5, 6, 0, 5, 7, 0, 5, 6, 0, 8]], TrieConfig(prior=0.0))
    draft = index.draft([0], 8)
    draft.validate()
    # after "0": 5 (3 of 4), 8 (1 of 4); after "0 5": 6 (2 of 4), 7 (1 of 4)
    assert draft_paths(draft)[1:6] == [(5,), (5, 6), (5, 6, 0), (8,), (5, 7)]
    assert draft.scores[1:6].tolist() == pytest.approx([3 / 4, 2 / 4, 2 / 4, 1 / 4, 1 / 4])
    assert np.all(draft.parent[1:] < np.arange(1, len(draft)))
    assert np.all(np.diff(draft.scores[1:]) <= 0)
    mask = ancestor_mask(draft)
    assert np.flatnonzero(mask[3]).tolist() == [0, 1, 2, 3]  # 5 -> 6 -> 0
    assert np.flatnonzero(mask[4]).tolist() == [0, 4]  # 8
    assert np.flatnonzero(mask[5]).tolist() == [0, 1, 5]  # 5 -> 7


def test_depth_is_bounded_by_the_stored_ngram_length():
    seq = list(range(10, 30))
    index = NgramIndex([seq], TrieConfig(branch_length=4, max_context=2))
    # windows hold 5 tokens; a 2-token context leaves 3 for the draft
    assert index.draft([10, 11], 10).tokens.tolist() == [11, 12, 13, 14]
    assert index.draft([99, 11], 10).tokens.tolist() == [11, 12, 13, 14, 15]


def test_segments_do_not_run_into_each_other():
    index = NgramIndex([[1, 2], [3, 4]])
    assert index.draft([1], 5).tokens.tolist() == [1, 2]
    assert index.draft([2], 5) == Draft.root_only(2)


def test_extend_continues_the_live_segment():
    index = NgramIndex([[1, 2, 3]])
    index.extend([4])
    assert index.draft([2], 5).tokens.tolist() == [2, 3, 4]
    assert len(index) == 4


def test_after_an_empty_last_segment_extend_starts_a_new_one():
    index = NgramIndex([[1, 2, 3], [4, 9], []])  # the empty segment closes "4 9"
    index.extend([8])
    assert index.draft([9], 5) == Draft.root_only(9)  # "9" ended its segment: 8 does not follow
    assert index.draft([8], 5) == Draft.root_only(8)  # the open end of the live segment
    index.extend([7, 5, 6])
    assert index.draft([8], 5).tokens.tolist() == [8, 7, 5, 6]  # both extends: one segment
    assert index.draft([4, 9, 8], 5) == index.draft([8], 5)  # "9 8" never ran together
    assert len(index) == 9


def test_incremental_equals_seeded_across_index_rebuilds():
    rng = np.random.default_rng(3)
    seq = rng.integers(0, 6, 900)
    config = TrieConfig(branch_length=5)
    grown = NgramIndex([seq[:10]], config)
    for i in range(10, len(seq), 7):  # passes the tail threshold: the index is rebuilt
        grown.extend(seq[i : i + 7])
    seeded = NgramIndex([seq], config)
    for end in range(5, len(seq), 37):
        assert grown.draft(seq[:end], 12) == seeded.draft(seq[:end], 12)


def test_max_matches_keeps_the_most_recent_occurrences():
    index = NgramIndex([[1, 2, 1, 2, 1, 3]], TrieConfig(branch_length=1), max_matches=1)
    assert index.draft([1], 4).tokens.tolist() == [1, 3]


@pytest.mark.parametrize(
    ("context", "nodes", "message"),
    [
        ([], 4, "at least one token"),
        ([1, -2], 4, "negative"),
        ([1.5, 2.0], 4, "integer"),
        ([[1, 2]], 4, "1-D"),
        ([1, 2], -1, "max_nodes"),
        ([1, 2], 2.5, "max_nodes"),
        ([1, 2**40], 4, "beyond"),
    ],
)
def test_bad_draft_calls_raise_clear_errors(context, nodes, message):
    with pytest.raises(ValueError, match=message):
        NgramIndex([[1, 2, 3]]).draft(context, nodes)


def test_bad_sources_raise_and_empty_ones_are_ignored():
    with pytest.raises(ValueError, match=r"segments\[1\].*negative"):
        NgramIndex([[1, 2], [3, -4]])
    with pytest.raises(ValueError, match="integer"):
        NgramIndex([["a", "b"]])
    index = NgramIndex([[], [5, 6], []])
    index.extend([])
    assert len(index) == 2
    assert index.draft([5], 3).tokens.tolist() == [5, 6]


def test_budget_zero_and_branch_length_zero_give_empty_drafts():
    assert NgramIndex([[1, 2, 1, 2]]).draft([1], 0) == Draft.root_only(1)
    flat = NgramIndex([[1, 2, 1, 2]], TrieConfig(branch_length=0))
    assert flat.draft([1], 8) == Draft.root_only(1)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"branch_length": -1}, "branch_length"),
        ({"max_context": 0}, "max_context"),
        ({"max_context": 65}, "max_context"),
        ({"prior": -1.0}, "prior"),
        ({"prior": float("nan")}, "prior"),
        ({"branch_length": 2.0}, "integer"),
    ],
)
def test_bad_config_raises(settings, message):
    with pytest.raises(ValueError, match=message):
        TrieConfig(**settings)
