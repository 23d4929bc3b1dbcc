"""A type checker sees through ``@volley.remote``: mypy on ``tests/typing/check_remote_types.py``
finds the types it asserts (``f.remote(...)`` is an ``ObjectRef[R]``, ``volley.get`` of it an
``R``, ...), the revealed type on each ``# R:`` line, and an error on each ``# E:`` line and
nowhere else; for this Python and for the oldest that mypy checks for (3.10; the package itself
runs on 3.9)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mypy")

CHECKED = Path(__file__).parent / "typing" / "check_remote_types.py"


@pytest.mark.parametrize("python", [None, "3.10"])
def test_types_through_remote(python: str | None):
    argv = [sys.executable, "-m", "mypy", "--strict", "--cache-dir=/dev/null", "--no-color-output"]
    if python:
        argv += ["--python-version", python]
    out = subprocess.run([*argv, str(CHECKED)], capture_output=True, text=True, timeout=300).stdout
    lines = CHECKED.read_text().splitlines()
    errors: dict[int, list[str]] = {}
    revealed: dict[int, str] = {}
    for m in re.finditer(r"^[^:\n]*:(\d+): (error|note): (.*)$", out, re.M):
        n, kind, text = int(m[1]), m[2], m[3]
        if kind == "error":
            errors.setdefault(n, []).append(text)
        elif text.startswith("Revealed type is "):
            revealed[n] = text.removeprefix("Revealed type is ").strip('"')
    want_errors = {i + 1 for i, line in enumerate(lines) if "# E:" in line}
    want_revealed = {
        i + 1: line.split("# R:")[1].strip() for i, line in enumerate(lines) if "# R:" in line
    }
    assert set(errors) == want_errors, out
    assert revealed == want_revealed, out
    assert want_errors and want_revealed
