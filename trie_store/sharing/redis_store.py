"""The shared popular n-gram store on Redis (policies: `popular_store`).

Layout, all under one namespace (the hash tag keeps the keys on one cluster slot):
- `lookahead-rag:{NS}:popular`: sorted set, member = packed n-gram, score = inflated count;
- `lookahead-rag:{NS}:meta`: hash: `epoch` and `half_life` of the decay, `created` and
  `version` (together they change whenever the set does, across Redis restarts too);
- `lookahead-rag:{NS}:batches`: sorted set of recent add batch ids (score = time), so a retried
  add is applied once; ids older than BATCH_TTL_S or beyond MAX_BATCHES are trimmed.

Both operations are Lua scripts, one round trip each and atomic: an add (dedup, decay, ZINCRBY
per member, trim to the cap) and a read (skip when unchanged, top k with the size check done on
the server). The client times out fast and retries with backoff; every failure reaches the
caller as a `StoreError`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from trie_store.sharing.members import TOKEN_BYTES
from trie_store.sharing.popular_store import (
    RESCALE_AT,
    StoreError,
    StorePolicy,
    TopNgrams,
    checked_top_args,
    decay_factor,
)

NAMESPACE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
SCHEMES = ("redis", "rediss", "unix")
BATCH_TTL_S = 3600
MAX_BATCHES = 100_000

ADD = f"""
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1e6
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[4]))
if redis.call('ZADD', KEYS[3], 'NX', now, ARGV[3]) == 0 then return 0 end
local extra = redis.call('ZCARD', KEYS[3]) - tonumber(ARGV[5])
if extra > 0 then redis.call('ZREMRANGEBYRANK', KEYS[3], 0, extra - 1) end
local meta = redis.call('HMGET', KEYS[2], 'epoch', 'half_life')
local epoch, half_life = tonumber(meta[1]), tonumber(meta[2])
if not (epoch and half_life and half_life > 0) then
  epoch, half_life = now, tonumber(ARGV[1])
  redis.call('HSET', KEYS[2], 'epoch', string.format('%.6f', now),
             'half_life', ARGV[1], 'created', string.format('%.6f', now))
end
local factor = 2 ^ ((now - epoch) / half_life)
if factor > {RESCALE_AT!r} then
  redis.call('ZUNIONSTORE', KEYS[1], 1, KEYS[1], 'WEIGHTS', string.format('%.17g', 1 / factor))
  redis.call('HSET', KEYS[2], 'epoch', string.format('%.6f', now))
  factor = 1
end
for i = 6, #ARGV, 2 do
  redis.call('ZINCRBY', KEYS[1], string.format('%.17g', tonumber(ARGV[i + 1]) * factor), ARGV[i])
