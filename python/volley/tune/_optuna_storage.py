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
import time
import uuid
from collections.abc import Callable, Container, Sequence
from typing import Any

import volley
from volley import library
from volley.exceptions import ActorDiedError

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


def _create_trial(storage: Any, study_id: int, template: Any) -> tuple[int, Any]:
    """A new trial: its id and the trial itself (saves the caller's next get_trial)."""
    trial_id = storage.create_new_trial(study_id, template)
    return trial_id, storage.get_trial(trial_id)


def _set_state(storage: Any, trial_id: int, state: Any, values: Any) -> tuple[bool, Any]:
    """``set_trial_state_values``, and the trial once it is finished (it no longer changes, so
    the caller keeps it)."""
    ok = storage.set_trial_state_values(trial_id, state, values)
    return ok, storage.get_trial(trial_id) if state.is_finished() else None


def _trials_from(storage: Any, study_id: int, first: int) -> list:
    """The study's trials numbered ``first`` and after (they come in number order)."""
    return storage.get_all_trials(study_id, deepcopy=False)[first:]


_SPECIAL: dict[str, Callable[..., Any]] = {
    "create_trial": _create_trial,
    "set_state": _set_state,
    "trials_from": _trials_from,
}
_PROTOCOL = pickle.HIGHEST_PROTOCOL


