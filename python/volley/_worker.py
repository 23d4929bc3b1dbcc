"""The worker process: ``python -m volley._worker``, started and supervised by its node.

It connects to the node named in its environment, then loops in Rust: take a task (with the GIL
released), call ``execute`` below, report the result. Output written to ``sys.stdout`` and
``sys.stderr`` goes to the driver, each line prefixed with the task's name and this pid.
"""

from __future__ import annotations

import io
import os
import pickle
import signal
import sys

_pid = os.getpid()
_current_name: str | None = None
_functions: dict[bytes, object] = {}


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
        prefix = f"({_current_name or 'worker'} pid={_pid}) "
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


def execute(name, fid, fbytes, data, buffers, deps, num_returns, task_id):
    """Runs one task; returns ``(True, [(data, buffers, contained), ...])`` or
    ``(False, (kind, message, traceback, pickled_exception))``."""
    global _current_name
    fn = _functions.get(fid)
    if fn is None:
        if fbytes is None:
            return False, (SERIALIZATION, f"the function of task '{name}' was never sent", "", None)
        try:
            fn = pickle.loads(fbytes)
        except BaseException as e:
            msg = f"could not load the function of task '{name}': {type(e).__name__}: {e}"
            return False, (SERIALIZATION, msg, _format_exception(e), None)
        _functions[fid] = fn
    try:
        if data == _EMPTY_ARGS:
            args, kwargs = (), {}
        elif deps:
            args, kwargs = loads(data, buffers, [loads(d, b) for d, b in deps])
        else:
            args, kwargs = pickle.loads(data, buffers=buffers)
    except BaseException as e:
        msg = f"could not deserialize the arguments of task '{name}': {type(e).__name__}: {e}"
        return False, (SERIALIZATION, msg, _format_exception(e), None)
    _current_name = name
    try:
        result = fn(*args, **kwargs)
    except BaseException as e:
        del args, kwargs
        return False, (
            TASK_EXCEPTION,
            f"{type(e).__name__}: {e}",
            _format_exception(e),
            _pickled_exception(e),
        )
    finally:
        if _stdout._buf:
            _stdout.flush()
        if _stderr._buf:
            _stderr.flush()
        _current_name = None
    del args, kwargs
    if num_returns == 1:
        values = [result]
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
            return False, (TASK_EXCEPTION, msg, "", _pickled_exception(ValueError(msg)))
    out = []
    for v in values:
        try:
            out.append(dumps(v))
        except Exception as e:
            msg = (
                f"could not serialize the result of task '{name}' "
                f"(a {type(v).__qualname__}): {type(e).__name__}: {e}"
            )
            return False, (SERIALIZATION, msg, _format_exception(e), None)
    return True, out


def _late_imports() -> None:
    """Imports that need the package (and the driver's sys.path) in place."""
    global SERIALIZATION, TASK_EXCEPTION, dumps, loads, _EMPTY_ARGS
    from ._serialization import EMPTY_ARGS as _EMPTY_ARGS
    from ._serialization import SERIALIZATION, TASK_EXCEPTION, dumps, loads


def main() -> None:
    # Cancelling a task interrupts it with SIGINT; make sure that raises KeyboardInterrupt even
    # if this process inherited SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    paths = [p for p in os.environ.get("VOLLEY_SYS_PATH", "").split(os.pathsep) if p]
    sys.path[:] = paths + [p for p in sys.path if p not in paths]
    from . import _api, _core

    try:
        _core.connect_worker(
            os.environ["VOLLEY_NODE_SOCKET"],
            int(os.environ["VOLLEY_WORKER_ID"]),
            os.environ["VOLLEY_SESSION_TOKEN"],
        )
    except KeyError as e:
        sys.exit(f"volley._worker is started by volley itself (missing {e.args[0]})")
    except RuntimeError:
        # The node went away before this worker connected (shutdown while starting).
        sys.exit(1)
    _api._mark_worker_connected()
    _late_imports()
    sys.stdout = _stdout
    sys.stderr = _stderr
    try:
        _core.worker_main(execute)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
