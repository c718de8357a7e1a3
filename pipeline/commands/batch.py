"""`lookahead-rag batch`: answer a file of questions with the service's own parts on Ray Data.

Each retriever actor opens the configured index and each generator actor loads the configured
model with its own sync of the shared n-grams (`ngrams.*`) and decodes each block's questions
together (`pipeline.batching`, as a Serve Generator decodes its requests), so a batch answer is
the answer the service gives (`pipeline.jobs.rag_stages`). Finished blocks are written as they
come (`pipeline.jobs.batch`); `--resume` skips the rows an earlier run settled, by row number,
after checking that `--out` was written for this questions file. A run ends by checking that
every input row has exactly one final record (exit status 1 if not). The JSON summary is the
last line printed, with the `index_version` the job answered from: pinned for the whole job,
resumes included, and recorded in `--out`/index.json (`pipeline.jobs.index_pin`).
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

from pipeline.config import add_config_arguments, config_from_args
from pipeline.jobs.batch import BatchOptions, Stages, run_batch
from pipeline.jobs.batch_io import (
    FORMATS,
    check_resumable,
    missing_records,
    read_questions,
    settled_rows,
)
from pipeline.jobs.index_pin import job_index, release
from pipeline.jobs.rag_stages import ServiceAnswerer, make_search
from pipeline.resources import existing_index_dir

HELP = "answer a file of questions on Ray Data, resumably"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "--questions", required=True, type=Path, help="JSONL ({id, question} lines) or Parquet"
    )
    parser.add_argument("--out", required=True, type=Path, help="folder for the answer parts")
    parser.add_argument(
        "--resume", action="store_true", help="skip the rows answered by an earlier run in --out"
    )
    parser.add_argument("--actors", type=int, default=1, help="generator actors (default 1)")
    parser.add_argument(
        "--retrieve-actors", type=int, default=1, help="retriever actors (default 1)"
    )
    parser.add_argument(
        "--gpus-per-actor", type=float, default=0.0, help="GPUs per generator actor (0: CPU)"
    )
    parser.add_argument(
        "--cpus-per-actor",
        type=float,
        default=1.0,
        help="Ray CPUs each actor reserves (default 1); torch threads: model.torch_threads",
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        help="questions each generator actor decodes together (generation.max_batch; "
        "default auto: 8 on CPU, 32 on a GPU)",
    )
    parser.add_argument(
        "--block-rows",
        type=int,
        help="questions per block, the unit of work, progress and part files "
        "(default: the batch size)",
    )
    parser.add_argument("--format", choices=FORMATS, default="jsonl", help="part file format")
    parser.add_argument(
        "--plain",
        action="store_true",
        help="plain decoding, no drafts (generation.lookahead=false): the speed baseline",
    )


def run(args: argparse.Namespace) -> int:
    from generation.defaults import batch_size
    from pipeline import ray_runtime

    for flag in ("actors", "retrieve_actors", "max_batch", "block_rows"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise SystemExit(f"--{flag.replace('_', '-')} must be >= 1")
    if args.gpus_per_actor < 0 or args.cpus_per_actor <= 0:
        raise SystemExit("--gpus-per-actor must be >= 0 and --cpus-per-actor > 0")
    config = config_from_args(
        args,
        generation__lookahead=False if args.plain else None,
        generation__max_batch=args.max_batch,
    )
    device = "cuda" if args.gpus_per_actor > 0 else "cpu"
    block_rows = args.block_rows or batch_size(config.generation.max_batch, device)
    try:
        questions = read_questions(args.questions, config.limits.max_input_chars)
        check_resumable(questions, args.out, resume=args.resume)
    except ValueError as exc:  # the whole file or folder; a bad row is only its own error
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        job = job_index(existing_index_dir(config), args.out, args.resume)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    skip = frozenset(settled_rows(args.out)) if args.resume else frozenset()
    options = BatchOptions(
        retrieve_actors=args.retrieve_actors,
        generate_actors=args.actors,
        gpus_per_actor=args.gpus_per_actor,
        cpus_per_actor=args.cpus_per_actor,
        block_rows=block_rows,
        fmt=args.format,
    )
    stages = Stages(partial(make_search, config, job.version), partial(ServiceAnswerer, config))
    session = partial(ray_runtime.connected, config, quiet=True)
    summary = run_batch(questions, args.out, stages, options, skip, session)
    problems = missing_records(questions, args.out)
    for problem in problems:  # a bug if ever: say so, never report a lossy job as done
        print(f"error: {problem}", file=sys.stderr)
    if not summary.counts.failed and not problems:
        release(job)  # nothing is left for a resume to answer from this version
    print(json.dumps({**summary.as_dict(), "index_version": job.version}))
    return 1 if problems else 0
