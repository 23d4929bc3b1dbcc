"""Memory that follows the work (issue 19): a driver that queued and gathered many tasks gives
the memory back once it drops their refs. Real driver processes, reading their own RSS from
/proc; the bound is generous (the issue's target: within 50 MB of the start) and polled for, not
timed: the node's tick shrinks its tables and returns the freed pages to the OS within a second
or two of the drop."""

from __future__ import annotations

import json

import pytest
from conftest import finish_driver, read_line_with_prefix, start_driver, write_script

pytestmark = pytest.mark.one_node("the driver's own memory: an embedded node")

DRIVER = """
import gc, json, sys, time
import volley

N = {n}
BOUND = {bound}

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

volley.init(num_cpus=2)

@volley.remote
def noop():
    return None

volley.get([noop.remote() for _ in range(2000)])
time.sleep(0.5)
start = rss()
rounds = []
for _ in range(2):
    refs = [noop.remote() for _ in range(N)]
    queued = rss()
    values = volley.get(refs)
    assert values == [None] * N
    peak = max(queued, rss())
    del refs, values
    gc.collect()
    # The node's tick (every 100 ms) shrinks its tables and trims the heap once the work fell
    # to half its peak; wait for it, however slow the machine is.
    deadline = time.monotonic() + 60
    while rss() > start + BOUND and time.monotonic() < deadline:
        time.sleep(0.1)
    rounds.append({"queued": queued, "peak": peak, "after": rss()})
print("result", json.dumps({"start": start, "rounds": rounds}), flush=True)
volley.shutdown()
"""

MB = 1 << 20


def run_and_check(tmp_path, n: int, bound_mb: int, timeout: float) -> None:
    script = write_script(
        tmp_path, DRIVER.replace("{n}", str(n)).replace("{bound}", str(bound_mb * MB))
    )
    proc = start_driver(script)
    r = json.loads(read_line_with_prefix(proc, "result", timeout=timeout))
    finish_driver(proc)
    start = r["start"]
    for i, rd in enumerate(r["rounds"]):
        grew = (rd["peak"] - start) / MB
        left = (rd["after"] - start) / MB
        # The work did cost memory (else the test proves nothing) ...
        assert grew > bound_mb, f"round {i + 1}: the driver grew by only {grew:.0f} MB"
        # ... and it went back: not kept in grown tables or in the allocator's arenas.
        assert left <= bound_mb, (
            f"round {i + 1}: {left:.0f} MB over the start after every ref was dropped "
            f"(peak {grew:.0f} MB over it); the bound is {bound_mb} MB"
        )


def test_driver_memory_returns_after_refs_are_dropped(tmp_path):
    """400,000 no-op tasks, refs kept, gathered, dropped, twice: the driver's RSS comes back
    to within 100 MB of where it started each time, from a peak of 200-240 MB over it (before
    issue 19 it kept ~85% of its peak). Not the issue's 50 MB: 28-66 MB stays, which a further
    malloc_trim does not return (benchmarks/RESULTS-scale.md). (With 200,000 tasks on a quiet
    machine the peak was 91-126 MB, too close to the bound for the test to prove anything.)"""
    run_and_check(tmp_path, 400_000, 100, timeout=300)


@pytest.mark.slow
def test_driver_memory_returns_after_a_million_tasks(tmp_path):
    """The issue's figure: 1,000,000 tasks (about 1 GB at the peak). Back within 150 MB, not
    the issue's 50: a thread arena's top (~30 MB) that malloc_trim does not shrink, and pages
    kept by a few allocations, stay (~100 MB measured; benchmarks/RESULTS-scale.md). Before
    issue 19 the driver kept all of it (~1.5 GB)."""
    run_and_check(tmp_path, 1_000_000, 150, timeout=600)


QUEUED = """
import gc, json, os, sys, time
import volley

N = {n}
GATE = {gate!r}

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

def block(gate):
    # Holds a worker until the driver opens the gate, so that the N tasks stay queued.
    import os, time
    deadline = time.monotonic() + 120
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the gate {{gate}} was never opened")
        time.sleep(0.01)

volley.init(num_cpus=2)

@volley.remote
def noop():
    return None

rblock = volley.remote(block)
volley.get([noop.remote() for _ in range(2000)])
gc.collect()
time.sleep(0.5)
start = rss()
blockers = [rblock.remote(GATE) for _ in range(2)]
refs = [noop.remote() for _ in range(N)]
gc.collect()
queued = rss()
open(GATE, "w").close()
assert volley.get(refs) == [None] * N
volley.get(blockers)
print("result", json.dumps({{"start": start, "queued": queued}}), flush=True)
volley.shutdown()
"""

# What a queued no-op task costs the driver, with the state API's recording on (the default):
# 570-590 bytes measured here (RSS over the start at 200,000 queued); the build before the "queued
# task in fewer bytes" work measured 896 and fails this (benchmarks/RESULTS-scale.md). The
# bound leaves room for the allocator's and the machine's variation.
QUEUED_BYTES_BOUND = 800


def test_a_queued_task_costs_the_driver_few_bytes(tmp_path):
    """200,000 no-op tasks queued behind two tasks that hold both workers: the driver's RSS
    grows by at most QUEUED_BYTES_BOUND bytes per task (issue 19's target is 300 plus the
    arguments; the task entry, its result's entry, the ref table's, the spec, the Python
    ObjectRef and the state API's row make it up)."""
    n = 200_000
    gate = str(tmp_path / "gate")
    script = write_script(tmp_path, QUEUED.format(n=n, gate=gate))
    proc = start_driver(script)
    r = json.loads(read_line_with_prefix(proc, "result", timeout=180))
    finish_driver(proc)
    per_task = (r["queued"] - r["start"]) / n
    print(f"a queued task: {per_task:.0f} bytes of the driver's RSS")
    assert per_task <= QUEUED_BYTES_BOUND, (
        f"a queued task costs the driver {per_task:.0f} bytes (RSS over the start at {n:,} "
        f"queued); the bound is {QUEUED_BYTES_BOUND}"
    )
    # The measurement measured something: the tasks' entries cannot take less than this.
    assert per_task >= 100, f"only {per_task:.0f} bytes per queued task: nothing was queued?"
