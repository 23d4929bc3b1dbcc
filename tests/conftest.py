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
serve_url        volley.serve's HTTP ingress on a free port (on ``volley_shared``): its base
                 URL; serve is shut down after the test.

Slow stress tests are marked ``@pytest.mark.slow``; pyproject.toml deselects them by default
(``-m 'not slow'``), ``pytest -m slow`` runs them.
"""

from __future__ import annotations

import faulthandler
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
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
# Workers are forked from the node's worker template (python/volley/_template.py), their parent.
TEMPLATE_MODULE = b"volley._template"


# --------------------------------------------------------------------------- pytest hooks


def pytest_configure(config: pytest.Config) -> None:
    # Also declared in pyproject.toml, whose addopts deselect slow tests ("-m 'not slow'").
    config.addinivalue_line("markers", "slow: slow stress test (run them with -m slow)")
    config.addinivalue_line(
        "markers",
        "one_node(why): the test's premise holds on one machine only (one node with 2 CPUs, "
        "workers that are the driver's children); skipped against a cluster (make test-cluster)",
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_STARTED] = time.time()
    mark = item.get_closest_marker("one_node")
    if mark is not None and CLUSTER_MODE:
        pytest.skip(f"one machine only: {mark.args[0] if mark.args else ''}")


#: The logs of the node daemons tests start (test_cluster.Cluster's, the cluster suite's): a
#: failed test's report ends with the last lines of each one written during the test, since
#: what a node saw is often the cause (in CI, the only trace of it).
NODE_LOGS: list[Path] = []
_STARTED = pytest.StashKey[float]()
_LOG_TAIL_LINES = 40


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    since = item.stash.get(_STARTED, 0.0)
    for log in dict.fromkeys(NODE_LOGS):
        try:
            if log.stat().st_mtime < since:
                continue
            lines = log.read_text(errors="replace").splitlines()
        except OSError:
            continue
        tail = "\n".join(line[:400] for line in lines[-_LOG_TAIL_LINES:])
        report.sections.append((f"node log {log} (last {_LOG_TAIL_LINES} lines)", tail))


# --------------------------------------------------------------------------- helpers


def wait_for(cond: Callable[[], object], what: str, timeout: float = 60.0) -> object:
    """``cond``'s first truthy value; ``AssertionError`` naming ``what`` if none comes within
    ``timeout`` seconds (a test waits for a condition, never on a timer)."""
    value = poll(cond, timeout)
    if not value:
        raise AssertionError(f"waited {timeout} s for {what}")
    return value


def settled_count(path: Path, what: str) -> int:
    """The number a producer keeps writing into ``path`` once it stops changing (unchanged
    over 0.1 s; at most 4 s of watching): how far a producer went before it was held back."""
    wait_for(path.exists, what)
    last = None
    for _ in range(40):
        time.sleep(0.1)
        now = path.read_text()
        if now == last:
            break
        last = now
    return int(path.read_text())


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


def worker_node_pid(pid: int) -> int | None:
    """The process whose node started worker ``pid``: its parent when it was exec'd, its
    parent's parent when the node's worker template forked it."""
    ppid = proc_ppid(pid)
    if ppid is not None and any(TEMPLATE_MODULE in part for part in proc_cmdline(ppid)):
        return proc_ppid(ppid)
    return ppid


def template_pids(parent: int | None = None) -> set[int]:
    """Live worker templates whose parent (their node) is ``parent``."""
    parent = os.getpid() if parent is None else parent
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        cmd = proc_cmdline(pid)
        if proc_ppid(pid) == parent and is_running(pid) and any(TEMPLATE_MODULE in p for p in cmd):
            found.add(pid)
    return found


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
    """Live (non-zombie) ``volley._worker`` processes of ``parent``'s node (see
    ``worker_node_pid``)."""
    parent = os.getpid() if parent is None else parent
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if is_volley_worker(pid) and is_running(pid) and worker_node_pid(pid) == parent:
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
    """Start ``script`` with this interpreter as a separate driver process.

    Its stdout is a pipe (read it with ``read_line_with_prefix``/``finish_driver``); its
    stderr goes to a file next to the script (``driver_stderr``), so that nothing can block
    on a pipe that a leftover worker still holds open.
    """
    err_path = script.with_suffix(".stderr")
    with open(err_path, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, str(script)],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=driver_env(),
            cwd=str(script.parent),
            **kwargs,
        )
    proc._volley_stderr_path = err_path
    return proc


def driver_stderr(proc: subprocess.Popen) -> str:
    path = getattr(proc, "_volley_stderr_path", None)
    return path.read_text() if path is not None and path.exists() else ""


def kill_driver(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc`` if it still runs, and reap it."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


def _stdout_lines(proc: subprocess.Popen) -> queue.Queue:
    """A queue fed with ``proc``'s stdout lines by a reader thread (None at EOF).

    A thread, not select(): select() on the pipe does not see lines already sitting in the
    text wrapper's buffer.
    """
    lines = getattr(proc, "_volley_lines", None)
    if lines is None:
        lines = queue.Queue()

        def pump():
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        proc._volley_lines = lines
        proc._volley_seen = []
    return lines


def read_line_with_prefix(proc: subprocess.Popen, prefix: str, timeout: float = 60.0) -> str:
    """Read stdout lines of ``proc`` until one starts with ``prefix``; returns the rest.

    Fails the test (with the driver's output) if the driver exits or ``timeout`` passes.
    """
    lines = _stdout_lines(proc)
    seen = proc._volley_seen
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is None:
            lines.put(None)  # keep EOF visible to later calls
            break
        seen.append(line)
        if line.startswith(prefix):
            return line[len(prefix) :].strip()
    kill_driver(proc)
    pytest.fail(
        f"driver did not print {prefix!r} within {timeout} s (rc={proc.returncode})\n"
        f"stdout:\n{''.join(seen)}\nstderr:\n{driver_stderr(proc)}"
    )


def finish_driver(proc: subprocess.Popen, timeout: float = 60.0) -> tuple[str, str]:
    """Wait for ``proc`` to exit; returns (stdout not read yet, stderr)."""
    lines = _stdout_lines(proc)
    proc.wait(timeout=timeout)
    out = []
    while True:
        try:
            # The pipe closes when the driver exits (unless a leftover worker holds it).
            line = lines.get(timeout=5)
        except queue.Empty:
            break
        if line is None:
            lines.put(None)
            break
        out.append(line)
    return "".join(out), driver_stderr(proc)


# Small script fragment for subprocess drivers: lists the driver's worker pids via /proc.
DRIVER_PRELUDE = """
import json, os, sys, time
import volley

def _stat_cmd(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
    except OSError:
        return None, None, b""
    rest = stat[stat.rindex(b")") + 2:].split()
    return rest[0], int(rest[1]), cmd

def my_worker_pids():
    # Workers are this process's children, or its worker template's (volley._template).
    me = os.getpid()
    parents = {me}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            _, ppid, cmd = _stat_cmd(entry)
            if ppid == me and b"volley._template" in cmd:
                parents.add(int(entry))
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        state, ppid, cmd = _stat_cmd(entry)
        if ppid in parents and state != b"Z" and b"volley._worker" in cmd:
            pids.append(int(entry))
    return sorted(pids)
"""


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _hang_guard(request):
    """Fail a test that hangs instead of hanging the whole suite.

    Only when pytest-timeout is not installed (pyproject.toml configures it): both would use
    SIGALRM.
    """
    if request.config.pluginmanager.hasplugin("timeout"):
        yield
        return

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
def serve_url(volley_shared):
    """volley.serve's HTTP ingress on a free port of 127.0.0.1: its base URL; serve (every
    application) is shut down after."""
    from volley import serve

    serve.start(http_options={"host": "127.0.0.1", "port": 0})
    yield f"http://127.0.0.1:{serve.status().http_status['port']}"
    serve.shutdown()


# VOLLEY_TEST_CLUSTER=1 runs the tests that use `volley_2cpu`/`volley_shared` against a real
# cluster instead: a head with no CPUs and two 1-CPU nodes (`volley start` daemons on 127.0.0.x),
# the test process joining it as a driver (`make test-cluster`).
CLUSTER_MODE = os.environ.get("VOLLEY_TEST_CLUSTER") == "1"
_cluster_info: dict = {}


def _start_test_cluster(tmp: Path) -> dict:
    import socket

    def free_port(host):
        with socket.socket() as s:
            s.bind((host, 0))
            return s.getsockname()[1]

    token = "suite-token-0123456789"
    env = dict(os.environ, VOLLEY_SESSION_DIR=str(tmp / "session"))
    head = f"127.0.0.1:{free_port('127.0.0.1')}"
    procs = []
    for i, cpus in enumerate([0, 1, 1]):
        host = f"127.0.0.{i + 1}"
        port = head.split(":")[1] if i == 0 else str(free_port(host))
        role = ["--head"] if i == 0 else ["--address", head]
        log = open(tmp / f"node-{i}.log", "wb")
        NODE_LOGS.append(tmp / f"node-{i}.log")
        argv = [sys.executable, "-m", "volley._cli", "start", *role, "--host", host,
                "--port", port, "--num-cpus", str(cpus), "--token", token, "--block",
                "--heartbeat-ms", "100", "--dead-after-ms", "2000"]  # fmt: skip
        p = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=dict(
                env, VOLLEY_PACKAGES_DIR=str(tmp / f"packages-{i}")
            ), start_new_session=True,
        )  # fmt: skip
        procs.append(p)
        deadline = time.monotonic() + 30
        while "listening on" not in (tmp / f"node-{i}.log").read_text(errors="replace"):
            assert p.poll() is None and time.monotonic() < deadline, "test cluster failed"
            time.sleep(0.05)
    return {"head": head, "token": token, "procs": procs}


def _init_2cpu() -> None:
    if not CLUSTER_MODE:
        volley.init(num_cpus=2)
        return
    # The test modules (their functions and exception classes) must import on every node, and
    # so must the examples some of them import.
    here = Path(__file__).parent
    examples = here.parent / "examples"
    shipped = [
        m
        for m in list(sys.modules.values())
        if Path(getattr(m, "__file__", None) or "/").resolve().parent == examples
    ]
    volley.init(
        address=_cluster_info["head"],
        token=_cluster_info["token"],
        runtime_env={"working_dir": str(here), "py_modules": shipped},
    )
    deadline = time.monotonic() + 15
    while sum(n["num_cpus"] for n in volley.nodes()) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)


@pytest.fixture(scope="session", autouse=True)
def _test_cluster(tmp_path_factory):
    if not CLUSTER_MODE:
        yield
        return
    _cluster_info.update(_start_test_cluster(tmp_path_factory.mktemp("suite-cluster")))
    yield
    _ensure_down()
    for p in _cluster_info["procs"]:
        p.send_signal(signal.SIGTERM)
    for p in _cluster_info["procs"]:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


@pytest.fixture
def volley_2cpu():
    """A fresh 2-CPU volley for this test only."""
    _ensure_down()
    _init_2cpu()
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
        _init_2cpu()
    yield


@pytest.fixture(scope="module")
def three_node_cluster(tmp_path_factory):
    """A real cluster of 3 node daemons on 127.0.0.x (tests/test_cluster.py's `Cluster`), this
    process its driver, shared by the tests of one module."""
    from test_cluster import Cluster, _wait_nodes

    volley.shutdown()
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    c.start_nodes(3)
    volley.init(address=c.head, token=c.token)
    assert len(_wait_nodes(3)) == 3
    yield c
    volley.shutdown()
    c.stop()


@pytest.fixture(scope="session", autouse=True)
def _no_volley_left_at_exit():
    yield
    _ensure_down()
