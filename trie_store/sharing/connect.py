"""`store_from_url`: the shared store a replica is configured with, or its own in-process one."""

from __future__ import annotations

from trie_store.sharing.popular_store import InProcessStore, PopularStore, StorePolicy
from trie_store.sharing.redis_store import RedisStore, redis_client


def store_from_url(
    url: str | None, namespace: str, policy: StorePolicy | None = None, **client_options: object
) -> PopularStore:
    """The Redis store at `url` (redis://, rediss:// for TLS, unix://; a password goes in the
    URL), or with no URL the in-process store. `client_options` tune the Redis client
    (`redis_store.redis_client`)."""
    if url is None:
        return InProcessStore(namespace, policy)
    return RedisStore(redis_client(url, **client_options), namespace, policy)  # type: ignore[arg-type]
