"""The Ray Data plumbing of the batch job, on a real local Ray, with hand-built stages: every
row ends as exactly one record, errors stay in their row, an interrupted run resumes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
import psutil
import pytest

from pipeline.jobs.batch import BatchOptions, GenerateStage, RetrieveStage, Stages, run_batch
from pipeline.jobs.batch_io import (
    FAILED,
    INVALID,
    OK,
    final_records,
    missing_records,
    read_questions,
    read_records,
    settled_rows,
)
from pipeline.ray_runtime import ray

# The stages are defined here, so Ray workers get them by value, not by importing this file.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

QUESTIONS = [
    '{"id": "q1", "question": "What is a tuple?"}',
    '{"id": "q2", "question": "Explain dict views"}',
    '{"id": "q3", "question": ""}',
    "not json",
    '{"id": "q5", "question": "BOOM in the generator"}',
    '{"id": "q6", "question": "CRASH in the retriever"}',
    '{"id": "q7", "question": "What does zip do?"}',
    '{"id": "q8", "question": "Why use pathlib?"}',
    '{"id": "4", "question": "What is a frozenset?"}',  # not line 4's, which gave no id
]


def _retriever() -> object:
    def search(questions):
        if any("CRASH" in q for q in questions):
            raise RuntimeError("index shard unavailable")
        return [[f"passage about {q.split()[-1]}"] for q in questions]

    return search


class EchoAnswerer:
    """Answers in capitals; with `trace`, appends `flush`/`close` lines to a file per actor."""

    def __init__(self, tag: str, trace: Path | None = None) -> None:
        self.tag, self.trace = tag, trace

    def __call__(self, questions, passages):
        return [self._one(q, p) for q, p in zip(questions, passages, strict=True)]

    def _one(self, question, passages):
        if "BOOM" in question:
            return ValueError("context too long")
        words = question.split()
        stats = {
            "prompt_tokens": 10, "completion_tokens": len(words), "steps": 2,
            "tokens_per_step": len(words) / 2, "draft_tokens": 4, "accepted_tokens": 1,
            "decode_seconds": 0.01, "lookahead": True, "cached_prompt_tokens": 0,
        }  # fmt: skip
        source = {"id": passages[0], "title": "", "source": self.tag, "score": 1.0}
        return {"answer": question.upper(), "finish_reason": "stop", "sources": [source],
                "stats": stats}  # fmt: skip

    def flush(self) -> None:
        self._note("flush")

    def close(self) -> None:
        self._note("close")

    def _note(self, what: str) -> None:
        if self.trace is not None:
            self.trace.mkdir(exist_ok=True)
            with (self.trace / f"{os.getpid()}.log").open("a") as log:
                log.write(what + "\n")


def _expected(question: str, tag: str = "t") -> dict:
    return EchoAnswerer(tag)([question], _retriever()([question]))[0]


@pytest.fixture
def questions(tmp_path: Path):
    path = tmp_path / "questions.jsonl"
    path.write_text("\n".join(QUESTIONS) + "\n")
    return read_questions(path, max_chars=100)


def _stages(on_part=lambda _: None, trace: Path | None = None) -> Stages:
    return Stages(partial(_retriever), partial(EchoAnswerer, "t", trace), on_part=on_part)


def _traces(trace: Path) -> list[list[str]]:
    """Each generator actor's calls, in order."""
    return [log.read_text().split() for log in sorted(trace.glob("*.log"))]


def _by_id(records: list[dict]) -> dict[str | int, dict]:
    """Records by id, or by row number where the row gave none."""
    assert len({r["row"] for r in records}) == len(records), "a row was written twice"
    return {r["row"] if r["id"] is None else r["id"]: r for r in records}


def test_every_row_gets_one_record(local_ray, questions, tmp_path: Path) -> None:
    options = BatchOptions(retrieve_actors=1, generate_actors=2, block_rows=2, progress=False)
    trace = tmp_path / "trace"
    summary = run_batch(questions, tmp_path / "out", _stages(trace=trace), options)
    # q1 q2 q5 q6 q7 q8 4 reach the generators: 4 blocks of 2 or 1, each flushed before written
    assert sum(calls.count("flush") for calls in _traces(trace)) == 4
    records = _by_id(read_records(tmp_path / "out"))
    assert set(records) == {"q1", "q2", "q3", 4, "q5", "q6", "q7", "q8", "4"}
    for qid in ("q1", "q2", "q7", "q8", "4"):
        record = records[qid]
        assert record["status"] == OK
        fields = {k: record[k] for k in ("answer", "finish_reason", "sources", "stats")}
        assert fields == _expected(record["question"])
    assert records["q3"]["status"] == INVALID
    assert records["q3"]["error"] == "empty question"
    assert records[4]["status"] == INVALID
    assert records[4]["error"].startswith("invalid JSON")
    assert (records["q5"]["status"], records["q5"]["error"]) == (
        FAILED, "ValueError: context too long")  # fmt: skip
    assert records["q6"]["status"] == FAILED
    assert records["q6"]["error"] == "retrieval failed: RuntimeError: index shard unavailable"
    numbers = summary.as_dict()
    assert (numbers["rows"], numbers["answered"], numbers["errors"]) == (9, 5, 4)
    assert numbers["completion_tokens"] == sum(len(records[q]["question"].split())
                                               for q in ("q1", "q2", "q7", "q8", "4"))  # fmt: skip
    # Each actor that was used is closed, once, when the pool ends (asynchronously)
    deadline = time.monotonic() + 30
    while not all(calls[-1:] == ["close"] for calls in _traces(trace)):
        assert time.monotonic() < deadline, _traces(trace)
        time.sleep(0.2)
    assert all(calls.count("close") == 1 for calls in _traces(trace))


