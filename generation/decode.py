"""The lookahead decode loop, as a handful of small functions (gpt-fast's `generate.py` style).

prefill -> repeat { draft -> calibrate -> choose its size -> one verify pass over the tree ->
accept (greedy, or exact sampling) -> keep the accepted KV entries -> show the accepted tokens
to the drafter and the calibration } until EOS, a stop string or the token budget. The root of
every draft is the last emitted token, not yet in the KV cache, so a step with an empty draft
is exactly one plain decoding step.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from transformers import PreTrainedModel

from generation.accept import GREEDY, AcceptRule
from generation.budget import choose_draft_size
from generation.calibration import Calibrator
from generation.stopping import StopScanner
from generation.verify import keep_accepted_kv, prefill, verify_forward
from trie_store.draft import Draft, Drafter

if TYPE_CHECKING:
    from generation.step_cost import StepCostCurve


@dataclass(frozen=True)
class DraftPolicy:
    """How many nodes to ask the drafter for; `fixed` verifies that many, None lets the cost
    model choose each step (goodput: `generation.budget`)."""

    max_nodes: int
    fixed: int | None = None


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
    finish_reason: str | None = None  # "eos", "stop", "length" or "error" on the last chunk
    stats: DecodeStats | None = None  # on the last chunk
    error: Exception | None = None  # what failed this sequence alone ("error", batches only)


def clip_depth(draft: Draft, max_depth: int) -> Draft:
    """Drop nodes deeper than `max_depth`: past the token budget they could never be emitted."""
    keep = draft.depth <= max_depth
    if keep.all():
        return draft
    new_index = np.cumsum(keep) - 1
    parent = draft.parent[keep]
    parent[1:] = new_index[parent[1:]]
    return Draft(draft.tokens[keep], parent, draft.depth[keep], draft.scores[keep])


class Request:
    """One sequence being decoded: its context, drafter, calibration, stop scan and stats.

    The single-request loop (`decode`) and the batch (`generation.batch`) run the same steps:
    `draft` (drafted, clipped to the token budget, calibrated), then, after a verify pass,
    `settle` (accept, stop scan, show the drafter and the calibration what was accepted).
    """

    def __init__(
        self,
        prompt: np.ndarray,
        drafter: Drafter,
        policy: DraftPolicy,
        scanner: StopScanner,
        max_new_tokens: int,
        rule: AcceptRule = GREEDY,
    ) -> None:
        self.drafter, self.policy, self.scanner, self.rule = drafter, policy, scanner, rule
        self.context = np.empty(len(prompt) + max_new_tokens, dtype=np.int64)
        self.context[: len(prompt)] = prompt
        self.n = len(prompt)
        self.calibrator = Calibrator()
        self.stats = DecodeStats(prompt_tokens=len(prompt))

    @property
    def cached(self) -> int:
        """Tokens in the KV cache: all but the newest, the root of the next draft."""
        return self.n - 1

    def draft(self) -> Draft:
        """This step's draft, best first by calibrated score, before its size is chosen."""
        draft = self.drafter.draft(self.context[: self.n], self.policy.max_nodes)
        return self.calibrator.rescore(clip_depth(draft, len(self.context) - self.n - 1))

    def settle(self, draft: Draft, verified: object) -> tuple[np.ndarray, Chunk]:
        """The nodes whose KV entries stay, and the chunk this step emits."""
        nodes, tokens = self.rule.accept(draft, verified, self.context[: self.n])
        self.calibrator.observe(draft, nodes)
        cut = self.scanner.scan(tokens)
        emitted = tokens[: cut.n_tokens]
        self.context[self.n : self.n + len(emitted)] = emitted
        self.n += len(emitted)
        reason = cut.reason or ("length" if self.n == len(self.context) else None)
        self.drafter.observe(emitted)
        text = cut.text + self.scanner.flush() if reason == "length" else cut.text
        stats = self.stats
        stats.steps += 1
        stats.tokens += len(emitted)
        stats.draft_sizes.append(draft.size)
        stats.accepted.append(len(nodes) - 1)
        if reason is not None:
            return nodes, Chunk(emitted.tolist(), text, reason, stats)
        return nodes, Chunk(emitted.tolist(), text)


def decode(
    model: PreTrainedModel, request: Request, curve: StepCostCurve | None = None
) -> Iterator[Chunk]:
    """Yield one chunk per step until EOS, a stop string or the token budget; `curve` (t(q))
    chooses each draft's size unless the policy fixes it."""
    stats, policy = request.stats, request.policy
    t0 = time.perf_counter()
    cache = prefill(model, request.context[: request.cached])
    stats.prefill_s = time.perf_counter() - t0
    while True:
        t0 = time.perf_counter()
        draft = request.draft()
        if policy.fixed is not None:
            draft = draft.truncate(policy.fixed)
        else:
            draft = draft.truncate(choose_draft_size(draft, curve, policy.max_nodes))
        t1 = time.perf_counter()
        past_len = request.cached
        verified = request.rule.verified(verify_forward(model, cache, draft, past_len))
        t2 = time.perf_counter()
        nodes, chunk = request.settle(draft, verified)
        keep_accepted_kv(cache, past_len, nodes)
        stats.draft_s += t1 - t0
        stats.forward_s += t2 - t1
        stats.accept_s += time.perf_counter() - t2
        yield chunk
        if chunk.finish_reason is not None:
            return
