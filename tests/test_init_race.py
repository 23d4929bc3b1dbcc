"""The first volley calls of several threads at once start volley once; the others wait for it.

Each run is a fresh driver process (volley not started) whose threads meet at a barrier and
then make their first call together.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import driver_env, write_script

PRELUDE = """
import json, os, signal, sys, threading
import volley

signal.alarm(100)
N = 8
barrier = threading.Barrier(N)
errors, results = [], {}

@volley.remote
def sq(x):
    return x * x

@volley.remote
class Box:
    def __init__(self, x):
        self.x = x
    def get(self):
        return self.x

def first_call(i):
    kind = i % 3
    if kind == 0:
        return volley.get(sq.remote(i), timeout=60)
    if kind == 1:
        return volley.get(volley.put(i * i), timeout=60)
    return volley.get(Box.remote(i * i).get.remote(), timeout=60)

def run(i, call):
    barrier.wait()
    try:
        results[i] = call(i)
    except BaseException as e:
        errors.append(f"{i}: {type(e).__name__}: {e}")

def start(call, n=N):
    threads = [threading.Thread(target=run, args=(i, call)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
"""


def run_driver(tmp_path, body: str) -> dict:
    script = write_script(tmp_path, PRELUDE + body)
    p = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        env=driver_env(),
        cwd=str(tmp_path),
    )
    assert p.returncode == 0, p.stdout + p.stderr
    line = next(x for x in p.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


@pytest.mark.parametrize("attempt", range(3))
def test_eight_threads_first_calls_start_volley_once(tmp_path, attempt):
    r = run_driver(
        tmp_path,
        """
start(first_call)
print("RESULT", json.dumps({"errors": errors, "results": sorted(results.items()),
                            "initialised": volley.is_initialized()}), flush=True)
""",
    )
    assert r["errors"] == []
    assert r["results"] == [[i, i * i] for i in range(8)]
    assert r["initialised"]


def test_an_explicit_init_racing_first_calls(tmp_path):
    # Thread 0 calls init(num_cpus=1) while the other 7 make their first calls: either init
    # wins and they use its volley, or a first call wins and init says clearly what happened.
    r = run_driver(
        tmp_path,
        """
def call(i):
    if i == 0:
        volley.init(num_cpus=1)
        return "init"
    return first_call(i)

start(call)
print("RESULT", json.dumps({"errors": errors, "results": sorted(results.items())}), flush=True)
""",
    )
    others = [[i, i * i] for i in range(1, 8)]
    if r["errors"]:
        (err,) = r["errors"]
        assert err.startswith("0: RuntimeError: volley is already initialised: the first")
        assert "call volley.init() before any other volley call" in err
        assert r["results"] == others
    else:
        assert r["results"] == [[0, "init"], *others]


def test_an_init_after_an_automatic_start_says_so(tmp_path):
    r = run_driver(
        tmp_path,
        """
volley.get(sq.remote(2))
try:
    volley.init(num_cpus=1)
    msg = None
except RuntimeError as e:
    msg = str(e)
volley.init(ignore_reinit_error=True)
volley.shutdown()
volley.init(num_cpus=1)  # after a shutdown, init starts afresh
print("RESULT", json.dumps({"msg": msg, "after": volley.get(sq.remote(3))}), flush=True)
""",
    )
    assert "the first volley call (in thread 'MainThread') started it" in r["msg"]
    assert r["after"] == 9


@pytest.mark.slow
def test_first_call_races_repeated(tmp_path):
    for attempt in range(10):
        d = tmp_path / str(attempt)
        d.mkdir()
        test_eight_threads_first_calls_start_volley_once(d, attempt)
