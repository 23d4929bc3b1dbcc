"""The errors volley raises; each names the task and says what happened."""

from __future__ import annotations

import pickle

from . import _core

__all__ = [
    "VolleyError",
    "TaskError",
    "WorkerCrashedError",
    "SerializationError",
    "GetTimeoutError",
    "TaskCancelledError",
    "ObjectLostError",
    "UnschedulableError",
    "WorkerStartError",
    "ObjectStoreFullError",
    "ActorCreationError",
    "ActorDiedError",
    "ActorError",
    "EndOfStreamError",
    "ChannelClosed",
    "SharedArrayError",
    "CacheDirError",
    # Ray's names (see docs/from-ray.md)
    "RayError",
    "RayTaskError",
    "RayActorError",
    "TaskUnschedulableError",
]


class VolleyError(Exception):
    """Base class of every volley error.

    >>> issubclass(volley.GetTimeoutError, volley.VolleyError)
    True
    """


class TaskError(VolleyError):
    """A task raised an exception.

    The instance raised by ``volley.get`` is *also* an instance of the original exception's class,
    so ``except ValueError`` catches a task's ``ValueError``; ``str()`` includes the remote
    traceback. The original exception is in ``.cause``.

    >>> @volley.remote
    ... def bad():
    ...     raise ValueError("no")
    >>> try:
    ...     volley.get(bad.remote())
    ... except ValueError as e:
    ...     assert isinstance(e, volley.TaskError)
    """

    def __init__(
        self,
        message: str = "",
        *,
        cause: BaseException | None = None,
        task_name: str = "",
        remote_traceback: str = "",
        pid: int = 0,
    ):
        super().__init__(message)
        self._message = message
        self.cause = cause
        self.task_name = task_name
        self.remote_traceback = remote_traceback
        self.pid = pid

    def __str__(self) -> str:
        return self._message

    @property
    def function_name(self) -> str:
        """Ray's name for ``task_name``."""
        return self.task_name

    @property
    def traceback_str(self) -> str:
        """Ray's name for ``remote_traceback``."""
        return self.remote_traceback

    def as_instanceof_cause(self) -> TaskError:
        """Ray's ``RayTaskError.as_instanceof_cause()``: the error as an instance of both
        ``TaskError`` and the cause's class. Errors ``volley.get`` raises already are both, so
        this returns ``self``."""
        return self

    def __reduce__(self):
        return (
            _rebuild_task_error,
            (self.cause, self.task_name, self.remote_traceback, self.pid, self._message),
        )


class WorkerCrashedError(VolleyError):
    """The worker process running a task died (and no retries were left)."""


class SerializationError(VolleyError, pickle.PicklingError):
    """An argument, function or result could not be pickled or unpickled.

    It is also a ``pickle.PicklingError``, as the standard library's pools raise for an argument
    that cannot be pickled.

    >>> issubclass(volley.SerializationError, pickle.PicklingError)
    True
    """


class GetTimeoutError(VolleyError, TimeoutError):
    """``get`` gave up after its ``timeout``."""


class TaskCancelledError(VolleyError):
    """The task was cancelled with ``volley.cancel``."""


class ObjectLostError(VolleyError):
    """The object no longer exists."""


class UnschedulableError(VolleyError):
    """No node can ever satisfy the task's resource request."""


class WorkerStartError(VolleyError):
    """Worker processes could not be started."""


class ObjectStoreFullError(VolleyError, MemoryError):
    """The shared-memory object store has no room for a value, even after spilling to disk.

    The message gives the value's size, the store's capacity, and how much of it is pinned (read
    by live views such as numpy arrays from ``get``, or being written). Drop views you no longer
    need, or start volley with a larger ``object_store_memory``.
    """


class ActorError(VolleyError):
    """An actor call could not run because of the actor itself: its process died, it was
    killed, or its ``__init__`` raised (``ActorDiedError``, ``ActorCreationError``).
    Ray's ``RayActorError`` is this class.
    """


class ActorDiedError(ActorError):
    """The actor's process died (or it was killed) and the call could not run or finish.

    Raised for calls in flight when the process died (unless ``max_task_retries`` allows
    another try on the restarted actor), and for every call once no restart is left
    (``max_restarts``) or after ``volley.kill(handle)``.
    """


class ActorCreationError(TaskError, ActorDiedError):
    """An actor's ``__init__`` raised: every call on its handles raises this.

    The original exception is in ``.cause`` and the remote traceback in ``.remote_traceback``
    (both are in the message too). The actor is dead: this is also an ``ActorDiedError`` (as
    Ray reports an actor whose creation failed), and a ``TaskError`` (its ``__init__`` raised).

    >>> @volley.remote
    ... class Bad:
    ...     def __init__(self):
    ...         raise ValueError("no config")
    ...     def ping(self):
    ...         return 1
    >>> try:
    ...     volley.get(Bad.remote().ping.remote())
    ... except volley.ActorCreationError as e:
    ...     assert isinstance(e.cause, ValueError)
    """

    def __reduce__(self):
        return (
            _rebuild_creation_error,
            (self.cause, self.task_name, self.remote_traceback, self.pid, self._message),
        )


