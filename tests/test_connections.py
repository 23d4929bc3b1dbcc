"""The cluster's daemons under hostile or broken connections: peers that connect and never
authenticate (a byte every few seconds, more of them than the daemon has descriptors) cost it a
bounded number of threads and descriptors and lock nobody out; a head restarted in the same
session keeps the cluster's token so the nodes and drivers that survived it rejoin, and one that
is refused says so where its user looks. Real daemons started with the ``volley`` command on
127.0.0.x addresses, real sockets, real SIGKILLs."""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import driver_env, finish_driver, poll, read_line_with_prefix
from test_cluster import DEAD_AFTER_MS, HEARTBEAT_MS, Cluster, _free_port, _self_signed

import volley


class Daemons(Cluster):
    """`volley start ... --block` daemons of one session directory under ``tmp``, started from
    whole command lines (no token unless one is given; a file-descriptor limit if asked)."""

    def __init__(self, tmp: Path):
        super().__init__(tmp)
        self.addrs: list[str] = []

    def argv(self, head: bool, host: str, extra: tuple = ()) -> list[str]:
        port = self.head.split(":")[1] if head else str(_free_port(host))
        role = ["--head"] if head else ["--address", self.head]
        return [
            sys.executable, "-m", "volley._cli", "start", *role, "--host", host, "--port", port,
            "--num-cpus", "1", "--block", "--heartbeat-ms", str(HEARTBEAT_MS),
            "--dead-after-ms", str(DEAD_AFTER_MS), "--object-store-memory", str(64 << 20),
            *extra,
        ]  # fmt: skip

    def launch(self, argv: list[str], preexec=None, timeout: float = 30) -> int:
        """Starts a daemon; returns its index once it listens."""
        log = self.tmp / f"daemon-{len(self.procs)}.log"
        with open(log, "wb") as out:
            p = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
                preexec_fn=preexec,
            )
        self.procs.append(p)
        self.logs.append(log)
        deadline = time.monotonic() + timeout
        while "listening on" not in log.read_text(errors="replace"):
            assert p.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"daemon did not start:\n{log.read_text()}"
            time.sleep(0.05)
        self.addrs.append(log.read_text().split("listening on ", 1)[1].split()[0])
        return len(self.procs) - 1

    def status(self) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "volley._cli", "status", "--address", self.head],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
        )


@pytest.fixture
def daemons(tmp_path):
    volley.shutdown()
    d = Daemons(tmp_path)
    yield d
    volley.shutdown()
    d.stop()


