"""`NgramSync`: one replica's side of the shared popular n-grams.

The request path only ever does two cheap things: `global_trie()` (read one reference: the
trie a request drafts from never changes under it) and `record(answer)` (append to a bounded
queue). Everything else runs on one background thread: counting answer windows, flushing the
increments to the store in batches, pulling the store's top k, and rebuilding the trie, which
is then swapped in whole.

The trie a replica drafts from is the last pulled top k plus its own counts the pull did not
include yet (recorded after it, or never flushed). So a replica without its store (down, slow,
or never configured) keeps drafting from its own answers, and loses nothing it learnt.

Failure policy: a store operation that fails (timeout, connection, malformed reply) counts one
fallback, and the store is left alone for a backoff that doubles per failure (`retry_base_s`
up to `retry_max_s`, jittered); then the same batch is retried (its id makes the retry apply
once) and the replica pulls again at once: resync. Unflushed increments are held for at most
`max_pending` distinct n-grams: while the store is away, new n-grams past that bound are
dropped (counted) while held ones keep counting; answers past `max_queued_answers` waiting to
be counted are dropped (counted). What is still unflushed at `close()` after one last try is
lost, and logged. `stats()` gives the figures (a `SyncStats`); the service exports them.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace

import numpy as np

from trie_store.config import TrieConfig, as_int
from trie_store.global_trie import GlobalTrie
from trie_store.sharing.members import BoundedCounts, answer_ngrams
from trie_store.sharing.popular_store import PopularStore, StoreError
from trie_store.sharing.popular_trie import build_trie, decode_members, join
from trie_store.tokens import as_tokens

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyncConfig:
    """top_k: store members pulled into the trie (a 256-token answer makes 256 of them).
    Intervals in seconds; the trie is rebuilt at pull time when anything changed."""

    top_k: int = 16_384
    flush_interval_s: float = 2.0
    pull_interval_s: float = 10.0
    max_batch: int = 4096  # members per store add
    max_pending: int = 200_000
    max_queued_answers: int = 1024
    retry_base_s: float = 0.5
    retry_max_s: float = 30.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int":
                as_int(value, f.name, minimum=1)
            elif isinstance(value, bool) or not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"{f.name} must be a number > 0, got {value!r}")


@dataclass(frozen=True)
class SyncStats:
    """One replica's sync figures; the counts are cumulative since it started.

    fallbacks: store operations that failed (the replica drafted from local n-grams).
    bad_members: store members skipped, by reason: size, vocab (an id outside the vocabulary)
        or count. dropped: increments dropped past the pending bound ("ngram") and answers past
        the queue ("answer"). pending_ngrams: distinct n-grams not yet in the store.
    """

    store_up: bool = True
    fallbacks: int = 0
    flushed: int = 0  # n-gram increments sent
    pulls: int = 0  # pulls that brought a new top k
    trie_nodes: int = 0
    pending_ngrams: int = 0
    bad_members: Mapping[str, int] = field(default_factory=dict)
    dropped: Mapping[str, int] = field(default_factory=dict)

    def plus(self, **counts: int | Mapping[str, int]) -> SyncStats:
        """These figures with `counts` added (a mapping adds key by key)."""
        changes: dict[str, object] = {}
        for name, more in counts.items():
            now = getattr(self, name)
            if isinstance(more, Mapping):
                changes[name] = {k: now.get(k, 0) + more.get(k, 0) for k in {*now, *more}}
            else:
                changes[name] = now + more
        return replace(self, **changes)


class NgramSync:
    """Shares the answer n-grams of this replica through `store`, and keeps the global trie."""

    def __init__(
        self,
        store: PopularStore,
        vocab_size: int,
        trie_config: TrieConfig | None = None,
        config: SyncConfig | None = None,
    ) -> None:
        self.store = store
        self.vocab_size = as_int(vocab_size, "vocab_size", minimum=1)
        self.trie_config = trie_config or TrieConfig()
        self.config = config or SyncConfig()
        self._stats = SyncStats()
        self._stats_lock = threading.Lock()  # the request path counts dropped answers too
        self._answers: deque[np.ndarray] = deque()
        self._answers_lock = threading.Lock()
        self._pending = BoundedCounts(self.config.max_pending)  # not yet sent
        self._inflight: tuple[str, dict[bytes, float]] | None = None  # sent, not acknowledged
        self._unpulled = BoundedCounts(self.config.max_pending)  # own counts the pull lacks
        self._pulled = decode_members([], [], self.trie_config, self.vocab_size)
        self._seen_version: str | None = None
        self._dirty = False
        self._trie = GlobalTrie(self.trie_config)
        self._failures = 0
        self._resync = False
        now = time.monotonic()
        self._retry_at = self._flush_at = self._pull_at = now
        self._cycle_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def global_trie(self) -> GlobalTrie:
        """The current trie: read only, and never changed once handed out."""
        return self._trie

    def record(self, answer_tokens: object) -> None:
        """Count a finished answer's n-grams (later, off the request path)."""
        tokens = as_tokens(answer_tokens, "answer_tokens")
        if tokens.size and int(tokens.max()) >= self.vocab_size:
            raise ValueError(f"answer_tokens hold an id >= vocab_size {self.vocab_size}")
        with self._answers_lock:
            if len(self._answers) >= self.config.max_queued_answers:
                self._count(dropped={"answer": 1})
                return
            self._answers.append(tokens)

    def start(self) -> NgramSync:
        """Start the background thread (a daemon: it never keeps a process alive)."""
        if self._thread is not None:
            raise RuntimeError("this NgramSync was started already")
        self._thread = threading.Thread(target=self._run, name="ngram-sync", daemon=True)
        self._thread.start()
        return self

    def sync_now(self) -> bool:
        """One full cycle on the caller's thread: count, flush, pull, rebuild (tests, batch
        jobs, benchmarks). True when the store answered."""
        with self._cycle_lock:
            return self._cycle(force=True)

    def close(self) -> None:
        """Stop the thread, try one last flush, release the store."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._cycle_lock:
            self._count_answers()
            try:
                self._flush()
            except StoreError as err:
                self._count(fallbacks=1)
                log.warning("closing with %d n-grams unflushed: %s", self._unflushed(), err)
        self.store.close()

    def __enter__(self) -> NgramSync:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> SyncStats:
        """The figures as of now."""
        with self._stats_lock:
            stats = self._stats
        return replace(stats, trie_nodes=len(self._trie), pending_ngrams=self._unflushed())

    def _count(self, **counts: int | Mapping[str, int]) -> None:
        with self._stats_lock:
            self._stats = self._stats.plus(**counts)

    def _set_store_up(self, up: bool) -> None:
        with self._stats_lock:
            self._stats = replace(self._stats, store_up=up)

    def _unflushed(self) -> int:
        return len(self._pending) + (len(self._inflight[1]) if self._inflight else 0)

    def _run(self) -> None:
        while not self._stop.wait(max(0.0, min(self._flush_at, self._pull_at) - time.monotonic())):
            try:
                with self._cycle_lock:
                    self._cycle(force=False)
            except Exception:  # a bug here must not end sharing for the replica's life
                log.exception("n-gram sync cycle failed")
                self._stop.wait(self.config.retry_max_s)

    def _cycle(self, force: bool) -> bool:
        now = time.monotonic()
        self._count_answers()
        flush_due = force or now >= self._flush_at
        pull_due = force or now >= self._pull_at
        answered = False
        if force or now >= self._retry_at:
            pull_due = pull_due or self._resync
            try:
                if flush_due:
                    self._flush()
                if pull_due:
                    self._pull()
                answered = True
                self._store_answered()
            except StoreError as err:
                self._store_failed(err, now)
        if flush_due:
            self._flush_at = now + self.config.flush_interval_s
        if pull_due:
            self._pull_at = now + self.config.pull_interval_s
            if self._dirty:
                self._rebuild()
        return answered

    def _count_answers(self) -> None:
        with self._answers_lock:
            answers, self._answers = self._answers, deque()
        for tokens in answers:
            counts = answer_ngrams(tokens, self.trie_config)
            dropped = self._pending.dropped
            self._pending.add(counts)
            self._unpulled.add(counts)
            if self._pending.dropped > dropped:
                self._count(dropped={"ngram": self._pending.dropped - dropped})
            self._dirty = True

    def _flush(self) -> None:
        while True:
            if self._inflight is None:
                batch = self._pending.take(self.config.max_batch)
                if not batch:
                    return
                self._inflight = (uuid.uuid4().hex, batch)
            batch_id, batch = self._inflight
            self.store.add(batch, batch_id)
            self._inflight = None
            self._count(flushed=len(batch))

    def _pull(self) -> None:
        top = self.store.top(
            self.config.top_k, self.trie_config.branch_length + 1, self._seen_version
        )
        if top is None:
            return
        pulled = decode_members(top.members, top.counts, self.trie_config, self.vocab_size)
        bad = {**pulled.bad, "size": pulled.bad.get("size", 0) + top.skipped}
        self._count(bad_members={reason: n for reason, n in bad.items() if n})
        self._pulled, self._seen_version = pulled, top.version
        self._unpulled.clear()  # what the store holds is in the pull now; the rest is not
        self._unpulled.add(self._pending.copy())
        if self._inflight is not None:
            self._unpulled.add(self._inflight[1])
        self._dirty = True
        self._count(pulls=1)

    def _rebuild(self) -> None:
        own = self._unpulled.copy()
        local = decode_members(list(own), list(own.values()), self.trie_config, self.vocab_size)
        self._trie = build_trie(join(self._pulled, local), self.trie_config)
        self._dirty = False

    def _store_answered(self) -> None:
        if self._failures:
            log.info("shared n-gram store is back after %d failures: resynced", self._failures)
        self._failures, self._resync = 0, False
        self._set_store_up(True)

    def _store_failed(self, err: StoreError, now: float) -> None:
        if not self._failures:
            log.warning("shared n-gram store failed, drafting from local n-grams: %s", err)
        self._failures += 1
        self._resync = True
        doubling = 2.0 ** min(self._failures - 1, 60)
        delay = min(self.config.retry_max_s, self.config.retry_base_s * doubling)
        self._retry_at = now + delay * random.uniform(0.5, 1.0)
        self._count(fallbacks=1)
        self._set_store_up(False)
