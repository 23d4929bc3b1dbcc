"""``ActorPool``: a fixed set of actors that take work as they become free (Ray's
``ray.util.ActorPool``, with the same methods and behaviour)."""

from __future__ import annotations

import time

from .. import ActorHandle, ObjectRef, get, wait
from ..exceptions import ActorCreationError, ActorDiedError, GetTimeoutError, TaskError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Iterable, Iterator

_TIMED_OUT = "timed out waiting for a result"


class ActorPool:
    """Spreads calls over a fixed list of actors, one call per actor at a time.

    ``fn(actor, value)`` makes each call and returns its ``ObjectRef`` (or a list of refs, for
    a method with several returns). Values submitted while every actor is busy wait in the pool
    and go to the first actor whose result is taken with ``get_next``/``get_next_unordered``.

    An actor that dies is taken out of the pool: the calls it had not answered are made again
    on the other actors (``map`` still yields in order), and when none is left the pool raises
    ``ActorDiedError`` saying so. An error raised by the method itself is the call's result, as
    before: it is not made again.

    >>> @volley.remote
    ... class Doubler:
    ...     def double(self, v):
    ...         return 2 * v
    >>> pool = ActorPool([Doubler.remote(), Doubler.remote()])
    >>> list(pool.map(lambda a, v: a.double.remote(v), [1, 2, 3, 4]))
    [2, 4, 6, 8]
    """

    def __init__(self, actors: list[ActorHandle]):
        actors = list(actors)
        for a in actors:
            if not isinstance(a, ActorHandle):
                raise TypeError(f"ActorPool takes actor handles, not {type(a).__name__}")
        self._idle: list[ActorHandle] = actors
        # Actors with calls in flight, and how many (more than one only after a dead actor's
        # calls were made again on a busy one).
        self._load: dict[ActorHandle, int] = {}
        # key -> (index, actor, fn, value): what is needed to make the call again.
        self._running: dict[Any, tuple[int, ActorHandle, Callable, Any]] = {}
        self._by_index: dict[int, Any] = {}  # index -> what fn returned
        self._next_index = 0  # the index of the next call made
        self._next_return = 0  # the index get_next returns next
        self._queued: list[tuple[Callable, Any]] = []

    def map(self, fn: Callable[[ActorHandle, Any], Any], values: Iterable[Any]) -> Iterator[Any]:
        """Calls ``fn(actor, v)`` for every value; yields the results in the order of
        ``values``. Results not taken from an earlier ``map`` or ``submit`` are dropped first.

        >>> list(pool.map(lambda a, v: a.double.remote(v), [1, 2]))
        [2, 4]
        """
        return self._submit_all(fn, values, self.get_next)

    def map_unordered(
        self, fn: Callable[[ActorHandle, Any], Any], values: Iterable[Any]
    ) -> Iterator[Any]:
        """As ``map``, but yields each result as soon as it is ready.

        >>> sorted(pool.map_unordered(lambda a, v: a.double.remote(v), [1, 2]))
        [2, 4]
        """
        return self._submit_all(fn, values, self.get_next_unordered)

    def _submit_all(
        self, fn: Callable[[ActorHandle, Any], Any], values: Iterable[Any], take: Callable
    ) -> Iterator[Any]:
        """``map``'s and ``map_unordered``'s common part: submits every value (after dropping
        the results not taken yet), then yields ``take()`` while results are left."""
        self._drop_pending()
        for v in values:
            self.submit(fn, v)

        def results() -> Iterator[Any]:
            while self.has_next():
                yield take()

        return results()

    def _drop_pending(self) -> None:
        """Forgets the results of calls not taken yet (as Ray's ``map`` does), waiting for
        the calls still running so that their actors are free again."""
        while self.has_next():
            try:
                self.get_next(timeout=0, ignore_if_timedout=True)
            except TimeoutError:
                pass
            except Exception:
                pass  # a call that raised: its error is dropped with its result

    def submit(self, fn: Callable[[ActorHandle, Any], Any], value: Any) -> None:
        """Calls ``fn(actor, value)`` on an idle actor, or queues it until one is free.

        >>> pool.submit(lambda a, v: a.double.remote(v), 1)
        >>> pool.get_next()
        2
        """
        if not callable(fn):
            raise TypeError(f"submit takes a function (actor, value) -> ObjectRef, not {fn!r}")
        if not self._idle:
            self._queued.append((fn, value))
            return
        actor = self._idle.pop()
        try:
            self._call(self._next_index, actor, fn, value)
        except BaseException:
            self._idle.append(actor)
            raise
        self._next_index += 1

    def _call(self, index: int, actor: ActorHandle, fn: Callable, value: Any) -> None:
        out = fn(actor, value)
        key = _key(out)
        self._running[key] = (index, actor, fn, value)
        self._by_index[index] = out
        self._load[actor] = self._load.get(actor, 0) + 1

    def _take(self, key: Any) -> tuple[bool, Any]:
        """Takes the result of the call behind ``key``: ``(True, value)``, or ``(False, None)``
        when its actor died and the call was made again on another (same index); raises the
        call's own error, or ``ActorDiedError`` when no actor is left to make it again."""
        index, actor, fn, value = self._running.pop(key)
        out = self._by_index[index]
        try:
            result = get(out)
        except ActorDiedError as e:
            if isinstance(e, TaskError) and not isinstance(e, ActorCreationError):
                # The method raised it (a call of its own to another actor): its result.
                del self._by_index[index]
                self._give_back(actor)
                raise
            self._drop(actor)
            self._again(index, fn, value, e)
            return False, None
        except BaseException:
            del self._by_index[index]
            self._give_back(actor)
            raise
        del self._by_index[index]
        self._give_back(actor)
        return True, result

    def _drop(self, actor: ActorHandle) -> None:
        """Takes a dead actor out of the pool."""
        self._load.pop(actor, None)
        if actor in self._idle:
            self._idle.remove(actor)

    def _again(self, index: int, fn: Callable, value: Any, died: ActorDiedError) -> None:
        """Makes a dead actor's call again: on an idle actor, else on the least busy one (it
        runs after that actor's current call), keeping its index."""
        if self._idle:
            actor = self._idle.pop()
        elif self._load:
            actor = min(self._load, key=self._load.__getitem__)
        else:
            del self._by_index[index]
            lost = 1 + len(self._running) + len(self._queued)
            self._running.clear()
            self._by_index.clear()
            self._queued.clear()
            raise ActorDiedError(
                f"every actor of the ActorPool died: {lost} value(s) could not be computed "
                f"(the last actor: {died})"
            ) from died
        self._call(index, actor, fn, value)

    def has_next(self) -> bool:
        """Whether results are left to take (calls running, done, or queued).

        >>> pool.has_next()
        False
        """
        return bool(self._running)

    def get_next(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """The next result, in the order of submission.

        Raises ``StopIteration`` when nothing is left, ``TimeoutError`` (a
        ``volley.GetTimeoutError``) when the result is not ready within ``timeout`` seconds
        (with ``ignore_if_timedout=True`` that call's result is dropped and its actor taken
        back), the call's error if it raised, and ``ValueError`` after
        ``get_next_unordered`` took results out of order.
        """
        if not self.has_next():
            raise StopIteration("No more results to get")
        if self._next_return >= self._next_index or self._next_return not in self._by_index:
            raise ValueError("It is not allowed to call get_next() after get_next_unordered().")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            out = self._by_index[self._next_return]
            if deadline is not None:
                left = max(0.0, deadline - time.monotonic())
                ready, _ = wait([_first(out)], timeout=left, fetch_local=False)
                if not ready:
                    if not ignore_if_timedout:
                        raise GetTimeoutError(_TIMED_OUT)
                    del self._by_index[self._next_return]
                    self._next_return += 1
                    actor = self._running.pop(_key(out))[1]
                    self._give_back(actor)
                    raise GetTimeoutError(f"{_TIMED_OUT}; the call behind {out!r} is dropped")
            try:
                done, result = self._take(_key(out))
            except BaseException:
                self._next_return += 1
                raise
            if done:
                self._next_return += 1
                return result
            # Its actor died: the call was made again under the same index; wait for that.

    def get_next_unordered(
        self, timeout: float | None = None, ignore_if_timedout: bool = False
    ) -> Any:
        """The next result to be ready, whatever its order of submission.

        Raises ``StopIteration`` when nothing is left, ``TimeoutError`` (a
        ``volley.GetTimeoutError``) when no result is ready within ``timeout`` seconds (no
        call is dropped then: which one would be is not defined; ``ignore_if_timedout`` is
        accepted for Ray's signature), and the call's error if it raised.
        """
        if not self.has_next():
            raise StopIteration("No more results to get")
        _, ok, result = self._next_ready(timeout)
        if not ok:
            raise result
        return result

    def _next_ready(self, timeout: float | None = None) -> tuple[int, bool, Any]:
        """The next call to be ready, as ``(index, True, value)`` or, when it raised,
        ``(index, False, error)`` (``volley.map`` over a pool puts results back in order by
        index). A dead actor's call is made again, as for ``get_next``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            keys = list(self._running)
            firsts = [_first(k) for k in keys]
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _ = wait(firsts, num_returns=1, timeout=left, fetch_local=False)
            if not ready:
                raise GetTimeoutError(_TIMED_OUT)
            key = keys[firsts.index(ready[0])]
            index = self._running[key][0]
            try:
                done, result = self._take(key)
            except Exception as e:
                self._next_return = max(self._next_return, index + 1)
                return index, False, e
            except BaseException:
                self._next_return = max(self._next_return, index + 1)
                raise
            if done:
                self._next_return = max(self._next_return, index + 1)
                return index, True, result

    def _volley_map(
        self,
        method: str | Callable[[ActorHandle, Any], Any] | None,
        items: Iterator[Any],
        star: bool,
        ordered: bool,
        progress: bool | str,
        total: int | None,
    ) -> _PoolMap:
        """``volley.map(pool, items, method=...)``: see :class:`_PoolMap`."""
        if isinstance(method, str):
            name = method
            if not name.isidentifier():
                raise ValueError(f"method must be an actor method's name, not {name!r}")

            def call(actor: ActorHandle, v: Any) -> Any:
                m = getattr(actor, name)
                return m.remote(*v) if star else m.remote(v)

        elif callable(method):
            name = getattr(method, "__name__", "call")
            call = method
        else:
            raise TypeError(
                "volley.map over an ActorPool needs method=: the name of the actors' method "
                "(method='double') or a function (actor, value) -> ObjectRef (method=lambda a, "
                f"v: a.double.remote(v)), not {method!r}"
            )
        return _PoolMap(self, call, items, ordered, progress and (progress, name), total)

    def _give_back(self, actor: ActorHandle) -> None:
        n = self._load.get(actor, 0) - 1
        if n > 0:
            self._load[actor] = n
            return
        self._load.pop(actor, None)
        self._idle.append(actor)
        if self._queued:
            self.submit(*self._queued.pop(0))

    def has_free(self) -> bool:
        """Whether an actor is idle (and no value waits for one).

        >>> pool.has_free()
        True
        """
        return bool(self._idle) and not self._queued

    def pop_idle(self) -> ActorHandle | None:
        """Takes an idle actor out of the pool (None if none is free).

        >>> a = pool.pop_idle()
        >>> pool.push(a)
        """
        return self._idle.pop() if self.has_free() else None

    def push(self, actor: ActorHandle) -> None:
        """Adds an actor to the pool (it takes a queued value at once, if one waits).
        ``ValueError`` if it is in the pool already."""
        if not isinstance(actor, ActorHandle):
            raise TypeError(f"push takes an actor handle, not {type(actor).__name__}")
        if actor in self._idle or actor in self._load:
            raise ValueError("Actor already belongs to current ActorPool")
        self._give_back(actor)


def _key(out: Any) -> Any:
    """A dict key for what ``fn`` returned: the ref, or the tuple of a list of refs."""
    if type(out) is ObjectRef:
        return out
    if isinstance(out, (list, tuple)) and out and all(type(r) is ObjectRef for r in out):
        return tuple(out)
    raise TypeError(
        "the function given to ActorPool must return the ObjectRef of an actor call "
        f"(e.g. lambda actor, v: actor.method.remote(v)), not {type(out).__name__}"
    )


def _first(out: Any) -> ObjectRef:
    """The ref to wait on: the returns of one call are ready together."""
    return out if type(out) is ObjectRef else out[0]


class _PoolMap:
    """What ``volley.map(pool, items, method=...)`` returns: an iterator over the results of
    one call per item on the pool's actors, with ``volley.map``'s semantics.

    Items are read lazily, a few per actor ahead of the consumer. Results are taken from the
    actors as they finish (so a slow call does not keep the other actors idle) and yielded in
    the order of the items (``ordered=False``: as they finish). A call that raised ends the
    iteration with its error once the results before it are yielded (the calls still running
    finish, and their results are dropped by the pool's next ``map``). A dead actor leaves
    the pool and its calls are made again on the others, as the pool does for ``map``.
    """

    def __init__(
        self,
        pool: ActorPool,
        call: Callable[[ActorHandle, Any], Any],
        items: Iterator[Any],
        ordered: bool,
        progress: Any,
        total: int | None,
    ):
        pool._drop_pending()  # as ``pool.map`` does
        self._pool, self._call, self._items, self._ordered = pool, call, items, ordered
        self._base = pool._next_index  # the pool's index of this map's first call
        self._window = max(4, 2 * (len(pool._idle) + len(pool._load)))
        self._done: dict[int, tuple[bool, Any]] = {}
        self._yielded = 0  # results yielded (ordered: the next position to yield)
        self.tasks = 0  # calls submitted (one per item)
        self._exhausted = False
        self._bar = None
        if progress:
            from ..library import ProgressBar

            label, name = progress
            self._bar = ProgressBar(total, label if isinstance(label, str) else name)
        self._fill()

    def _fill(self) -> None:
        while not self._exhausted and self.tasks - self._yielded < self._window:
            try:
                item = next(self._items)
            except StopIteration:
                self._exhausted = True
                break
            self._pool.submit(self._call, item)
            self.tasks += 1

    def __iter__(self) -> _PoolMap:
        return self

    def __next__(self) -> Any:
        while True:
            self._fill()
            if self._ordered and self._yielded in self._done:
                ok, value = self._done.pop(self._yielded)
                return self._hand(ok, value)
            if not self._ordered and self._done:
                ok, value = self._done.pop(next(iter(self._done)))
                return self._hand(ok, value)
            if self._yielded >= self.tasks:
                self.close()
                raise StopIteration
            if not self._pool.has_next():
                # Its calls are gone (every actor died): the error that said so ends it.
                errors = [v for ok, v in self._done.values() if not ok]
                self.close()
                if errors:
                    raise errors[-1]
                raise RuntimeError("the ActorPool dropped this map's calls (taken elsewhere?)")
            # A result this map waits for is still to come.
            try:
                index, ok, value = self._pool._next_ready()
            except StopIteration:
                self.close()
                raise
            self._done[index - self._base] = (ok, value)

    def _hand(self, ok: bool, value: Any) -> Any:
        self._yielded += 1
        if self._bar is not None:
            self._bar.update(1)
        if ok:
            return value
        self.close()
        raise value

    def close(self) -> None:
        """Stops: no more items are read or submitted (the calls running finish; the pool's
        next ``map`` drops their results)."""
        self._exhausted = True
        self._yielded = self.tasks = 0
        self._done.clear()
        if self._bar is not None:
            self._bar.close()
            self._bar = None
