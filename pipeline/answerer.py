"""The Generator's half of the RAG core, without Ray: a planned job with its passages -> prompt
within the context budget -> request drafter seeded from the passages and the prompt ->
lookahead decoding -> events: `Started` (sources), a `Delta` per step, `Finished` (stats).

The Serve Generator, the batch job's generator actors and `RagPipeline` (in-process) all answer
through `Answerer`, on the decode engine's batch (`pipeline.batching`, which uses `prepare`,
`started` and `events`). Retrieval is the other half (`retrieval`, the Serve Retriever).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch

from generation import (
    Chunk,
    DecodeStats,
    LoadedModel,
    LookaheadConfig,
    LookaheadGenerator,
    SamplingParams,
    load_model,
)
from generation.defaults import prefix_cache_bytes
from pipeline.config import GenerationSection, ModelSection, NgramsSection
from pipeline.prompt import BASE_STOP, base_render, build_prompt, chat_render, completion_render
from pipeline.wire import (
    AnswerStats,
    Delta,
    Event,
    Finished,
    GenerationJob,
    ModelInfo,
    ReplicaMetrics,
    ServingStats,
    SourceRef,
    Started,
    replica_name,
)
from trie_store import AnswerMemory, RequestDrafter
from trie_store.sharing import NgramSync, SyncConfig, model_namespace, store_from_url


@dataclass
class Prepared:
    """A job made ready to decode, and its answer's tokens so far (for the shared n-grams)."""

    token_ids: list[int]
    config: LookaheadConfig
    drafter: RequestDrafter
    sources: tuple[SourceRef, ...]
    lookahead: bool
    answer: list[int] = field(default_factory=list)


def source_ref(passage: Any) -> SourceRef:
    return SourceRef(
        id=str(passage.id),
        title=passage.title,
        source=passage.source,
        score=float(passage.score or 0.0),
        text=passage.text,
    )


def step_delta(chunk: Chunk) -> Delta:
    """The `Delta` of one decoded step. A step emits its accepted drafted tokens, then one of
    the model's own; only the last step can be cut short (a stop string, the token budget),
    and the stats it carries say how many drafted tokens that step accepted."""
    n_tokens = len(chunk.token_ids)
    if chunk.stats is None:
        return Delta(chunk.text, n_tokens, n_tokens - 1)
    return Delta(chunk.text, n_tokens, min(chunk.stats.accepted[-1], n_tokens))


def answer_stats(stats: DecodeStats, lookahead: bool) -> AnswerStats:
    return AnswerStats(
        steps=stats.steps,
        tokens_per_step=round(stats.tokens_per_step, 4),
        draft_tokens=int(sum(stats.draft_sizes)),
        accepted_tokens=int(sum(stats.accepted)),
        decode_seconds=stats.prefill_s + stats.draft_s + stats.forward_s + stats.accept_s,
        lookahead=lookahead,
        cached_prompt_tokens=stats.prefix_tokens,
    )


def shared_ngrams(generator: LookaheadGenerator, section: NgramsSection) -> NgramSync:
    """The replica's popular n-grams, syncing in the background, keyed by model and tokenizer."""
    lm = generator.lm
    namespace = model_namespace(lm.name, generator.vocab_size, lm.tokenizer.get_vocab())
    url = section.redis_url.get_secret_value() if section.redis_url else None
    timing = SyncConfig(
        flush_interval_s=section.flush_interval_s, pull_interval_s=section.pull_interval_s
    )
    return NgramSync(store_from_url(url, namespace), generator.vocab_size, config=timing).start()


def use_torch_threads(model: ModelSection) -> None:
    """Give torch (and the oneDNN kernels under it) every core, on the calling thread.

    Ray starts an actor with OMP_NUM_THREADS = its reserved CPUs (often 1), and OpenMP keeps the
    thread count per thread: a new thread starts from that variable, whatever another thread set.
    Call this on the thread that runs the model.
    """
    torch.set_num_threads(model.torch_threads or len(os.sched_getaffinity(0)))


