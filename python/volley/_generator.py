"""``ObjectRefGenerator``: the refs of a streaming task's (or actor method's) items, in order."""

from __future__ import annotations

import threading

from . import _core
from ._core import ObjectRef

TYPE_CHECKING = False  # without importing typing, a slow import
if TYPE_CHECKING:
    from concurrent.futures import Future


class ObjectRefGenerator:
    """The refs of a streaming call's items, in order, as the generator yields them.

    Iterate it (``for ref in gen``, or ``async for`` in asyncio) and ``volley.get`` each ref.
    If the generator raised, the ref after its last item raises that error on ``get``.
    ``completed()`` is a ref to the number of items (or the error). ``volley.wait`` takes it
    too (as Ray's does): it is ready once its next item is (or the stream has ended, when
    ``next`` raises ``StopIteration``).

    >>> @volley.remote
    ... def countdown(n):
    ...     for i in range(n, 0, -1):
    ...         yield i
    >>> [volley.get(r) for r in countdown.remote(3)]
    [3, 2, 1]
    """

    def __init__(self, end: ObjectRef):
        self._end = end
        self._next = 2
        self._done = False
        # The next step (the item's ref, or None at the end) being fetched by a thread, for
        # `wait` and `async for`: they must not block on it.
        self._ahead: Future | None = None

    def __iter__(self) -> ObjectRefGenerator:
        return self

    def _step(self) -> ObjectRef | None:
        """Blocks until the next item is there (its ref) or the stream has ended (None)."""
        ref = _core.stream_next(self._end, self._next)
        if ref is not None:
            self._next += 1
        return ref

    def _fetch_ahead(self) -> Future:
        """The next step, fetched by a thread of its own (started once per step)."""
        if self._ahead is None:
            # Imported at the first use: `import volley` stays fast without it.
            from concurrent.futures import Future

            fut: Future = Future()

            def run() -> None:
                try:
                    fut.set_result(self._step())
                except BaseException as e:
                    fut.set_exception(e)

            self._ahead = fut
            threading.Thread(target=run, name="volley-stream-next", daemon=True).start()
        return self._ahead

    def _is_ready(self) -> bool:
        """Whether ``next`` would return (or raise) at once; starts fetching the next step."""
        return self._done or self._fetch_ahead().done()

    def __next__(self) -> ObjectRef:
        if self._done:
            raise StopIteration
        if self._ahead is not None:
            ref = self._ahead.result()
            self._ahead = None
        else:
            ref = self._step()
        if ref is None:
            self._done = True
            raise StopIteration
        return ref

    def __aiter__(self) -> ObjectRefGenerator:
        return self

    async def __anext__(self) -> ObjectRef:
        import asyncio  # loaded already: this runs in an event loop

        if self._done:
            raise StopAsyncIteration
        # Shielded: a cancelled `await` leaves the step to the next __anext__, item and all.
        ref = await asyncio.shield(asyncio.wrap_future(self._fetch_ahead()))
        self._ahead = None
        if ref is None:
            self._done = True
            raise StopAsyncIteration
        return ref

    def completed(self) -> ObjectRef:
        """A ref to the number of items, ready once the generator has finished."""
        return self._end

    def __del__(self) -> None:
        if not self._done:
            try:
                _core.stream_release(self._end, self._next)
            except Exception:
                pass

    def __repr__(self) -> str:
        return f"ObjectRefGenerator({self._end.hex()[:32]}, next item {self._next - 2})"
