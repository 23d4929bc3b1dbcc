"""What a new user tries first: ``volley --version``, ``VOLLEY_ADDRESS``, errors that name the
address, ``nodes()``/``cluster_resources()``/``get_runtime_context()``/``get_gpu_ids()`` on one
machine and on a cluster, ``volley status`` counting queued calls and showing detached actors,
and the driver's messages through ``logging.getLogger("volley")``."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import driver_env, poll, write_script

import volley

ROOT = Path(__file__).resolve().parent.parent

#: The keys of a node's dict, the same on one machine and on a cluster.
NODE_KEYS = {
    "node_id", "address", "num_cpus", "cpus_free", "resources", "workers", "store_used",
    "store_capacity", "tasks_waiting", "waiting", "bytes_received", "bytes_served", "driver",
    "pid", "scheduler", "store", "named_actors", "mem_total", "mem_used", "heartbeat_rtt_ms",
}  # fmt: skip


def _cli(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [sys.executable, "-m", "volley._cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env or driver_env(),
    )
    if check:
        assert out.returncode == 0, (out.stdout, out.stderr)
    return out


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_version_is_the_engines_and_the_packages():
    version = re.compile(r'^version = "([^"]+)"', re.M)
    cargo = version.search((ROOT / "Cargo.toml").read_text()).group(1)
    pyproject = version.search((ROOT / "pyproject.toml").read_text()).group(1)
    assert volley.__version__ == cargo == pyproject
    assert importlib.metadata.version("volley-compute") == volley.__version__
    out = _cli("--version").stdout
    assert out.startswith(f"volley {volley.__version__} (protocol "), out


# ------------------------------------------------------------------------------ one machine


@volley.remote
def _context():
    ctx = volley.get_runtime_context()
    return {
        **ctx.get(),
        "pid": ctx.get_worker_pid(),
        "gpus": volley.get_gpu_ids(),
        "nodes": volley.nodes(),
        "cpus": volley.cluster_resources()["CPU"],
    }


@volley.remote(num_gpus=1)
def _gpu_task():
    return volley.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES")


@volley.remote(max_concurrency=2)
class _Where:
    def context(self):
        ctx = volley.get_runtime_context()
        return ctx.get_job_id(), ctx.get_task_id(), ctx.actor_id, volley.get_gpu_ids()


@pytest.mark.usefixtures("no_volley")
def test_nodes_resources_and_context_on_one_machine():
    volley.init(num_cpus=2, num_gpus=2, resources={"disk": 1})
    nodes = volley.nodes()
    assert len(nodes) == 1 and set(nodes[0]) == NODE_KEYS, nodes
    assert (nodes[0]["node_id"], nodes[0]["driver"], nodes[0]["num_cpus"]) == (0, True, 2.0)
    total = volley.cluster_resources()
    assert (total["CPU"], total["GPU"], total["disk"]) == (2.0, 2.0, 1.0)
    assert volley.available_resources()["CPU"] == 2.0

    ctx = volley.get_runtime_context()
    job = ctx.get_job_id()
    assert job == "0" and ctx.job_id == job  # the driver's node: the state API's job id
    assert (ctx.get_task_id(), ctx.get_actor_id(), ctx.node_id) == (None, None, 0)
    assert ctx.get_worker_pid() == os.getpid()
    assert volley.get_gpu_ids() == []  # the driver, as in Ray

    ref = _context.remote()
    got = volley.get(ref)
    assert got["job_id"] == job and got["actor_id"] is None and got["node_id"] == 0
    assert got["task_id"] == ref.hex()[:32]
    # The state API names the task's job alike.
    assert volley.state.get_task(ref)["job_id"] == job
    assert got["pid"] != os.getpid() and got["gpus"] == []
    assert len(got["nodes"]) == 1 and set(got["nodes"][0]) == NODE_KEYS
    assert got["cpus"] == 2.0

    gpus, visible = volley.get(_gpu_task.remote())
    assert len(gpus) == 1 and gpus[0] in (0, 1) and visible == str(gpus[0])

    a = _Where.remote()
    calls = [a.context.remote() for _ in range(2)]
    answers = volley.get(calls)
    for ref, (j, task, actor, gpus) in zip(calls, answers):
        assert (j, task, gpus) == (job, ref.hex()[:32], [])
        assert actor == repr(a).split(", ")[1].rstrip(")")


def test_a_runtime_context_member_volley_lacks_says_so():
    with pytest.raises(AttributeError, match="get_assigned_resources is not in volley yet"):
        volley.get_runtime_context().get_assigned_resources()


# ---------------------------------------------------------------------- addresses and errors


@pytest.mark.usefixtures("no_volley")
def test_a_connection_error_names_the_address_it_tried():
    port = _closed_port()
    with pytest.raises(ConnectionError, match=rf"cluster at 127\.0\.0\.1:{port} \(address="):
        volley.init(address=f"127.0.0.1:{port}", token="t" * 32)
    assert not volley.is_initialized()
    out = _cli("status", "--address", f"127.0.0.1:{port}", "--token", "x", check=False)
    assert out.returncode == 1 and f"127.0.0.1:{port}" in out.stderr, out.stderr


def test_init_honours_volley_address_and_an_explicit_address_wins(tmp_path):
    port = _closed_port()
    script = write_script(
        tmp_path,
        """
        import volley
        try:
            volley.init()
        except ConnectionError as e:
            print("env:", e)
        try:
            volley.init(address="127.0.0.1:1")
        except ConnectionError as e:
            print("explicit:", e)
        """,
    )
    env = {**driver_env(), "VOLLEY_ADDRESS": f"127.0.0.1:{port}", "VOLLEY_TOKEN": "t" * 32}
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env
    )
    assert out.returncode == 0, out.stderr
    assert f"env: could not connect to the volley cluster at 127.0.0.1:{port} (VOLLEY_ADDRESS=" in (
        out.stdout
    ), out.stdout
    assert "explicit: could not connect to the volley cluster at 127.0.0.1:1 (address=" in (
        out.stdout
    ), out.stdout


# ---------------------------------------------------------------------------- volley status


@volley.remote
class _Slow:
    def wait_for(self, path):
        deadline = time.monotonic() + 60
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.02)


def _my_status() -> dict | None:
    out = _cli("status", "--json", check=False)
    if out.returncode != 0:
        return None
    mine = [n for n in json.loads(out.stdout) if n["pid"] == os.getpid()]
    return mine[0] if mine else None


@pytest.mark.usefixtures("no_volley")
def test_status_counts_calls_queued_on_an_actor_and_shows_detached_actors(tmp_path):
    volley.init(num_cpus=1)
    go = str(tmp_path / "go")
    lonely = _Slow.options(lifetime="detached").remote()
    named = _Slow.options(name="kept", lifetime="detached").remote()
    slow = _Slow.remote()
    calls = [slow.wait_for.remote(go) for _ in range(5)]
    # One call runs (until `go` exists); the four behind it wait (status said 0 before).
    seen = poll(lambda: (s := _my_status()) and s["tasks_waiting"] == 4 and s, timeout=15)
    assert seen, _my_status()
    actors = {(a["name"], a["class_name"]) for a in seen["named_actors"]}
    assert actors == {("", "_Slow"), ("kept", "_Slow")}, seen["named_actors"]
    text = _cli("status").stdout
    assert "actor (detached, no name) _Slow" in text and "actor 'kept' _Slow" in text, text
    assert "4 task(s) waiting" in text, text
    (tmp_path / "go").touch()
    volley.get(calls)
    volley.kill(lonely)
    volley.kill(named)


# ---------------------------------------------------------------------- the "volley" logger

RESTARTING_DRIVER = """
import logging, os, sys, time, volley
MODE = sys.argv[1]
if MODE == "quiet":
    logging.getLogger("volley").setLevel(logging.ERROR)
