"""What crosses between the ingress and the Generator: a `GenerationJob` one way; back, from a
Serve Generator replica, `Admitted` (at once), `Started`, `Queued` (only while it waits for a batch
row), then `Delta`s, then `Finished`; in-process and batch paths send `Started`, `Delta`s,
`Finished`.

The same types flow in-process (`RagPipeline.stream`) and across Ray, so they are small frozen
dataclasses that pickle cheaply, in a module that imports neither torch nor Ray. The HTTP
schemas use `SourceRef` and `AnswerStats` as they are.
"""

from __future__ import annotations

import bisect
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from trie_store.sharing.sync import SyncStats


class ContextTooLongError(ValueError):
    """The request alone, without any passage, does not fit the context budget."""


@dataclass(frozen=True)
class GenerationJob:
    """One request for the Generator: a chat (`messages`) or a raw completion (`prompt`)."""

    messages: tuple[dict[str, str], ...] = ()
    prompt: str | None = None
    passages: Sequence[Any] = ()  # retrieved, best first: all seed the trie
    top_k: int = 0  # how many of `passages` may go into the prompt
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    lookahead: bool = True
    prefix_cache: bool = True  # False: its prompt neither reuses cached KV nor is cached
    # Sampling (`generation.SamplingParams`); the defaults are greedy decoding.
    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None


@dataclass(frozen=True)
class SourceRef:
    """A passage that went into the prompt, with its text (as retrieved: one index passage,
    so its size is bounded by the index's chunking) for clients that show or cite it."""

    id: str
    title: str
    source: str
    score: float
    text: str


@dataclass(frozen=True)
class Tally:
    """A histogram as counted inside a replica and shown by the ingress: observations per
    bucket (`counts[i]`: at most `bounds[i]`, the last one above every bound) and their sum."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...] = ()
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            object.__setattr__(self, "counts", (0,) * (len(self.bounds) + 1))

    def add(self, value: float) -> Tally:
        i = bisect.bisect_left(self.bounds, value)
        counts = (*self.counts[:i], self.counts[i] + 1, *self.counts[i + 1 :])
        return Tally(self.bounds, counts, self.total + value)

    @property
    def count(self) -> int:
        return sum(self.counts)


BATCH_BOUNDS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128)  # sequences per decode step
QUEUE_BOUNDS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60)  # seconds


@dataclass(frozen=True)
class PrefixCacheCounts:
    """A replica's prefix cache as vLLM counts it: prompt tokens looked up and served from it,
    blocks evicted (counters), and its size in bytes now."""

    queries: int = 0
    hits: int = 0
    evictions: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class ServingStats:
    """A Generator replica's batch: its load now and its decoding so far (counters only grow).

    Spec-decode figures count as vLLM counts them: a draft is one sequence's drafted tree in one
    step (none when it drafted nothing), its tokens the tree's nodes, and `accepted_per_position`
    how often the drafted token at depth i + 1 was accepted."""

    running: int = 0  # sequences holding a batch row
    waiting: int = 0  # admitted, waiting for a row (oldest first)
    batch_sizes: Tally = Tally(BATCH_BOUNDS)  # sequences per decode step
    queue_seconds: Tally = Tally(QUEUE_BOUNDS)  # admitted -> given a row
    drafts: int = 0
    draft_tokens: int = 0
    accepted_tokens: int = 0
    accepted_per_position: tuple[int, ...] = ()
    answer_replays: int = 0  # requests that drafted their very prompt's previous answer
    prefix_cache: PrefixCacheCounts | None = None  # None: the replica has no prefix cache


def replica_name() -> str:
    """How a replica is named in the metrics: host and process."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class ModelInfo:
    """The model a replica runs, as loaded: `dtype` is what `model.dtype: auto` chose there."""

    name: str
    dtype: str
    device: str


@dataclass(frozen=True)
class ReplicaMetrics:
    """A Generator replica's own figures as of one event: its n-gram sync and its batch.

    They are counted inside the replica, but users scrape the ingress: the events carry them
    there, and `/metrics` shows the latest of every replica, labelled by `replica`.
    """

    replica: str
    sync: SyncStats | None = None
    serving: ServingStats | None = None
    model: ModelInfo | None = None


@dataclass(frozen=True)
class IndexState:
    """The index version a Retriever replica searched, as of one search (for `/metrics`)."""

    replica: str
    version: int  # 0: an index directory from before versions
    documents: int
    chunks: int


@dataclass(frozen=True)
class Retrieved:
    """A search's passages, best first, all from the one index version `index` names."""

    passages: tuple[Any, ...]
    index: IndexState


@dataclass(frozen=True)
class Admitted:
    """The Generator replica took the request (it will decode it or keep it queued), sent the
    moment it passes the replica's gate, before the request is prepared: a client hears within
    a moment that it was admitted, even while the model thread is busy with a long step."""


@dataclass(frozen=True)
class Queued:
    """The request waits for a batch row: `ahead` requests get one before it, and it leaves the
    queue with `QueueTimeoutError` if it has none after `max_wait_s` (from its admission)."""

    ahead: int
    max_wait_s: float


@dataclass(frozen=True)
class Started:
    prompt_tokens: int
    sources: tuple[SourceRef, ...]
    replica: ReplicaMetrics | None = None  # as the request got its place in the batch
    index_version: int | None = None  # the version the sources came from (set by the ingress)


@dataclass(frozen=True)
class Delta:
    """One decoding step's output: its tokens and the text they release (may be "").

    A step emits the drafted tokens its forward pass accepted, then one of the model's own;
    `n_accepted` counts those drafted ones among the `n_tokens` emitted (a stop string or the
    token budget may cut the last step short, bonus token included)."""

    text: str
    n_tokens: int
    n_accepted: int


@dataclass(frozen=True)
class AnswerStats:
    """How an answer was decoded: the one summary type the HTTP schemas, the batch records and
    the metrics all use. Steps are forward passes; each yields 1 + accepted tokens."""

    steps: int
    tokens_per_step: float
    draft_tokens: int  # drafted nodes sent to verification, all steps
    accepted_tokens: int  # drafted nodes accepted, all steps
    decode_seconds: float  # prefill and every step
    lookahead: bool
    cached_prompt_tokens: int = 0  # prompt tokens whose KV the prefix cache served


@dataclass(frozen=True)
class Finished:
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    completion_tokens: int
    stats: AnswerStats
    replica: ReplicaMetrics | None = None


Event = Admitted | Started | Queued | Delta | Finished


@dataclass
class Answer:
    """All events of a request folded together."""

    text: str = ""
    prompt_tokens: int = 0
    sources: tuple[SourceRef, ...] = ()
    finished: Finished | None = None
    index_version: int | None = None

    def add(self, event: Event) -> None:
        if isinstance(event, Started):
            self.prompt_tokens, self.sources = event.prompt_tokens, event.sources
            self.index_version = event.index_version
        elif isinstance(event, Delta):
            self.text += event.text
        elif isinstance(event, Finished):
            self.finished = event

    @classmethod
    def collect(cls, events: Iterable[Event]) -> Answer:
        answer = cls()
        for event in events:
            answer.add(event)
        return answer
