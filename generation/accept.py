"""Acceptance of a verified draft tree: which drafted tokens stand, and the bonus token after them.

Greedy takes the longest branch the model itself would write. Sampling is exact speculative
sampling for point-mass drafts: the emitted tokens have exactly the distribution plain sampling
gives, whatever the draft. Both return the kept nodes (the root and the accepted path,
ascending, as `BatchKVCache.keep` wants them) and the emitted tokens (the accepted draft tokens
plus the bonus token), so a step always emits at least the one token plain decoding would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from trie_store.draft import Draft


class AcceptRule(Protocol):
    """How the decode loop turns a verify pass into emitted tokens, in two timed phases."""

    def verified(self, logits: torch.Tensor) -> object:
        """What `accept` needs of the logits `[q, vocab]`, fetched to where it is used."""
        ...

    def accept(
        self, draft: Draft, verified: object, context: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Kept nodes and emitted tokens; `context` ends with the draft's root."""
        ...


class GreedyRule:
    """Plain greedy decoding's choice at every node: the fast path, one argmax per pass."""

    def verified(self, logits: torch.Tensor) -> np.ndarray:
        return logits.argmax(dim=-1).cpu().numpy()

    def accept(
        self, draft: Draft, verified: np.ndarray, context: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        return greedy_accept(draft, verified)


GREEDY = GreedyRule()


def greedy_accept(draft: Draft, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walk from the root while some child carries the model's own choice `target[node]`.

    `target[i]` is the argmax of the logits at node `i`.
    """
    path = [0]
    node = 0
    while True:
        hits = np.flatnonzero((draft.parent == node) & (draft.tokens == target[node]))
        if hits.size == 0:
            break
        node = int(hits[0])
        path.append(node)
    nodes = np.asarray(path, dtype=np.int64)
    tokens = np.append(draft.tokens[nodes[1:]], target[node]).astype(np.int64)
    return nodes, tokens


def sample_accept(
    draft: Draft, target: Callable[[int], torch.Tensor], generator: torch.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Speculative sampling over a tree of point-mass drafts, exact for any draft.

    `target(node)` is the distribution of the token after `node` (float64 on the CPU, summing
    to 1; the caller gives up the tensor), asked for only at the nodes the walk reaches. At a
    node, the children are tried in draft order: child `c` is accepted with probability `p(c)`;
    on rejection `p(c)` is zeroed and `p` renormalised before the next child. So child `c_j` is
    emitted with probability `prod_{i<j} (1 - p'(c_i)) * p'(c_j) = p(c_j)`, and when all are
    rejected the residual sample gives every other token its `p(t)` too. The walk continues
    from an accepted child; the residual sample is the bonus token and ends the step.
    """
    path = [0]
    node = 0
    while True:
        p = target(node)
        for child in np.flatnonzero(draft.parent == node).tolist():
            token = int(draft.tokens[child])
            if _coin(float(p[token]), generator):
                node = child
                path.append(node)
                break
            p[token] = 0.0
            p /= p.sum()
        else:
            bonus = int(torch.multinomial(p, 1, generator=generator))
            break
    nodes = np.asarray(path, dtype=np.int64)
    tokens = np.append(draft.tokens[nodes[1:]], bonus).astype(np.int64)
    return nodes, tokens


def _coin(probability: float, generator: torch.Generator) -> bool:
    """True with `probability`; certain outcomes draw no random number."""
    if probability <= 0.0:
        return False
    if probability >= 1.0:
        return True
    return torch.rand((), dtype=torch.float64, generator=generator).item() < probability
