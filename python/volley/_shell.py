"""Shell commands as tasks, on any node (Distributed_Python's, pdsh's and GNU parallel's job):
``volley.shell`` runs one and returns its exit status and output; ``volley.shell_many`` runs a
list with a concurrency limit and prints each line as it comes, prefixed by its command.

A command runs in a task with no retries (a command is not assumed safe to run twice), in a
process group of its own: a timeout ends the whole group (SIGTERM, then SIGKILL a second later)
and the result says so. Lines reach the caller through a ``volley.util.queue.Queue`` as the
command writes them, from whichever node runs it.

>>> r = volley.shell("echo hello")
>>> r.returncode, r.stdout
(0, 'hello\\n')
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from . import library
from ._objects import get, wait
from ._options import NodeAffinitySchedulingStrategy
from ._remote import remote
from ._session import nodes
from .exceptions import VolleyError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

#: Seconds between SIGTERM and SIGKILL when a command's time is up.
KILL_GRACE_S = 1.0

#: How often a running command checks that its caller still waits for it.
CALLER_CHECK_S = 0.5

#: The prefix of a streamed line when ``prefix=True``.
DEFAULT_PREFIX = "[{index}] "


@dataclass
class ShellResult:
    """What a command did: ``returncode`` (negative: killed by that signal, as ``subprocess``
    says; None if its worker died), ``stdout``, ``stderr`` (text, undecodable bytes replaced),
    ``node`` (the node it ran on), ``timed_out`` (its time ran out and its process group was
    killed), ``duration_s``, and ``error`` (why it could not run or finish, else None).

    >>> r = volley.shell(["sh", "-c", "exit 3"])
    >>> r.returncode, r.ok
    (3, False)
    """

    cmd: str | list[str]
    returncode: int | None
    stdout: str
    stderr: str
    node: int
    timed_out: bool = False
    duration_s: float = 0.0
    error: str | None = field(default=None)

    @property
    def ok(self) -> bool:
        """Whether the command ran and exited with status 0."""
        return self.returncode == 0 and not self.timed_out and self.error is None

    def check(self) -> ShellResult:
        """This result if ``ok``; else raises ``ShellError`` saying what went wrong.

        >>> volley.shell("true").check().returncode
        0
        """
        if not self.ok:
            raise ShellError(self)
        return self

    def why(self) -> str:
        """What went wrong, in words ("" if nothing did)."""
        if self.timed_out:
            return (
                f"timed out after {self.duration_s:.1f} s: its process group was killed "
                f"(exit status {self.returncode})"
            )
        if self.error is not None:
            return self.error
        if self.returncode is not None and self.returncode < 0:
            try:
                name = signal.Signals(-self.returncode).name
            except ValueError:
                name = f"signal {-self.returncode}"
            return f"killed by {name}"
        if self.returncode:
            return f"exited with status {self.returncode}"
        return ""


class ShellError(VolleyError, subprocess.CalledProcessError):
    """A command failed (``check=True``): ``result`` is its ``ShellResult``; ``returncode``,
    ``cmd``, ``output`` and ``stderr`` are ``subprocess.CalledProcessError``'s."""

    def __init__(self, result: ShellResult):
        self.result = result
        subprocess.CalledProcessError.__init__(
            self, result.returncode or -1, result.cmd, result.stdout, result.stderr
        )

    def __str__(self) -> str:
        tail = self.result.stderr.strip().splitlines()[-3:]
        more = ("; stderr ends: " + " | ".join(tail)) if tail else ""
        return f"command {self.result.cmd!r} on node {self.result.node} {self.result.why()}{more}"

    def __reduce__(self) -> tuple:
        return (ShellError, (self.result,))


# ---------------------------------------------------------------- in the worker


