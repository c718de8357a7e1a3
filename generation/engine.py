"""The public generation API: a LookaheadGenerator over one loaded model.

It turns prompts (token ids, a user message, or chat messages) into checked requests (`request`:
the drafter, the draft-size policy, the stop scan, the accept rule), and runs them on the one
decode engine, `generation.batch.BatchDecoder`: `decoder(max_batch)` for many at once (the
service, batch jobs), `stream` / `generate` for one alone, a batch of one. Output is plain greedy
decoding's, token for token; with sampling settings, a sample from exactly the distribution
plain sampling draws from.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from generation.batch import BatchDecoder
from generation.defaults import DEFAULT_MODEL, MAX_DRAFT_SIZE, PREFILL_CHUNK
from generation.detokenize import IncrementalDetokenizer
from generation.models import LoadedModel, load_model
from generation.prefix_cache import PrefixCache
from generation.request import Chunk, DecodeStats, DraftPolicy, Request
from generation.sampling import SamplingParams
from generation.step_cost import BatchCosts, load_batch_costs
from generation.stopping import StopScanner
from generation.verify import check_tree_attention
from trie_store import Drafter, RequestDrafter
from trie_store.config import is_int

# What `encode` accepts: a user message, chat messages, or token ids.
PromptInput = str | Sequence[Mapping[str, str]] | Sequence[int] | np.ndarray


@dataclass(frozen=True)
class LookaheadConfig:
    """Per-request decoding settings.

    `draft_size="auto"` picks each step's draft size from the measured step-cost curve so that
    drafting never costs more than it yields; an int fixes it (0 = plain decoding), for
    experiments and tests. `prompt + max_new_tokens` must fit the model's context window: the
    engine refuses rather than silently truncating either. `sampling` defaults to greedy.
    `reuse_prefix=False` keeps the request out of the decoder's prefix cache (the baseline of
    benchmarks): it neither takes cached KV nor leaves its own.
    """

    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    draft_size: int | Literal["auto"] = "auto"
    max_draft_size: int = MAX_DRAFT_SIZE
    ignore_eos: bool = False
    sampling: SamplingParams = field(default_factory=SamplingParams)
    reuse_prefix: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        if not is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int >= 1, got {self.max_new_tokens!r}")
        if not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop strings must be non-empty strings, got {self.stop!r}")
        if self.draft_size != "auto" and not (is_int(self.draft_size) and self.draft_size >= 0):
            raise ValueError(f"draft_size must be 'auto' or an int >= 0, got {self.draft_size!r}")
        if not is_int(self.max_draft_size) or self.max_draft_size < 0:
            raise ValueError(f"max_draft_size must be an int >= 0, got {self.max_draft_size!r}")
        if not isinstance(self.sampling, SamplingParams):
            raise ValueError(f"sampling must be a SamplingParams, got {self.sampling!r}")
        if not isinstance(self.reuse_prefix, bool):
            raise ValueError(f"reuse_prefix must be a bool, got {self.reuse_prefix!r}")


@dataclass(frozen=True)
class GenerationResult:
    token_ids: list[int]
    text: str
    finish_reason: str  # "eos", "stop" or "length"
    stats: DecodeStats


class LookaheadGenerator:
    """Lossless lookahead decoding on one model; cheap to call, safe to reuse across requests."""

    def __init__(
        self,
        lm: LoadedModel,
        config: LookaheadConfig | None = None,
        costs: BatchCosts | None = None,
        ragged: bool | None = None,
    ) -> None:
        """`costs`: a cost surface to use for every batch size (tests, benchmarks); None
        measures (or reads the cached) t(b, q) of this model and device as batches need it.
        `ragged`: verify trees of different sizes flattened in one pass; None (the default):
        wherever the load-time probe finds it exact, False: the padded layout (benchmarks)."""
        ragged_ok = check_tree_attention(lm.model)
        self.ragged = ragged_ok if ragged is None else ragged and ragged_ok
        self.lm = lm
        self.config = config or LookaheadConfig()
        self._costs = costs
        self._costs_given = costs is not None
        self._lone: BatchDecoder | None = None  # stream's batch of one, kept with its buffers
        if self.config.draft_size == "auto":
            self.costs()  # measured (or read) at start-up, not mid-request
        generation_config = lm.model.generation_config
        eos = generation_config.eos_token_id if generation_config is not None else None
        eos = lm.model.config.eos_token_id if eos is None else eos
        self.eos_ids = frozenset([eos] if isinstance(eos, int) else eos or ())
        self.vocab_size = lm.model.get_input_embeddings().num_embeddings
        self.context_window = context_window(lm.model.config)

    @classmethod
    def load(
        cls,
        model: str = DEFAULT_MODEL,
        dtype: str = "auto",
        device: str = "cpu",
        config: LookaheadConfig | None = None,
    ) -> LookaheadGenerator:
        return cls(load_model(model, dtype=dtype, device=device), config)

    def costs(self, max_batch: int = 1) -> BatchCosts:
        """The verify cost t(b, q) for batches of up to `max_batch` (cached across runs)."""
        if not self._costs_given and (self._costs is None or max(self._costs.curves) < max_batch):
            self._costs = load_batch_costs(self.lm, max_batch, self.ragged)
        return self._costs

    def decoder(
        self, max_batch: int = 1, prefill_chunk: int = PREFILL_CHUNK, prefix_cache_bytes: int = 0
    ) -> BatchDecoder:
        """An idle batch of up to `max_batch` sequences on this model, its cost surface measured
        now when drafts are sized automatically by default; with a prefix cache of
        `prefix_cache_bytes` (0: none) shared by the requests it serves."""
        costs = self.costs(max_batch) if self.config.draft_size == "auto" else self._costs
        prefix_cache = PrefixCache(prefix_cache_bytes) if prefix_cache_bytes else None
        return BatchDecoder(self.lm, max_batch, costs, prefill_chunk, self.ragged, prefix_cache)

    def encode(self, prompt: PromptInput) -> np.ndarray:
        """Token ids of a prompt: ids as given; a string is one user message; messages go
        through the tokenizer's chat template with the assistant turn opened."""
        if isinstance(prompt, str):
            messages = [{"role": "user", "content": prompt}]
        elif isinstance(prompt, np.ndarray) or (
            isinstance(prompt, Sequence) and all(is_int(t) for t in prompt)
        ):
            return self._check_ids(np.asarray(prompt))
        elif isinstance(prompt, Sequence) and all(
            isinstance(m, Mapping) and {"role", "content"} <= m.keys() for m in prompt
        ):
            messages = list(prompt)
        else:
            raise ValueError(
                "a prompt is token ids, a string, or a list of "
                f"{{'role': ..., 'content': ...}} messages; got {prompt!r:.200}"
            )
        tokenizer = self.lm.tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                f"model {self.lm.name!r} has no chat template: pass token ids instead of messages"
            )
        ids = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        return self._check_ids(np.asarray(ids))

    def stream(
        self,
        prompt: PromptInput,
        config: LookaheadConfig | None = None,
        drafter: Drafter | None = None,
    ) -> Iterator[Chunk]:
        """Chunks as steps accept them; the last one carries `finish_reason` and the stats: the
        request decoded alone, a batch of one.

        Input is checked here, before the first chunk is asked for. Without a drafter, one is
        seeded from the prompt (the RAG service passes one seeded from its passages too).
        """
        request = self.request(prompt, config, drafter)
        if self._lone is None:
            self._lone = self.decoder()
        # A stream still being read holds the kept decoder: this one gets its own.
        decoder = self._lone if not self._lone.busy else self.decoder()
        return _alone(decoder, decoder.add(request))

    def request(
        self,
        prompt: PromptInput,
        config: LookaheadConfig | None = None,
        drafter: Drafter | None = None,
    ) -> Request:
        """A checked prompt with everything its decoding needs (`stream`, or a decoder's `add`).
        Raises ValueError for a bad prompt or one that cannot fit the context window."""
        config = config or self.config
        ids = self.encode(prompt)
        if self.context_window is not None and len(ids) + config.max_new_tokens > (
            self.context_window
        ):
            raise ValueError(
                f"the prompt has {len(ids)} tokens and max_new_tokens is "
                f"{config.max_new_tokens}: together more than the context window of "
                f"{self.context_window} tokens of {self.lm.name!r}; shorten the prompt or "
                f"lower max_new_tokens"
            )
        scanner = StopScanner(
            IncrementalDetokenizer(self.lm.tokenizer, ids),
            frozenset() if config.ignore_eos else self.eos_ids,
            config.stop,
        )
        return Request(
            ids,
            drafter if drafter is not None else default_drafter(ids),
            policy(config),
            scanner,
            config.max_new_tokens,
            config.sampling.rule(),
            config.reuse_prefix,
        )

    def generate(
        self,
        prompt: PromptInput,
        config: LookaheadConfig | None = None,
        drafter: Drafter | None = None,
    ) -> GenerationResult:
        chunks = list(self.stream(prompt, config, drafter))
        last = chunks[-1]
        return GenerationResult(
            token_ids=[t for c in chunks for t in c.token_ids],
            text="".join(c.text for c in chunks),
            finish_reason=last.finish_reason,
            stats=last.stats,
        )

    def _check_ids(self, ids: np.ndarray) -> np.ndarray:
        if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"prompt ids must be a non-empty 1-D integer sequence, got {ids!r}")
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            raise ValueError(
                f"prompt ids must lie in [0, {self.vocab_size}) for {self.lm.name!r}; "
                f"got min {ids.min()}, max {ids.max()}"
            )
        return ids.astype(np.int64)


