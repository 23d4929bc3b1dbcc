"""An Optuna storage that lives in the volley cluster: no database, no file, no lock to fight.

``optuna_storage(name)`` starts (or finds) a named volley actor holding Optuna's own
``InMemoryStorage`` and returns a ``BaseStorage`` whose methods call it. Every driver and task
of the cluster that asks for the same name works on the same studies, so existing
``optuna.create_study(storage=...)`` / ``study.optimize(...)`` code runs unchanged, and
``optuna_optimize`` runs ``study.optimize`` as volley tasks on every node.

Why an actor and not the head's key-value table: Optuna's storage calls are read-modify-write
(a new trial takes the next number, a finished trial must not be written again), which an actor
running one call at a time makes atomic for free; the key-value table would need a
compare-and-swap per call and a pickle of every trial on each read. Finished trials never
change, so each proxy keeps those it has seen and asks the actor only for the rest (a sampler
reading all trials costs a few new ones per call, not the whole history).

The actor is pinned to the head's node, so that losing a worker node loses no study. It also
keeps the trials' heartbeats (Optuna's ``BaseHeartbeat``: a trial of a worker that died is
failed once its heartbeats stop) and, for ``optuna_optimize``, which worker task runs which
trial: a task that dies has its trial failed and its share of the trials run by a new one.

>>> import optuna
>>> from volley.tune import optuna_optimize, optuna_storage
>>> optuna.logging.set_verbosity(optuna.logging.WARNING)
>>> storage = optuna_storage("doc-example")
>>> study = optuna.create_study(storage=storage, study_name="quadratic",
...                             sampler=optuna.samplers.RandomSampler(seed=0))
>>> study = optuna_optimize(study, lambda t: (t.suggest_float("x", -1, 1) - 0.5) ** 2,
...                         n_trials=20, n_workers=2)
>>> len(study.trials), study.best_value < 0.1
(20, True)
"""

from __future__ import annotations

import copy
import pickle
import threading
import time
import uuid
from collections.abc import Callable, Container, Sequence
from typing import Any

import volley
from volley import library
from volley.exceptions import ActorDiedError, TaskError, WorkerCrashedError

__all__ = ["optuna_optimize", "optuna_storage"]  # and VolleyStorage, made on first use

_INSTALL = "volley.tune.optuna_storage needs Optuna: pip install optuna (or 'volley[tune]')"

#: The storage of ``optuna_storage()`` without a name.
DEFAULT_NAME = "default"
_PREFIX = "volley.tune.optuna_storage/"
#: About how much work (seconds) an ``optuna_optimize`` worker takes at a time.
HELPING_S = 0.1


def _optuna() -> Any:
    try:
        import optuna
    except ImportError as e:
        raise ImportError(_INSTALL) from e
    return optuna


_PROTOCOL = pickle.HIGHEST_PROTOCOL


class _Run:
    """One ``optuna_optimize`` run, as its storage actor counts it: the trials not yet handed
    out (tickets), and for each of its worker tasks (by index) the tickets it took, the trials
    it finished itself, and the ones it runs now (failed by ``reap`` if the task dies)."""

    __slots__ = ("claimed", "done", "gone", "running", "stopped", "tickets")

    def __init__(self, tickets: int) -> None:
        self.tickets = tickets
        self.stopped = False
        self.claimed: dict[int, int] = {}
        self.done: dict[int, int] = {}
        self.running: dict[int, set[int]] = {}
        self.gone: set[int] = set()


