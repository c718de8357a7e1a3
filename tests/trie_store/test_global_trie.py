"""GlobalTrie: drafts from hand-built, read-only tries (vLLM test_ngram style), and
`from_arrays` refusing what is not a valid trie."""

import numpy as np
import pytest
from triehelpers import draft_paths, trie_from_paths, window_counts

from trie_store import Draft, GlobalTrie, TrieConfig

#          root
#          1 (8)
#      2 (4)   5 (4)
#   3 (3) 4 (1)
TOKENS = [-1, 1, 2, 5, 3, 4]
PARENTS = [-1, 0, 1, 1, 2, 2]
COUNTS = [0.0, 8.0, 4.0, 4.0, 3.0, 1.0]


def hand_built(config: TrieConfig, tokens=TOKENS, parents=PARENTS, counts=COUNTS) -> GlobalTrie:
    return GlobalTrie.from_arrays(
        np.array(tokens, dtype=np.int64),
        np.array(parents, dtype=np.int32),
        np.array(counts, dtype=np.float64),
        config=config,
    )


def test_draft_scores_follow_the_counts():
    trie = hand_built(TrieConfig(branch_length=3, prior=0.0))
    assert len(trie) == 5
    draft = trie.draft([1], 8)
    draft.validate()
    # 2 and 5 tie at 4 of 8: the later-numbered node (5) ranks first
    assert draft.tokens.tolist() == [1, 5, 2, 3, 4]
    assert draft.parent.tolist() == [-1, 0, 0, 2, 2]
    assert draft.scores.tolist() == pytest.approx([1, 4 / 8, 4 / 8, 3 / 8, 1 / 8])


def test_the_prior_smooths_every_step():
    draft = hand_built(TrieConfig(branch_length=3, prior=1.0)).draft([1], 8)
    assert draft.scores.tolist() == pytest.approx([1, 4 / 9, 4 / 9, 4 / 9 * 3 / 5, 4 / 9 * 1 / 5])


def test_ties_go_to_the_later_numbered_sibling():
    swapped = hand_built(
        TrieConfig(branch_length=3), [-1, 1, 5, 2, 3, 4], [-1, 0, 1, 1, 3, 3], COUNTS
    )
    assert swapped.draft([1], 2).tokens.tolist() == [1, 2, 5]


def test_budget_cuts_best_first_and_zero_drafts_nothing():
    trie = hand_built(TrieConfig(branch_length=3, prior=0.0))
    assert draft_paths(trie.draft([1], 3)) == [(), (5,), (2,), (2, 3)]
    assert trie.draft([1], 0) == Draft.root_only(1)


def test_longest_stored_context_wins_and_misses_are_empty():
    paths = {(7,): 1, (7, 1): 1, (7, 1, 8): 1, (1,): 1, (1, 9): 1, (8,): 1, (8, 5): 1}
    trie = trie_from_paths(paths, TrieConfig(branch_length=3))
    assert trie.draft([7, 1], 4).tokens.tolist() == [1, 8]
    assert trie.draft([6, 1], 4).tokens.tolist() == [1, 9]  # "6 1" unseen: "1" alone
    # "7 1 8" is stored but ends there, "1 8" is not stored: "8" alone -> 5
    assert trie.draft([7, 1, 8], 4).tokens.tolist() == [8, 5]
    assert trie.draft([6, 3], 4) == Draft.root_only(3)


def test_depth_is_bounded_by_the_stored_window_and_context_by_max_context():
    config = TrieConfig(branch_length=4, max_context=2)
    trie = trie_from_paths(window_counts([range(10, 30)], 4), config)
    # windows hold 5 tokens; a 2-token context leaves 3 for the draft
    assert trie.draft([10, 11], 10).tokens.tolist() == [11, 12, 13, 14]
    assert trie.draft([99, 11], 10).tokens.tolist() == [11, 12, 13, 14, 15]
    # only the last max_context tokens are matched: "12 13" drafts as if alone
    assert trie.draft([99, 99, 12, 13], 10) == trie.draft([12, 13], 10)


