"""Smoke tests of an installed volley: what a user of the wheel touches first.

`make test-wheel` copies this file out of the tree and runs it with the interpreter of a fresh
venv that has only the wheel (and pytest, numpy) installed, with ``VOLLEY_SMOKE_VENV`` naming
that venv; the first test then checks that the wheel is what runs. In the source tree's own
suite (``pytest tests``) the same tests run against the development build. Self-contained: no
conftest helpers, since the copy has none.
"""

from __future__ import annotations

import gc
import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import volley

MiB = 1 << 20


@pytest.fixture(scope="module")
def running():
    if volley.is_initialized():  # left by a module before, in the source tree's own suite
        volley.shutdown()
    volley.init(num_cpus=2)
    yield
    volley.shutdown()


def store_ranges() -> list[tuple[int, int]]:
    """Where this process maps the object store (``/proc/self/maps`` names the memfd)."""
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            if "memfd:volley-store" in line:
                lo, hi = line.split()[0].split("-")
                out.append((int(lo, 16), int(hi, 16)))
    return out


def in_store(a: np.ndarray) -> bool:
    addr = a.__array_interface__["data"][0]
    return any(lo <= addr < hi for lo, hi in store_ranges())


def test_the_installed_package_is_the_one_that_runs():
    venv = os.environ.get("VOLLEY_SMOKE_VENV")
    if venv is None:
        pytest.skip("not run by make test-wheel (no VOLLEY_SMOKE_VENV)")
    root = Path(venv).resolve()
    assert root in Path(volley.__file__).resolve().parents, volley.__file__
    core = Path(volley._core.__file__)
    assert root in core.resolve().parents and core.name == "_core.abi3.so", core
    assert importlib.metadata.version("volley-compute") == volley.__version__


def test_tasks_and_refs_as_arguments(running):
    @volley.remote
    def square(x):
        return x * x

    @volley.remote
    def total(*xs):
        return sum(xs)

    refs = [square.remote(i) for i in range(10)]
    assert volley.get(refs) == [i * i for i in range(10)]
    assert volley.get(total.remote(*refs)) == 285


def test_an_actor_keeps_its_state(running):
    @volley.remote
    class Counter:
        def __init__(self, start):
            self.n = start

        def add(self, k):
            self.n += k
            return self.n

    c = Counter.remote(10)
    assert volley.get([c.add.remote(1) for _ in range(5)]) == [11, 12, 13, 14, 15]
    volley.kill(c)


def test_a_large_array_comes_back_zero_copy_and_outlives_its_ref(running):
    a = np.arange(16 * MiB // 8, dtype=np.float64)
    ref = volley.put(a)
    b = volley.get(ref)
    assert np.array_equal(a, b) and not b.flags.writeable and in_store(b)
    view = memoryview(b)[1000:2000]  # a slice of a view must keep the mapping too
    del ref, b
    gc.collect()
    # Were the segment released, these would be written over it.
    others = [volley.put(np.full_like(a, -1.0)) for _ in range(3)]
    assert np.frombuffer(view, dtype=np.float64).tolist() == list(range(1000, 2000))

    @volley.remote
    def add_up(x):
        return float(x.sum())

    assert volley.get(add_up.remote(volley.put(a))) == float(a.sum())
    del others


def test_the_cli_answers(running):
    cli = Path(sys.executable).with_name("volley")
    assert cli.exists(), cli
    help_ = subprocess.run([cli, "--help"], capture_output=True, text=True, timeout=60)
    assert help_.returncode == 0 and "status" in help_.stdout, help_
    status = subprocess.run([cli, "status", "--json"], capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    assert str(os.getpid()) in status.stdout  # this driver's own node is listed
