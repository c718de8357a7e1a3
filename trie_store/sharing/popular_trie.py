"""Store members (packed n-grams and their counts) -> a `GlobalTrie`, checking every member.

Members come from a shared store that anything with the password can write to, so each one is
checked before use: its size (whole uint32 tokens, 1..branch_length + 1 of them), its token ids
(inside the model's vocabulary) and its count (finite, > 0). A bad member is skipped and counted
by reason; it never fails the build. The trie is built depth by depth with numpy (one `unique`
per depth) and loaded through `GlobalTrie.from_arrays`, which checks the tree once more. A pull
rebuilds the trie in the background of a serving replica, so it must stay cheap: 0.22 s for
20k answer windows (200k nodes) here, against 0.58 s for inserting them path by path; most of
what is left is the trie's own index.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from trie_store.config import TrieConfig, as_int
from trie_store.global_trie import ROOT_TOKEN, GlobalTrie
from trie_store.sharing.members import MEMBER_DTYPE, TOKEN_BYTES

TOKEN_MASK = (1 << 32) - 1


@dataclass(frozen=True)
class Ngrams:
    """Checked n-grams as a padded matrix: row i is `tokens[i, : lengths[i]]`, -1 after."""

    tokens: np.ndarray  # int64 [n, branch_length + 1]
    lengths: np.ndarray  # int64 [n]
    counts: np.ndarray  # float64 [n]
    bad: dict[str, int] = field(default_factory=dict)  # reason -> members skipped


def decode_members(
    members: Sequence[bytes], counts: Sequence[float], config: TrieConfig, vocab_size: int
) -> Ngrams:
    """Unpack members, skipping bad ones (reasons: "size", "vocab", "count")."""
    vocab_size = as_int(vocab_size, "vocab_size", minimum=1)
    width = config.branch_length + 1
    if len(members) != len(counts):
        raise ValueError(f"{len(members)} members but {len(counts)} counts")
    weights = np.asarray(counts, dtype=np.float64).reshape(-1)
    nbytes = np.fromiter(map(len, members), dtype=np.int64, count=len(members))
    good_size = (nbytes % TOKEN_BYTES == 0) & (nbytes > 0) & (nbytes <= width * TOKEN_BYTES)
    good_count = np.isfinite(weights) & (weights > 0)
    keep = good_size & good_count
    lengths = nbytes[keep] // TOKEN_BYTES
    flat = np.frombuffer(
        b"".join(m for m, k in zip(members, keep.tolist(), strict=True) if k), dtype=MEMBER_DTYPE
    ).astype(np.int64)
    starts = np.cumsum(lengths) - lengths
    in_vocab = np.ones(len(lengths), dtype=bool)
    if flat.size:
        in_vocab = np.maximum.reduceat(flat, starts) < vocab_size
    rows = np.repeat(np.arange(len(lengths)), lengths)
    matrix = np.full((len(lengths), width), -1, dtype=np.int64)
    matrix[rows, np.arange(flat.size) - np.repeat(starts, lengths)] = flat
    bad = {
        "size": int((~good_size).sum()),
        "count": int((good_size & ~good_count).sum()),
        "vocab": int((~in_vocab).sum()),
    }
    return Ngrams(
        tokens=matrix[in_vocab],
        lengths=lengths[in_vocab],
        counts=weights[keep][in_vocab],
        bad={reason: n for reason, n in bad.items() if n},
    )


def join(first: Ngrams, second: Ngrams) -> Ngrams:
    """The rows of both, `first`'s first (so `second`'s win ties in the trie)."""
    bad = Counter(first.bad)
    bad.update(second.bad)
    return Ngrams(
        tokens=np.concatenate([first.tokens, second.tokens]),
        lengths=np.concatenate([first.lengths, second.lengths]),
        counts=np.concatenate([first.counts, second.counts]),
        bad=dict(bad),
    )


def build_trie(ngrams: Ngrams, config: TrieConfig) -> GlobalTrie:
    """The trie of these n-grams: every n-gram adds its count to each node on its path, so
    repeated n-grams add up and a node counts its whole subtree. Node ids go depth by depth, so
    every parent comes before its children, and within a depth by first appearance, so on equal
    counts the later row's node ranks first (newer n-grams win ties)."""
    tokens, parents, counts = [np.array([ROOT_TOKEN])], [np.array([-1])], [np.zeros(1)]
    node_of_row = np.zeros(len(ngrams.lengths), dtype=np.int64)  # the row's node so far
    next_id = 1
    for depth in range(ngrams.tokens.shape[1]):
        rows = np.flatnonzero(ngrams.lengths > depth)
        if rows.size == 0:
            break
        keys = node_of_row[rows] << 32 | ngrams.tokens[rows, depth]
        unique, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        order = np.argsort(first)  # number nodes by first appearance
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        tokens.append(unique[order] & TOKEN_MASK)
        parents.append(unique[order] >> 32)
        # rows are summed in the same order at every depth, and a parent's rows include its
        # children's: float rounding can never make a child count more than its parent
        counts.append(np.bincount(rank[inverse], weights=ngrams.counts[rows], minlength=order.size))
        node_of_row[rows] = next_id + rank[inverse]
        next_id += unique.size
    return GlobalTrie.from_arrays(
        np.concatenate(tokens),
        np.concatenate(parents),
        np.concatenate(counts),
        config=config,
    )
