"""RequestTrie: hand-built token lists (vLLM test_ngram style)."""

import numpy as np
import pytest

from trie_store import Draft, RequestTrie, TrieConfig, ancestor_mask


def paths(draft: Draft) -> list[tuple[int, ...]]:
    """Every drafted node as its token path below the root, in flattened order."""
    out: list[tuple[int, ...]] = [()]
    for i in range(1, len(draft)):
        out.append((*out[draft.parent[i]], int(draft.tokens[i])))
    return out[1:]


def test_draft_is_the_subtree_below_the_matched_context():
    trie = RequestTrie([[1, 2, 3, 4, 1, 2, 3, 5, 1, 2, 6]], TrieConfig(prior=0.0))
    draft = trie.draft([9, 1, 2], 10)
    draft.validate()
    # "1 2" is followed by "3 4 1 2 ...", "3 5 1 2 6" and "6"; at equal scores the shallower
    # node comes first, then the more recent one
    assert paths(draft)[:4] == [(3,), (6,), (3, 5), (3, 4)]
    assert draft.scores[1:5].tolist() == pytest.approx([2 / 3, 1 / 3, 1 / 3, 1 / 3])


def test_longest_context_wins():
    #                  "7 1" -> 8        "1" alone -> 9 (twice)
    trie = RequestTrie([[7, 1, 8, 0, 1, 9, 5, 1, 9]])
    assert trie.draft([7, 1], 1).tokens.tolist() == [1, 8]
    assert trie.draft([3, 1], 1).tokens.tolist() == [1, 9]


def test_falls_back_to_shorter_context_when_longer_has_no_continuation():
    trie = RequestTrie([[4, 5, 6, 2, 5, 7]])
    assert trie.draft([2, 4, 5], 1).tokens.tolist() == [5, 6]  # "2 4 5" unseen, "4 5" -> 6
    # "6 7", then "7": its only occurrence ends the stream, so there is nothing to draft
    assert trie.draft([9, 6, 7], 4) == Draft.root_only(7)


def test_branches_ranked_by_count_then_recency():
    trie = RequestTrie([[1, 2, 1, 3, 1, 3, 1, 4, 1, 2]], TrieConfig(branch_length=1))
    draft = trie.draft([1], 3)
    # "1" occurs 5 times: then 2 (at 1 and 9), 3 (at 3 and 5), 4 (at 7); equal counts go to
    # the most recent occurrence (9 beats 5). Scores: count / (5 + prior 1)
    assert draft.tokens.tolist() == [1, 2, 3, 4]
    assert draft.scores[1:].tolist() == pytest.approx([2 / 6, 2 / 6, 1 / 6])


def test_sibling_order_and_flattened_order():
    trie = RequestTrie([[0, 5, 6, 0, 5, 7, 0, 5, 6, 0, 8]], TrieConfig(prior=0.0))
    draft = trie.draft([0], 8)
    draft.validate()
    # after "0": 5 (3 of 4), 8 (1 of 4); after "0 5": 6 (2 of 4), 7 (1 of 4)
    assert paths(draft)[:5] == [(5,), (5, 6), (5, 6, 0), (8,), (5, 7)]
    assert draft.scores[1:6].tolist() == pytest.approx([3 / 4, 2 / 4, 2 / 4, 1 / 4, 1 / 4])
    assert np.all(draft.parent[1:] < np.arange(1, len(draft)))
    assert np.all(np.diff(draft.scores[1:]) <= 0)
    mask = ancestor_mask(draft)
    assert np.flatnonzero(mask[3]).tolist() == [0, 1, 2, 3]  # 5 -> 6 -> 0
    assert np.flatnonzero(mask[4]).tolist() == [0, 4]  # 8
    assert np.flatnonzero(mask[5]).tolist() == [0, 1, 5]  # 5 -> 7


def test_depth_is_bounded_by_the_stored_ngram_length():
    seq = list(range(10, 30))
    trie = RequestTrie([seq], TrieConfig(branch_length=4, max_context=2))
    # windows hold 5 tokens; a 2-token context leaves 3 for the draft
    assert trie.draft([10, 11], 10).tokens.tolist() == [11, 12, 13, 14]
    assert trie.draft([99, 11], 10).tokens.tolist() == [11, 12, 13, 14, 15]


def test_segments_do_not_run_into_each_other():
    trie = RequestTrie([[1, 2], [3, 4]])
    assert trie.draft([1], 5).tokens.tolist() == [1, 2]
    assert trie.draft([2], 5) == Draft.root_only(2)


def test_extend_continues_the_live_segment_and_insert_starts_one():
    trie = RequestTrie([[1, 2, 3]])
    trie.extend([4])
    assert trie.draft([2], 5).tokens.tolist() == [2, 3, 4]
    trie.insert([4, 9])
    trie.extend([8])
    assert trie.draft([9], 5).tokens.tolist() == [9, 8]
    assert len(trie) == 7


def test_incremental_equals_seeded_across_index_rebuilds():
    rng = np.random.default_rng(3)
    seq = rng.integers(0, 6, 900)
    config = TrieConfig(branch_length=5)
    grown = RequestTrie([seq[:10]], config)
    for i in range(10, len(seq), 7):  # passes the tail threshold: the index is rebuilt
        grown.extend(seq[i : i + 7])
    seeded = RequestTrie([seq], config)
    for end in range(5, len(seq), 37):
        assert grown.draft(seq[:end], 12) == seeded.draft(seq[:end], 12)


def test_max_matches_keeps_the_most_recent_occurrences():
    trie = RequestTrie([[1, 2, 1, 2, 1, 3]], TrieConfig(branch_length=1), max_matches=1)
    assert trie.draft([1], 4).tokens.tolist() == [1, 3]


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
        RequestTrie([[1, 2, 3]]).draft(context, nodes)


def test_bad_sources_raise_and_empty_ones_are_ignored():
    with pytest.raises(ValueError, match=r"segments\[1\].*negative"):
        RequestTrie([[1, 2], [3, -4]])
    with pytest.raises(ValueError, match="integer"):
        RequestTrie([["a", "b"]])
    trie = RequestTrie([[], [5, 6], []])
    trie.extend([])
    assert len(trie) == 2
    assert trie.draft([5], 3).tokens.tolist() == [5, 6]


def test_budget_zero_and_branch_length_zero_give_empty_drafts():
    assert RequestTrie([[1, 2, 1, 2]]).draft([1], 0) == Draft.root_only(1)
    flat = RequestTrie([[1, 2, 1, 2]], TrieConfig(branch_length=0))
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
