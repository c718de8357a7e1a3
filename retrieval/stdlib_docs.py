"""The embedded default corpus: docstrings of the installed Python standard library.

Every fresh machine has it, so the demo and the tests get a real corpus with no download.
Documenting a module means importing it, and some imports act (`antigravity` opens a browser,
`this` prints, `idlelib`/`turtledemo` start GUIs, `test` is huge): those are denied, private
modules are skipped, and the extraction runs in a child process so that whatever the imports
leave behind (modules, handlers, warnings) never reaches the caller. Objects reachable from
several modules are documented once, under the first public name in sorted order, so ids
(`json.dumps`, `collections.OrderedDict.popitem`) are stable across runs.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import json
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from retrieval.documents import Document

# Modules whose import acts, opens a GUI, changes the terminal, only holds generated data, or
# is a deprecated package on its way out (`distutils`, `lib2to3`: hundreds of stale entries).
DENY = frozenset(
    {
        "antigravity",
        "distutils",
        "this",
        "idlelib",
        "turtle",
        "turtledemo",
        "tkinter",
        "test",
        "lib2to3",
        "pydoc_data",
        "readline",
        "rlcompleter",
        "xxlimited",
        "xxlimited_35",
        "xxsubtype",
    }
)
# Submodule names never walked into: test suites, entry points, generated codec tables.
DENY_SUBMODULES = frozenset({"test", "tests", "idle_test", "__main__"})
NO_WALK = frozenset({"encodings"})
_TIMEOUT_S = 300
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def stdlib_documents(modules: Sequence[str] | None = None) -> list[Document]:
    """Documents for `modules` (default: the whole allowed standard library), extracted in a
    child process."""
    package_root = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "PYTHONWARNINGS": "ignore"}
    env.pop("DISPLAY", None)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "stdlib.jsonl"
        cmd = [sys.executable, "-m", "retrieval.stdlib_docs", str(out), *(modules or ())]
        try:
            proc = subprocess.run(
                cmd,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"stdlib extraction took over {_TIMEOUT_S} s") from exc
        if proc.returncode != 0:
            raise RuntimeError(f"stdlib extraction failed: {proc.stderr.strip()[-2000:]}")
        with out.open(encoding="utf-8") as rows:
            return [Document(**json.loads(row)) for row in rows]


def module_names(roots: Sequence[str] | None = None) -> list[str]:
    """Importable public module names under `roots` (default: every allowed stdlib module)."""
    tops = roots or sorted(n for n in sys.stdlib_module_names if _public(n) and n not in DENY)
    names: list[str] = []
    for name in tops:
        names.extend(_walk(name))
    return names


def extract(names: Sequence[str]) -> Iterator[Document]:
    """Documents for the modules `names` and their public classes, methods and functions;
    the first document to claim an id keeps it (`unittest.main` is a module and a class)."""
    seen: set[int] = set()
    ids: set[str] = set()
    for name in names:
        module = sys.modules[name]
        if id(module) in seen:
            continue
        seen.add(id(module))
        for doc in _documents(name, module, seen):
            if doc.id not in ids:
                ids.add(doc.id)
                yield doc


def _walk(name: str) -> list[str]:
    """`name` and its public submodules, recursively; modules that fail to import are left out
    (platform-specific ones do)."""
    module = _import(name)
    if module is None:
        return []
    names = [name]
    if hasattr(module, "__path__") and name not in NO_WALK:
        for info in sorted(pkgutil.iter_modules(module.__path__), key=lambda i: i.name):
            if _public(info.name) and info.name not in DENY_SUBMODULES:
                names.extend(_walk(f"{name}.{info.name}"))
    return names


def _import(name: str) -> ModuleType | None:
    sink = io.StringIO()
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(sink),
        contextlib.redirect_stderr(sink),
    ):
        warnings.simplefilter("ignore")
        try:
            return importlib.import_module(name)
        except (Exception, SystemExit):
            return None


def _public(name: str) -> bool:
    return not name.startswith("_")


def _documents(modname: str, module: ModuleType, seen: set[int]) -> Iterator[Document]:
    yield from _document(modname, "module", module, module.__doc__)
    for name in _member_names(modname, module):
        obj = getattr(module, name, None)
        if id(obj) in seen or not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        seen.add(id(obj))
        qualname = f"{modname}.{name}"
        if inspect.isclass(obj):
            yield from _document(qualname, "class", obj, obj.__dict__.get("__doc__"))
            for attr, member in sorted(vars(obj).items()):
                if _public(attr) and inspect.isroutine(member) and id(member) not in seen:
                    seen.add(id(member))
                    yield from _document(f"{qualname}.{attr}", "method", member, member.__doc__)
        else:
            yield from _document(qualname, "function", obj, obj.__doc__)


def _member_names(modname: str, module: ModuleType) -> list[str]:
    """`__all__` when the module declares it, else the public names it defines itself or
    takes from its C accelerator (`bisect.insort` comes from `_bisect`)."""
    declared = getattr(module, "__all__", None)
    if isinstance(declared, (list, tuple)):
        return sorted(n for n in declared if isinstance(n, str))
    homes = {modname, "_" + modname.rsplit(".", 1)[-1]}
    return sorted(
        n
        for n, obj in vars(module).items()
        if _public(n) and getattr(obj, "__module__", None) in homes
    )


def _document(qualname: str, kind: str, obj: Any, doc: object) -> Iterator[Document]:
    if not isinstance(doc, str) or not doc.strip():
        return
    if kind == "module":
        head = f"module {qualname}"
    else:
        head = f"{'class ' if kind == 'class' else ''}{qualname}{_signature(obj)}"
    yield Document(
        id=qualname,
        title=qualname,
        text=f"{head}\n\n{inspect.cleandoc(doc)}",
        source=f"pydoc:{qualname}",
        metadata={"kind": kind},
    )


def _signature(obj: Any) -> str:
    """The signature without object addresses (`<Loader object at 0x7f...>`), which change
    from run to run; none where inspect cannot tell (C functions' text signatures can even
    fail to evaluate, e.g. curses defaults that need an initialised terminal)."""
    try:
        return _ADDRESS.sub("", str(inspect.signature(obj)))
    except Exception:
        return ""


def _main(argv: Sequence[str]) -> int:
    """`python -m retrieval.stdlib_docs OUT.jsonl [MODULE ...]`: write the corpus as JSONL
    (to a file, since stdout belongs to whatever the imported modules print)."""
    if not argv:
        print(_main.__doc__, file=sys.stderr)
        return 2
    names = module_names(argv[1:] or None)
    with open(argv[0], "w", encoding="utf-8") as out:
        for doc in extract(names):
            out.write(json.dumps(_as_row(doc)) + "\n")
    return 0


def _as_row(doc: Document) -> dict[str, Any]:
    return {
        "id": doc.id,
        "text": doc.text,
        "title": doc.title,
        "source": doc.source,
        "metadata": doc.metadata,
    }


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
