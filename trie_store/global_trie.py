"""The global channel: popular n-grams from past answers, shared by every request of a replica.

Long lived and read by every request, so unlike the request channel's index it stores its
nodes, in flat arrays (token, parent, first child, next sibling, count: 28 bytes a node) plus
one dict from (token, parent) to node for the walk down. It is built whole from counted n-grams
(`sharing.popular_trie.build_trie`, at the exact node budget the store's top k gives) and never
changed afterwards: a replica swaps in a new one instead, so readers need no lock.
"""

from __future__ import annotations

import heapq
from array import array

import numpy as np

from trie_store.config import SCORE_UNIT, TrieConfig
from trie_store.draft import Draft
from trie_store.tokens import draft_query

ROOT_TOKEN = -1


class GlobalTrie:
    """A stored, read-only n-gram trie with counts (the global channel)."""

    def __init__(self, config: TrieConfig | None = None) -> None:
        """The empty trie: every draft from it is empty."""
        self.config = config or TrieConfig()
        self._load(
            np.array([ROOT_TOKEN], dtype=np.int64),
            np.array([-1], dtype=np.int32),
            np.zeros(1, dtype=np.float64),
        )

    @classmethod
    def from_arrays(
        cls,
        tokens: np.ndarray,
        parents: np.ndarray,
        counts: np.ndarray,
        config: TrieConfig | None = None,
    ) -> GlobalTrie:
        """Nodes as arrays (node 0 the root, token -1; parents before children), checking
        everything: a ValueError names what is wrong."""
        trie = cls(config)
        tokens, parents, counts = _checked_arrays(tokens, parents, counts, trie.config)
        trie._load(tokens, parents, counts)
        if len(trie._index) != len(trie):
            raise ValueError("a node has two children with the same token")
        return trie

    def __len__(self) -> int:
        """Stored nodes, the root excluded."""
        return len(self._token) - 1

    def draft(self, context: object, max_nodes: int) -> Draft:
        """Best-first tree under the longest stored suffix of `context` (the same scores as the
        request channel: `score(parent) * count / (count(parent) + prior)`)."""
        query = draft_query(context, max_nodes, self.config)
        for k in query.lengths:
            node = self._walk(query.context(k))
            if node is not None and self._child[node]:
                return self._expand(node, query.root, query.budget)
        return Draft.root_only(query.root)

    def _walk(self, path: list[int]) -> int | None:
        node = 0
        for token in path:
            node = self._index.get(token << 32 | node)  # the index key of (token, parent)
            if node is None:
                return None
        return node

    def _expand(self, start: int, root: int, budget: int) -> Draft:
        """Best first with children ranked once per node (cached: the trie never changes): a
        popped node pushes its best child and its next sibling, so the heap holds O(D) entries
        however many children a frequent context has."""
        tokens, parents, depths, units = [root], [-1], [0], [SCORE_UNIT]
        heap: list[tuple[int, int, int, int, list[int], int, float]] = []
        self._push_child(heap, start, SCORE_UNIT, 0, 0)
        while heap and len(tokens) <= budget:
            neg_units, depth, neg_node, parent, siblings, rank, scale = heapq.heappop(heap)
            tokens.append(self._token[-neg_node])
            parents.append(parent)
            depths.append(depth)
            units.append(-neg_units)
            if rank + 1 < len(siblings):
                self._push(heap, siblings, rank + 1, scale, depth - 1, parent)
            self._push_child(heap, -neg_node, -neg_units, depth, len(tokens) - 1)
        return Draft(
            tokens=np.array(tokens, dtype=np.int64),
            parent=np.array(parents, dtype=np.int32),
            depth=np.array(depths, dtype=np.int32),
            scores=np.array(units, dtype=np.float64) / SCORE_UNIT,
        )

    def _push_child(self, heap: list, node: int, units: int, depth: int, out: int) -> None:
        """Push the best child of trie node `node` (draft node `out`), if it has one."""
        children = self._ranked.get(node)
        if children is None:
            children = self._ranked[node] = self._rank_children(node)
        if children:
            scale = units / (self._count[node] + self.config.prior)
            self._push(heap, children, 0, scale, depth, out)

    def _push(
        self, heap: list, siblings: list[int], rank: int, scale: float, depth: int, out: int
    ) -> None:
        """Push child `siblings[rank]` of a node at depth `depth`, draft node `out`."""
        node = siblings[rank]
        units = int(scale * self._count[node])
        heapq.heappush(heap, (-units, depth + 1, -node, out, siblings, rank, scale))

    def _rank_children(self, node: int) -> list[int]:
        """Children by count, then the later-numbered first: the order the heap pops siblings in."""
        children, c = [], self._child[node]
        while c:
            children.append(c)
            c = self._sibling[c]
        count = self._count
        return sorted(children, key=lambda c: (count[c], c), reverse=True)

    def _load(self, tokens: np.ndarray, parents: np.ndarray, counts: np.ndarray) -> None:
        """Install node arrays (parents before children) and rebuild the links and the index."""
        n = len(tokens)
        ids = np.arange(1, n)
        ups = parents[1:].astype(np.int64)
        by_parent = ids[np.lexsort((-ids, ups))]  # grouped by parent, newest first
        grouped = ups[by_parent - 1]
        same = grouped[1:] == grouped[:-1]
        sibling = np.zeros(n, dtype=np.int32)
        sibling[by_parent[:-1][same]] = by_parent[1:][same]
        first = np.r_[True, ~same] if n > 1 else np.zeros(0, dtype=bool)
        child = np.zeros(n, dtype=np.int32)
        child[grouped[first]] = by_parent[first]
        self._token = array("q", tokens.astype(np.int64).tobytes())
        self._parent = array("i", parents.astype(np.int32).tobytes())
        self._count = array("d", counts.astype(np.float64).tobytes())
        self._child = array("i", child.tobytes())
        self._sibling = array("i", sibling.tobytes())
        self._ranked: dict[int, list[int]] = {}  # node -> children, best first (lazy)
        self._index = dict(zip(((tokens[1:] << 32) | ups).tolist(), ids.tolist(), strict=True))