if MODE == "handler":
    records = []
    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)
    logging.getLogger("volley").addHandler(Keep())
volley.init(num_cpus=1)

@volley.remote(max_restarts=1)
class A:
    def pid(self):
        return os.getpid()

a = A.remote()
os.kill(volley.get(a.pid.remote()), 9)
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    try:
        volley.get(a.pid.remote())
        break
    except volley.ActorDiedError:
        time.sleep(0.1)
volley.shutdown()
if MODE == "handler":
    for r in records:
        print("record", r.levelname, r.getMessage())
"""


@pytest.mark.parametrize("mode", ["default", "quiet", "handler"])
def test_driver_messages_go_through_the_volley_logger(tmp_path, mode):
    script = write_script(tmp_path, RESTARTING_DRIVER)
    out = subprocess.run(
        [sys.executable, str(script), mode],
        capture_output=True,
        text=True,
        timeout=120,
        env=driver_env(),
    )
    assert out.returncode == 0, out.stderr
    died = re.compile(r"^volley: actor 'A' died \(pid \d+ killed by signal 9.*restarting it", re.M)
    if mode == "default":
        assert died.search(out.stderr), out.stderr  # on stderr as before
    elif mode == "quiet":
        assert "actor 'A' died" not in out.stderr, out.stderr
    else:
        assert re.search(r"^record INFO volley: actor 'A' died \(pid \d+", out.stdout, re.M), (
            out.stdout
        )
        assert re.search(r"^record INFO volley: actor 'A' was restarted", out.stdout, re.M)


# ------------------------------------------------------------------------------- a cluster

CLUSTER_DRIVER = """
import json, os, volley
volley.init()  # VOLLEY_ADDRESS

