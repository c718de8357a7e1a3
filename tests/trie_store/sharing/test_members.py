"""Answer windows as store members, and the bounded buffer that counts them."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from triehelpers import pack, path_counts, window_counts

from trie_store import TrieConfig
from trie_store.sharing.members import MEMBER_DTYPE, TOKEN_BYTES, BoundedCounts, answer_ngrams

FAST = settings(max_examples=60, deadline=None)
# small ids repeat (counts add up), large ones use every byte of a member
tokens = st.lists(st.integers(0, 3) | st.integers(0, 2**31 - 1), min_size=1, max_size=40)


def test_members_are_packed_little_endian_uint32():
    assert MEMBER_DTYPE.str == "<u4"
    assert TOKEN_BYTES == 4
    counts = answer_ngrams([1, 258], TrieConfig(branch_length=1))
    assert counts == {b"\x01\x00\x00\x00\x02\x01\x00\x00": 1, b"\x02\x01\x00\x00": 1}
    counts = answer_ngrams([7, 8, 7, 8], TrieConfig(branch_length=1))
    assert counts == {pack([7, 8]): 2, pack([8, 7]): 1, pack([8]): 1}
    assert answer_ngrams([], TrieConfig()) == {}
    with pytest.raises(ValueError, match="negative"):
        answer_ngrams([1, -1], TrieConfig())


@FAST
@given(tokens, st.integers(0, 5))
def test_the_members_are_the_windows_both_channels_store(answer, branch_length):
    counts = answer_ngrams(answer, TrieConfig(branch_length=branch_length))
    ngrams = [np.frombuffer(member, dtype=MEMBER_DTYPE).tolist() for member in counts]
    assert path_counts(ngrams, counts.values()) == window_counts([answer], branch_length)


def test_bounded_counts_drop_new_members_past_the_bound():
    pending = BoundedCounts(max_ngrams=2)
    pending.add({b"a": 1, b"b": 1})
    pending.add({b"a": 2, b"c": 5})  # a still counts; c is dropped
    assert pending.copy() == {b"a": 3, b"b": 1}
    assert pending.dropped == 1
    assert pending.take(1) == {b"a": 3}
    pending.add({b"d": 1})  # room again
    assert pending.take(5) == {b"b": 1, b"d": 1}
    assert len(pending) == 0
    pending.add({b"e": 1})
    pending.clear()
    assert (len(pending), pending.dropped) == (0, 1)
    with pytest.raises(ValueError, match="max_ngrams"):
        BoundedCounts(0)
