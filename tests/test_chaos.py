"""Chaos: real SIGKILLs under real load. Workers are killed every 10-50 ms while thousands of
tasks run, an actor is killed again and again under thousands of calls, a node of a cluster is
killed mid-job. Every case ends with no wrong and no lost result (for work with retries left)
and nothing left behind: no worker process, no socket, no /dev/shm entry, no temporary file.

The default run is short (part of ``make test``); ``-m slow`` runs the long versions.
"""

from __future__ import annotations

import os
import random
import signal
import tempfile
import threading
import time

import numpy as np
import pytest
from conftest import poll, worker_pids

import volley

SLOW = pytest.mark.slow


class Killer:
    """A thread that SIGKILLs one of this process's workers (or of ``pids()``) every
    ``lo``-``hi`` seconds, for ``duration`` seconds or until stopped.

    Kills this frequent outpace a worker's start (tens of milliseconds to import volley), so
    while they last the job may barely move; what is checked is that it then finishes, with
    every result right."""

    def __init__(self, lo: float, hi: float, duration: float, pids=worker_pids, seed: int = 15):
        self.lo, self.hi, self.pids = lo, hi, pids
        self.until = time.monotonic() + duration
        self.rng = random.Random(seed)
        self.kills = 0
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop_flag.wait(self.rng.uniform(self.lo, self.hi)):
            if time.monotonic() > self.until:
                return
            pids = sorted(self.pids())
            if not pids:
                continue
            try:
                os.kill(self.rng.choice(pids), signal.SIGKILL)
                self.kills += 1
            except ProcessLookupError:
                pass

    def __enter__(self) -> Killer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_flag.set()
        self.thread.join()


def _volley_tmp_files() -> set[str]:
    tmp = tempfile.gettempdir()
    return {n for n in os.listdir(tmp) if "volley" in n and not n.startswith("volley-")}


def _leftovers_snapshot() -> tuple[set[str], set[str]]:
    # Only volley's names: another test process (joblib's semaphores) uses /dev/shm meanwhile.
    shm = {n for n in os.listdir("/dev/shm") if "volley" in n.lower()}
    return shm, _volley_tmp_files()


def _my_sockets() -> list[str]:
    """This process's node sockets (abstract Unix sockets named volley-<pid>-...)."""
    with open("/proc/net/unix") as f:
        return [line for line in f if f"@volley-{os.getpid()}-" in line]


def _assert_nothing_left(before: tuple[set[str], set[str]]) -> None:
    assert not volley.is_initialized()
    assert poll(lambda: not worker_pids(), timeout=10), worker_pids()
    shm, tmp = _leftovers_snapshot()
    assert shm <= before[0], shm - before[0]
    assert tmp <= before[1], tmp - before[1]
    assert poll(lambda: not _my_sockets(), timeout=5), _my_sockets()


@pytest.fixture
def chaos(no_volley):
    before = _leftovers_snapshot()
    yield
    volley.shutdown()
    _assert_nothing_left(before)


@volley.remote(max_retries=-1)
def spin(i):
    t = time.perf_counter() + 0.0003
    while time.perf_counter() < t:
        pass
    return i * i


@volley.remote(max_retries=-1)
def block(i, n):
    return np.full(n, i, dtype=np.int64)


def _tasks_under_kills(n: int, seconds: float) -> None:
    volley.init(num_cpus=2)
    with Killer(0.010, 0.050, seconds) as k:
        refs = [spin.remote(i) for i in range(n)]
        results = volley.get(refs, timeout=600)
    assert k.kills > 0
    wrong = [i for i, r in enumerate(results) if r != i * i]
    assert not wrong, wrong[:10]


def test_thousands_of_tasks_while_workers_are_killed_every_10_to_50_ms(chaos):
    _tasks_under_kills(3_000, 3)


@SLOW
def test_ten_thousand_tasks_while_workers_are_killed_every_10_to_50_ms(chaos):
    _tasks_under_kills(10_000, 20)


def _arrays_under_kills(n: int, seconds: float) -> None:
    volley.init(num_cpus=2, object_store_memory=256 << 20)
    size = (2 << 20) // 8  # 2 MB each: through the shared-memory store
    with Killer(0.010, 0.050, seconds) as k:
        refs = [block.remote(i, size) for i in range(n)]
        bad = []
        for i, r in enumerate(refs):
            a = volley.get(r, timeout=600)
            if a.shape != (size,) or a[0] != i or a[-1] != i or int(a.sum()) != i * size:
                bad.append(i)
            del a
    assert k.kills > 0
    assert not bad, bad[:10]
    del refs


def test_two_hundred_2mb_results_while_workers_are_killed(chaos):
    _arrays_under_kills(200, 3)


