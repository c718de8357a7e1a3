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


def _room(module: str) -> str:
    """A folder of `pipeline` (`pipeline.service`, ...) or the package's top level."""
    parts = module.split(".")
    folder = ".".join(parts[:2])
    return folder if (ROOT / "pipeline" / parts[1]).is_dir() else "pipeline"


def test_pipeline_rooms_form_no_circle():
    rooms: dict[str, set[str]] = {}
    for module, names in GRAPH.items():
        if module.split(".")[0] != "pipeline" or module == "pipeline":
            continue
        targets = {t for t in map(_resolve, names) if t and t.startswith("pipeline.")}
        rooms.setdefault(_room(module), set()).update(_room(t) for t in targets)
    for room, targets in rooms.items():
        for target in targets - {room}:
            assert room not in rooms.get(target, set()), f"{room} <-> {target}"
    # and no longer circle: a room's reach never comes back to it
    for start in rooms:
        seen, todo = set(), [t for t in rooms[start] if t != start]
        while todo:
            room = todo.pop()
            assert room != start, f"{start} reaches itself through {sorted(seen)}"
            if room not in seen:
                seen.add(room)
                todo += [t for t in rooms.get(room, ()) if t != room]


def test_every_command_is_registered_and_importable_by_its_room():
    """The CLI's commands are entry points (pyproject.toml), so the edge from the command line
    to each command module is declared, and benchmarks stay out of the product's imports."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"][
        "lookahead_rag.commands"
    ]
    for name, module in declared.items():
        path = ROOT / Path(*module.split(".")).with_suffix(".py")
        assert path.is_file(), f"{name}: {module} is not a module of this tree"
        source = path.read_text()
        for needed in ("\nHELP = ", "\ndef add_arguments(", "\ndef run("):
            assert needed in source, f"{module} lacks {needed.strip()}"
    product_imports = {
        target
        for module, names in GRAPH.items()
        if not module.startswith("benchmarks")
        for target in filter(None, map(_resolve, names))
    }
    assert not {t for t in product_imports if t.startswith("benchmarks")}
