"""Fixtures shared by every test package."""

import pytest

from benchmarks.local_redis import LocalRedis


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