class EndOfStreamError(VolleyError):
    """A streaming task ended before producing the item asked for. A stream's iterator turns
    this into ``StopIteration``; it reaches users only through an item ref taken past the end.
    """


class ChannelClosed(VolleyError):
    """A queue (or channel) was shut down, or its home node is gone: the operation on it, and
    every later one, fails with this error naming it.
    """


class SharedArrayError(VolleyError):
    """A shared array's handle cannot be mapped here: it lives in another node's memory, or its
    creator freed it (or ended its session), or it was used after ``SharedArray.free``."""


class CacheDirError(VolleyError, OSError):
    """A ``volley.cache`` directory exists but is not safe to load pickles from (someone else
    owns it, others may write it, or it is a symlink)."""


# ----------------------------------------------------------------------------------- error kinds
# The engine's error kinds are defined once, in Rust (``ErrorKind`` in crates/volley-proto);
# ``_core.ERROR_KINDS`` names each with its code. Each has its class here.

#: Each error kind's code, by its name (``"TASK_EXCEPTION"``, ...).
ERROR_KINDS: dict[str, int] = dict(_core.ERROR_KINDS)
TASK_EXCEPTION = ERROR_KINDS["TASK_EXCEPTION"]
SERIALIZATION = ERROR_KINDS["SERIALIZATION"]
ACTOR_CREATION = ERROR_KINDS["ACTOR_CREATION"]

_CLASS_OF_KIND: dict[str, type[VolleyError]] = {
    "TASK_EXCEPTION": TaskError,
    "WORKER_CRASHED": WorkerCrashedError,
    "CANCELLED": TaskCancelledError,
    "SERIALIZATION": SerializationError,
    "UNSCHEDULABLE": UnschedulableError,
    "OBJECT_LOST": ObjectLostError,
    "WORKER_START_FAILED": WorkerStartError,
    "OBJECT_STORE_FULL": ObjectStoreFullError,
    "ACTOR_CREATION": ActorCreationError,
    "ACTOR_DIED": ActorDiedError,
    "END_OF_STREAM": EndOfStreamError,
}
if set(_CLASS_OF_KIND) != set(ERROR_KINDS):  # a kind added in Rust needs its class here
    raise ImportError(
        "volley.exceptions and the engine disagree on the error kinds: "
        f"{sorted(set(_CLASS_OF_KIND) ^ set(ERROR_KINDS))}"
    )

#: The exception class of each error kind, by code.
KIND_CLASSES: dict[int, type[VolleyError]] = {
    ERROR_KINDS[name]: cls for name, cls in _CLASS_OF_KIND.items()
}


def _rebuild_creation_error(cause, task_name, remote_traceback, pid, message):
    return ActorCreationError(
        message, cause=cause, task_name=task_name, remote_traceback=remote_traceback, pid=pid
    )


_dual_classes: dict[type, type] = {}


def _dual_class(cls: type) -> type | None:
    """``TaskError(cls)``: a subclass of both ``TaskError`` and ``cls``, made once per class."""
    if cls in _dual_classes:
        return _dual_classes[cls]
    try:
        dual = type(
            f"TaskError({cls.__name__})",
            (TaskError, cls),
            {"__module__": cls.__module__, "__str__": TaskError.__str__},
        )
    except TypeError:
        dual = None
    _dual_classes[cls] = dual
    return dual


def task_error(
    cause: BaseException | None,
    task_name: str,
    remote_traceback: str,
    pid: int,
    message: str | None = None,
) -> TaskError:
    """Builds the error ``get`` raises for a task that raised ``cause``."""
    if message is None:
        what = f"{type(cause).__name__}: {cause}" if cause is not None else "an exception"
        message = f"task '{task_name}' (pid {pid}) raised {what}\n\nRemote traceback:\n"
        message += remote_traceback
    if isinstance(cause, TaskError):
        return cause
    dual = _dual_class(type(cause)) if isinstance(cause, Exception) else None
    if dual is None:
        return TaskError(
            message, cause=cause, task_name=task_name, remote_traceback=remote_traceback, pid=pid
        )
    try:
        err = type(cause).__new__(dual, *cause.args)
    except Exception:
        return TaskError(
            message, cause=cause, task_name=task_name, remote_traceback=remote_traceback, pid=pid
        )
    err.args = cause.args
    try:
        err.__dict__.update(getattr(cause, "__dict__", {}))
    except (AttributeError, TypeError):
        pass
    err._message = message
    err.cause = cause
    err.task_name = task_name
    err.remote_traceback = remote_traceback
    err.pid = pid
    return err


