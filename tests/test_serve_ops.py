"""volley.serve in operation, over real HTTP under load: autoscaling up and down, a rolling
update, a SIGKILLed replica, and a SIGKILLed controller (the engine restarts it; it recovers
from its checkpoint while the ingress keeps serving). Client threads send requests the whole
time; each test says which answers it allows. Runs on one node and on the 3-node cluster."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict

import pytest
from conftest import proc_state, wait_for

import volley
import volley.state
from volley import serve

WAIT_S = 30.0
CONTROLLER = "SERVE_CONTROLLER"


@pytest.fixture
def http(serve_url):
    return serve_url


def call(url: str, body: bytes | None = None) -> tuple[int, str, bytes]:
    """(status, x-request-id, body) of one GET (a POST with ``body``); an HTTP error status is
    an answer too."""
    try:
        with urllib.request.urlopen(url, data=body, timeout=WAIT_S) as r:
            return r.status, r.headers.get("x-request-id", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("x-request-id", ""), e.read()


class Load:
    """``clients`` threads sending GETs (POSTs of ``body``) to ``url`` until stopped; every
    answer is kept, in order, with the time it came."""

    def __init__(self, url: str, clients: int, body: bytes | None = None) -> None:
        self.url = url
        self.body = body
        self.answers: list[tuple[float, int, str, bytes]] = []
        self.errors: list[BaseException] = []  # a request with no HTTP answer at all
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status, rid, body = call(self.url, self.body)
            except Exception as e:  # a reset connection, a client timeout
                with self._lock:
                    self.errors.append(e)
                continue
            with self._lock:
                self.answers.append((time.monotonic(), status, rid, body))

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(WAIT_S)

    def count(self) -> int:
        with self._lock:
            return len(self.answers)

    def since(self, t0: float) -> list[tuple[int, str, bytes]]:
        with self._lock:
            return [(s, rid, b) for t, s, rid, b in self.answers if t >= t0]

    def failed(self) -> list[tuple[int, str, bytes]]:
        with self._lock:
            return [(s, rid, b[:300]) for _, s, rid, b in self.answers if s != 200]

    def more(self, n: int, what: str) -> None:
        """Waits for ``n`` more answers."""
        goal = self.count() + n
        wait_for(lambda: self.count() >= goal, f"{n} more answers {what}", WAIT_S)


def running(app: str, dep: str) -> int:
    return serve.status().applications[app].deployments[dep].replica_states.get("RUNNING", 0)


@serve.deployment(num_replicas=2)
class Who:
    def __call__(self, request) -> str:
        return f"v1:{os.getpid()}"


@serve.deployment(name="Who", num_replicas=2)
class WhoV2:
    def __call__(self, request) -> str:
        return f"v2:{os.getpid()}"


def pids_answering(url: str, n: int) -> set[str]:
    """The distinct answers of ``url`` until there are ``n`` of them."""
    seen: set[str] = set()

    def more() -> bool:
        status, _, body = call(url)
        assert status == 200, body
        seen.add(body.decode())
        return len(seen) >= n

    wait_for(more, f"{n} distinct replicas to answer {url}", WAIT_S)
    return seen


def controller_row() -> dict | None:
    rows = volley.state.list_actors(filters={"name": CONTROLLER}, limit=None)
    alive = [r for r in rows if r["state"] == "ALIVE" and r["namespace"] == "volley.serve"]
    return alive[0] if alive else None


def live_controller() -> dict:
    """The controller's row (on a cluster the head lists a restarted one a moment late)."""
    return wait_for(controller_row, "the head to list a live serve controller", WAIT_S)


