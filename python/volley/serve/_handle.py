"""Handles: calling a deployment from Python (a driver, a task, another deployment's replica).

``handle.remote(*args)`` (or ``handle.method.remote(...)``) picks a replica by the power of two
choices on this process's own count of ongoing calls per replica, submits the call to that
replica actor and returns a ``DeploymentResponse`` at once. The replica set comes from the
controller's document for the deployment in the head's key-value table, read again at most every
``REFRESH_S`` and at once after a replica is found dead. With no replica alive (scaled to zero,
or all being replaced) the call waits in this process while the controller starts one, and fails
with ``NoReplicaError`` naming the deployment if none comes within ``NO_REPLICA_WAIT_S``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import random
import threading
import time
import uuid
from typing import Any

import volley
from volley import library

from . import _context
from ._common import CONTROLLER_NAME, NAMESPACE, ReplicaStoppingError, deployment_key
from ._multiplex import models_prefix

#: How old the cached replica set may be before a call reads the controller's document again.
REFRESH_S = 0.1
#: How long a call waits for a replica when none is alive before it fails.
NO_REPLICA_WAIT_S = 60.0
#: How many replicas a call tries when the one it went to was already gone.
MAX_ATTEMPTS = 4
#: How old the replicas' published model sets may be before a call naming a model reads them
#: again (only calls with a ``multiplexed_model_id`` read them).
MODELS_REFRESH_S = 0.5
#: How long a model this process sent to a replica counts as there before the replica's own
#: document says so (it is loading it).
MODEL_SENT_S = 2.0
#: How long the first call naming a model waits for a replica to say its actor id (the key of
#: its model document).
ACTOR_ID_WAIT_S = 2.0

# Messages of ActorDiedError that say the call never ran on the replica: it was gone before the
# call came. (A replica the controller stops refuses calls once its drain began, with
# ReplicaStoppingError; one killed after the drain's timeout had the calls it killed running.)
_NOT_STARTED = ("no longer exists", "was stopped")


def _not_started(e: BaseException) -> bool:
    """Whether the failed call never ran, so that another replica may take it."""
    if isinstance(e, ReplicaStoppingError):
        return True
    if isinstance(e, volley.ActorCreationError):
        return False
    return isinstance(e, volley.ActorDiedError) and any(m in str(e) for m in _NOT_STARTED)


def _is_dead(r: _Replica) -> bool:
    st = volley.actor_state(r.handle)
    return st is not None and st["state"] == "DEAD"


class NoReplicaError(volley.VolleyError):
    """A deployment has no replica to take a call (deleted, or none alive in time)."""


class BackPressureError(volley.VolleyError):
    """A call refused at the handle: every replica runs ``max_ongoing_requests`` calls of this
    process and ``max_queued_requests`` more already wait."""


class DeploymentResponse:
    """The future result of a handle call: ``.result(timeout_s=None)`` waits for it, ``await
    response`` in async code; pass it to another handle call and the replica there gets its
    value.

    >>> from volley import serve
    >>> @serve.deployment
    ... def double(x):
    ...     return 2 * x
    >>> h = serve.run(double.bind(), name="doubler", route_prefix=None)
    >>> h.remote(21).result()
    42
    >>> serve.delete("doubler")
    """

    def __init__(self, router: _Router, method: str) -> None:
        self._router = router
        self._method = method
        self._out: concurrent.futures.Future = concurrent.futures.Future()
        self._ref: Any = None
        self._replica: _Replica | None = None  # counted as ongoing there until released
        self._submitted = threading.Event()

    def result(self, timeout_s: float | None = None) -> Any:
        """The call's value (raises what the deployment's method raised); ``TimeoutError``
        after ``timeout_s`` seconds."""
        ref = self._ref
        if ref is not None and not self._out.done():
            # Fast path: wait for the ref in this thread (no hop through the completing thread).
            try:
                value = volley.get(ref, timeout=timeout_s)
                self._router.release(self, ref)
                return value
            except volley.GetTimeoutError:
                raise TimeoutError(
                    f"{self._router.what()}.{self._method} did not answer within {timeout_s} s"
                ) from None
            except BaseException as e:
                if not _not_started(e):
                    self._router.release(self, ref, e)
                    raise
                # Another replica takes the call: its result comes through _out.
        try:
            return self._out.result(timeout_s)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(
                f"{self._router.what()}.{self._method} did not answer within {timeout_s} s"
            ) from None

    def __await__(self):
        return asyncio.wrap_future(self._out).__await__()

    def __reduce__(self):
        raise TypeError(
            f"a DeploymentResponse ({self._router.what()}.{self._method}) travels only as an "
            "argument of a handle call itself, not inside another value: pass its "
            ".result() (or await it) instead"
        )

    def _object_ref(self) -> Any:
        """The ref of the call (to pass it on as an argument); waits until it is submitted."""
        if not self._submitted.wait(NO_REPLICA_WAIT_S + 5):
            raise NoReplicaError(f"{self._router.what()} took no call in time")
        if self._ref is None:  # the call failed before it reached a replica
            self._out.result()
        return self._ref

    def __repr__(self) -> str:
        return f"DeploymentResponse({self._router.what()}.{self._method})"


class DeploymentResponseGenerator:
    """The items of a streaming handle call (``handle.options(stream=True).method.remote()`` on
    a generator method), in order, as the replica yields them: iterate it (``for``), or
    ``async for`` in async code. An error the generator raised is raised at the item where it
    happened. Dropping it (or ``cancel()``) before its end stops the generator in the replica
    (``GeneratorExit`` or ``CancelledError`` there). The call counts as ongoing at its replica
    until its stream ends.

    >>> from volley import serve
    >>> @serve.deployment
    ... class Counter:
    ...     def count(self, n):
    ...         for i in range(n):
    ...             yield i
    >>> h = serve.run(Counter.bind(), name="streamer", route_prefix=None)
    >>> list(h.options(stream=True).count.remote(3))
    [0, 1, 2]
    >>> serve.delete("streamer")
    """

    def __init__(self, router: _Router, method: str, args: tuple, kwargs: dict) -> None:
        self._router = router
        self._method = method
        self._key = b"c" + uuid.uuid4().hex.encode()
        self._call: tuple[tuple, dict] | None = (args, kwargs)
        # Kept until the first item: a call whose replica was gone before it ran goes to
        # another (as a plain call does), at most MAX_ATTEMPTS times in all.
        self._spare: tuple[tuple, dict] | None = (args, kwargs)
        self._attempt = 0
        self._gen: Any = None
        self._replica: _Replica | None = None
        self._done = False
        self._lock = threading.Lock()
        # Sent at once when a replica is alive; else at the first item (which waits for one).
        r = router.pick_live(0.0)
        if r is not None:
            self._send(r)

    def _send(self, r: _Replica) -> None:
        with self._lock:
            if self._gen is not None or self._call is None:
                return
            args, kwargs = self._call
            self._gen = r.handle.handle_request_stream.remote(
                self._key, self._method, *args, **kwargs
            )
            self._call = None
            self._replica = r
            with self._router.lock:
                r.ongoing += 1

    def _started(self) -> Any:
        if self._gen is None:
            r = self._router.pick_live(NO_REPLICA_WAIT_S)
            if r is None:
                raise NoReplicaError(
                    f"{self._router.what()} has no live replica: waited {NO_REPLICA_WAIT_S:.0f} "
                    "s for one to start (see serve.status())"
                )
            self._send(r)
        return self._gen

    def _finish(self, error: BaseException | None = None) -> None:
        """The stream is over (or abandoned): it counts no more at its replica (once)."""
        with self._lock:
            if self._done:
                return
            self._done = True
            r, self._replica = self._replica, None
        if r is not None:
            with self._router.lock:
                r.ongoing -= 1
                if isinstance(error, (volley.ActorDiedError, ReplicaStoppingError)):
                    self._router.dead.add(r.name)
                    self._router.checked = 0.0

    def __iter__(self) -> DeploymentResponseGenerator:
        return self

    def _again(self, error: BaseException) -> bool:
        """Whether the call goes to another replica after ``error``: its replica was gone (or
        stopping) before it ran, and no item came yet. Then it is set to be sent again."""
        with self._lock:
            spare = self._spare
            if spare is None or self._attempt + 1 >= MAX_ATTEMPTS or not _not_started(error):
                return False
        self._finish(error)  # its replica counts it no more, and is known dead
        with self._lock:
            if self._spare is None:  # cancelled meanwhile
                return False
            self._attempt += 1
            self._done, self._gen, self._call = False, None, spare
        return True

    def _got(self, item: Any) -> Any:
        self._spare = None  # it ran: it is never sent again
        return item

    def __next__(self) -> Any:
        while True:
            if self._done:
                raise StopIteration
            gen = self._started()
            try:
                ref = next(gen)
            except StopIteration:
                self._finish()
                raise
            except BaseException as e:
                if self._again(e):
                    continue
                self._finish(e)
                raise
            try:
                return self._got(volley.get(ref))
            except BaseException as e:
                if self._again(e):
                    continue
                self._finish(e)
                raise

    def __aiter__(self) -> DeploymentResponseGenerator:
        return self

    async def __anext__(self) -> Any:
        while True:
            if self._done:
                raise StopAsyncIteration
            gen = self._gen
            if gen is None:
                gen = await asyncio.to_thread(self._started)
            try:
                ref = await gen.__anext__()
            except StopAsyncIteration:
                self._finish()
                raise
            except asyncio.CancelledError:
                raise
            except BaseException as e:
                if self._again(e):
                    continue
                self._finish(e)
                raise
            try:
                return self._got(await ref)
            except asyncio.CancelledError:
                raise
            except BaseException as e:
                if self._again(e):
                    continue
                self._finish(e)
                raise

    def cancel(self) -> None:
        """Stops the stream: the replica's generator is closed (``GeneratorExit`` for a sync
        one, ``CancelledError`` for an async one); iterating it then ends."""
        with self._lock:
            r = self._replica
            self._call = None  # not sent yet: it never will be
            self._spare = None  # nor sent again
            done = self._done
        if done:
            return
        if r is not None:
            try:
                r.handle.cancel_stream.remote(self._key)
            except Exception:  # volley is shut down: the replica is gone too
                pass
        self._finish()

    def __del__(self) -> None:
        try:
            self.cancel()
        except Exception:
            pass

    def __reduce__(self):
        raise TypeError(
            f"a DeploymentResponseGenerator ({self._router.what()}.{self._method}) cannot be "
            "passed on: iterate it where it was made"
        )

    def __repr__(self) -> str:
        return f"DeploymentResponseGenerator({self._router.what()}.{self._method})"


class _Replica:
    __slots__ = ("name", "handle", "ongoing", "actor_id", "models", "sent")

    def __init__(self, name: str, handle: Any) -> None:
        self.name = name
        self.handle = handle
        self.ongoing = 0
        self.actor_id: str | None = None  # asked once, when a call first names a model
        self.models: frozenset[str] = frozenset()  # as the replica last published them
        self.sent: dict[str, float] = {}  # model -> when this process last sent it here

    def holds(self, model: str, now: float) -> bool:
        return model in self.models or now - self.sent.get(model, -1e9) < MODEL_SENT_S

    def held(self, now: float) -> int:
        """How many models it holds (or was sent lately)."""
        fresh = {m for m, t in self.sent.items() if now - t < MODEL_SENT_S}
        return len(self.models | fresh)


class _Router:
    """This process's view of one deployment's replicas, and its count of calls on each."""

    def __init__(self, app: str, deployment: str) -> None:
        self.app = app
        self.deployment = deployment
        self.lock = threading.Lock()
        self.replicas: list[_Replica] = []
        self.version = -1
        self.epoch = ""
        self.max_ongoing = 1
        self.max_queued = -1
        self.checked = 0.0
        self.dead: set[str] = set()
        self.missing = False
        self.pending: list[tuple[DeploymentResponse, tuple, dict, int]] = []
        self.waiter: threading.Thread | None = None
        self.models_checked = 0.0

    def what(self) -> str:
        return f"deployment {self.deployment!r} of application {self.app!r}"

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.checked < REFRESH_S:
            return
        self.checked = now
        raw = library.kv_get(deployment_key(self.app, self.deployment), namespace=NAMESPACE)
        if raw is None:
            with self.lock:
                self.missing = True
                self.replicas = []
            return
        doc = json.loads(raw)
        with self.lock:
            self.missing = False
            self.max_ongoing = int(doc["max_ongoing_requests"])
            self.max_queued = int(doc["max_queued_requests"])
            if doc["epoch"] != self.epoch:  # another controller (serve or volley restarted)
                self.epoch = doc["epoch"]
                self.replicas, self.dead, self.version = [], set(), -1
            if doc["version"] == self.version:
                return
            self.dead &= set(doc["replicas"])  # the controller dropped the others already
            known = {r.name: r for r in self.replicas}
        fresh = []
        unresolved = 0
        for name in doc["replicas"]:
            r = known.get(name)
            if r is None and name not in self.dead:
                try:
                    r = _Replica(name, volley.get_actor(name, namespace=NAMESPACE))
                except ValueError:
                    # Stopped since the document was written (or, with a head that did not
                    # answer its creator, not listed yet): asked again at the next refresh.
                    unresolved += 1
                    continue
            if r is not None:
                fresh.append(r)
        with self.lock:
            self.replicas = fresh
            self.version = doc["version"] if not unresolved else -1

    def refresh_models(self) -> None:
        """Reads the model sets the replicas publish (``_multiplex``), at most every
        ``MODELS_REFRESH_S``; a replica's actor id (the documents' key) is asked once."""
        now = time.monotonic()
        if now - self.models_checked < MODELS_REFRESH_S:
            return
        self.models_checked = now
        with self.lock:
            replicas = list(self.replicas)
        asked = [(r, r.handle.stats.remote()) for r in replicas if r.actor_id is None]
        for r, ref in asked:  # once per replica and process (a round trip each, at once)
            try:
                doc = volley.get(ref, timeout=ACTOR_ID_WAIT_S)
            except Exception:  # busy, or gone: routed without its models until next time
                continue
            r.actor_id = doc["actor_id"]
        prefix = models_prefix(self.app, self.deployment)
        held: dict[str, frozenset[str]] = {}
        for key in library.kv_keys(prefix, namespace=NAMESPACE):
            raw = library.kv_get(key, namespace=NAMESPACE)
            if raw is not None:
                held[str(key)[len(prefix) :]] = frozenset(json.loads(raw)["models"])
        for r in replicas:
            if r.actor_id:
                r.models = held.get(r.actor_id, frozenset())

    def pick_live(self, wait_s: float) -> _Replica | None:
        """A live replica (skipping those known dead), waiting up to ``wait_s`` for one while
        telling the controller a call waits (scale from zero); ``None`` if none came.
        Raises ``NoReplicaError`` if the deployment does not exist."""
        deadline = time.monotonic() + wait_s
        told = 0.0
        force = False
        while True:
            self.refresh(force)
            if self.missing:
                raise NoReplicaError(f"{self.what()} does not exist (deleted, or never deployed)")
            r = self.pick()
            while r is not None and _is_dead(r):
                with self.lock:
                    self.dead.add(r.name)
                self.checked = 0.0
                r = self.pick()
            now = time.monotonic()
            if r is not None or now >= deadline:
                return r
            if now - told > 0.5:  # the autoscaler counts the calls waiting here
                told = now
                try:
                    controller = volley.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
                    controller.note_waiting.remote(self.app, self.deployment, 1)
                except ValueError:
                    raise NoReplicaError(f"serve is shut down: {self.what()} is gone") from None
            time.sleep(0.02)
            force = True

    def pick(self, model: str = "") -> _Replica | None:
        with self.lock:
            live = [r for r in self.replicas if r.name not in self.dead]
        if not live:
            return None
        if model:
            live = self._for_model(live, model)
        if len(live) == 1:
            return live[0]
        a, b = random.sample(live, 2)
        return a if a.ongoing <= b.ongoing else b

    def _for_model(self, live: list[_Replica], model: str) -> list[_Replica]:
        """The replicas a call for ``model`` chooses among: those that hold it and have room;
        when none holds it, those that hold the fewest models; when all that hold it are full,
        any."""
        try:
            self.refresh_models()
        except Exception:  # the head is unreachable: route without affinity
            return live
        now = time.monotonic()
        holders = [r for r in live if r.holds(model, now)]
        free = [r for r in holders if r.ongoing < self.max_ongoing]
        if free:
            return free
        if holders:
            return live
        counts = [r.held(now) for r in live]
        fewest = min(counts)
        return [r for r, n in zip(live, counts) if n == fewest]

    def submit(self, resp: DeploymentResponse, args: tuple, kwargs: dict, attempt: int) -> None:
        try:
            self.refresh()
        except Exception as e:  # volley is shut down, the head is unreachable, ...
            resp._submitted.set()
            resp._out.set_exception(e)
            return
        if self.missing:
            resp._submitted.set()
            resp._out.set_exception(
                NoReplicaError(f"{self.what()} does not exist (deleted, or never deployed)")
            )
            return
        meta = kwargs.get(_context.META_KWARG)
        model = meta[1] if meta else ""
        r = self.pick(model)
        while r is not None and _is_dead(r):  # known dead here: skip it before sending
            with self.lock:
                self.dead.add(r.name)
            self.checked = 0.0
            r = self.pick(model)
        if r is None:
            self._wait_for_replica(resp, args, kwargs, attempt)
            return
        if self.max_queued >= 0 and attempt == 0:
            with self.lock:
                queued = sum(max(0, x.ongoing - self.max_ongoing) for x in self.replicas)
            if queued >= self.max_queued:
                resp._submitted.set()
                resp._out.set_exception(
                    BackPressureError(
                        f"{self.what()} is overloaded: {queued} calls of this process wait "
                        f"beyond max_ongoing_requests={self.max_ongoing} per replica "
                        f"(max_queued_requests={self.max_queued}); retry later"
                    )
                )
                return
        try:
            ref = r.handle.handle_request.remote(resp._method, *args, **kwargs)
        except Exception as e:
            resp._submitted.set()
            resp._out.set_exception(e)
            return
        with self.lock:
            r.ongoing += 1
            resp._replica = r
            resp._ref = ref
            if model:
                now = time.monotonic()
                r.sent[model] = now
                if len(r.sent) > 64:  # many models: forget those long sent
                    r.sent = {m: t for m, t in r.sent.items() if now - t < MODEL_SENT_S}
        resp._submitted.set()
        ref.future().add_done_callback(
            lambda f: self._done(f, r, resp, args, kwargs, attempt),
        )

    def release(self, resp: DeploymentResponse, ref: Any, error: BaseException | None = None):
        """The call through ``ref`` is over: it counts no more at its replica (once, whether
        the caller or the completing thread sees it first). An ``error`` that says the replica
        is gone or stopping keeps later calls away from it."""
        with self.lock:
            r = resp._replica
            if resp._ref is not ref or r is None:
                return
            r.ongoing -= 1
            resp._replica = None
            if isinstance(error, (volley.ActorDiedError, ReplicaStoppingError)):
                self.dead.add(r.name)  # (the engine may not say so for another node's actor)
                self.checked = 0.0

    def _done(self, f: concurrent.futures.Future, r: _Replica, resp, args, kwargs, attempt):
        e = f.exception()
        self.release(resp, resp._ref, e)
        if e is None:
            resp._out.set_result(f.result())
            return
        if isinstance(e, (volley.ActorDiedError, ReplicaStoppingError)):
            with self.lock:  # (released by the caller first: its error said so there too)
                self.dead.add(r.name)
            self.checked = 0.0
        if _not_started(e) and attempt + 1 < MAX_ATTEMPTS:
            self.submit(resp, args, kwargs, attempt + 1)  # another replica takes it
            return
        resp._out.set_exception(e)

    def _wait_for_replica(self, resp, args, kwargs, attempt) -> None:
        with self.lock:
            self.pending.append((resp, args, kwargs, attempt))
            if self.waiter is None:
                self.waiter = threading.Thread(
                    target=self._wait_loop, name="volley-serve-wait", daemon=True
                )
                self.waiter.start()

    def _wait_loop(self) -> None:
        deadline = time.monotonic() + NO_REPLICA_WAIT_S
        told = 0.0
        error: BaseException | None = None
        while True:
            try:
                self.refresh(force=True)
            except Exception as e:
                error = e
                break
            if self.missing:
                error = NoReplicaError(f"{self.what()} was deleted while calls waited for it")
                break
            if self.pick() is not None:
                break
            now = time.monotonic()
            if now > deadline:
                error = NoReplicaError(
                    f"{self.what()} has no live replica: waited {NO_REPLICA_WAIT_S:.0f} s "
                    "for one to start (see serve.status())"
                )
                break
            if now - told > 0.5:  # the autoscaler counts the calls waiting here
                told = now
                with self.lock:
                    n = len(self.pending)
                try:
                    controller = volley.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
                    controller.note_waiting.remote(self.app, self.deployment, n)
                except ValueError:
                    error = NoReplicaError(f"serve is shut down: {self.what()} is gone")
                    break
            time.sleep(0.02)
        with self.lock:
            pending, self.pending = self.pending, []
            self.waiter = None
        for resp, args, kwargs, attempt in pending:
            if error is None:
                self.submit(resp, args, kwargs, attempt)
            else:
                resp._submitted.set()
                resp._out.set_exception(error)


_routers: dict[tuple[str, str], _Router] = {}
_routers_lock = threading.Lock()


def _router(app: str, deployment: str) -> _Router:
    key = (app, deployment)
    r = _routers.get(key)
    if r is None:
        with _routers_lock:
            r = _routers.setdefault(key, _Router(app, deployment))
    return r


def _forget_routers() -> None:
    """After serve.shutdown or volley.shutdown: no cached replica survives."""
    with _routers_lock:
        _routers.clear()


def _as_arg(x: Any) -> Any:
    return x._object_ref() if isinstance(x, DeploymentResponse) else x


class DeploymentHandle:
    """Calls a deployment's replicas: ``handle.remote(*args)`` calls ``__call__`` (a
    function deployment: the function), ``handle.method.remote(...)`` another method; each returns
    a ``DeploymentResponse``. Handles pickle, so pass them to tasks and actors; a bound deployment
    passed to another's ``.bind(...)`` reaches its constructor as a handle.

    >>> from volley import serve
    >>> @serve.deployment
    ... class Counter:
    ...     def __init__(self):
    ...         self.n = 0
    ...     def incr(self, by=1):
    ...         self.n += by
    ...         return self.n
    >>> h = serve.run(Counter.bind(), name="counter", route_prefix=None)
    >>> h.incr.remote(5).result()
    5
    >>> serve.delete("counter")
    """

    def __init__(
        self,
        deployment_name: str,
        app_name: str,
        method_name: str = "__call__",
        multiplexed_model_id: str = "",
        stream: bool = False,
    ):
        self.deployment_name = deployment_name
        self.app_name = app_name
        self._method = method_name
        self._model_id = multiplexed_model_id
        self._stream = stream

    def options(
        self,
        *,
        method_name: str | None = None,
        multiplexed_model_id: str | None = None,
        stream: bool | None = None,
    ) -> DeploymentHandle:
        """This handle calling ``method_name`` by default, or for the model
        ``multiplexed_model_id`` (what ``serve.get_multiplexed_model_id()`` returns in the
        replica; calls for a model go to a replica that holds it when one has room); with
        ``stream=True`` its calls return a ``DeploymentResponseGenerator`` (the method must be
        a generator).

        >>> h = serve.run(Counter.bind(), name="counter2", route_prefix=None)
        >>> h.options(method_name="incr").remote(2).result()
        2
        >>> serve.delete("counter2")
        """
        model = self._model_id if multiplexed_model_id is None else multiplexed_model_id
        if not isinstance(model, str):
            raise TypeError(f"multiplexed_model_id is a str, not {type(model).__name__}")
        if stream is not None and not isinstance(stream, bool):
            raise TypeError(f"stream is True or False, not {stream!r}")
        return DeploymentHandle(
            self.deployment_name,
            self.app_name,
            method_name or self._method,
            model,
            self._stream if stream is None else stream,
        )

    def __getattr__(self, name: str) -> DeploymentHandle:
        if name.startswith("_"):
            raise AttributeError(name)
        return DeploymentHandle(
            self.deployment_name, self.app_name, name, self._model_id, self._stream
        )

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Calls the method on a replica; returns its ``DeploymentResponse`` at once (a
        ``DeploymentResponseGenerator`` with ``options(stream=True)``)."""
        args = tuple(_as_arg(a) for a in args)
        kwargs = {k: _as_arg(v) for k, v in kwargs.items()}
        # A call made while serving a request carries that request's id on (and a model id, if
        # any); the replica gives the others a fresh id (no extra argument on the common path).
        rid = _context.get_request_id()
        if rid or self._model_id:
            kwargs[_context.META_KWARG] = (rid or _context.new_request_id(), self._model_id)
        router = _router(self.app_name, self.deployment_name)
        if self._stream:
            return DeploymentResponseGenerator(router, self._method, args, kwargs)
        resp = DeploymentResponse(router, self._method)
        router.submit(resp, args, kwargs, 0)
        return resp

    def __reduce__(self):
        return (
            DeploymentHandle,
            (self.deployment_name, self.app_name, self._method, self._model_id, self._stream),
        )

    def __repr__(self) -> str:
        return f"DeploymentHandle(deployment={self.deployment_name!r}, app={self.app_name!r})"
