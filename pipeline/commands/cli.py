"""`lookahead-rag` command line: one subcommand per job, implemented by the module that owns it.

Commands are registered the way Python packages register commands: entry points of the group
`lookahead_rag.commands` (`pyproject.toml`), each naming a module that exposes
`add_arguments(parser)`, `run(args) -> int` and a one-line `HELP`. The product's commands live
in `pipeline.commands` (and `retrieval.search_command`); the `bench*` ones in `benchmarks`,
which imports the product and is never imported by it. A command's module is imported only when
that command runs (its `HELP` is read from the source), so `lookahead-rag --help` stays fast.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path

GROUP = "lookahead_rag.commands"


def commands() -> dict[str, str]:
    """Command name -> its module, the product's first, then the benchmarks, each by name."""
    found = {ep.name: ep.value for ep in entry_points(group=GROUP)}
    return dict(sorted(found.items(), key=lambda item: (item[0].startswith("bench"), item[0])))


def help_of(module_name: str) -> str:
    """A command module's `HELP`, read from its source without importing it (and torch)."""
    spec = importlib.util.find_spec(module_name)
    if spec is None or spec.origin is None:
        return ""
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "HELP" for t in node.targets
        ):
            return str(ast.literal_eval(node.value))
    return ""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lookahead-rag", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in commands().items():
        if name == command:  # only the chosen command's module is imported
            module = importlib.import_module(module_name)
            p = sub.add_parser(name, help=module.HELP, description=module.HELP)
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
        else:
            text = help_of(module_name)
            sub.add_parser(name, help=text, description=text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
