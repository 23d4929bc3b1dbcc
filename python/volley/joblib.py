"""A joblib backend: ``Parallel`` runs its batches as volley tasks.

Before::

    from joblib import Parallel, delayed
    Parallel(n_jobs=-1)(delayed(f)(x) for x in xs)

After::

    import volley.joblib  # registers the "volley" backend
    from joblib import Parallel, delayed, parallel_config
    with parallel_config(backend="volley"):
        Parallel(n_jobs=-1)(delayed(f)(x) for x in xs)

- joblib's auto-batching works as with loky (small calls are grouped into batches sized from
  their measured duration); ``return_as="generator"`` and ``"generator_unordered"`` work.
- Large numpy arguments are put in the object store once per ``Parallel`` call and reach the
  workers without a copy (read-only, as loky's memmaps are): no temporary files.
- A ``Parallel`` inside a task runs on volley too; a task waiting for its inner calls lends its
  CPU to them, so nesting cannot deadlock. One level only: a ``Parallel`` inside those inner
  tasks runs sequentially in its task (joblib's rule for loky is threads, then sequential), so
  a function that calls ``Parallel`` on itself ends in ``RecursionError``, as with loky, not
  in one worker process per call.
- ``initializer`` and ``initargs`` (of ``Parallel`` or ``parallel_config``) run once in each
  worker process before the first batch of that ``Parallel`` call it runs.
- ``verbose > 0`` shows a volley progress bar (instead of joblib's text lines).
- On a cluster (``volley.init(address=...)``), the batches run on every node.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from typing import Any, Callable

from joblib.parallel import (
    AutoBatchingMixin,
    ParallelBackendBase,
    SequentialBackend,
    register_parallel_backend,
)

from . import get, put, remote
from .exceptions import TaskError, original_error
from .library import ProgressBar, cancel_soon, init_if_needed, lending_cpu, total_cpus

__all__ = ["VolleyBackend", "register"]

# numpy arguments at least this large go through the object store once per Parallel call.
_SHARE_BYTES = 1 << 20

# Nesting levels that run on volley: the outer call's tasks (level 0) and the calls made inside
# them (level 1). Deeper calls run sequentially in their task: a recursive Parallel ends in
# RecursionError, never in a worker process per call.
MAX_VOLLEY_NESTING_LEVEL = 1

# The keyword arguments joblib's Parallel and parallel_config hand to a backend. Memmapping
# settings are for loky's temporary files (volley shares large arrays through its store);
# context is a multiprocessing start method (volley starts its own workers).
_KNOWN_KWARGS = {"max_nbytes", "temp_folder", "mmap_mode", "prefer", "require", "verbose"}
_KNOWN_KWARGS |= {"initializer", "initargs", "context"}

# Per worker process: the Parallel calls whose initializer has run here (oldest first, bounded).
_initialized: dict[str, None] = {}
_init_lock = threading.Lock()


def _fetch(ref: Any) -> Any:
    return get(ref)


class _Shared:
    """A large array already in the object store: unpickles as the array (zero-copy)."""

    def __init__(self, ref: Any):
        self.ref = ref

    def __reduce__(self):
        return (_fetch, (self.ref,))


def _run_initializer(init: tuple[str, Callable, tuple]) -> None:
    """Runs a Parallel call's initializer in this process unless it ran here already."""
    token, initializer, initargs = init
    with _init_lock:
        if token in _initialized:
            return
        initializer(*initargs)
        _initialized[token] = None
        while len(_initialized) > 4096:
            del _initialized[next(iter(_initialized))]


@remote(max_retries=3)
def _run_batch(batch: Any, init: tuple[str, Callable, tuple] | None = None) -> Any:
    if init is not None:
        # Imported here, not named as a global: loading this function in a worker imports
        # nothing, so it is quick (a cancel that interrupts a worker while it loads a task's
        # function leaves that worker unable to run the function: "was never sent").
        from volley.joblib import _run_initializer

        _run_initializer(init)
    return batch()


