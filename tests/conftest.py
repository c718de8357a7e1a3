"""Fixtures shared by every test package."""

import os
from collections.abc import Callable, Mapping

import pytest
from hypothesis import settings

from benchmarks.local_redis import LocalRedis

# Property tests check behaviour, never speed: no per-example deadline (CI may run on a loaded
# machine, where a 200 ms default fails examples that are merely slow).
settings.register_profile("no_deadline", deadline=None)
settings.load_profile("no_deadline")

APP_PREFIX = "LOOKAHEAD_RAG__"
# A few stdlib modules: a real corpus, small enough to embed in seconds.
SMALL_CORPUS = ("json", "functools", "subprocess", "pathlib", "csv", "itertools")


@pytest.fixture(autouse=True)
def _no_app_environment(monkeypatch):
    """The service reads `LOOKAHEAD_RAG__*` variables: a developer's own must not change what a
    test configures."""
    for name in list(os.environ):
        if name.startswith(APP_PREFIX):
            monkeypatch.delenv(name)


@pytest.fixture
def app_environment(monkeypatch) -> Callable[[Mapping[str, str]], None]:
    """Set the process environment the configuration reads: exactly `variables`, for this test."""

    def use(variables: Mapping[str, str]) -> None:
        for name in list(os.environ):
            if name.startswith(APP_PREFIX):
                monkeypatch.delenv(name)
        for name, value in variables.items():
            monkeypatch.setenv(name, value)

    return use


@pytest.fixture(scope="session")
def tokenizer():
    """The default model's tokenizer (byte-level BPE; its first ids also serve tiny models)."""
    from transformers import AutoTokenizer

    from generation.models import bundled_dir

    return AutoTokenizer.from_pretrained(bundled_dir())


@pytest.fixture
def redis_server():
    """A private, empty redis-server on a free loopback port, stopped by PID afterwards. Tests
    may `stop()` it (a crash), `start()` it again (empty, same port), or `pause()` it."""
    server = LocalRedis().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def session_redis():
    """One private redis-server for the whole session (the Serve app's replicas share it)."""
    with LocalRedis() as server:
        yield server


@pytest.fixture(scope="session")
def small_index_dir(tmp_path_factory):
    """A real index (default embedder, FAISS) over a few stdlib modules, built once a session."""
    from retrieval import build_index, stdlib_documents

    out = tmp_path_factory.mktemp("index") / "stdlib-small"
    build_index(stdlib_documents(list(SMALL_CORPUS)), out=out)
    return out