@volley.remote
def inside():
    ctx = volley.get_runtime_context()
    cpus = volley.cluster_resources()["CPU"]
    return ctx.get_node_id(), cpus, len(volley.nodes()), ctx.get_job_id()

nodes = volley.nodes()
print(json.dumps({
    "keys": sorted(nodes[0]),
    "workers": [n["node_id"] for n in nodes if not n["driver"]],
    "cpus": volley.cluster_resources()["CPU"],
    "job": volley.get_runtime_context().get_job_id(),
    "inside": volley.get(inside.remote()),
}))
"""


def test_volley_address_nodes_resources_context_and_node_logs_on_a_cluster(tmp_path):
    from test_cluster import Cluster, _wait_nodes  # noqa: F401

    c = Cluster(tmp_path)
    try:
        c.start_nodes(2)
        env = {**c.env, "VOLLEY_ADDRESS": c.head, "VOLLEY_TOKEN": c.token, "PYTHONUNBUFFERED": "1"}
        script = write_script(tmp_path, CLUSTER_DRIVER)

        def run():
            out = subprocess.run(
                [sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env
            )
            assert out.returncode == 0, out.stderr
            got = json.loads(out.stdout.strip().splitlines()[-1])
            return got if len(got["workers"]) == 2 else None

        got = poll(run, timeout=60, interval=0.5)
        assert got, "the driver never saw both nodes"
        assert set(got["keys"]) == NODE_KEYS
        assert got["cpus"] == 2.0
        node, cpus, count, job = got["inside"]
        assert node in got["workers"] and cpus == 2.0 and count >= 2 and job == got["job"]
        # The driver's node number, as the state API shows its job (not the head's 1, nor a
        # worker node's).
        assert job.isdigit() and int(job) not in (1, *got["workers"]), got

        # The head's own log, through its node record.
        log = _cli("logs", "--node", "1", env=c.env).stdout
        assert "listening on" in log, log
        missing = _cli("logs", "--node", "7", env=c.env, check=False)
        assert missing.returncode == 1 and "no node 7" in missing.stderr
    finally:
        c.stop()
