"""Ray's ``ray.util.as_completed`` and ``ray.util.map_unordered``: results as they finish."""

from __future__ import annotations

from .. import get, wait

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Iterable, Iterator, Sequence

    from .. import ObjectRef


def _check_chunk(chunk_size: Any) -> None:
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, not {chunk_size!r}")


def _batch(
    refs: list[ObjectRef], chunk_size: int, yield_obj_refs: bool, wait_args: dict
) -> tuple[list[Any], list[ObjectRef]]:
    """One ``wait`` for up to ``chunk_size`` refs: (their values, or refs; the others)."""
    ready, rest = wait(refs, num_returns=min(chunk_size, len(refs)), **wait_args)
    return (ready if yield_obj_refs else get(ready)), rest


def as_completed(
    refs: Sequence[ObjectRef],
    *,
    chunk_size: int = 10,
    yield_obj_refs: bool = False,
    **kwargs: Any,
) -> Iterator[Any]:
    """Yields the values of ``refs`` as they finish, ``chunk_size`` at a time (each batch in
    the order the refs were given), as Ray's ``ray.util.as_completed``. ``yield_obj_refs=True``
    yields the refs instead; other keyword arguments (``timeout``, ``fetch_local``) go to
    ``volley.wait``. A task's error is raised when its batch comes.

    >>> @volley.remote
    ... def sleep_then_return(x):
    ...     import time
    ...     time.sleep(x / 2)
    ...     return x
    >>> refs = [sleep_then_return.remote(x) for x in [4, 1, 2]]
    >>> list(as_completed(refs, chunk_size=1))
    [1, 2, 4]
    """
    _check_chunk(chunk_size)
    pending = list(refs)
    while pending:
        done, pending = _batch(pending, chunk_size, yield_obj_refs, kwargs)
        yield from done


def map_unordered(
    fn: Any,
    items: Iterable[Any],
    *,
    backpressure_size: int | None = 100,
    chunk_size: int = 10,
    yield_obj_refs: bool = False,
    **kwargs: Any,
) -> Iterator[Any]:
    """Calls the remote function ``fn`` on each item (``fn.remote(item)``) and yields the
    results as they finish, as Ray's ``ray.util.map_unordered``. At most
    ``backpressure_size`` calls are in flight (None: no limit): the items are read as results
    are taken. ``chunk_size``, ``yield_obj_refs`` and the other keyword arguments are as for
    ``as_completed``.

    >>> @volley.remote
    ... def square(x):
    ...     return x * x
    >>> sorted(map_unordered(square, range(4)))
    [0, 1, 4, 9]
    """
    if not callable(getattr(fn, "remote", None)):
        raise TypeError(f"map_unordered takes a remote function (with .remote), not {fn!r}")
    _check_chunk(chunk_size)
    if backpressure_size is not None and (
        not isinstance(backpressure_size, int) or backpressure_size < 1
    ):
        raise ValueError(
            f"backpressure_size must be an int >= 1 or None, not {backpressure_size!r}"
        )
    pending: list[ObjectRef] = []
    for item in items:
        if backpressure_size is not None and len(pending) >= backpressure_size:
            done, pending = _batch(pending, chunk_size, yield_obj_refs, kwargs)
            yield from done
        pending.append(fn.remote(item))
    yield from as_completed(pending, chunk_size=chunk_size, yield_obj_refs=yield_obj_refs, **kwargs)