def test_a_finished_run_resumes_without_ray(questions, tmp_path: Path) -> None:
    """No row left to answer: the session (Ray) is never entered."""
    out = tmp_path / "out"
    done = {r["row"] for r in questions.to_pylist()}

    def no_ray():
        raise AssertionError("Ray was entered with nothing to answer")

    summary = run_batch(questions, out, _stages(), BatchOptions(progress=False), done, no_ray)
    assert summary.as_dict()["skipped"] == 9
    assert read_records(out) == []


def test_an_interrupted_run_resumes_without_loss_or_repeats(
    local_ray, questions, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    written: list[Path] = []

    def stop_after_two_parts(part: Path) -> None:
        written.append(part)
        if len(written) == 2:
            raise KeyboardInterrupt

    options = BatchOptions(block_rows=3, progress=False)
    with pytest.raises(KeyboardInterrupt):
        run_batch(questions, out, _stages(stop_after_two_parts), options)
    first = final_records(out)
    assert 0 < len(first) < 9  # some rows finished, not all

    skip = frozenset(settled_rows(out))
    summary = run_batch(questions, out, _stages(), options, skip=skip)
    final = final_records(out)
    assert set(final) == set(range(1, 10))
    assert missing_records(questions, out) == []
    for row in skip:
        assert final[row] == first[row]  # kept, not redone
    assert summary.skipped == len(skip)
    assert summary.as_dict()["rows"] == 9


def test_a_row_whose_id_a_bad_row_repeats_is_still_answered_on_resume(
    local_ray, tmp_path: Path
) -> None:
    """Issue 22: row 4 repeats row 1's id; its `invalid` record is written first, and the run
    is interrupted right after it. The resume must answer row 1, not take it as settled."""
    path = tmp_path / "questions.jsonl"
    lines = [f'{{"id": "{c}", "question": "What is {c}?"}}' for c in "abc"]
    path.write_text("\n".join([*lines, '{"id": "a", "question": "Again?"}']) + "\n")
    questions = read_questions(path, max_chars=100)
    out = tmp_path / "out"

    def stop_after_the_first_part(_: Path) -> None:
        raise KeyboardInterrupt

    options = BatchOptions(block_rows=4, progress=False)
    with pytest.raises(KeyboardInterrupt):
        run_batch(questions, out, _stages(stop_after_the_first_part), options)
    assert {(r["row"], r["id"], r["status"]) for r in read_records(out)} == {(4, "a", INVALID)}
    run_batch(questions, out, _stages(), options, skip=frozenset(settled_rows(out)))
    assert missing_records(questions, out) == []
    assert final_records(out)[1]["answer"] == "WHAT IS A?"


def test_ray_listens_on_loopback_only(local_ray) -> None:
    pids = {str(p.pid) for p in _ray_processes()}
    listening = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
    ray_lines = [line for line in listening.splitlines()
                 if any(f"pid={pid}," in line for pid in pids)]  # fmt: skip
    assert ray_lines, "no Ray listener found"
    for line in ray_lines:
        local = line.split()[3]
        assert local.startswith(("127.0.0.1:", "[::1]:", "[::ffff:127.0.0.1]:")), line


def _ray_processes() -> list[psutil.Process]:
    return psutil.Process().children(recursive=True)


def test_each_stage_loads_and_runs_its_model_on_one_thread_of_its_own() -> None:
    """Ray Data calls actors from a thread other than `__init__`'s; torch must not see two."""
    seen: dict[str, list[tuple[str, int]]] = {"retrieve": [], "generate": []}

    def traced(stage, make):
        seen[stage].append(("load", threading.get_ident()))
        model = make()

        def run(*args):
            seen[stage].append(("run", threading.get_ident()))
            return model(*args)

        run.flush = run.close = lambda: None
        return run

    retrieve = RetrieveStage(lambda: traced("retrieve", _retriever))
    generate = GenerateStage(lambda: traced("generate", partial(EchoAnswerer, "t")))
    row = {"row": np.array([0]), "id": np.array(["q1"]), "question": np.array(["What?"])}
    for _ in range(2):  # each call from a thread of its own, as Ray Data does
        caller = threading.Thread(target=lambda: generate(retrieve(row)))
        caller.start()
        caller.join()
    for stage, calls in seen.items():
        assert [kind for kind, _ in calls] == ["load", "run", "run"], stage
        assert len({ident for _, ident in calls}) == 1, stage