class _StorageActor:
    """The actor: Optuna's InMemoryStorage, one call at a time, the trials' heartbeats, and the
    runs of ``optuna_optimize``. Errors come back as values, so that Optuna's own exceptions
    (``KeyError`` for an unknown study, ``DuplicatedStudyError``) reach the caller as they are."""

    def __init__(self) -> None:
        optuna = _optuna()
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per study in the log
        self._storage = optuna.storages.InMemoryStorage()
        self._running_state = optuna.trial.TrialState.RUNNING
        self._fail_state = optuna.trial.TrialState.FAIL
        self._finished_error = optuna.exceptions.UpdateFinishedTrialError
        # trial id -> the actor's clock (time.monotonic) at its last heartbeat: one clock for
        # every node, so no two machines' clocks are compared.
        self._beats: dict[int, float] = {}
        self._runs: dict[str, _Run] = {}
        self._owner: dict[int, tuple[str, int]] = {}  # running trial id -> (run, worker)

    def rpc(self, blob: bytes) -> bytes:
        """One storage call: ``blob`` pickles ``(method, args)``; the answer pickles ``(True,
        value)`` or ``(False, exception)``. Plain pickles both ways, one argument each way:
        the cheapest call an actor takes (a quarter faster than passing the parts)."""
        method, args = pickle.loads(blob)
        try:
            if method == "create_trial":
                answer: tuple[bool, Any] = (True, self._create_trial(*args))
            elif method == "set_state":
                answer = (True, self._set_state(*args))
            elif method == "trials_from":
                answer = (True, self._trials_from(*args))
            else:
                answer = (True, getattr(self._storage, method)(*args))
        except Exception as e:  # handed to the caller, raised there
            answer = (False, e)
        # Everything stored came in pickled, so every answer pickles.
        return pickle.dumps(answer, _PROTOCOL)

    # ------------------------------------------------ storage calls with more to do
    def _create_trial(self, study_id: int, template: Any, owner: Any = None) -> tuple[int, Any]:
        """A new trial: its id and the trial itself (saves the caller's next get_trial)."""
        trial_id = self._storage.create_new_trial(study_id, template)
        trial = self._storage.get_trial(trial_id)
        if owner is not None and trial.state == self._running_state:
            self._started(owner, trial_id)
        return trial_id, trial

    def _set_state(
        self, trial_id: int, state: Any, values: Any, owner: Any = None
    ) -> tuple[bool, Any]:
        """``set_trial_state_values``, and the trial once it is finished (it no longer changes,
        so the caller keeps it)."""
        ok = self._storage.set_trial_state_values(trial_id, state, values)
        if ok and state == self._running_state and owner is not None:
            self._started(owner, trial_id)  # a waiting (enqueued, retried) trial taken
        elif ok and state.is_finished():
            self._ended(trial_id, by=owner)
        return ok, self._storage.get_trial(trial_id) if state.is_finished() else None

    def _trials_from(self, study_id: int, first: int) -> list:
        """The study's trials numbered ``first`` and after (they come in number order)."""
        return self._storage.get_all_trials(study_id, deepcopy=False)[first:]

    def _started(self, owner: Any, trial_id: int) -> None:
        key, worker = owner
        run = self._runs.get(key)
        if run is not None:
            run.running.setdefault(worker, set()).add(trial_id)
            self._owner[trial_id] = (key, worker)

    def _ended(self, trial_id: int, by: Any) -> None:
        self._beats.pop(trial_id, None)
        owner = self._owner.pop(trial_id, None)
        run = None if owner is None else self._runs.get(owner[0])
        if run is None or owner is None:
            return
        run.running.get(owner[1], set()).discard(trial_id)
        if tuple(by or ()) == owner:  # its own worker finished it: one of the run's trials
            run.done[owner[1]] = run.done.get(owner[1], 0) + 1

    # ------------------------------------------------ heartbeats
    def beat(self, trial_id: int) -> None:
        """A running trial's heartbeat (a late one, after the trial ended, is dropped)."""
        try:
            running = self._storage.get_trial(trial_id).state == self._running_state
        except KeyError:
            return
        if running:
            self._beats[trial_id] = time.monotonic()

    def stale(self, study_id: int, grace: float) -> list[int]:
        """The study's running trials whose last heartbeat is more than ``grace`` seconds old
        (those that never sent one are not judged, as in Optuna's RDB storage). Only trials
        with a heartbeat are looked at: a check costs the running ones, not the study."""
        now = time.monotonic()
        found = []
        for trial_id, beat in list(self._beats.items()):
            if now - beat <= grace:
                continue
            try:
                trial = self._storage.get_trial(trial_id)
                mine = (
                    self._storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
                    == trial_id
                )
            except KeyError:  # its study was deleted
                self._beats.pop(trial_id, None)
                continue
            if mine and trial.state == self._running_state:
                found.append(trial_id)
        return found

    # ------------------------------------------------ optuna_optimize's runs
    def start_run(self, key: str, n: int) -> None:
        self._runs[key] = _Run(n)

    def claim(self, key: str, worker: int, share: int, want: int) -> int:
        """Takes up to ``want`` of the run's tickets for ``worker``, at most ``1/share`` of
        those left (at least one; none when none is left, the run stopped, or the worker was
        declared dead): helpings shrink as the count runs down."""
        run = self._runs.get(key)
        if run is None or run.stopped or worker in run.gone or run.tickets <= 0:
            return 0
        take = max(1, min(want, run.tickets // share))
        run.tickets -= take
        run.claimed[worker] = run.claimed.get(worker, 0) + take
        return take

    def drain(self, key: str) -> int:
        """The run stops: no more tickets; how many were left."""
        run = self._runs.get(key)
        if run is None:
            return 0
        left, run.tickets, run.stopped = run.tickets, 0, True
        return left

    def reap(self, key: str, worker: int) -> tuple[list[int], int]:
        """``worker``'s task died: its running trials become FAIL (their ids come back), it
        may claim nothing more, and the tickets it took and did not finish (the trials lost
        with it included) are counted out, to be given back with ``refund``."""
        run = self._runs.get(key)
        if run is None:
            return [], 0
        run.gone.add(worker)
        failed = []
        for trial_id in sorted(run.running.pop(worker, ())):
            self._owner.pop(trial_id, None)
            self._beats.pop(trial_id, None)
            try:
                if self._storage.set_trial_state_values(trial_id, self._fail_state):
                    failed.append(trial_id)
            except self._finished_error:
                pass  # finished meanwhile (a heartbeat check failed it first)
        lost = run.claimed.pop(worker, 0) - run.done.pop(worker, 0)
        return failed, max(0, lost)

    def refund(self, key: str, n: int) -> int:
        """Gives ``n`` tickets back to the run (unless it stopped); how many it has now."""
        run = self._runs.get(key)
        if run is None or run.stopped:
            return 0
        run.tickets += n
        return run.tickets

    def end_run(self, key: str) -> None:
        run = self._runs.pop(key, None)
        if run is not None:
            for ids in run.running.values():
                for trial_id in ids:
                    self._owner.pop(trial_id, None)

    def ping(self) -> bool:
        return True


def _storage_bases() -> tuple[type, ...]:
    """Optuna's ``BaseStorage``, and ``BaseHeartbeat`` (the interface its RDB storage has for
    heartbeats; only in a private module of Optuna's, where its own storages take it)."""
    optuna = _optuna()
    from optuna.storages._heartbeat import BaseHeartbeat

    return optuna.storages.BaseStorage, BaseHeartbeat


def _dead(name: str, cause: BaseException) -> RuntimeError:
    return RuntimeError(
        f"the Optuna storage {name!r} is gone: the volley actor that held it "
        f"({_PREFIX}{name}) died, so its studies and trials are lost; make a new one with "
        f"volley.tune.optuna_storage({name!r}) and start the study again ({cause})"
    )


def _make_storage_class() -> type:
    """``VolleyStorage``, made once Optuna is imported (it subclasses Optuna's BaseStorage)."""
    base, heartbeat = _storage_bases()

    class VolleyStorage(base, heartbeat):  # type: ignore[misc, valid-type]
        """An ``optuna.storages.BaseStorage`` whose studies live in a named volley actor (see
        ``optuna_storage``). Picklable: a copy sent to a task reaches the same actor, with
        the same heartbeat settings."""

        def __init__(
            self,
            name: str,
            handle: Any,
            heartbeat_interval: float | None = None,
            grace_period: float | None = None,
            callback: Callable[[Any, Any], None] | None = None,
        ) -> None:
            self.name = name
            self._handle = handle
            self.heartbeat_interval = heartbeat_interval
            self.grace_period = grace_period
            self.failed_trial_callback = callback
            # (run, worker) inside an optuna_optimize worker task: the trials it starts and
            # finishes are counted as that worker's (see _StorageActor.reap).
            self._owner: tuple[str, int] | None = None
            # study id -> (finished trials by number, how many leading numbers are finished)
            self._done: dict[int, tuple[dict[int, Any], int]] = {}
            # trial id -> the trial: finished ones (they never change again), and the running
            # ones this proxy made (only their maker writes them: kept up to date here)
            self._finished: dict[int, Any] = {}
            self._mine: dict[int, Any] = {}

        def __getstate__(self) -> dict:
            return {
                "name": self.name,
                "handle": self._handle,
                "heartbeat": (
                    self.heartbeat_interval,
                    self.grace_period,
                    self.failed_trial_callback,
                ),
            }

        def __setstate__(self, state: dict) -> None:
            self.__init__(state["name"], state["handle"], *state["heartbeat"])  # type: ignore[misc]

        def __repr__(self) -> str:
            return f"volley.tune.optuna_storage({self.name!r})"

        def _get(self, ref: Any) -> Any:
            try:
                return volley.get(ref)
            except ActorDiedError as e:
                raise _dead(self.name, e) from None

        def _call(self, method: str, *args: Any) -> Any:
            blob = pickle.dumps((method, args), _PROTOCOL)
            try:
                ref = self._handle.rpc.remote(blob)
            except ActorDiedError as e:
                raise _dead(self.name, e) from None
            ok, value = pickle.loads(self._get(ref))
            if not ok:
                raise value
            return value

        # ------------------------------------------------ studies
        def create_new_study(self, directions: Sequence[Any], study_name: str | None = None):
            return self._call("create_new_study", list(directions), study_name)

        def delete_study(self, study_id: int) -> None:
            self._done.pop(study_id, None)
            self._finished.clear()
            self._call("delete_study", study_id)

        def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
            self._call("set_study_user_attr", study_id, key, value)

        def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
            self._call("set_study_system_attr", study_id, key, value)

        def get_study_id_from_name(self, study_name: str) -> int:
            return self._call("get_study_id_from_name", study_name)

        def get_study_name_from_id(self, study_id: int) -> str:
            return self._call("get_study_name_from_id", study_id)

        def get_study_directions(self, study_id: int) -> list:
            return self._call("get_study_directions", study_id)

        def get_study_user_attrs(self, study_id: int) -> dict:
            return self._call("get_study_user_attrs", study_id)

        def get_study_system_attrs(self, study_id: int) -> dict:
            return self._call("get_study_system_attrs", study_id)

        def get_all_studies(self) -> list:
            return self._call("get_all_studies")

        # ------------------------------------------------ trials
        def create_new_trial(self, study_id: int, template_trial: Any = None) -> int:
            trial_id, trial = self._call("create_trial", study_id, template_trial, self._owner)
            if trial.state.is_finished():
                self._finished[trial_id] = trial
            else:
                self._mine[trial_id] = trial
            return trial_id

        def _write(self, method: str, trial_id: int, *args: Any) -> Any:
            """A write to a trial; the copy of a trial of this proxy's is updated as the
            actor's was (after it succeeded there)."""
            self._call(method, trial_id, *args)
            mine = self._mine.get(trial_id)
            if mine is None:
                return
            if method == "set_trial_param":
                name, internal, dist = args
                mine.params[name] = dist.to_external_repr(internal)
                mine.distributions[name] = dist
            elif method == "set_trial_intermediate_value":
                mine.intermediate_values[args[0]] = args[1]
            elif method == "set_trial_user_attr":
                mine.user_attrs[args[0]] = args[1]
            elif method == "set_trial_system_attr":
                mine.system_attrs[args[0]] = args[1]
            else:
                del self._mine[trial_id]  # not a write it knows: read it from the actor

        def set_trial_param(
            self, trial_id: int, param_name: str, param_value_internal: float, distribution: Any
        ) -> None:
            self._write("set_trial_param", trial_id, param_name, param_value_internal, distribution)

        def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
            return self._call("get_trial_id_from_study_id_trial_number", study_id, trial_number)

        def get_trial_number_from_id(self, trial_id: int) -> int:
            return self._call("get_trial_number_from_id", trial_id)

        def get_trial_param(self, trial_id: int, param_name: str) -> float:
            return self._call("get_trial_param", trial_id, param_name)

        def set_trial_state_values(
            self, trial_id: int, state: Any, values: Sequence[float] | None = None
        ) -> bool:
            self._mine.pop(trial_id, None)
            ok, final = self._call("set_state", trial_id, state, values, self._owner)
            if final is not None:
                self._finished[trial_id] = final
            return ok

        def set_trial_intermediate_value(
            self, trial_id: int, step: int, intermediate_value: float
        ) -> None:
            self._write("set_trial_intermediate_value", trial_id, step, intermediate_value)

        def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
            self._write("set_trial_user_attr", trial_id, key, value)

        def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
            self._write("set_trial_system_attr", trial_id, key, value)

        def get_trial(self, trial_id: int) -> Any:
            done = self._mine.get(trial_id)
            if done is None:
                done = self._finished.get(trial_id)
            if done is not None:
                return copy.deepcopy(done)
            trial = self._call("get_trial", trial_id)
            if trial.state.is_finished():
                self._finished[trial_id] = trial
                return copy.deepcopy(trial)
            return trial

        def get_all_trials(
            self,
            study_id: int,
            deepcopy: bool = True,
            states: Container[Any] | None = None,
        ) -> list:
            done, prefix = self._done.get(study_id, ({}, 0))
            fresh = self._call("trials_from", study_id, prefix)
            for t in fresh:
                if t.state.is_finished():
                    done[t.number] = t
            while prefix in done:
                prefix += 1
            self._done[study_id] = (done, prefix)
            trials = [done[n] for n in range(prefix)]
            trials.extend(done.get(t.number, t) for t in fresh if t.number >= prefix)
            if states is not None:
                trials = [t for t in trials if t.state in states]
            return copy.deepcopy(trials) if deepcopy else trials

        def remove_session(self) -> None:
            """Nothing to do: no database session."""

        # ------------------------------------------------ heartbeats (Optuna's BaseHeartbeat)
        def record_heartbeat(self, trial_id: int) -> None:
            """Called every ``heartbeat_interval`` seconds by a thread Optuna's ``optimize``
            runs beside each trial."""
            self._run_call("beat", trial_id)

        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            if self.heartbeat_interval is None:
                return []
            grace = self.grace_period
            if grace is None:
                grace = 2 * self.heartbeat_interval
            return self._run_call("stale", study_id, grace)

        def get_heartbeat_interval(self) -> float | None:
            return self.heartbeat_interval

        def get_heartbeat_stale_trial_callback(self) -> Callable[[Any, Any], None] | None:
            return self.failed_trial_callback

        def get_failed_trial_callback(self) -> Callable[[Any, Any], None] | None:
            return self.failed_trial_callback  # the name before Optuna 4.9

        # ------------------------------------------------ the actor's own calls
        def _run_call(self, method: str, *args: Any) -> Any:
            """A call of one of the actor's own methods (not a storage call)."""
            try:
                ref = getattr(self._handle, method).remote(*args)
            except ActorDiedError as e:
                raise _dead(self.name, e) from None
            return self._get(ref)

    # Pickled by reference: this module's __getattr__ makes the class where it is unpickled.
    VolleyStorage.__qualname__ = "VolleyStorage"
    VolleyStorage.__module__ = __name__
    return VolleyStorage


_CLASS: list[type] = []


def _storage_class() -> type:
    if not _CLASS:
        _CLASS.append(_make_storage_class())
    return _CLASS[0]


def __getattr__(name: str) -> Any:
    if name == "VolleyStorage":
        return _storage_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _head_node_id() -> int:
    """The id of the cluster head's node (``volley.nodes()`` ``node_id``): alone, this
    process's own node (the one node there is, its own head); in a cluster, the first node
    that joined it, which is the head (the one that started it: ids are given in order)."""
    nodes = volley.nodes()
    daemons = [n["node_id"] for n in nodes if not n["driver"]]
    return min(daemons) if daemons else nodes[0]["node_id"]


def _seconds(what: str, x: Any) -> float | None:
    if x is None:
        return None
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not x > 0:
        raise ValueError(f"{what} must be a positive number of seconds or None, got {x!r}")
    return float(x)


def optuna_storage(
    name: str | None = None,
    *,
    heartbeat_interval: float | None = None,
    grace_period: float | None = None,
    failed_trial_callback: Callable[[Any, Any], None] | None = None,
    heartbeat_stale_trial_callback: Callable[[Any, Any], None] | None = None,
) -> Any:
    """An Optuna storage held by volley: pass it to ``optuna.create_study(storage=...)`` or
    ``optuna.load_study``. The studies live in a named volley actor (``name``; one shared
    ``"default"`` without it) that every driver and task of the cluster reaches, made at the
    first call and found by the later ones. The actor is pinned to the cluster head's node
    (alone, this machine's node), so losing a worker node loses no study; it takes no CPU and
    outlives the driver that made it (``volley.kill(volley.get_actor(
    "volley.tune.optuna_storage/NAME"))`` ends it).

    Heartbeats, as Optuna's RDB storage has them: with ``heartbeat_interval`` (seconds,
    fractions too), ``study.optimize`` sends the actor a heartbeat of each running trial that
    often, and before each new trial fails the study's running trials whose last heartbeat is
    more than ``grace_period`` seconds old (default: twice the interval; timed by the actor's
    clock alone, so no two machines' clocks are compared), then calls
    ``failed_trial_callback(study, trial)`` for each (``optuna.storages.
    RetryFailedTrialCallback`` enqueues its parameters again). A worker killed mid-trial
    leaves no trial RUNNING forever. ``heartbeat_stale_trial_callback`` is the same callback
    under Optuna 4.9's name. The settings belong to this storage object and travel with it
    when it is pickled into a task; another process's ``optuna_storage(name)`` has its own,
    as with ``RDBStorage(url, ...)``. ``optuna_optimize`` needs none of them to fail the trial
    of a task that died, and runs the callback for it too.

    If the actor dies, its studies are lost (as with Optuna's in-memory storage): each call
    then raises a ``RuntimeError`` that says so, never hangs.

    >>> s = optuna_storage("doc-example")
    >>> s
    volley.tune.optuna_storage('doc-example')
    >>> study = optuna.load_study(study_name="quadratic", storage=s)  # made above
    >>> len(study.trials)
    20
    >>> def lost(study, trial):
    ...     print(f"trial {trial.number} of {study.study_name!r} lost its worker")
    >>> beating = optuna_storage("doc-example", heartbeat_interval=5, failed_trial_callback=lost)
    >>> beating.get_heartbeat_interval(), beating.grace_period
    (5.0, None)
    """
    if name is None:
        name = DEFAULT_NAME
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str, got {name!r}")
    interval = _seconds("heartbeat_interval", heartbeat_interval)
    grace = _seconds("grace_period", grace_period)
    if grace is not None and interval is None:
        raise ValueError("grace_period needs heartbeat_interval: without heartbeats it is unused")
    if grace is not None and interval is not None and grace <= interval:
        raise ValueError(
            f"grace_period ({grace:g} s) must be longer than heartbeat_interval ({interval:g} s):"
            " a trial would be failed between two heartbeats"
        )
    if failed_trial_callback is not None and heartbeat_stale_trial_callback is not None:
        raise ValueError(
            "give failed_trial_callback or heartbeat_stale_trial_callback (its newer name), "
            "not both"
        )
    callback = failed_trial_callback or heartbeat_stale_trial_callback
    if callback is not None and not callable(callback):
        raise TypeError(f"failed_trial_callback must be callable, got {type(callback).__name__}")
    cls = _storage_class()
    library.init_if_needed()
    on_head = volley.NodeAffinitySchedulingStrategy(_head_node_id(), soft=False)
    actor = volley.remote(_StorageActor).options(
        name=_PREFIX + name,
        get_if_exists=True,
        lifetime="detached",
        num_cpus=0,
        scheduling_strategy=on_head,
    )
    try:
        handle = actor.remote()
    except ValueError:
        # Another node made it a moment ago, or the name still belongs to a dead actor the
        # cluster has not forgotten yet: find it by name (a dead one fails the ping below).
        try:
            handle = volley.get_actor(_PREFIX + name)
        except ValueError as e:
            raise RuntimeError(
                f"the Optuna storage {name!r} cannot be made now: its name is still held by "
                "an actor that just died; try again in a moment"
            ) from e
    storage = cls(name, handle, interval, grace, callback)
    storage._get(handle.ping.remote())  # a dead actor of that name: the RuntimeError saying so
    return storage


_LOCKS = (type(threading.Lock()), type(threading.RLock()))


class _Shipped:
    """A sampler or pruner on its way to an ``optuna_optimize`` worker, pickled without the
    thread locks some hold (NSGA-II's and NSGA-III's ``_thread_lock``), which a lock does not
    survive; it arrives as itself, with fresh locks."""

    def __init__(self, obj: Any, locks: list[str]) -> None:
        self.obj, self.locks = obj, locks

    def __reduce__(self) -> tuple:
        state = {k: v for k, v in vars(self.obj).items() if k not in self.locks}
        rlocks = [k for k in self.locks if not isinstance(getattr(self.obj, k), _LOCKS[0])]
        return _arrive, (type(self.obj), state, self.locks, rlocks)


def _arrive(cls: type, state: dict, locks: list[str], rlocks: list[str]) -> Any:
    obj = cls.__new__(cls)
    obj.__dict__.update(state)
    for k in locks:
        setattr(obj, k, threading.RLock() if k in rlocks else threading.Lock())
    return obj


def _shippable(obj: Any) -> Any:
    """``obj``, or a ``_Shipped`` of it if its own attributes hold thread locks."""
    locks = [k for k, v in getattr(obj, "__dict__", {}).items() if isinstance(v, _LOCKS)]
    return _Shipped(obj, locks) if locks else obj


def _optimize_worker(
    storage: Any,
    study_name: str,
    sampler: Any,
    pruner: Any,
    objective: Callable,
    key: str,
    worker: int,
    share: int,
    catch: tuple,
    callbacks: list,
) -> int:
    """One of ``optuna_optimize``'s tasks: trials while tickets last. Returns how many."""
    optuna = _optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if sampler is not None:
        sampler.reseed_rng()  # each worker draws its own numbers
    storage._owner = (key, worker)
    study = optuna.load_study(
        study_name=study_name, storage=storage, sampler=sampler, pruner=pruner
    )
    ran = [0]

    def count(study: Any, trial: Any) -> None:
        ran[0] += 1

    done, want, busy = 0, 1, 0.0
    try:
        while take := storage._run_call("claim", key, worker, share, want):
            ran[0] = 0
            t0 = time.perf_counter()
            study.optimize(objective, n_trials=take, catch=catch, callbacks=[*callbacks, count])
            busy += time.perf_counter() - t0
            done += ran[0]
            if ran[0] < take:  # a callback called study.stop(): the whole run stops
                storage._run_call("drain", key)
                break
            # Helpings of about HELPING_S of work: few claims for tiny trials, and a worker
            # learns soon that the run stopped (claims one trial at a time for long ones).
            want = max(1, int(HELPING_S * done / max(busy, 1e-9)))
    except BaseException:
        storage._run_call("drain", key)  # the others stop too: the run failed
        raise
    return done


#: ``optuna_optimize`` gives up once more than this many worker tasks per worker died.
DEATHS_PER_WORKER = 3


def optuna_optimize(
    study: Any,
    objective: Callable[[Any], Any],
    n_trials: int,
    n_workers: int | None = None,
    *,
    catch: Sequence[type[Exception]] | type[Exception] = (),
    callbacks: list | None = None,
    num_cpus: float = 1,
) -> Any:
    """``study.optimize(objective, n_trials)`` with the trials run by ``n_workers`` volley tasks
    (default: one per CPU of the cluster) on whichever nodes have room, all working on the
    one ``study`` (which must use ``optuna_storage()``). Exactly ``n_trials`` trials are run
    to their end: the workers take them from a counter in the storage, about 0.1 s of work at
    a time (one trial at a time when trials are longer; a fast worker runs more). Each worker
    uses a copy of the study's sampler and pruner, reseeded. An exception of the objective not
    in ``catch`` stops the other workers once their current helping is done (their current
    trial, for trials over 0.1 s) and is raised here (as Optuna's own ``optimize`` raises it);
    so does a callback's ``study.stop()``. Returns ``study``.

    A worker task that dies (its process killed, its node lost) is noticed here: the trial it
    ran becomes FAIL (never left RUNNING), the storage's ``failed_trial_callback`` is called
    for it (``RetryFailedTrialCallback`` runs its parameters again), and the trials it had not
    run, that one included, are run by a new task: the study ends with ``n_trials`` trials
    that ran to their end, plus the FAIL ones of dead tasks. After more than 3 deaths per
    worker (``DEATHS_PER_WORKER``) the run stops with a ``RuntimeError`` (an objective that
    kills its process would never end).

    >>> optuna_optimize(optuna.create_study(), lambda t: 0.0, n_trials=1)
    Traceback (most recent call last):
    ...
    ValueError: optuna_optimize needs a study on volley.tune.optuna_storage(): ...
    """
    optuna = _optuna()
    cls = _storage_class()
    if not isinstance(study, optuna.Study):
        raise TypeError(f"study must be an optuna.Study, got {type(study).__name__}")
    storage = study._storage
    if not isinstance(storage, cls):
        raise ValueError(
            "optuna_optimize needs a study on volley.tune.optuna_storage(): tasks on other "
            "processes and nodes cannot reach a study kept in this process "
            f"(its storage is {type(storage).__name__}); "
            "create it with optuna.create_study(storage=volley.tune.optuna_storage(), ...)"
        )
    if not callable(objective):
        raise TypeError(f"objective must be callable, got {type(objective).__name__}")
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise ValueError(f"n_trials must be a positive int, got {n_trials!r}")
    if n_workers is None:
        n_workers = max(1, int(library.total_cpus() // max(num_cpus, 1e-9)))
    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
        raise ValueError(f"n_workers must be a positive int, got {n_workers!r}")
    catch_t = tuple(catch) if isinstance(catch, (list, tuple)) else (catch,)
    key = uuid.uuid4().hex
    storage._run_call("start_run", key, n_trials)
    # No retries by volley: a task that died is replaced here, once its trials are counted.
    task = volley.remote(_optimize_worker).options(num_cpus=num_cpus, max_retries=0)
    live: dict[Any, int] = {}
    made = [0]

    def launch(count: int) -> None:
        for _ in range(count):
            ref = task.remote(
                storage,
                study.study_name,
                _shippable(study.sampler),
                _shippable(study.pruner),
                objective,
                key,
                made[0],
                2 * n_workers,
                catch_t,
                list(callbacks or []),
            )
            live[ref] = made[0]
            made[0] += 1

    deaths = 0
    try:
        launch(min(n_workers, n_trials))
        while live:
            ready, _ = volley.wait(list(live), num_returns=1)
            for ref in ready:
                worker = live.pop(ref)
                try:
                    volley.get(ref)
                except WorkerCrashedError as e:
                    if isinstance(e, TaskError):
                        raise  # the objective's own error (a task of its that died): not ours
                    deaths += 1
                    left = _replace_dead(storage, study, key, worker)
                    if deaths > DEATHS_PER_WORKER * n_workers:
                        raise RuntimeError(
                            f"optuna_optimize stopped: {deaths} of its worker tasks died "
                            f"(more than {DEATHS_PER_WORKER} per worker); the trials they "
                            f"ran are FAIL in the study; the last one: {e}"
                        ) from e
                    launch(min(n_workers - len(live), left))
    finally:
        storage._run_call("end_run", key)  # workers still running claim nothing more
    return study


def _replace_dead(storage: Any, study: Any, key: str, worker: int) -> int:
    """A worker task of the run died: its running trials become FAIL, the storage's
    ``failed_trial_callback`` runs for each (so a retry is enqueued before the tickets come
    back), then the trials it did not run go back to the run. How many tickets are left."""
    failed, lost = storage._run_call("reap", key, worker)
    callback = storage.failed_trial_callback
    if callback is not None:
        for trial_id in failed:
            callback(study, copy.deepcopy(storage.get_trial(trial_id)))
    return storage._run_call("refund", key, lost)
