"""volley in a process forked from one that ran volley (``os.fork``, the ``fork`` start method).

The parent's node, threads and sockets are not the child's: the child forgets them without
touching them, and its first volley call starts a volley of its own (with the parent's ``init``
arguments; a cluster driver's child connects to the cluster again). A child of a volley worker
cannot have one: it raises at once, saying why. The parent goes on as if nothing happened.

Each test runs a driver script in a subprocess with a deadline, so a hang fails the test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import driver_env, write_script
from test_cluster import Cluster

import volley

PRELUDE = """
import faulthandler, json, os, signal, sys, threading, time
import numpy as np
import volley

faulthandler.enable()  # a crash in a forked child prints its Python stacks (seen: one SIGSEGV)

signal.alarm(100)  # a hang anywhere ends in a crash, not a stuck test

@volley.remote
def sq(x):
    return x * x

@volley.remote
def pid():
    return os.getpid()

def in_child(body):
    '''Runs body() in a forked child; returns (exit status, what it printed to the pipe).'''
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        signal.alarm(60)  # not inherited: a hung child ends too (its parent reports it)
        os.close(r)
        try:
            out = body()
            code = 0
        except BaseException as e:
            out = f"{type(e).__name__}: {e}"
            code = 3
        os.write(w, json.dumps(out).encode())
        os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(status), json.loads(data) if data else None
"""


#: The stderr of the last script ``run`` ran (a crashed child's faulthandler stacks).
last_stderr = ""


def run(tmp_path: Path, body: str, timeout: float = 120) -> dict:
    global last_stderr
    script = write_script(tmp_path, PRELUDE + body)
    p = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=driver_env(),
        cwd=str(tmp_path),
    )
    last_stderr = p.stderr
    assert p.returncode == 0, f"rc={p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise AssertionError(f"no RESULT line:\n{p.stdout}\n{p.stderr}")


def test_an_os_fork_child_runs_tasks_and_the_parent_keeps_working(tmp_path):
    r = run(
        tmp_path,
        """
volley.init(num_cpus=2)
assert volley.get(sq.remote(3)) == 9
small = volley.put(41)
big = volley.put(np.arange(1_000_000))  # in the shared-memory store
held = volley.get(big)  # a mapping of the parent's store, inherited by the child
parent_workers = set(volley.get([pid.remote() for _ in range(4)]))
assert sq.remote(6).future().result(timeout=60) == 36  # the parent's futures thread runs


def child():
    assert volley.is_initialized() is False  # the parent's volley is not this process's
    out = {"value": volley.get(sq.remote(4), timeout=60)}
    out["workers"] = volley.get([pid.remote() for _ in range(4)], timeout=60)
    out["future"] = sq.remote(7).future().result(timeout=60)
    out["held_sum"] = int(held.sum())  # the parent's values already read stay readable
    try:
        volley.get(small, timeout=10)
        out["inherited"] = "no error"
    except RuntimeError as e:
        out["inherited"] = str(e)
    volley.shutdown()
    return out

code, out = in_child(child)
print("RESULT", json.dumps({
    "code": code,
    "child": out,
    "parent_workers": sorted(parent_workers),
    "parent_value": volley.get(sq.remote(5), timeout=60),
    "parent_small": volley.get(small, timeout=60),
    "parent_big": int(volley.get(big, timeout=60).sum()),
    "parent_put": volley.get(volley.put("still here"), timeout=60),
}), flush=True)
""",
    )
    assert r["code"] == 0, r
    child = r["child"]
    assert child["value"] == 16
    assert child["future"] == 49
    assert not set(child["workers"]) & set(r["parent_workers"])  # workers of its own
    assert child["held_sum"] == sum(range(1_000_000))
    assert "forked" in child["inherited"], child["inherited"]
    assert r["parent_value"] == 25
    assert r["parent_small"] == 41
    assert r["parent_big"] == sum(range(1_000_000))
    assert r["parent_put"] == "still here"


def test_fork_context_pool_tasks_use_volley(tmp_path):
    r = run(
        tmp_path,
        """
import multiprocessing

def job(x):
    return volley.get(sq.remote(x), timeout=60)

if __name__ == "__main__":
    volley.init(num_cpus=1)
    assert volley.get(sq.remote(2)) == 4
    with multiprocessing.get_context("fork").Pool(2) as pool:
        got = pool.map(job, range(6))
    print("RESULT", json.dumps({"pool": got, "after": volley.get(sq.remote(7), timeout=60)}),
          flush=True)
""",
    )
    assert r == {"pool": [x * x for x in range(6)], "after": 49}


# A child forked while these threads waited on the engine's locks used to hang or die of SIGSEGV
# (3 of 120 runs, 6 at once on 2 cores; 13 of 58, 4 at once on one core): parking_lot's
# process-wide table of waiting threads came into the child with the parent's waiters in it,
# and the bucket locks they held. The engine now uses std's locks (volley_store::sync), which
# keep no such table; see also volley-store's
# sync::tests::a_child_forked_while_threads_wait_on_locks_can_wait_on_locks_of_its_own.
def test_forks_while_other_threads_use_volley(tmp_path):
    # Locks held by the parent's other threads at the fork must not trap the child.
    r = run(
        tmp_path,
        """
volley.init(num_cpus=2)
stop = threading.Event()

def busy_once():
    volley.get([volley.put(i) for i in range(20)])
    volley.get(sq.remote(3))

