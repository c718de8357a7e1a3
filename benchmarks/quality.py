"""`lookahead-rag bench-quality [QA.jsonl] --index DIR`: how good the answers are, per model.

Lookahead keeps every answer exactly what the model would write, so quality is the model's, the
passages' and the prompt's. Each question goes through the service's own RAG core (retrieval,
prompt, decoding; `pipeline.rag`), and the benchmark reports, per model:

- `accuracy`: answerable questions whose answer holds a gold answer (`quality_scoring`);
- `retrieval_hit`: answerable questions with a gold answer in a passage of the prompt (from the
  question's `source` document when the row names one): the ceiling the model works under;
- `cited`, `citation_precision`, `cited_support`: answers that cite `[n]`; citations that point
  at a passage holding the answer; answers whose cited passages hold it (of all answerable);
- `abstention`: unanswerable questions (no gold answers) that the answer declines, and
  `false_abstention`: answerable ones it declines;
- `tokens_per_s` (answer tokens per second of decoding, prefill included) and `tokens_per_step`
  with lookahead; with `--compare-plain` also plain decoding, interleaved, and `identity`.

QA rows: `{"id", "question", "answers": [...], "source": doc id (optional)}`; `answers: []`
marks a question the corpus cannot answer. The shipped set (`quality_data/`) is 62 questions,
12 of them unanswerable, over a 16-document corpus of invented facts that no model knows; with
no `--index` its index is built once into the cache. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks.quality_scoring import abstained, citations, holds_answer

HELP = "answer quality: accuracy, retrieval hit rate, citations, abstention, per model"

DATA = Path(__file__).parent / "quality_data"
QA_FILE = DATA / "qa.jsonl"
CORPUS = DATA / "corpus.jsonl"


@dataclass(frozen=True)
class QARow:
    id: str
    question: str
    answers: tuple[str, ...]  # empty: the corpus does not hold the answer
    source: str | None = None


@dataclass
class Record:
    """One question's answer, judged."""

    id: str
    question: str
    answer: str
    answerable: bool
    correct: bool
    retrieval_hit: bool
    abstained: bool
    citations: list[int]
    supported_citations: int  # of `citations`, those whose passage holds a gold answer
    tokens: int
    steps: int
    plain_identical: bool | None = None


def read_qa(path: Path) -> list[QARow]:
    """The rows of a QA file; a bad row is a ValueError naming its line."""
    rows, seen = [], set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            question, answers = data["question"], data.get("answers", [])
            if not isinstance(question, str) or not question.strip():
                raise ValueError("'question' must be a non-blank string")
            if not isinstance(answers, list) or not all(
                isinstance(a, str) and a.strip() for a in answers
            ):
                raise ValueError("'answers' must be a list of non-blank strings")
            row = QARow(str(data.get("id", n)), question, tuple(answers), data.get("source"))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{n}: bad QA row ({exc})") from None
        if row.id in seen:
            raise ValueError(f"{path}:{n}: duplicate id {row.id!r}")
        seen.add(row.id)
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no questions")
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("qa", nargs="?", type=Path, default=QA_FILE, help="QA JSONL file")
    parser.add_argument("--index", type=Path, help="index directory (default: the shipped set's)")
    parser.add_argument(
        "--corpus", default=str(CORPUS), help="without --index: the corpus to index (once)"
    )
    parser.add_argument(
        "--model",
        default="smollm2-135m",
        help="comma-separated models: bundled short names (smollm2-135m, gemma3-270m), HF ids "
        "or local directories",
    )
    parser.add_argument("--config", type=Path, help="YAML config file")
    parser.add_argument("--top-k", type=int, help="passages in the prompt (retrieval.top_k)")
    parser.add_argument(
        "--order",
        choices=["score", "document"],
        help="generation.passage_order: passages in the prompt best first, or by document "
        "(the default: prompts that share passages share a prefix)",
    )
    parser.add_argument("--max-tokens", type=int, default=64, help="answer length cap")
    parser.add_argument("--max-batch", type=int, default=1, help="questions decoded together")
    parser.add_argument("--limit", type=int, help="the first N questions only")
    parser.add_argument("--dtype", help="model.dtype")
    parser.add_argument(
        "--draft-size", help="generation.draft_size: auto (sized by step costs) or a number"
    )
    parser.add_argument(
        "--compare-plain",
        action="store_true",
        help="also decode without drafts, interleaved: speedup and identity",
    )
    parser.add_argument("--out", type=Path, help="write every judged answer here (JSONL)")
    parser.add_argument(
        "--write-prompts",
        type=Path,
        metavar="FILE",
        help="only write each question's prompt as the service builds it ({id, category, ids} "
        "JSONL: a bench-batch workload of RAG prompts), for the first --model, and stop",
    )


