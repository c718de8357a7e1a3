"""Best-first draft from the occurrences of a matched context in a token stream.

The request trie stores no trie nodes: the subtree a trie would hold under the matched context
is the set of continuations that follow its occurrences. Expanding it best first touches only
the nodes that make the draft (plus their siblings), so a draft costs O(D + matches), not the
size of the subtree.
"""

from __future__ import annotations

import heapq

import numpy as np

from trie_store.config import SCORE_UNIT
from trie_store.draft import Draft


def best_first_draft(
    stream: list[int], starts: list[int], root: int, max_depth: int, max_nodes: int, prior: float
) -> Draft:
    """Up to `max_nodes` nodes of the subtree below `root`, best first.

    `stream` is the token stream with negative separators, which end a continuation (it must end
    with one); `starts[i]` indexes the first continuation token of the i-th occurrence, ascending.
    A node's count is the number of occurrences that continue through it, the root's is
    `len(starts)`; its score is `score(parent) * count / (count(parent) + prior)`, so scores
    fall along every path. Ties go to the shallower node, then to the most recently seen one.
    """
    if len(starts) == 1:
        return _chain(stream, starts[0], root, min(max_depth, max_nodes), prior)
    tokens, parents, depths, units = [root], [-1], [0], [SCORE_UNIT]
    heap: list[tuple[int, int, int, list[int], int]] = []
    _push_children(heap, stream, starts, SCORE_UNIT, 0, 0, prior, max_nodes)
    while heap and len(tokens) <= max_nodes:
        neg_units, depth, _, where, parent = heapq.heappop(heap)
        tokens.append(stream[where[0] - 1])
        parents.append(parent)
        depths.append(depth)
        units.append(-neg_units)
        room = max_nodes + 1 - len(tokens)
        if depth < max_depth and room:
            _push_children(heap, stream, where, -neg_units, depth, len(tokens) - 1, prior, room)
    return _draft(tokens, parents, depths, units)


def _push_children(
    heap: list,
    stream: list[int],
    where: list[int],
    units: int,
    depth: int,
    node: int,
    prior: float,
    room: int,
) -> None:
    """Group a node's occurrences by their next token: one heap entry per child, for at most
    `room` children (the most frequent, then most recent: no others could make the draft).
    The heap key is unique (nodes of equal depth never share an occurrence), so the lists in
    it are never compared."""
    scale = units / (len(where) + prior)
    if len(where) == 1:  # deep in the tree most nodes are one occurrence: no grouping
        i = where[0]
        if stream[i] >= 0:
            heapq.heappush(heap, (-int(scale), depth + 1, -i - 1, [i + 1], node))
        return
    groups: dict[int, list[int]] = {}
    for i in where:
        token = stream[i]
        if token >= 0:
            groups.setdefault(token, []).append(i + 1)
    children = groups.values()
    if len(children) > room:
        children = sorted(children, key=lambda c: (len(c), c[-1]), reverse=True)[:room]
    for after in children:
        heapq.heappush(heap, (-int(scale * len(after)), depth + 1, -after[-1], after, node))


def _chain(stream: list[int], start: int, root: int, length: int, prior: float) -> Draft:
    """The draft of a single occurrence: its continuation, each step scoring 1 / (1 + prior)."""
    tokens, units, score = [root], [SCORE_UNIT], SCORE_UNIT
    for token in stream[start : start + length]:
        if token < 0:
            break
        score = int(score / (1 + prior))
        tokens.append(token)
        units.append(score)
    n = len(tokens)
    return _draft(tokens, list(range(-1, n - 1)), list(range(n)), units)


def _draft(tokens: list[int], parents: list[int], depths: list[int], units: list[int]) -> Draft:
    return Draft(
        tokens=np.array(tokens, dtype=np.int64),
        parent=np.array(parents, dtype=np.int32),
        depth=np.array(depths, dtype=np.int32),
        scores=np.array(units, dtype=np.float64) / SCORE_UNIT,
    )
