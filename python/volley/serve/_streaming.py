"""What a replica needs to stream: a generator's items one at a time on the replica's event
loop, and the registry of the streams under way (so that a client that leaves, or a caller that
drops its ``DeploymentResponseGenerator``, stops the generator).

A sync generator runs in the replica's threads (one ``next`` at a time), an async one on the
loop. Closing a stream closes its generator: an async one that was cancelled mid-``await`` got
``asyncio.CancelledError`` there; a sync one gets ``GeneratorExit`` at its ``yield`` once the
``next`` running in its thread has returned.

>>> import asyncio
>>> def gen():
...     yield 1
...     yield 2
>>> async def drain():
...     items = Items(gen(), None)
...     out = []
...     while (x := await items.next()) is not END:
...         out.append(x)
...     await items.close()
...     return out
>>> asyncio.run(drain())
[1, 2]
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import inspect
import json
import sys
from typing import Any

#: What ``Items.next`` returns once the generator is over.
END: Any = object()
#: How long closing a stream waits for a sync generator's ``next`` under way to return.
CLOSE_WAIT_S = 10.0


def is_stream(value: Any) -> bool:
    """Whether a method's result streams: a generator or an async generator."""
    return inspect.isgenerator(value) or inspect.isasyncgen(value)


def _next(it: Any) -> Any:
    try:
        return next(it)
    except StopIteration:
        return END


_pool: concurrent.futures.ThreadPoolExecutor | None = None


def _default_pool() -> concurrent.futures.ThreadPoolExecutor:
    """Threads for sync generators outside a replica (which passes its own)."""
    global _pool
    if _pool is None:
        _pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="serve-stream")
    return _pool


class Items:
    """The items of a generator (sync or async) or any iterable, one per ``await next()``."""

    def __init__(self, source: Any, pool: concurrent.futures.Executor | None) -> None:
        if hasattr(source, "__anext__"):
            self._agen: Any = source
            self._it: Any = None
        elif hasattr(source, "__aiter__"):
            self._agen, self._it = source.__aiter__(), None
        else:
            try:
                self._agen, self._it = None, iter(source)
            except TypeError:
                raise TypeError(
                    f"a streamed body is an iterator, a generator or an async generator, not "
                    f"{type(source).__name__}"
                ) from None
        self._pool = pool
        self._busy: concurrent.futures.Future | None = None
        self._closed = False

    async def next(self) -> Any:
        """The next item, or :data:`END`."""
        if self._closed:
            return END
        if self._agen is not None:
            try:
                return await self._agen.__anext__()
            except StopAsyncIteration:
                return END
        call = contextvars.copy_context().run
        self._busy = (self._pool or _default_pool()).submit(call, _next, self._it)
        return await asyncio.wrap_future(self._busy)

    async def close(self) -> None:
        """Closes the generator (once): ``GeneratorExit`` at its ``yield``. Never raises."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._agen is not None:
                aclose = getattr(self._agen, "aclose", None)
                if aclose is not None:
                    await aclose()
                return
            busy = self._busy
            if busy is not None and not busy.done():
                # A `next` still runs in its thread (the awaiting task was cancelled): the
                # generator cannot be closed before it returns.
                try:
                    await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(busy)), CLOSE_WAIT_S)
                except Exception:
                    pass
                if not busy.done():
                    print(
                        f"volley.serve: a streaming generator did not return from next() within "
                        f"{CLOSE_WAIT_S} s of its stream's end: it is left unclosed",
                        file=sys.stderr,
                    )
                    return
            close = getattr(self._it, "close", None)
            if close is not None:
                await asyncio.wrap_future((self._pool or _default_pool()).submit(close))
        except BaseException as e:  # the generator's own cleanup failed: nothing to tell
            print(f"volley.serve: closing a streaming generator raised {e!r}", file=sys.stderr)


def chunk_bytes(item: Any) -> bytes:
    """An HTTP streaming body's item as bytes: ``bytes`` as is, ``str`` as UTF-8, a dict or
    list as one line of JSON (JSON lines: the JSON and ``\\n``).

    >>> chunk_bytes("é"), chunk_bytes(b"\\x00"), chunk_bytes({"a": 1})
    (b'\\xc3\\xa9', b'\\x00', b'{"a":1}\\n')
    """
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    if isinstance(item, str):
        return item.encode()
    if isinstance(item, (dict, list)):
        text = json.dumps(item, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return text.encode() + b"\n"
    raise TypeError(
        f"a streamed HTTP body yields bytes, str, or a dict or list (a JSON line), not "
        f"{type(item).__module__}.{type(item).__qualname__}"
    )


def media_type_of(first: Any) -> str:
    """The ``content-type`` of a bare generator's body, from its first item."""
    if isinstance(first, str):
        return "text/plain; charset=utf-8"
    if isinstance(first, (dict, list)):
        return "application/x-ndjson"
    return "application/octet-stream"


#: How many items a stream's producer (an HTTP stream's generator, a WebSocket's app) may be
#: ahead of what the ingress took: it waits there until the ingress says it took more
#: (``Credit.ack``, every :data:`CREDIT_EVERY` items). Items the client does not read stop the
#: generator, instead of piling up in the engine's memory.
WINDOW = 32
#: How often (in items) the ingress says how many it took; its Rust side counts the same.
CREDIT_EVERY = 8


class Credit:
    """A stream's flow control: ``made`` items produced, ``acked`` taken by the ingress.

    >>> async def main():
    ...     c = Credit()
    ...     c.made = WINDOW
    ...     waiter = asyncio.ensure_future(c.room())
    ...     await asyncio.sleep(0)
    ...     blocked = not waiter.done()
    ...     c.ack(CREDIT_EVERY)
    ...     await waiter
    ...     return blocked, c.made - c.acked
    >>> asyncio.run(main())
    (True, 24)
    """

    __slots__ = ("made", "acked", "_more")

    def __init__(self) -> None:
        self.made = 0
        self.acked = 0
        self._more: asyncio.Event | None = None

    async def room(self) -> None:
        """Returns once the producer may make one more item."""
        while self.made - self.acked >= WINDOW:
            if self._more is None:
                self._more = asyncio.Event()
            self._more.clear()
            await self._more.wait()

    def ack(self, taken: int) -> None:
        """The ingress took ``taken`` items in all."""
        if taken > self.acked:
            self.acked = taken
            if self._more is not None:
                self._more.set()


def split_credit(data: bytes) -> tuple[bytes, int]:
    """The ``(key, items taken)`` of ``__volley_serve_credit__``'s argument: a u8 key length,
    the key, a little-endian u32.

    >>> split_credit(b"\\x02h1\\x08\\x00\\x00\\x00")
    (b'h1', 8)
    """
    n = data[0] if data else 0
    if len(data) != 1 + n + 4:
        raise ValueError(f"a stream credit of {len(data)} bytes is not one")
    return bytes(data[1 : 1 + n]), int.from_bytes(data[1 + n :], "little")


class Stream:
    """A stream under way in a replica: its items, the task that sends them (once it runs),
    and an event set once it is over."""

    __slots__ = ("items", "task", "over", "request_id", "timer", "context", "credit")

    def __init__(self, items: Items, request_id: str, context: Any = None) -> None:
        self.items = items
        self.request_id = request_id
        #: The request's context (``_context.RequestContext``), set again around each item
        #: after the first: the follower's call runs outside the request that opened it.
        self.context = context
        self.credit = Credit()  # (followed by the ingress: HTTP streams)
        self.task: asyncio.Task | None = None
        self.over = asyncio.Event()
        self.timer: asyncio.TimerHandle | None = None
