"""Many answers decoded together: the `Answerer`'s jobs on the batched engine.

The Serve Generator's model thread and the batch job's generator actors both run an
`AnswerBatch`. A job is prepared (prompt, drafter) when it arrives, so a bad one fails at once;
it then waits, oldest first, for one of the `max_batch` rows of `generation.BatchDecoder`, and
decodes with every other live job, one forward pass per step, to exactly the answer it gets
alone (each with its own sampling settings, seed, stop strings and token budget; a
`lookahead: false` job drafts nothing inside the same batch). docs/batching.md has the design.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

from generation.defaults import MAX_BATCH_CPU, MAX_BATCH_GPU
from pipeline.answerer import Answerer, Prepared
from pipeline.config import Config
from pipeline.wire import Answer, Event, GenerationJob, ServingStats, Started

if TYPE_CHECKING:
    from generation import BatchDecoder, DecodeStats

# One step's outcome for one job: its events (the last ends in `Finished`), or its failure.
Outcome = list[Event] | Exception


def batch_size(setting: int | Literal["auto"], device: str) -> int:
    """`generation.max_batch`: a number as given; "auto" the device's default."""
    if setting != "auto":
        return setting
    return MAX_BATCH_GPU if device.startswith("cuda") else MAX_BATCH_CPU


def load_batch(config: Config) -> AnswerBatch:
    """The configured model and its batch of `generation.max_batch` rows (on the thread that
    will step it: see `pipeline.answerer.use_torch_threads`)."""
    answerer = Answerer.load(config.model, config.generation, config.ngrams)
    device = str(answerer.generator.lm.device)
    return AnswerBatch(answerer, batch_size(config.generation.max_batch, device))


@dataclass
class _Job:
    prepared: Prepared
    queued_at: float
    row: int | None = None  # its handle in the decoder, once admitted
    stats: DecodeStats | None = None  # the decoder's live figures of it


class AnswerBatch:
    """Jobs in, events out, one decoder step per `step()`. Not thread-safe: one thread (the
    model's) calls everything."""

    def __init__(self, answerer: Answerer, max_batch: int) -> None:
        from generation import BatchDecoder

        self.answerer = answerer
        self.decoder: BatchDecoder = BatchDecoder(answerer.generator, max_batch)
        self._handles = itertools.count()
        self._jobs: dict[int, _Job] = {}
        self._waiting: deque[int] = deque()  # handles, oldest first
        self._by_row: dict[int, int] = {}  # decoder handle -> ours
        self._counts = ServingStats()

    @property
    def max_batch(self) -> int:
        return self.decoder.max_batch

    @property
    def busy(self) -> bool:
        return bool(self._jobs)

    def serving(self) -> ServingStats:
        """The load now and the counts so far."""
        waiting = len(self._waiting) + self.decoder.waiting
        return replace(self._counts, running=self.decoder.live, waiting=waiting)

    def add(self, job: GenerationJob) -> tuple[int, Started]:
        """Prepare `job` and queue it; its handle and `Started` event. Raises what `prepare`
        raises (a prompt that cannot fit), and nothing is queued then."""
        prepared = self.answerer.prepare(job)
        handle = next(self._handles)
        self._jobs[handle] = _Job(prepared, time.perf_counter())
        self._waiting.append(handle)
        return handle, self.answerer.started(prepared, self.serving())

    def cancel(self, handle: int) -> None:
        """Drop a job, queued or decoding: its row is free for the next step."""
        job = self._jobs.pop(handle, None)
        if job is None:
            return
        if job.row is None:
            self._waiting.remove(handle)
        else:
            self.decoder.cancel(job.row)
            del self._by_row[job.row]

    def step(self) -> list[tuple[int, Outcome]]:
        """Admit waiting jobs into free rows, then one decoder step: each job's outcome."""
        out = self._admit()
        if not self._by_row:
            return out
        before = self.decoder.stats.steps, self.decoder.stats.sequences
        try:
            chunks = self.decoder.step()
        except Exception as exc:  # the model failed the pass: every decoding job with it
            for handle in list(self._by_row.values()):
                self.cancel(handle)
                out.append((handle, exc))
            return out
        self._count_step(*before)
        for row, chunk in chunks:
            handle = self._by_row[row]
            job = self._jobs[handle]
            if chunk.error is None:
                self._count_draft(job.stats)
            if chunk.finish_reason is not None:
                del self._jobs[handle], self._by_row[row]
            try:
                serving = self.serving() if chunk.finish_reason is not None else None
                out.append((handle, self.answerer.events(job.prepared, chunk, serving)))
            except Exception as exc:  # this job alone failed (its drafter, its stop scan)
                self.cancel(handle)
                out.append((handle, exc))
        return out

    def _admit(self) -> list[tuple[int, Outcome]]:
        failed: list[tuple[int, Outcome]] = []
        while self._waiting and self.decoder.free:
            handle = self._waiting.popleft()
            job = self._jobs[handle]
            prepared = job.prepared
            try:
                row = self.decoder.add(prepared.token_ids, prepared.config, prepared.drafter)
            except Exception as exc:
                del self._jobs[handle]
                failed.append((handle, exc))
                continue
            job.row, job.stats = row, self.decoder.stats_of(row)
            self._by_row[row] = handle
            waited = self._counts.queue_seconds.add(time.perf_counter() - job.queued_at)
            self._counts = replace(self._counts, queue_seconds=waited)
        return failed

    def _count_step(self, steps: int, sequences: int) -> None:
        stats = self.decoder.stats
        if stats.steps > steps:
            sizes = self._counts.batch_sizes.add(stats.sequences - sequences)
            self._counts = replace(self._counts, batch_sizes=sizes)

    def _count_draft(self, stats: DecodeStats | None) -> None:
        """One sequence's draft of this step, as vLLM counts spec decoding."""
        if stats is None or not stats.draft_sizes or not stats.draft_sizes[-1]:
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
