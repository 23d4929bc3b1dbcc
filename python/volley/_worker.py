"""The worker process: ``python -m volley._worker``, started and supervised by its node.

It connects to the node named in its environment, then loops in Rust: take a task (with the GIL
released), call ``execute`` below, report the result. Output written to ``sys.stdout`` and
``sys.stderr`` goes to the driver, each line prefixed with the task's name and this pid.
"""

from __future__ import annotations

import contextvars
import io
import os
import pickle
import signal
import sys

TYPE_CHECKING = False  # without importing typing, a slow import
if TYPE_CHECKING:
    from typing import Any

_pid = os.getpid()
_current_name: str | None = None
_default_name = "worker"  # an actor's process uses its class's name
_functions: dict[bytes, object] = {}
# The bytes of functions whose first load failed, for the next task of the same function.
_unloaded: dict[bytes, bytes] = {}


class _PrefixedStream(io.TextIOBase):
    """Writes whole lines to a file descriptor, each prefixed with ``(task pid=N)``."""

    def __init__(self, fd: int):
        self._fd = fd
        self._buf = ""

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:
        return "utf-8"

    def write(self, s: str) -> int:
        self._buf += s
        if "\n" in self._buf:
            *lines, self._buf = self._buf.split("\n")
            self._emit(lines)
        return len(s)

    def flush(self) -> None:
        if self._buf:
            lines, self._buf = [self._buf], ""
            self._emit(lines)

    def _emit(self, lines: list[str]) -> None:
        prefix = f"({_current_name or _default_name} pid={_pid}) "
        data = "".join(f"{prefix}{line}\n" for line in lines).encode("utf-8", "replace")
        try:
            os.write(self._fd, data)
        except OSError:
            pass


_stdout = _PrefixedStream(1)
_stderr = _PrefixedStream(2)


def _format_exception(e: BaseException) -> str:
    import traceback

    tb = e.__traceback__
    # Drop this module's own frame: the user's code starts below it.
    if tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(e), e, tb))


def _pickled_exception(e: BaseException) -> bytes | None:
    import cloudpickle

    try:
        data = cloudpickle.dumps(e, protocol=5)
        pickle.loads(data)  # make sure the driver will be able to rebuild it
        return data
    except Exception:
        return None


def _load_function(name, fid, fbytes):
    """The function (or actor class) ``fid``: ``(fn, None)`` or ``(None, error)``."""
    fn = _functions.get(fid)
    if fn is not None:
        return fn, None
    if fbytes is None:
        # The node sends a function's bytes with its first task only; kept when that first
        # load failed (a cancel's interrupt while importing), so that the next task tries again.
        fbytes = _unloaded.get(fid)
        if fbytes is None:
            msg = f"the function of task '{name}' was never sent"
            return None, Failure(SERIALIZATION, msg, "", None)
    try:
        fn = pickle.loads(fbytes)
    except BaseException as e:
        _unloaded[fid] = fbytes
        msg = f"could not load the function of task '{name}': {type(e).__name__}: {e}"
        return None, Failure(SERIALIZATION, msg, _format_exception(e), None)
    _unloaded.pop(fid, None)
    _functions[fid] = fn
    return fn, None


def _load_args(name, data, buffers, deps):
    """``(args, kwargs, None)`` or ``(None, None, error)``."""
    try:
        if data == _EMPTY_ARGS:
            return (), {}, None
        if deps:
            args, kwargs = loads(data, buffers, [loads(d, b) for d, b in deps])
        else:
            args, kwargs = pickle.loads(data, buffers=buffers)
        return args, kwargs, None
    except BaseException as e:
        msg = f"could not deserialize the arguments of task '{name}': {type(e).__name__}: {e}"
        return None, None, Failure(SERIALIZATION, msg, _format_exception(e), None)


def _raised(e: BaseException):
    return Failure(
        TASK_EXCEPTION,
        f"{type(e).__name__}: {e}",
        _format_exception(e),
        _pickled_exception(e),
    )