class VolleyBackend(AutoBatchingMixin, ParallelBackendBase):
    """joblib's ``Parallel`` on volley (see the module's notes). Made by joblib when a
    ``parallel_config(backend="volley")`` (or ``Parallel(backend="volley")``) is active.

    >>> import volley.joblib
    >>> from joblib import Parallel, delayed, parallel_config
    >>> with parallel_config(backend="volley"):
    ...     Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(3))
    [0, 1, 2]
    """

    supports_retrieve_callback = True
    supports_inner_max_num_threads = False
    supports_sharedmem = False
    uses_threads = False
    default_n_jobs = -1

    def __init__(self, nesting_level: int | None = None, **kwargs: Any):
        super().__init__(nesting_level=nesting_level, **kwargs)
        self._init_state()

    def _init_state(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[Any, None] = {}
        self._shared: dict[int, tuple[Any, Any]] = {}
        self._bar = None
        self._verbose = None
        self._init: tuple[str, Callable, tuple] | None = None
        self.parallel = None

    def __getstate__(self) -> dict:
        # Travels inside each batch (joblib sets it as the backend of nested calls): the
        # settings only.
        return {"nesting_level": self.nesting_level, "backend_kwargs": self.backend_kwargs}

    def __setstate__(self, state: dict) -> None:
        # AutoBatchingMixin.__init__ runs ParallelBackendBase.__init__, which resets the
        # nesting level: set the state after it.
        AutoBatchingMixin.__init__(self)
        self.nesting_level = state["nesting_level"]
        self.backend_kwargs = state["backend_kwargs"]
        self.inner_max_num_threads = None
        self._init_state()

    # ------------------------------------------------------------------ sizing

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        cpus = total_cpus()
        if n_jobs is None:
            return cpus
        if n_jobs < 0:
            return max(cpus + 1 + n_jobs, 1)
        return n_jobs

    def configure(self, n_jobs: int = 1, parallel: Any = None, **backend_kwargs: Any) -> int:
        """Starts volley if needed; takes ``initializer``/``initargs`` for this call. Raises
        ``TypeError`` for keyword arguments joblib's backends do not take."""
        kwargs = {**self.backend_kwargs, **backend_kwargs}
        unknown = sorted(set(kwargs) - _KNOWN_KWARGS)
        if unknown:
            raise TypeError(f"the volley joblib backend takes no argument {', '.join(unknown)}")
        initializer, initargs = kwargs.get("initializer"), kwargs.get("initargs") or ()
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be callable, not {type(initializer).__name__}")
        if not isinstance(initargs, (tuple, list)):
            raise TypeError(f"initargs must be a tuple, not {type(initargs).__name__}")
        n = self.effective_n_jobs(n_jobs)
        init_if_needed()
        self.parallel = parallel
        self._init = None
        if initializer is not None:
            self._init = (uuid.uuid4().hex, initializer, tuple(initargs))
        return n

    def get_nested_backend(self) -> tuple[Any, int | None]:
        """The backend of a ``Parallel`` inside this one's tasks: volley one level deep, then
        joblib's ``SequentialBackend`` (which keeps the nesting level)."""
        level = (self.nesting_level or 0) + 1
        if level > MAX_VOLLEY_NESTING_LEVEL:
            return SequentialBackend(nesting_level=level), None
        return VolleyBackend(nesting_level=level), None

    # ------------------------------------------------------------------ a call

    def start_call(self) -> None:
        p = self.parallel
        verbose = getattr(p, "verbose", 0) or 0
        if 0 < verbose < 10 and self.nesting_level in (None, 0):
            # Our bar replaces joblib's progress lines for this call.
            self._verbose, p.verbose = verbose, 0
            self._bar = ProgressBar(None, "joblib")

    def stop_call(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._verbose is not None and self.parallel is not None:
            self.parallel.verbose = self._verbose
            self._verbose = None
        self._shared.clear()

    def terminate(self) -> None:
        self._shared.clear()
        self.reset_batch_stats()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Cancels the batches still pending (after an error, a timeout, or when a generator
        is dropped). Running ones lose their worker process, as loky kills its workers on
        abort: an interrupt can miss a batch that is just starting, which then runs on."""
        with self._lock:
            pending = list(self._pending)
            self._pending.clear()
        for ref in pending:
            try:
                cancel_soon(ref, force=True)
            except Exception:
                pass

    # ------------------------------------------------------------------ batches

    def _share_large_arrays(self, batch: Any) -> None:
        """Large numpy arguments go into the object store once; the batch carries refs."""
        items = getattr(batch, "items", None)
        if not items:
            return
        try:
            import numpy as np
        except ImportError:
            return

        def share(v: Any) -> Any:
            if type(v) is np.ndarray and v.nbytes >= _SHARE_BYTES and v.dtype != object:
                hit = self._shared.get(id(v))
                if hit is None or hit[0] is not v:
                    hit = (v, _Shared(put(v)))
                    self._shared[id(v)] = hit
                return hit[1]
            return v

        for i, (f, args, kwargs) in enumerate(items):
            new_args = tuple(share(a) for a in args)
            new_kwargs = {k: share(v) for k, v in kwargs.items()}
            items[i] = (f, new_args, new_kwargs)

    def submit(self, func: Any, callback: Any = None) -> Any:
        self._share_large_arrays(func)
        ref = _run_batch.remote(func, self._init)
        with self._lock:
            self._pending[ref] = None
        fut = ref.future()
        size = len(func) if hasattr(func, "__len__") else 1

        def done(f: Any, ref: Any = ref) -> None:
            with self._lock:
                self._pending.pop(ref, None)
            if self._bar is not None:
                self._bar.update(size)
            if callback is not None:
                callback(f)

        fut.add_done_callback(done)
        return fut

    def retrieve_result_callback(self, future: Any) -> Any:
        try:
            return future.result()
        except TaskError as e:
            if e.cause is None or isinstance(e.cause, Exception):
                raise  # a TaskError that is also of the task's exception class
            # KeyboardInterrupt, SystemExit: raised as themselves, as loky does.
            err = original_error(e)
            raise err from err.__cause__

    def retrieval_context(self) -> contextlib.AbstractContextManager:
        """Inside a task, joblib waits for the inner calls by polling: the task's CPU is lent
        to them meanwhile (no deadlock when every CPU runs an outer call)."""

        def running() -> list:
            with self._lock:
                return list(self._pending)

        return lending_cpu(running, "volley-joblib-lend")


def register() -> None:
    """Registers the ``"volley"`` joblib backend (done when ``volley.joblib`` is imported).

    >>> volley.joblib.register()
    """
    register_parallel_backend("volley", VolleyBackend)


register()
