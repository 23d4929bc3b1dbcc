"""The health metrics of a node: worker crashes and actor restarts counted as real processes
die (SIGKILL from outside, not the kills the node asks for), and the host's memory, in
``volley.nodes()`` and in ``/metrics`` as Prometheus parses it."""

from __future__ import annotations

import os
import signal
import time
import urllib.request

import pytest
from conftest import poll

import volley


@pytest.fixture
def dash(no_volley):
    volley.init(num_cpus=2, dashboard=True, dashboard_port=0)
    base, token = volley.dashboard_url().split("?token=")
    return base.rstrip("/"), token


def scrape(base: str, token: str) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    req = urllib.request.Request(base + "/metrics", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def counters() -> dict:
    return volley.nodes()[0]["scheduler"]


@volley.remote(max_retries=1)
def my_pid(path: str) -> int:
    # The first attempt waits to be killed; the retry (the file exists) returns at once.
    if not os.path.exists(path):
        open(path, "w").close()
        time.sleep(60)
    return os.getpid()


@volley.remote(max_restarts=2)
class Pid:
    def pid(self) -> int:
        return os.getpid()


def test_crashes_and_restarts_are_counted_and_asked_for_kills_are_not(dash, tmp_path):
    base, token = dash
    assert (counters()["worker_crashes"], counters()["actor_restarts"]) == (0, 0)

    # A pool worker killed from outside while it runs a task: one crash; the task is retried.
    flag = tmp_path / "started"
    ref = my_pid.remote(str(flag))
    assert poll(flag.exists, timeout=30), "the task never started"
    victim = next(
        w["pid"] for w in volley.state.list_workers() if w["task_id"] and not w["actor_id"]
    )
    os.kill(victim, signal.SIGKILL)
    assert volley.get(ref, timeout=60) != victim
    assert poll(lambda: counters()["worker_crashes"] == 1, timeout=10), counters()

    # An actor killed from outside: its process is a crash, and the actor is restarted.
    a = Pid.remote()
    first = volley.get(a.pid.remote(), timeout=30)
    os.kill(first, signal.SIGKILL)
    again = poll(lambda: counters()["actor_restarts"] == 1, timeout=10)
    assert again, counters()
    assert poll(lambda: counters()["worker_crashes"] == 2, timeout=10), counters()
    assert volley.get(a.pid.remote(), timeout=30) != first

    # volley.kill: the node asked for that end (restarted or not), so no crash is counted.
    volley.kill(a, no_restart=False)
    assert poll(lambda: counters()["actor_restarts"] == 2, timeout=10), counters()
    volley.get(a.pid.remote(), timeout=30)
    volley.kill(a)
    b = Pid.remote()
    volley.get(b.pid.remote(), timeout=30)
    assert counters()["worker_crashes"] == 2, counters()

    m = scrape(base, token)
    assert m[("volley_worker_crashes_total", (("node", "0"),))] == 2
    assert m[("volley_actor_restarts_total", (("node", "0"),))] == 2


def test_host_memory_is_read_from_meminfo(dash):
    base, token = dash
    info = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, rest = line.split(":", 1)
            info[key] = int(rest.split()[0]) * 1024
    n = volley.nodes()[0]
    assert n["mem_total"] == info["MemTotal"]
    assert 0 < n["mem_used"] < n["mem_total"]
    assert n["heartbeat_rtt_ms"] == 0, "a lone node beats to no head"
    m = scrape(base, token)
    assert m[("volley_node_memory_bytes", (("kind", "total"), ("node", "0")))] == info["MemTotal"]
    used = m[("volley_node_memory_bytes", (("kind", "used"), ("node", "0")))]
    assert 0 < used < info["MemTotal"]
    assert not [k for k in m if k[0] == "volley_heartbeat_latency_seconds"]
