"""Many answers decoded together: the `Answerer`'s jobs on the decode engine.

Every path that answers runs an `AnswerBatch`: the Serve Generator's model thread, the batch
job's generator actors (`answer_all`) and the in-process `RagPipeline` (`stream`, a batch of
one). A job is prepared (prompt, drafter) and checked when it arrives, so a bad one fails at
once; it then waits, oldest first, in the decoder's queue for one of its `max_batch` rows, and
decodes with every other live job, one forward pass per step, to exactly the answer it gets
alone (each with its own sampling settings, seed, stop strings and token budget; a
`lookahead: false` job drafts nothing inside the same batch). docs/batching.md has the design.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from generation.defaults import batch_size
from pipeline.answerer import Answerer, Prepared
from pipeline.config import Config
from pipeline.wire import (
    Answer,
    Event,
    Finished,
    GenerationJob,
    PrefixCacheCounts,
    ServingStats,
    Started,
)

if TYPE_CHECKING:
    from generation import DecodeStats

# One step's outcome for one job: its events (the last ends in `Finished`), or its failure.
Outcome = list[Event] | Exception


def load_batch(config: Config, max_batch: int | None = None) -> AnswerBatch:
    """The configured model and its batch of `max_batch` rows (default `generation.max_batch`),
    on the thread that will step it (see `pipeline.answerer.use_torch_threads`)."""
    answerer = Answerer.load(config.model, config.generation, config.ngrams)
    device = str(answerer.generator.lm.device)
    return AnswerBatch(answerer, max_batch or batch_size(config.generation.max_batch, device))


@dataclass
class _Job:
    prepared: Prepared
    stats: DecodeStats  # the decoder's live figures of it
    started: bool = False  # it has decoded a step (its queue time is counted)


class AnswerBatch:
    """Jobs in, events out, one decoder step per `step()`; a job's handle is its decoder's.
    Not thread-safe: one thread (the model's) calls everything."""

    def __init__(self, answerer: Answerer, max_batch: int) -> None:
        self.answerer = answerer
        self.decoder = answerer.generator.decoder(
            max_batch, prefix_cache_bytes=answerer.prefix_cache_bytes()
        )
        self._jobs: dict[int, _Job] = {}
        self._counts = ServingStats()

    @property
    def max_batch(self) -> int:
        return self.decoder.max_batch

    @property
    def busy(self) -> bool:
        return bool(self._jobs)

    def serving(self) -> ServingStats:
        """The load now (read from the decoder's rows and queue), the counts so far, and the
        decoder's prefix cache (if it has one)."""
        cache = self.decoder.prefix_cache
        counts = None
        if cache is not None:
            stats = cache.stats
            counts = PrefixCacheCounts(stats.queries, stats.hits, stats.evictions, stats.bytes)
        return replace(
            self._counts,
            running=self.decoder.live,
            waiting=self.decoder.waiting,
            prefix_cache=counts,
        )

    def add(self, job: GenerationJob) -> tuple[int, Started]:
        """Prepare and check `job`, then queue it; its handle and `Started` event. Raises what
        `prepare` and the generator's checks raise (a prompt that cannot fit), and nothing is
        queued then."""
        prepared = self.answerer.prepare(job)
        request = self.answerer.generator.request(
            prepared.token_ids, prepared.config, prepared.drafter
        )
        handle = self.decoder.add(request)
        self._jobs[handle] = _Job(prepared, request.stats)
        if prepared.drafter.replay is not None:
            replays = self._counts.answer_replays + 1
            self._counts = replace(self._counts, answer_replays=replays)
        return handle, self.answerer.started(prepared, self.serving())

    def queued(self, handle: int) -> bool:
        """Whether the job still waits for a row (it has not begun prefilling)."""
        return self.decoder.is_waiting(handle)

    def cancel(self, handle: int) -> None:
        """Drop a job, queued or decoding: its row is free for the next step."""
        if self._jobs.pop(handle, None) is not None:
            self.decoder.cancel(handle)

    def step(self) -> list[tuple[int, Outcome]]:
        """One decoder step (admitting queued jobs into free rows first): each job's outcome."""
        if not self._jobs:
            return []
        stats = self.decoder.stats
        steps, sequences = stats.steps, stats.sequences
        chunks = self.decoder.step()
        if stats.steps > steps:
            sizes = self._counts.batch_sizes.add(stats.sequences - sequences)
            self._counts = replace(self._counts, batch_sizes=sizes)
        out: list[tuple[int, Outcome]] = []
        for handle, chunk in chunks:
            job = self._jobs[handle]
            if not job.started:
                job.started = True
                waited = self._counts.queue_seconds.add(job.stats.queue_s)
                self._counts = replace(self._counts, queue_seconds=waited)
            if chunk.error is None:
                self._count_draft(job.stats)
            if chunk.finish_reason is not None:
                del self._jobs[handle]
            try:
                serving = self.serving() if chunk.finish_reason is not None else None
                out.append((handle, self.answerer.events(job.prepared, chunk, serving)))
            except Exception as exc:  # this job alone failed (its drafter, the model's pass)
                self.cancel(handle)
                out.append((handle, exc))
        return out

    def _count_draft(self, stats: DecodeStats) -> None:
        """One sequence's draft of this step, as vLLM counts spec decoding."""
        if not stats.draft_sizes or not stats.draft_sizes[-1]:
            return
        accepted = stats.accepted[-1]
        per_position = list(self._counts.accepted_per_position)
        per_position += [0] * (accepted - len(per_position))
        for i in range(accepted):
            per_position[i] += 1
        c = self._counts
        self._counts = replace(
            c,
            drafts=c.drafts + 1,
            draft_tokens=c.draft_tokens + stats.draft_sizes[-1],
            accepted_tokens=c.accepted_tokens + accepted,
            accepted_per_position=tuple(per_position),
        )


def stream(batch: AnswerBatch, job: GenerationJob) -> Iterator[Event]:
    """One job's events as its steps produce them, on an idle batch: `Started`, a `Delta` per
    step, `Finished`. Stopping early cancels it."""
    if batch.busy:
        raise ValueError("stream needs an idle batch: its own job's outcomes only")
    handle, started = batch.add(job)
    finished = False
    try:
        yield started
        while not finished:
            for _, outcome in batch.step():
                if isinstance(outcome, Exception):
                    finished = True
                    raise outcome
                yield from outcome
                finished = isinstance(outcome[-1], Finished)
    finally:
        if not finished:
            batch.cancel(handle)


def answer_all(batch: AnswerBatch, jobs: Sequence[GenerationJob]) -> list[Answer | Exception]:
    """Every job's whole answer (or what failed it), decoded together on an idle batch."""
    if batch.busy:
        raise ValueError("answer_all needs an idle batch: its own jobs' outcomes only")
    results: list[Answer | Exception] = [Answer() for _ in jobs]
    index: dict[int, int] = {}
    for i, job in enumerate(jobs):
        try:
            handle, started = batch.add(job)
        except Exception as exc:
            results[i] = exc
            continue
        index[handle] = i
        results[i].add(started)
    while batch.busy:
        for handle, outcome in batch.step():
            i = index[handle]
            if isinstance(outcome, Exception):
                results[i] = outcome
            else:
                for event in outcome:
                    results[i].add(event)
    return results