def _run_command(
    cmd: str | list[str],
    env: dict[str, str] | None,
    cwd: str | None,
    timeout: float | None,
    lifeline: Any,
    index: int,
    lines: bool,
) -> ShellResult:
    """Runs ``cmd`` here. ``lifeline`` is the caller's queue: while it is open the caller
    waits (once it is closed, the command's group is killed); with ``lines`` each batch of
    lines goes on it as ``(index, node, "stdout"|"stderr", [lines])``, and then
    ``(index, node, None, None)`` says the result follows (after the last line)."""
    import volley

    node = volley.get_runtime_context().get_node_id()
    start = time.monotonic()
    try:
        return _run_here(cmd, env, cwd, timeout, lifeline, lines, index, node, start)
    finally:
        if lines:
            try:
                lifeline.put((index, node, None, None))
            except Exception:  # the caller is gone: nobody waits for the end
                pass


def _run_here(cmd, env, cwd, timeout, lifeline, lines, index, node, start) -> ShellResult:
    stream = lifeline if lines else None
    full_env = None if env is None else {**os.environ, **env}
    try:
        p = subprocess.Popen(
            cmd,
            shell=isinstance(cmd, str),
            env=full_env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # a group of its own, to kill it whole
        )
    except OSError as e:
        what = cmd if isinstance(cmd, str) else cmd[0]
        where = f" in {cwd!r}" if cwd is not None else ""
        return ShellResult(
            cmd, 126 if isinstance(e, PermissionError) else 127, "", "", node,
            duration_s=time.monotonic() - start,
            error=f"could not start {what!r}{where} on node {node}: {e}",
        )  # fmt: skip
    deadline = None if timeout is None else start + timeout
    out: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
    partial = {"stdout": b"", "stderr": b""}
    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ, "stdout")  # type: ignore[arg-type]
    sel.register(p.stderr, selectors.EVENT_READ, "stderr")  # type: ignore[arg-type]
    exited = _exit_fd(p.pid)  # readable once the command has exited (Linux's pidfd)
    if exited is not None:
        sel.register(exited, selectors.EVENT_READ, None)
    stopped: str | None = None  # why its group was killed: "timeout" or "abandoned"
    killed_at = 0.0
    next_check = start + CALLER_CHECK_S
    pipes = 2
    try:
        while True:
            now = time.monotonic()
            if stopped is None:
                if deadline is not None and now >= deadline:
                    stopped = "timeout"
                elif now >= next_check:
                    next_check = now + CALLER_CHECK_S
                    if not _caller_waits(lifeline):
                        stopped = "abandoned"
                if stopped is not None:
                    killed_at = now
                    _signal_group(p.pid, signal.SIGTERM)
            if stopped is not None and now >= killed_at + KILL_GRACE_S:
                _signal_group(p.pid, signal.SIGKILL)
                if now >= killed_at + 2 * KILL_GRACE_S:
                    break  # what still holds the pipes is outside the group: stop reading
            if pipes == 0 and p.poll() is not None:
                break
            wakes = [now + 0.05] if pipes == 0 and exited is None else []
            if stopped is None:
                wakes += [deadline] if deadline is not None else []
                wakes.append(next_check)
            else:
                wakes.append(
                    killed_at + KILL_GRACE_S * (1 if now < killed_at + KILL_GRACE_S else 2)
                )
            wake = min(wakes) if wakes else None
            for key, _ in sel.select(None if wake is None else max(0.0, wake - now)):
                name = key.data
                if name is None:  # the command exited: stop watching for that
                    sel.unregister(key.fileobj)
                    continue
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    pipes -= 1
                    if partial[name]:
                        _emit(stream, index, node, name, [partial[name]])
                        partial[name] = b""
                    continue
                out[name].append(chunk)
                if stream is not None:
                    *whole, partial[name] = (partial[name] + chunk).split(b"\n")
                    if whole:
                        _emit(stream, index, node, name, [line + b"\n" for line in whole])
    finally:
        sel.close()
        if exited is not None:
            os.close(exited)
        p.stdout.close()  # type: ignore[union-attr]
        p.stderr.close()  # type: ignore[union-attr]
        if stopped is not None:
            _signal_group(p.pid, signal.SIGKILL)  # whatever of the group is still there
    code = p.wait()
    return ShellResult(
        cmd,
        code,
        b"".join(out["stdout"]).decode(errors="replace"),
        b"".join(out["stderr"]).decode(errors="replace"),
        node,
        timed_out=stopped == "timeout",
        duration_s=time.monotonic() - start,
        error="the caller stopped waiting (it was interrupted, or it died): the command's "
        "process group was killed"
        if stopped == "abandoned"
        else None,
    )