def run(args: argparse.Namespace) -> int:
    try:
        rows = read_qa(args.qa)[: args.limit]
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    models = [m.strip() for m in args.model.split(",") if m.strip()]
    if args.write_prompts:
        written = write_prompts(models[0], rows, args)
        print(f"{written} prompts written to {args.write_prompts}")
        return 0
    results: dict[str, dict[str, Any]] = {}
    records: dict[str, list[Record]] = {}
    for model in models:
        print(f"== {model}", flush=True)
        records[model], results[model] = evaluate(model, rows, args)
        print(table(model, results[model]), flush=True)
    if args.out:
        with args.out.open("w", encoding="utf-8") as f:
            for model, recs in records.items():
                for rec in recs:
                    f.write(json.dumps({"model": model, **asdict(rec)}) + "\n")
    setup = {
        "qa": str(args.qa),
        "questions": len(rows),
        "unanswerable": sum(not r.answers for r in rows),
        "top_k": args.top_k,
        "order": args.order or "config",
        "max_tokens": args.max_tokens,
        "max_batch": args.max_batch,
    }
    print(json.dumps({"models": results, "config": setup}))
    return 0


def load_pipeline(model: str, args: argparse.Namespace, draft_size: Any = None) -> Any:
    """The RAG core (`pipeline.rag.RagPipeline`) on `model` with the options' overrides
    (`draft_size`, if given, over `--draft-size`)."""
    from pipeline.config import load_config
    from pipeline.rag import RagPipeline
    from pipeline.resources import ensure_index

    overrides = {
        "model.name": model,
        "model.dtype": args.dtype,
        "retrieval.index_dir": args.index,
        "retrieval.corpus": None if args.index else args.corpus,
        "retrieval.top_k": args.top_k,
        "generation.draft_size": args.draft_size if draft_size is None else draft_size,
        "generation.passage_order": args.order,
    }
    config = load_config(args.config, overrides=overrides)
    ensure_index(config)
    return RagPipeline.load(config, max_batch=args.max_batch)


def write_prompts(model: str, rows: list[QARow], args: argparse.Namespace) -> int:
    """Each row's prompt token ids, as the Generator builds them, into `args.write_prompts`
    (the drafter's extra passages, retrieved but cut from the prompt, are not carried)."""
    pipeline = load_pipeline(model, args, draft_size=0)  # no drafts: no step costs to measure
    try:
        answerer = pipeline.batch.answerer
        lines = []
        for row in rows:
            prepared = answerer.prepare(pipeline.job(row.question, max_tokens=args.max_tokens))
            ids = [int(i) for i in prepared.token_ids]
            lines.append(json.dumps({"id": row.id, "category": "rag", "ids": ids}) + "\n")
    finally:
        pipeline.close()
    args.write_prompts.write_text("".join(lines), encoding="utf-8")
    return len(lines)


