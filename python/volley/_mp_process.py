"""``multiprocessing.Process`` on volley: each process is a volley actor of its own.

``volley.multiprocessing.Process`` is a subclass of the standard library's
``multiprocessing.process.BaseProcess``, so names, ``daemon``, ``authkey``, the errors of
``start``/``join``/``close`` and ``current_process()`` inside the child are the standard
library's own code. What differs is how the child is started (the "Popen" the standard library
asks its context for): here it is a volley actor with no CPU reserved (a ``multiprocessing``
process holds none either), started by the node's template in a few milliseconds, on this
node or, with ``options={"scheduling_strategy": ...}``, any node of the cluster. The actor
runs the standard library's ``_bootstrap`` (``run()``, the exit code of ``sys.exit``, the
traceback printed as ``Process NAME:``, non-daemon threads waited for) and then ends its
process with that exit code, so ``pid`` is the real process and ``exitcode`` is what the node
saw when it reaped it: 0, 1, the ``sys.exit`` code, or ``-N`` for signal N.

Why an actor: a volley task shares its worker with other work and a forked child of a worker
cannot use volley (docs/processes.md); an actor's process is its own and has volley working in
it, so the child uses queues, locks, pipes and starts processes of its own.
"""

from __future__ import annotations

import atexit
import io
import logging
import multiprocessing.process as _mpp
import os
import pickle
import re
import signal
import sys
import threading
import types
from typing import Any, Callable, Iterable, Mapping

from . import ObjectRef, actor_state, exceptions, get, get_runtime_context, kill, remote, wait
from .library import init_if_needed, kv_get, mode

__all__ = [
    "Process",
    "ProcessError",
    "active_children",
    "current_process",
    "parent_process",
]

from multiprocessing import ProcessError  # noqa: E402  (the standard library's class)

#: The actor class's name; the "volley" logger's filter knows a Process's end by it.
_ACTOR_NAME = "VolleyMultiprocessingProcess"

_PIDSPACE: tuple[str, int] | None = None

#: The start method set in this process (``set_start_method``), or in a child the one its
#: parent started it with; None: none set (volley._mp_context reads and sets it).
start_method: list[str | None] = [None]


def _pid_space() -> tuple[str, int]:
    """(boot id, pid namespace inode): two processes with the same see each other's pids."""
    global _PIDSPACE
    if _PIDSPACE is None:
        try:
            with open("/proc/sys/kernel/random/boot_id") as f:
                boot = f.read().strip()
        except OSError:
            boot = ""
        try:
            ns = os.stat("/proc/self/ns/pid").st_ino
        except OSError:
            ns = 0
        _PIDSPACE = (boot, ns)
    return _PIDSPACE


def _pidfd(pid: int) -> int | None:
    """A pidfd of ``pid`` (readable once the process ended), or None where there is none."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


# ---------------------------------------------------------------------- the child's side


def _parent_sentinel(parent: tuple[int, tuple[str, int]]) -> int:
    """An fd that becomes readable when the parent process ends (``parent_process()``'s
    sentinel): a pidfd where the parent's pids are ours to see; else a pipe whose other end
    the thread holding the parent's life lease closes when that lease is released."""
    pid, space = parent
    if space == _pid_space():
        fd = _pidfd(pid)
        if fd is not None:
            return fd
        r, w = os.pipe()  # the parent is gone already: readable at once
        os.close(w)
        return r
    r, w = os.pipe()
    lease = _remote_parent_leases.get(pid)
    if lease is not None:

        def watch() -> None:
            try:
                lease.acquire()  # granted when the parent's process died (its lease ended)
                lease.release()  # for the parent's other children
            except Exception:
                pass  # the session ended: so did the parent's part in it
            os.close(w)

        threading.Thread(target=watch, name="volley-mp-parent", daemon=True).start()
    return r


# pid -> the life lease of a parent on another machine (set by the runner before bootstrap).
_remote_parent_leases: dict[int, Any] = {}


