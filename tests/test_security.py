"""Local attacks on a machine's volley files, stale node records, and TLS one flag away.

The attacks run as a second, unprivileged user against root's `volley` commands (the tests run
as root in CI; elsewhere they are skipped). Everything happens in a fresh world-writable sticky
directory made by the test (like /tmp), never in the real /tmp/volley-<uid>.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from conftest import is_running, poll

import volley
from volley import _runtime_dir, _runtime_env

ATTACKER = "volleyattacker"


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _volley(
    env: dict, *args: str, timeout: float = 60, check_rc: int | None = None
) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [sys.executable, "-m", "volley._cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd="/",
    )
    if check_rc is not None:
        assert out.returncode == check_rc, (out.stdout, out.stderr)
    return out


def _start_refused(env: dict, *args: str) -> subprocess.CompletedProcess:
    """Runs a ``volley start`` that must be refused; a daemon it started anyway is killed."""
    try:
        out = _volley(env, *args, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("the node started (and ran until killed)")
    started = re.search(r"running in the background \(pid (\d+)\)", out.stdout)
    if started:
        os.kill(int(started.group(1)), signal.SIGKILL)
    assert out.returncode == 1, (out.stdout, out.stderr)
    return out


def _env(session: Path, **more: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOLLEY_")}
    env.update(VOLLEY_SESSION_DIR=str(session), **more)
    return env


@pytest.fixture
def attacker() -> tuple[int, int]:
    """(uid, gid) of an unprivileged local user, created once."""
    if os.getuid() != 0:
        pytest.skip("needs root to create a second user")
    try:
        pw = pwd.getpwnam(ATTACKER)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        subprocess.run(
            [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", ATTACKER],
            check=True,
            capture_output=True,
        )
        pw = pwd.getpwnam(ATTACKER)
    assert pw.pw_uid != 0
    return pw.pw_uid, pw.pw_gid


@pytest.fixture
def shared_tmp():
    """A fresh directory anyone may create files in (mode 1777, like /tmp)."""
    d = Path(tempfile.mkdtemp(prefix="volley-sec-", dir="/tmp"))
    os.chmod(d, 0o1777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _as_attacker(ids: tuple[int, int], code: str, **kw) -> None:
    """Runs Python ``code`` as the unprivileged user (``kw`` as JSON in ``sys.argv[1]``), with
    the system's Python (this one may be under root's home, which that user cannot enter)."""
    python = next(
        (p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if Path(p).exists()), None
    )
    if python is None:
        pytest.skip("no system python3 for the second user to run")
    out = subprocess.run(
        [python, "-I", "-c", textwrap.dedent(code), json.dumps(kw)],
        user=ids[0],
        group=ids[1],
        extra_groups=[],
        cwd="/",
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr


PREAMBLE = """
import json, os, sys
args = json.loads(sys.argv[1])
d = args["session"]
os.mkdir(d)
os.chmod(d, 0o777)
"""


def test_head_does_not_write_its_token_into_a_directory_someone_else_made(attacker, shared_tmp):
    session = shared_tmp / "session"
    _as_attacker(attacker, PREAMBLE, session=str(session))
    port = _free_port()
    # In the foreground (a head that did start would be ended by the timeout) and as users run
    # it, in the background.
    for how in (["--block"], []):
        out = _start_refused(_env(session), "start", "--head", "--port", str(port), *how)
        assert f"refusing to use {session}" in out.stderr
        assert f"is owned by uid {attacker[0]}" in out.stderr
        assert "VOLLEY_SESSION_DIR" in out.stderr  # what to do
        assert os.listdir(session) == []  # no token, no log: nothing for the attacker to read
        with pytest.raises(ConnectionRefusedError):  # and no head started
            socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_stop_does_not_signal_a_pid_planted_in_someone_elses_directory(attacker, shared_tmp):
    session = shared_tmp / "session"
    victim = subprocess.Popen(["sleep", "60"])
    try:
        with open(f"/proc/{victim.pid}/stat", "rb") as f:  # readable by anyone, so plantable
            started = int(f.read().rsplit(b")", 1)[1].split()[19])
        _as_attacker(
            attacker,
            PREAMBLE
            + """
