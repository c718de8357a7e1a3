"""`lookahead-rag` command line: one subcommand per job, implemented by the module that owns it.

A command module exposes `add_arguments(parser)` and `run(args) -> int`; it is imported only
when its command runs (or its help is asked for), so `lookahead-rag --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("pipeline.demo", "set up and run the main job on the embedded defaults"),
    "serve": ("pipeline.service.serve_command", "run the RAG service (Ray Serve, HTTP API)"),
    "ask": ("pipeline.ask", "answer one question, in-process or from a running service"),
    "batch": ("pipeline.jobs.batch_command", "answer a file of questions on Ray Data, resumably"),
    "index": ("pipeline.jobs.index_command", "build or extend a FAISS index from a corpus"),
    "search": ("retrieval.search_command", "top-k passages of an index for questions"),
    # benchmarks (docs/benchmarks.md), each ending with one JSON line
    "bench": ("benchmarks.generation_speed", "greedy vs prompt lookup vs lookahead speed"),
    "bench-steps": ("benchmarks.step_costs", "step-cost curve t(q) of verify passes"),
    "bench-trie": ("benchmarks.trie_speed", "micro-benchmark of the n-gram drafting"),
    "bench-retrieval": ("benchmarks.retrieval_speed", "embedding, index build, search latencies"),
    "bench-serve": ("benchmarks.serving", "serving benchmark: HTTP overhead, load, lookahead"),
    "bench-warm": ("benchmarks.warm_service", "warm service: shared n-grams off/local/shared"),
    "bench-batch": ("benchmarks.batch_speed", "the batched engine under load: B sequences at once"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lookahead-rag", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:  # only the chosen command's module is imported
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
