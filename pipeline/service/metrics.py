"""Prometheus metrics of the HTTP API, measured where users feel them: at the ingress.

Each app instance owns its registry (several apps in one process never share counters). With
more than one ingress replica, each exposes its own figures at `/metrics`; scrape them all.
What the Generator replicas count themselves (their batch and their n-gram sync) rides on each
request's events to the ingress and is shown here too, labelled by `replica`
(`pipeline.service.replica_metrics`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from pipeline.service.index_metrics import IndexCollector
from pipeline.service.replica_metrics import ReplicaCollector
from pipeline.wire import Finished, Started

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120)
_ITL_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 1, 2)
_RATE_BUCKETS = (1, 2, 5, 10, 15, 20, 30, 40, 60, 80, 120, 200, 400)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "lookahead_rag_requests", "HTTP requests answered", ["endpoint", "status"], registry=r
        )
        self.errors = Counter(
            "lookahead_rag_errors", "requests that failed", ["endpoint", "code"], registry=r
        )
        self.latency = Histogram(
            "lookahead_rag_request_seconds",
            "end-to-end latency of generating requests",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "lookahead_rag_time_to_first_token_seconds",
            "request arrival to the first generated text",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "lookahead_rag_inter_token_latency_seconds",
            "time per generated token after the first (a step's time over its tokens)",
            buckets=_ITL_BUCKETS,
            registry=r,
        )
        self.tokens_per_second = Histogram(
            "lookahead_rag_tokens_per_second",
            "decoding speed of a request (completion tokens over decode time)",
            buckets=_RATE_BUCKETS,
            registry=r,
        )
        self.completion_tokens = Counter(
            "lookahead_rag_completion_tokens", "tokens generated", registry=r
        )
        self.prompt_tokens = Counter("lookahead_rag_prompt_tokens", "prompt tokens", registry=r)
        self.cancelled = Counter(
            "lookahead_rag_cancelled_requests",
            "generating requests that ended before their answer: the client left or the "
            "request was cancelled",
            ["endpoint"],
            registry=r,
        )
        self.cancelled_tokens = Counter(
            "lookahead_rag_cancelled_tokens",
            "tokens generated for cancelled requests (those the ingress had received)",
            registry=r,
        )
        # Drafted and accepted tokens are counted once, per replica, as vLLM names them
        # (`lookahead_rag:spec_decode_*`, pipeline.service.replica_metrics).
        self.steps = Counter(
            "lookahead_rag_decode_steps",
            "decoding steps summed over requests (a batched forward pass counts once for each "
            "request in it)",
            registry=r,
        )
        mean = Gauge(
            "lookahead_rag_mean_accepted_length",
            "tokens emitted per decoding step (1 + accepted drafts), over all requests",
            registry=r,
        )
        mean.set_function(self._mean_accepted_length)
        self.replicas = ReplicaCollector()
        r.register(self.replicas)
        self.index = IndexCollector()
        r.register(self.index)
        self._emitted = 0  # mirrors of two counters, for the gauge
        self._stepped = 0

    def _mean_accepted_length(self) -> float:
        return self._emitted / self._stepped if self._stepped else 0.0

    def record_answer(
        self, endpoint: str, seconds: float, prompt_tokens: int, finished: Finished
    ) -> None:
        stats, tokens = finished.stats, finished.completion_tokens
        self.latency.labels(endpoint).observe(seconds)
        self.prompt_tokens.inc(prompt_tokens)
        self.completion_tokens.inc(tokens)
        self.steps.inc(stats.steps)
        self._emitted += tokens
        self._stepped += stats.steps
        if finished.replica is not None:
            self.replicas.update(finished.replica)
        if stats.decode_seconds > 0:
            self.tokens_per_second.observe(tokens / stats.decode_seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def trace(self, endpoint: str, arrived: float) -> Trace:
        """Timing of one request that arrived at `arrived` (`time.perf_counter()`)."""
        return Trace(self, endpoint, arrived)


@dataclass
class Trace:
    """Timing of one generating request, fed event by event as they leave the ingress."""

    metrics: Metrics
    endpoint: str
    started: float
    last: float | None = None
    tokens: int = 0
    replica: str | None = None  # the Generator replica running it, once it has started

    def on_start(self, started: Started) -> None:
        if started.replica is not None:
            self.replica = started.replica.replica
            self.metrics.replicas.update(started.replica)
            self.metrics.replicas.begin(self.replica)

    def on_tokens(self, n_tokens: int) -> None:
        """A decoding step's tokens arrived: the first ones set TTFT, later ones the ITL."""
        if not n_tokens:
            return
        self.tokens += n_tokens
        now = time.perf_counter()
        if self.last is None:
            self.metrics.ttft.labels(self.endpoint).observe(now - self.started)
        else:
            gap = (now - self.last) / n_tokens
            for _ in range(n_tokens):
                self.metrics.itl.observe(gap)
        self.last = now

    def on_finish(self, prompt_tokens: int, finished: Finished) -> None:
        self.metrics.record_answer(
            self.endpoint, time.perf_counter() - self.started, prompt_tokens, finished
        )

    def on_end(self) -> None:
        """The request is over on its replica, however it ended."""
        if self.replica is not None:
            self.metrics.replicas.end(self.replica)
            self.replica = None

    def on_cancel(self) -> None:
        """The request ended before its answer did: the tokens so far were made for nobody."""
        self.metrics.cancelled.labels(self.endpoint).inc()
        self.metrics.cancelled_tokens.inc(self.tokens)
