"""The popular n-gram stores: Redis (a private redis-server) and in-process, same behaviour."""

import math
import subprocess
import time

import numpy as np
import pytest
import redis
from triehelpers import pack

from benchmarks.local_redis import LocalRedis
from trie_store.sharing import (
    InProcessStore,
    StoreError,
    StorePolicy,
    model_namespace,
    store_from_url,
)
from trie_store.sharing.redis_store import RedisStore, redact, redis_client

A, B, C = pack([1, 2]), pack([3]), pack([4, 5, 6])
NS = model_namespace("test-model", 100)


@pytest.fixture(params=["redis", "in-process"])
def make_store(request):
    """A factory of stores of one backend: every store it makes shares one data set."""
    if request.param == "in-process":
        stores = {}
        yield lambda namespace=NS, policy=None: stores.setdefault(
            namespace, InProcessStore(namespace, policy)
        )
        return
    server = request.getfixturevalue("redis_server")
    stores = []

    def make(namespace=NS, policy=None):
        stores.append(store_from_url(server.url, namespace, policy))
        return stores[-1]

    yield make
    for store in stores:
        store.close()


def test_add_then_top_round_trip(make_store):
    store = make_store()
    store.add({A: 3.0, B: 1.0}, "batch-1")
    top = make_store().top(10, max_tokens=3)
    assert top.members == [A, B]
    assert top.counts == pytest.approx([3.0, 1.0], rel=1e-3)  # decay over ms: negligible
    assert top.skipped == 0
    assert make_store().top(10, 3, seen_version=top.version) is None  # unchanged: no transfer
    store.add({C: 5.0}, "batch-2")
    again = store.top(1, 3, seen_version=top.version)
    assert again.version != top.version
    assert again.members == [C]


def test_bad_arguments_are_value_errors(make_store):
    store = make_store(policy=StorePolicy(max_top_k=5))
    with pytest.raises(ValueError, match="max_top_k"):
        store.top(6, 3)
    with pytest.raises(ValueError, match="max_tokens"):
        store.top(5, 0)
    with pytest.raises(ValueError, match="cap"):
        StorePolicy(cap=0)
    with pytest.raises(ValueError, match="half_life_s"):
        StorePolicy(half_life_s=math.inf)


def test_cap_holds_under_a_stream_of_inserts(make_store):
    cap = 40
    store = make_store(policy=StorePolicy(cap=cap, half_life_s=3600))
    rng = np.random.default_rng(0)
    for i in range(30):
        batch = {pack([int(t)]): 1.0 for t in rng.integers(0, 10_000, size=20)}
        batch[pack([7, 7])] = 5.0  # a popular n-gram, seen in every batch
        store.add(batch, f"b{i}")
        assert len(store.top(1000, 2).members) <= cap
    top = store.top(1000, 2)
    assert len(top.members) == cap
    assert top.members[0] == pack([7, 7])
    assert top.counts[0] == pytest.approx(150, rel=1e-3)


def test_in_process_decay_halves_counts_per_half_life():
    now = [0.0]
    store = InProcessStore(NS, StorePolicy(half_life_s=10), clock=lambda: now[0])
    store.add({A: 8.0}, "1")
    now[0] = 30.0
    store.add({B: 2.0}, "2")
    top = store.top(5, 3)
    assert top.members == [B, A]
    assert top.counts.tolist() == pytest.approx([2.0, 1.0])
    now[0] = 30.0 + 10 * 40  # past the rescale point: stored scores divided, order kept
    store.add({C: 1e-12}, "3")
    top = store.top(5, 3)
    assert top.counts.tolist() == pytest.approx([2.0 / 2**40, 1.0 / 2**40, 1e-12])
    assert max(store._scores.values()) < 2**32


def test_redis_decay_fades_old_popularity(redis_server):
    store = store_from_url(redis_server.url, NS, StorePolicy(half_life_s=0.1))
    store.add({A: 16.0}, "old")
    time.sleep(0.3)  # three half-lives: A is worth 2 now, then less
    before = time.monotonic()
    store.add({B: 4.0}, "new")
    top = store.top(5, 3)
    elapsed = time.monotonic() - before
    assert top.members == [B, A]
    assert top.counts[1] < 2.0
    # B is read back in sightings, decayed only by the time since it was added.
    assert 4.0 * 2 ** (-elapsed / 0.1) * 0.999 <= top.counts[0] <= 4.0 * 1.001


def test_redis_rescales_when_the_decay_factor_grows_too_large(redis_server):
    store = store_from_url(redis_server.url, NS, StorePolicy(half_life_s=1.0))
    store.add({A: 1.0}, "1")
    meta = store.keys[1]
    epoch = float(store.client.hget(meta, "epoch"))
    store.client.hset(meta, "epoch", epoch - 40)  # as if 40 half-lives had passed
    store.add({B: 1.0}, "2")
    assert float(store.client.hget(meta, "epoch")) > epoch - 1  # moved to now
    assert max(s for _, s in store.client.zrange(store.keys[0], 0, -1, withscores=True)) < 2
    top = store.top(5, 3)
    assert top.members == [B, A]
    assert top.counts.tolist() == pytest.approx([1.0, 2.0**-40], rel=0.02)  # ms of decay


