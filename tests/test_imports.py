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
            # volley's __init__ imports its names at their first use: its _LAZY table maps each
            # to the module (".module", or "" for a submodule of that name) that defines it.
            if (
                isinstance(node, ast.AnnAssign)
                and getattr(node.target, "id", None) == "_LAZY"
                and isinstance(node.value, ast.Dict)
            ):
                for key, value in zip(node.value.keys, node.value.values):
                    name, module = ast.literal_eval(key), ast.literal_eval(value)
                    handed[pkg][name] = f"{pkg}{module}" if module else f"{pkg}.{name}"
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
    assert "volley._placement" in graph["volley.util.placement_group"]  # ditto, lazily
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_import_volley_imports_only_what_it_needs():
    """`import volley` loads the engine and nothing else of the package (every worker imports
    it: its start-up is each worker's); each public name is imported at its first use."""
    import subprocess
    import sys

    code = "import sys, volley; print(sorted(m for m in sys.modules if m.startswith('volley')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['volley', 'volley._core']", out.stdout
    for name in volley.__all__:
        assert getattr(volley, name) is not None, name
        assert name in dir(volley)
    assert volley.map.__module__ == "volley._map"
    assert volley.job.__name__ == "volley.job"
    try:
        volley.no_such_name  # noqa: B018
    except AttributeError as e:
        assert "no attribute 'no_such_name'" in str(e)
    else:
        raise AssertionError("an unknown name did not raise AttributeError")


def test_a_drivers_first_result_skips_what_it_does_not_need():
    """A driver's import + init + first result does not import what only some drivers need
    (each is milliseconds of every start: benchmarks/RESULTS-scale.md, "Start-up, round 2")."""
    import os
    import shutil
    import subprocess
    import sys

    code = (
        "import sys, volley\n"
        "volley.init(num_cpus=1)\n"
        "assert volley.get(volley.remote(lambda: 1).remote(), timeout=60) == 1\n"
        "skipped = ('multiprocessing', 'pathlib', 'hashlib', '_hashlib', 'socket',\n"
        "           'subprocess', 'shutil', 'volley._dashboard')\n"
        "print(sorted(m for m in skipped if m in sys.modules))\n"
        "volley.shutdown()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "VOLLEY_GPU_DETECT"}
    gpu_paths = ("/dev/nvidiactl", "/proc/driver/nvidia", "/dev/dxg")
    if any(os.path.exists(p) for p in gpu_paths) or shutil.which("nvidia-smi"):
        env["VOLLEY_GPU_DETECT"] = "none"  # a GPU machine asks NVML or nvidia-smi (subprocess)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
