"""The actor rows (o)-(s) for systems with Ray's actor API (volley and Ray): `lib.remote(cls)`,
`Cls.options(num_cpus=0).remote()`, `handle.method.remote(...)`, `lib.get`, `lib.kill`. Each
function takes the system's `session` context manager (yielding the library) and its `warm`
helper, so both run exactly the same code.

Every actor is made with num_cpus=0 stated: it is the lifetime default of both systems, and in
Ray it also means that placing an actor does not wait for a free CPU (Ray's default actor
needs 1 CPU to be scheduled, 0 while it runs)."""

import time

from benchmarks import common


def _actor_class(lib):
    return lib.remote(common.Pinger).options(num_cpus=0)


def _started_actor(lib):
    """One actor, past its first call (process started, class shipped, method resolved)."""
    actor = _actor_class(lib).remote()
    lib.get(actor.ping.remote())
    return actor


def o(session, warm):
    """Calls submitted back to back on one actor, then one get of all their refs."""
    n = common.SIZES["actor_calls"]
    with session() as lib:
        warm(lib)
        actor = _started_actor(lib)
        t0 = time.perf_counter()
        refs = [actor.ping.remote() for _ in range(n)]
        submitted = time.perf_counter() - t0
        replies = lib.get(refs)
        elapsed = time.perf_counter() - t0
        common.check_replies(replies, n)
        return {"value": elapsed, "submit_s": submitted}


def p(session, warm):
    """Sequential round trips: lib.get(actor.ping.remote()), one at a time."""
    n = common.SIZES["actor_round_trips"]
    with session() as lib:
        warm(lib)
        actor = _started_actor(lib)
        replies = []
        t0 = time.perf_counter()
        for _ in range(n):
            replies.append(lib.get(actor.ping.remote()))
        elapsed = time.perf_counter() - t0
        common.check_replies(replies, n)
        return elapsed


def q(session, warm):
    """actor.total.remote(arr) with the same array each time (each call serialises it anew),
    all submitted, then one get; one identical untimed call first."""
    n = common.SIZES["actor_arg_calls"]
    arr = common.big_array(common.SIZES["actor_arg_mib"])
    expected = float(arr.sum())
    with session() as lib:
        warm(lib)
        actor = _started_actor(lib)
        lib.get(actor.total.remote(arr))
        t0 = time.perf_counter()
        values = lib.get([actor.total.remote(arr) for _ in range(n)])
        elapsed = time.perf_counter() - t0
        common.check_count(values, n)
        for value in values:
            common.check_close(value, expected)
        return elapsed


def r(session, warm):
    """SIZES["callers"] tasks, each given the handles of all SIZES["caller_actors"] actors,
    each submitting SIZES["caller_calls"] calls round-robin over them and then getting them.
    The actors are started and called once, and one untimed round of the callers with a few
    calls each runs first (the task shipped, the handles unpickled, and the extra workers that
    the callers blocked in get make room for started); then one timed round."""
    callers, calls = common.SIZES["callers"], common.SIZES["caller_calls"]
    with session() as lib:
        caller = lib.remote(common.actor_caller)
        warm(lib)
        cls = _actor_class(lib)
        actors = [cls.remote() for _ in range(common.SIZES["caller_actors"])]
        common.check_replies(lib.get([a.ping.remote() for a in actors]), len(actors))

        def round_of(k):
            return lib.get([caller.remote(lib.__name__, actors, k) for _ in range(callers)])

        common.check_replies(round_of(1), callers)
        round_of(len(actors))
        t0 = time.perf_counter()
        totals = round_of(calls)
        elapsed = time.perf_counter() - t0
        if totals != [calls] * callers:
            raise RuntimeError(f"callers returned {totals}, expected {calls} each")
        return {"value": elapsed, "calls": callers * calls}


def s(session, warm):
    """Actor creation in waves: SIZES["actor_wave"] actors created, one call on each (all
    gathered: every actor has started and answered), then each killed; repeated until
    SIZES["actors_created"] actors have been made. One actor is created, called and killed
    before the timed region (the class shipped)."""
    total, wave = common.SIZES["actors_created"], common.SIZES["actor_wave"]
    with session() as lib:
        warm(lib)
        cls = _actor_class(lib)
        lib.kill(_started_actor(lib))
        t0 = time.perf_counter()
        for _ in range(total // wave):
            actors = [cls.remote() for _ in range(wave)]
            common.check_replies(lib.get([a.ping.remote() for a in actors]), wave)
            for actor in actors:
                lib.kill(actor)
            del actors
        elapsed = time.perf_counter() - t0
        return {"value": elapsed, "actors": total // wave * wave}