def test_a_retried_batch_is_applied_once(redis_server):
    store = store_from_url(redis_server.url, NS)
    store.add({A: 1.0}, "same-id")
    store.add({A: 1.0}, "same-id")  # the retry of an add whose reply was lost
    store.add({A: 1.0}, "other-id")
    assert store.top(5, 3).counts.tolist() == pytest.approx([2.0], rel=1e-3)


def test_namespaces_are_isolated_and_keys_stay_under_them(redis_server):
    one = store_from_url(redis_server.url, model_namespace("model-a", 100))
    two = store_from_url(redis_server.url, model_namespace("model-b", 100))
    same_name_other_vocab = model_namespace("model-a", 100, {"x": 1})
    assert len({one.namespace, two.namespace, same_name_other_vocab}) == 3
    one.add({A: 1.0}, "1")
    two.add({B: 1.0}, "1")  # the same batch id in another namespace is another batch
    assert one.top(5, 3).members == [A]
    assert two.top(5, 3).members == [B]
    keys = {k.decode() for k in one.client.keys("*")}
    assert keys == set(one.keys) | set(two.keys)
    assert all(k.startswith(f"lookahead-rag:{{{one.namespace}}}:") for k in one.keys)
    with pytest.raises(ValueError, match="namespace"):
        RedisStore(one.client, "a}b:*")


def test_the_server_refuses_to_send_members_of_the_wrong_size(redis_server):
    store = store_from_url(redis_server.url, NS)
    store.add({A: 1.0}, "1")
    store.client.zadd(store.keys[0], {b"x" * 100_000: 50, b"abcde": 40, pack([1] * 9): 30})
    top = store.top(10, max_tokens=3)
    assert top.members == [A]
    assert top.skipped == 3


def test_damaged_data_is_a_store_error_never_a_crash(redis_server):
    store = store_from_url(redis_server.url, NS)
    store.add({A: 1.0}, "1")
    store.client.hset(store.keys[1], "epoch", "not a number")
    with pytest.raises(StoreError, match="malformed"):
        store.top(5, 3)
    store.add({B: 1.0}, "2")  # an add repairs the decay settings
    assert set(store.top(5, 3).members) == {A, B}
    store.client.delete(store.keys[0])
    store.client.set(store.keys[0], "a string where a sorted set belongs")
    with pytest.raises(StoreError, match="WRONGTYPE"):
        store.add({A: 1.0}, "3")
    with pytest.raises(StoreError, match="WRONGTYPE"):
        store.top(5, 3)


def test_unreachable_store_fails_fast_with_a_store_error():
    server = LocalRedis()  # never started: nothing listens on its port
    store = store_from_url(server.url, NS, timeout_s=0.2, retries=1)
    start = time.monotonic()
    with pytest.raises(StoreError, match="Connection refused"):
        store.add({A: 1.0}, "1")
    with pytest.raises(StoreError):
        store.top(5, 3)
    assert time.monotonic() - start < 2


def test_store_from_url_picks_the_backend_and_checks_the_url():
    assert isinstance(store_from_url(None, NS), InProcessStore)
    with pytest.raises(ValueError, match="Redis URL must start with"):
        store_from_url("http://:secret@host:6379", NS)
    with pytest.raises(ValueError, match="timeout_s"):
        redis_client("redis://127.0.0.1:1", timeout_s=0)
    assert redact("rediss://user:secret@host:6380/0") == "rediss://user:***@host:6380/0"
    assert redact("redis://host:6379") == "redis://host:6379"
    with pytest.raises(ValueError, match=r"ftp://:\*\*\*@host"):  # the password never shows
        store_from_url("ftp://:secret@host", NS)


def test_password_protected_redis():
    with LocalRedis(password="s3cret-pass") as server:
        store = store_from_url(server.url, NS)
        store.add({A: 1.0}, "1")
        assert store.top(5, 3).members == [A]
        anonymous = store_from_url(server.url.replace(":s3cret-pass@", ""), NS)
        with pytest.raises(StoreError, match=r"(?i)auth"):
            anonymous.top(5, 3)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis.from_url(server.url.replace("s3cret", "wrong")).ping()


def test_tls_redis(tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
            *("-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert),
        ],
        check=True,
        capture_output=True,
    )
    tls = ["--tls-cert-file", str(cert), "--tls-key-file", str(key)]
    tls += ["--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"]
    with LocalRedis(password="pw", tls_args=tls) as server:
        assert server.url.startswith("rediss://")
        store = store_from_url(f"{server.url}?ssl_ca_certs={cert}", NS)
        store.add({A: 1.0}, "1")
        assert store.top(5, 3).members == [A]
        untrusted = store_from_url(server.url, NS, timeout_s=0.5, retries=0)
        with pytest.raises(StoreError, match=r"(?i)certificate"):
            untrusted.top(5, 3)
