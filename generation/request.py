"""One sequence being decoded: its context, drafter, calibration, stop scan and figures.

The batched engine (`generation.batch`) runs every sequence through the same two calls per
step: `Request.draft` (drafted, clipped to the token budget, calibrated, before the batch
chooses its size), then, after the verify pass, `Request.settle` (accept by the sequence's own
rule, stop scan, show the drafter and the calibration what was accepted). The root of every
draft is the last emitted token, not yet in the KV cache, so a step with an empty draft is
exactly one plain decoding step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from generation.accept import GREEDY, AcceptRule
from generation.calibration import Calibrator
from generation.stopping import StopScanner
from trie_store.draft import Draft, Drafter


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
    prefix_tokens: int = 0  # prompt tokens whose KV came from the prefix cache, not a prefill
    queue_s: float = 0.0  # waiting for a batch row
    steps: int = 0
    tokens: int = 0
    draft_sizes: list[int] = field(default_factory=list)
    accepted: list[int] = field(default_factory=list)  # accepted draft tokens per step
    prefill_s: float = 0.0
    draft_s: float = 0.0  # drafting and calibrating
    forward_s: float = 0.0  # the verify passes it took part in (shared with the batch)
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
    """One sequence being decoded: what `draft` and `settle` need from step to step."""

    def __init__(
        self,
        prompt: np.ndarray,
        drafter: Drafter,
        policy: DraftPolicy,
        scanner: StopScanner,
        max_new_tokens: int,
        rule: AcceptRule = GREEDY,
        reuse_prefix: bool = True,
    ) -> None:
        """`reuse_prefix`: take the longest cached prefix of the prompt's KV from the decoder's
        prefix cache (when it has one) and leave this prompt's KV there for others."""
        self.drafter, self.policy, self.scanner, self.rule = drafter, policy, scanner, rule
        self.reuse_prefix = reuse_prefix
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
