"""Token-id n-gram tries and draft trees (pure Python + numpy: no torch, no Ray).

`RequestDrafter` is what the decode loop holds per request: `draft(context, max_nodes)` each
step, `observe(accepted_tokens)` after it. It drafts from a lazy `RequestTrie` of the request's
passages, prompt and answer, optionally merged (`merge_drafts`) with a shared, bounded
`GlobalTrie` of popular n-grams (snapshot with `save_global_trie` / `load_global_trie`).
`NgramSync` keeps that trie for a replica, shared with the others through a `PopularStore`
(`store_from_url`: Redis, or in-process when no URL is configured).
"""

from trie_store.config import TrieConfig
from trie_store.draft import Draft, Drafter, ancestor_mask
from trie_store.drafter import RequestDrafter
from trie_store.global_trie import GlobalTrie
from trie_store.merge import REQUEST_WEIGHT, merge_drafts
from trie_store.popular_store import (
    InProcessStore,
    PopularStore,
    StoreError,
    StorePolicy,
    model_namespace,
    store_from_url,
)
from trie_store.request_trie import RequestTrie
from trie_store.snapshot import load_global_trie, save_global_trie
from trie_store.sync import NgramSync, SyncConfig

__all__ = [
    "REQUEST_WEIGHT",
    "Draft",
    "Drafter",
    "GlobalTrie",
    "InProcessStore",
    "NgramSync",
    "PopularStore",
    "RequestDrafter",
    "RequestTrie",
    "StoreError",
    "StorePolicy",
    "SyncConfig",
    "TrieConfig",
    "ancestor_mask",
    "load_global_trie",
    "merge_drafts",
    "model_namespace",
    "save_global_trie",
    "store_from_url",
]
