"""The shared half of the global channel: answer n-grams counted by each replica, pooled in a
store (Redis, or in-process without one) and pulled back as the replica's `GlobalTrie`.

`NgramSync` is what a replica holds: `record(answer)` on the request path, `global_trie()` to
draft from, `stats()` for its metrics; a background thread does the rest.
"""

from trie_store.sharing.connect import store_from_url
from trie_store.sharing.popular_store import (
    InProcessStore,
    PopularStore,
    StoreError,
    StorePolicy,
    model_namespace,
)
from trie_store.sharing.sync import NgramSync, SyncConfig, SyncStats

__all__ = [
    "InProcessStore",
    "NgramSync",
    "PopularStore",
    "StoreError",
    "StorePolicy",
    "SyncConfig",
    "SyncStats",
    "model_namespace",
    "store_from_url",
]
