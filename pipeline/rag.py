"""The RAG core in one process: plan -> retrieve from the index -> answer on the decode engine,
as the service does. What `lookahead-rag ask`, benchmarks and tests use; the Serve app runs the
same halves in separate deployments."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from pipeline import batching
from pipeline.batching import AnswerBatch, load_batch
from pipeline.config import Config
from pipeline.planning import JobRequest, plan_job
from pipeline.resources import open_index
from pipeline.wire import Answer, Event, GenerationJob


class RagPipeline:
    """Retrieval and generation in one process; questions are answered on `batch`."""

    def __init__(self, index: Any, batch: AnswerBatch, config: Config) -> None:
        self.index, self.batch, self.config = index, batch, config

    @classmethod
    def load(cls, config: Config, max_batch: int = 1) -> RagPipeline:
        """`max_batch`: questions `answer_all` decodes together (1: one at a time)."""
        # The index first: faiss sets the process's OpenMP thread count on import, and torch
        # shares it, so the answerer's thread setting has to come after.
        index = open_index(config)
        return cls(index, load_batch(config, max_batch), config)

    def job(self, question: str, **options: Any) -> GenerationJob:
        """The planned job for `question` with its passages; `options` are `JobRequest`'s
        (top_k, max_tokens, stop, lookahead, temperature, ...). Raises `PlanError`."""
        plan = plan_job(JobRequest.question(question, **options), self.config)
        passages = self.index.search(plan.query, plan.retrieve_k) if plan.retrieve_k else ()
        return plan.job(passages)

    def stream(self, question: str, **options: Any) -> Iterator[Event]:
        return batching.stream(self.batch, self.job(question, **options))

    def answer(self, question: str, **options: Any) -> Answer:
        return Answer.collect(self.stream(question, **options))

    def answer_all(self, questions: Sequence[str], **options: Any) -> list[Answer | Exception]:
        """Every question's answer (or what failed it), decoded together, `max_batch` at once."""
        jobs = [self.job(question, **options) for question in questions]
        return batching.answer_all(self.batch, jobs)

    def close(self) -> None:
        self.batch.answerer.close()
