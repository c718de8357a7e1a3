"""Batch job files: every input row becomes a question or an error record with its reason;
parts are whole or absent; resume skips exactly what is settled."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.jobs.batch_io import (
    FAILED,
    INVALID,
    OK,
    Counts,
    ResumeError,
    Summary,
    check_resumable,
    failed_record,
    final_records,
    invalid_record,
    missing_records,
    read_questions,
    read_records,
    settled_rows,
    write_part,
)


def _jsonl(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "questions.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _ok(row: int, qid: str, tokens: int = 5, steps: int = 3) -> dict:
    stats = {
        "prompt_tokens": 40,
        "completion_tokens": tokens,
        "steps": steps,
        "tokens_per_step": tokens / steps,
        "draft_tokens": 9,
        "accepted_tokens": tokens - steps,
        "decode_seconds": 0.5,
        "lookahead": True,
        "cached_prompt_tokens": 32,
    }
    source = {"id": "p1", "title": "t", "source": "s", "score": 0.5}
    return {
        "row": row, "id": qid, "question": "q?", "status": OK, "error": None,
        "answer": "a.", "finish_reason": "stop", "sources": [source], "stats": stats,
    }  # fmt: skip


def test_bad_rows_get_reasons_and_good_rows_keep_their_ids(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path,
        [
            '{"question": "What is a list?", "id": "a"}',
            '{"question": "   "}',
            "{not json",
            '["question"]',
            '{"question": 7}',
            "",
            '{"question": "' + "x" * 51 + '"}',
            '{"question": "Dup?", "id": "a"}',
            '{"question": "Plain?"}',
        ],
    )
    rows = read_questions(path, max_chars=50).to_pylist()
    got = {r["row"]: (r["id"], r["error"]) for r in rows}
    assert got[1] == ("a", None)
    assert got[2] == (None, "empty question")
    assert got[3][1] == "invalid JSON: Expecting property name enclosed in double quotes: column 2"
    assert got[4][1] == "expected a JSON object, got list"
    assert got[5][1] == "`question` must be a string, got int"
    assert 6 not in got  # a blank line is no row
    assert got[7][1] == "question too long: 51 characters > 50"
    assert got[8][1] == "duplicate id 'a'"
    assert got[9] == (None, None)


def test_rows_are_settled_by_number_never_by_the_ids_users_give(tmp_path: Path) -> None:
    """Rows 1 and 3 give no id; ids "1" and "3" are other rows'."""
    path = _jsonl(
        tmp_path,
        [
            '{"id": "x", "question": "broken',
            '{"id": "1", "question": "What is a deque?"}',
            '{"question": "How do I copy a file?"}',
            '{"id": "3", "question": "What does pathlib do?"}',
        ],
    )
    rows = read_questions(path, max_chars=100).to_pylist()
    assert [(r["id"], r["error"]) for r in rows] == [
        (None, "invalid JSON: Invalid control character at: column 32"),
        ("1", None),
        (None, None),
        ("3", None),
    ]
    out = tmp_path / "out"
    write_part(out, [invalid_record(rows[0]), *(_ok(r["row"], r["id"]) for r in rows[1:])], "jsonl")
    assert settled_rows(out) == {1, 2, 3, 4}
    assert set(final_records(out)) == {1, 2, 3, 4}


def test_a_duplicate_id_settles_only_its_own_row(tmp_path: Path) -> None:
    """Issue 22: rows 1 and 4 both give id `a`; row 4's `invalid` record carries `a`, and a
    resume after only that record was written must still answer row 1."""
    path = _jsonl(
        tmp_path,
        [
            '{"id": "a", "question": "What is a list?"}',
            '{"id": "b", "question": "What is a set?"}',
            '{"id": "c", "question": "What is a dict?"}',
            '{"id": "a", "question": "What is a tuple?"}',
        ],
    )
    questions = read_questions(path, max_chars=100)
    rows = questions.to_pylist()
    assert (rows[3]["id"], rows[3]["error"]) == ("a", "duplicate id 'a'")
    out = tmp_path / "out"
    write_part(out, [invalid_record(rows[3])], "jsonl")  # interrupted here
    assert settled_rows(out) == {4}
    check_resumable(questions, out)
    assert missing_records(questions, out) == [f"row {n} has no record" for n in (1, 2, 3)]
    write_part(out, [_ok(r["row"], r["id"]) for r in rows[:3]], "jsonl")  # the resume
    assert missing_records(questions, out) == []
    assert {n: r["status"] for n, r in final_records(out).items()} == {
        1: OK, 2: OK, 3: OK, 4: INVALID}  # fmt: skip