class VolleyMultiprocessingProcess:
    """The actor that is one ``Process``: ``where`` tells the parent its pid, ``bootstrap``
    runs the process and ends it."""

    def where(self) -> tuple[int, int, tuple[str, int]]:
        return os.getpid(), get_runtime_context().get_node_id(), _pid_space()

    def bootstrap(
        self,
        pickled: bytes,
        refs: list,
        parent: tuple[int, tuple[str, int]],
        lease: Any,
        method: str | None,
    ) -> None:
        start_method[0] = method  # as a spawn child learns its parent's
        if method is not None:  # and the standard library's multiprocessing says the same
            _mpp_context().set_start_method(method, force=True)
        process = pickle.loads(pickled)
        if lease is not None:
            _remote_parent_leases[parent[0]] = lease
        # The standard library's start-up of a child (current_process, parent_process,
        # counters, stdin, run(), exit code, traceback, non-daemon threads, flushed stdio).
        code = process._bootstrap(parent_sentinel=_parent_sentinel(parent))
        _flush()
        os._exit(code)


def _mpp_context() -> Any:
    import multiprocessing

    return multiprocessing


def _flush() -> None:
    """Before the process ends: a round trip to the node, which first writes what this
    process sent without waiting for an answer (an unbounded queue's ``put`` is batched), so
    that nothing the process put is lost (``multiprocessing`` joins its queues' feeder
    threads at exit for the same reason)."""
    try:
        kv_get("volley.multiprocessing/flush", namespace="volley.multiprocessing")
    except Exception:
        pass  # the node is gone: there is nothing to flush to


_runner_class: Any = None


def _runner() -> Any:
    global _runner_class
    if _runner_class is None:
        _runner_class = remote(VolleyMultiprocessingProcess)
    return _runner_class


@remote(num_cpus=0)
def _send_signal(pid: int, sig: int, space: tuple[str, int]) -> bool:
    """On the child's node (another machine): sends ``sig`` to ``pid``."""
    if space != _pid_space():
        return False
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


# ---------------------------------------------------------------------- the parent's side


class _ByValue(Exception):
    pass


class _ByReference(pickle.Pickler):
    """The standard library's pickler, as ``multiprocessing`` pickles a ``Process`` for
    ``spawn`` (functions and classes by reference: the child imports them, and tracebacks
    name their files); it gives up on what only this process has (``__main__``'s functions,
    lambdas, local classes), which cloudpickle then sends by value. Both note the
    ``ObjectRef``s inside, which travel beside the pickle so that volley keeps their objects
    for the child."""

    def __init__(self, file: io.BytesIO, refs: list) -> None:
        super().__init__(file, protocol=5)
        self.refs = refs

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is ObjectRef:
            self.refs.append(obj)
        elif isinstance(obj, (type, types.FunctionType)) and getattr(obj, "__module__", None) in (
            "__main__",
            "__mp_main__",
        ):
            raise _ByValue
        return NotImplemented


def _by_value_pickler(file: io.BytesIO, refs: list) -> pickle.Pickler:
    import cloudpickle

    class ByValue(cloudpickle.Pickler):
        def reducer_override(self, obj: Any) -> Any:
            if type(obj) is ObjectRef:
                refs.append(obj)
            return super().reducer_override(obj)

    return ByValue(file, protocol=5)


def _pickle_process(process: Process) -> tuple[bytes, list]:
    """The pickled ``process`` and the refs inside it."""
    buf, refs = io.BytesIO(), []
    try:
        _ByReference(buf, refs).dump(process)
        return buf.getvalue(), refs
    except Exception:
        buf, refs = io.BytesIO(), []
        try:
            _by_value_pickler(buf, refs).dump(process)
            return buf.getvalue(), refs
        except Exception as e:
            raise exceptions.SerializationError(
                f"could not pickle {process!r} to start it: {type(e).__name__}: {e}"
            ) from e


_DIED = re.compile(r"killed by signal (\d+)|exit code (-?\d+)")


def _exitcode_of(error: BaseException) -> int:
    """The exit code the node reported for the actor's process: ``-N`` for signal N, else its
    exit status; a process that the node could not report on (its node died, ``volley.kill``)
    counts as killed with SIGKILL."""
    m = _DIED.search(str(error))
    if m is None:
        return -signal.SIGKILL
    if m.group(1) is not None:
        return -int(m.group(1))
    return int(m.group(2))