def _checked_arrays(
    tokens: object, parents: object, counts: object, config: TrieConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tokens, parents, counts = (np.asarray(a) for a in (tokens, parents, counts))
    kinds = {"tokens": (tokens, "i"), "parents": (parents, "i"), "counts": (counts, "f")}
    for name, (arr, kind) in kinds.items():
        if arr.ndim != 1 or arr.dtype.kind != kind:
            raise ValueError(f"{name} must be 1-D of kind {kind!r}, got {arr.dtype} {arr.shape}")
    n = len(tokens)
    if n == 0 or len(parents) != n or len(counts) != n:
        raise ValueError(
            f"tokens, parents, counts must have one equal length >= 1, got "
            f"{len(tokens)}, {len(parents)}, {len(counts)}"
        )
    if tokens[0] != ROOT_TOKEN or parents[0] != -1:
        raise ValueError("node 0 must be the root (token -1, parent -1)")
    ids = np.arange(1, n)
    if np.any(tokens[1:] < 0):
        raise ValueError("token ids must be non-negative")
    if np.any(parents[1:] < 0) or np.any(parents[1:] >= ids):
        raise ValueError("every parent must come before its child")
    if not np.all(np.isfinite(counts)) or np.any(counts[1:] <= 0):
        raise ValueError("counts must be finite and > 0")
    inner = parents[1:] > 0
    if np.any(counts[1:][inner] > counts[parents[1:][inner]]):
        raise ValueError("a node counts more than its parent")
    climb = parents[1:].astype(np.int64)  # every node climbs to the root, one level a step
    for _ in range(config.branch_length):
        climb = np.where(climb > 0, parents[climb], 0)
    if np.any(climb > 0):
        raise ValueError(f"a path is longer than branch_length + 1 = {config.branch_length + 1}")
    return tokens.astype(np.int64), parents.astype(np.int32), counts.astype(np.float64)