def _exit_fd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux >= 5.3: the loop polls instead
        return None


def _caller_waits(lifeline: Any) -> bool:
    """Whether the caller still waits for this command (its queue is open)."""
    try:
        lifeline.qsize()
    except Exception:  # ChannelClosed, or the caller's node is gone
        return False
    return True


def _emit(stream: Any, index: int, node: int, name: str, lines: list[bytes]) -> None:
    if stream is not None:
        try:
            stream.put((index, node, name, [b.decode(errors="replace") for b in lines]))
        except Exception:  # the caller stopped reading: its next check ends the command
            pass


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


_run_task = remote(max_retries=0)(_run_command)


# ---------------------------------------------------------------- in the caller


def _check_cmd(cmd: object) -> str | list[str]:
    if isinstance(cmd, str):
        if not cmd.strip():
            raise ValueError("an empty command")
        if "\0" in cmd:
            raise ValueError(f"a command cannot hold a NUL character: {cmd!r}")
        return cmd
    if isinstance(cmd, (list, tuple)):
        if not cmd:
            raise ValueError("an empty command (an empty list)")
        argv = [os.fspath(a) if isinstance(a, os.PathLike) else a for a in cmd]
        for a in argv:
            if not isinstance(a, str):
                raise TypeError(f"a command's arguments are str, not {type(a).__name__}: {a!r}")
            if "\0" in a:
                raise ValueError(f"a command's argument cannot hold a NUL character: {a!r}")
        return argv
    raise TypeError(
        f"a command is a str (run by /bin/sh) or a list of str (no shell), not {type(cmd).__name__}"
    )


def _check_env(env: object) -> dict[str, str] | None:
    if env is None:
        return None
    if not isinstance(env, dict):
        raise TypeError(f"env must be a dict of str: str, not {type(env).__name__}")
    for k, v in env.items():
        if not isinstance(k, str) or not isinstance(v, str) or not k or "=" in k or "\0" in k + v:
            raise ValueError(f"env: {k!r}: {v!r} is not a variable name and a str value")
    return dict(env)


def _check_timeout(timeout: object) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ValueError(f"timeout must be a number of seconds > 0 or None, not {timeout!r}")
    return float(timeout)


def _options(node: int | None, num_cpus: float | None) -> dict:
    if num_cpus is not None and (
        isinstance(num_cpus, bool) or not isinstance(num_cpus, (int, float)) or num_cpus < 0
    ):
        raise ValueError(f"num_cpus must be a number >= 0 or None, not {num_cpus!r}")
    # Unpinned, a command takes a CPU (so it runs where tasks run, never on a driver's or a
    # bare head's node); pinned, it goes to its node whatever that node has, as pdsh to a host.
    opts: dict[str, Any] = {
        "num_cpus": (1 if node is None else 0) if num_cpus is None else num_cpus
    }
    if node is None:
        return opts
    if isinstance(node, bool) or not isinstance(node, int):
        raise TypeError(f"node must be a node id (int) from volley.nodes(), not {node!r}")
    known = [n["node_id"] for n in nodes()]
    if node not in known:
        raise ValueError(f"node {node} is not in the cluster (its nodes: {known})")
    if library.in_cluster():  # one machine's node is the only one, and takes no affinity
        opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node)
    return opts


