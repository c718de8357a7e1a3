"""Batch RAG on Ray Data: questions -> retrieve (actor pool) -> generate (actor pool) -> parts.

The driver reads the questions (small next to the work they cause) and turns every bad row into
an `invalid` record at once; the good rows flow through two actor pools, each actor loading its
model once: retrievers (CPU) add the passages, generators (GPU when asked) answer. The driver
takes the answered blocks as they stream out and writes each as one part file, atomically, so
an interrupted run keeps every finished block and a rerun with `skip` picks up the rest. Any
error while answering one row becomes that row's `failed` record, never the job's failure.
Ray is entered only when some row needs answering, so rerunning a finished job costs nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from pipeline.jobs.batch_io import (
    OK,
    QUESTION_SCHEMA,
    Counts,
    Summary,
    failed_record,
    invalid_record,
    write_part,
)
from pipeline.model_thread import ModelThread

# Retrieval for many questions at once: questions -> passages per question.
Search = Callable[[Sequence[str]], Sequence[Sequence[Any]]]


class QuestionAnswerer(Protocol):
    """Answers a block's questions together, each from its passages: per question, its answer,
    finish_reason, sources and stats, or the exception that failed it (it alone)."""

    def __call__(
        self, questions: Sequence[str], passages: Sequence[Sequence[Any]]
    ) -> list[dict[str, Any] | Exception]: ...

    def flush(self) -> None:
        """After each block, before its part is written: share what the block taught (the
        answers' n-grams), so a finished part's n-grams are in the shared store."""

    def close(self) -> None:
        """Once, when the actor ends."""


@dataclass(frozen=True)
class BatchOptions:
    retrieve_actors: int = 1
    generate_actors: int = 1
    gpus_per_actor: float = 0.0  # per generator actor; fractions share a GPU
    cpus_per_actor: float = 1.0
    # Rows per block: the unit of work, of progress and of a part file; a generator actor
    # decodes a block's questions together, so this is at most its batch size.
    block_rows: int = 8
    fmt: str = "jsonl"
    progress: bool = True


@dataclass(frozen=True)
class Stages:
    """How each actor builds its model: picklable zero-argument factories (e.g. partials of
    module-level functions), called once per actor, on the actor."""

    make_search: Callable[[], Search]
    make_answerer: Callable[[], QuestionAnswerer]
    on_part: Callable[[Path], None] = field(default=lambda _: None)  # after each part


class RetrieveStage:
    """Ray Data actor: adds `passages` (and `error` where retrieval failed) to each row."""

    def __init__(self, make_search: Callable[[], Search]) -> None:
        self.model = ModelThread()  # Ray Data calls from another thread than this one
        self.search = self.model.run(make_search)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.model.run(self._retrieve, batch)

    def _retrieve(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        questions = [str(q) for q in batch["question"]]
        errors: list[str | None] = [None] * len(questions)
        try:
            found = list(self.search(questions))
        except Exception:  # find the row that breaks the batch; the others still get passages
            found = []
            for i, question in enumerate(questions):
                try:
                    found.append(self.search([question])[0])
                except Exception as exc:
                    found.append([])
                    errors[i] = f"retrieval failed: {type(exc).__name__}: {exc}"
        passages = np.empty(len(found), dtype=object)
        passages[:] = [list(p) for p in found]
        return {**batch, "passages": passages, "error": np.array(errors, dtype=object)}


class GenerateStage:
    """Ray Data actor: turns each row into its output record (JSON), answered or failed; the
    block's questions are decoded together."""

    def __init__(self, make_answerer: Callable[[], QuestionAnswerer]) -> None:
        self.model = ModelThread()
        self.answer = self.model.run(make_answerer)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.model.run(self._generate, batch)

    def _generate(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [
            {
                "row": int(batch["row"][i]),
                "id": _string_or_none(batch["id"][i]),
                "question": str(batch["question"][i]),
                "error": _string_or_none(batch["error"][i]),
            }
            for i in range(len(batch["row"]))
        ]
        todo = [i for i, row in enumerate(rows) if not row["error"]]
        try:
            answered = self.answer(
                [rows[i]["question"] for i in todo], [batch["passages"][i] for i in todo]
            )
        except Exception as exc:  # the whole block: each of its rows fails with it
            answered = [exc] * len(todo)
        outcomes: dict[int, dict[str, Any] | Exception] = dict(zip(todo, answered, strict=True))
        records = [json.dumps(_record(row, outcomes.get(i))) for i, row in enumerate(rows)]
        self.answer.flush()
        return {"record": np.array(records, dtype=object)}

    def __del__(self) -> None:  # Ray Data drops the actor's stage when the pool ends
        self.answer.close()


def _record(row: dict[str, Any], outcome: dict[str, Any] | Exception | None) -> dict[str, Any]:
    if row["error"]:
        return failed_record(row, row["error"])
    if isinstance(outcome, Exception):
        return failed_record(row, f"{type(outcome).__name__}: {outcome}")
    return {**row, "status": OK, "error": None, **outcome}


def _string_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None  # a null is None, or NaN in an all-null column


def run_batch(
    questions: pa.Table,
    out_dir: Path,
    stages: Stages,
    options: BatchOptions = BatchOptions(),
    skip: frozenset[int] = frozenset(),
    ray_session: Callable[[], AbstractContextManager[Any]] = nullcontext,
) -> Summary:
    """Answer every row of `questions` whose row number is not in `skip`; write the records under
    `out_dir`. Ray is used inside `ray_session()`, entered only when a row needs answering
    (e.g. `ray_runtime.connected`; the default expects Ray initialised already). The summary's
    time starts once Ray is up: it counts the actors' model loading, not Ray's start."""
    rows = [r for r in questions.to_pylist() if r["row"] not in skip]
    valid = [r for r in rows if not r["error"]]
    with ray_session() if valid else nullcontext():
        start = time.perf_counter()
        invalid = [invalid_record(r) for r in rows if r["error"]]
        counts = Counts.of(invalid)
        if invalid:
            stages.on_part(write_part(out_dir, invalid, options.fmt))
        if valid:
            counts += _answer(valid, out_dir, stages, options, start)
        return Summary(counts, skipped=questions.num_rows - len(rows), seconds=_since(start))


def _answer(
    rows: list[dict[str, Any]], out_dir: Path, stages: Stages, options: BatchOptions, start: float
) -> Counts:
    from ray import data as ray_data

    n = options.block_rows
    blocks = [
        pa.Table.from_pylist(rows[i : i + n], schema=QUESTION_SCHEMA)
        for i in range(0, len(rows), n)
    ]
    dataset = (
        ray_data.from_arrow(blocks)
        .map_batches(
            RetrieveStage,
            fn_constructor_kwargs={"make_search": stages.make_search},
            compute=ray_data.ActorPoolStrategy(size=options.retrieve_actors),
            batch_size=None,  # one block per call: blocks stay the unit end to end
            num_cpus=options.cpus_per_actor,
        )
        .map_batches(
            GenerateStage,
            fn_constructor_kwargs={"make_answerer": stages.make_answerer},
            compute=ray_data.ActorPoolStrategy(size=options.generate_actors),
            batch_size=None,
            num_cpus=options.cpus_per_actor,
            num_gpus=options.gpus_per_actor,
        )
    )
    counts = Counts()
    with tqdm(total=len(rows), unit="q", desc="answering", disable=not options.progress) as bar:
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            records = [json.loads(r) for r in batch["record"]]
            stages.on_part(write_part(out_dir, records, options.fmt))
            counts += Counts.of(records)
            bar.update(len(records))
            bar.set_postfix(
                errors=counts.failed, tok_s=f"{counts.completion_tokens / _since(start):.1f}"
            )
    return counts


def _since(start: float) -> float:
    return time.perf_counter() - start
