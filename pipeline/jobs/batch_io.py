"""Files of the batch job: questions in, answer records out, and what a rerun may skip.

Bad input never fails the job: a line that is not JSON, a question that is empty, too long or
not valid Unicode, a duplicate id, each becomes a record with status `invalid` and the reason.
A record is settled by its row number (`row`: the line or row of the input), never by its `id`:
an id is the user's label, and a bad row may repeat another row's (a duplicate's record carries
the id it repeats), so `--resume` can never take one row's record for another's. Output goes to
a directory of part files, each written to a temporary name and renamed when complete, so an
interrupted job leaves only whole parts and `--resume` trusts every part it finds; a resumed
job first checks that those parts were written for this very input (`check_resumable`), and
every run ends by checking that each input row has exactly one final record
(`missing_records`).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.text import is_blank, printable, unicode_problem

OK, INVALID, FAILED = "ok", "invalid", "failed"
FORMATS = ("jsonl", "parquet")

QUESTION_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),  # 1-based line (JSONL) or row (Parquet) of the input
        ("id", pa.string()),  # the input's `id` as text (`4` is "4"); null when it gives none
        ("question", pa.string()),
        ("error", pa.string()),  # why the row cannot be answered; null when it can
    ]
)
SOURCE_TYPE = pa.struct(
    [("id", pa.string()), ("title", pa.string()), ("source", pa.string()), ("score", pa.float64())]
)
STATS_TYPE = pa.struct(
    [
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("steps", pa.int64()),
        ("tokens_per_step", pa.float64()),
        ("draft_tokens", pa.int64()),
        ("accepted_tokens", pa.int64()),
        ("decode_seconds", pa.float64()),
        ("lookahead", pa.bool_()),
        ("cached_prompt_tokens", pa.int64()),
    ]
)
RECORD_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        ("id", pa.string()),
        ("question", pa.string()),
        ("status", pa.string()),  # ok | invalid (bad input) | failed (error while answering)
        ("error", pa.string()),
        ("answer", pa.string()),
        ("finish_reason", pa.string()),
        ("sources", pa.list_(SOURCE_TYPE)),
        ("stats", STATS_TYPE),
    ]
)


def read_questions(path: Path, max_chars: int) -> pa.Table:
    """Every row of a JSONL (`{"question": ..., "id": ...}` per line) or Parquet (columns
    `question`, optional `id`) file, with `error` set on the rows that cannot be answered.

    Raises ValueError only for a problem with the whole file (missing, unknown format, no
    `question` column); a problem with one row is that row's `error`."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"questions file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        rows = list(_jsonl_rows(path))
    elif suffix == ".parquet":
        rows = list(_parquet_rows(path))
    else:
        raise ValueError(f"questions file {path}: expected .jsonl or .parquet, got {suffix!r}")
    return pa.Table.from_pylist(_checked(rows, max_chars), schema=QUESTION_SCHEMA)


