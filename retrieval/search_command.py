"""`lookahead-rag search`: the top-k passages of an index for one or more questions."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

from retrieval.errors import RetrievalError

HELP = "top-k passages of an index for questions"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("question", nargs="+", help="one or more questions (searched as a batch)")
    parser.add_argument("--index", required=True, type=Path, help="index directory")
    parser.add_argument("-k", type=int, default=5, help="passages per question")
    parser.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per result (query, rank, id, score, title, source, text, ...)",
    )
    parser.add_argument("--device", default="cpu", help="embedder device")
    parser.add_argument("--dtype", default="auto", help="embedder dtype (auto, float32, ...)")


def run(args: argparse.Namespace) -> int:
    from retrieval.index import load_index

    try:
        index = load_index(args.index, device=args.device, dtype=args.dtype)
        results = index.search(args.question, args.k)
    except (RetrievalError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for question, passages in zip(args.question, results, strict=True):
        if args.json:
            for rank, p in enumerate(passages, start=1):
                print(json.dumps({"query": question, "rank": rank, **p.to_json()}))
            continue
        print(f"# {question}")
        for rank, p in enumerate(passages, start=1):
            print(f"{rank:>2}. {p.score:.3f}  {p.title}  [{p.source}]  ({p.id})")
            snippet = " ".join(p.text.split())
            print(textwrap.indent(textwrap.shorten(snippet, 300, placeholder=" ..."), "    "))
    return 0
