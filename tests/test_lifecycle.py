"""init/shutdown, auto-init, the context manager, num_cpus, and no leftover processes
after shutdown or interpreter exit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import (
    DRIVER_PRELUDE,
    driver_env,
    is_running,
    kill_driver,
    poll,
    proc_cmdline,
    read_line_with_prefix,
    start_driver,
    wait_all_gone,
    worker_node_pid,
    worker_pids,
    write_script,
)

import volley

pytestmark = pytest.mark.usefixtures("no_volley")


@volley.remote
def getpid():
    return os.getpid()


@volley.remote
def add(x, y):
    return x + y


@volley.remote
def barrier(directory, token, parties, timeout=30.0):
    with open(os.path.join(directory, f"arrived-{token}"), "w"):
        pass
    deadline = time.monotonic() + timeout
    while len([n for n in os.listdir(directory) if n.startswith("arrived-")]) < parties:
        if time.monotonic() > deadline:
            raise TimeoutError("barrier not reached")
        time.sleep(0.01)
    return os.getpid()


@volley.remote
def concurrency_probe(directory, token, hold):
    mine = os.path.join(directory, f"running-{token}")
    with open(mine, "w"):
        pass
    try:
        time.sleep(hold)
        return len([n for n in os.listdir(directory) if n.startswith("running-")])
    finally:
        os.unlink(mine)


def run_concurrently(directory, parties):
    directory.mkdir()
    refs = [barrier.remote(str(directory), i, parties) for i in range(parties)]
    return volley.get(refs, timeout=60)


def run_driver(tmp_path, body, timeout=120):
    script = write_script(tmp_path, DRIVER_PRELUDE + body)
    return subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=driver_env(),
        cwd=str(tmp_path),
    )


def pids_from(stdout, prefix="PIDS "):
    for line in stdout.splitlines():
        if line.startswith(prefix):
            return json.loads(line[len(prefix) :])
    raise AssertionError(f"no {prefix!r} line in driver output:\n{stdout}")


# --------------------------------------------------------------------------- init / shutdown


def test_is_initialized_tracks_init_and_shutdown():
    assert not volley.is_initialized()
    volley.init(num_cpus=2)
    assert volley.is_initialized()
    assert volley.get(add.remote(1, 2)) == 3
    volley.shutdown()
    assert not volley.is_initialized()


def test_shutdown_twice_is_harmless():
    volley.init(num_cpus=1)
    volley.shutdown()
    volley.shutdown()
    assert not volley.is_initialized()


def test_context_manager_shuts_down_on_exit():
    with volley.init(num_cpus=2):
        assert volley.is_initialized()
        assert volley.get(add.remote(2, 3)) == 5
        pids = worker_pids()
        assert pids
    assert not volley.is_initialized()
    assert not wait_all_gone(pids)


def test_context_manager_shuts_down_on_exception():
    with pytest.raises(RuntimeError, match="inside the block"):
        with volley.init(num_cpus=2):
            assert volley.get(add.remote(1, 1)) == 2
            pids = worker_pids()
            raise RuntimeError("inside the block")
    assert not volley.is_initialized()
    assert not wait_all_gone(pids)


def test_reinit_after_shutdown_gets_new_workers():
    volley.init(num_cpus=2)
    first = set(volley.get([getpid.remote() for _ in range(10)]))
    volley.shutdown()
    assert not wait_all_gone(first)
    volley.init(num_cpus=2)
    second = set(volley.get([getpid.remote() for _ in range(10)]))
    assert not first & second
    assert all(is_running(p) for p in second)
    volley.shutdown()


def test_auto_init_on_first_remote_uses_all_cpus(tmp_path):
    assert not volley.is_initialized()
    ref = add.remote(3, 4)  # no init(): auto-initialises with defaults
    assert volley.is_initialized()
    assert volley.get(ref) == 7
    # "All CPUs" means the ones this process may run on (what a container or taskset allows).
    ncpu = len(os.sched_getaffinity(0))
    pids = run_concurrently(tmp_path / "barrier", ncpu)
    assert len(set(pids)) == ncpu
    assert poll(lambda: len(worker_pids()) == ncpu), (worker_pids(), ncpu)


def test_num_cpus_limits_concurrency(tmp_path):
    volley.init(num_cpus=2)
    pids = run_concurrently(tmp_path / "barrier", 2)
    assert len(set(pids)) == 2
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir()
    seen = volley.get([concurrency_probe.remote(str(probe_dir), i, 0.05) for i in range(20)])
    assert max(seen) <= 2


def test_num_cpus_one_runs_everything_on_one_worker(tmp_path):
    volley.init(num_cpus=1)
    pids = volley.get([getpid.remote() for _ in range(20)])
    assert len(set(pids)) == 1
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir()
    seen = volley.get([concurrency_probe.remote(str(probe_dir), i, 0.02) for i in range(10)])
    assert seen == [1] * 10


def test_workers_are_python_m_volley_worker_children():
    volley.init(num_cpus=2)
    pids = set(volley.get([getpid.remote() for _ in range(20)]))
    assert len(pids) <= 2
    for pid in pids:
        assert worker_node_pid(pid) == os.getpid()
        cmd = proc_cmdline(pid)
        assert cmd[cmd.index(b"-m") + 1] == b"volley._worker", cmd
    assert pids <= worker_pids()
    assert len(worker_pids()) <= 2


def test_workers_are_reused_across_tasks():
    volley.init(num_cpus=2)
    pids = volley.get([getpid.remote() for _ in range(30)])
    assert len(set(pids)) < len(pids)


def test_shutdown_leaves_no_worker_behind(tmp_path):
    volley.init(num_cpus=2)
    run_concurrently(tmp_path / "barrier", 2)
    pids = worker_pids()
    assert len(pids) == 2
    volley.shutdown()
    left = wait_all_gone(pids)
    assert not left, f"workers {left} survived shutdown"
    assert not worker_pids()


def test_shutdown_with_running_tasks_leaves_no_worker_behind(tmp_path):
    volley.init(num_cpus=2)

    @volley.remote
    def sleeper():
        time.sleep(60)

    refs = [sleeper.remote() for _ in range(4)]
    assert poll(lambda: len(worker_pids()) == 2, timeout=10), worker_pids()
    run_pids = worker_pids()
    assert volley.wait(refs, num_returns=1, timeout=0.2)[0] == []
    volley.shutdown()
    assert not wait_all_gone(run_pids)
    assert not worker_pids()


def test_shutdown_reaps_worker_processes(tmp_path):
    """Workers are children of the driver; after shutdown none is left, not even a zombie."""
    volley.init(num_cpus=2)
    run_concurrently(tmp_path / "barrier", 2)
    pids = worker_pids()
    volley.shutdown()
    assert poll(lambda: not any(os.path.exists(f"/proc/{p}") for p in pids)), [
        (p, open(f"/proc/{p}/stat").read()) for p in pids if os.path.exists(f"/proc/{p}")
    ]


# --------------------------------------------------------------------------- driver processes


def test_interpreter_exit_without_shutdown_leaves_no_worker(tmp_path):
    out = run_driver(
        tmp_path,
        """
