"""The volley package's modules import each other without a cycle (function-level imports
count: they are imports too), so that each module stands on the ones below it."""

from __future__ import annotations

import ast
from pathlib import Path

import volley

PACKAGE = Path(volley.__file__).parent


def _name(path: Path) -> str:
    parts = ("volley", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runs(tree: ast.Module) -> list[ast.stmt]:
    """The statements that can run: ``if TYPE_CHECKING:`` blocks left out."""
    out: list[ast.stmt] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
    return out


def _graph() -> dict[str, set[str]]:
    modules = {_name(p): p for p in PACKAGE.rglob("*.py")}
    packages = {_name(p) for p in PACKAGE.rglob("__init__.py")}
    # What a package's __init__ hands on, and from which module: `from .. import get` in a
    # submodule depends on volley._objects, not on all of volley.
    handed: dict[str, dict[str, str]] = {}
    for pkg in packages:
        tree = ast.parse((modules[pkg]).read_text())
        handed[pkg] = {}
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                for alias in node.names:
                    handed[pkg][alias.asname or alias.name] = f"{pkg}.{node.module}"
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if name in packages else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in _runs(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in modules}
                continue
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target not in modules:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in modules:
                    deps.add(sub)
                elif target in packages:
                    # A name the package hands on, or a compiled module (volley._core, which
                    # imports nothing of the package).
                    if alias.name in handed[target]:
                        deps.add(handed[target][alias.name])
                else:
                    deps.add(target)
        deps.discard(name)
        graph[name] = deps
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return path[path.index(m) :] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        path.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_no_import_cycle():
    graph = _graph()
    assert len(graph) > 30
    assert "volley._objects" in graph["volley.util.helpers"]  # through volley's __init__
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