def busy():
    while not stop.is_set():
        busy_once()

# Once first, so that the threads import nothing while a fork happens: a module another thread
# is importing at the fork stays locked in the child for ever (CPython's own limitation).
busy_once()
threads = [threading.Thread(target=busy) for _ in range(3)]
for t in threads:
    t.start()
codes = []
for i in range(8):
    code, out = in_child(lambda: volley.get(sq.remote(i + 10), timeout=60))
    codes.append((code, out))
stop.set()
for t in threads:
    t.join()
print("RESULT", json.dumps({"children": codes, "after": volley.get(sq.remote(6))}), flush=True)
""",
    )
    assert r == {"children": [[0, (i + 10) ** 2] for i in range(8)], "after": 36}, last_stderr


def test_a_child_forked_by_a_worker_raises_at_once_saying_why(tmp_path):
    r = run(
        tmp_path,
        """
@volley.remote
def forks_and_uses_volley():
    return in_child(lambda: volley.get(sq.remote(2), timeout=5))

volley.init(num_cpus=2)
t0 = time.monotonic()
code, out = volley.get(forks_and_uses_volley.remote(), timeout=60)
print("RESULT", json.dumps({"code": code, "out": out, "s": time.monotonic() - t0,
                            "after": volley.get(sq.remote(3), timeout=60)}), flush=True)
""",
    )
    assert r["code"] == 3
    assert r["out"].startswith("RuntimeError: volley cannot be used in a process forked from a")
    assert "'spawn'" in r["out"]
    assert r["after"] == 9


def test_a_cluster_drivers_child_connects_again(tmp_path):
    volley.shutdown()
    (tmp_path / "cluster").mkdir()
    c = Cluster(tmp_path / "cluster")
    try:
        c.start(True, "127.0.0.1")
        c.start(False, "127.0.0.2")
        script = write_script(
            tmp_path,
            PRELUDE
            + f"""
@volley.remote
def node():
    return os.environ["VOLLEY_NODE_ADDRESS"]

volley.init(address={c.head!r}, token={c.token!r})
parent = volley.get(sq.remote(3), timeout=60)

def child():
    out = [volley.get(sq.remote(4), timeout=60), volley.get(node.remote(), timeout=60)]
    volley.shutdown()
    return out

code, out = in_child(child)
print("RESULT", json.dumps({{"code": code, "child": out, "parent": parent,
                            "after": volley.get(sq.remote(5), timeout=60)}}), flush=True)
""",
        )
        env = dict(driver_env(), VOLLEY_SESSION_DIR=c.env["VOLLEY_SESSION_DIR"])
        p = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env
        )
    finally:
        c.stop()
    assert p.returncode == 0, p.stdout + p.stderr
    line = next(x for x in p.stdout.splitlines() if x.startswith("RESULT "))
    r = json.loads(line[len("RESULT ") :])
    assert r["code"] == 0, r
    assert r["child"][0] == 16
    assert r["child"][1] in c.started
    assert (r["parent"], r["after"]) == (9, 25)


@pytest.mark.skipif(sys.platform != "linux", reason="fork is Linux's default start method")
def test_forked_child_in_process(volley_2cpu):
    # The same in the test process itself (the fixture's volley is the parent's).
    import os

    @volley.remote
    def add(a, b):
        return a + b

    assert volley.get(add.remote(1, 2)) == 3
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            import signal

            signal.alarm(60)  # never outlive a hang
            os.close(r)
            os.write(w, str(volley.get(add.remote(20, 22), timeout=60)).encode())
            volley.shutdown()
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        got = f.read()
    os.waitpid(child, 0)
    assert got == "42"
    assert volley.get(add.remote(2, 3)) == 5


def test_a_child_forked_in_a_task_that_returns_ends_without_touching_the_worker(tmp_path):
    # The child does not call os._exit: it returns from the task into the worker's loop, whose
    # connection is the parent's. It must end there, its result never sent.
    r = run(
        tmp_path,
        """
@volley.remote
def forks_and_returns():
    child = os.fork()
    if child == 0:
        return "from the child"
    _, status = os.waitpid(child, 0)
    return ["from the parent", os.waitstatus_to_exitcode(status)]

volley.init(num_cpus=1)
first = volley.get(forks_and_returns.remote(), timeout=60)
later = volley.get([sq.remote(i) for i in range(20)], timeout=60)
print("RESULT", json.dumps({"first": first, "later": later}), flush=True)
""",
    )
    assert r == {"first": ["from the parent", 0], "later": [i * i for i in range(20)]}


def test_joblib_multiprocessing_backend_nesting_volley(tmp_path):
    # joblib's "multiprocessing" backend forks its workers; each uses volley, started by a
    # first call with no init arguments in the parent: one CPU each, not every core.
    r = run(
        tmp_path,
        """
import joblib

def job(x):
    workers = set(volley.get([pid.remote() for _ in range(6)], timeout=60))
    return [volley.get(sq.remote(x), timeout=60), len(workers)]

if __name__ == "__main__":
    assert volley.get(sq.remote(2)) == 4  # volley started by a first call
    parallel = joblib.Parallel(n_jobs=2, backend="multiprocessing")
    got = parallel(joblib.delayed(job)(x) for x in range(4))
    after = volley.get(sq.remote(9), timeout=60)
    print("RESULT", json.dumps({"got": got, "after": after}), flush=True)
""",
    )
    assert r == {"got": [[x * x, 1] for x in range(4)], "after": 81}
