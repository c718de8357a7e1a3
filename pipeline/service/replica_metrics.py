"""What each Generator replica counts itself, shown at the ingress's `/metrics` with a `replica`
label: its batch and its prefix cache (named as vLLM names them, `vllm:` -> `lookahead_rag:`, so
a vLLM dashboard needs only that prefix change), its n-gram sync (`lookahead_rag_ngram_*`) and
the model it runs (`lookahead_rag:model_info`, 1 with the model, dtype and device as labels).

The figures ride on each request's `Started` and `Finished` events (`pipeline.wire.ReplicaMetrics`)
and are the replica's own: counters stay cumulative, gauges are as of its latest event. A replica
sends nothing while it has no request, so once every request this ingress ran there has ended
(finished, failed, or left by its client, which sends no `Finished`) after its latest figures
came, its gauges of load (running, waiting) read 0 rather than keep the values of its last busy
moment: this ingress has nothing there, and with one ingress replica (the default) nobody has.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import replace

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from pipeline.wire import ReplicaMetrics, Tally

REPLICA_STALE_S = 900.0  # a replica unheard of for this long is gone (or idle): not shown
SERVING_PREFIX = "lookahead_rag:"

# Each replica's `SyncStats` field -> (metric name, type, help, label of a by-key count).
_SYNC_METRICS = {
    "fallbacks": (
        "store_fallbacks",
        "counter",
        "shared-store operations that failed (the replica drafted from local n-grams)",
        None,
    ),
    "bad_members": (
        "store_bad_members",
        "counter",
        "store members skipped: size, vocab (token id out of vocabulary) or count",
        "reason",
    ),
    "dropped": (
        "sync_dropped",
        "counter",
        "increments dropped past the pending bound (ngram) or answers past the queue",
        "what",
    ),
    "flushed": ("store_flushed", "counter", "n-gram increments sent", None),
    "pulls": ("store_pulls", "counter", "pulls that brought a new top k", None),
    "store_up": ("store_up", "gauge", "1 when the last store operation worked", None),
    "trie_nodes": ("global_trie_nodes", "gauge", "nodes of the current trie", None),
    "pending_ngrams": ("pending_ngrams", "gauge", "distinct n-grams not yet in the store", None),
}

# `ServingStats` field -> (vLLM's name, type, help).
_SERVING_METRICS = {
    "running": ("num_requests_running", "gauge", "requests holding a batch row"),
    "waiting": ("num_requests_waiting", "gauge", "requests waiting for a batch row"),
    "batch_sizes": ("iteration_batch_size", "histogram", "sequences decoded per forward pass"),
    "queue_seconds": (
        "request_queue_time_seconds",
        "histogram",
        "time a request waited for a batch row",
    ),
    "drafts": ("spec_decode_num_drafts", "counter", "drafts verified (one sequence, one step)"),
    "draft_tokens": ("spec_decode_num_draft_tokens", "counter", "drafted tokens verified"),
    "accepted_tokens": ("spec_decode_num_accepted_tokens", "counter", "drafted tokens accepted"),
    "answer_replays": (  # ours: vLLM has no such thing
        "answer_replays",
        "counter",
        "requests that drafted the answer their very prompt got before (replay_answers)",
    ),
}
# `PrefixCacheCounts` field -> (vLLM's name, type, help).
_PREFIX_CACHE_METRICS = {
    "queries": ("prefix_cache_queries", "counter", "prompt tokens looked up in the prefix cache"),
    "hits": ("prefix_cache_hits", "counter", "prompt tokens whose KV the prefix cache served"),
    "evictions": ("prefix_cache_evictions", "counter", "KV blocks evicted from the prefix cache"),
    "bytes": ("prefix_cache_bytes", "gauge", "bytes of KV the prefix cache holds"),
}
_PER_POSITION = (
    "spec_decode_num_accepted_tokens_per_pos",
    "drafted tokens accepted, by depth in the draft (0: the first drafted token)",
)


class ReplicaCollector(Collector):
    """The latest figures each Generator replica sent, one `replica` label per replica."""

    def __init__(self, stale_s: float = REPLICA_STALE_S) -> None:
        self.stale_s = stale_s
        self._latest: dict[str, tuple[float, ReplicaMetrics]] = {}
        self._running: dict[str, int] = {}  # this ingress's requests on each replica
        self._idle_since: dict[str, float] = {}  # when the last of them ended
        self._lock = threading.Lock()

    def update(self, snapshot: ReplicaMetrics) -> None:
        with self._lock:
            self._latest[snapshot.replica] = (time.monotonic(), snapshot)

    def begin(self, replica: str) -> None:
        """A request of this ingress started on `replica`."""
        with self._lock:
            self._running[replica] = self._running.get(replica, 0) + 1

    def end(self, replica: str) -> None:
        """A request of this ingress on `replica` is over (`begin` came first)."""
        with self._lock:
            left = self._running.pop(replica) - 1
            if left:
                self._running[replica] = left
            else:
                self._idle_since[replica] = time.monotonic()

    def collect(self) -> Iterable[Metric]:
        cutoff = time.monotonic() - self.stale_s
        with self._lock:
            self._latest = {k: v for k, v in self._latest.items() if v[0] >= cutoff}
            self._idle_since = {k: t for k, t in self._idle_since.items() if k in self._latest}
            latest = sorted(self._latest.items())
            snapshots = [self._current(name, at, snapshot) for name, (at, snapshot) in latest]
        sync = [s for s in snapshots if s.sync is not None]
        serving = [s for s in snapshots if s.serving is not None]
        models = [s for s in snapshots if s.model is not None]
        return [
            *(_sync_families(sync) if sync else ()),
            *_serving_families(serving),
            *(_model_families(models) if models else ()),
        ]

    def _current(self, replica: str, at: float, snapshot: ReplicaMetrics) -> ReplicaMetrics:
        """`snapshot`, with no load where every request of ours there ended after it came."""
        idle = replica not in self._running and self._idle_since.get(replica, -1.0) >= at
        if not idle or snapshot.serving is None:
            return snapshot
        return replace(snapshot, serving=replace(snapshot.serving, running=0, waiting=0))


def _model_families(snapshots: list[ReplicaMetrics]) -> list[Metric]:
    """An info metric (always 1): which model, dtype and device each replica runs."""
    family = GaugeMetricFamily(
        SERVING_PREFIX + "model_info",
        "the model a replica runs; dtype is what model.dtype (auto: per device) chose",
        labels=["replica", "model", "dtype", "device"],
    )
    for snapshot in snapshots:
        info = snapshot.model
        family.add_metric([snapshot.replica, info.name, info.dtype, info.device], 1.0)
    return [family]


def _sync_families(snapshots: list[ReplicaMetrics]) -> list[Metric]:
    families = []
    for field, (name, kind, documentation, by) in _SYNC_METRICS.items():
        family = Metric(f"lookahead_rag_ngram_{name}", documentation, kind)
        suffix = "_total" if kind == "counter" else ""
        for snapshot in snapshots:
            value = getattr(snapshot.sync, field)
            counts = value.items() if by else [(None, value)]
            for key, count in counts:
                labels = {by: key} if by else {}
                family.add_sample(
                    family.name + suffix, {**labels, "replica": snapshot.replica}, float(count)
                )
        families.append(family)
    return families


def _serving_families(snapshots: list[ReplicaMetrics]) -> list[Metric]:
    if not snapshots:
        return []
    kinds = {
        "gauge": GaugeMetricFamily,
        "counter": CounterMetricFamily,
        "histogram": HistogramMetricFamily,
    }
    families = []
    for field, (name, kind, documentation) in _SERVING_METRICS.items():
        family = kinds[kind](SERVING_PREFIX + name, documentation, labels=["replica"])
        for snapshot in snapshots:
            value = getattr(snapshot.serving, field)
            if isinstance(value, Tally):
                family.add_metric([snapshot.replica], _buckets(value), value.total)
            else:
                family.add_metric([snapshot.replica], float(value))
        families.append(family)
    cached = [s for s in snapshots if s.serving.prefix_cache is not None]
    for field, (name, kind, documentation) in _PREFIX_CACHE_METRICS.items():
        family = kinds[kind](SERVING_PREFIX + name, documentation, labels=["replica"])
        for snapshot in cached:
            family.add_metric(
                [snapshot.replica], float(getattr(snapshot.serving.prefix_cache, field))
            )
        if cached:
            families.append(family)
    name, documentation = _PER_POSITION
    family = CounterMetricFamily(
        SERVING_PREFIX + name, documentation, labels=["replica", "position"]
    )
    for snapshot in snapshots:
        for position, count in enumerate(snapshot.serving.accepted_per_position):
            family.add_metric([snapshot.replica, str(position)], float(count))
    families.append(family)
    return families


def _buckets(tally: Tally) -> list[tuple[str, float]]:
    """Cumulative counts per upper bound, `+Inf` last, as Prometheus histograms have them."""
    cumulative, out = 0, []
    for bound, count in zip((*tally.bounds, float("inf")), tally.counts, strict=True):
        cumulative += count
        out.append((floatToGoString(bound), float(cumulative)))
    return out