class _StorageActor:
    """The actor: Optuna's InMemoryStorage, one call at a time, plus the tickets of
    ``optuna_optimize`` runs. Errors come back as values, so that Optuna's own exceptions
    (``KeyError`` for an unknown study, ``DuplicatedStudyError``) reach the caller as they are."""

    def __init__(self) -> None:
        optuna = _optuna()
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per study in the log
        self._storage = optuna.storages.InMemoryStorage()
        self._tickets: dict[str, int] = {}

    def rpc(self, blob: bytes) -> bytes:
        """One storage call: ``blob`` pickles ``(method, args)``; the answer pickles ``(True,
        value)`` or ``(False, exception)``. Plain pickles both ways, one argument each way:
        the cheapest call an actor takes (a quarter faster than passing the parts)."""
        method, args = pickle.loads(blob)
        try:
            special = _SPECIAL.get(method)
            if special is not None:
                answer: tuple[bool, Any] = (True, special(self._storage, *args))
            else:
                answer = (True, getattr(self._storage, method)(*args))
        except Exception as e:  # handed to the caller, raised there
            answer = (False, e)
        # Everything stored came in pickled, so every answer pickles.
        return pickle.dumps(answer, _PROTOCOL)

    def set_tickets(self, key: str, n: int) -> None:
        self._tickets[key] = n

    def claim(self, key: str, share: int, want: int) -> int:
        """Takes up to ``want`` of ``key``'s tickets, at most ``1/share`` of those left (at
        least one; none when none is left): helpings shrink as the count runs down."""
        left = self._tickets.get(key, 0)
        if left <= 0:
            self._tickets.pop(key, None)
            return 0
        take = max(1, min(want, left // share))
        self._tickets[key] = left - take
        return take

    def drain(self, key: str) -> int:
        """No more tickets for ``key``; how many were left."""
        return self._tickets.pop(key, 0)

    def ping(self) -> bool:
        return True


def _storage_base() -> type:
    return _optuna().storages.BaseStorage


def _dead(name: str, cause: BaseException) -> RuntimeError:
    return RuntimeError(
        f"the Optuna storage {name!r} is gone: the volley actor that held it "
        f"({_PREFIX}{name}) died, so its studies and trials are lost; make a new one with "
        f"volley.tune.optuna_storage({name!r}) and start the study again ({cause})"
    )


def _make_storage_class() -> type:
    """``VolleyStorage``, made once Optuna is imported (it subclasses Optuna's BaseStorage)."""
    base = _storage_base()

    class VolleyStorage(base):  # type: ignore[misc, valid-type]
        """An ``optuna.storages.BaseStorage`` whose studies live in a named volley actor (see
        ``optuna_storage``). Picklable: a copy sent to a task reaches the same actor."""

        def __init__(self, name: str, handle: Any) -> None:
            self.name = name
            self._handle = handle
            # study id -> (finished trials by number, how many leading numbers are finished)
            self._done: dict[int, tuple[dict[int, Any], int]] = {}
            # trial id -> the trial: finished ones (they never change again), and the running
            # ones this proxy made (only their maker writes them: kept up to date here)
            self._finished: dict[int, Any] = {}
            self._mine: dict[int, Any] = {}

        def __getstate__(self) -> dict:
            return {"name": self.name, "handle": self._handle}

        def __setstate__(self, state: dict) -> None:
            self.__init__(state["name"], state["handle"])  # type: ignore[misc]

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
            trial_id, trial = self._call("create_trial", study_id, template_trial)
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
            ok, final = self._call("set_state", trial_id, state, values)
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

        # ------------------------------------------------ optuna_optimize's tickets
        def _set_tickets(self, key: str, n: int) -> None:
            self._get(self._handle.set_tickets.remote(key, n))

        def _claim(self, key: str, share: int, want: int) -> int:
            return self._get(self._handle.claim.remote(key, share, want))

        def _drain(self, key: str) -> int:
            return self._get(self._handle.drain.remote(key))

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


def optuna_storage(name: str | None = None) -> Any:
    """An Optuna storage held by volley: pass it to ``optuna.create_study(storage=...)`` or
    ``optuna.load_study``. The studies live in a named volley actor (``name``; one shared
    ``"default"`` without it) that every driver and task of the cluster reaches, made at the
    first call and found by the later ones; it takes no CPU and outlives the driver that made
    it (``volley.kill(volley.get_actor("volley.tune.optuna_storage/NAME"))`` ends it).

    If that actor dies, its studies are lost (as with Optuna's in-memory storage): each call
    then raises a ``RuntimeError`` that says so, never hangs.

    >>> s = optuna_storage("doc-example")
    >>> s
    volley.tune.optuna_storage('doc-example')
    >>> study = optuna.load_study(study_name="quadratic", storage=s)  # made above
    >>> len(study.trials)
    20
    """
    if name is None:
        name = DEFAULT_NAME
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str, got {name!r}")
    cls = _storage_class()
    library.init_if_needed()
    actor = volley.remote(_StorageActor).options(
        name=_PREFIX + name, get_if_exists=True, lifetime="detached", num_cpus=0
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
    storage = cls(name, handle)
    storage._get(handle.ping.remote())  # a dead actor of that name: the RuntimeError saying so
    return storage


def _optimize_worker(
    storage: Any,
    study_name: str,
    sampler: Any,
    pruner: Any,
    objective: Callable,
    key: str,
    share: int,
    catch: tuple,
    callbacks: list,
) -> int:
    """One of ``optuna_optimize``'s tasks: trials while tickets last. Returns how many."""
    optuna = _optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if sampler is not None:
        sampler.reseed_rng()  # each worker draws its own numbers
    study = optuna.load_study(
        study_name=study_name, storage=storage, sampler=sampler, pruner=pruner
    )
    ran = [0]

    def count(study: Any, trial: Any) -> None:
        ran[0] += 1

    done, want, busy = 0, 1, 0.0
    try:
        while take := storage._claim(key, share, want):
            ran[0] = 0
            t0 = time.perf_counter()
            study.optimize(objective, n_trials=take, catch=catch, callbacks=[*callbacks, count])
            busy += time.perf_counter() - t0
            done += ran[0]
            if ran[0] < take:  # a callback called study.stop(): the whole run stops
                storage._drain(key)
                break
            # Helpings of about HELPING_S of work: few claims for tiny trials, and a worker
            # learns soon that the run stopped (claims one trial at a time for long ones).
            want = max(1, int(HELPING_S * done / max(busy, 1e-9)))
    except BaseException:
        storage._drain(key)  # the others stop too: the run failed
        raise
    return done


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
    one ``study`` (which must use ``optuna_storage()``). Exactly ``n_trials`` trials are made:
    the workers take them from a counter in the storage, about 0.1 s of work at a time (one
    trial at a time when trials are longer; a fast worker runs more). Each worker uses a copy
    of the study's sampler and pruner, reseeded. An exception of the objective not in
    ``catch`` stops the other workers once their current helping is done (their current trial,
    for trials over 0.1 s) and is raised here (as Optuna's own ``optimize`` raises it); so
    does a callback's ``study.stop()``. Returns ``study``.

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
    storage._set_tickets(key, n_trials)
    task = volley.remote(_optimize_worker).options(num_cpus=num_cpus)
    refs = [
        task.remote(
            storage,
            study.study_name,
            study.sampler,
            study.pruner,
            objective,
            key,
            2 * n_workers,
            catch_t,
            list(callbacks or []),
        )
        for _ in range(min(n_workers, n_trials))
    ]
    try:
        volley.get(refs)
    finally:
        storage._drain(key)
    return study