def _jsonl_rows(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue  # blank lines (a trailing newline) are not rows
            row: dict[str, Any] = {"row": number, "id": None, "question": None}
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                yield {**row, "error": f"invalid JSON: {exc.msg}: column {exc.colno}"}
                continue
            if not isinstance(item, dict):
                yield {**row, "error": f"expected a JSON object, got {type(item).__name__}"}
                continue
            yield {**row, **_fields(item)}


def _parquet_rows(path: Path) -> Iterator[dict[str, Any]]:
    table = pq.read_table(path)
    if "question" not in table.column_names:
        raise ValueError(f"questions file {path} has no `question` column: {table.column_names}")
    columns = ["question", "id"] if "id" in table.column_names else ["question"]
    for number, item in enumerate(table.select(columns).to_pylist(), start=1):
        yield {"row": number, **_fields(item)}


def _fields(item: dict[str, Any]) -> dict[str, Any]:
    """`id`, `question` and the first `error` of one parsed row; text that is not valid
    Unicode is kept printable (it must still be written out), and such an id is no id."""
    fields: dict[str, Any] = {"id": None, "question": None, "error": None}
    given = _id_text(item.get("id"))
    if given is not None and (problem := unicode_problem(given)):
        fields["error"] = f"`id` is {problem}"
    else:
        fields["id"] = given
    question = item.get("question")
    if not isinstance(question, str):
        fields["error"] = f"`question` must be a string, got {type(question).__name__}"
    elif problem := unicode_problem(question):
        fields["question"], fields["error"] = printable(question), f"question is {problem}"
    else:
        fields["question"] = question
    return fields


def _id_text(value: Any) -> str | None:
    """An id as the text records carry: a string as it is, any other JSON value as JSON (the
    number `4` is the id "4", the same id as the string "4")."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _checked(rows: list[dict[str, Any]], max_chars: int) -> list[dict[str, Any]]:
    seen: set[str] = set()
    for row in rows:
        question = row["question"]
        if row["error"] is None and is_blank(question):
            row["error"] = "empty question"
        elif row["error"] is None and len(question) > max_chars:
            row["error"] = f"question too long: {len(question)} characters > {max_chars}"
        elif row["id"] in seen:
            row["error"] = f"duplicate id {row['id']!r}"
        if row["id"] is not None:
            seen.add(row["id"])
    return rows


def invalid_record(row: dict[str, Any]) -> dict[str, Any]:
    return failed_record(row, row["error"], status=INVALID)


def failed_record(row: dict[str, Any], error: str, status: str = FAILED) -> dict[str, Any]:
    return {
        "row": row["row"],
        "id": row["id"],
        "question": row["question"],
        "status": status,
        "error": error,
        "answer": None,
        "finish_reason": None,
        "sources": [],
        "stats": None,
    }


def write_part(out_dir: Path, records: list[dict[str, Any]], fmt: str) -> Path | None:
    """Write `records` as one new part file, atomically: a reader (or a resumed job) sees the
    whole part or nothing."""
    if not records:
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"part-{uuid.uuid4().hex}.{fmt}"
    tmp = out_dir / f".{final.name}.tmp"
    table = pa.Table.from_pylist(records, schema=RECORD_SCHEMA)
    try:
        if fmt == "parquet":
            pq.write_table(table, tmp)
        else:
            with tmp.open("w", encoding="utf-8") as out:
                for record in table.to_pylist():
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
                out.flush()
                os.fsync(out.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def read_records(out_dir: Path) -> list[dict[str, Any]]:
    """Every record in the finished parts of `out_dir` (temporary files are ignored)."""
    records: list[dict[str, Any]] = []
    for part in sorted(Path(out_dir).glob("part-*")):
        if part.suffix == ".parquet":
            records += pq.read_table(part).to_pylist()
        elif part.suffix == ".jsonl":
            with part.open(encoding="utf-8") as lines:
                records += [json.loads(line) for line in lines if line.strip()]
    return records


def final_records(out_dir: Path) -> dict[int, dict[str, Any]]:
    """One record per row number: a row retried by `--resume` after a failure has both
    records on disk (parts are never rewritten); the settled one wins."""
    final: dict[int, dict[str, Any]] = {}
    for record in read_records(out_dir):
        if record["row"] not in final or record["status"] != FAILED:
            final[record["row"]] = record
    return final


def settled_rows(out_dir: Path) -> set[int]:
    """The row numbers a resumed run skips: answered, or invalid (the same input fails the
    same way). Rows that failed while answering are tried again."""
    return {r["row"] for r in read_records(out_dir) if r["status"] in (OK, INVALID)}


class ResumeError(ValueError):
    """`--out` holds records that were not written for this questions file."""


def check_resumable(questions: pa.Table, out_dir: Path, resume: bool = True) -> None:
    """Raise `ResumeError` unless every record in `out_dir` belongs to its row of `questions`
    (same row number, id and question): records are matched to rows by number, so a file
    edited since (a row added, removed or changed) must not be resumed into the same folder.
    Without `resume`, `out_dir` must hold no record at all (a second run would answer every
    row a second time)."""
    records = read_records(out_dir)
    if records and not resume:
        raise ResumeError(
            f"{out_dir} already holds {len(records)} records of an earlier run: "
            "--resume it, or use a new --out folder"
        )
    rows = {row["row"]: row for row in questions.select(["row", "id", "question"]).to_pylist()}
    for record in records:
        row = rows.get(record["row"])
        if row is None or (row["id"], row["question"]) != (record["id"], record["question"]):
            found = "no such row" if row is None else f"id {row['id']!r}: {row['question']!r}"
            raise ResumeError(
                f"{out_dir} holds a record for row {record['row']} (id {record['id']!r}: "
                f"{record['question']!r}) but the questions file has {found}: it was written "
                "for another version of the file; use a new --out folder"
            )


def missing_records(questions: pa.Table, out_dir: Path) -> list[str]:
    """What keeps `out_dir` from holding exactly one final record per row of `questions`
    (empty when it does): a row with no record, or with two settled ones."""
    settled: dict[int, int] = {}
    seen: set[int] = set()
    for record in read_records(out_dir):
        seen.add(record["row"])
        if record["status"] != FAILED:
            settled[record["row"]] = settled.get(record["row"], 0) + 1
    problems = []
    for row in questions.column("row").to_pylist():
        if row not in seen:
            problems.append(f"row {row} has no record")
        elif settled.get(row, 0) > 1:
            problems.append(f"row {row} has {settled[row]} settled records")
    return problems


@dataclass(frozen=True)
class Counts:
    """What a set of records holds; parts' counts add up to the run's."""

    answered: int = 0
    invalid: int = 0
    failed: int = 0
    completion_tokens: int = 0
    steps: int = 0

    @classmethod
    def of(cls, records: Iterable[dict[str, Any]]) -> Counts:
        status = {OK: 0, INVALID: 0, FAILED: 0}
        tokens = steps = 0
        for record in records:
            status[record["status"]] += 1
            if record["stats"]:
                tokens += record["stats"]["completion_tokens"]
                steps += record["stats"]["steps"]
        return cls(status[OK], status[INVALID], status[FAILED], tokens, steps)

    def __add__(self, other: Counts) -> Counts:
        return Counts(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))


@dataclass(frozen=True)
class Summary:
    counts: Counts
    skipped: int  # settled by an earlier run (--resume)
    seconds: float  # wall clock of this run

    def as_dict(self) -> dict[str, Any]:
        c, seconds = self.counts, self.seconds
        attempted = c.answered + c.failed
        return {
            "rows": c.answered + c.invalid + c.failed + self.skipped,
            "answered": c.answered,
            "errors": c.invalid + c.failed,
            "invalid": c.invalid,
            "failed": c.failed,
            "skipped": self.skipped,
            "completion_tokens": c.completion_tokens,
            "tokens_per_second": round(c.completion_tokens / seconds, 2) if seconds else 0.0,
            "tokens_per_step": round(c.completion_tokens / c.steps, 3) if c.steps else 0.0,
            "questions_per_minute": round(60 * attempted / seconds, 2) if seconds else 0.0,
            "seconds": round(seconds, 2),
        }
