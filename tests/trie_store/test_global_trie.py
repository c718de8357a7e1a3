"""GlobalTrie: counts, drafts, the node budget and age decay."""

import math

import numpy as np
import pytest

from trie_store import Draft, GlobalTrie, TrieConfig

NO_DECAY = math.inf


def test_insert_counts_every_window_prefix():
    trie = GlobalTrie(TrieConfig(branch_length=2), half_life=NO_DECAY)
    trie.insert([1, 2, 3, 1, 2, 4])
    # windows: 123 231 312 124 24 4
    assert trie.count([1]) == 2
    assert trie.count([1, 2]) == 2
    assert trie.count([1, 2, 3]) == 1
    assert trie.count([2]) == 2
    assert trie.count([2, 4]) == 1
    assert trie.count([3, 1, 2, 4]) == 0  # longer than a window: never stored
    assert trie.count([]) == 0
    assert len(trie) == 12  # 1 12 123 124 2 23 231 24 3 31 312 4


def test_from_ngrams_adds_counts_along_each_path():
    trie = GlobalTrie.from_ngrams(
        [[5, 6, 7], [5, 6, 8], [9]], [3.0, 1.0, 2.0], config=TrieConfig(branch_length=2)
    )
    assert trie.count([5]) == pytest.approx(4.0, rel=1e-3)
    assert trie.count([5, 6, 7]) == pytest.approx(3.0, rel=1e-3)
    assert len(trie) == 5
    trie.add_ngrams([[5, 6, 8]], [5.0])
    draft = trie.draft([0, 5, 6], 2)
    assert draft.tokens.tolist() == [6, 8, 7]  # 8 now counts more than 7


def test_draft_scores_follow_the_counts():
    trie = GlobalTrie(TrieConfig(branch_length=3, prior=0.0), half_life=NO_DECAY)
    trie.add_ngrams([[1, 2, 3], [1, 2, 4], [1, 5]], [3, 1, 4])
    draft = trie.draft([1], 8)
    draft.validate()
    assert draft.tokens.tolist() == [1, 5, 2, 3, 4]
    assert draft.scores.tolist() == pytest.approx([1, 4 / 8, 4 / 8, 3 / 8, 1 / 8])
    assert draft.parent.tolist() == [-1, 0, 0, 2, 2]


def test_longest_stored_context_wins_and_misses_are_empty():
    trie = GlobalTrie(TrieConfig(branch_length=3))
    trie.add_ngrams([[7, 1, 8], [1, 9]])
    assert trie.draft([7, 1], 4).tokens.tolist() == [1, 8]
    assert trie.draft([6, 1], 4).tokens.tolist() == [1, 9]
    assert trie.draft([6, 3], 4) == Draft.root_only(3)
    assert trie.draft([7, 1], 0) == Draft.root_only(1)


def test_budget_evicts_the_least_used_whole_subtrees():
    trie = GlobalTrie(TrieConfig(branch_length=2), max_nodes=8, half_life=NO_DECAY)
    trie.add_ngrams([[1, 2, 3]], [10])
    trie.add_ngrams([[4, 5, 6]], [5])
    trie.add_ngrams([[7]], [5])
    trie.add_ngrams([[7, 8, 9]], [1])  # 9 nodes: over budget
    assert len(trie) == 6  # evicted down to 75% of the budget in one go: 3 nodes went
    assert trie.count([7, 8]) == 0  # 789 and its parent 78 (1 each): leaves go first
    assert trie.count([7]) == 6  # a prefix counts at least as much as its leaves
    assert trie.count([4, 5, 6]) == 0  # a tie at 5 with 4 and 45: the deepest goes
    assert trie.count([4, 5]) == 5
    assert trie.count([1, 2, 3]) == 10
    for node_path in ([1], [1, 2], [4, 5], [7]):
        assert trie.draft(node_path, 4).validate() is None


def test_budget_holds_under_a_stream_of_inserts():
    rng = np.random.default_rng(0)
    trie = GlobalTrie(TrieConfig(branch_length=4), max_nodes=300)
    common = [1, 2, 3, 4, 5]
    for _ in range(60):
        trie.insert(np.r_[common, rng.integers(10, 500, 20)])
        assert len(trie) <= 300
    assert trie.count(common) > 0  # seen in every insert: it survives every eviction
    assert trie.draft([1, 2], 3).tokens.tolist() == [2, 3, 4, 5]


def test_budget_holds_within_one_huge_insert():
    trie = GlobalTrie(TrieConfig(branch_length=3), max_nodes=50)
    trie.insert(np.random.default_rng(1).integers(0, 1000, 5000))
    assert 0 < len(trie) <= 50
    trie.draft([int(trie.to_arrays()["tokens"][1])], 4).validate()


def test_counts_decay_with_age_so_recent_ngrams_win():
    trie = GlobalTrie(TrieConfig(branch_length=1), half_life=1.0)
    trie.add_ngrams([[1, 2]], [3])
    trie.add_ngrams([[1, 3]], [2])  # one tick later: the 3 counts of "1 2" are now 1.5
    assert trie.count([1, 2]) == pytest.approx(1.5)
    assert trie.count([1, 3]) == pytest.approx(2.0)
    assert trie.draft([1], 2).tokens.tolist() == [1, 3, 2]


def test_counts_survive_renormalisation():
    trie = GlobalTrie(TrieConfig(branch_length=1), half_life=0.01)  # x2**100 a tick
    trie.add_ngrams([[1, 2]])
    for _ in range(5):  # the scale passes 1e100: stored counts are rescaled
        trie.add_ngrams([[1, 3]])
    assert 0 < trie.count([1, 2]) < 1e-100
    assert trie.count([1, 3]) == pytest.approx(1.0)
    assert trie.draft([1], 2).tokens.tolist() == [1, 3, 2]


@pytest.mark.parametrize(
    ("ngrams", "counts", "message"),
    [
        ([[1, 2, 3, 4]], None, r"ngrams\[1\] has 4 tokens"),
        ([[]], None, r"ngrams\[1\] has 0 tokens"),
        ([[1, -2]], None, r"ngrams\[1\].*negative"),
        ([[1, 2]], [1, 2], "2 n-grams but 3 counts"),
        ([[1, 2]], [-1], "counts"),
        ([[1, 2]], [float("inf")], "counts"),
        ([[1.5]], None, "integer"),
        ([[1, 2]], ["many"], "counts must be numbers"),
    ],
)
def test_bad_ngrams_raise_and_change_nothing(ngrams, counts, message):
    trie = GlobalTrie(TrieConfig(branch_length=2))
    trie.add_ngrams([[7, 8]])
    with pytest.raises(ValueError, match=message):
        trie.add_ngrams([[5, 6], *ngrams], None if counts is None else [1, *counts])
    assert len(trie) == 2
    assert trie.count([5]) == 0


def test_bad_settings_and_input_raise():
    with pytest.raises(ValueError, match="max_nodes"):
        GlobalTrie(max_nodes=0)
    with pytest.raises(ValueError, match="half_life"):
        GlobalTrie(half_life=0)
    trie = GlobalTrie()
    trie.insert([])
    assert len(trie) == 0
    with pytest.raises(ValueError, match="negative"):
        trie.insert([3, -1])
    with pytest.raises(ValueError, match="context"):
        trie.draft([], 3)
