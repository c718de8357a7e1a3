"""Store members back to a trie: checked, and drafting exactly like the oracle's trie of the
same n-grams (`triehelpers`)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from triehelpers import pack, path_counts, trie_from_paths, window_counts

from trie_store import GlobalTrie, TrieConfig
from trie_store.sharing.members import answer_ngrams
from trie_store.sharing.popular_trie import build_trie, decode_members, join

FAST = settings(max_examples=60, deadline=None)
tokens = st.lists(st.integers(0, 5), min_size=1, max_size=40)


def assert_same_drafts(built: GlobalTrie, reference: GlobalTrie, paths) -> None:
    """Equal drafts, token for token, from every stored context (and that context after an
    unseen token), cut by the budget and whole."""
    assert len(built) == len(reference)
    width = built.config.max_context
    contexts = [list(p) for p in paths if len(p) <= width] + [[9]]
    for context in contexts + [[9, *c] for c in contexts]:
        for budget in (3, 10_000):
            assert built.draft(context, budget) == reference.draft(context, budget), context


@FAST
@given(st.lists(tokens, min_size=1, max_size=3), st.integers(0, 5))
def test_counted_windows_build_the_trie_of_the_answers(answers, branch_length):
    config = TrieConfig(branch_length=branch_length)
    counts: dict[bytes, float] = {}
    for answer in answers:
        for member, n in answer_ngrams(answer, config).items():
            counts[member] = counts.get(member, 0) + n
    built = build_trie(decode_members(list(counts), list(counts.values()), config, 6), config)
    paths = window_counts(answers, branch_length)
    assert_same_drafts(built, trie_from_paths(paths, config), paths)


@FAST
@given(st.lists(st.tuples(tokens, st.floats(0.01, 100)), min_size=1, max_size=12))
def test_weighted_and_repeated_members_add_up_along_each_path(rows):
    config = TrieConfig(branch_length=3, prior=0.5)
    rows = [(g[:4], c) for g, c in rows]  # repeats stay: they add up in both
    ngrams = [g for g, _ in rows]
    counts = [c for _, c in rows]
    built = build_trie(decode_members([pack(g) for g in ngrams], counts, config, 6), config)
    paths = path_counts(ngrams, counts)
    assert_same_drafts(built, trie_from_paths(paths, config), paths)


def test_bad_members_are_skipped_and_counted_by_reason():
    config = TrieConfig(branch_length=2)
    good = pack([1, 2, 3])
    members = [
        good,
        b"abcde",  # not whole tokens
        b"",  # empty
        pack([1, 2, 3, 4]),  # longer than branch_length + 1
        pack([1, 99]),  # id outside a vocabulary of 10
        pack([4]),  # fine, but its count is not
        pack([5]),
        pack([6]),
    ]
    counts = [2.0, 1.0, 1.0, 1.0, 1.0, math.nan, -1.0, math.inf]
    ngrams = decode_members(members, counts, config, vocab_size=10)
    assert ngrams.bad == {"size": 3, "vocab": 1, "count": 3}
    assert ngrams.tokens.tolist() == [[1, 2, 3]]
    assert ngrams.lengths.tolist() == [3]
    assert ngrams.counts.tolist() == [2.0]
    trie = build_trie(ngrams, config)
    assert len(trie) == 3
    draft = trie.draft([1], 4)  # every node counts 2: each step scores 2 / (2 + prior 1)
    assert draft.tokens.tolist() == [1, 2, 3]
    assert draft.scores.tolist() == pytest.approx([1, 2 / 3, 4 / 9])
    empty = build_trie(decode_members([], [], config, 10), config)
    assert len(empty) == 0
    with pytest.raises(ValueError, match="2 members but 1 counts"):
        decode_members([good, good], [1.0], config, 10)


def test_join_puts_the_second_rows_last_so_they_win_ties():
    config = TrieConfig(branch_length=1)
    old = decode_members([pack([1, 2]), b"bad"], [1.0, 1.0], config, 10)
    new = decode_members([pack([1, 3]), pack([1, 99])], [1.0, 1.0], config, 10)
    assert build_trie(join(old, new), config).draft([1], 1).tokens.tolist() == [1, 3]
    assert build_trie(join(new, old), config).draft([1], 1).tokens.tolist() == [1, 2]
    assert join(old, new).bad == {"size": 1, "vocab": 1}
    assert np.array_equal(join(old, new).counts, [1.0, 1.0])