os.mkdir(d + "/nodes", 0o777)
with open(d + "/nodes/%d.json" % args["pid"], "w") as f:
    json.dump({"pid": args["pid"], "start_time": args["started"], "head": True}, f)
""",
            session=str(session),
            pid=victim.pid,
            started=started,
        )
        out = _volley(_env(session), "stop", check_rc=1)
        assert f"refusing to use {session}" in out.stderr
        time.sleep(0.3)
        assert victim.poll() is None, "volley stop signalled the planted pid"
    finally:
        victim.kill()
        victim.wait()


def test_head_does_not_write_through_a_planted_symlink(attacker, shared_tmp, tmp_path):
    precious = tmp_path / "precious"  # a root file the attacker cannot even read
    precious.write_text("root's data\n")
    session = shared_tmp / "session"
    _as_attacker(
        attacker,
        PREAMBLE
        + """
for name in ("address", "token", "tls_cert"):
    os.symlink(args["target"], os.path.join(d, name))
""",
        session=str(session),
        target=str(precious),
    )
    out = _start_refused(_env(session), "start", "--head", "--port", str(_free_port()), "--block")
    assert f"refusing to use {session}" in out.stderr
    assert precious.read_text() == "root's data\n"


def test_workers_do_not_run_a_package_someone_else_planted(attacker, shared_tmp, tmp_path):
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "mod.py").write_text("WHO = 'root'\n")
    _, packages = _runtime_env.build({"working_dir": str(wd)})
    (h,) = packages
    pwned = shared_tmp / "pwned"
    session = shared_tmp / "session"
    # The attacker knows (or guesses) root's package and unpacks its own code under its name,
    # both in the session directory and in a packages directory of its own.
    plant = """
import json, os, sys
args = json.loads(sys.argv[1])
for base in (args["session"] + "/packages", args["packages"]):
    os.makedirs(os.path.join(base, args["h"]))
    with open(os.path.join(base, args["h"], "mod.py"), "w") as f:
        f.write("open(%r, 'w').write('ran')\\nWHO = 'attacker'\\n" % args["pwned"])
"""
    _as_attacker(
        attacker,
        plant,
        session=str(session),
        packages=str(shared_tmp / "packages"),
        h=h,
        pwned=str(pwned),
    )
    script = tmp_path / "driver.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import volley
            try:
                volley.init(num_cpus=1, runtime_env={{"working_dir": {str(wd)!r}}})
            except Exception as e:
                print("REFUSED", type(e).__name__, e)
                raise SystemExit(0)

            @volley.remote
            def who():
                import mod
                return mod.WHO

            print("RAN", volley.get(who.remote(), timeout=60))
            """
        )
    )
    for extra in ({}, {"VOLLEY_PACKAGES_DIR": str(shared_tmp / "packages")}):
        out = subprocess.run(
            [sys.executable, str(script)],
            env=_env(session, **extra),
            capture_output=True,
            text=True,
            timeout=60,
            cwd=str(tmp_path),
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("REFUSED") and "refusing to use" in out.stdout, out.stdout
        assert not pwned.exists(), "the attacker's code ran"


def test_a_package_that_does_not_match_its_hash_is_refused(tmp_path, monkeypatch):
    """A worker checks a zip against its name before it unpacks it (the node did too)."""
    volley.shutdown()
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "mod.py").write_text("WHO = 'real'\n")
    _, packages = _runtime_env.build({"working_dir": str(wd)})
    (h,) = packages
    other = tmp_path / "other"
    other.mkdir()
    (other / "mod.py").write_text("WHO = 'swapped'\n")
    _, swapped = _runtime_env.build({"working_dir": str(other)})
    pkgs = tmp_path / "packages"
    pkgs.mkdir(mode=0o700)
    (pkgs / f"{h}.zip").write_bytes(next(iter(swapped.values())))  # there before the node
    monkeypatch.setenv("VOLLEY_PACKAGES_DIR", str(pkgs))
    volley.init(num_cpus=1, runtime_env={"working_dir": str(wd)})
    try:

        @volley.remote(max_retries=0)
        def who():
            import mod

            return mod.WHO

        with pytest.raises(Exception, match="does not match its hash"):
            volley.get(who.remote(), timeout=60)
        assert not (pkgs / h).exists()
    finally:
        volley.shutdown()


