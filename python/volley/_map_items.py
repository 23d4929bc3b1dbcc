"""The part of ``volley.map`` that runs in workers: a chunk of items through the user's function,
and errors captured as values. A module of its own, light to import: a worker imports it with
the first chunk it runs (the chunk task is pickled by reference), and ``volley._map`` imports
much of the package.
"""

from __future__ import annotations

import os
import pickle
import time

from .exceptions import task_error

TYPE_CHECKING = False  # without importing typing, a slow import
if TYPE_CHECKING:
    from typing import Any, Callable


def traceback_text(e: BaseException) -> str:
    """``e``'s traceback as text, from the user's function on (the chunk runner's frame left
    out).

    >>> try:
    ...     1 / 0
    ... except ZeroDivisionError as e:
    ...     print(library.traceback_text(e).splitlines()[-1])
    ZeroDivisionError: division by zero
    """
    import traceback  # only on an error: `import volley` stays fast without it

    tb = e.__traceback__
    # Start at the user's function: drop the frame of the chunk runner.
    if tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(e), e, tb))


def capture_error(e: BaseException, name: str, tb: str | None = None) -> BaseException:
    """The error ``get`` would raise had the task itself raised ``e`` (the same class as ``e``,
    with the remote traceback ``tb``, by default ``e``'s from the user's function on), made in
    the worker so that it can travel as a value.

    >>> err = library.capture_error(KeyError("k"), "lookup")
    >>> isinstance(err, KeyError), isinstance(err, volley.TaskError)
    (True, True)
    """
    if tb is None:
        tb = traceback_text(e)
    err = task_error(e, name, tb, os.getpid())
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:
        text = f"task '{name}' (pid {os.getpid()}) raised {type(e).__name__}: {e}"
        return task_error(None, name, tb, os.getpid(), f"{text}\n\nRemote traceback:\n{tb}")


def run_items(fn: Callable, items: list, star: bool, name: str) -> tuple[list, float, Any]:
    """Calls ``fn`` on each item (``fn(*item)`` with ``star``): ``(results, seconds, error)``;
    on the first item that raises, the results before it and that item's error.

    >>> results, seconds, error = library.run_items(pow, [(2, 3), (3, 2)], True, "pow")
    >>> results, error
    ([8, 9], None)
    """
    t0 = time.perf_counter()
    out = []
    append = out.append
    try:
        if star:
            for item in items:
                append(fn(*item))
        else:
            for item in items:
                append(fn(item))
    except Exception as e:
        return out, time.perf_counter() - t0, capture_error(e, name)
    return out, time.perf_counter() - t0, None


def _run_chunk(fn: Callable, items: list, star: bool, name: str) -> tuple[list, float, Any]:
    return run_items(fn, items, star, name)
