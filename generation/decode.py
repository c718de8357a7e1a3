"""The lookahead decode loop, as a handful of small functions (gpt-fast's `generate.py` style).

prefill -> repeat { draft -> choose its size -> one verify pass over the tree -> accept (greedy,
or exact sampling) -> keep the accepted KV entries -> show the accepted tokens to the drafter }
until EOS, a stop string or the token budget. The root of every draft is the last emitted token,
not yet in the KV cache, so a step with an empty draft is exactly one plain decoding step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import DynamicCache, PreTrainedModel

from generation.accept import GREEDY, AcceptRule
from generation.stopping import StopScanner
from generation.verify import keep_accepted_kv, verify_forward
from trie_store.draft import Draft, Drafter


@dataclass(frozen=True)
class DraftPolicy:
    """How many nodes to ask the drafter for, and how many of its draft to verify."""

    max_nodes: int
    choose: Callable[[Draft], int]


@dataclass
class DecodeStats:
    """Per-request figures; times in seconds."""

    prompt_tokens: int = 0
    steps: int = 0
    tokens: int = 0
    draft_sizes: list[int] = field(default_factory=list)
    accepted: list[int] = field(default_factory=list)  # accepted draft tokens per step
    prefill_s: float = 0.0
    draft_s: float = 0.0  # drafting and choosing the draft size
    forward_s: float = 0.0  # the verify pass, up to the argmax on the host (greedy)
    # accept (sampling: its per-node distributions too), KV bookkeeping, drafter update,
    # detokenising, stop scan
    accept_s: float = 0.0

    @property
    def tokens_per_step(self) -> float:
        return self.tokens / self.steps if self.steps else 0.0

    @property
    def mean_draft_size(self) -> float:
        return float(np.mean(self.draft_sizes)) if self.draft_sizes else 0.0


@dataclass(frozen=True)
class Chunk:
    """The tokens one step emitted and the text they release; the last chunk says why it ended."""

    token_ids: list[int]
    text: str
    finish_reason: str | None = None  # "eos", "stop" or "length" on the last chunk
    stats: DecodeStats | None = None  # on the last chunk


@torch.inference_mode()
def prefill(model: PreTrainedModel, ids: np.ndarray) -> DynamicCache:
    """A cache holding exactly `ids` (the decode loop gives every prompt token but the last:
    that one is the root of the first draft)."""
    cache = DynamicCache(config=model.config)
    if len(ids):
        input_ids = torch.from_numpy(ids).to(model.device).unsqueeze(0)
        model(input_ids=input_ids, cache=cache, use_cache=True, logits_to_keep=1)
    return cache


def clip_depth(draft: Draft, max_depth: int) -> Draft:
    """Drop nodes deeper than `max_depth`: past the token budget they could never be emitted."""
    keep = draft.depth <= max_depth
    if keep.all():
        return draft
    new_index = np.cumsum(keep) - 1
    parent = draft.parent[keep]
    parent[1:] = new_index[parent[1:]]
    return Draft(draft.tokens[keep], parent, draft.depth[keep], draft.scores[keep])


def decode(
    model: PreTrainedModel,
    prompt: np.ndarray,
    drafter: Drafter,
    policy: DraftPolicy,
    scanner: StopScanner,
    max_new_tokens: int,
    rule: AcceptRule = GREEDY,
) -> Iterator[Chunk]:
    """Yield one chunk per step until EOS, a stop string or `max_new_tokens`."""
    stats = DecodeStats(prompt_tokens=len(prompt))
    context = np.empty(len(prompt) + max_new_tokens, dtype=np.int64)
    context[: len(prompt)] = prompt
    n = len(prompt)
    t0 = time.perf_counter()
    cache = prefill(model, prompt[:-1])
    stats.prefill_s = time.perf_counter() - t0
    while True:
        t0 = time.perf_counter()
        draft = clip_depth(drafter.draft(context[:n], policy.max_nodes), len(context) - n - 1)
        draft = draft.truncate(policy.choose(draft))
        t1 = time.perf_counter()
        verified = rule.verified(verify_forward(model, cache, draft, n - 1))
        t2 = time.perf_counter()
        nodes, tokens = rule.accept(draft, verified, context[:n])
        keep_accepted_kv(cache, n - 1, nodes)
        cut = scanner.scan(tokens)
        emitted = tokens[: cut.n_tokens]
        context[n : n + len(emitted)] = emitted
        n += len(emitted)
        reason = cut.reason or ("length" if n == len(context) else None)
        drafter.observe(emitted)
        text = cut.text + scanner.flush() if reason == "length" else cut.text
        stats.steps += 1
        stats.tokens += len(emitted)
        stats.draft_sizes.append(draft.size)
        stats.accepted.append(len(nodes) - 1)
        stats.draft_s += t1 - t0
        stats.forward_s += t2 - t1
        stats.accept_s += time.perf_counter() - t2
        if reason is not None:
            yield Chunk(emitted.tolist(), text, reason, stats)
            return
        yield Chunk(emitted.tolist(), text)
