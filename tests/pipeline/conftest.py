import psutil
import pytest


@pytest.fixture(scope="session")
def lm():
    """The real default model (converted once, then loaded in well under a second), in float32
    on any machine (answers are compared token for token; see `servehelpers`)."""
    from generation.models import load_model

    return load_model(dtype="float32")


@pytest.fixture(scope="module")
def local_ray():
    """A local loopback Ray for the module's tests (commands run inside it reuse it)."""
    from pipeline import ray_runtime
    from pipeline.config import Config

    with ray_runtime.connected(Config(), quiet=True):
        yield


@pytest.fixture(scope="session")
def serve_app(small_index_dir, session_redis, tmp_path_factory):
    """One Ray + Serve app for every HTTP test of the session, deployed as on a cluster: two
    Generator replicas (one CPU, one torch thread each; batches of `MAX_BATCH` with `MAX_QUEUED`
    waiting) sharing n-grams through a real Redis, syncing every second, callers let in by an
    API key from a key file (`servehelpers.AUTH`), the admin routes open to `ADMIN_AUTH` (the
    IndexBuilder deployed), Retrievers checking for a new index version every
    `WATCH_INTERVAL_S`, header and body deadlines of a few seconds. Afterwards no Ray process of
    ours may be left (checked by PID)."""
    from servehelpers import (
        ADMIN_KEY,
        API_KEY,
        BODY_TIMEOUT_S,
        GENERATOR_REPLICAS,
        HEADER_TIMEOUT_S,
        MAX_BATCH,
        MAX_QUEUED,
        WATCH_INTERVAL_S,
        small_limits_config,
    )

    from pipeline import ray_runtime
    from pipeline.ports import free_port
    from pipeline.service.app import deploy

    key_file = tmp_path_factory.mktemp("keys") / "api-keys"
    key_file.write_text(API_KEY + "\n")
    config = small_limits_config(
        **{
            "server.api_key_file": str(key_file),
            "server.admin_keys": [ADMIN_KEY],
            "retrieval.watch_interval_s": WATCH_INTERVAL_S,
            "limits.body_timeout_s": BODY_TIMEOUT_S,
            "limits.header_timeout_s": HEADER_TIMEOUT_S,
            "retrieval.index_dir": str(small_index_dir),
            "generation.max_tokens": 24,
            "server.port": free_port(),
            "server.ray_num_cpus": 2,
            "deployments.generator.num_replicas": GENERATOR_REPLICAS,
            "generation.max_batch": MAX_BATCH,
            "limits.max_queued": MAX_QUEUED,
            "deployments.generator.max_ongoing_requests": MAX_BATCH + MAX_QUEUED + 4,
            "model.torch_threads": 1,
            "ngrams.redis_url": session_redis.url,
            "ngrams.flush_interval_s": 0.2,
            "ngrams.pull_interval_s": 1.0,
        }
    )
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    ray_runtime.start(config, quiet=True)
    try:
        yield deploy(config), config
    finally:
        ours = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
        ray_runtime.stop(config)
    _, alive = psutil.wait_procs(ours, timeout=30)
    assert not alive, f"Ray processes left running: {[(p.pid, p.name()) for p in alive]}"


@pytest.fixture(scope="module")
def url(serve_app):
    """The session Serve app's base URL."""
    return serve_app[0]


@pytest.fixture(scope="module")
def client(url):
    """An HTTP client of the session Serve app with the answering key."""
    import httpx
    from servehelpers import AUTH

    with httpx.Client(base_url=url, headers=AUTH, timeout=httpx.Timeout(10.0, read=300.0)) as c:
        yield c
