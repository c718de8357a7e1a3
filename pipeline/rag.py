"""The RAG core in one process: plan -> retrieve from the index -> answer. What `lookahead-rag
ask`, benchmarks and tests use; the Serve app runs the same halves in separate deployments."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pipeline.answerer import Answerer
from pipeline.config import Config
from pipeline.planning import JobRequest, plan_job
from pipeline.resources import open_index
from pipeline.wire import Answer, Event, GenerationJob


class RagPipeline:
    """Retrieval and generation in one process."""

    def __init__(self, index: Any, answerer: Answerer, config: Config) -> None:
        self.index, self.answerer, self.config = index, answerer, config

    @classmethod
    def load(cls, config: Config) -> RagPipeline:
        # The index first: faiss sets the process's OpenMP thread count on import, and torch
        # shares it, so the answerer's thread setting has to come after.
        index = open_index(config)
        return cls(index, Answerer.load(config.model, config.generation, config.ngrams), config)

    def job(self, question: str, **options: Any) -> GenerationJob:
        """The planned job for `question` with its passages; `options` are `JobRequest`'s
        (top_k, max_tokens, stop, lookahead, temperature, ...). Raises `PlanError`."""
        plan = plan_job(JobRequest.question(question, **options), self.config)
        passages = self.index.search(plan.query, plan.retrieve_k) if plan.retrieve_k else ()
        return plan.job(passages)

    def stream(self, question: str, **options: Any) -> Iterator[Event]:
        return self.answerer.stream(self.job(question, **options))

    def answer(self, question: str, **options: Any) -> Answer:
        return Answer.collect(self.stream(question, **options))
