"""Sampling settings, and the per-request rule that samples with lookahead exactly.

The target distribution at a draft node is what transformers' `generate(do_sample=True)` would
sample from at that point: the raw logits in float32, then its own logits processors in its
own order (repetition penalty, then the temperature, top-k and top-p warpers), given as
`input_ids` the node's own path (prompt, emitted tokens, the draft tokens down to the node),
so prefix-dependent processors see what plain sampling would have shown them. The
distributions are built lazily, only at the nodes the acceptance walk reaches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from transformers import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from generation.accept import GREEDY, AcceptRule, sample_accept
from trie_store.config import is_int
from trie_store.draft import Draft

MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class SamplingParams:
    """How to choose each token; the defaults are plain greedy decoding.

    temperature: 0 = greedy (argmax, after the repetition penalty if one is set); top_k: keep
    the k most likely tokens, 0 = all; top_p: keep the smallest set of tokens holding this much
    probability, 1 = all; repetition_penalty: transformers' (1 = none). seed: the request's
    own random stream; None = fresh entropy. Same seed and same drafts -> same output.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("temperature", "top_p", "repetition_penalty"):
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if not is_int(self.top_k) or self.top_k < 0:
            raise ValueError(f"top_k must be an int >= 0 (0 = no limit), got {self.top_k!r}")
        if self.seed is not None and not (is_int(self.seed) and 0 <= self.seed <= MAX_SEED):
            raise ValueError(f"seed must be an int in [0, 2**63 - 1] or None, got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        """Plain argmax decoding: the fast path, no processors at all."""
        return self.temperature == 0 and self.repetition_penalty == 1

    def processors(self) -> LogitsProcessorList:
        """transformers' processors for these settings, in the order `generate` applies them."""
        processors = LogitsProcessorList()
        if self.repetition_penalty != 1:
            processors.append(RepetitionPenaltyLogitsProcessor(self.repetition_penalty))
        if self.temperature > 0:  # the warpers: sampling only, as in `generate`
            if self.temperature != 1:
                processors.append(TemperatureLogitsWarper(self.temperature))
            if self.top_k:
                processors.append(TopKLogitsWarper(self.top_k))
            if self.top_p < 1:
                processors.append(TopPLogitsWarper(self.top_p))
        return processors

    def rule(self) -> AcceptRule:
        """A fresh acceptance rule for one request (a sampling rule holds its random stream)."""
        return GREEDY if self.greedy else SamplingRule(self)


class SamplingRule:
    """One request's exact sampling: its processors and its own random stream."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.processors = params.processors()
        self.generator = torch.Generator()
        if params.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(params.seed)

    def verified(self, logits: torch.Tensor) -> torch.Tensor:
        return logits  # stays on its device; only the visited nodes' rows are processed

    def accept(
        self, draft: Draft, verified: torch.Tensor, context: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        return sample_accept(
            draft, lambda node: self.distribution(draft, verified, context, node), self.generator
        )

    def distribution(
        self, draft: Draft, logits: torch.Tensor, context: np.ndarray, node: int
    ) -> torch.Tensor:
        """The token distribution after `node`, float64 on the CPU; greedy gives a point mass."""
        ids = np.concatenate([context, draft.tokens[path_to(draft, node)]])
        input_ids = torch.from_numpy(ids).to(logits.device).unsqueeze(0)
        scores = logits[node : node + 1].to(dtype=torch.float32, copy=True)  # as `generate` does
        scores = self.processors(input_ids, scores)[0]
        if self.params.temperature == 0:
            p = torch.zeros(scores.shape, dtype=torch.float64)
            p[int(scores.argmax())] = 1.0
            return p
        return torch.softmax(scores, dim=-1).to("cpu", torch.float64)


def path_to(draft: Draft, node: int) -> np.ndarray:
    """The drafted nodes from the root's child down to `node` (empty for the root)."""
    path = []
    while node > 0:
        path.append(node)
        node = int(draft.parent[node])
    return np.asarray(path[::-1], dtype=np.int64)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
