"""`RequestDrafter`: the draft source the decode loop holds for one request."""

from __future__ import annotations

from collections.abc import Sequence

from trie_store.config import TrieConfig
from trie_store.draft import Draft
from trie_store.global_trie import GlobalTrie
from trie_store.merge import REQUEST_WEIGHT, merge_drafts
from trie_store.ngram_index import NgramIndex
from trie_store.replay import REPLAY_WEIGHT, Replay


class RequestDrafter:
    """Drafts from the request's own n-grams, optionally merged with a shared global trie and
    with the answer this very prompt got before.

    prompt: the prompt tokens; the answer continues them (`observe`), so windows cross from the
        prompt into the answer.
    passages: retrieved passages that are NOT already part of the prompt (each its own segment;
        passing passages the prompt quotes would count them twice).
    global_trie: the replica's shared global channel, read only here.
    previous_answer: the answer an earlier request with exactly this prompt got
        (`replay.AnswerMemory`), replayed while this one keeps to it (`replay.Replay`).
    """

    def __init__(
        self,
        prompt: object,
        passages: Sequence[object] = (),
        *,
        config: TrieConfig | None = None,
        global_trie: GlobalTrie | None = None,
        request_weight: float = REQUEST_WEIGHT,
        max_matches: int = 64,
        previous_answer: object | None = None,
    ) -> None:
        if not 0.0 <= request_weight <= 1.0:
            raise ValueError(f"request_weight must be in [0, 1], got {request_weight}")
        self.index = NgramIndex([*passages, prompt], config, max_matches)
        self.global_trie = global_trie
        self.request_weight = request_weight
        self.replay = None if previous_answer is None else Replay(previous_answer)

    def draft(self, context: object, max_nodes: int) -> Draft:
        """A best-first tree continuing `context` (root = its last token), at most `max_nodes`
        drafted nodes; `Draft.root_only(context[-1])` when nothing matches."""
        local = self.index.draft(context, max_nodes)
        if self.global_trie is not None:
            shared = self.global_trie.draft(context, max_nodes)
            local = merge_drafts(local, shared, max_nodes, self.request_weight)
        if self.replay is None:
            return local
        replayed = self.replay.draft(int(local.tokens[0]), max_nodes)
        return merge_drafts(replayed, local, max_nodes, REPLAY_WEIGHT)

    def observe(self, tokens: object) -> None:
        """Append newly accepted tokens to the answer: only their windows are indexed."""
        self.index.extend(tokens)
        if self.replay is not None:
            self.replay.observe(tokens)
