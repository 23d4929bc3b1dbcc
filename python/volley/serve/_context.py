"""The request a replica is serving now: its id, its multiplexed model id, and what its log
lines carry.

A replica sets a context variable around each request, HTTP or handle call; code that runs for
the request (the user's method, the threads it runs in, FastAPI's endpoints) reads it with
:func:`get_request_id` and :func:`get_multiplexed_model_id`. Lines the replica writes to
stdout or stderr while serving (``print``, ``logging``'s stream handlers, tracebacks) start
with ``[app=A deployment=D request_id=R]``, so ``volley logs`` finds them by the id the client
got in ``x-request-id``; a ``logging.LogRecord`` made then has ``record.request_id`` too
(``""`` outside a request), for formats of the user's own (``%(request_id)s``).

>>> get_request_id(), get_multiplexed_model_id()
('', '')
>>> with serving(RequestContext("r-7", "resnet", "app", "Dep")):
...     get_request_id(), get_multiplexed_model_id()
('r-7', 'resnet')
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import itertools
import logging
import os
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any, NamedTuple, TextIO

__all__ = [
    "META_KWARG",
    "MODEL_ID_HEADER",
    "RequestContext",
    "get_multiplexed_model_id",
    "get_request_id",
    "install_log_prefix",
    "new_request_id",
    "serving",
]

#: The HTTP header that names a request's multiplexed model (Ray Serve's name).
MODEL_ID_HEADER = "serve_multiplexed_model_id"
#: The keyword argument a handle call carries its (request id, model id) in to the replica,
#: which takes it out before the user's method sees the arguments.
META_KWARG = "__volley_serve_request__"


class RequestContext(NamedTuple):
    """What a replica knows of the request it serves."""

    request_id: str
    multiplexed_model_id: str = ""
    app: str = ""
    deployment: str = ""


_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "volley_serve_request", default=None
)


_id_prefix = ""
_id_count = itertools.count(1)


def new_request_id() -> str:
    """A fresh request id (32 hex digits: 64 random bits of this process, then a count), for a
    handle call made outside any request. Cheaper than a uuid4 for each call (no system call).

    >>> a, b = new_request_id(), new_request_id()
    >>> len(a), a != b, a[:16] == b[:16]
    (32, True, True)
    """
    global _id_prefix
    if not _id_prefix or _id_pid[0] != os.getpid():  # (a forked child draws its own)
        _id_prefix = uuid.uuid4().hex[:16]
        _id_pid[0] = os.getpid()
    return f"{_id_prefix}{next(_id_count):016x}"


_id_pid = [0]


def current() -> RequestContext | None:
    """The request being served in this context, or None."""
    return _current.get()


def get_request_id() -> str:
    """The id of the request this replica is serving (``""`` outside one): an HTTP request's
    is the one its answer carries in ``x-request-id``; a handle call made while serving a request
    carries that request's id on, one made elsewhere gets a fresh one. Ray Serve has it as
    ``serve.context._get_serve_request_context().request_id``.

    >>> get_request_id()
    ''
    """
    ctx = _current.get()
    return ctx.request_id if ctx is not None else ""


def get_multiplexed_model_id() -> str:
    """The model id of the request being served (``""`` when it names none): the HTTP header
    ``serve_multiplexed_model_id``, or ``handle.options(multiplexed_model_id=...)``. As Ray
    Serve's ``serve.get_multiplexed_model_id()``.

    >>> get_multiplexed_model_id()
    ''
    """
    ctx = _current.get()
    return ctx.multiplexed_model_id if ctx is not None else ""


@contextlib.contextmanager
def serving(ctx: RequestContext) -> Iterator[RequestContext]:
    """Sets the request context for the block (and what it awaits or hands to threads that
    copy the context)."""
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)


def _prefix() -> str:
    ctx = _current.get()
    if ctx is None:
        return ""
    return f"[app={ctx.app} deployment={ctx.deployment} request_id={ctx.request_id}] "


class _RequestPrefixStream(io.TextIOBase):
    """Writes through to ``inner``, starting each line written while a request is served with
    the request's prefix (a line another request started keeps its own)."""

    def __init__(self, inner: TextIO) -> None:
        self.inner = inner
        self._at_line_start = True
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.inner.fileno()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.inner, "encoding", "utf-8")

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        prefix = _prefix()
        with self._lock:
            if prefix and s:
                out = []
                for piece in s.splitlines(keepends=True):
                    if self._at_line_start:
                        out.append(prefix)
                    out.append(piece)
                    self._at_line_start = piece.endswith("\n")
                self.inner.write("".join(out))
            elif s:
                self.inner.write(s)
                self._at_line_start = s.endswith("\n")
        return len(s)

    def flush(self) -> None:
        self.inner.flush()


_old_factory: Any = None


def install_log_prefix() -> None:
    """In a replica's process: stdout and stderr prefix the lines of a request with its id, and
    log records get ``request_id``. Idempotent."""
    global _old_factory
    if not isinstance(sys.stdout, _RequestPrefixStream):
        sys.stdout = _RequestPrefixStream(sys.stdout)
    if not isinstance(sys.stderr, _RequestPrefixStream):
        sys.stderr = _RequestPrefixStream(sys.stderr)
    if _old_factory is None:
        _old_factory = logging.getLogRecordFactory()
        old = _old_factory

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = old(*args, **kwargs)
            record.request_id = get_request_id()
            return record

        logging.setLogRecordFactory(factory)
