"""Answer n-grams as shared-store members, and their local counts in a bounded buffer.

A member is one n-gram packed as little-endian uint32 token ids (4 bytes a token): compact,
the same bytes on every machine, and nothing a reader must trust to deserialise (never pickle).
The n-grams are the windows the request channel indexes, `tokens[i : i + branch_length + 1]`
for every position (shorter at the end), so a trie built from the counted members drafts like
one that saw the answers themselves.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from itertools import islice

import numpy as np

from trie_store.config import TrieConfig, as_int
from trie_store.tokens import as_tokens

MEMBER_DTYPE = np.dtype("<u4")
TOKEN_BYTES = MEMBER_DTYPE.itemsize


def answer_ngrams(tokens: object, config: TrieConfig) -> Counter[bytes]:
    """How often each window of an answer occurs, by member."""
    packed = as_tokens(tokens, "answer").astype(MEMBER_DTYPE).tobytes()
    width = (config.branch_length + 1) * TOKEN_BYTES
    return Counter(packed[i : i + width] for i in range(0, len(packed), TOKEN_BYTES))


class BoundedCounts:
    """Counts of at most `max_ngrams` distinct members; past that, new members are dropped
    (counted in `dropped`) while counted ones keep accumulating. This is the bound on what a
    replica holds, and may lose, while the shared store is away."""

    def __init__(self, max_ngrams: int) -> None:
        self.max_ngrams = as_int(max_ngrams, "max_ngrams", minimum=1)
        self.dropped = 0  # increments refused since creation
        self._counts: dict[bytes, float] = {}

    def __len__(self) -> int:
        return len(self._counts)

    def add(self, counts: Mapping[bytes, float]) -> None:
        mine = self._counts
        for member, count in counts.items():
            if member in mine:
                mine[member] += count
            elif len(mine) < self.max_ngrams:
                mine[member] = count
            else:
                self.dropped += 1

    def take(self, n: int) -> dict[bytes, float]:
        """Remove and return up to `n` members, oldest first."""
        batch = dict(islice(self._counts.items(), n))
        for member in batch:
            del self._counts[member]
        return batch

    def copy(self) -> dict[bytes, float]:
        return dict(self._counts)

    def clear(self) -> None:
        self._counts.clear()
