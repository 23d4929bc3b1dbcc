"""``ref.future()`` and ``await ref``: one background thread completes futures as refs finish."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading

from . import _core, _session
from ._objects import get
from .exceptions import VolleyError

_lock = threading.Lock()
_pending: dict[bytes, list[tuple[concurrent.futures.Future, object]]] = {}
_thread: threading.Thread | None = None


def future_of(ref) -> concurrent.futures.Future:
    """A ``concurrent.futures.Future`` completed with ``ref``'s value or error."""
    global _thread
    fut: concurrent.futures.Future = concurrent.futures.Future()
    with _lock:
        _pending.setdefault(ref.binary(), []).append((fut, ref))
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_complete_loop, name="volley-futures", daemon=True)
            _thread.start()
    _core.watch([ref])
    return fut


def await_ref(ref):
    """Implements ``await ref``."""
    return asyncio.wrap_future(future_of(ref)).__await__()


def _complete_loop() -> None:
    while True:
        with _lock:
            if not _pending:
                global _thread
                _thread = None
                return
        if _core.mode() is None:
            fail_pending()
            return
        for key in _core.next_ready(0.2):
            _complete(key)


def _complete(key: bytes) -> None:
    """Completes the futures of the ref ``key``. A function of its own, so that no local of
    the loop above keeps the last future (and its result) alive while the thread waits: the
    iterator of ``Executor.map`` promises to keep no result it returned (CPython's
    ``test_free_reference``)."""
    with _lock:
        entries = _pending.pop(key, [])
    for fut, ref in entries:
        if not fut.set_running_or_notify_cancel():
            continue
        try:
            fut.set_result(get(ref))
        except BaseException as e:  # the task's own error, delivered to the future
            fut.set_exception(e)


def fail_pending() -> None:
    """Fails futures still waiting when volley shuts down."""
    with _lock:
        entries = [e for v in _pending.values() for e in v]
        _pending.clear()
    for fut, _ in entries:
        if fut.set_running_or_notify_cancel():
            fut.set_exception(VolleyError("volley shut down before the object was ready"))


def _after_fork_in_child() -> None:
    """Futures of the parent's refs are the parent's, and its completing thread is gone. (Nothing
    is imported here: a module another thread was importing at the fork is locked here.)"""
    global _lock, _thread
    _lock = threading.Lock()
    _pending.clear()
    _thread = None


_session.at_shutdown(fail_pending)
os.register_at_fork(after_in_child=_after_fork_in_child)
