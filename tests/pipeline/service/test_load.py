"""A bounded load on the real Serve app: 50 requests at concurrency 8, small answers. None may
fail, and once a warm-up pass has set the Generators' working sets, their memory must hold."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest
from servehelpers import AUTH, GENERATOR_REPLICAS, wait_for_generators

QUESTIONS = (
    "How do I parse a JSON string into a Python object?",
    "What does functools.partial do?",
    "How do I run a subprocess and capture its output?",
    "How do I read a CSV file?",
    "What does itertools.groupby do?",
)
CONCURRENCY = 8


@pytest.fixture(scope="module")
def client(serve_app):
    url, _ = serve_app
    limits = httpx.Limits(max_connections=CONCURRENCY)
    timeout = httpx.Timeout(10.0, read=300.0)
    with httpx.Client(base_url=url, headers=AUTH, timeout=timeout, limits=limits) as c:
        yield c


def _generator_processes() -> list[psutil.Process]:
    """The Generator replicas among this process's descendants (Ray names its workers)."""
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            title = " ".join(process.cmdline())
        except psutil.Error:
            continue
        if "ServeReplica" in title and "Generator" in title:
            found.append(process)
    return found


def _load(client, requests: int) -> list[httpx.Response]:
    def ask(i: int) -> httpx.Response:
        question = QUESTIONS[i % len(QUESTIONS)]
        return client.post("/v1/rag", json={"question": question, "max_tokens": 8})

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        return list(pool.map(ask, range(requests)))


@pytest.mark.load  # opt-in (-m load): minutes of answers; `bench-soak` is the longer soak
def test_fifty_requests_at_concurrency_eight_all_succeed_and_memory_holds(serve_app, client):
    wait_for_generators(serve_app)
    generators = _generator_processes()
    assert len(generators) == GENERATOR_REPLICAS
    warm = _load(client, 2 * CONCURRENCY)
    assert [r.status_code for r in warm] == [200] * len(warm)
    before = sum(p.memory_info().rss for p in generators)
    responses = _load(client, 50)
    failed = [(r.status_code, r.text[:200]) for r in responses if r.status_code != 200]
    assert failed == []
    assert all(r.json()["usage"]["completion_tokens"] >= 1 for r in responses)
    after = sum(p.memory_info().rss for p in generators)
    assert after < 1.10 * before, f"Generator RSS grew from {before >> 20} MiB to {after >> 20} MiB"
