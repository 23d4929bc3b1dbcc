"""Operations on objects: get, put, wait and cancel, and the object store's counters."""

from __future__ import annotations

import time
from typing import TypeVar, overload

from . import _core
from ._core import ObjectRef
from ._generator import ObjectRefGenerator
from ._serialization import describe_unpicklable_code, dumps, unpack
from ._session import ensure_init
from .exceptions import GetTimeoutError, SerializationError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Sequence

#: A value's type, for a type checker: ``get(ObjectRef[R])`` is an ``R``.
R = TypeVar("R")


def _refs_list(refs: Any, what: str) -> list[ObjectRef]:
    if not isinstance(refs, (list, tuple)):
        raise TypeError(f"{what} takes an ObjectRef or a list of them, not {type(refs).__name__}")
    for r in refs:
        if type(r) is not ObjectRef:
            raise TypeError(f"{what} takes ObjectRefs, but got a {type(r).__name__}")
    return list(refs)


@overload
def get(refs: ObjectRef[R], *, timeout: float | None = None) -> R: ...
@overload
def get(refs: Sequence[ObjectRef[R]], *, timeout: float | None = None) -> list[R]: ...
def get(refs: ObjectRef | Sequence[ObjectRef], *, timeout: float | None = None) -> Any:
    """Waits for refs and returns their values (a list for a list).

    Raises the task's error (``TaskError``, ``WorkerCrashedError``, ``TaskCancelledError``, ...)
    and ``GetTimeoutError`` after ``timeout`` seconds; its message says why a task that has not
    started yet waits (what it asks for, and who holds it). Ctrl-C interrupts the wait at once.

    Large values come from the shared-memory store without a copy: numpy arrays (also inside
    dicts, lists and DataFrames) and memoryviews are **read-only** views of it. Writing raises
    numpy's ``ValueError: assignment destination is read-only``; ``arr.copy()`` gives a private,
    writable copy. The memory stays valid as long as a view of it lives.

    >>> volley.get([volley.put("a"), volley.put("b")])
    ['a', 'b']
    >>> import numpy as np
    >>> x = volley.get(volley.put(np.arange(1_000_000)))
    >>> x.flags.writeable, x.copy().flags.writeable
    (False, True)
    """
    if type(refs) is ObjectRef:
        return get([refs], timeout=timeout)[0]
    refs = _refs_list(refs, "get")
    if timeout is not None and timeout < 0:
        raise ValueError("timeout must be >= 0")
    if not refs:
        return []
    try:
        results = _core.get(refs, timeout)
    except TimeoutError:
        why = "".join(f"; {line}" for line in _core.explain_wait(refs))
        raise GetTimeoutError(
            f"get timed out after {timeout} s waiting for {len(refs)} object(s){why}"
        ) from None
    return [unpack(r) for r in results]


def put(value: R) -> ObjectRef[R]:
    """Stores a value and returns a ref to it, to pass to many tasks without re-sending it.

    A value of ``inline_threshold`` bytes or more (see ``init``) is written into the node's
    shared-memory store with one copy; tasks and ``get`` then read it in place. Raises
    ``SerializationError`` if it cannot be pickled, and ``ObjectStoreFullError`` if the store
    has no room even after spilling.

    >>> ref = volley.put([1, 2, 3])
    >>> volley.get(ref)
    [1, 2, 3]
    """
    if type(value) is ObjectRef:
        raise TypeError("put() takes a value, not an ObjectRef")
    ensure_init()
    try:
        data, buffers, contained = dumps(value)
    except Exception as e:
        if callable(value) and hasattr(value, "__qualname__"):  # a function or class
            raise SerializationError(describe_unpicklable_code(value, e)) from e
        raise SerializationError(
            f"could not serialize the value given to put() (a {type(value).__qualname__}): "
            f"{type(e).__name__}: {e}"
        ) from e
    return _core.put(data, buffers, contained)


def object_store_stats(objects: bool = False) -> dict:
    """Counters of this node's shared-memory object store (in the driver).

    Keys: ``capacity``, ``used`` (bytes allocated), ``pinned`` (bytes that cannot be spilled:
    being read through live views, or being written), ``objects``, ``objects_in_memory``,
    ``objects_spilled``, ``spilled_bytes``, ``spill_count``/``spill_bytes_total`` and
    ``restore_count``/``restore_bytes_total`` since start, ``spill_dir``, ``inline_threshold``.
    With ``objects=True``, ``object_list`` has one dict per stored value (``object`` id,
    ``size``, ``spilled``, ``leases``, ...). Values smaller than the inline threshold are not in
    the store and not counted.

    >>> import numpy as np
    >>> ref = volley.put(np.zeros(1_000_000))
    >>> volley.object_store_stats()["objects"]
    1
    """
    ensure_init()
    return _core.store_stats(objects)


