"""Token-id n-gram tries and draft trees (pure Python + numpy: no torch, no Ray, no I/O).

`RequestDrafter` is what the decode loop holds per request: `draft(context, max_nodes)` each
step, `observe(accepted_tokens)` after it. It drafts from the request channel (`NgramIndex`,
the n-grams of the request's passages, prompt and answer), merged (`merge_drafts`) with the
global channel, a read-only `GlobalTrie` of popular n-grams, and with the replay channel: the
answer the same prompt got before (`AnswerMemory`, `replay.Replay`). Keeping the global trie
shared between replicas is the job of the `trie_store.sharing` subpackage.
"""

from trie_store.config import TrieConfig
from trie_store.draft import Draft, Drafter, ancestor_mask
from trie_store.drafter import RequestDrafter
from trie_store.global_trie import GlobalTrie
from trie_store.merge import REQUEST_WEIGHT, merge_drafts
from trie_store.ngram_index import NgramIndex
from trie_store.replay import AnswerMemory

__all__ = [
    "REQUEST_WEIGHT",
    "AnswerMemory",
    "Draft",
    "Drafter",
    "GlobalTrie",
    "NgramIndex",
    "RequestDrafter",
    "TrieConfig",
    "ancestor_mask",
    "merge_drafts",
]