def shell(
    cmd: str | Sequence[str],
    *,
    node: int | None = None,
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    timeout: float | None = None,
    check: bool = False,
    num_cpus: float | None = None,
) -> ShellResult:
    """Runs ``cmd`` in a task and returns its ``ShellResult`` (``returncode``, ``stdout``,
    ``stderr``, ``node``, ``timed_out``). ``cmd`` is a string (run by ``/bin/sh -c``) or a
    list of strings (run as is, no shell). ``node`` pins it to that node (an id from
    ``volley.nodes()``); ``env`` adds variables to the worker's environment; ``cwd`` is the
    directory on that node. After ``timeout`` seconds its whole process group is killed and
    the result has ``timed_out=True``. With ``check=True`` a command that did not exit with 0
    raises ``ShellError``. A command that cannot start has status 127 (126: not executable)
    and ``error`` saying why. ``num_cpus`` is what the task takes from its node: by default
    1 when the command is not pinned (it runs where tasks run) and 0 when it is (it runs on
    its node whatever that node has); pass 0 for commands that mostly wait.

    >>> volley.shell("echo $GREETING", env={"GREETING": "hi"}).stdout
    'hi\\n'
    >>> volley.shell("sleep 10", timeout=0.5).timed_out
    True
    >>> volley.shell("exit 2", check=True)
    Traceback (most recent call last):
    ...
    volley._shell.ShellError: command 'exit 2' on node 0 exited with status 2
    """
    argv = _check_cmd(cmd)
    env_ = _check_env(env)
    t = _check_timeout(timeout)
    cwd_ = None if cwd is None else os.fspath(cwd)
    library.init_if_needed()
    opts = _options(node, num_cpus)
    # The queue is the command's lifeline: closed when this call ends, however it ends (an
    # interrupt, an exception), which tells the command that nobody waits for it any more.
    lifeline = library.Queue()
    ref = _run_task.options(**opts).remote(argv, env_, cwd_, t, lifeline, 0, False)
    try:
        r: ShellResult = get(ref)
    except BaseException:
        _abandon(lifeline, [ref])
        raise
    lifeline.shutdown()
    return r.check() if check else r


