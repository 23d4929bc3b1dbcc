"""The driver's messages through Python's ``logging``: ``logging.getLogger("volley")``.

What volley tells the user of a driver while it runs (an actor died and is restarted, a task
waits for resources and who holds them, a worker's connection failed, a node joined or left the
cluster) is logged on the ``"volley"`` logger, at INFO, WARNING or ERROR, with the text volley
printed before (``volley: actor 'A' died (pid 123 ...); restarting it (restart 1 of 3)``).

By default it is shown as before: a line on stderr (the logger's own handler; it does not
propagate to the root logger's handlers, which would show it twice). Route or silence it as any
logger, after ``init``::

    logging.getLogger("volley").setLevel(logging.WARNING)   # no INFO lines
    logging.getLogger("volley").addHandler(handler)          # also to a handler of yours
    logging.getLogger("volley").handlers.clear()             # not on stderr; and with
    logging.getLogger("volley").propagate = True             # this, to the root's handlers

The node's lines come from its Rust threads, which never take the GIL: they queue them, and a
Python thread of the driver (``volley-events``) reads the queue and logs them.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

from . import _core

logger = logging.getLogger("volley")

_thread: threading.Thread | None = None
_fd: int | None = None  # the pipe's read end, which the thread reads


class _Stderr(logging.Handler):
    """The ``"volley"`` logger's default handler: writes the line to ``sys.stderr`` as it is
    (whatever ``sys.stderr`` is when it is logged, so a redirection or pytest's capture sees
    it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


_default_handler = _Stderr()
_default_handler.setFormatter(logging.Formatter("%(message)s"))


def _configure() -> None:
    """Gives the logger its default handler and level once, and keeps its records from the
    root logger's handlers (they would show each line twice); a user's own settings made
    after ``init`` stay."""
    if not getattr(logger, "_volley_configured", False):
        logger._volley_configured = True  # type: ignore[attr-defined]
        logger.addHandler(_default_handler)
        logger.propagate = False
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)


def start() -> None:
    """Routes the node's event lines to the logger (a driver's ``init`` calls it)."""
    global _thread
    _configure()
    if _thread is not None and _thread.is_alive():
        return
    global _fd
    fd = _core.route_events(True)
    assert fd is not None
    _fd = fd
    _thread = threading.Thread(target=_run, args=(fd,), name="volley-events", daemon=True)
    _thread.start()


def _log_batch() -> None:
    for level, line in _core.take_events():
        try:
            logger.log(level, line)
        except Exception:  # a user's handler failed: the next lines still go out
            pass


def _run(fd: int) -> None:
    """Waits on the engine's pipe (a byte per line; its end when routing stops) and logs."""
    try:
        while True:
            try:
                data = os.read(fd, 4096)
            except InterruptedError:
                continue
            except OSError:
                data = b""
            _log_batch()
            if not data:
                return
    finally:
        os.close(fd)


def stop() -> None:
    """Logs what is queued, then sends the node's lines back to stderr (``shutdown``)."""
    global _thread
    t, _thread = _thread, None
    _core.route_events(False)
    if t is not None and t is not threading.current_thread():
        t.join(timeout=2.0)
    _log_batch()  # what the thread did not take (it did not end in time)


def after_fork_in_child() -> None:
    """The parent's reading thread is not in a forked child (the engine forgot its queue):
    the child's copy of the pipe's read end is closed."""
    global _thread, _fd
    if _thread is not None and _fd is not None:
        try:
            os.close(_fd)
        except OSError:
            pass
    _thread, _fd = None, None