def test_a_number_id_is_the_same_id_as_its_text(tmp_path: Path) -> None:
    """Records carry ids as text, so `4` and `"4"` are one id: the second is a duplicate."""
    path = _jsonl(
        tmp_path,
        [
            '{"id": 4, "question": "What is a list?"}',
            '{"id": "4", "question": "What is a set?"}',
            '{"id": true, "question": "What is a dict?"}',
            '{"id": [1, "x"], "question": "What is a tuple?"}',
        ],
    )
    rows = read_questions(path, max_chars=100).to_pylist()
    assert [(r["id"], r["error"]) for r in rows] == [
        ("4", None),
        ("4", "duplicate id '4'"),
        ("true", None),
        ('[1, "x"]', None),
    ]


def test_a_resume_refuses_records_of_another_questions_file(tmp_path: Path) -> None:
    path = _jsonl(tmp_path, ['{"id": "a", "question": "Q1?"}', '{"id": "b", "question": "Q2?"}'])
    out = tmp_path / "out"
    write_part(out, [{**_ok(1, "a"), "question": "Q1?"}], "jsonl")
    check_resumable(read_questions(path, max_chars=100), out)
    with pytest.raises(ResumeError, match="already holds 1 records of an earlier run"):
        check_resumable(read_questions(path, max_chars=100), out, resume=False)
    edited = _jsonl(tmp_path, ['{"id": "z", "question": "New?"}', '{"id": "a", "question": "Q1?"}'])
    with pytest.raises(ResumeError, match=r"record for row 1 .* has id 'z': 'New[?]'"):
        check_resumable(read_questions(edited, max_chars=100), out)
    shorter = tmp_path / "short.jsonl"
    shorter.write_text("")
    with pytest.raises(ResumeError, match="has no such row"):
        check_resumable(read_questions(shorter, max_chars=100), out)


def test_missing_records_finds_rows_without_one_and_rows_settled_twice(tmp_path: Path) -> None:
    path = _jsonl(tmp_path, [f'{{"id": "{c}", "question": "Q{c}?"}}' for c in "abc"])
    questions = read_questions(path, max_chars=100)
    out = tmp_path / "out"
    write_part(out, [_ok(1, "a"), _ok(1, "a")], "jsonl")
    write_part(out, [failed_record({"row": 2, "id": "b", "question": "Qb?"}, "oom")], "jsonl")
    assert missing_records(questions, out) == [
        "row 1 has 2 settled records",
        "row 3 has no record",
    ]  # a failed row has its record: a resume retries it


@pytest.mark.parametrize("text", ["\u200b\u200b\u200b", "\u00a0\t\ufeff", "\x00\u2060"])
def test_a_question_of_invisible_characters_is_empty(tmp_path: Path, text: str) -> None:
    path = _jsonl(tmp_path, [json.dumps({"id": "z", "question": text})])
    (row,) = read_questions(path, max_chars=100).to_pylist()
    assert row["error"] == "empty question"


def test_text_that_is_not_unicode_makes_the_row_invalid_and_still_writes(tmp_path: Path) -> None:
    """A lone surrogate (valid JSON, no Unicode character) in a question or an id."""
    path = _jsonl(
        tmp_path,
        [
            '{"id": "s", "question": "a \\ud800 b"}',
            '{"id": "\\udfff", "question": "What is a set?"}',
        ],
    )
    question, bad_id = read_questions(path, max_chars=100).to_pylist()
    assert question["error"] == "question is not valid Unicode: a lone surrogate \\ud800 at 2"
    assert question["question"] == "a \\ud800 b"  # printable, as written out
    assert bad_id["id"] is None
    assert bad_id["error"] == "`id` is not valid Unicode: a lone surrogate \\udfff at 0"
    for fmt in ("jsonl", "parquet"):
        write_part(tmp_path / fmt, [invalid_record(question), invalid_record(bad_id)], fmt)
        assert settled_rows(tmp_path / fmt) == {1, 2}