def wait(
    refs: Sequence[ObjectRef[R]],
    *,
    num_returns: int = 1,
    timeout: float | None = None,
    fetch_local: bool = True,
) -> tuple[list[ObjectRef[R]], list[ObjectRef[R]]]:
    """Waits until ``num_returns`` refs are ready or ``timeout`` seconds pass.

    Returns ``(ready, not_ready)``, each in the order given; ``ready`` holds at most
    ``num_returns`` refs. A ref is ready once its task finished (a task that raised is ready:
    ``get`` raises its error).

    ``fetch_local`` (default True, as in Ray): a ready ref's value is also on this node, so
    ``get`` on it returns without a transfer. On one machine every finished value is already
    local (in this node's memory or shared-memory store), so it changes nothing there. In a
    cluster, a value made on another node is pulled here before its ref counts as ready (a ref
    whose pull has not finished within ``timeout`` is in ``not_ready``). With
    ``fetch_local=False`` a ref is ready as soon as its value exists anywhere in the cluster,
    and nothing is pulled.

    ``refs`` may also hold ``ObjectRefGenerator``s (a streaming task's), as in Ray: one is
    ready once its next item is (``next`` then returns that item's ref at once), or once the
    stream has ended (``next`` raises ``StopIteration``).

    >>> @volley.remote
    ... def after(seconds):
    ...     import time
    ...     time.sleep(seconds)
    ...     return seconds
    >>> ready, rest = volley.wait([after.remote(0), after.remote(3)], num_returns=1)
    >>> volley.get(ready), len(rest)
    ([0], 1)
    """
    if isinstance(refs, (list, tuple)) and any(type(r) is not ObjectRef for r in refs):
        if any(isinstance(r, ObjectRefGenerator) for r in refs):
            return _wait_streams(list(refs), num_returns, timeout, fetch_local)
    refs = _refs_list(refs, "wait")
    if len(set(refs)) != len(refs):
        raise ValueError("wait() got the same ObjectRef twice")
    if not isinstance(fetch_local, bool):
        raise TypeError(f"fetch_local must be True or False, not {fetch_local!r}")
    if not refs:
        return [], []
    if not isinstance(num_returns, int) or not 1 <= num_returns <= len(refs):
        raise ValueError(f"num_returns must be between 1 and {len(refs)}, not {num_returns!r}")
    if timeout is not None and timeout < 0:
        raise ValueError("timeout must be >= 0")
    deadline = None if timeout is None else time.monotonic() + timeout
    flags = _core.wait(refs, num_returns, timeout)
    ready: list[ObjectRef] = []
    not_ready: list[ObjectRef] = []
    for r, ok in zip(refs, flags):
        (ready if ok and len(ready) < num_returns else not_ready).append(r)
    if fetch_local and ready and may_be_remote():
        local = _fetch(ready, deadline)
        if len(local) < len(ready):
            ready, not_ready = [r for r in refs if r in local], [r for r in refs if r not in local]
    return ready, not_ready


