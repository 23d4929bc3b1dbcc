"""Shared fixtures and helpers for the volley end-to-end test suite.

Everything here works with real processes: worker pids are discovered through
/proc, drivers that get killed are real subprocesses, nothing is mocked.

Fixtures
--------
volley_2cpu      function-scoped: a fresh ``volley.init(num_cpus=2)``, shut down after the
                 test.  Use it for tests that kill workers or otherwise disturb the pool.
volley_shared    a ``volley.init(num_cpus=2)`` shared by the tests of one module (re-created
                 if a test in between shut it down), shut down when the module ends.
no_volley        makes sure volley is not initialised before the test and shuts it down after.

Slow stress tests are marked ``@pytest.mark.slow`` and skipped unless ``--runslow`` is
given (or ``VOLLEY_RUN_SLOW=1``, or ``-m`` selects them explicitly).
"""

from __future__ import annotations

import faulthandler
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

import volley

# Per-test hang protection: a SIGALRM that fails the test, then a hard exit with a
# traceback dump if even that does not get through (e.g. a get() that ignores signals).
TEST_SOFT_TIMEOUT_S = int(os.environ.get("VOLLEY_TEST_TIMEOUT", "90"))
TEST_HARD_TIMEOUT_S = TEST_SOFT_TIMEOUT_S + 60

WORKER_MODULE = b"volley._worker"


# --------------------------------------------------------------------------- pytest hooks


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--runslow", action="store_true", default=False, help="also run @pytest.mark.slow tests"
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: slow stress test, skipped unless --runslow (or VOLLEY_RUN_SLOW=1)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow") or os.environ.get("VOLLEY_RUN_SLOW") == "1":
        return
    if "slow" in (config.getoption("-m") or ""):
        return
    skip_slow = pytest.mark.skip(reason="slow test: use --runslow to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


# --------------------------------------------------------------------------- helpers


def poll(cond: Callable[[], object], timeout: float = 5.0, interval: float = 0.02) -> object:
    """Call ``cond`` until it returns something truthy or ``timeout`` passes.

    Returns the last value returned by ``cond`` (falsy on timeout).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def proc_state(pid: int) -> str | None:
    """Single-letter state of ``pid`` from /proc (``"Z"`` for a zombie), None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # /proc/<pid>/stat is "pid (comm) S ppid ..."; comm may contain spaces/parens.
    rest = data[data.rindex(b")") + 2 :].split()
    return rest[0].decode()


def proc_ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    rest = data[data.rindex(b")") + 2 :].split()
    return int(rest[1])


def proc_cmdline(pid: int) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [part for part in f.read().split(b"\0") if part]
    except (FileNotFoundError, ProcessLookupError):
        return []


def is_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    state = proc_state(pid)
    return state is not None and state not in ("Z", "X")


def is_volley_worker(pid: int) -> bool:
    return any(WORKER_MODULE in part for part in proc_cmdline(pid))


def worker_pids(parent: int | None = None) -> set[int]:
    """Live (non-zombie) ``volley._worker`` processes whose parent is ``parent``."""
    parent = os.getpid() if parent is None else parent
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if proc_ppid(pid) == parent and is_running(pid) and is_volley_worker(pid):
            found.add(pid)
    return found


def wait_all_gone(pids: Iterable[int], timeout: float = 5.0) -> set[int]:
    """Wait until none of ``pids`` is running; returns the ones still running."""
    pids = set(pids)
    poll(lambda: not any(is_running(p) for p in pids), timeout=timeout)
    return {p for p in pids if is_running(p)}


def write_script(tmp_path: Path, body: str, name: str = "driver.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def driver_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_driver(script: Path, **kwargs) -> subprocess.Popen:
    """Start ``script`` with this interpreter as a separate driver process."""
    return subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=driver_env(),
        cwd=str(script.parent),
        **kwargs,
    )


def read_line_with_prefix(proc: subprocess.Popen, prefix: str, timeout: float = 60.0) -> str:
    """Read stdout lines of ``proc`` until one starts with ``prefix``; returns the rest.

    Fails the test (with the driver's stderr) if the driver exits or ``timeout`` passes.
    """
    import selectors

    deadline = time.monotonic() + timeout
    seen = []
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        while time.monotonic() < deadline:
            if not sel.select(timeout=0.1):
                continue
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if line.startswith(prefix):
                return line[len(prefix) :].strip()
    finally:
        sel.unregister(proc.stdout)
    proc.kill()
    _, err = proc.communicate(timeout=10)
    pytest.fail(
        f"driver did not print {prefix!r} (rc={proc.returncode})\n"
        f"stdout:\n{''.join(seen)}\nstderr:\n{err}"
    )


# Small script fragment for subprocess drivers: lists the driver's worker pids via /proc.
DRIVER_PRELUDE = """
import json, os, sys, time
import volley

def my_worker_pids():
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        rest = stat[stat.rindex(b")") + 2:].split()
        if int(rest[1]) == os.getpid() and rest[0] != b"Z" and b"volley._worker" in cmd:
            pids.append(int(entry))
    return sorted(pids)
"""


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _hang_guard():
    """Fail a test that hangs instead of hanging the whole suite."""

    def on_alarm(signum, frame):
        pytest.fail(f"test did not finish within {TEST_SOFT_TIMEOUT_S} s (hang?)", pytrace=True)

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(TEST_SOFT_TIMEOUT_S)
    faulthandler.dump_traceback_later(TEST_HARD_TIMEOUT_S, exit=True)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        faulthandler.cancel_dump_traceback_later()


def _ensure_down() -> None:
    if volley.is_initialized():
        volley.shutdown()


@pytest.fixture
def no_volley():
    """Volley not initialised at the start; whatever the test started is shut down after."""
    _ensure_down()
    assert not volley.is_initialized()
    yield
    _ensure_down()


@pytest.fixture
def volley_2cpu():
    """A fresh 2-CPU volley for this test only."""
    _ensure_down()
    volley.init(num_cpus=2)
    yield
    _ensure_down()


@pytest.fixture(scope="module")
def _volley_module_scope():
    yield
    _ensure_down()


@pytest.fixture
def volley_shared(_volley_module_scope):
    """A 2-CPU volley shared by the tests of one module (for tests that leave the pool intact)."""
    if not volley.is_initialized():
        volley.init(num_cpus=2)
    yield


@pytest.fixture(scope="session", autouse=True)
def _no_volley_left_at_exit():
    yield
    _ensure_down()