def _alone(decoder: BatchDecoder, handle: int) -> Iterator[Chunk]:
    """The chunks of a decoder's only sequence; what failed it is raised, and a reader that
    stops early cancels it."""
    finished = False
    try:
        while not finished:
            for _, chunk in decoder.step():
                finished = chunk.finish_reason is not None
                if chunk.error is not None:
                    raise chunk.error
                yield chunk
    finally:
        if not finished:
            decoder.cancel(handle)


def policy(config: LookaheadConfig) -> DraftPolicy:
    """A fixed draft size verifies that many nodes; "auto" drafts the most and lets the cost
    model choose."""
    if config.draft_size == "auto":
        return DraftPolicy(max_nodes=config.max_draft_size)
    return DraftPolicy(max_nodes=config.draft_size, fixed=config.draft_size)


def context_window(config) -> int | None:
    """Tokens the model can attend over: its position limit, and its sliding window if any
    (the tree mask is a full-attention mask, exact only while everything fits the window)."""
    limits = [
        getattr(config, name)
        for name in ("max_position_embeddings", "n_positions", "sliding_window")
        if is_int(getattr(config, name, None))
    ]
    return min(limits, default=None)


def default_drafter(prompt: np.ndarray) -> Drafter:
    """A request trie seeded from the prompt alone."""
    return RequestDrafter(prompt)
