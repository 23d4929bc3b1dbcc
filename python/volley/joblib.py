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
  CPU to them, so nesting cannot deadlock.
- ``verbose > 0`` shows a volley progress bar (instead of joblib's text lines).
- On a cluster (``volley.init(address=...)``), the batches run on every node.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

from joblib.parallel import (
    AutoBatchingMixin,
    ParallelBackendBase,
    register_parallel_backend,
)

from . import _api, _core
from ._map import total_cpus

__all__ = ["VolleyBackend", "register"]

# numpy arguments at least this large go through the object store once per Parallel call.
_SHARE_BYTES = 1 << 20


def _fetch(ref: Any) -> Any:
    return _api.get(ref)


class _Shared:
    """A large array already in the object store: unpickles as the array (zero-copy)."""

    def __init__(self, ref: Any):
        self.ref = ref

    def __reduce__(self):
        return (_fetch, (self.ref,))


@_api.remote(max_retries=3)
def _run_batch(batch: Any) -> Any:
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
        self.parallel = None

    def __getstate__(self) -> dict:
        # Travels inside each batch (joblib sets it as the backend of nested calls): the
        # settings only.
        return {"nesting_level": self.nesting_level, "backend_kwargs": self.backend_kwargs}

    def __setstate__(self, state: dict) -> None:
        self.nesting_level = state["nesting_level"]
        self.backend_kwargs = state["backend_kwargs"]
        self.inner_max_num_threads = None
        AutoBatchingMixin.__init__(self)
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
        _api._ensure_init()
        self.parallel = parallel
        return self.effective_n_jobs(n_jobs)

    def get_nested_backend(self) -> tuple[Any, int | None]:
        return VolleyBackend(nesting_level=(self.nesting_level or 0) + 1), None

    # ------------------------------------------------------------------ a call

    def start_call(self) -> None:
        p = self.parallel
        verbose = getattr(p, "verbose", 0) or 0
        if 0 < verbose < 10 and self.nesting_level in (None, 0):
            from ._progress import Bar

            # Our bar replaces joblib's progress lines for this call.
            self._verbose, p.verbose = verbose, 0
            self._bar = Bar(None, "joblib")

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
        with self._lock:
            pending = list(self._pending)
            self._pending.clear()
        for ref in pending:
            try:
                _api._cancel_soon(ref)
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
                    hit = (v, _Shared(_api.put(v)))
                    self._shared[id(v)] = hit
                return hit[1]
            return v

        for i, (f, args, kwargs) in enumerate(items):
            new_args = tuple(share(a) for a in args)
            new_kwargs = {k: share(v) for k, v in kwargs.items()}
            items[i] = (f, new_args, new_kwargs)

    def submit(self, func: Any, callback: Any = None) -> Any:
        self._share_large_arrays(func)
        ref = _run_batch.remote(func)
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
        return future.result()

    @contextlib.contextmanager
    def retrieval_context(self):
        """Inside a task, joblib waits for the inner calls by polling: a thread blocks in volley
        on them meanwhile, so the task's CPU is lent to them (no deadlock when every CPU runs
        an outer call)."""
        if _core.mode() != "worker":
            yield
            return
        stop = threading.Event()

        def lend() -> None:
            while not stop.is_set():
                with self._lock:
                    refs = list(self._pending)
                if not refs:
                    time.sleep(0.002)
                    continue
                try:
                    _api.wait(refs, num_returns=1, timeout=0.05)
                except Exception:
                    time.sleep(0.002)

        t = threading.Thread(target=lend, name="volley-joblib-lend", daemon=True)
        t.start()
        try:
            yield
        finally:
            stop.set()
            t.join()


def register() -> None:
    """Registers the ``"volley"`` joblib backend (done when ``volley.joblib`` is imported).

    >>> volley.joblib.register()
    """
    register_parallel_backend("volley", VolleyBackend)


register()
