"""The global channel: popular n-grams from past answers, shared by every request of a replica.

Long lived and bounded, so unlike the request trie it stores its nodes, in flat arrays (token,
parent, first child, next sibling, count: 28 bytes a node) plus one dict from (token, parent) to
node for the walk down. Children hang in a linked list, newest first.

Eviction policy: least useful first, where usefulness is the count with exponential age decay
(half-life `half_life` insert calls; one `insert` or `add_ngrams` call is one tick, say one
answer or one batch from the shared store). Decay is implemented by inflating new increments
instead of deflating old counts (`scale` grows by 2**(1/half_life) a tick; counts are
renormalised before they overflow), so stored counts compare directly and nothing is touched
per tick. When the trie passes `max_nodes` it drops the lowest-count nodes down to
(1 - EVICT_SLACK) * max_nodes in one vectorised pass, so eviction runs once per many inserts.
A node never counts more than its parent, and count ties go to the newer (deeper) node, so
what is dropped is always whole subtrees: no path is left dangling.
"""

from __future__ import annotations

import heapq
import math
from array import array
from collections.abc import Iterable

import numpy as np

from trie_store.config import SCORE_UNIT, TrieConfig, as_int
from trie_store.draft import Draft
from trie_store.tokens import as_tokens, draft_query

EVICT_SLACK = 0.25  # an eviction frees this share of the budget (its cost is O(budget))
RENORMALISE_AT = 1e100  # rescale stored counts before the growing increments overflow
ROOT_TOKEN = -1


