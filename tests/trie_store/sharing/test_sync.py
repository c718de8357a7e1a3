"""NgramSync: counting, flushing, pulling, the swapped trie, and life without the store."""

import subprocess
import sys
import threading
import time

import pytest
from triehelpers import pack, scored_paths, trie_from_paths, window_counts

from trie_store import TrieConfig
from trie_store.sharing import (
    InProcessStore,
    NgramSync,
    StoreError,
    SyncConfig,
    model_namespace,
    store_from_url,
)

VOCAB = 1000
NS = model_namespace("sync-test", VOCAB)
ANSWER = [5, 6, 7, 8, 9, 10, 11, 12]
FAST = SyncConfig(flush_interval_s=0.02, pull_interval_s=0.05, retry_base_s=0.05, retry_max_s=0.2)


def redis_sync(url: str, config: SyncConfig = FAST, **store_options) -> NgramSync:
    store = store_from_url(url, NS, timeout_s=0.2, retries=1, **store_options)
    return NgramSync(store, VOCAB, config=config)


def drafted(sync: NgramSync, context: list[int]) -> list[int]:
    return sync.global_trie().draft(context, 16).tokens.tolist()[1:]


def assert_counted_once(sync: NgramSync) -> None:
    """ANSWER is drafted after its first token with every n-gram counted once: 1 of 1 (+ the
    default prior 1) a step, so each step halves the score (counted twice: 2/3 a step)."""
    draft = sync.global_trie().draft([5], 16)
    assert draft.tokens.tolist()[1:] == ANSWER[1:]
    assert draft.scores.tolist() == pytest.approx([2.0**-i for i in range(8)], rel=1e-3)


