"""`lookahead-rag batch` end to end with the real models: a real index, the real generator on
Ray Data actors sharing n-grams through a real Redis, a real resume. The first run is a
subprocess (the command starts and stops its own Ray); the resume, with nothing left to
answer, runs in this process and must not start Ray at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import redis
import torch
from servehelpers import ONE_PATH_QUESTIONS

from pipeline.commands.cli import main
from pipeline.jobs.batch_io import OK, failed_record, final_records, write_part
from pipeline.jobs.index_pin import JOB_FILE
from retrieval import versions
from trie_store import TrieConfig
from trie_store.sharing.members import answer_ngrams

QUESTIONS = (*ONE_PATH_QUESTIONS, "", ONE_PATH_QUESTIONS[0])  # q3 repeats q0


def _batch(*argv: str, env: dict[str, str]) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.commands.cli", "batch", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _ask(question: str, *argv: str, capsys) -> dict:
    """`lookahead-rag ask --json` in this process (it gives torch every core: restored after)."""
    threads = torch.get_num_threads()
    capsys.readouterr()
    try:
        assert main(["ask", question, "--json", *argv]) == 0
    finally:
        torch.set_num_threads(threads)
    return json.loads(capsys.readouterr().out)


def _shared_ngrams(url: str) -> set[bytes]:
    client = redis.Redis.from_url(url)
    try:
        keys = client.keys("lookahead-rag:*:popular")
        assert len(keys) == 1, keys  # one model, one namespace
        return set(client.zrange(keys[0], 0, -1))
    finally:
        client.close()


def test_batch_answers_as_the_service_and_resumes(
    tmp_path: Path, small_index_dir, lm, redis_server, capsys
) -> None:
    questions = tmp_path / "questions.jsonl"
    lines = [json.dumps({"id": f"q{i}", "question": q}) for i, q in enumerate(QUESTIONS)]
    questions.write_text("\n".join(lines) + "\n")
    out = tmp_path / "answers"
    argv = ("--questions", str(questions), "--index", str(small_index_dir), "--out", str(out))
    argv += ("--max-tokens", "12")

    summary = _batch(*argv, env={"LOOKAHEAD_RAG__NGRAMS__REDIS_URL": redis_server.url})
    assert (summary["rows"], summary["answered"], summary["invalid"]) == (4, 3, 1)
    version = versions.current(small_index_dir)
    assert summary["index_version"] == version  # pinned, recorded, let go: nothing left
    assert json.loads((out / JOB_FILE).read_text())["version"] == version
    assert versions.pins(small_index_dir) == {}
    records = {r["id"]: r for r in final_records(out).values()}
    assert records["q2"]["status"] == "invalid"
    # the repeat was queued beside its twin: the second of them found its whole prompt cached
    assert records["q3"]["answer"] == records["q0"]["answer"]
    cached = max(records[k]["stats"]["cached_prompt_tokens"] for k in ("q0", "q3"))
    assert cached > records["q0"]["stats"]["prompt_tokens"] - 32

    expected = _ask(
        QUESTIONS[0], "--index", str(small_index_dir), "--max-tokens", "12", capsys=capsys
    )
    assert records["q0"]["answer"] == expected["answer"]  # one request path: ask's answer
    assert [s["id"] for s in records["q0"]["sources"]] == [s["id"] for s in expected["sources"]]
    assert records["q0"]["stats"]["completion_tokens"] == expected["usage"]["completion_tokens"]
    shared = _shared_ngrams(redis_server.url)
    for key in ("q0", "q1"):
        assert records[key]["status"] == OK
        # the actor's answers reached the shared store before their part was written
        tokens = lm.tokenizer.encode(records[key]["answer"], add_special_tokens=False)
        assert shared & set(answer_ngrams(tokens, TrieConfig())), key

    parts = sorted(out.glob("part-*"))
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    capsys.readouterr()
    assert main(["batch", *argv, "--resume"]) == 0
    resumed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (resumed["skipped"], resumed["answered"], resumed["errors"]) == (4, 0, 0)
    assert resumed["index_version"] == version
    assert sorted(out.glob("part-*")) == parts
    started = {p.pid for p in psutil.Process().children(recursive=True)} - before
    assert not started, "the resume started processes (Ray) with nothing to answer"


def test_an_unreadable_questions_file_is_one_error_line(tmp_path: Path, capsys) -> None:
    argv = ["batch", "--questions", str(tmp_path / "q.csv"), "--out", str(tmp_path / "o")]
    (tmp_path / "q.csv").write_text("question\nwhat?\n")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert "expected .jsonl or .parquet" in err


def test_an_out_folder_of_another_run_or_file_is_refused_before_any_work(
    tmp_path: Path, capsys
) -> None:
    questions, out = tmp_path / "q.jsonl", tmp_path / "out"
    questions.write_text('{"id": "a", "question": "What is a set?"}\n')
    write_part(out, [failed_record({"row": 1, "id": "b", "question": "Other?"}, "oom")], "jsonl")
    argv = ["batch", "--questions", str(questions), "--out", str(out)]
    assert main(argv) == 1
    assert "already holds 1 records of an earlier run: --resume it" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 1
    assert "written for another version of the file" in capsys.readouterr().err