class Drip:
    """``n`` TCP connections to ``addr`` that each send ``first``, then one byte every ``every``
    seconds, and never authenticate; closed by ``close``."""

    def __init__(self, addr: str, n: int, every: float = 2.0, first: bytes = b""):
        host, port = addr.rsplit(":", 1)
        self.socks: list[socket.socket] = []
        for _ in range(n):
            s = socket.socket()
            s.settimeout(1.0)  # a full accept queue delays connect: skip that one
            try:
                s.connect((host, int(port)))
            except OSError:
                s.close()
                continue
            if first:
                s.sendall(first)
            s.setblocking(False)
            self.socks.append(s)
        self.every = every
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._drip, daemon=True)
        self.thread.start()

    def _drip(self) -> None:
        while not self.stopped.wait(self.every):
            for s in self.socks:
                try:
                    s.send(b"\0")
                except OSError:
                    pass

    def still_open(self) -> int:
        """How many of the connections the daemon has not closed yet."""
        n = 0
        for s in self.socks:
            try:
                while s.recv(65536):  # what the daemon sent (its challenge)
                    pass
            except BlockingIOError:
                n += 1  # open, nothing more to read
            except OSError:
                pass  # reset
        return n

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=10)
        for s in self.socks:
            s.close()


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Threads:"))


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@volley.remote
def _square(x: int) -> int:
    return x * x


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_slow_unauthenticated_connections_cost_bounded_threads_and_lock_nobody_out(
    daemons, tmp_path, tls
):
    token = "drip-test-token-0123456789"
    extra: tuple = ("--token", token)
    first = b""
    if tls:
        if shutil.which("openssl") is None:
            pytest.skip("needs openssl to make a certificate")
        cert, key = _self_signed(tmp_path)
        extra += ("--tls-cert", cert, "--tls-key", key)
        first = b"\x16\x03\x01\x02\x00"  # a TLS record of 512 bytes, to come a byte at a time
    head = daemons.launch(daemons.argv(True, "127.0.0.1", extra))
    pid = daemons.procs[head].pid
    drip = Drip(daemons.head, 400 if not tls else 200, first=first)
    try:
        assert len(drip.socks) >= (300 if not tls else 150), len(drip.socks)
        # Each would hold a thread or four (and a descriptor) for as long as it drips.
        time.sleep(3)
        assert _threads(pid) < 100 and _fds(pid) < 100, (_threads(pid), _fds(pid))
        # A node joins and a driver runs tasks on it while the drip goes on.
        t0 = time.monotonic()
        daemons.launch(daemons.argv(False, "127.0.0.2", extra), timeout=20)
        volley.init(address=daemons.head, token=token, tls_cert=cert if tls else None)
        assert volley.get([_square.remote(i) for i in range(20)], timeout=30) == [
            i * i for i in range(20)
        ]
        assert time.monotonic() - t0 < 20
        assert len([n for n in volley.nodes() if not n["driver"]]) == 2
        assert _threads(pid) < 100 and _fds(pid) < 100, (_threads(pid), _fds(pid))
        # A byte every 2 s does not stretch the handshake past its deadline (5 s).
        assert poll(lambda: drip.still_open() == 0, timeout=15), drip.still_open()
        log = daemons.log(head)
        assert "dropped" in log and log.count("dropped") < 10  # said now and then, not each time
    finally:
        drip.close()


@pytest.mark.parametrize(
    "fds, conns",
    [(40, 150), pytest.param(1024, 1100, marks=pytest.mark.slow)],  # the numbers
    ids=["40-fds", "1024-fds"],
)
def test_more_slow_connections_than_descriptors_do_not_make_the_head_spin(daemons, fds, conns):
    token = "drip-test-token-0123456789"

    def few_fds():
        resource.setrlimit(resource.RLIMIT_NOFILE, (fds, fds))

    head = daemons.launch(daemons.argv(True, "127.0.0.1", ("--token", token)), preexec=few_fds)
    pid = daemons.procs[head].pid
    drip = Drip(daemons.head, conns)
    try:
        # Out of descriptors, accept fails at once: the head must wait, not retry in a loop.
        before = _cpu_seconds(pid)
        time.sleep(3)
        used = _cpu_seconds(pid) - before
        assert used < 0.8, f"the head used {used:.2f} s of CPU in 3 s"
        daemons.launch(daemons.argv(False, "127.0.0.2", ("--token", token)), timeout=20)
        assert poll(lambda: "node 2 joined" in daemons.log(head), timeout=10), daemons.log(head)
        status = subprocess.run(
            [sys.executable, "-m", "volley._cli", "status", "--address", daemons.head,
             "--token", token],
            env=daemons.env, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert status.returncode == 0 and "2 node(s)" in status.stdout, status
        assert daemons.procs[head].poll() is None
        assert _threads(pid) < 100, _threads(pid)
    finally:
        drip.close()


DRIVER = """
import json, os, sys, time
import volley

volley.init(address={head!r})

def node_pid():
    # The worker's node: its parent, or its parent's when the node's worker template forked it.
    ppid = os.getppid()
    with open(f"/proc/{{ppid}}/cmdline", "rb") as f:
        if b"volley._template" not in f.read():
            return ppid
    with open(f"/proc/{{ppid}}/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[1])

@volley.remote
def where(i):
    time.sleep(0.1)
    return i * i, os.environ["VOLLEY_NODE_ADDRESS"], node_pid()

first = [where.remote(i) for i in range(60)]
print("SUBMITTED", flush=True)
new_head = int(sys.stdin.readline())
# Rejoined: the view comes from the new head, which lists itself and both nodes.
deadline = time.monotonic() + 30
while True:
    nodes = [n for n in volley.nodes() if not n["driver"]]
    if len(nodes) == 3 and any(n["pid"] == new_head for n in nodes):
        break
    assert time.monotonic() < deadline, f"never rejoined: {{nodes}}"
    time.sleep(0.1)
second = [where.remote(i) for i in range(60, 90)]
print("RESULT", json.dumps(volley.get(first + second, timeout=60)), flush=True)
"""


def _driver(daemons: Daemons, tmp: Path, body: str) -> subprocess.Popen:
    script = tmp / "driver.py"
    script.write_text(body)
    err = open(tmp / "driver.stderr", "w")
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
        env=dict(driver_env(), **{k: daemons.env[k] for k in ["VOLLEY_SESSION_DIR"]}),
        cwd=str(tmp),
    )
    err.close()
    proc._volley_stderr_path = tmp / "driver.stderr"
    return proc