def test_a_sigkilled_controller_comes_back_and_requests_never_fail(http):
    url = f"{http}/who"
    serve.run(Who.bind(), name="who", route_prefix="/who")
    before = asdict(serve.status())
    replicas = pids_answering(url, 2)
    victim = live_controller()
    with Load(url, clients=3) as load:
        load.more(20, "before the kill")
        os.kill(victim["pid"], signal.SIGKILL)
        # Called while the controller restarts: it waits for the restarted one.
        after = asdict(serve.status())
        # (On a cluster, the head lists the restarted actor a moment after it answers.)
        row = wait_for(
            lambda: (r := controller_row()) is not None and r["pid"] != victim["pid"] and r,
            "the head to list the restarted controller",
            WAIT_S,
        )
        assert row["restarts"] >= 1, row
        load.more(30, "after the controller came back")
        t_recovered = time.monotonic()
        load.more(20, "after the recovery")
    assert not load.errors, load.errors[:3]
    assert load.failed() == [], load.failed()[:5]
    # The same applications, deployments and replicas, as before.
    for doc in (before, after):
        for a in doc["applications"].values():
            for d in a["deployments"].values():
                d.pop("ongoing_requests")
    assert after["applications"] == before["applications"]
    assert after["http"] == before["http"]
    # The same replica processes serve (adopted, not restarted).
    assert {b.decode() for _, _, b in load.since(t_recovered)} == replicas
    # A new version rolls out as usual with the restarted controller.
    serve.run(WhoV2.bind(), name="who", route_prefix="/who")
    new = pids_answering(url, 2)
    assert all(p.startswith("v2:") for p in new), new
    assert not {p.split(":")[1] for p in new} & {p.split(":")[1] for p in replicas}
    assert running("who", "Who") == 2


def test_autoscaling_up_and_down_over_http(http):
    @serve.deployment(
        max_ongoing_requests=8,
        autoscaling_config={
            "min_replicas": 1,
            "max_replicas": 3,
            "target_ongoing_requests": 1,
            "upscale_delay_s": 0,
            "downscale_delay_s": 0.5,
            "metrics_interval_s": 0.05,
            "look_back_period_s": 0.3,
        },
    )
    class Slow:
        async def __call__(self, request) -> int:
            await asyncio.sleep(0.2)
            return os.getpid()

    url = f"{http}/slow"
    serve.run(Slow.bind(), name="slow", route_prefix="/slow")
    assert running("slow", "Slow") == 1
    with Load(url, clients=6) as load:
        wait_for(
            lambda: running("slow", "Slow") == 3,
            "3 replicas under load",
            WAIT_S,
        )
        t_up = time.monotonic()
        wait_for(
            lambda: len({b for _, _, b in load.since(t_up)}) == 3,
            "3 distinct replica pids to answer",
            WAIT_S,
        )
    assert load.failed() == [] and not load.errors, (load.failed()[:5], load.errors[:3])
    wait_for(
        lambda: (
            serve.status().applications["slow"].deployments["Slow"].replica_states == {"RUNNING": 1}
        ),
        "a scale down to 1 replica once idle (the others stopped)",
        WAIT_S,
    )
    assert serve.status().applications["slow"].deployments["Slow"].target_replicas == 1
    assert call(url)[0] == 200


def test_a_rolling_update_fails_no_request(http):
    url = f"{http}/who"
    serve.run(Who.bind(), name="who", route_prefix="/who")
    old = pids_answering(url, 2)
    with Load(url, clients=3) as load:
        load.more(10, "before the update")
        serve.run(WhoV2.bind(), name="who", route_prefix="/who")
        n_done = load.count()  # serve.run returned: the old replicas are stopped
        load.more(30, "after the update")
    assert not load.errors, load.errors[:3]
    assert load.failed() == [], load.failed()[:5]
    after = [b.decode() for _, _, _, b in load.answers[n_done:]]
    # Only the request each client had in flight as serve.run returned may have reached an
    # old replica (it finished before the replica stopped); every later one is the new code's.
    stale = [b for b in after if not b.startswith("v2:")]
    assert len(stale) <= 3 and set(stale) <= old, (stale, old)
    assert len({b for b in after if b.startswith("v2:")}) == 2, after


