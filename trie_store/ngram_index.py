"""The request channel: the n-grams of one request's passages, prompt and growing answer.

Not a trie: an index. The request channel lives for one request and is queried maybe a few
hundred times, so building trie nodes for every window of every passage would be wasted work
(a dict-of-dicts insert of 4096 tokens takes 8-20 ms here). It keeps the token stream and one
array of keys, sorted: for every position and every context length k <= max_context, k tagged
onto a hash of the k tokens ending there (numpy, one pass, one stable argsort: ~1 ms for 4096
tokens). A draft finds the runs of its context's keys with one `searchsorted` and expands, best
first, only the part of the subtree it returns (`subtree.best_first_draft`): the same draft a
stored trie of every `branch_length + 1` window would give (tests cross-check it against
`GlobalTrie`).
Accepted tokens go to a small dict index (O(max_context) per token), folded into the sorted
array when it grows. Hash collisions are ruled out by comparing the tokens themselves.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable

import numpy as np

from trie_store.config import TrieConfig, as_int
from trie_store.draft import Draft
from trie_store.subtree import best_first_draft
from trie_store.tokens import as_tokens, draft_query

SEPARATOR = -1  # between segments and after the stream: no n-gram crosses it
HASH_MULT = 0x9E3779B97F4A7C15  # odd 64-bit multiplier of the polynomial context hash
HASH_MASK = (1 << 64) - 1
TAG_SHIFT = 56  # key = k << TAG_SHIFT | low bits of the hash: one sorted array for every k
LOW_MASK = (1 << TAG_SHIFT) - 1
TAIL_MIN = 256  # the dict index of new positions is folded into the sorted one past
TAIL_SHARE = 4  # max(TAIL_MIN, indexed positions / TAIL_SHARE) entries


class NgramIndex:
    """The request channel's n-grams: seeded once from the request, then grown token by token.

    segments: sources that must not run into each other (passages, the prompt). The last one is
        live: `extend` continues it, so the answer follows the prompt.
    max_matches: only the most recent occurrences of a context are expanded (recency wins
        ties anyway); bounds the cost of a draft on very frequent contexts. On the dev prompts
        16, 64 and 256 gave the same tokens per step.
    """

    def __init__(
        self,
        segments: Iterable[object] = (),
        config: TrieConfig | None = None,
        max_matches: int = 64,
    ) -> None:
        self.config = config or TrieConfig()
        self.max_matches = as_int(max_matches, "max_matches", minimum=1)
        self._gap = self.config.branch_length + 1
        self._max_k = min(self.config.max_context, self.config.branch_length)
        parts = [as_tokens(s, f"segments[{i}]") for i, s in enumerate(segments)]
        pad = np.full(self._gap, SEPARATOR, dtype=np.int64)
        stream = np.concatenate([pad, *(x for p in parts if p.size for x in (p, pad))])
        self._stream = array("q", stream.tobytes())
        self._end = len(self._stream) - self._gap  # where the live segment continues
        self._live = bool(parts) and parts[-1].size > 0
        self._tokens = sum(p.size for p in parts)
        self._step = np.tile(np.array([0, 1], dtype=np.uint64), self._max_k)  # [key, key + 1]
        self._rebuild()

    def __len__(self) -> int:
        """Number of tokens inserted."""
        return self._tokens

    def extend(self, tokens: object) -> None:
        """Append tokens to the live segment: only the windows ending in them are new."""
        new = as_tokens(tokens)
        if new.size == 0:
            return
        if not self._live:
            self._end = len(self._stream)
            self._live = True
        start = self._end
        self._stream[start:] = array("q", new.tobytes())
        self._stream.extend([SEPARATOR] * self._gap)
        self._end += new.size
        self._tokens += new.size
        if self._tail_size + new.size > max(TAIL_MIN, self._indexed // TAIL_SHARE):
            self._rebuild()
        else:
            self._index_tail(start, self._end)

    def draft(self, context: object, max_nodes: int) -> Draft:
        """The best `max_nodes`-node tree continuing the longest matched suffix of `context`."""
        query = draft_query(context, max_nodes, self.config)
        if not query.lengths:
            return Draft.root_only(query.root)
        keys = _context_keys(query.suffix)
        # both ends of every key's run in the sorted index, in one call
        ends = self._keys.searchsorted(
            np.array(keys, dtype=np.uint64).repeat(2) + self._step[: 2 * len(keys)]
        )
        ends = ends.tolist()
        for k in query.lengths:
            starts = self._occurrences(keys[k - 1], query.context(k), ends[2 * k - 2 : 2 * k])
            if starts:
                draft = best_first_draft(
                    self._stream, starts, query.root, self._gap - k, query.budget, self.config.prior
                )
                if draft.size:  # else no occurrence has a continuation: try a shorter context
                    return draft
        return Draft.root_only(query.root)

    def _occurrences(self, key: int, context: list[int], ends: list[int]) -> list[int]:
        """Where the continuation of each recent occurrence of `context` starts.

        An occurrence that ends a closed segment counts (the text ended there); the open end of
        the live segment does not: its continuation is the very thing being drafted.
        """
        lo, hi = ends
        keep = self.max_matches + 1
        found = self._positions[max(lo, hi - keep) : hi]
        extra = self._tail.get(key)
        if extra:
            found = (found + array("q", extra))[-keep:]
        if found and self._live and found[-1] == self._end - 1:
            found = found[:-1]
        found = found[-self.max_matches :]
        k = len(context)
        if k == 1:  # a one-token key is the token itself: no collision to rule out
            return [p + 1 for p in found]
        stream = self._stream
        return [p + 1 for p in found if stream[p - k + 1 : p + 1].tolist() == context]

    def _rebuild(self) -> None:
        """Index every position of the stream, vectorised, in one array sorted by key."""
        stream = np.frombuffer(self._stream, dtype=np.int64)
        n = len(stream)
        hashes = np.zeros(n, dtype=np.uint64)
        valid = np.ones(n, dtype=bool)
        keys, positions = [np.zeros(0, dtype=np.uint64)], [np.zeros(0, dtype=np.int64)]
        for k in range(1, self._max_k + 1):
            earlier = np.full(n, SEPARATOR, dtype=np.int64)
            earlier[k - 1 :] = stream[: n - k + 1]
            valid &= earlier >= 0
            hashes = hashes * np.uint64(HASH_MULT) + (earlier + 1).astype(np.uint64)
            where = np.flatnonzero(valid)
            keys.append((hashes[where] & np.uint64(LOW_MASK)) | np.uint64(k << TAG_SHIFT))
            positions.append(where)
        del stream  # release the buffer export: the array must stay resizable
        key_array = np.concatenate(keys)
        order = np.argsort(key_array, kind="stable")  # stable: positions ascend within a key
        self._keys = key_array[order]
        self._positions = array("q", np.concatenate(positions)[order].tobytes())
        self._tail: dict[int, list[int]] = {}
        self._tail_size = 0
        self._indexed = n

    def _index_tail(self, start: int, stop: int) -> None:
        stream, tail = self._stream, self._tail
        for p in range(start, stop):
            hashed = 0
            for k in range(1, self._max_k + 1):
                token = stream[p - k + 1]
                if token < 0:
                    break
                hashed = (hashed * HASH_MULT + token + 1) & HASH_MASK
                tail.setdefault(k << TAG_SHIFT | hashed & LOW_MASK, []).append(p)
                self._tail_size += 1


def _context_keys(suffix: list[int]) -> list[int]:
    """`keys[k - 1]` = index key of the last k tokens of `suffix`, as `_rebuild` computes it."""
    keys, hashed = [], 0
    for k, token in enumerate(reversed(suffix), start=1):
        hashed = (hashed * HASH_MULT + token + 1) & HASH_MASK
        keys.append(k << TAG_SHIFT | hashed & LOW_MASK)
    return keys
