"""What the Generator replicas count reaches the ingress's /metrics, one `replica` label each."""

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.service.metrics import Metrics, ReplicaCollector
from pipeline.wire import AnswerStats, Finished, ReplicaMetrics
from trie_store.sharing import SyncStats


def _snapshot(name: str, fallbacks: int, nodes: int) -> ReplicaMetrics:
    stats = SyncStats(fallbacks=fallbacks, bad_members={"size": 2}, trie_nodes=nodes)
    return ReplicaMetrics(name, stats)


def _finished(replica: ReplicaMetrics | None) -> Finished:
    return Finished("stop", 3, AnswerStats(2, 1.5, 4, 1, 0.1, True), replica)


def _samples(metrics: Metrics) -> dict:
    text = metrics.exposition().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_each_replica_shows_its_latest_figures_under_its_own_label():
    metrics = Metrics()
    metrics.record_answer("/v1/rag", 0.5, 10, _finished(_snapshot("a:1", 1, 100)))
    metrics.record_answer("/v1/rag", 0.5, 10, _finished(_snapshot("b:2", 0, 70)))
    metrics.record_answer("/v1/rag", 0.5, 10, _finished(_snapshot("a:1", 3, 120)))  # newer
    metrics.record_answer("/v1/rag", 0.5, 10, _finished(None))  # no sync: nothing to add
    samples = _samples(metrics)
    fallbacks = "lookahead_rag_ngram_store_fallbacks_total"
    assert samples[(fallbacks, (("replica", "a:1"),))] == 3
    assert samples[(fallbacks, (("replica", "b:2"),))] == 0
    nodes = "lookahead_rag_ngram_global_trie_nodes"
    assert samples[(nodes, (("replica", "a:1"),))] == 120
    assert samples[(nodes, (("replica", "b:2"),))] == 70
    bad = "lookahead_rag_ngram_store_bad_members_total"
    assert samples[(bad, (("reason", "size"), ("replica", "b:2")))] == 2


def test_a_replica_unheard_of_for_too_long_is_dropped(monkeypatch):
    collector = ReplicaCollector(stale_s=60)
    clock = [1000.0]
    monkeypatch.setattr("pipeline.service.metrics.time.monotonic", lambda: clock[0])
    collector.update(_snapshot("old:1", 0, 5))
    clock[0] += 30
    collector.update(_snapshot("new:2", 0, 6))
    clock[0] += 45  # old:1 is 75 s old, new:2 45 s
    replicas = {s.labels["replica"] for family in collector.collect() for s in family.samples}
    assert replicas == {"new:2"}


@pytest.mark.parametrize("n", [0, 1])
def test_the_exposition_stays_valid_with_or_without_replicas(n):
    metrics = Metrics()
    if n:
        metrics.record_answer("/v1/rag", 0.5, 10, _finished(_snapshot("a:1", 0, 1)))
    names = {f.name for f in text_string_to_metric_families(metrics.exposition().decode())}
    assert "lookahead_rag_requests" in names
    assert ("lookahead_rag_ngram_store_fallbacks" in names) == bool(n)