def test_a_replica_sigkilled_under_load_costs_only_its_requests(http):
    @serve.deployment(num_replicas=2, max_ongoing_requests=4)
    class Work:
        async def __call__(self, request) -> int:
            await asyncio.sleep(0.05)
            return os.getpid()

    url = f"{http}/work"
    serve.run(Work.bind(), name="work", route_prefix="/work")
    pids = {int(p) for p in pids_answering(url, 2)}
    clients = 4
    # POSTs: the ingress sends a GET whose replica died under it to another replica once, but
    # not a POST (it may have run): those in flight on the victim get their 5xx.
    with Load(url, clients=clients, body=b"work") as load:
        load.more(20, "before the kill")
        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        t_kill = time.monotonic()
        # Replaced: two replicas run again, one a new process.
        wait_for(
            lambda: (
                running("work", "Work") == 2
                and serve.status().applications["work"].deployments["Work"].message
            ),
            "the killed replica to be replaced",
            WAIT_S,
        )
        t_replaced = time.monotonic()
        wait_for(
            lambda: {int(b) for s, _, b in load.since(t_replaced) if s == 200} - pids,
            "an answer from the new replica",
            WAIT_S,
        )
        load.more(20, "after the replacement")
    assert not load.errors, load.errors[:3]
    failed = load.failed()
    # At most the requests in flight on the dead replica when it died: one per client (the
    # ingress takes a replica whose call died out of its choices at once, on any node).
    assert len(failed) <= clients, failed
    late = [(t, s) for t, s, _, _ in load.answers if s != 200 and t >= t_replaced]
    assert late == [], late[:5]
    for status, rid, body in failed:
        assert 500 <= status < 600, (status, body)
        assert rid and rid.encode() in body, (rid, body)  # the body names the request
        assert b"died" in body, body
    answered = {int(b) for s, _, b in load.since(t_kill) if s == 200}
    assert victim in pids and len(answered - pids) >= 1
    msg = serve.status().applications["work"].deployments["Work"].message
    assert "replaced" in msg, msg


def gone(pid: int) -> bool:
    """Whether process ``pid`` has exited (a zombie counts: it runs no more)."""
    return proc_state(pid) in (None, "Z")


def test_a_replica_that_dies_while_the_controller_is_dead_is_replaced(http):
    url = f"{http}/who"
    serve.run(Who.bind(), name="who", route_prefix="/who")
    replicas = pids_answering(url, 2)
    victim = int(min(replicas).split(":")[1])
    ctl = live_controller()
    os.kill(ctl["pid"], signal.SIGKILL)
    os.kill(victim, signal.SIGKILL)
    # The restarted controller finds it dead among those it adopts, and starts another.
    wait_for(
        lambda: (
            (d := serve.status().applications["who"].deployments["Who"]).replica_states
            == {"RUNNING": 2}
            and "replaced" in d.message
        ),
        "the restarted controller to replace the replica that died meanwhile",
        WAIT_S,
    )
    now = pids_answering(url, 2)
    assert (replicas - now) == {f"v1:{victim}"} and len(now - replicas) == 1, (replicas, now)


def test_a_controller_killed_for_good_leaves_no_replica_behind(http):
    url = f"{http}/who"
    serve.run(Who.bind(), name="who", route_prefix="/who")
    pids = [int(p.split(":")[1]) for p in pids_answering(url, 2)]
    # Killed without restart and without serve.shutdown: the replicas (detached) live on
    # until a new controller starts; it finds the old checkpoint, not its own, and stops them.
    volley.kill(volley.get_actor(CONTROLLER, namespace="volley.serve"))
    assert call(url)[0] == 200, "the ingress still serves with the old table"
    serve.start(http_options={"host": "127.0.0.1", "port": 0})
    assert serve.status().applications == {}
    for pid in pids:
        wait_for(lambda pid=pid: gone(pid), f"the old replica {pid} to be stopped", WAIT_S)


