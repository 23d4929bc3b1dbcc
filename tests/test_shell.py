"""volley.shell, volley.shell_many and `volley exec`: commands run as tasks, on any node, with
their exit status and output; timeouts that kill the whole process group; lines streamed as
they come. Real commands, real processes, real signals.

VOLLEY_TEST_CLUSTER=1 runs the tests against the 3-node test cluster (``node=`` on each of its
nodes); the `volley exec` tests start a 2-node cluster of their own either way."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import finish_driver, is_running, kill_driver, poll, start_driver, write_script

import volley

PY = sys.executable


def node_ids(with_cpus: bool = False) -> list[int]:
    """The nodes a command may be pinned to (a cluster's daemons; on one machine, its node)."""
    ns = volley.nodes()
    daemons = [n for n in ns if not n["driver"]] or ns
    return [n["node_id"] for n in daemons if n["num_cpus"] > 0 or not with_cpus]


# ------------------------------------------------------------------ volley.shell


def test_a_command_gives_its_status_output_and_node(volley_shared):
    r = volley.shell("echo out; echo err >&2; exit 3")
    assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n")
    assert r.node in node_ids(with_cpus=True) and not r.timed_out and not r.ok
    assert r.why() == "exited with status 3"
    ok = volley.shell([PY, "-c", "import sys; print(sys.argv[1])", "a b; $HOME"])
    assert ok.stdout == "a b; $HOME\n", "a list runs without a shell"
    assert ok.ok and ok.check() is ok


def test_env_adds_to_the_workers_environment_and_cwd_is_the_directory(volley_shared, tmp_path):
    r = volley.shell('echo "$MY_VAR|$PATH|$(pwd)"', env={"MY_VAR": "set"}, cwd=tmp_path)
    my_var, path, cwd = r.stdout.strip().split("|")
    assert my_var == "set" and path, "PATH is kept beside the added variable"
    assert Path(cwd).resolve() == tmp_path.resolve()


def test_check_raises_a_shell_error_that_says_what_failed(volley_shared):
    with pytest.raises(volley.ShellError) as info:
        volley.shell("echo boom >&2; exit 5", check=True)
    e = info.value
    assert isinstance(e, subprocess.CalledProcessError)
    assert e.returncode == 5 and e.result.stderr == "boom\n"
    assert "exited with status 5" in str(e) and "boom" in str(e)


def test_a_command_that_cannot_start_has_status_127_and_says_why(volley_shared, tmp_path):
    r = volley.shell(["/no/such/program"])
    assert r.returncode == 127 and "could not start '/no/such/program'" in r.error
    gone = volley.shell("true", cwd=tmp_path / "missing")
    assert gone.returncode == 127 and "missing" in gone.error
    with pytest.raises(volley.ShellError, match="could not start"):
        gone.check()


def test_a_timeout_kills_the_whole_process_group_and_says_so(volley_shared):
    # The shell starts a background sleep (its pid printed first), then waits on it.
    t0 = time.monotonic()
    r = volley.shell("sleep 300 & echo $!; wait", timeout=1)
    assert time.monotonic() - t0 < 30
    assert r.timed_out and not r.ok and r.returncode < 0
    assert "timed out after" in r.why() and "process group was killed" in r.why()
    child = int(r.stdout.split()[0])
    assert poll(lambda: not is_running(child), timeout=10), "the background sleep survived"
    with pytest.raises(volley.ShellError, match="timed out"):
        r.check()


def test_a_command_that_ignores_sigterm_is_killed(volley_shared):
    r = volley.shell("trap '' TERM; echo ready; sleep 300 & echo $!; wait; wait", timeout=0.5)
    assert r.timed_out and r.returncode == -9
    assert poll(lambda: not is_running(int(r.stdout.split()[1])), timeout=10)


def test_bad_arguments_fail_at_the_call(volley_shared):
    with pytest.raises(ValueError, match="empty command"):
        volley.shell("  ")
    with pytest.raises(ValueError, match="empty command"):
        volley.shell([])
    with pytest.raises(TypeError, match="a str .* or a list of str"):
        volley.shell(42)
    with pytest.raises(TypeError, match="arguments are str"):
        volley.shell(["echo", 1])
    with pytest.raises(ValueError, match="NUL"):
        volley.shell("echo \0")
    with pytest.raises(ValueError, match="NUL"):
        volley.shell(["echo", "a\0b"])
    with pytest.raises(ValueError, match="not a variable name"):
        volley.shell("true", env={"A": "x\0y"})
    with pytest.raises(ValueError, match="timeout must be"):
        volley.shell("true", timeout=0)
    with pytest.raises(TypeError, match="env must be a dict"):
        volley.shell("true", env=["A=1"])
    with pytest.raises(ValueError, match="not a variable name"):
        volley.shell("true", env={"A=B": "1"})
    with pytest.raises(ValueError, match="is not in the cluster"):
        volley.shell("true", node=999)
    with pytest.raises(TypeError, match="node must be a node id"):
        volley.shell("true", node="1")
    with pytest.raises(ValueError, match="num_cpus must be"):
        volley.shell("true", num_cpus=-1)
    with pytest.raises(TypeError, match="list of commands"):
        volley.shell_many("echo hi")
    with pytest.raises(ValueError, match="concurrency must be"):
        volley.shell_many(["true"], concurrency=0)
    with pytest.raises(ValueError, match="not a format of"):
        volley.shell_many(["true"], prefix="{nope} ")
    with pytest.raises(TypeError, match="prefix must be"):
        volley.shell_many(["true"], prefix=3)
    with pytest.raises(TypeError, match="on_line must be callable"):
        volley.shell_many(["true"], on_line="print")
    with pytest.raises(ValueError, match="2 node ids for 1 commands"):
        volley.shell_many(["true"], node=[0, 0])


def test_node_pins_the_command_to_each_node(volley_shared):
    for node in node_ids():
        r = volley.shell("echo here", node=node)
        assert (r.node, r.stdout) == (node, "here\n")


# ------------------------------------------------------------------ volley.shell_many


def test_many_commands_keep_their_order_and_each_its_own_result(volley_shared):
    cmds = [f"echo {i}; exit {i % 3}" for i in range(12)]
    rs = volley.shell_many(cmds, concurrency=4, stream=False)
    assert [r.stdout for r in rs] == [f"{i}\n" for i in range(12)]
    assert [r.returncode for r in rs] == [i % 3 for i in range(12)]
    with pytest.raises(volley.ShellError, match="exited with status 1"):
        volley.shell_many(cmds[:3], check=True, stream=False)
    assert volley.shell_many([]) == []


@pytest.mark.parametrize(
    "limit, num_cpus",
    [(2, None), (1, None), (2, 0)],
    ids=["cpus-bound-it", "below-the-cpus", "zero-cpu-commands"],
)
def test_the_concurrency_limit_holds(volley_shared, tmp_path, limit, num_cpus):
    # Each command records when it starts and ends (its own clock: the same machine's). With
    # a CPU each and a limit of all the CPUs, the scheduler bounds them; else shell_many does.
    log = tmp_path / "spans"
    log.mkdir()
    cmd = f"{PY} -c \"import os,time; a=time.time(); time.sleep(0.2); open(r'{log}/%d' % os.getpid(), 'w').write(f'{{a}} {{time.time()}}')\""  # noqa: E501
    rs = volley.shell_many([cmd] * 6, concurrency=limit, num_cpus=num_cpus, stream=False)
    assert all(r.ok for r in rs), [r.why() for r in rs]
    spans = [tuple(map(float, p.read_text().split())) for p in log.iterdir()]
    assert len(spans) == 6
    most = max(sum(1 for a, b in spans if a <= t < b) for t, _ in spans)
    assert most <= limit, f"{most} commands ran at once with concurrency={limit}"


def test_lines_stream_with_a_prefix_before_the_command_ends(volley_shared, tmp_path):
    # The command prints a line, then waits until the test has seen it: only a line streamed
    # while the command runs lets it finish (else it times out, and the test says so).
    seen = tmp_path / "seen"
    cmd = f"echo first; while [ ! -e {seen} ]; do sleep 0.01; done; echo second; echo e >&2"
    got: list[tuple[int, str, str, float]] = []

    def on_line(index, stream, line):
        got.append((index, stream, line, time.monotonic()))
        if line == "first\n":
            seen.touch()

    rs = volley.shell_many([cmd, "echo other"], on_line=on_line, timeout=30)
    assert not rs[0].timed_out, "the first line did not arrive while the command ran"
    assert [(i, s, ln) for i, s, ln, _ in got if i == 0] == [
        (0, "stdout", "first\n"),
        (0, "stdout", "second\n"),
        (0, "stderr", "e\n"),
    ]
    assert (1, "stdout", "other\n") in [(i, s, ln) for i, s, ln, _ in got]
    assert rs[0].stdout == "first\nsecond\n" and rs[0].stderr == "e\n"


def test_printed_lines_carry_the_prefix_and_go_to_stdout_or_stderr(volley_shared, capfd):
    volley.shell_many(["echo a; echo b >&2", "printf 'no newline'"], prefix="<{index} {cmd}> ")
    out, err = capfd.readouterr()
    assert "<0 echo a; echo b >&2> a\n" in out
    assert "<0 echo a; echo b >&2> b\n" in err
    assert "<1 printf 'no newline'> no newline\n" in out
    volley.shell_many(["echo bare"], prefix=False)
    assert capfd.readouterr().out == "bare\n"


def test_a_timeout_in_many_ends_that_command_only(volley_shared):
    rs = volley.shell_many(["sleep 300", "echo fine"], timeout=1, stream=False)
    assert rs[0].timed_out and rs[1].ok


def test_each_command_on_its_own_node(volley_shared):
    ids = node_ids()
    rs = volley.shell_many(["echo x"] * len(ids), node=ids, prefix="[node {node}] ")
    assert [r.node for r in rs] == ids


# ------------------------------------------------------------------ volley exec


@pytest.fixture(scope="module")
def exec_cluster(tmp_path_factory):
    """Two node daemons (a head and one more, 1 CPU each) that `volley exec` connects to; this
    process does not join them."""
    from test_cluster import Cluster

    c = Cluster(tmp_path_factory.mktemp("exec-cluster"))
    c.start_nodes(2)
    yield c
    c.stop()


def volley_exec(c, *args: str, stdin: str | None = None, timeout: float = 60):
    env = dict(c.env, VOLLEY_TOKEN=c.token, PYTHONUNBUFFERED="1")
    return subprocess.run(
        [PY, "-m", "volley._cli", "exec", "--address", c.head, *args],
        capture_output=True, text=True, env=env, timeout=timeout, input=stdin,
    )  # fmt: skip


def wait_for_both_nodes(c) -> None:
    """A node joins the head with its heartbeat: until both have, --all-nodes sees one."""

    def both() -> bool:
        out = volley_exec(c, "--all-nodes", "--", "echo up").stdout
        return len(set(_prefixes(out))) == 2

    assert poll(both, timeout=30, interval=0.2), "the second node never joined"


def _prefixes(out: str) -> list[str]:
    return [ln.split("]")[0] + "]" for ln in out.splitlines() if ln.startswith("[node ")]


def test_exec_all_nodes_runs_once_on_each_with_a_prefix(exec_cluster):
    wait_for_both_nodes(exec_cluster)
    r = volley_exec(exec_cluster, "--all-nodes", "--", "echo", "hello from", "$((6 * 7))")
    assert r.returncode == 0, r.stderr
    lines = sorted(r.stdout.splitlines())
    assert len(lines) == 2 and all(ln.endswith("] hello from 42") for ln in lines), r.stdout
    assert len(set(_prefixes(r.stdout))) == 2


def test_exec_all_nodes_runs_on_every_node_at_once(exec_cluster, tmp_path):
    # Each command waits until both have started: run one after the other, they would time out.
    meet = tmp_path / "meet"
    meet.mkdir()
    wait_both = f"touch {meet}/$$; while [ $(ls {meet} | wc -l) -lt 2 ]; do sleep 0.01; done"
    wait_for_both_nodes(exec_cluster)
    r = volley_exec(exec_cluster, "--all-nodes", "--timeout", "30", "--", wait_both, "; echo met")
    assert r.returncode == 0, r.stderr
    assert sorted(ln.split("] ")[1] for ln in r.stdout.splitlines()) == ["met", "met"]


def test_exec_on_one_node_returns_the_commands_status(exec_cluster):
    wait_for_both_nodes(exec_cluster)
    listed = volley_exec(exec_cluster, "--all-nodes", "--", "echo x").stdout
    node = int(_prefixes(listed)[0].removeprefix("[node ").removesuffix("]"))
    r = volley_exec(exec_cluster, "--node", str(node), "--", "echo on; exit 7")
    assert r.returncode == 7
    assert r.stdout == f"[node {node}] on\n"
    assert f"node {node}" in r.stderr and "exited with status 7" in r.stderr


def test_exec_fails_if_any_command_failed_and_reports_timeouts(exec_cluster, tmp_path):
    cmds = tmp_path / "cmds"
    cmds.write_text("echo one\nexit 3\n\necho three\n")
    r = volley_exec(exec_cluster, "--file", str(cmds), "--concurrency", "2")
    assert r.returncode == 1
    assert sorted(r.stdout.splitlines()) == ["[0] one", "[2] three"]
    assert "command 1: 'exit 3' exited with status 3" in r.stderr
    r = volley_exec(exec_cluster, "--timeout", "0.5", "--", "sleep 300")
    assert r.returncode == 124 and "timed out" in r.stderr
    r = volley_exec(exec_cluster, "--file", "-", stdin="echo from stdin\n")
    assert (r.returncode, r.stdout) == (0, "from stdin\n")
    r = volley_exec(exec_cluster, "--no-shell", "--", "echo", "$HOME; not expanded")
    assert (r.returncode, r.stdout) == (0, "$HOME; not expanded\n")


def test_exec_usage_errors_say_what_is_wrong(exec_cluster):
    r = volley_exec(exec_cluster)
    assert r.returncode == 2 and "no command" in r.stderr
    r = volley_exec(exec_cluster, "--concurrency", "0", "--", "true")
    assert r.returncode == 2 and "--concurrency must be >= 1" in r.stderr
    r = volley_exec(exec_cluster, "--timeout", "0", "--", "true")
    assert r.returncode == 2 and "--timeout must be > 0" in r.stderr
    r = volley_exec(exec_cluster, "--node", "999", "--", "true")
    assert r.returncode == 2 and "node 999 is not in the cluster" in r.stderr
    r = volley_exec(exec_cluster, "--all-nodes", "--file", "-", stdin="true\n")
    assert r.returncode == 2 and "not with --all-nodes" in r.stderr
    r = volley_exec(exec_cluster, "--file", "/no/such/file")
    assert r.returncode == 2 and "/no/such/file" in r.stderr


def test_exec_without_a_cluster_says_it_cannot_connect(tmp_path):
    env = dict(os.environ, VOLLEY_SESSION_DIR=str(tmp_path / "none"))
    env.pop("VOLLEY_ADDRESS", None)
    r = subprocess.run(
        [PY, "-m", "volley._cli", "exec", "--address", "127.0.0.1:1", "--", "true"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2 and "cannot connect" in r.stderr


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "not-streamed"])
def test_a_command_whose_worker_dies_is_reported_and_the_others_finish(volley_shared, stream):
    # The command SIGKILLs the worker that runs it (its parent): no retry, no lost result.
    cmds = ["echo before; kill -9 $PPID; sleep 5", "echo fine"]
    rs = volley.shell_many(cmds, timeout=30, stream=stream)
    assert rs[0].returncode is None and not rs[0].ok
    assert "WorkerCrashedError" in rs[0].error and "SIGKILL" in rs[0].error
    assert rs[1].ok and rs[1].stdout == "fine\n"
    with pytest.raises(volley.WorkerCrashedError):
        volley.shell("kill -9 $PPID; sleep 5")


def test_commands_end_when_their_caller_stops_waiting(volley_shared):
    """An exception in the caller (Ctrl-C, or here on_line raising) closes the lines' queue;
    each running command notices within a second or so and its process group is killed."""
    pids: list[int] = []

    def on_line(index, stream, line):
        pids.append(int(line))
        if len(pids) == 2:
            raise RuntimeError("the caller gives up")

    with pytest.raises(RuntimeError, match="gives up"):
        volley.shell_many(["sleep 300 & echo $!; wait"] * 2, concurrency=2, on_line=on_line)
    assert len(pids) == 2
    assert poll(lambda: not any(is_running(p) for p in pids), timeout=20), (
        "a command outlived the shell_many that ran it"
    )


def test_a_command_that_closes_its_output_still_times_out(volley_shared):
    r = volley.shell("exec >/dev/null 2>&1; sleep 300", timeout=0.5)
    assert r.timed_out and r.returncode is not None and r.returncode < 0


@pytest.mark.parametrize("call", ["shell", "shell_many"])
def test_ctrl_c_in_the_caller_ends_its_commands(tmp_path, call):
    """A driver interrupted while it waits (SIGINT) kills its commands' process groups before
    it exits: it does not leave them running on the nodes."""
    pidfile = tmp_path / "pid"
    cmd = f"sleep 300 & echo $! > {pidfile}; wait"
    run = f"volley.shell({cmd!r})" if call == "shell" else f"volley.shell_many([{cmd!r}])"
    script = write_script(
        tmp_path,
        f"""
        import volley
        volley.init(num_cpus=1)
        {run}
    """,
    )
    proc = start_driver(script)
    try:
        assert poll(lambda: pidfile.exists() and pidfile.read_text().strip(), timeout=30), (
            "the command never started"
        )
        child = int(pidfile.read_text())
        proc.send_signal(signal.SIGINT)
        _, err = finish_driver(proc, timeout=30)
        assert "KeyboardInterrupt" in err
        assert poll(lambda: not is_running(child), timeout=10), "the command outlived its caller"
    finally:
        kill_driver(proc)