def test_parquet_questions(tmp_path: Path) -> None:
    path = tmp_path / "q.parquet"
    pq.write_table(pa.table({"question": ["A?", None, ""], "id": [10, 11, 12]}), path)
    rows = read_questions(path, max_chars=100).to_pylist()
    assert [(r["row"], r["id"], r["error"]) for r in rows] == [
        (1, "10", None),
        (2, "11", "`question` must be a string, got NoneType"),
        (3, "12", "empty question"),
    ]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.jsonl", None, "does not exist"),
        ("q.csv", "question\nA?\n", "expected .jsonl or .parquet"),
    ],
)
def test_whole_file_problems_raise(tmp_path: Path, name: str, content, message: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_questions(path, max_chars=100)


def test_parquet_without_question_column_raises(tmp_path: Path) -> None:
    path = tmp_path / "q.parquet"
    pq.write_table(pa.table({"text": ["A?"]}), path)
    with pytest.raises(ValueError, match="no `question` column"):
        read_questions(path, max_chars=100)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_parts_round_trip_and_resume_skips_settled_rows(tmp_path: Path, fmt: str) -> None:
    records = [
        _ok(1, "a"),
        invalid_record({"row": 2, "question": None, "id": "b", "error": "empty question"}),
        failed_record({"row": 3, "question": None, "id": "c"}, "RuntimeError: out of memory"),
    ]
    out = tmp_path / "out"
    write_part(out, records[:2], fmt)
    write_part(out, records[2:], fmt)
    assert write_part(out, [], fmt) is None
    assert sorted(read_records(out), key=lambda r: r["id"]) == records
    assert settled_rows(out) == {1, 2}  # the failed row is tried again


def test_an_unfinished_part_is_invisible(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_part(out, [_ok(1, "a")], "jsonl")
    (out / ".part-deadbeef.jsonl.tmp").write_text('{"id": "half')  # a write cut short
    assert [r["id"] for r in read_records(out)] == ["a"]


def test_write_part_leaves_no_temporary_file_on_failure(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError, TypeError)):
        write_part(out, [{**_ok(1, "a"), "row": "not a number"}], "parquet")
    assert list(out.iterdir()) == []


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from([OK, INVALID, FAILED]), max_size=30), st.integers(0, 5))
def test_counts_add_up_across_parts(statuses: list[str], cut: int) -> None:
    records = [
        _ok(i, str(i), tokens=i + 1, steps=1)
        if s == OK
        else failed_record({"row": i, "id": str(i), "question": None}, "x", status=s)
        for i, s in enumerate(statuses)
    ]
    whole = Counts.of(records)
    assert Counts.of(records[:cut]) + Counts.of(records[cut:]) == whole
    summary = Summary(whole, skipped=2, seconds=2.0).as_dict()
    assert summary["rows"] == len(records) + 2
    assert summary["errors"] == statuses.count(INVALID) + statuses.count(FAILED)
    tokens = sum(i + 1 for i, s in enumerate(statuses) if s == OK)
    steps = statuses.count(OK)  # one step per answered record here
    assert summary["completion_tokens"] == tokens
    assert summary["tokens_per_step"] == (round(tokens / steps, 3) if steps else 0.0)


def test_read_records_parses_jsonl_written_by_hand(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "part-1.jsonl").write_text(json.dumps(_ok(1, "z")) + "\n")
    assert settled_rows(out) == {1}


def test_final_records_prefer_the_settled_retry(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_part(out, [failed_record({"row": 1, "id": "a", "question": "q?"}, "oom")], "jsonl")
    write_part(out, [_ok(1, "a")], "jsonl")
    write_part(out, [failed_record({"row": 2, "id": "b", "question": "q?"}, "oom")], "jsonl")
    final = final_records(out)
    assert (final[1]["status"], final[2]["status"]) == (OK, FAILED)