@SLOW
def test_a_thousand_2mb_results_while_workers_are_killed(chaos):
    _arrays_under_kills(1_000, 20)


@volley.remote(max_restarts=-1, max_task_retries=-1)
class Journal:
    """Appends each call's number and its process to a file (O_APPEND), so the test sees every
    execution, and which process to kill."""

    def __init__(self, path):
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def record(self, i):
        os.write(self.fd, f"{i} {os.getpid()}\n".encode())
        time.sleep(0.0005)
        return i


def _journal(path) -> list[tuple[int, int]]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    return [(int(a), int(b)) for a, b in (line.split() for line in lines if line.count(" ") == 1)]


def _actor_under_kills(tmp_path, calls: int, kills: int) -> None:
    volley.init(num_cpus=2)
    log = tmp_path / "journal"
    a = Journal.remote(str(log))
    refs = [a.record.remote(i) for i in range(calls)]
    killed = set()
    for _ in range(kills):
        # Once the process has run a few more calls, kill it under the rest.
        before = len(_journal(log))
        assert poll(lambda b=before: len(_journal(log)) >= b + 20, timeout=60), "no progress"
        pid = _journal(log)[-1][1]
        if pid not in killed:
            os.kill(pid, signal.SIGKILL)
            killed.add(pid)
    results = volley.get(refs, timeout=300)
    # Nothing lost, nothing wrong: every call answered with its own number.
    assert results == list(range(calls))
    assert len(killed) == kills
    # Executions in order; a number appears twice only when its call was the one running
    # when the process died (it ran again first thing after the restart).
    seen = [i for i, _ in _journal(log)]
    repeats = 0
    for prev, cur in zip(seen, seen[1:]):
        if cur == prev:
            repeats += 1
        else:
            assert cur == prev + 1, (prev, cur)
    assert seen[0] == 0 and seen[-1] == calls - 1
    assert repeats <= kills
    assert len({pid for _, pid in _journal(log)}) == kills + 1


def test_an_actor_killed_again_and_again_under_thousands_of_calls(chaos, tmp_path):
    _actor_under_kills(tmp_path, 2_000, 5)


@SLOW
def test_an_actor_killed_twenty_times_under_ten_thousand_calls(chaos, tmp_path):
    _actor_under_kills(tmp_path, 10_000, 20)


@volley.remote
def square_where(i):
    t = time.perf_counter() + 0.002
    while time.perf_counter() < t:
        pass
    return i * i, os.environ.get("VOLLEY_NODE_ADDRESS", "")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _cluster_under_kills(tmp_path, n: int) -> None:
    from test_cluster import Cluster, _wait_nodes

    before = _leftovers_snapshot()
    c = Cluster(tmp_path)
    try:
        head = c.start(True, "127.0.0.1")
        others = [c.start(False, "127.0.0.2"), c.start(False, "127.0.0.3")]
        volley.init(address=c.head, token=c.token)
        assert len(_wait_nodes(3)) == 3
        refs = [square_where.remote(i) for i in range(n)]
        # A node dies mid-job: what it ran goes again elsewhere (default max_retries=3).
        poll(lambda: len(volley.wait(refs, num_returns=n, timeout=0)[0]) >= n // 10, timeout=60)
        c.kill(2)
        # Then the head dies, and is started again with the same command.
        poll(lambda: len(volley.wait(refs, num_returns=n, timeout=0)[0]) >= n // 3, timeout=60)
        c.kill(0)
        time.sleep(0.5)
        c.start(True, "127.0.0.1")
        results = volley.get(refs, timeout=300)
        wrong = [i for i, (v, _) in enumerate(results) if v != i * i]
        assert not wrong, wrong[:10]
        ran_on = {where for _, where in results}
        assert ran_on <= {head, *others}, ran_on
        assert others[0] in ran_on
        # The restarted head takes work again, with the surviving node.
        assert len(_wait_nodes(2, timeout=20)) == 2
        after = {w for _, w in volley.get([square_where.remote(i) for i in range(40)], timeout=60)}
        assert after <= {head, others[0]}, after
    finally:
        volley.shutdown()
        c.stop()
    assert not any(_group_alive(p.pid) for p in c.procs), "a daemon or its workers outlived it"
    assert poll(lambda: not worker_pids(), timeout=10)
    shm, tmp = _leftovers_snapshot()
    assert shm <= before[0], shm - before[0]
    assert tmp <= before[1], tmp - before[1]


def test_a_node_and_the_head_killed_mid_job_lose_no_result(no_volley, tmp_path):
    _cluster_under_kills(tmp_path, 600)


@SLOW
def test_a_node_and_the_head_killed_mid_job_lose_none_of_5000(no_volley, tmp_path):
    _cluster_under_kills(tmp_path, 5_000)