def test_runtime_dir_checks(tmp_path, monkeypatch):
    """Where the runtime directory is, and what is refused (as any user)."""
    monkeypatch.delenv("VOLLEY_SESSION_DIR", raising=False)
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    assert _runtime_dir.runtime_dir() == xdg / "volley"
    os.chmod(xdg, 0o755)  # not private: not used
    assert _runtime_dir.runtime_dir() == Path(f"/tmp/volley-{os.getuid()}")
    monkeypatch.setenv("VOLLEY_SESSION_DIR", str(tmp_path / "s"))
    assert _runtime_dir.runtime_dir() == tmp_path / "s"

    d = _runtime_dir.ensure_private_dir(tmp_path / "s")
    assert (d.stat().st_mode & 0o777) == 0o700
    os.chmod(d, 0o750)
    with pytest.raises(_runtime_dir.RuntimeDirError, match="has mode 750"):
        _runtime_dir.ensure_private_dir(d)
    (tmp_path / "link").symlink_to(xdg)
    with pytest.raises(_runtime_dir.RuntimeDirError, match="is a symlink"):
        _runtime_dir.ensure_private_dir(tmp_path / "link")
    (tmp_path / "file").write_text("")
    with pytest.raises(_runtime_dir.RuntimeDirError, match="is not a directory"):
        _runtime_dir.ensure_private_dir(tmp_path / "file")


def test_session_files_replace_a_symlink_instead_of_following_it(tmp_path):
    session = tmp_path / "session"
    session.mkdir(mode=0o700)
    precious = tmp_path / "precious"
    precious.write_text("keep\n")
    (session / "address").symlink_to(precious)
    env = _env(session)
    try:
        _volley(env, "start", "--head", "--port", str(_free_port()), check_rc=0)
        assert precious.read_text() == "keep\n"
        assert not (session / "address").is_symlink()
        assert (session / "address").read_text().startswith("127.0.0.1:")
        assert (session / "token").stat().st_mode & 0o777 == 0o600
    finally:
        _volley(env, "stop")


def _start_time(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[19])


def test_stop_leaves_a_reused_pid_alone_and_drops_stale_records(tmp_path):
    session = tmp_path / "session"
    env = _env(session)
    _volley(env, "start", "--head", "--port", str(_free_port()), check_rc=0)
    (head,) = [json.loads(p.read_text()) for p in (session / "nodes").glob("*.json")]
    # Two records of nodes that died long ago, whose pids now belong to an unrelated process.
    bystander = subprocess.Popen(["sleep", "60"])
    other = subprocess.Popen(["sleep", "60"])
    try:
        nodes = session / "nodes"
        (nodes / f"{bystander.pid}.json").write_text(
            json.dumps({"pid": bystander.pid, "start_time": _start_time(bystander.pid) - 1})
        )
        (nodes / f"{other.pid}.json").write_text(json.dumps({"pid": other.pid}))  # old format
        out = _volley(env, "stop", check_rc=0)
        assert "stopped 1 node(s)" in out.stdout, out.stdout
        assert "dropped 2 stale record(s)" in out.stdout, out.stdout
        assert str(bystander.pid) in out.stdout and str(other.pid) in out.stdout
        assert poll(lambda: not is_running(head["pid"]), timeout=15)
        time.sleep(0.3)
        assert bystander.poll() is None and other.poll() is None, "a bystander was signalled"
        assert list(nodes.glob("*.json")) == []
        out = _volley(env, "stop", check_rc=0)
        assert "no volley nodes" in out.stdout
    finally:
        for p in (bystander, other):
            p.send_signal(signal.SIGKILL)
            p.wait()