def test_a_rolling_update_cut_short_by_the_controller_s_death_completes(http, tmp_path):
    gate = tmp_path / "gate"

    @serve.deployment(name="Who", num_replicas=2)
    class Gated:
        def __init__(self, gate: str) -> None:
            while not os.path.exists(gate):  # held until the test opens the gate
                time.sleep(0.01)

        def __call__(self, request) -> str:
            return f"v3:{os.getpid()}"

    url = f"{http}/who"
    serve.run(Who.bind(), name="who", route_prefix="/who")
    old = pids_answering(url, 2)
    errors: list[BaseException] = []

    def deploy() -> None:
        try:
            serve.run(Gated.bind(str(gate)), name="who", route_prefix="/who")
        except BaseException as e:
            errors.append(e)

    with Load(url, clients=2) as load:
        t = threading.Thread(target=deploy)
        t.start()
        wait_for(
            lambda: (
                serve.status().applications["who"].deployments["Who"].replica_states
                == {"RUNNING": 2, "STARTING": 2}
            ),
            "the new version's replicas to be starting",
            WAIT_S,
        )
        ctl = live_controller()
        os.kill(ctl["pid"], signal.SIGKILL)
        load.more(10, "while the controller restarts, mid-update")
        gate.touch()
        t.join(WAIT_S)
        assert not t.is_alive(), "serve.run returned"
        n_done = load.count()
        load.more(20, "after the update")
    assert errors == [], errors
    assert not load.errors and load.failed() == [], (load.errors[:3], load.failed()[:5])
    after = [b.decode() for _, _, _, b in load.answers[n_done:]]
    stale = [b for b in after if not b.startswith("v3:")]
    assert len(stale) <= 2 and set(stale) <= old, (stale, old)
    d = serve.status().applications["who"].deployments["Who"]
    assert d.replica_states == {"RUNNING": 2} and d.status == "HEALTHY", d
    for p in old:
        pid = int(p.split(":")[1])
        wait_for(lambda pid=pid: gone(pid), f"the old replica {pid} to stop", WAIT_S)


def test_the_same_source_closing_over_other_values_is_new_code(http):
    def make(value: int):
        @serve.deployment(name="Const")
        class Const:
            def __call__(self) -> tuple[int, int]:
                return value, os.getpid()

        return Const

    h = serve.run(make(1).bind(), name="const", route_prefix=None)
    v1, pid1 = h.remote().result(timeout_s=WAIT_S)
    # Same source, another value closed over: the replica is replaced by one with the new value.
    h = serve.run(make(2).bind(), name="const", route_prefix=None)
    v2, pid2 = h.remote().result(timeout_s=WAIT_S)
    assert (v1, v2) == (1, 2) and pid2 != pid1
    # The same again: nothing rolls, the same replica answers.
    h = serve.run(make(2).bind(), name="const", route_prefix=None)
    assert h.remote().result(timeout_s=WAIT_S) == (2, pid2)


@pytest.mark.one_node("sees the call pending at the controller through actor_state, local only")
def test_a_call_that_waits_too_long_for_the_restarted_controller_says_so(http, monkeypatch):
    from volley.serve import _api

    monkeypatch.setattr(_api, "CONTROLLER_RESTART_WAIT_S", 0.0)  # no wait allowed
    ctl = live_controller()
    handle = volley.get_actor(CONTROLLER, namespace="volley.serve")
    # A status call held in the stopped process, then its death: the call was in flight.
    os.kill(ctl["pid"], signal.SIGSTOP)
    out: list[BaseException] = []
    t = threading.Thread(target=lambda: out.append(pytest.raises(TimeoutError, serve.status)))
    try:
        t.start()
        wait_for(
            lambda: (volley.actor_state(handle) or {}).get("pending_calls", 0) >= 1,
            "the status call to be sent to the stopped controller",
            WAIT_S,
        )
    finally:
        os.kill(ctl["pid"], signal.SIGKILL)  # (never left stopped)
    t.join(WAIT_S)
    assert out, "serve.status() returned"
    msg = str(out[0].value)
    assert "for the serve controller to come back after its process died" in msg, msg
    assert "RESTARTING" in msg and msg.endswith("for the serve controller to answer"), msg
    # With the usual wait, it answers once restarted.
    monkeypatch.undo()
    assert serve.status().http_status is not None


def test_an_unreadable_checkpoint_leaves_a_controller_that_starts_empty(http):
    from volley import library

    serve.run(Who.bind(), name="who", route_prefix="/who")
    serve.shutdown()  # (deletes the checkpoint; a broken one is put in its place)
    library.kv_put("controller/checkpoint", b"not a pickle", namespace="volley.serve")
    serve.start(http_options={"host": "127.0.0.1", "port": 0})
    assert serve.status().applications == {}
    assert library.kv_get("controller/checkpoint", namespace="volley.serve") != b"not a pickle"