end
extra = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[2])
if extra > 0 then redis.call('ZREMRANGEBYRANK', KEYS[1], 0, extra - 1) end
redis.call('HINCRBY', KEYS[2], 'version', 1)
return 1
"""

TOP = f"""
local meta = redis.call('HMGET', KEYS[2], 'created', 'version', 'epoch', 'half_life')
local version = (meta[1] or '') .. ':' .. (meta[2] or '0')
if version == ARGV[3] then return {{version}} end
local clock = redis.call('TIME')
local rows = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1, 'REV', 'WITHSCORES')
local max_bytes, sent, skipped = tonumber(ARGV[2]), {{}}, 0
for i = 1, #rows, 2 do
  local n = #rows[i]
  if n > 0 and n <= max_bytes and n % {TOKEN_BYTES} == 0 then
    sent[#sent + 1] = rows[i]
    sent[#sent + 1] = rows[i + 1]
  else
    skipped = skipped + 1
  end
end
return {{version, meta[3] or '', meta[4] or '', clock[1], clock[2], skipped, sent}}
"""


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[2]}"))


def redis_client(
    url: str, timeout_s: float = 0.5, retries: int = 2, backoff_cap_s: float = 0.5
) -> redis.Redis:
    """A client that never hangs: connect and reply timeouts of `timeout_s`, then `retries`
    retries with jittered exponential backoff. TLS and its options come with a rediss:// URL
    (e.g. `?ssl_ca_certs=/etc/ca.pem`), the password with the URL's userinfo."""
    scheme = urlsplit(url).scheme
    if scheme not in SCHEMES:
        raise ValueError(f"Redis URL must start with one of {SCHEMES}: got {redact(url)!r}")
    if not 0 < timeout_s < math.inf:
        raise ValueError(f"timeout_s must be a finite number > 0, got {timeout_s!r}")
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(ExponentialWithJitterBackoff(cap=backoff_cap_s, base=0.05), retries),
        health_check_interval=30,
        client_name="lookahead-rag-ngrams",
    )


class RedisStore:
    """`PopularStore` on Redis; touches only the keys of its namespace."""

    def __init__(
        self, client: redis.Redis, namespace: str, policy: StorePolicy | None = None
    ) -> None:
        if not isinstance(namespace, str) or not NAMESPACE.fullmatch(namespace):
            raise ValueError(f"namespace must match {NAMESPACE.pattern}, got {namespace!r}")
        self.namespace = namespace
        self.policy = policy or StorePolicy()
        self.client = client
        prefix = f"lookahead-rag:{{{namespace}}}:"
        self.keys = [prefix + name for name in ("popular", "meta", "batches")]
        self._add = client.register_script(ADD)
        self._top = client.register_script(TOP)

    def add(self, counts: Mapping[bytes, float], batch_id: str) -> None:
        args: list[object] = [
            self.policy.half_life_s,
            self.policy.cap,
            batch_id,
            BATCH_TTL_S,
            MAX_BATCHES,
        ]
        for member, count in counts.items():
            if not (math.isfinite(count) and count > 0):
                raise ValueError(f"counts must be finite and > 0, got {count!r}")
            args += (member, repr(float(count)))
        try:
            self._add(keys=self.keys, args=args)
        except (redis.RedisError, OSError) as err:
            raise StoreError(f"add to {self.namespace} failed: {err}") from None

    def top(self, k: int, max_tokens: int, seen_version: str | None = None) -> TopNgrams | None:
        k, max_tokens = checked_top_args(k, max_tokens, self.policy)
        try:
            reply = self._top(
                keys=self.keys[:2], args=[k, TOKEN_BYTES * max_tokens, seen_version or ""]
            )
        except (redis.RedisError, OSError) as err:
            raise StoreError(f"read of {self.namespace} failed: {err}") from None
        return parse_top(reply, k, seen_version)

    def close(self) -> None:
        self.client.close()


def parse_top(reply: object, k: int, seen_version: str | None) -> TopNgrams | None:
    """Check the shape and every number of a TOP reply before using any of it."""
    if not isinstance(reply, list) or not reply or not isinstance(reply[0], bytes):
        raise StoreError(f"malformed reply to a read: {reply!r:.200}")
    version = reply[0].decode("ascii", "replace")
    if len(reply) == 1:
        if version != seen_version:
            raise StoreError(f"store claims version {version!r} is unchanged")
        return None
    try:
        _, epoch, half_life, seconds, micros, skipped, rows = reply
        now = int(seconds) + int(micros) / 1e6
        if not isinstance(rows, list) or len(rows) % 2 or len(rows) > 2 * k:
            raise ValueError("rows are not k (member, score) pairs")
        members = rows[0::2]
        counts = np.array([float(score) for score in rows[1::2]], dtype=np.float64)
        factor = 1.0
        if members:
            epoch, half_life = float(epoch), float(half_life)
            if not (math.isfinite(epoch) and math.isfinite(half_life) and half_life > 0):
                raise ValueError(f"decay settings epoch={epoch} half_life={half_life}")
            factor = decay_factor(now - epoch, half_life)
    except (TypeError, ValueError, OverflowError) as err:
        raise StoreError(f"malformed reply to a read ({err})") from None
    if not all(isinstance(m, bytes) for m in members):
        raise StoreError("malformed reply to a read: a member is not a string")
    return TopNgrams(version, members, counts / factor, int(skipped))