def _flush_output() -> None:
    if _stdout._buf:
        _stdout.flush()
    if _stderr._buf:
        _stderr.flush()


_GeneratorType = type(x for x in ())


def _results(name, result, num_returns):
    """Serializes a call's result as its declared returns."""
    if num_returns == 1 and type(result) is not _GeneratorType:
        values = [result]
    elif type(result) is _GeneratorType:  # with num_returns=N it yields N values, as Ray's do
        try:
            values = list(result)
        except BaseException as e:
            return _raised(e)
        if len(values) != num_returns:
            msg = (
                f"ValueError: task '{name}' has num_returns={num_returns} but its generator "
                f"yielded {len(values)} values"
            )
            return Failure(TASK_EXCEPTION, msg, "", _pickled_exception(ValueError(msg)))
    else:
        try:
            values = list(result)
        except TypeError:
            values = None
        if values is None or len(values) != num_returns:
            msg = (
                f"ValueError: task '{name}' has num_returns={num_returns} but returned "
                f"{type(result).__name__} that is not a sequence of {num_returns} values"
            )
            return Failure(TASK_EXCEPTION, msg, "", _pickled_exception(ValueError(msg)))
    out = []
    for v in values:
        try:
            out.append(dumps(v))
        except Exception as e:
            msg = (
                f"could not serialize the result of task '{name}' "
                f"(a {type(v).__qualname__}): {type(e).__name__}: {e}"
            )
            return Failure(SERIALIZATION, msg, _format_exception(e), None)
    return out


def _yield_item(name, task_id, index, item):
    try:
        data, buffers, contained = dumps(item)
    except Exception as e:
        raise _ItemError(
            f"could not serialize item {index - 2} yielded by task '{name}' "
            f"(a {type(item).__qualname__}): {type(e).__name__}: {e}"
        ) from e
    _core.stream_yield(task_id, index, data, buffers, contained)


class _ItemError(Exception):
    pass


def _stream(name, task_id, gen):
    """Sends each item of a generator as it comes; the answer is the number of items."""
    if not hasattr(gen, "__next__"):
        msg = f"TypeError: task '{name}' is streaming but returned a {type(gen).__name__}"
        return Failure(TASK_EXCEPTION, msg, "", _pickled_exception(TypeError(msg)))
    n = 0
    try:
        for item in gen:
            _yield_item(name, task_id, n + 2, item)
            n += 1
    except _ItemError as e:
        return Failure(SERIALIZATION, str(e), _format_exception(e), None)
    except BaseException as e:
        return _raised(e)
    return [dumps(n)]


def _call(name, fn, args, kwargs, num_returns, streaming, task_id):
    """Calls ``fn`` and serializes what it returns (or yields, or raises)."""
    global _current_name
    _current_name = name
    current_task.set(task_id)
    try:
        result = fn(*args, **kwargs)
        if streaming:
            return _stream(name, task_id, result)
    except BaseException as e:
        return _raised(e)
    finally:
        _flush_output()
        _current_name = None
    return _results(name, result, num_returns)


# The task running in this thread (or asyncio task), for get_runtime_context(): its id (the
# engine's int). A context variable: a threaded or async actor runs several calls at once.
current_task: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "volley_task", default=None
)
actor_id: int | None = None  # this process's actor (the id of its creation task), if it is one


def _set_actor_id(task_id: int) -> None:
    global actor_id
    actor_id = task_id


_ORIGINAL_CUDA = os.environ.get("CUDA_VISIBLE_DEVICES")
# The GPUs the node gave the running task (or this actor): device numbers (or UUIDs).
_gpu_ids: list[int | str] = []


def _set_gpus(gpus) -> None:
    """``CUDA_VISIBLE_DEVICES`` names the GPUs the node gave this task (or actor), so CUDA
    libraries see those and no others; a task without GPUs gets the worker's original value.
    The node's GPU indices are places in the node's own ``CUDA_VISIBLE_DEVICES`` when it has
    one (see ``_gpus.device_names``)."""
    global _gpu_ids
    if gpus:
        from ._gpus import device_names

        names = device_names(gpus, _ORIGINAL_CUDA)
        _gpu_ids = [int(n) if n.isdigit() else n for n in names]
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(names)
        return
    _gpu_ids = []
    if _ORIGINAL_CUDA is None:
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = _ORIGINAL_CUDA