def test_a_head_restarted_with_the_same_command_keeps_the_cluster_together(daemons, tmp_path):
    # No --token and no VOLLEY_TOKEN: the head makes one, the nodes read it from the session.
    head_argv = daemons.argv(True, "127.0.0.1")
    head = daemons.launch(head_argv)
    daemons.launch(daemons.argv(False, "127.0.0.2"))
    daemons.launch(daemons.argv(False, "127.0.0.3"))
    token = (tmp_path / "session" / "token").read_text()
    proc = _driver(daemons, tmp_path, DRIVER.format(head=daemons.head))
    try:
        read_line_with_prefix(proc, "SUBMITTED")
        time.sleep(0.5)  # the job is under way on the three nodes
        daemons.kill(head)
        again = daemons.launch(head_argv)
        assert (tmp_path / "session" / "token").read_text() == token
        proc.stdin.write(f"{daemons.procs[again].pid}\n")
        proc.stdin.flush()
        results = json.loads(read_line_with_prefix(proc, "RESULT", timeout=90))
        finish_driver(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert [r[0] for r in results] == [i * i for i in range(90)]
    # The tasks submitted after the restart ran on every node, the new head included.
    assert {r[1] for r in results[60:]} == set(daemons.addrs)
    assert any(r[2] == daemons.procs[again].pid for r in results[60:])
    assert "wrong cluster token" not in "".join(daemons.log(i) for i in (1, 2))


REFUSED_DRIVER = """
import time
import volley

volley.init(address={head!r})

@volley.remote
def one():
    return 1

assert volley.get(one.remote()) == 1
print("READY", flush=True)
time.sleep(120)
"""


def test_a_refused_rejoin_is_reported_to_the_driver_and_by_status(daemons, tmp_path):
    head_argv = daemons.argv(True, "127.0.0.1")
    head = daemons.launch(head_argv)
    node = daemons.launch(daemons.argv(False, "127.0.0.2"))
    proc = _driver(daemons, tmp_path, REFUSED_DRIVER.format(head=daemons.head))
    try:
        read_line_with_prefix(proc, "READY")
        daemons.kill(head)
        # Restarted with another token: the node and the driver cannot rejoin.
        daemons.launch([*head_argv, "--token", "another-token-0123456789"])
        err = tmp_path / "driver.stderr"
        said = poll(lambda: "refused to take back this driver" in err.read_text(), timeout=20)
        assert said, err.read_text()
        text = err.read_text()
        assert "wrong cluster token" in text
        assert text.count("refused to take back this driver") == 1  # once, not every beat
        assert poll(lambda: "refused to take back this node" in daemons.log(node), timeout=10)
        status = daemons.status()
        assert status.returncode == 0, status.stderr
        assert "refused 127.0.0.1" in status.stdout, status.stdout
        assert "wrong cluster token" in status.stdout, status.stdout
    finally:
        proc.kill()
        proc.wait()
