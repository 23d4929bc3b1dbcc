"""Awaiting the node's primitive ops (queues, channels, locks, events) from asyncio.

An awaited op is started without waiting (``_core.prim_start``); one thread of the process,
``volley-prims-async``, collects the answers of every awaited op of every event loop
(``_core.prim_answers``, GIL released) and hands each to its loop with
``call_soon_threadsafe``. The loop is never blocked, and no thread is kept per awaiting call.

Cancelling the awaiting coroutine (``task.cancel()``, ``asyncio.wait_for``'s timeout) cancels
the op in the node; what it got meanwhile goes back (an item to the head of its queue, a lock
unit to the next waiter), by the same rule as an interrupted blocking call. A ``timeout``
given to the op itself stops the node's wait instead, and the op reports what it really got.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any, Callable

from . import _core, _session
from .exceptions import ChannelClosed

_lock = threading.Lock()
_waiting: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future]] = {}
_thread: threading.Thread | None = None


def check_timeout(timeout: float | None) -> float | None:
    if timeout is not None and not timeout >= 0:
        raise ValueError(f"timeout must be a non-negative number of seconds, not {timeout!r}")
    return timeout


async def call(
    start: Callable[..., tuple[int, Any]],
    *args: Any,
    timeout: float | None = None,
    finish_on_cancel: bool = False,
) -> tuple[str, Any]:
    """Runs the op ``start(*args)`` starts; its answer as ``(kind, value)`` (see
    ``_core.prim_answers``). After ``timeout`` seconds the node stops waiting on it, and its
    answer says what it got (``empty``/``full`` if nothing).

    A cancelled awaiter gives back what the op got; with ``finish_on_cancel`` it instead tells
    the node to stop waiting and awaits the op's answer before ``CancelledError`` goes on (a
    condition wait, whose answer comes once the lock is held again: the caller's ``async
    with`` then releases it)."""
    global _thread
    loop = asyncio.get_running_loop()
    with _lock:
        req, now = start(*args)
        if now is not None:
            return now  # answered as it ran (a driver's op that did not wait)
        fut = loop.create_future()
        _waiting[req] = (loop, fut)
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_collect, name="volley-prims-async", daemon=True)
            _thread.start()
    timer = None if timeout is None else loop.call_later(timeout, _core.prim_cancel, req, False)
    try:
        answer = await (asyncio.shield(fut) if finish_on_cancel else fut)
    except asyncio.CancelledError:
        if not finish_on_cancel:
            _give_back(req)
            raise
        _core.prim_cancel(req, False)
        while not fut.done():
            try:
                await asyncio.shield(fut)
            except asyncio.CancelledError:
                continue
        _core.prim_done(req)
        raise
    except BaseException:
        _give_back(req)
        raise
    finally:
        if timer is not None:
            timer.cancel()
    _core.prim_done(req)
    return answer


def _give_back(req: int) -> None:
    """The awaiter of op ``req`` is gone: the node stops waiting, and what the op got, now or
    once its answer arrives, goes back."""
    with _lock:
        _waiting.pop(req, None)
    try:
        _core.prim_cancel(req, True)
    except Exception:
        pass  # volley is shut down: nothing to give back to


def _settle(fut: asyncio.Future, req: int, answer: tuple[str, Any]) -> None:
    if fut.done():  # its awaiter was cancelled: give back what the op got
        _core.prim_cancel(req, True)
    else:
        fut.set_result(answer)


def _fail(fut: asyncio.Future, error: BaseException) -> None:
    if not fut.done():
        fut.set_exception(error)


def _collect() -> None:
    global _thread
    while True:
        with _lock:
            # Done when no op is awaited, and none given back awaits its answer (to undo).
            if not _waiting and _idle():
                _thread = None
                return
        try:
            answers = _core.prim_answers(0.2)
        except Exception as e:  # the node is gone, or volley shut down in this process
            with _lock:
                _thread = None
            fail_pending(f"volley shut down while this waited ({e})")
            return
        for req, kind, value in answers:
            with _lock:
                entry = _waiting.pop(req, None)
            if entry is None:
                continue  # its awaiter was cancelled: the engine gave back what it got
            loop, fut = entry
            try:
                loop.call_soon_threadsafe(_settle, fut, req, (kind, value))
            except RuntimeError:  # the loop is closed
                _core.prim_cancel(req, True)


def _idle() -> bool:
    try:
        return _core.prims_awaited() == 0
    except Exception:  # volley is shut down: nothing is left to give back
        return True


def fail_pending(why: str = "volley shut down while this waited") -> None:
    """Fails every awaited op (volley shut down)."""
    with _lock:
        entries = list(_waiting.values())
        _waiting.clear()
    for loop, fut in entries:
        try:
            loop.call_soon_threadsafe(_fail, fut, ChannelClosed(why))
        except RuntimeError:
            pass  # the loop is closed


def _after_fork_in_child() -> None:
    """The parent's awaited ops are the parent's, and its collecting thread is gone."""
    global _lock, _thread
    _lock = threading.Lock()
    _waiting.clear()
    _thread = None


_session.at_shutdown(fail_pending)
os.register_at_fork(after_in_child=_after_fork_in_child)
