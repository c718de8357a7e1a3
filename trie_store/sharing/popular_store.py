"""Where replicas pool their popular n-grams: the store interface, its policies, and the
in-process store (`redis_store` is the shared one; `connect.store_from_url` picks).

Policies, the same in every store:
- Members are packed n-grams (`ngram_counter`), scored by decayed count, one scored set per
  namespace. The namespace names the model and tokenizer (`model_namespace`), so two models
  never mix token ids.
- Decay: a count halves every `half_life_s` seconds of store time (the Redis server's clock, so
  replica clocks never matter). It is applied by inflating each new increment by
  2 ** ((now - epoch) / half_life_s) rather than deflating every stored score: nothing is
  touched per tick, and stored scores compare directly. When the factor passes 2**32 (every 32
  half-lives) the set is divided by it once and the epoch moves to now. Reads divide by the
  current factor, so counts come back as decayed sightings, the unit the trie's prior assumes.
- Bounded: after every add the set is trimmed to its `cap` lowest-scored-first, i.e. the
  n-grams least used lately go: decayed least-frequently-used.
- Idempotent adds: an add carries a batch id, and a store whose add can fail after applying it
  (a lost reply) applies a retried batch once.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from operator import itemgetter
from typing import Protocol

import numpy as np

from trie_store.config import as_int
from trie_store.sharing.members import TOKEN_BYTES

RESCALE_AT = 2.0**32


@dataclass(frozen=True)
class StorePolicy:
    """cap: members kept per namespace. half_life_s: how fast popularity fades. max_top_k: the
    most members one read may ask for (bounds a reply's size)."""

    cap: int = 200_000
    half_life_s: float = 6 * 3600.0
    max_top_k: int = 100_000

    def __post_init__(self) -> None:
        as_int(self.cap, "cap", minimum=1)
        as_int(self.max_top_k, "max_top_k", minimum=1)
        if not (isinstance(self.half_life_s, (int, float)) and 0 < self.half_life_s < math.inf):
            raise ValueError(f"half_life_s must be a finite number > 0, got {self.half_life_s!r}")


@dataclass(frozen=True)
class TopNgrams:
    """The most popular members of a namespace, best first, counts decayed to the store's now.
    `version` changes whenever an add changes the set; `skipped` counts members among the best
    `k` that were not sent: not a whole number of tokens, or longer than the reader's n-grams
    (checked where the data lives, so a huge foreign member never crosses the network)."""

    version: str
    members: list[bytes]
    counts: np.ndarray
    skipped: int = 0


class StoreError(Exception):
    """The shared store is unreachable, too slow, or answered nonsense. Replicas treat it as a
    fallback to their local n-grams, never as a request error."""


class PopularStore(Protocol):
    """The shared popular n-gram store of one namespace."""

    namespace: str

    def add(self, counts: Mapping[bytes, float], batch_id: str) -> None:
        """Add `counts[member]` sightings of each member, now."""

    def top(self, k: int, max_tokens: int, seen_version: str | None = None) -> TopNgrams | None:
        """The `k` best members (those of 1..max_tokens tokens), or None when the set is still
        at `seen_version`."""

    def close(self) -> None:
        """Release connections."""


def model_namespace(model: str, vocab_size: int, vocab: Mapping[str, int] | None = None) -> str:
    """A namespace naming the model and its tokenizer: the same token ids mean the same text
    exactly when the model name, vocabulary size and token -> id table agree."""
    vocab_size = as_int(vocab_size, "vocab_size", minimum=1)
    identity = json.dumps([model, vocab_size, sorted((vocab or {}).items())]).encode()
    return hashlib.sha256(identity).hexdigest()[:24]


def decay_factor(elapsed_s: float, half_life_s: float) -> float:
    """The weight of a sighting `elapsed_s` after the epoch, relative to one at the epoch."""
    return 2.0 ** (elapsed_s / half_life_s)


def checked_top_args(k: int, max_tokens: int, policy: StorePolicy) -> tuple[int, int]:
    k = as_int(k, "k", minimum=1)
    if k > policy.max_top_k:
        raise ValueError(f"k={k} exceeds the store's max_top_k={policy.max_top_k}")
    return k, as_int(max_tokens, "max_tokens", minimum=1)


def member_fits(member: bytes, max_tokens: int) -> bool:
    return 0 < len(member) <= TOKEN_BYTES * max_tokens and len(member) % TOKEN_BYTES == 0


class InProcessStore:
    """The store of a replica without Redis: a dict, the same policies, never fails."""

    def __init__(
        self,
        namespace: str = "local",
        policy: StorePolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.namespace = namespace
        self.policy = policy or StorePolicy()
        self._clock = clock
        self._epoch = clock()
        self._scores: dict[bytes, float] = {}
        self._version = 0
        self._lock = threading.Lock()

    def add(self, counts: Mapping[bytes, float], batch_id: str) -> None:
        with self._lock:
            factor = self._factor()
            scores = self._scores
            for member, count in counts.items():
                scores[member] = scores.get(member, 0.0) + count * factor
            if len(scores) > self.policy.cap:
                kept = heapq.nlargest(self.policy.cap, scores.items(), key=itemgetter(1))
                self._scores = dict(kept)
            self._version += 1

    def top(self, k: int, max_tokens: int, seen_version: str | None = None) -> TopNgrams | None:
        k, max_tokens = checked_top_args(k, max_tokens, self.policy)
        with self._lock:
            if seen_version == str(self._version):
                return None
            best = heapq.nlargest(k, self._scores.items(), key=itemgetter(1))
            sent = [(m, score) for m, score in best if member_fits(m, max_tokens)]
            factor = self._factor()
            return TopNgrams(
                version=str(self._version),
                members=[member for member, _ in sent],
                counts=np.array([score for _, score in sent], dtype=np.float64) / factor,
                skipped=len(best) - len(sent),
            )

    def close(self) -> None:
        """Nothing to release."""

    def _factor(self) -> float:
        now = self._clock()
        factor = decay_factor(now - self._epoch, self.policy.half_life_s)
        if factor > RESCALE_AT:
            self._scores = {m: s / factor for m, s in self._scores.items()}
            self._epoch, factor = now, 1.0
        return factor