def _rebuild_task_error(cause, task_name, remote_traceback, pid, message):
    return task_error(cause, task_name, remote_traceback, pid, message)


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, chained as its ``__cause__``."""

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


def original_error(e: BaseException, traceback_class: type = RemoteTraceback) -> BaseException:
    """The exception a task raised, of its own class, as the standard library's pools re-raise
    it: ``type(err) is ValueError`` holds, and the remote traceback is its ``__cause__`` (an
    instance of ``traceback_class``, which takes the traceback text). Anything that is not a
    task's error with a known cause is returned unchanged.

    >>> err = task_error(ValueError("no"), "f", "Traceback ...", 1)
    >>> type(original_error(err)) is ValueError, "Traceback" in str(original_error(err).__cause__)
    (True, True)
    """
    if not isinstance(e, TaskError) or isinstance(e, ActorCreationError) or e.cause is None:
        return e
    cause = e.cause
    cause.__cause__ = traceback_class('\n"""\n' + e.remote_traceback.rstrip("\n") + '\n"""')
    return cause


# -------------------------------------------------------------------------------- Ray's names
# ``import volley as ray`` programs catch volley's errors by Ray's names. Each is volley's own
# class (the same object), so ``except ray.exceptions.RayTaskError`` catches what volley raises
# where Ray would raise that. Ray's names with no volley counterpart are not defined (see
# docs/from-ray.md for the list).

#: Ray's base class of its errors: ``VolleyError``.
RayError = VolleyError
#: A task (or actor method) raised: ``TaskError``. Like Ray's, the error ``get`` raises is also
#: an instance of the task's own exception class.
RayTaskError = TaskError
#: An actor call failed because of the actor (died, killed, or its ``__init__`` raised):
#: ``ActorError``, the base of ``ActorDiedError`` and ``ActorCreationError``.
RayActorError = ActorError
#: A task that no node can ever run: ``UnschedulableError``.
TaskUnschedulableError = UnschedulableError
# Same names in Ray and volley (the classes above): GetTimeoutError, TaskCancelledError,
# ObjectLostError, WorkerCrashedError, ObjectStoreFullError, ActorDiedError.

#: Ray's exceptions that volley has no counterpart for (it never raises them), and why.
_NOT_IN_VOLLEY = {
    "ActorUnschedulableError": "an actor no node can hold raises ValueError at .remote()",
    "ActorUnavailableError": "volley has no such transient actor state",
    "AsyncioActorExit": "volley has no exit_actor()",
    "LocalRayletDiedError": "volley has no raylet",
    "TaskPlacementGroupRemoved": "volley raises UnschedulableError naming the removed group",
    "ActorPlacementGroupRemoved": "volley raises ActorDiedError naming the removed group",
    "OutOfDiskError": "spilling that fails raises ObjectStoreFullError",
    "OutOfMemoryError": "volley has no memory monitor that kills tasks",
    "ObjectFetchTimedOutError": "volley has no fetch timeout",
    "OwnerDiedError": "volley has no such error",
    "PendingCallsLimitExceeded": "volley has no max_pending_calls",
    "PlasmaObjectNotAvailable": "volley has no plasma store",
    "ObjectReconstructionFailedError": "an object volley cannot get back is ObjectLostError",
    "ObjectReconstructionFailedMaxAttemptsExceededError": "volley raises ObjectLostError",
    "ObjectReconstructionFailedLineageEvictedError": "volley raises ObjectLostError",
    "RayChannelError": "channels come with issue 20",
    "RayChannelTimeoutError": "channels come with issue 20",
    "RayCgraphCapacityExceeded": "volley has no compiled graphs",
    "RuntimeEnvSetupError": "a runtime_env that cannot be set up fails its task with a TaskError",
    "CrossLanguageError": "volley is Python only",
    "RaySystemError": "volley has no such error",
    "NodeDiedError": "a dead node's tasks are retried elsewhere (max_retries)",
    "UnserializableException": "a task error that cannot be pickled comes back as a TaskError",
    "AuthenticationError": "a wrong cluster token raises ConnectionError",
}


def __getattr__(name: str):
    """Ray's exception names without a volley counterpart fail with a message that says so."""
    why = _NOT_IN_VOLLEY.get(name)
    if why is None:
        raise AttributeError(f"module 'volley.exceptions' has no attribute {name!r}")
    raise AttributeError(
        f"Ray's exceptions.{name} has no volley counterpart ({why}); see docs/from-ray.md"
    )