def evaluate(
    model: str, rows: list[QARow], args: argparse.Namespace
) -> tuple[list[Record], dict[str, Any]]:
    """Every row answered by `model` through the RAG core, judged; the model's figures. With
    `--compare-plain` neither method reuses cached prompt KV: plain decoding runs each group
    after lookahead did, and would otherwise find every prompt cached."""
    from pipeline import batching

    started = time.perf_counter()
    pipeline = load_pipeline(model, args)
    load_s = time.perf_counter() - started
    try:
        jobs = [pipeline.job(row.question, max_tokens=args.max_tokens) for row in rows]
        timings = {"lookahead": 0.0, "plain": 0.0}
        answers, plain = [], []
        for i in range(0, len(jobs), args.max_batch):
            group = jobs[i : i + args.max_batch]
            if args.compare_plain:
                group = [replace(j, prefix_cache=False) for j in group]
            runs = [("lookahead", answers, group)]
            if args.compare_plain:
                runs.append(("plain", plain, [replace(j, lookahead=False) for j in group]))
            for name, out, batch_jobs in runs:
                t0 = time.perf_counter()
                out += batching.answer_all(pipeline.batch, batch_jobs)
                timings[name] += time.perf_counter() - t0
    finally:
        pipeline.close()
    for answer in [*answers, *plain]:
        if isinstance(answer, Exception):
            raise answer
    records = [
        judge(row, job, answer, plain[i] if plain else None)
        for i, (row, job, answer) in enumerate(zip(rows, jobs, answers, strict=True))
    ]
    figures = summarise(records, answers, timings)
    if args.compare_plain:
        tokens = sum(a.finished.completion_tokens for a in plain)
        figures["plain_tokens_per_s"] = round(tokens / timings["plain"], 2)
        figures["speedup"] = round(figures["tokens_per_s"] / figures["plain_tokens_per_s"], 3)
        figures["identity"] = round(sum(r.plain_identical for r in records) / len(records), 4)
    figures["load_s"] = round(load_s, 1)
    return records, figures


def judge(row: QARow, job: Any, answer: Any, plain: Any = None) -> Record:
    """`answer` to `row`, scored against the gold answers and the passages it was shown (the
    best ones, in whatever order the prompt put them)."""
    shown = job.passages[: len(answer.sources)]
    golds = list(row.answers)
    hit = (
        any(holds_answer(p.text, golds) for p in shown if row.source in (None, p.doc_id))
        if golds
        else False
    )
    cited = [n for n in citations(answer.text) if 1 <= n <= len(answer.sources)]
    supported = sum(holds_answer(answer.sources[n - 1].text, golds) for n in cited)
    return Record(
        id=row.id,
        question=row.question,
        answer=answer.text,
        answerable=bool(golds),
        correct=holds_answer(answer.text, golds),
        retrieval_hit=hit,
        abstained=abstained(answer.text),
        citations=cited,
        supported_citations=supported,
        tokens=answer.finished.completion_tokens,
        steps=answer.finished.stats.steps,
        plain_identical=None if plain is None else plain.text == answer.text,
    )


def summarise(records: list[Record], answers: list[Any], timings: dict[str, float]) -> dict:
    answerable = [r for r in records if r.answerable]
    unanswerable = [r for r in records if not r.answerable]
    n_citations = sum(len(r.citations) for r in answerable)
    tokens = sum(r.tokens for r in records)

    def share(items: list[Record], test: Any) -> float | None:
        return round(sum(map(test, items)) / len(items), 4) if items else None

    return {
        "answerable": len(answerable),
        "unanswerable": len(unanswerable),
        "accuracy": share(answerable, lambda r: r.correct),
        "retrieval_hit": share(answerable, lambda r: r.retrieval_hit),
        "accuracy_when_hit": share([r for r in answerable if r.retrieval_hit], lambda r: r.correct),
        "cited": share(answerable, lambda r: bool(r.citations)),
        "citation_precision": round(sum(r.supported_citations for r in answerable) / n_citations, 4)
        if n_citations
        else None,
        "cited_support": share(answerable, lambda r: r.supported_citations > 0),
        "abstention": share(unanswerable, lambda r: r.abstained),
        "false_abstention": share(answerable, lambda r: r.abstained and not r.correct),
        "tokens_per_s": round(tokens / timings["lookahead"], 2) if timings["lookahead"] else None,
        "tokens_per_step": round(tokens / max(1, sum(r.steps for r in records)), 3),
        "mean_answer_tokens": round(tokens / len(records), 1),
    }


def table(model: str, figures: dict[str, Any]) -> str:
    lines = [f"{model}: {figures['answerable']} answerable, {figures['unanswerable']} not"]
    for key, value in figures.items():
        if key not in ("answerable", "unanswerable"):
            lines.append(f"  {key:<20} {value}")
    return "\n".join(lines)