# Numeric libraries (OpenBLAS, MKL, OpenMP, numexpr) start one thread per core by default: in
# every worker, so N workers on N cores would run N x N threads that fight for the cores. As in
# Ray and Dask, a worker's libraries get as many threads as its task (or actor) holds CPUs, at
# least one. Not if the node's environment sets any of these itself: then that is the user's
# choice, left alone.
_THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
_manage_threads = not any(v in os.environ for v in _THREAD_VARS)
_threads = 1
if _manage_threads:
    os.environ.update(dict.fromkeys(_THREAD_VARS, "1"))  # read as each library loads


def _set_threads(cpu_milli: int) -> None:
    """The thread count for the task about to run: its whole CPUs, at least 1. Libraries that
    load later read the variables; those already loaded are limited through ``threadpoolctl``
    when it is installed."""
    global _threads
    n = max(1, cpu_milli // 1000)
    if not _manage_threads or n == _threads:
        return
    _threads = n
    os.environ.update(dict.fromkeys(_THREAD_VARS, str(n)))
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(n)


_runtime_env = None  # the module, imported with the first task that has a runtime_env


def _apply_env(env) -> None:
    global _runtime_env
    if env is None and _runtime_env is None:
        return
    if _runtime_env is None:
        from . import _runtime_env as module

        _runtime_env = module
    _runtime_env.apply(env)


def execute(*call):
    """Runs one task (see ``_execute``). In a process that a task forked and that returns here
    instead of exiting, ends that process: the loop it would return to is its parent's, and so
    is the connection the result would go back on."""
    ans = None
    try:
        ans = _execute(*call)
        return ans
    finally:
        if os.getpid() != _pid:
            _exit_forked_child(ans)


def _exit_forked_child(ans) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(0 if ans is not None and not isinstance(ans, Failure) else 1)


def _execute(
    name: str,
    fid: bytes,
    fbytes: bytes | None,
    data: Any,
    buffers: list,
    deps: list,
    num_returns: int,
    task_id: int,
    actor: str | None,
    method: str | None,
    max_concurrency: int,
    is_async: bool,
    streaming: bool,
    gpus: list[int],
    cpu_milli: int,
    env: str | None,
):
    """Runs one task; returns ``[(data, buffers, contained), ...]`` (one per return) or a
    ``_core.Failure(kind, message, traceback, pickled_exception)``, or None when the call goes on
    elsewhere (a threaded or async actor) and reports through ``_core.complete_task``.

    The engine calls it with these positional arguments (``PyRunner::call`` in
    crates/volley-py): ``fbytes`` is the pickled function, with a function's first task only;
    ``data`` and ``buffers`` the pickled ``(args, kwargs)``; ``deps`` ``(data, buffers)`` of each
    dependency; ``actor`` None for a plain task, ``"create"`` (``__init__``, with
    ``max_concurrency`` and ``is_async``) or ``"call"`` (``method``); ``gpus`` and ``cpu_milli``
    what the node gave it; ``env`` the runtime_env's JSON."""
    if actor != "call":
        # An actor's calls run with what its creation was given.
        _set_gpus(gpus)
        _set_threads(cpu_milli)
        try:
            _apply_env(env)
        except BaseException as e:
            msg = f"task '{name}': its runtime_env could not be set up: {type(e).__name__}: {e}"
            return Failure(TASK_EXCEPTION, msg, _format_exception(e), _pickled_exception(e))
    if actor == "call":
        return _actor_call(name, method, data, buffers, deps, num_returns, task_id, streaming)
    if actor == "create":
        _set_actor_id(task_id)
        return _actor_create(name, fid, fbytes, data, buffers, deps, max_concurrency, is_async)
    fn, err = _load_function(name, fid, fbytes)
    if err is not None:
        return err
    args, kwargs, err = _load_args(name, data, buffers, deps)
    if err is not None:
        return err
    return _call(name, fn, args, kwargs, num_returns, streaming, task_id)


# ---------------------------------------------------------------------------------------- actors

_actor = None
_actor_mode = None  # "sync", "threaded" or "async"
_executor = None
_loop = None
_semaphore = None
_running: set = set()


def _actor_create(name, fid, fbytes, data, buffers, deps, max_concurrency, is_async):
    """Runs the class's ``__init__`` in this (dedicated) process."""
    global _actor, _actor_mode, _executor, _loop, _default_name
    cls, err = _load_function(name, fid, fbytes)
    if err is not None:
        return err
    args, kwargs, err = _load_args(name, data, buffers, deps)
    if err is not None:
        return err
    _default_name = name
    if is_async:
        import asyncio
        import threading

        _loop = asyncio.new_event_loop()
        threading.Thread(target=_loop.run_forever, name="volley-actor-loop", daemon=True).start()
        _actor_mode = "async"
        _set_semaphore(max_concurrency)
    elif max_concurrency > 1:
        from concurrent.futures import ThreadPoolExecutor

        _executor = ThreadPoolExecutor(max_concurrency, thread_name_prefix="volley-actor")
        _actor_mode = "threaded"
    else:
        _actor_mode = "sync"
    try:
        _actor = cls(*args, **kwargs)
    except BaseException as e:
        _flush_output()
        return _raised(e)
    _flush_output()
    return [dumps(None)]


def _set_semaphore(n):
    import asyncio

    async def make():
        global _semaphore
        _semaphore = asyncio.Semaphore(n)

    asyncio.run_coroutine_threadsafe(make(), _loop).result()


def _actor_call(name, method_name, data, buffers, deps, num_returns, task_id, streaming):
    method = getattr(_actor, method_name, None)
    if method is None:
        e = AttributeError(f"'{type(_actor).__name__}' object has no attribute '{method_name}'")
        return Failure(TASK_EXCEPTION, f"AttributeError: {e}", "", _pickled_exception(e))
    args, kwargs, err = _load_args(name, data, buffers, deps)
    if err is not None:
        return err
    if _actor_mode == "sync":
        return _call(name, method, args, kwargs, num_returns, streaming, task_id)
    if _actor_mode == "threaded":
        _executor.submit(_run_deferred, name, method, args, kwargs, num_returns, streaming, task_id)
        return None
    _loop.call_soon_threadsafe(
        _start_coroutine, name, method, args, kwargs, num_returns, streaming, task_id
    )
    return None


def _complete(task_id, name, ans) -> None:
    try:
        _core.complete_task(task_id, name, ans)
    except Exception as e:  # the node is gone: nothing to report to
        print(f"volley: could not report the result of '{name}': {e}", file=sys.stderr)


def _run_deferred(name, method, args, kwargs, num_returns, streaming, task_id) -> None:
    _complete(task_id, name, _call(name, method, args, kwargs, num_returns, streaming, task_id))


def _start_coroutine(*call) -> None:
    t = _loop.create_task(_run_async(*call))
    _running.add(t)
    t.add_done_callback(_running.discard)


async def _run_async(name, method, args, kwargs, num_returns, streaming, task_id) -> None:
    import inspect

    async with _semaphore:
        current_task.set(task_id)
        try:
            result = method(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
            if streaming and hasattr(result, "__anext__"):
                ans = await _stream_async(name, task_id, result)
            elif streaming:
                ans = _stream(name, task_id, result)
            else:
                ans = None
        except BaseException as e:
            ans = _raised(e)
        finally:
            _flush_output()
        if ans is None:
            ans = _results(name, result, num_returns)
    _complete(task_id, name, ans)


async def _stream_async(name, task_id, agen):
    n = 0
    try:
        async for item in agen:
            _yield_item(name, task_id, n + 2, item)
            n += 1
    except _ItemError as e:
        return Failure(SERIALIZATION, str(e), _format_exception(e), None)
    except BaseException as e:
        return _raised(e)
    return [dumps(n)]


def _late_imports() -> None:
    """Imports that need the package (and the driver's sys.path) in place."""
    global SERIALIZATION, TASK_EXCEPTION, dumps, loads, _EMPTY_ARGS, _core, Failure
    from . import _core
    from ._core import Failure
    from ._serialization import EMPTY_ARGS as _EMPTY_ARGS
    from ._serialization import SERIALIZATION, TASK_EXCEPTION, dumps, loads


def setup() -> None:
    """What every worker does before it connects, the same in each: run once in the worker
    template (``_template.py``) before it forks workers, or at the start of an exec'd worker."""
    # Cancelling a task interrupts it with SIGINT; make sure that raises KeyboardInterrupt even
    # if this process inherited SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # Run as `python -m volley._worker`, this module is __main__: `volley._worker` names it too,
    # so that code importing it (get_gpu_ids) sees this process's state, not a fresh copy.
    sys.modules.setdefault("volley._worker", sys.modules[__name__])
    paths = [p for p in os.environ.get("VOLLEY_SYS_PATH", "").split(os.pathsep) if p]
    sys.path[:] = paths + [p for p in sys.path if p not in paths]
    from . import _session  # noqa: F401  (its fork handling)

    _late_imports()


def _hang_once(path: str) -> None:
    """Tests only (``VOLLEY_TEST_WORKER_HANG_ONCE``): the first worker to make the file ``path``
    never connects, as a worker stuck in its start would; the node's start deadline
    (``VOLLEY_WORKER_START_TIMEOUT``) must end it and give its work to another."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    while True:
        signal.pause()


def run(worker_id: int) -> None:
    """Connects to the node as worker ``worker_id`` and runs its tasks until the node lets go."""
    global _pid
    _pid = os.getpid()  # in a worker forked from the template, the template's until now
    from . import _session

    hang = os.environ.get("VOLLEY_TEST_WORKER_HANG_ONCE")
    if hang:
        _hang_once(hang)
    try:
        _core.connect_worker(
            os.environ["VOLLEY_NODE_SOCKET"],
            worker_id,
            os.environ["VOLLEY_SESSION_TOKEN"],
        )
    except KeyError as e:
        sys.exit(f"volley._worker is started by volley itself (missing {e.args[0]})")
    except RuntimeError:
        # The node went away before this worker connected (shutdown while starting).
        sys.exit(1)
    _session.mark_worker_connected()
    sys.stdout = _stdout
    sys.stderr = _stderr
    try:
        _core.worker_main(execute)
    except KeyboardInterrupt:
        pass
    if _actor_mode in ("threaded", "async"):
        # Calls still running on other threads must not hold the process up.
        _flush_output()
        os._exit(0)
    # The node let go (shutdown, or this worker retired): the user's atexit handlers run, the
    # output is flushed, and the process leaves without the interpreter's teardown, which
    # touches every object: a forked worker would copy the template's pages (tens of MB each,
    # a thousand actors at once) only to free them, and take seconds of CPU doing so.
    # As the interpreter's exit would: non-daemon threads a task started are joined first (the
    # node ends a worker that does not leave within its grace), then the atexit handlers.
    threading = sys.modules.get("threading")
    if threading is not None:
        threading._shutdown()  # type: ignore[attr-defined]
    import atexit

    atexit._run_exitfuncs()
    _flush_output()
    for f in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if f is not None:
                f.flush()
        except Exception:
            pass  # a closed or broken stream: nothing left to write
    os._exit(0)


def main() -> None:
    setup()
    try:
        worker_id = int(os.environ["VOLLEY_WORKER_ID"])
    except KeyError as e:
        sys.exit(f"volley._worker is started by volley itself (missing {e.args[0]})")
    run(worker_id)


if __name__ == "__main__":
    main()