def wait_for(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


class FailingStore(InProcessStore):
    """A store that is down: every operation fails, as a Redis store's would."""

    def add(self, counts, batch_id):
        raise StoreError("down")

    def top(self, k, max_tokens, seen_version=None):
        raise StoreError("down")


def test_recorded_answers_reach_the_trie_as_their_windows():
    config = TrieConfig(branch_length=4)
    sync = NgramSync(InProcessStore(), VOCAB, config)
    answers = [[1, 2, 3, 1, 2, 4], [2, 3, 1, 9]]
    for answer in answers:
        sync.record(answer)
    empty = sync.global_trie()
    assert sync.sync_now()
    assert len(empty) == 0  # a trie handed out never changes
    paths = window_counts(answers, config.branch_length)
    reference = trie_from_paths(paths, config)
    assert len(sync.global_trie()) == sync.stats().trie_nodes == len(reference)
    contexts = [list(p) for p in paths if len(p) <= config.max_context]
    for context in [*contexts, [7, 2, 3], [7]]:
        got = scored_paths(sync.global_trie().draft(context, 100))
        want = scored_paths(reference.draft(context, 100))
        assert got == pytest.approx(want), context  # decayed by the ms the test took
    with pytest.raises(ValueError, match="vocab_size"):
        sync.record([1, VOCAB])
    with pytest.raises(ValueError, match="negative"):
        sync.record([-1])


def test_flush_and_pull_round_trip_through_redis(redis_server):
    a, b = redis_sync(redis_server.url), redis_sync(redis_server.url)
    a.record(ANSWER)
    assert a.sync_now()
    assert (a.stats().flushed, a.stats().pulls) == (len(ANSWER), 1)
    assert b.sync_now()
    assert_counted_once(b)
    assert b.stats().trie_nodes == len(window_counts([ANSWER], TrieConfig().branch_length))
    a.close()
    b.close()


def test_two_processes_share_ngrams(redis_server):
    replica_a = f"""
from trie_store.sharing import NgramSync, store_from_url
sync = NgramSync(store_from_url({redis_server.url!r}, {NS!r}), {VOCAB})
sync.record({ANSWER!r})
sync.close()  # flushes
"""
    subprocess.run([sys.executable, "-c", replica_a], check=True, timeout=60)
    b = redis_sync(redis_server.url)
    assert drafted(b, [5]) == []
    b.sync_now()
    assert drafted(b, [5]) == ANSWER[1:]
    b.close()


def test_background_threads_share_and_local_answers_show_before_any_pull(redis_server):
    a = redis_sync(redis_server.url).start()
    b = redis_sync(redis_server.url).start()
    a.record(ANSWER)
    wait_for(lambda: drafted(b, [5]) == ANSWER[1:])
    b.record([40, 41, 42])
    wait_for(lambda: drafted(a, [40]) == [41, 42])
    a.close()
    b.close()


def test_redis_killed_mid_run_then_restarted(redis_server):
    a, b = redis_sync(redis_server.url).start(), redis_sync(redis_server.url).start()
    errors: list[BaseException] = []
    stop = threading.Event()
    slowest = [0.0]

    def serve() -> None:  # a request loop: draft from the current trie, then record the answer
        i = 0
        while not stop.is_set():
            try:
                start = time.perf_counter()
                a.global_trie().draft([100 + i % 50], 8)
                a.record([100 + i % 50, 200 + i % 50, 300 + i % 50])
                slowest[0] = max(slowest[0], time.perf_counter() - start)
            except BaseException as err:
                errors.append(err)
            i += 1
            time.sleep(0.002)

    requests = threading.Thread(target=serve)
    requests.start()
    try:  # a failed wait must still end the request loop, or the test run never exits
        wait_for(lambda: drafted(b, [100]) == [200, 300])
        redis_server.stop()
        wait_for(lambda: a.stats().fallbacks >= 2)
        a.record([7, 77, 777])  # learnt while Redis is down: drafted from locally at once
        wait_for(lambda: drafted(a, [7]) == [77, 777])
        assert a.stats().store_up is False
        redis_server.start()  # empty: a crash without persistence
        wait_for(lambda: a.stats().store_up)
        wait_for(lambda: drafted(b, [7]) == [77, 777])  # the outage's increments were flushed
    finally:
        stop.set()
        requests.join()
    assert errors == []
    assert slowest[0] < 0.5  # the request path never waited on Redis
    a.close()
    b.close()


def test_slow_redis_never_blocks_requests(redis_server):
    a = redis_sync(redis_server.url).start()
    a.record(ANSWER)
    wait_for(lambda: a.stats().pulls >= 1 and drafted(a, [5]) == ANSWER[1:])
    redis_server.pause()  # answers nothing: every call times out
    try:
        start = time.perf_counter()
        for i in range(200):
            a.record([i, i + 1])
            a.global_trie().draft([5], 8)
        assert time.perf_counter() - start < 0.5
        wait_for(lambda: a.stats().fallbacks >= 1)
        assert drafted(a, [5]) == ANSWER[1:]  # the last good pull stays
    finally:
        redis_server.resume()
    wait_for(lambda: a.stats().store_up)
    a.close()


def test_bad_members_in_redis_are_skipped_and_counted(redis_server):
    a = redis_sync(redis_server.url)
    a.record(ANSWER)
    a.sync_now()
    raw = a.store.client  # type: ignore[attr-defined]
    key = a.store.keys[0]  # type: ignore[attr-defined]
    raw.zadd(key, {b"\x00" * 7: 9, pack([5, VOCAB + 1]): 9, pack([1] * 20): 9})
    raw.zadd(key, {pack([5, 60]): 1e-320})  # denormal but positive: fine
    raw.zadd(key, {b"pickle\x80\x04": float("inf")})  # foreign member, absurd score
    b = redis_sync(redis_server.url)
    assert b.sync_now()
    # two sizes refused by the server, one id beyond the vocabulary, one infinite count
    assert b.stats().bad_members == {"size": 2, "vocab": 1, "count": 1}
    assert drafted(b, [5])[:7] == ANSWER[1:]
    a.close()
    b.close()


def test_a_store_that_is_down_keeps_local_ngrams_and_bounds_what_it_holds():
    config = SyncConfig(max_pending=10, max_queued_answers=3, retry_base_s=1000)
    sync = NgramSync(FailingStore(), VOCAB, config=config)
    sync.record(list(range(8)))  # 8 windows
    sync.record(list(range(100, 108)))  # 8 more: only 2 fit the bound
    assert not sync.sync_now()
    stats = sync.stats()
    assert (stats.store_up, stats.fallbacks, stats.flushed, stats.pulls) == (False, 1, 0, 0)
    assert stats.dropped == {"ngram": 6}
    assert drafted(sync, [0]) == list(range(1, 8))  # local n-grams still drafted
    assert stats.pending_ngrams == 10
    for _ in range(4):
        sync.record([1])
    assert sync.stats().dropped == {"ngram": 6, "answer": 1}
    sync.close()  # the last flush fails too: counted, logged, no exception
    assert sync.stats().fallbacks == 2


def test_a_retried_flush_is_counted_once(redis_server):
    sync = redis_sync(redis_server.url)
    store = sync.store
    real_add, lost = store.add, []

    def add_then_lose_the_reply(counts, batch_id):
        real_add(counts, batch_id)
        if not lost:
            lost.append(batch_id)
            raise StoreError("reply lost")

    store.add = add_then_lose_the_reply
    sync.record(ANSWER)
    assert not sync.sync_now()
    assert sync.sync_now()  # retries the same batch: applied once
    assert_counted_once(sync)
    assert (sync.stats().flushed, sync.stats().fallbacks) == (len(ANSWER), 1)
    sync.close()


def test_close_flushes_what_is_left(redis_server):
    a = redis_sync(redis_server.url, config=SyncConfig(flush_interval_s=3600)).start()
    a.record(ANSWER)
    a.close()
    b = redis_sync(redis_server.url)
    b.sync_now()
    assert drafted(b, [5]) == ANSWER[1:]
    b.close()


def test_bad_settings_are_value_errors():
    with pytest.raises(ValueError, match="top_k"):
        SyncConfig(top_k=0)
    with pytest.raises(ValueError, match="pull_interval_s"):
        SyncConfig(pull_interval_s=-1)
    with pytest.raises(ValueError, match="vocab_size"):
        NgramSync(InProcessStore(), 0)
    sync = NgramSync(InProcessStore(), VOCAB).start()
    with pytest.raises(RuntimeError, match="started"):
        sync.start()
    sync.close()
    assert len(sync.global_trie()) == sync.stats().trie_nodes == 0