volley.init(num_cpus=2)

@volley.remote
def f(x):
    return x * 2

assert volley.get([f.remote(i) for i in range(20)]) == [2 * i for i in range(20)]
print("PIDS " + json.dumps(my_worker_pids()), flush=True)
# no shutdown(): interpreter exit must clean up
""",
    )
    assert out.returncode == 0, out.stderr
    pids = pids_from(out.stdout)
    assert pids
    assert not wait_all_gone(pids), "workers outlived the driver's normal exit"


def test_auto_init_in_fresh_driver_and_exit(tmp_path):
    out = run_driver(
        tmp_path,
        """
assert not volley.is_initialized()

@volley.remote
def f(x):
    return x + 1

print("RESULT", volley.get(f.remote(41)), volley.is_initialized(), flush=True)
print("PIDS " + json.dumps(my_worker_pids()), flush=True)
""",
    )
    assert out.returncode == 0, out.stderr
    assert "RESULT 42 True" in out.stdout
    pids = pids_from(out.stdout)
    assert 1 <= len(pids) <= len(os.sched_getaffinity(0))
    assert not wait_all_gone(pids)


def test_driver_exiting_with_uncaught_exception_leaves_no_worker(tmp_path):
    out = run_driver(
        tmp_path,
        """
volley.init(num_cpus=2)

@volley.remote
def f():
    return os.getpid()

volley.get([f.remote() for _ in range(10)])
print("PIDS " + json.dumps(my_worker_pids()), flush=True)
raise SystemExit(3)
""",
    )
    assert out.returncode == 3, out.stderr
    assert not wait_all_gone(pids_from(out.stdout))


def test_driver_killed_by_uncaught_sigterm_leaves_no_worker(tmp_path):
    script = write_script(
        tmp_path,
        DRIVER_PRELUDE
        + """
volley.init(num_cpus=2)

@volley.remote
def f():
    return os.getpid()

volley.get([f.remote() for _ in range(10)])
print("PIDS " + json.dumps(my_worker_pids()), flush=True)
time.sleep(600)
""",
    )
    proc = start_driver(script)
    pids: list[int] = []
    try:
        pids = json.loads(read_line_with_prefix(proc, "PIDS "))
        assert pids
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGTERM
        assert not wait_all_gone(pids)
    finally:
        kill_driver(proc)
        for pid in pids:
            if is_running(pid):
                os.kill(pid, signal.SIGKILL)


def test_two_drivers_have_separate_pools(tmp_path):
    body = """
volley.init(num_cpus=2)

@volley.remote
def f():
    return os.getpid(), os.getppid()

res = volley.get([f.remote() for _ in range(10)])
# Its workers are this driver's (its children, or its worker template's).
assert {p for p, _ in res} <= set(my_worker_pids()), (res, my_worker_pids())
print("PIDS " + json.dumps(sorted({p for p, _ in res})), flush=True)
print("READY", flush=True)
time.sleep(600)
"""
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    a = start_driver(write_script(a_dir, DRIVER_PRELUDE + body))
    b = start_driver(write_script(b_dir, DRIVER_PRELUDE + body))
    try:
        pa = set(json.loads(read_line_with_prefix(a, "PIDS ")))
        pb = set(json.loads(read_line_with_prefix(b, "PIDS ")))
        assert pa and pb and not pa & pb
        assert all(worker_node_pid(p) == a.pid for p in pa)
        assert all(worker_node_pid(p) == b.pid for p in pb)
    finally:
        for proc in (a, b):
            kill_driver(proc)
    assert not wait_all_gone(pa | pb)