def test_plaintext_bind_beyond_loopback_warns(tmp_path):
    env = _env(tmp_path / "session")
    try:
        out = _volley(env, "start", "--head", "--host", "0.0.0.0", "--port", str(_free_port()))
        assert out.returncode == 0, out.stderr
        assert "warning: listening on 0.0.0.0 without TLS" in out.stderr
        assert "--tls" in out.stderr
        (log,) = (tmp_path / "session" / "logs").glob("*.log")
        assert "without TLS" in log.read_text()
    finally:
        _volley(env, "stop")
    try:
        out = _volley(env, "start", "--head", "--port", str(_free_port()), check_rc=0)
        assert "warning" not in out.stderr  # loopback only
    finally:
        _volley(env, "stop")


def test_start_head_tls_makes_a_working_tls_cluster(tmp_path, monkeypatch):
    volley.shutdown()
    session = tmp_path / "session"
    env = _env(session)
    port = _free_port()
    head = f"127.0.0.1:{port}"
    elsewhere = _env(tmp_path / "elsewhere")  # a node "on another machine": its own session
    copied = tmp_path / "copied"
    copied.mkdir()
    try:
        out = _volley(env, "start", "--head", "--tls", "--port", str(port), check_rc=0)
        assert "warning" not in out.stderr
        cert, key = session / "cluster-cert.pem", session / "cluster-key.pem"
        assert f"copy {cert} and {key}" in out.stdout and "--tls-cert" in out.stdout
        assert key.stat().st_mode & 0o777 == 0o600
        assert b"BEGIN CERTIFICATE" in cert.read_bytes()
        shutil.copy(cert, copied / "cluster-cert.pem")
        shutil.copy(key, copied / "cluster-key.pem")
        _volley(
            elsewhere, "start", "--address", head, "--host", "127.0.0.2", "--token",
            (session / "token").read_text(), "--tls-cert", str(copied / "cluster-cert.pem"),
            "--tls-key", str(copied / "cluster-key.pem"), "--resources", '{"elsewhere": 1}',
            check_rc=0,
        )  # fmt: skip
        # A node on the head's machine finds certificate and key in the session directory.
        _volley(env, "start", "--address", head, "--host", "127.0.0.3", check_rc=0)
        # A driver here finds address, token and certificate there too.
        monkeypatch.setenv("VOLLEY_SESSION_DIR", str(session))
        volley.init(address="auto")
        assert poll(lambda: len([n for n in volley.nodes() if not n["driver"]]) == 3, timeout=20)

        @volley.remote(resources={"elsewhere": 1})
        def where():
            return os.environ["VOLLEY_NODE_ADDRESS"]

        assert volley.get(where.remote(), timeout=60).startswith("127.0.0.2:")
    finally:
        volley.shutdown()
        _volley(elsewhere, "stop")
        _volley(env, "stop")
    # A restarted head reuses the certificate (the other machines' copies stay valid).
    before = cert.read_bytes()
    try:
        _volley(env, "start", "--head", "--tls", "--port", str(_free_port()), check_rc=0)
        assert cert.read_bytes() == before
    finally:
        _volley(env, "stop")


def test_tls_flag_does_not_mix_with_given_files(tmp_path):
    out = _volley(
        _env(tmp_path / "s"), "start", "--head", "--tls", "--tls-cert", "x", "--block", check_rc=2
    )
    assert "does not go with --tls-cert" in out.stderr
