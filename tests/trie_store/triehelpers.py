"""An independent oracle for the trie store's tests: n-gram counting and trie building in plain
Python, sharing no code with what they check.

The definition both channels implement: every position `i` of a sequence stores the window
`seq[i : i + branch_length + 1]` (shorter at the end), and every prefix of a window counts one
per window. A trie node is such a prefix; its count is how many windows run through it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from trie_store import Draft, GlobalTrie, TrieConfig

Path = tuple[int, ...]


def path_counts(ngrams: Iterable[Sequence[int]], counts: Iterable[float]) -> dict[Path, float]:
    """Every prefix of every n-gram, counted `counts[i]` per n-gram, in order of first
    appearance (the order `build_trie` numbers nodes in, depth by depth)."""
    out: dict[Path, float] = {}
    for ngram, count in zip(ngrams, counts, strict=True):
        path = tuple(int(t) for t in ngram)
        for end in range(1, len(path) + 1):
            out[path[:end]] = out.get(path[:end], 0.0) + float(count)
    return out


def window_counts(sequences: Iterable[Sequence[int]], branch_length: int) -> dict[Path, float]:
    """The trie of every `branch_length + 1` window of every sequence, as {path: count}."""
    windows = [list(seq)[i : i + branch_length + 1] for seq in sequences for i in range(len(seq))]
    return path_counts(windows, [1.0] * len(windows))


def trie_from_paths(paths: dict[Path, float], config: TrieConfig) -> GlobalTrie:
    """`GlobalTrie.from_arrays` of these paths: root first, then depth by depth, each depth in
    the dict's order (so drafts break ties as a `build_trie` of the same n-grams does)."""
    ids: dict[Path, int] = {(): 0}
    tokens, parents, counts = [-1], [-1], [0.0]
    for path in sorted(paths, key=len):  # stable: the dict's order within a depth
        ids[path] = len(tokens)
        tokens.append(path[-1])
        parents.append(ids[path[:-1]])
        counts.append(paths[path])
    return GlobalTrie.from_arrays(
        np.array(tokens, dtype=np.int64),
        np.array(parents, dtype=np.int64),
        np.array(counts, dtype=np.float64),
        config=config,
    )


def pack(tokens: Sequence[int]) -> bytes:
    """An n-gram as a store member: little-endian uint32 token ids."""
    return np.asarray(tokens, dtype="<u4").tobytes()


def draft_paths(draft: Draft) -> list[Path]:
    """Every node of a draft as its token path below the root (the root is `()`), in order."""
    out: list[Path] = [()]
    for i in range(1, len(draft)):
        out.append((*out[draft.parent[i]], int(draft.tokens[i])))
    return out


def scored_paths(draft: Draft) -> dict[Path, float]:
    """A draft as {path: score}: what it proposes, whatever order ties were broken in."""
    return dict(zip(draft_paths(draft), draft.scores.tolist(), strict=True))