def test_the_empty_trie_drafts_nothing_and_checks_its_input():
    trie = GlobalTrie()
    assert len(trie) == 0
    assert trie.draft([1, 2, 3], 8) == Draft.root_only(3)
    with pytest.raises(ValueError, match="context"):
        trie.draft([], 3)
    with pytest.raises(ValueError, match="negative"):
        trie.draft([1, -1], 3)
    with pytest.raises(ValueError, match="max_nodes"):
        trie.draft([1], -1)


def test_a_built_trie_never_changes_with_its_input_arrays():
    tokens, parents, counts = (np.array(a) for a in (TOKENS, PARENTS, COUNTS))
    trie = GlobalTrie.from_arrays(tokens, parents, counts, config=TrieConfig(prior=0.0))
    before = trie.draft([1], 8)
    tokens[2], counts[4] = 9, 0.5
    assert trie.draft([1], 8) == before


def replaced(**changes: object) -> tuple[object, object, object]:
    arrays = {
        "tokens": np.array(TOKENS, dtype=np.int64),
        "parents": np.array(PARENTS, dtype=np.int64),
        "counts": np.array(COUNTS, dtype=np.float64),
    }
    arrays.update(changes)
    return arrays["tokens"], arrays["parents"], arrays["counts"]


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        (replaced(tokens=np.array(TOKENS, dtype=np.float64)), "tokens must be 1-D of kind 'i'"),
        (replaced(parents=np.array([PARENTS])), "parents must be 1-D"),
        (replaced(counts=np.array(COUNTS, dtype=np.int64)), "counts must be 1-D of kind 'f'"),
        (replaced(counts=np.array(COUNTS[:-1])), "one equal length >= 1, got 6, 6, 5"),
        (
            replaced(
                tokens=np.zeros(0, np.int64), parents=np.zeros(0, np.int64), counts=np.zeros(0)
            ),
            "one equal length >= 1, got 0, 0, 0",
        ),
        (replaced(tokens=np.array([0, 1, 2, 5, 3, 4])), "node 0 must be the root"),
        (replaced(parents=np.array([0, 0, 1, 1, 2, 2])), "node 0 must be the root"),
        (replaced(tokens=np.array([-1, 1, 2, -5, 3, 4])), "non-negative"),
        (replaced(parents=np.array([-1, 0, 1, 1, 5, 2])), "parent must come before its child"),
        (replaced(parents=np.array([-1, 0, 1, 1, 4, 2])), "parent must come before its child"),
        (replaced(parents=np.array([-1, 0, -1, 1, 2, 2])), "parent must come before its child"),
        (replaced(counts=np.array([np.nan, 8, 4, 4, 3, 1])), "finite and > 0"),
        (replaced(counts=np.array([0, 8, 4, 4, 3, np.nan])), "finite and > 0"),
        (replaced(counts=np.array([0, 8, 4, 4, np.inf, 1])), "finite and > 0"),
        (replaced(counts=np.array([0, 8, 4, 4, 3, 0.0])), "finite and > 0"),
        (replaced(counts=np.array([0, 8, -4.0, 4, 3, 1])), "finite and > 0"),
        (replaced(counts=np.array([0, 8, 4, 4, 5.0, 1])), "counts more than its parent"),
        (replaced(tokens=np.array([-1, 1, 2, 2, 3, 4])), "two children with the same token"),
    ],
)
def test_from_arrays_refuses_what_is_not_a_trie(arrays, message):
    with pytest.raises(ValueError, match=message):
        GlobalTrie.from_arrays(*arrays, config=TrieConfig(branch_length=3))


def test_from_arrays_refuses_paths_longer_than_a_window():
    hand_built(TrieConfig(branch_length=2))  # 1 -> 2 -> 3: three tokens fit
    with pytest.raises(ValueError, match=r"longer than branch_length \+ 1 = 2"):
        hand_built(TrieConfig(branch_length=1))