def shell_many(
    cmds: Sequence[str | Sequence[str]],
    *,
    concurrency: int | None = None,
    prefix: bool | str = True,
    on_line: Callable[[int, str, str], None] | None = None,
    stream: bool = True,
    node: int | Sequence[int] | None = None,
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    timeout: float | None = None,
    check: bool = False,
    num_cpus: float | None = None,
) -> list[ShellResult]:
    """Runs every command of ``cmds`` as ``volley.shell`` would, at most ``concurrency`` at a
    time (default: the cluster's CPUs), and returns their ``ShellResult``\\ s in the order of
    ``cmds``. Each line a command writes is printed as it comes (its stdout lines to
    ``sys.stdout``, stderr lines to ``sys.stderr``), after ``prefix``: ``True`` for
    ``"[index] "``, a format string with ``{index}``, ``{node}`` and ``{cmd}``, or False for
    none. ``on_line(index, "stdout"|"stderr", line)`` receives the lines instead of printing
    them; ``stream=False`` only collects them. ``node`` pins every command to one node, or
    (a list) each to its own. A command that fails does not stop the others; ``check=True``
    raises ``ShellError`` for the first that failed once all have finished. ``env``,
    ``cwd``, ``timeout`` and ``num_cpus`` apply to each command.

    >>> rs = volley.shell_many(["echo one", "echo two"], prefix="<{index}> ")
    <0> one
    <1> two
    >>> [r.returncode for r in rs]
    [0, 0]
    """
    if isinstance(cmds, (str, bytes)):
        raise TypeError("shell_many() takes a list of commands; for one, call volley.shell()")
    argvs = [_check_cmd(c) for c in cmds]
    env_ = _check_env(env)
    t = _check_timeout(timeout)
    cwd_ = None if cwd is None else os.fspath(cwd)
    if concurrency is not None and (
        isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1
    ):
        raise ValueError(f"concurrency must be an int >= 1 or None, not {concurrency!r}")
    if prefix is True:
        fmt = DEFAULT_PREFIX
    elif prefix is False or prefix is None:
        fmt = ""
    elif isinstance(prefix, str):
        fmt = prefix
        try:  # a bad format fails here, before any command runs
            fmt.format(index=0, node=0, cmd="")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(
                f"prefix {prefix!r} is not a format of {{index}}, {{node}} and {{cmd}}: {e!r}"
            ) from None
    else:
        raise TypeError(f"prefix must be True, False or a format string, not {prefix!r}")
    if on_line is not None and not callable(on_line):
        raise TypeError(f"on_line must be callable, not {type(on_line).__name__}")
    if isinstance(node, (list, tuple)):
        if len(node) != len(argvs):
            raise ValueError(f"node: {len(node)} node ids for {len(argvs)} commands")
        where: list[int | None] = list(node)
    else:
        where = [node] * len(argvs)  # type: ignore[list-item]
    library.init_if_needed()
    opts = {n: _options(n, num_cpus) for n in set(where)}
    tasks = {n: _run_task.options(**o) for n, o in opts.items()}
    cpus = library.total_cpus()
    limit = concurrency or max(1, int(cpus))
    if not argvs:
        return []
    each = min(o["num_cpus"] for o in opts.values())
    if each > 0 and limit >= cpus / each:
        # The scheduler alone never runs more than that at once (each takes `each` CPUs):
        # submitting every command now lets it start the next one without a round trip here.
        limit = len(argvs)

    q = library.Queue()  # the lines (when streamed), each command's end, and its lifeline

    def show(index: int, node_id: int, name: str, lines: list[str]) -> None:
        if on_line is not None:
            for line in lines:
                on_line(index, name, line)
            return
        head = fmt.format(index=index, node=node_id, cmd=_label(argvs[index])) if fmt else ""
        out = sys.stdout if name == "stdout" else sys.stderr
        out.write("".join(head + (ln if ln.endswith("\n") else ln + "\n") for ln in lines))
        out.flush()

    results: list[ShellResult | None] = [None] * len(argvs)
    running: dict[Any, int] = {}  # ref -> index
    ref_of: dict[int, Any] = {}  # index -> ref
    next_index = 0

    def finish(i: int) -> None:
        ref = ref_of.pop(i, None)
        if ref is None:  # already taken (a task that failed, then its last item came)
            return
        del running[ref]
        try:
            results[i] = get(ref)
        except Exception as e:  # its worker died: nothing more of it comes
            results[i] = ShellResult(argvs[i], None, "", "", -1, error=f"{type(e).__name__}: {e}")

    try:
        while next_index < len(argvs) or running:
            while next_index < len(argvs) and len(running) < limit:
                i = next_index
                ref = tasks[where[i]].remote(argvs[i], env_, cwd_, t, q, i, bool(stream))
                running[ref], ref_of[i] = i, ref
                next_index += 1
            if not stream:
                if next_index == len(argvs):  # all submitted: take the results in order
                    for i in sorted(ref_of):
                        finish(i)
                else:
                    done, _ = wait(list(running), num_returns=1)
                    for ref in done:
                        finish(running[ref])
                continue
            # A command's last item on the queue says its result is on the way: take it then.
            ended = _drain(q, show, block=0.05)
            for i in ended:
                finish(i)
            if not ended and running:
                # Quiet for a moment: a task that ended without its last item (its worker
                # died) is found by its ref.
                done, _ = wait(list(running), num_returns=len(running), timeout=0)
                for ref in done:
                    try:
                        get(ref, timeout=0)
                    except Exception:
                        finish(running[ref])
        if stream:
            _drain(q, show, block=0)
    except BaseException:
        _abandon(q, list(running))
        raise
    q.shutdown()
    final = [r for r in results if r is not None]
    if check:
        for r in final:
            r.check()
    return final


def _abandon(lifeline: Any, refs: list) -> None:
    """Closes the commands' lifeline and gives them the time to see it and kill their groups
    (a caller that exits at once would take the workers, and with them the kill, along)."""
    lifeline.shutdown()
    if refs:
        try:
            wait(refs, num_returns=len(refs), timeout=CALLER_CHECK_S + 2 * KILL_GRACE_S + 1)
        except BaseException:  # a second Ctrl-C: leave at once
            pass


def _drain(q: Any, show: Callable, block: float) -> list[int]:
    """Shows every line in ``q`` now (waiting up to ``block`` s for the first); returns the
    commands whose last item came."""
    from queue import Empty

    try:
        first = q.get(timeout=block) if block else q.get_nowait()
    except Empty:
        return []
    items = [first]
    while True:
        try:
            items.append(q.get_nowait())
        except Empty:
            break
    ended = []
    for index, node_id, name, lines in items:
        if name is None:
            ended.append(index)
        else:
            show(index, node_id, name, lines)
    return ended


def _label(cmd: str | list[str]) -> str:
    return cmd if isinstance(cmd, str) else " ".join(cmd)
