"""The package map of docs/architecture.md, checked: imports point one way, with no cycle."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "retrieval", "generation", "trie_store", "benchmarks")
# Which packages each may import ("trie_store.sharing" is a package of its own here).
ALLOWED = {
    "pipeline": {"retrieval", "generation", "trie_store", "trie_store.sharing"},
    "retrieval": set(),
    "generation": {"trie_store"},
    "trie_store": set(),
    "trie_store.sharing": {"trie_store"},
    "benchmarks": {"pipeline", "retrieval", "generation", "trie_store", "trie_store.sharing"},
}
MAX_LINES = 400  # benchmarks are not product code


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package(module: str) -> str:
    return "trie_store.sharing" if module.startswith("trie_store.sharing") else module.split(".")[0]


def _imports(path: Path) -> set[str]:
    """Every project module `path` imports, at any depth of the file (lazy imports count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name.split(".")[0] in PACKAGES}
    return found


SOURCES = sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))
GRAPH = {_module(p): _imports(p) for p in SOURCES}


def _resolve(name: str) -> str | None:
    """The module an imported name lives in (`a.b.func` -> `a.b`), if it is one of ours."""
    while name and name not in GRAPH:
        name = name.rpartition(".")[0]
    return name or None


def test_imports_point_one_way():
    wrong = sorted(
        f"{module} imports {target}"
        for module, names in GRAPH.items()
        for target in filter(None, map(_resolve, names))
        if _package(target) != _package(module)
        and _package(target) not in ALLOWED[_package(module)]
    )
    assert not wrong


def test_no_module_imports_itself_back():
    edges = {
        module: {t for t in map(_resolve, names) if t and t != module and not module.startswith(t)}
        for module, names in GRAPH.items()
    }
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            pytest.fail(" -> ".join([*path[path.index(module) :], module]))
        if module in done:
            return
        for target in sorted(edges.get(module, ())):
            visit(target, [*path, module])
        done.add(module)

    for module in sorted(edges):
        visit(module, [])


def test_no_product_module_is_over_the_size_limit():
    big = {
        str(p.relative_to(ROOT)): n
        for p in SOURCES
        if p.relative_to(ROOT).parts[0] != "benchmarks"
        and (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not big