def _wait_streams(
    items: list, num_returns: int, timeout: float | None, fetch_local: bool
) -> tuple[list, list]:
    """``wait`` over refs and ``ObjectRefGenerator``s: a generator is ready once its next
    step (an item, or the end) is there, fetched by a thread of its own."""
    for r in items:
        if type(r) is not ObjectRef and not isinstance(r, ObjectRefGenerator):
            raise TypeError(
                f"wait takes ObjectRefs and ObjectRefGenerators, but got a {type(r).__name__}"
            )
    if len(set(items)) != len(items):
        raise ValueError("wait() got the same ObjectRef (or ObjectRefGenerator) twice")
    if not isinstance(fetch_local, bool):
        raise TypeError(f"fetch_local must be True or False, not {fetch_local!r}")
    if not isinstance(num_returns, int) or not 1 <= num_returns <= len(items):
        raise ValueError(f"num_returns must be between 1 and {len(items)}, not {num_returns!r}")
    if timeout is not None and timeout < 0:
        raise ValueError("timeout must be >= 0")
    # Imported here, not with volley: `import volley` stays fast without concurrent.futures.
    from concurrent.futures import FIRST_COMPLETED
    from concurrent.futures import wait as wait_futures

    deadline = None if timeout is None else time.monotonic() + timeout
    refs = [r for r in items if type(r) is ObjectRef]
    gens = [g for g in items if type(g) is not ObjectRef]
    while True:
        flags = dict(zip(refs, _core.wait(refs, len(refs), 0.0))) if refs else {}
        ready_gens = {id(g) for g in gens if g._is_ready()}
        count = sum(flags.values()) + len(ready_gens)
        left = None if deadline is None else deadline - time.monotonic()
        if count >= num_returns or (left is not None and left <= 0):
            break
        pending_gens = [g._ahead for g in gens if id(g) not in ready_gens]
        pending_refs = [r for r in refs if not flags[r]]
        if not pending_gens:  # only refs can make up the rest: the engine waits for them
            _core.wait(pending_refs, num_returns - count, left)
        elif not pending_refs:
            wait_futures(pending_gens, timeout=left, return_when=FIRST_COMPLETED)
        else:  # both: no single call waits for either; look again every 20 ms
            _core.wait(pending_refs, 1, 0.02 if left is None else min(0.02, left))
    ready: list = []
    for r in items:
        ok = flags.get(r, False) if type(r) is ObjectRef else id(r) in ready_gens
        if ok and len(ready) < num_returns:
            ready.append(r)
    if fetch_local and may_be_remote():
        plain = [r for r in ready if type(r) is ObjectRef]
        local = _fetch(plain, deadline) if plain else set()
        ready = [r for r in ready if type(r) is not ObjectRef or r in local]
    taken = {id(r) for r in ready}
    return ready, [r for r in items if id(r) not in taken]


def may_be_remote() -> bool:
    """Whether a finished value may live on another node: in a cluster's driver, or in a
    worker (whose node may be part of a cluster)."""
    return _core.mode() == "worker" or bool(_core.cluster_nodes())


def _fetch(refs: list[ObjectRef], deadline: float | None) -> set[ObjectRef]:
    """Brings the values of finished refs to this node (as ``get`` does, without unpickling
    them); returns the refs whose values are here by ``deadline``. A ref whose value is an
    error (a lost object, ...) counts as here: ``get`` raises that error at once."""

    def left() -> float | None:
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    try:
        _core.get(refs, left())
        return set(refs)
    except TimeoutError:
        timed_out = True
    except Exception:
        timed_out = False  # one of them is an error: look at each
    here = set()
    for r in refs:
        try:
            _core.get([r], 0.0 if timed_out else left())
        except TimeoutError:
            continue
        except Exception:
            pass
        here.add(r)
    return here


#: How long ``cancel`` waits for a task on another node to be cancelled there.
CANCEL_WAIT_S = 2.0


def cancel(ref: ObjectRef, *, force: bool = False) -> None:
    """Cancels the task behind ``ref``; its ``get`` then raises ``TaskCancelledError``.

    A task still waiting is dropped. A running task gets a ``KeyboardInterrupt``, and another
    each second while it still runs (CPython can lose a signal that lands at the wrong moment;
    a task that catches the first one gets the next); with ``force=True`` its worker process is
    killed instead (and replaced). A finished task is left alone.

    When the task was sent to another node (or ``cancel`` is called inside a task), the
    request travels there: ``cancel`` waits until the task's ref is ready, up to
    ``CANCEL_WAIT_S`` (2 s), so that a task queued there does not start after ``cancel``
    returns. A running task that ignores the interrupt for longer finishes cancelling later.

    >>> @volley.remote
    ... def sleepy(seconds):
    ...     import time
    ...     time.sleep(seconds)
    >>> ref = sleepy.remote(60)
    >>> volley.cancel(ref)
    >>> volley.get(ref)
    Traceback (most recent call last):
    volley.exceptions.TaskCancelledError: ...
    """
    if type(ref) is not ObjectRef:
        raise TypeError(f"cancel() takes an ObjectRef, not {type(ref).__name__}")
    if _core.cancel(ref, force):
        wait([ref], timeout=CANCEL_WAIT_S, fetch_local=False)


def cancel_soon(ref: ObjectRef, force: bool = False) -> None:
    """``cancel`` without waiting for a task on another node to be cancelled there (the
    adapters stopping work nobody waits for).

    >>> @volley.remote
    ... def nap():
    ...     import time; time.sleep(60)
    >>> ref = nap.remote()
    >>> library.cancel_soon(ref, force=True)
    >>> volley.get(ref)
    Traceback (most recent call last):
    volley.exceptions.TaskCancelledError: ...
    """
    _core.cancel(ref, force)
