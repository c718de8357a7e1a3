"""The service's own RAG parts as the batch job's stages: retrieval planned as `/v1/rag` plans
it, and the Generator's batch (`pipeline.batching`) answering a block's questions together, so a
batch answer is the answer the service gives."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from pipeline.config import Config
from pipeline.jobs.batch import Search
from pipeline.planning import JobRequest, plan_job
from pipeline.wire import Answer, GenerationJob


def make_search(config: Config, version: int | None = None) -> Search:
    """`version` of the configured index (default: the current one), searched as the service
    plans it (on a retriever actor)."""
    from pipeline.resources import open_index

    return index_search(open_index(config, version), config)


def index_search(index: Any, config: Config) -> Search:
    """Retrieval as the service plans it: the prompt's passages and more to seed the trie."""

    def search(questions: Sequence[str]) -> Sequence[Sequence[Any]]:
        plans = [plan_job(JobRequest.question(q), config) for q in questions]
        k = max(plan.retrieve_k for plan in plans)  # one setting: the same for every question
        return index.search([plan.query for plan in plans], k)

    return search


def batch_job(question: str, passages: Sequence[Any], config: Config) -> GenerationJob:
    """A batch row's job: what `/v1/rag` and `ask` would plan for the same question."""
    return plan_job(JobRequest.question(question), config).job(passages)


class ServiceAnswerer:
    """The Generator's batch on a batch actor, with its own shared n-gram sync (as each Serve
    Generator replica has): answers learnt here help the other actors and the service."""

    def __init__(self, config: Config) -> None:
        from pipeline.batching import load_batch

        self.config = config
        self.batch = load_batch(config)

    def __call__(
        self, questions: Sequence[str], passages: Sequence[Sequence[Any]]
    ) -> list[dict[str, Any] | Exception]:
        from pipeline.batching import answer_all

        # Questions that retrieved the same passages share their prompt up to the question:
        # queued side by side, the first one's prefill is the others' prefix cache hit.
        order = sorted(range(len(questions)), key=lambda i: [p.id for p in passages[i]])
        jobs = [batch_job(questions[i], passages[i], self.config) for i in order]
        answers: list[dict[str, Any] | Exception] = [{}] * len(order)
        for i, answer in zip(order, answer_all(self.batch, jobs), strict=True):
            answers[i] = answer if isinstance(answer, Exception) else _fields_or_error(answer)
        return answers

    def flush(self) -> None:
        """Push this block's n-grams and pull the others' (one store round trip each)."""
        if self.batch.answerer.ngrams is not None:
            self.batch.answerer.ngrams.sync_now()

    def close(self) -> None:
        self.batch.answerer.close()


def _fields_or_error(answer: Answer) -> dict[str, Any] | Exception:
    try:
        return answer_fields(answer)
    except RuntimeError as exc:
        return exc


def answer_fields(answer: Answer) -> dict[str, Any]:
    """An answer as the `answer`, `finish_reason`, `sources`, `stats` of a batch record."""
    finished = answer.finished
    if finished is None:
        raise RuntimeError("generation ended without finishing the answer")
    return {
        "answer": answer.text,
        "finish_reason": finished.finish_reason,
        "sources": [asdict(source) for source in answer.sources],
        "stats": {
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": finished.completion_tokens,
            **asdict(finished.stats),
        },
    }