class GlobalTrie:
    """A stored n-gram trie with a node budget and decayed counts (global channel)."""

    def __init__(
        self,
        config: TrieConfig | None = None,
        max_nodes: int = 1_000_000,
        half_life: float = 10_000.0,
    ) -> None:
        self.config = config or TrieConfig()
        self.max_nodes = as_int(max_nodes, "max_nodes", minimum=1)
        if not isinstance(half_life, (int, float)) or not half_life > 0:
            raise ValueError(f"half_life must be > 0 (math.inf: no decay), got {half_life!r}")
        self.half_life = float(half_life)
        self._growth = 2.0 ** (1.0 / self.half_life)
        self._scale = 1.0
        self._load(
            np.array([ROOT_TOKEN], dtype=np.int64),
            np.array([-1], dtype=np.int32),
            np.zeros(1, dtype=np.float64),
        )

    @classmethod
    def from_ngrams(
        cls,
        ngrams: Iterable[object],
        counts: Iterable[float] | None = None,
        **settings: object,
    ) -> GlobalTrie:
        """A trie holding `ngrams` (say the top-K of the shared store) with their counts."""
        trie = cls(**settings)  # type: ignore[arg-type]
        trie.add_ngrams(ngrams, counts)
        return trie

    def __len__(self) -> int:
        """Stored nodes, the root excluded (at most `max_nodes` between calls)."""
        return len(self._token) - 1

    def insert(self, tokens: object) -> None:
        """Count every window `tokens[i : i + branch_length + 1]` once (say a finished answer)."""
        seq = as_tokens(tokens).tolist()
        if not seq:
            return
        increment = self._tick()
        width = self.config.branch_length + 1
        self._add_paths((seq[i : i + width], increment) for i in range(len(seq)))

    def add_ngrams(self, ngrams: Iterable[object], counts: Iterable[float] | None = None) -> None:
        """Add each n-gram `counts[i]` times (default once): its count goes to every node on its
        path, as if the n-gram had been seen that often. Everything is checked before anything is
        added, so a bad row changes nothing."""
        paths = [as_tokens(g, f"ngrams[{i}]").tolist() for i, g in enumerate(ngrams)]
        try:
            weights = [1.0] * len(paths) if counts is None else [float(c) for c in counts]
        except (TypeError, ValueError) as err:
            raise ValueError(f"counts must be numbers: {err}") from None
        if len(weights) != len(paths):
            raise ValueError(f"{len(paths)} n-grams but {len(weights)} counts")
        width = self.config.branch_length + 1
        for i, (path, weight) in enumerate(zip(paths, weights, strict=True)):
            if not 1 <= len(path) <= width:
                raise ValueError(f"ngrams[{i}] has {len(path)} tokens, want 1..{width}")
            if not (math.isfinite(weight) and weight >= 0):
                raise ValueError(f"counts[{i}] must be finite and >= 0, got {weight}")
        if not paths:
            return
        increment = self._tick()
        self._add_paths(
            (path, weight * increment)
            for path, weight in zip(paths, weights, strict=True)
            if weight > 0
        )

    def count(self, ngram: object) -> float:
        """The decayed count of an n-gram (0.0 when it is not stored)."""
        node = self._walk(as_tokens(ngram, "ngram").tolist())
        return 0.0 if node is None or node == 0 else self._count[node] / self._scale

    def draft(self, context: object, max_nodes: int) -> Draft:
        """Best-first tree under the longest stored suffix of `context` (same scores as the
        request trie: `score(parent) * count / (count(parent) + prior)`)."""
        query = draft_query(context, max_nodes, self.config)
        for k in query.lengths:
            node = self._walk(query.context(k))
            if node is not None and self._child[node]:
                return self._expand(node, query.root, query.budget)
        return Draft.root_only(query.root)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Nodes as arrays (node 0 the root; parents before children), counts decayed to now."""
        return {
            "tokens": np.array(self._token, dtype=np.int64),
            "parents": np.array(self._parent, dtype=np.int32),
            "counts": np.r_[0.0, _decayed(np.array(self._count[1:]), self._scale)],
        }

    @classmethod
    def from_arrays(
        cls,
        tokens: np.ndarray,
        parents: np.ndarray,
        counts: np.ndarray,
        config: TrieConfig | None = None,
        max_nodes: int = 1_000_000,
        half_life: float = 10_000.0,
    ) -> GlobalTrie:
        """The inverse of `to_arrays`, checking everything: a ValueError names what is wrong."""
        trie = cls(config, max_nodes, half_life)
        tokens, parents, counts = _checked_arrays(tokens, parents, counts, trie.config, max_nodes)
        trie._load(tokens, parents, counts)
        if len(trie._index) != len(trie):
            raise ValueError("a node has two children with the same token")
        return trie

    def _tick(self) -> float:
        """Advance the age clock by one insert call; returns the increment of one sighting."""
        self._ranked.clear()
        self._scale *= self._growth
        if self._scale > RENORMALISE_AT:
            counts = np.frombuffer(self._count, dtype=np.float64)
            counts[1:] = _decayed(counts[1:], self._scale)
            del counts  # release the buffer export: the array must stay resizable
            self._scale = 1.0
        return self._scale

    def _walk(self, path: list[int]) -> int | None:
        node = 0
        for token in path:
            node = self._index.get(token << 32 | node)  # the index key of (token, parent)
            if node is None:
                return None
        return node

    def _add_paths(self, paths: Iterable[tuple[list[int], float]]) -> None:
        """Add each path's increment along it, evicting as soon as the budget is passed, so
        memory stays bounded even within one huge call."""
        limit = self.max_nodes + 1
        for path, increment in paths:
            self._add_path(path, increment)
            if len(self._token) > limit:
                self._enforce_budget()

    def _add_path(self, path: list[int], increment: float) -> None:
        index, count = self._index, self._count
        node = 0
        for token in path:
            key = token << 32 | node
            child = index.get(key)
            if child is None:
                child = index[key] = len(self._token)
                self._token.append(token)
                self._parent.append(node)
                self._count.append(0.0)
                self._child.append(0)
                self._sibling.append(self._child[node])
                self._child[node] = child
            count[child] += increment
            node = child

    def _expand(self, start: int, root: int, budget: int) -> Draft:
        """Best first with children ranked once per node (cached until the next insert): a
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
            scale = units / (self._count[node] + self.config.prior * self._scale)
            self._push(heap, children, 0, scale, depth, out)

    def _push(
        self, heap: list, siblings: list[int], rank: int, scale: float, depth: int, out: int
    ) -> None:
        """Push child `siblings[rank]` of a node at depth `depth`, draft node `out`."""
        node = siblings[rank]
        units = int(scale * self._count[node])
        heapq.heappush(heap, (-units, depth + 1, -node, out, siblings, rank, scale))

    def _rank_children(self, node: int) -> list[int]:
        """Children by count, then newest first: the order the heap pops siblings in."""
        children, c = [], self._child[node]
        while c:
            children.append(c)
            c = self._sibling[c]
        count = self._count
        return sorted(children, key=lambda c: (count[c], c), reverse=True)

    def _enforce_budget(self) -> None:
        n = len(self)
        if n <= self.max_nodes:
            return
        counts = np.array(self._count, dtype=np.float64)[1:]
        ids = np.arange(1, n + 1)
        # ascending count, newest first on ties: a node always comes after its whole subtree
        doomed = ids[np.lexsort((-ids, counts))[: n - int(self.max_nodes * (1 - EVICT_SLACK))]]
        keep = np.ones(n + 1, dtype=bool)
        keep[doomed] = False
        renumber = np.cumsum(keep) - 1
        parents = np.array(self._parent, dtype=np.int32)[keep]
        parents[1:] = renumber[parents[1:]]
        self._load(
            np.array(self._token, dtype=np.int64)[keep],
            parents,
            np.array(self._count, dtype=np.float64)[keep],
        )

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


def _decayed(counts: np.ndarray, scale: float) -> np.ndarray:
    """Counts in today's units; never 0, so a very old node stays a valid (evictable) node."""
    return np.maximum(counts / scale, np.finfo(np.float64).tiny)


def _checked_arrays(
    tokens: object, parents: object, counts: object, config: TrieConfig, max_nodes: int
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
    if n - 1 > max_nodes:
        raise ValueError(f"{n - 1} nodes exceed the budget of {max_nodes}")
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
