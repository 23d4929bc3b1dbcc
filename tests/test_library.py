"""``volley.library``, the interface for libraries built on volley: what it answers in a driver
and in a task, and that the adapters shipped with volley use nothing private of volley's."""

from __future__ import annotations

import ast
import functools
import inspect
import time
from pathlib import Path

import pytest

import volley
from volley import library

PACKAGE = Path(volley.__file__).parent

#: The libraries built on volley that ship with it: they may use volley's public names and
#: ``volley.library``, nothing else of volley's.
ADAPTERS = [
    "joblib.py",
    "dask.py",
    "multiprocessing.py",
    "futures.py",
    *sorted(str(p.relative_to(PACKAGE)) for p in (PACKAGE / "util").glob("*.py")),
    # volley.multiprocessing's parts (processes, values, the manager): checked as it is, and
    # it may import them.
    *sorted(p.name for p in PACKAGE.glob("_mp_*.py")),
    # volley.tune: a library on volley like any other (its own private modules are its own).
    *sorted(str(p.relative_to(PACKAGE)) for p in (PACKAGE / "tune").rglob("*.py")),
    # volley.serve, the same.
    *sorted(str(p.relative_to(PACKAGE)) for p in (PACKAGE / "serve").rglob("*.py")),
]

#: Modules that are parts of an adapter (see ADAPTERS), not volley's inside.
ADAPTER_PARTS = "volley._mp_"


def _private_uses(path: Path) -> list[str]:
    """Where the module at ``path`` reaches a private volley name: an import of a module or a
    name that starts with ``_`` (its own names excepted), or ``x._name`` on a volley module it
    imported."""
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    own = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    found: list[str] = []
    volley_names: set[str] = set()  # names bound to volley modules here

    # A library package (volley.tune, volley.serve) may use its own private modules.
    library = next((f"{p}." for p in ("volley.tune", "volley.serve") if own.startswith(p)), None)

    def private(dotted: str) -> bool:
        if library and dotted.startswith(library):
            return False
        if dotted.startswith(ADAPTER_PARTS):
            dotted = dotted[len(ADAPTER_PARTS) :]
        return any(part.startswith("_") for part in dotted.split("."))

    for node in ast.walk(tree):
        where = f"{path.name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "volley":
                    if private(alias.name):
                        found.append(f"{where}: import {alias.name}")
                    volley_names.add((alias.asname or alias.name).split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] != "volley":
                continue
            if private(module):
                found.append(f"{where}: from {module} import ...")
            for alias in node.names:
                name = f"{module}.{alias.name}"
                part = name.startswith(ADAPTER_PARTS) or bool(library and name.startswith(library))
                if alias.name.startswith("_") and module != own and not part:
                    found.append(f"{where}: from {module} import {alias.name}")
                if alias.name[:1].islower():  # maybe a module (volley.library, volley.util...)
                    volley_names.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in volley_names
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            found.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_the_adapters_use_only_public_names_and_the_library_interface():
    assert len(ADAPTERS) >= 10
    found = [use for name in ADAPTERS for use in _private_uses(PACKAGE / name)]
    assert found == []


def test_the_check_finds_a_private_name(tmp_path):
    """The walk above would see an adapter reaching into volley: each form is caught."""
    fake = PACKAGE / "_test_library_probe.py"
    fake.write_text(
        "from . import _core\n"
        "from ._map import total_cpus\n"
        "from .library import mode\n"
        "from . import library\n"
        "import volley._objects\n"
        "library._core.mode()\n"
    )
    try:
        found = _private_uses(fake)
    finally:
        fake.unlink()
    assert len(found) == 4, found
    assert any("_core" in f and "import" in f for f in found)
    assert any("volley._map" in f for f in found)
    assert any("volley._objects" in f for f in found)
    assert any("library._core" in f for f in found)


def test_library_names_are_documented_with_an_example():
    for name in library.__all__:
        doc = getattr(library, name).__doc__ or ""
        assert ">>>" in doc, f"volley.library.{name} has no example"


def test_outside_volley(no_volley):
    assert library.mode() is None
    assert not library.in_worker()
    library.retire_worker()  # nothing to retire here
    library.init_if_needed()
    assert volley.is_initialized()
    assert library.mode() == "driver"
    library.init_if_needed()  # running: nothing happens


@volley.remote
def _where() -> tuple:
    return library.mode(), library.in_worker(), library.in_cluster()


@volley.remote
def _sleep(s: float) -> None:
    time.sleep(s)


def test_in_a_task_and_in_the_driver(volley_2cpu):
    assert volley.get(_where.remote())[:2] == ("worker", True)
    assert library.mode() == "driver"
    assert not library.in_worker()
    # On one machine nodes() lists only the driver's own node; a cluster has daemon nodes.
    assert library.in_cluster() == any(not n["driver"] for n in volley.nodes())
    assert library.total_cpus() >= 2
    assert 0 < library.cpu_share(4) <= 1


def test_check_options_names_the_bad_option():
    assert library.check_options({"num_cpus": 2}) == {"num_cpus": 2}
    with pytest.raises(TypeError, match="unknown option"):
        library.check_options({"num_cpu": 2})
    with pytest.raises(ValueError, match="max_retries"):
        library.check_options({"max_retries": -2})


def test_cancel_soon_cancels_without_waiting(volley_2cpu):
    ref = _sleep.remote(60)
    t = time.monotonic()
    library.cancel_soon(ref, force=True)
    # Waiting for the task would take 60 s; the bound leaves room for a loaded machine.
    assert time.monotonic() - t < 10
    with pytest.raises(volley.TaskCancelledError):
        volley.get(ref, timeout=30)


def _add(a, b):
    return a + b


def test_unwrap_remote():
    rf = volley.remote(num_cpus=0.5)(_add)
    assert library.unwrap_remote(rf) == (_add, {"num_cpus": 0.5}, "_add")
    bound = rf.options(name="adding")
    fn, options, name = library.unwrap_remote(bound)
    assert fn is _add and options == {"num_cpus": 0.5, "name": "adding"} and name == "_add"
    part = functools.partial(_add, 1)
    assert library.unwrap_remote(part, "pool task") == (part, {}, "pool task")
    with pytest.raises(TypeError, match="callable"):
        library.unwrap_remote(3)


def test_run_items_and_capture_error():
    results, _, error = library.run_items(_add, [(1, 2), (3, 4)], True, "add")
    assert results == [3, 7] and error is None
    _, _, error = library.run_items(_add, [(1, None)], True, "add")
    assert isinstance(error, TypeError) and isinstance(error, volley.TaskError)
    assert "_add" in library.traceback_text(error.__cause__ or error) or "add" in str(error)


def test_no_public_function_has_a_private_parameter():
    """``init`` had ``_daemon`` for the CLI (which now has ``_session.start_daemon``): no public
    function or method takes a parameter that users must not pass."""
    modules = [volley, library, volley.util]
    found = []
    for module in modules:
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            members = [obj] + [m for _, m in inspect.getmembers(obj) if inspect.isfunction(m)]
            for f in members:
                if not callable(f):
                    continue
                try:
                    params = inspect.signature(f).parameters
                except (TypeError, ValueError):
                    continue
                found += [f"{name}: {p}" for p in params if p.startswith("_")]
    assert found == []
