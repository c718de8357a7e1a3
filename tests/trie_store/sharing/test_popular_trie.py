"""Answer windows as store members, and members back to a trie: the same trie as inserting."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trie_store import GlobalTrie, TrieConfig
from trie_store.ngram_counter import BoundedCounts, answer_ngrams, pack_ngram
from trie_store.popular_trie import build_trie, decode_members

FAST = settings(max_examples=60, deadline=None)
tokens = st.lists(st.integers(0, 5), min_size=1, max_size=40)


def all_paths(trie: GlobalTrie) -> dict[tuple[int, ...], float]:
    arrays = trie.to_arrays()
    paths: list[tuple[int, ...]] = [()]
    for token, parent in zip(arrays["tokens"][1:], arrays["parents"][1:], strict=True):
        paths.append((*paths[parent], int(token)))
    return dict(zip(paths[1:], arrays["counts"][1:].tolist(), strict=True))


def test_members_are_packed_little_endian_uint32():
    assert pack_ngram([1, 258]) == b"\x01\x00\x00\x00\x02\x01\x00\x00"
    counts = answer_ngrams([7, 8, 7, 8], TrieConfig(branch_length=1))
    assert counts == {pack_ngram([7, 8]): 2, pack_ngram([8, 7]): 1, pack_ngram([8]): 1}
    with pytest.raises(ValueError, match="negative"):
        answer_ngrams([1, -1], TrieConfig())


@FAST
@given(st.lists(tokens, min_size=1, max_size=3), st.integers(0, 5))
def test_counted_windows_build_the_trie_inserting_the_answers_builds(answers, branch_length):
    config = TrieConfig(branch_length=branch_length)
    inserted = GlobalTrie(config, half_life=math.inf)
    counts: dict[bytes, float] = {}
    for answer in answers:
        inserted.insert(answer)
        for member, n in answer_ngrams(answer, config).items():
            counts[member] = counts.get(member, 0) + n
    built = build_trie(decode_members(list(counts), list(counts.values()), config, 6), config)
    assert all_paths(built) == all_paths(inserted)


@FAST
@given(
    st.lists(st.tuples(tokens, st.floats(0.01, 100)), min_size=1, max_size=12),
    st.lists(tokens, min_size=1, max_size=4),
)
def test_build_drafts_exactly_like_from_ngrams(rows, contexts):
    config = TrieConfig(branch_length=3, prior=0.5)
    rows = [(g[:4], c) for g, c in rows]  # repeats stay: they add up in both
    members = [pack_ngram(g) for g, _ in rows]
    counts = [c for _, c in rows]
    built = build_trie(decode_members(members, counts, config, 6), config)
    reference = GlobalTrie.from_ngrams(
        [g for g, _ in rows], counts, config=config, half_life=math.inf
    )
    for context in contexts:
        assert built.draft(context, 30) == reference.draft(context, 30)


def test_bad_members_are_skipped_and_counted_by_reason():
    config = TrieConfig(branch_length=2)
    good = pack_ngram([1, 2, 3])
    members = [
        good,
        b"abcde",  # not whole tokens
        b"",  # empty
        pack_ngram([1, 2, 3, 4]),  # longer than branch_length + 1
        pack_ngram([1, 99]),  # id outside a vocabulary of 10
        pack_ngram([4]),  # fine, but its count is not
        pack_ngram([5]),
    ]
    counts = [2.0, 1.0, 1.0, 1.0, 1.0, math.nan, -1.0]
    ngrams = decode_members(members, counts, config, vocab_size=10)
    assert ngrams.bad == {"size": 3, "vocab": 1, "count": 2}
    assert ngrams.tokens.tolist() == [[1, 2, 3]]
    assert ngrams.counts.tolist() == [2.0]
    trie = build_trie(ngrams, config)
    assert trie.count([1, 2]) == 2.0
    assert len(trie) == 3
    empty = build_trie(decode_members([], [], config, 10), config)
    assert len(empty) == 0
    with pytest.raises(ValueError, match="2 members but 1 counts"):
        decode_members([good, good], [1.0], config, 10)


def test_bounded_counts_drop_new_members_past_the_bound():
    pending = BoundedCounts(max_ngrams=2)
    pending.add({b"a": 1, b"b": 1})
    pending.add({b"a": 2, b"c": 5})  # a still counts; c is dropped
    assert pending.copy() == {b"a": 3, b"b": 1}
    assert pending.dropped == 1
    assert pending.take(1) == {b"a": 3}
    assert pending.take(5) == {b"b": 1}
    assert len(pending) == 0
    with pytest.raises(ValueError, match="max_ngrams"):
        BoundedCounts(0)