class Answerer:
    """Builds the prompt, seeds the request trie and decodes: the Generator's whole job.

    ngrams: the replica's shared popular n-grams. A request also drafts from the global trie
    that is current when it starts; its finished answer is recorded for the others.
    """

    def __init__(
        self,
        generator: LookaheadGenerator,
        settings: GenerationSection,
        ngrams: NgramSync | None = None,
    ) -> None:
        self.generator = generator
        self.settings = settings
        self.tokenizer = generator.lm.tokenizer
        self.ngrams = ngrams
        # Greedy answers by their exact prompt, replayed as drafts when it comes again; a job
        # with `prefix_cache` off neither replays nor leaves its answer, as with its KV.
        self.answers = AnswerMemory() if settings.replay_answers else None
        self.name = replica_name()  # the replica, in its metrics
        lm = generator.lm
        self.model_info = ModelInfo(lm.name, lm.dtype_name, str(lm.device))

    @classmethod
    def from_model(
        cls, lm: LoadedModel, settings: GenerationSection, ngrams: NgramsSection | None = None
    ) -> Answerer:
        defaults = LookaheadConfig(
            draft_size=settings.draft_size, max_draft_size=settings.max_draft
        )
        generator = LookaheadGenerator(lm, defaults)
        shared = shared_ngrams(generator, ngrams) if ngrams and ngrams.enabled else None
        return cls(generator, settings, shared)

    @classmethod
    def load(
        cls, model: ModelSection, settings: GenerationSection, ngrams: NgramsSection | None = None
    ) -> Answerer:
        use_torch_threads(model)
        device = model.device
        if device == "auto":  # a Generator given num_gpus sees its GPU; elsewhere, the CPU
            device = "cuda" if torch.cuda.is_available() else "cpu"
        lm = load_model(model.name, dtype=model.dtype, device=device)
        return cls.from_model(lm, settings, ngrams)

    def close(self) -> None:
        """Stop syncing n-grams (one last flush)."""
        if self.ngrams is not None:
            self.ngrams.close()

    def budget(self, max_tokens: int) -> int:
        """Prompt tokens allowed: the configured budget, and never past the model's window."""
        window = self.generator.context_window
        budget = self.settings.max_prompt_tokens
        return budget if window is None else min(budget, window - max_tokens)

    def prefix_cache_bytes(self) -> int:
        """Bytes of prompt KV the replica's decoder keeps for reuse; 0: no prefix cache."""
        if not self.settings.prefix_cache:
            return 0
        return prefix_cache_bytes(self.settings.prefix_cache_bytes, str(self.generator.lm.device))

    def prepare(self, job: GenerationJob) -> Prepared:
        """The job's prompt within the context budget, its decoding settings and its drafter.
        Raises `ContextTooLongError` when the request alone does not fit."""
        stop = job.stop
        if job.prompt is not None:
            render = completion_render(self.tokenizer, job.prompt)
        elif getattr(self.tokenizer, "chat_template", None):
            render = chat_render(self.tokenizer, job.messages)
        else:  # a base model: a completion that ends where it would ask the next question
            render = base_render(self.tokenizer, job.messages)
            stop = (*stop, *(s for s in BASE_STOP if s not in stop))
        prompt = build_prompt(
            self.tokenizer,
            render,
            job.passages[: job.top_k],
            self.budget(job.max_tokens),
            self.settings.passage_order,
        )
        config = LookaheadConfig(
            max_new_tokens=job.max_tokens,
            stop=stop,
            draft_size=self.settings.draft_size if job.lookahead else 0,
            max_draft_size=self.settings.max_draft,
            reuse_prefix=job.prefix_cache,
            sampling=SamplingParams(
                temperature=job.temperature,
                top_p=job.top_p,
                repetition_penalty=job.repetition_penalty,
                seed=job.seed,
            ),
        )
        # Retrieved passages that did not make it into the prompt still seed the trie: the
        # answer often quotes them. Those in the prompt (the best ones, whatever their order
        # there) are seeded through the prompt itself.
        extra = [self._encode(p.text) for p in job.passages[len(prompt.passages) :]]
        shared = self.ngrams.global_trie() if self.ngrams is not None else None
        remembers = self.answers is not None and job.prefix_cache
        previous = self.answers.recall(prompt.token_ids) if remembers else None
        return Prepared(
            prompt.token_ids,
            config,
            RequestDrafter(prompt.token_ids, extra, global_trie=shared, previous_answer=previous),
            tuple(source_ref(p) for p in prompt.passages),
            job.lookahead,
        )

    def started(self, prepared: Prepared, serving: ServingStats | None = None) -> Started:
        return Started(len(prepared.token_ids), prepared.sources, self.metrics(serving))

    def events(
        self, prepared: Prepared, chunk: Chunk, serving: ServingStats | None = None
    ) -> list[Event]:
        """A decoded step's events: its `Delta`, then `Finished` after the last one (the answer
        recorded for the shared n-grams first). A chunk that failed its sequence raises."""
        if chunk.error is not None:
            raise chunk.error
        prepared.answer += chunk.token_ids
        events: list[Event] = [step_delta(chunk)]
        if chunk.finish_reason is not None:
            if self.ngrams is not None:
                self.ngrams.record(prepared.answer)
            config = prepared.config
            if self.answers is not None and config.reuse_prefix and config.sampling.greedy:
                self.answers.remember(prepared.token_ids, prepared.answer)
            events.append(_finished(chunk, prepared.lookahead, self.metrics(serving)))
        return events

    def metrics(self, serving: ServingStats | None = None) -> ReplicaMetrics | None:
        """This replica's own figures for the ingress's `/metrics` (None: nothing to show)."""
        sync = self.ngrams.stats() if self.ngrams is not None else None
        if sync is None and serving is None:
            return None
        return ReplicaMetrics(self.name, sync, serving, self.model_info)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)


def _finished(last: Chunk, lookahead: bool, replica: ReplicaMetrics | None) -> Finished:
    # OpenAI's vocabulary: the model's own end and a stop string are both "stop".
    reason = "length" if last.finish_reason == "length" else "stop"
    return Finished(reason, last.stats.tokens, answer_stats(last.stats, lookahead), replica)
