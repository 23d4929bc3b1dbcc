"""Runs one benchmark of one system in this fresh interpreter and writes the result as JSON.

Usage: python -m benchmarks.cell info SYSTEM OUT | python -m benchmarks.cell run SYSTEM FUNC OUT
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import platform
import sys
import traceback

from benchmarks.common import NotApplicable

FUNCS = ("a", "b", "b_map", "c", "f", "fb", "g", "h")
FUNCS += ("i", "j", "k", "k0", "l", "m", "n")  # object store
FUNCS += ("o", "p", "q", "r", "s")  # actors
FUNCS += ("t", "u", "u1", "uw", "u1w", "v")  # clusters
FUNCS += ("w", "x", "xw", "y", "ya", "z", "za", "dg", "dg_threaded")  # adapters


def load(system: str):
    return importlib.import_module(f"benchmarks.systems.{system}_")


def installed(mod) -> bool:
    return all(importlib.util.find_spec(name) is not None for name in mod.LIBRARIES)


def info(system: str) -> dict:
    mod = load(system)
    versions = {}
    for dist in mod.DISTRIBUTIONS:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    extra = getattr(mod, "describe", lambda: "")()
    return {
        "python": platform.python_version(),
        "executable": sys.executable,
        "installed": installed(mod),
        "versions": versions,
        "describe": extra,
        "functions": [name for name in FUNCS if callable(getattr(mod, name, None))],
        "na": getattr(mod, "NOT_APPLICABLE", {}),
    }


def run(system: str, func: str) -> dict:
    mod = load(system)
    if not installed(mod):
        return {"na": f"{', '.join(mod.LIBRARIES)} not installed in {sys.executable}"}
    try:
        result = getattr(mod, func)()
    except NotApplicable as e:
        return {"na": str(e)}
    except Exception as e:  # noqa: BLE001 -- reported, never fatal to the suite
        return {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    return result if isinstance(result, dict) else {"value": result}


def main(argv: list[str]) -> None:
    mode, system, *rest = argv
    result = info(system) if mode == "info" else run(system, rest[0])
    with open(rest[-1], "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1:])
