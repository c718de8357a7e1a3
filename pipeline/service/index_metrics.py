"""Each Retriever replica's index version and size at the ingress's `/metrics`, labelled by
`replica`: the figures ride on every search's answer (`pipeline.wire.IndexState`), as the
Generator replicas' own figures ride on their events."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from pipeline.service.replica_metrics import REPLICA_STALE_S
from pipeline.wire import IndexState

_GAUGES = {
    "version": ("lookahead_rag_index_version", "the index version the replica searches"),
    "documents": ("lookahead_rag_index_documents", "documents in that version"),
    "chunks": ("lookahead_rag_index_chunks", "passages (chunks) in that version"),
}


class IndexCollector(Collector):
    def __init__(self) -> None:
        self._latest: dict[str, tuple[IndexState, float]] = {}
        self._lock = threading.Lock()

    def update(self, state: IndexState) -> None:
        with self._lock:
            self._latest[state.replica] = (state, time.monotonic())

    def states(self) -> list[IndexState]:
        """The latest state of every replica heard of lately, by replica name."""
        now = time.monotonic()
        with self._lock:
            fresh = [s for s, seen in self._latest.values() if now - seen < REPLICA_STALE_S]
        return sorted(fresh, key=lambda state: state.replica)

    def collect(self) -> Iterable[Metric]:
        states = self.states()
        for field, (name, text) in _GAUGES.items():
            family = GaugeMetricFamily(name, text, labels=["replica"])
            for state in states:
                family.add_metric([state.replica], getattr(state, field))
            yield family