class _QuietEnds(logging.Filter):
    """Keeps the "actor died" lines of finished Processes off the "volley" logger (a
    ``multiprocessing`` child's end prints nothing)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return f"'{_ACTOR_NAME}'" not in record.getMessage()


# Installed where volley.multiprocessing is imported: the driver's "volley" logger shows the
# node's lines, those of the Processes its tasks start included.
logging.getLogger("volley").addFilter(_QuietEnds())

#: How often a ``start()`` that waits for its child to run says so.
START_NOTICE_S = 10.0
_log = logging.getLogger("volley.multiprocessing")

_lease_lock = threading.Lock()
_my_lease: Any = None
_atexit_registered = False


def _life_lease() -> Any:
    """A volley Lock this process holds while it lives: a child on another machine waits on
    it to learn that its parent died (``parent_process().is_alive()``)."""
    global _my_lease
    with _lease_lock:
        if _my_lease is None:
            from .sync import Lock

            lease = Lock()
            lease.acquire()
            _my_lease = lease
        return _my_lease


def _exit_children() -> None:
    """At exit, before volley stops: terminates daemonic children, joins the others (as
    ``multiprocessing`` does at its exit)."""
    for p in list(_mpp._children):
        if isinstance(p._popen, _Popen) and p.daemon and p._popen.poll() is None:
            p._popen.terminate()
    for p in list(_mpp._children):
        if isinstance(p._popen, _Popen):
            p.join()


class _Popen:
    """The standard library's Popen interface over a volley actor: ``pid``, ``sentinel``,
    ``poll``, ``wait``, ``terminate``, ``kill``, ``close``."""

    method = "volley"

    def __init__(self, process: Process) -> None:
        global _atexit_registered
        init_if_needed()
        if not _atexit_registered:
            atexit.register(_exit_children)  # after volley's own: runs before it stops
            _atexit_registered = True
        self.returncode: int | None = None
        self._closed = False
        options = dict(getattr(process, "_volley_options", None) or {})
        options.setdefault("num_cpus", 0)
        pickled, refs = _pickle_process(process)
        method = process._start_method or start_method[0]
        self._actor = _runner().options(**options).remote()
        where = self._actor.where.remote()
        parent = (os.getpid(), _pid_space())
        try:
            self._wait_started(process, where, options)
            self.pid, self._node, self._space = get(where)
            here = self._space == _pid_space()
            # Opened while the child waits for its bootstrap: it is that process, not a
            # later one with its pid.
            self._pidfd = _pidfd(self.pid) if here else None
            lease = None if here else _life_lease()
            self._done = self._actor.bootstrap.remote(pickled, refs, parent, lease, method)
        except BaseException:
            kill(self._actor)
            if getattr(self, "_pidfd", None) is not None:
                os.close(self._pidfd)
            raise
        self._pipe_w: int | None = None
        if self._pidfd is not None:
            self.sentinel = self._pidfd
        else:
            # Another machine: a pipe whose write end closes when the actor's call ends.
            r, self._pipe_w = os.pipe()
            self.sentinel = r
            self._done.future().add_done_callback(lambda _f: self._close_pipe_w())

    def _wait_started(self, process: Process, where: Any, options: dict) -> None:
        """Waits for the child to run, saying every ``START_NOTICE_S`` seconds what it waits
        for (a child that needs resources no node has free now waits for them)."""
        waited = 0.0
        while not wait([where], timeout=START_NOTICE_S)[0]:
            waited += START_NOTICE_S
            state = actor_state(self._actor) or {}
            _log.warning(
                "volley.multiprocessing: %r has not started after %.0f s: its actor is %s, "
                "waiting for a node with room for its options %s",
                process,
                waited,
                state.get("state", "unknown"),
                options,
            )

    def _close_pipe_w(self) -> None:
        # From the ref's callback thread or close(): once, as a closed fd's number is reused.
        with _lease_lock:
            w, self._pipe_w = self._pipe_w, None
        if w is not None:
            os.close(w)

    def _collect(self) -> None:
        try:
            get(self._done)
            code = 0  # bootstrap ends its process; a return would be a bug: say "ended"
        except exceptions.ActorDiedError as e:
            code = _exitcode_of(e)
        except exceptions.TaskError as e:  # the Process could not be unpickled there
            sys.stderr.write(f"Process could not start: {e}\n")
            kill(self._actor)
            code = 1
        self.returncode = code

    def _ended(self, timeout: float | None) -> bool:
        """Whether the child's process ended (waiting up to ``timeout`` s). Once volley has
        stopped in this process, its actors are gone with it (killed): -SIGKILL."""
        if mode() is not None:
            try:
                return wait([self._done], timeout=timeout)[0] != []
            except exceptions.ObjectLostError:
                pass  # a later session's: this one's actors were killed at its end
        self.returncode = -signal.SIGKILL
        return False

    def poll(self, flag: int = os.WNOHANG) -> int | None:
        if self.returncode is None:
            if flag == 0:
                return self.wait()
            if self._ended(0):
                self._collect()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        if self.returncode is None:
            if timeout is not None and timeout < 0:
                timeout = 0
            if self._ended(timeout):
                self._collect()
        return self.returncode

    def _signal(self, sig: int) -> None:
        if self.returncode is not None or self._closed:
            return
        if self._pidfd is not None:
            try:
                signal.pidfd_send_signal(self._pidfd, sig)
            except ProcessLookupError:
                pass
            return
        from . import NodeAffinitySchedulingStrategy, nodes

        sender = _send_signal
        if len(nodes()) > 1:  # (one node is the only place a task can run)
            on = NodeAffinitySchedulingStrategy(self._node, soft=False)
            sender = sender.options(scheduling_strategy=on)
        get(sender.remote(self.pid, sig, self._space))

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._close_pipe_w()
        if self._pidfd is None:
            os.close(self.sentinel)
        else:
            os.close(self._pidfd)
            self._pidfd = None


class Process(_mpp.BaseProcess):
    """``multiprocessing.Process`` whose child is a volley actor (on any node of a cluster).

    ``Process(group=None, target=None, name=None, args=(), kwargs={}, *, daemon=None,
    options=None)``: the standard library's arguments, and ``options``, the volley actor
    options of the child (``scheduling_strategy`` to pick its node, ``num_cpus`` or
    ``resources`` to reserve some; none by default). Subclasses override ``run()`` as with
    ``multiprocessing``.

    >>> from volley.multiprocessing import Process, Queue
    >>> def greet(q, who):
    ...     q.put(f"hello {who}")
    >>> q = Queue()
    >>> p = Process(target=greet, args=(q, "world"))
    >>> p.start()
    >>> q.get(timeout=30)
    'hello world'
    >>> p.join(30); p.exitcode
    0
    """

    _start_method = None

    def __init__(
        self,
        group: None = None,
        target: Callable[..., object] | None = None,
        name: str | None = None,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        daemon: bool | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(group, target, name, args, kwargs or {}, daemon=daemon)
        if options is not None and not isinstance(options, Mapping):
            raise TypeError(f"options must be a dict of actor options, not {options!r}")
        self._volley_options = dict(options) if options else None

    @staticmethod
    def _Popen(process_obj: Process) -> _Popen:  # noqa: N802  (the standard library's name)
        return _Popen(process_obj)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_popen"] = None
        state.pop("_sentinel", None)
        config = dict(state["_config"])
        if "authkey" in config:
            config["authkey"] = bytes(config["authkey"])  # AuthenticationString refuses
        state["_config"] = config
        return state

    def __setstate__(self, state: dict) -> None:
        config = state["_config"]
        if "authkey" in config:
            config["authkey"] = _mpp.AuthenticationString(config["authkey"])
        self.__dict__.update(state)


class ForkProcess(Process):
    """``get_context("fork").Process``: a volley ``Process`` (the child is not a fork)."""

    _start_method = "fork"


class SpawnProcess(Process):
    """``get_context("spawn").Process``: a volley ``Process``."""

    _start_method = "spawn"


class ForkServerProcess(Process):
    """``get_context("forkserver").Process``: a volley ``Process``."""

    _start_method = "forkserver"


def current_process() -> _mpp.BaseProcess:
    """The ``Process`` object of the process calling it (``multiprocessing.current_process``):
    the child's own ``Process`` inside one, ``MainProcess`` elsewhere.

    >>> from volley.multiprocessing import current_process
    >>> current_process().name
    'MainProcess'
    """
    return _mpp.current_process()


def parent_process() -> _mpp.BaseProcess | None:
    """The parent of this process when it is a ``Process`` (its ``pid``, ``name``,
    ``is_alive()``, ``join()``, ``sentinel``), else None.

    >>> from volley.multiprocessing import parent_process
    >>> parent_process() is None
    True
    """
    return _mpp.parent_process()


def active_children() -> list[_mpp.BaseProcess]:
    """The children of this process that are still running (finished ones are reaped).

    >>> from volley.multiprocessing import active_children
    >>> active_children()
    []
    """
    return _mpp.active_children()
