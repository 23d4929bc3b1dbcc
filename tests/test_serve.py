"""volley.serve's deployments, controller and handles end to end: real replica actors (their
own processes), real SIGKILLs, live reconfiguration, rolling updates under a steady stream of
calls, health checks, and autoscaling from zero and back. With VOLLEY_TEST_CLUSTER=1 the
replicas land on the cluster's nodes and the handles find them through the head."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
from pathlib import Path

import pytest
from conftest import CLUSTER_MODE, wait_for

import volley
from volley import library, serve
from volley.serve import _wire

WAIT_S = 30.0


@pytest.fixture
def served(volley_shared):
    """A running volley; every application is deleted and the controller stopped after."""
    yield
    serve.shutdown()


def replicas(app: str, dep: str) -> dict[str, int]:
    return serve.status().applications[app].deployments[dep].replica_states


def routes() -> dict:
    raw = library.kv_get(_wire.ROUTES_KEY, namespace=_wire.KV_NAMESPACE)
    return json.loads(raw) if raw else {}


async def _wait_file(path: str) -> None:
    while not os.path.exists(path):
        await asyncio.sleep(0.01)


@serve.deployment(num_replicas=2)
class Echo:
    def __init__(self, tag: str = "") -> None:
        self.tag = tag

    def __call__(self, x):
        return f"{self.tag}{x}"

    def pid(self) -> int:
        return os.getpid()

    async def slow_pid(self, path: str) -> int:
        await _wait_file(path)
        return os.getpid()


# ----------------------------------------------------------------------------- options


def test_bad_options_fail_at_the_decorator_naming_the_option():
    with pytest.raises(TypeError, match=r"unknown deployment option\(s\) \['num_replica'\]"):
        Echo.options(num_replica=2)
    with pytest.raises(ValueError, match="max_ongoing_requests must be an int >= 1, not 0"):
        serve.deployment(max_ongoing_requests=0)
    with pytest.raises(ValueError, match="num_replicas must be an int >= 0"):
        serve.deployment(num_replicas=1.5)
    with pytest.raises(ValueError, match="max_replicas .* is below min_replicas"):
        serve.deployment(autoscaling_config={"min_replicas": 3, "max_replicas": 2})
    with pytest.raises(ValueError, match="unknown autoscaling_config key"):
        serve.deployment(autoscaling_config={"min_replica": 1})
    with pytest.raises(ValueError, match="not both"):
        serve.deployment(num_replicas=2, autoscaling_config={"max_replicas": 2})
    with pytest.raises(ValueError, match="unknown ray_actor_options key"):
        serve.deployment(ray_actor_options={"num_cpu": 1})
    with pytest.raises(ValueError, match="runtime_env'\\] is not supported yet"):
        serve.deployment(ray_actor_options={"runtime_env": {"pip": ["x"]}})
    with pytest.raises(TypeError, match="cannot be called directly"):
        Echo()
    with pytest.raises(TypeError, match="takes an application"):
        serve.run(Echo)
    with pytest.raises(ValueError, match="route_prefix must not end with '/'"):
        serve.run(Echo.bind(), route_prefix="/x/")


# ----------------------------------------------------------------------------- handles


def test_a_handle_calls_methods_and_spreads_calls_over_the_replicas(served, tmp_path):
    h = serve.run(Echo.bind("e:"), name="echo", route_prefix="/echo")
    assert h.remote(1).result(timeout_s=WAIT_S) == "e:1"
    # Two calls held at once go to two replicas (power of two choices on ongoing calls).
    gate = str(tmp_path / "go")
    held = [h.slow_pid.remote(gate) for _ in range(2)]
    Path(gate).touch()
    assert len({r.result(timeout_s=WAIT_S) for r in held}) == 2
    assert replicas("echo", "Echo") == {"RUNNING": 2}
    # The ingress's routing table names both replica actors under the prefix.
    (route,) = routes()["routes"]
    assert route["prefix"] == "/echo" and route["deployment"] == "Echo"
    assert len(route["replicas"]) == 2 and all(len(r) == 32 for r in route["replicas"])
    assert route["max_ongoing_requests"] == 5 and route["max_queued_requests"] == -1
    assert serve.get_app_handle("echo").pid.remote().result(timeout_s=WAIT_S) > 0


def test_a_response_passed_to_another_call_arrives_as_its_value(served):
    h = serve.run(Echo.bind(), name="echo", route_prefix=None)
    first = h.remote("a")
    assert h.remote(first).result(timeout_s=WAIT_S) == "a"

    async def in_async_code():
        return await h.remote("b")

    assert asyncio.run(in_async_code()) == "b"
    with pytest.raises(volley.SerializationError, match="travels only as an argument of a handle"):
        h.remote([first]).result(timeout_s=WAIT_S)


@serve.deployment
def add_one(x):
    return x + 1


@serve.deployment
class Chain:
    def __init__(self, step, echo) -> None:
        self.step = step
        self.echo = echo

    async def __call__(self, x):
        y = await self.step.remote(x)
        return await self.echo.remote(y)


def test_bound_deployments_reach_the_constructor_as_handles(served):
    app = Chain.bind(add_one.bind(), Echo.options(num_replicas=1).bind("chain:"))
    h = serve.run(app, name="chain", route_prefix="/chain")
    assert h.remote(1).result(timeout_s=WAIT_S) == "chain:2"
    st = serve.status().applications["chain"]
    assert st.status == "RUNNING" and set(st.deployments) == {"add_one", "Echo", "Chain"}
    assert serve.get_deployment_handle("add_one", "chain").remote(4).result(timeout_s=WAIT_S) == 5
    # Only the ingress has a route; the others are reached through handles.
    assert [r["deployment"] for r in routes()["routes"]] == ["Chain"]


def test_a_handle_pickles_into_a_task(served):
    h = serve.run(Echo.bind("t:"), name="echo", route_prefix=None)

    @volley.remote
    def call(handle, x):
        return handle.remote(x).result(timeout_s=WAIT_S)

    assert volley.get(call.remote(h, 7), timeout=WAIT_S) == "t:7"


@serve.deployment(max_ongoing_requests=2, num_replicas=1)
class Gauge:
    def __init__(self) -> None:
        self.now = 0
        self.peak = 0

    async def hold(self, path: str) -> None:
        self.now += 1
        self.peak = max(self.peak, self.now)
        await _wait_file(path)
        self.now -= 1

    def peak_seen(self) -> int:
        return self.peak


def test_a_replica_runs_at_most_max_ongoing_requests_at_once(served, tmp_path):
    h = serve.run(Gauge.bind(), name="gauge", route_prefix=None)
    gate = str(tmp_path / "go")
    held = [h.hold.remote(gate) for _ in range(5)]
    wait_for(
        lambda: serve.status().applications["gauge"].deployments["Gauge"].ongoing_requests == 5,
        "the controller to count 5 calls at the replica (2 running, 3 waiting there)",
    )
    Path(gate).touch()
    for r in held:
        r.result(timeout_s=WAIT_S)
    assert h.peak_seen.remote().result(timeout_s=WAIT_S) == 2


# ----------------------------------------------------------------------------- errors


@serve.deployment
class Broken:
    def __init__(self) -> None:
        raise ValueError("no model file")

    def __call__(self):
        return 1


def test_a_constructor_that_raises_fails_serve_run_with_its_error(served):
    with pytest.raises(RuntimeError, match="ValueError: no model file"):
        serve.run(Broken.bind(), name="broken", route_prefix="/broken")
    st = serve.status().applications["broken"]
    assert st.status == "DEPLOY_FAILED" and "no model file" in st.message
    # The failed application holds no route: another takes its prefix.
    h = serve.run(Echo.options(num_replicas=1).bind(), name="fixed", route_prefix="/broken")
    assert h.remote(1).result(timeout_s=WAIT_S) == "1"
    serve.delete("broken")
    assert "broken" not in serve.status().applications


def test_unknown_and_deleted_applications_are_clear_errors(served):
    with pytest.raises(ValueError, match="no application named 'nope' runs"):
        serve.get_app_handle("nope")
    with pytest.raises(ValueError, match="no deployment 'X' in application 'nope'"):
        serve.get_deployment_handle("X", "nope")
    h = serve.run(Echo.bind(), name="gone", route_prefix=None)
    assert h.remote(1).result(timeout_s=WAIT_S) == "1"
    serve.delete("gone")
    with pytest.raises(serve.NoReplicaError, match="deployment 'Echo' of application 'gone'"):
        h.remote(2).result(timeout_s=WAIT_S)
    with pytest.raises(ValueError, match="no application named 'gone'"):
        serve.delete("gone")
    with pytest.raises(AttributeError, match="has no method 'nothing'"):
        h2 = serve.run(Echo.bind(), name="again", route_prefix=None)
        h2.nothing.remote().result(timeout_s=WAIT_S)


def test_two_applications_cannot_share_a_route_prefix(served):
    serve.run(Echo.bind(), name="one", route_prefix="/same")
    with pytest.raises(RuntimeError, match="route prefix '/same' is taken by application 'one'"):
        serve.run(add_one.bind(), name="two", route_prefix="/same")


# ----------------------------------------------------------------------------- updates


@serve.deployment(user_config={"greeting": "hello"})
class Greeter:
    def __init__(self) -> None:
        self.greeting = "?"

    def reconfigure(self, config: dict) -> None:
        self.greeting = config["greeting"]

    def __call__(self, name: str):
        return f"{self.greeting} {name}", os.getpid()


def test_a_new_user_config_reconfigures_the_running_replicas(served):
    h = serve.run(Greeter.bind(), name="greet", route_prefix=None)
    text, pid = h.remote("ann").result(timeout_s=WAIT_S)
    assert text == "hello ann"
    serve.run(Greeter.options(user_config={"greeting": "hi"}).bind(), name="greet")
    text2, pid2 = h.remote("bob").result(timeout_s=WAIT_S)
    assert text2 == "hi bob" and pid2 == pid  # the same process: no restart


def test_a_code_change_rolls_the_replicas_without_a_failed_call(served):
    h = serve.run(Echo.bind("v1:"), name="roll", route_prefix="/roll")
    old = {h.pid.remote().result(timeout_s=WAIT_S) for _ in range(8)}
    seen: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def caller():
        while not stop.is_set():
            try:
                seen.append(h.remote("x").result(timeout_s=WAIT_S))
            except BaseException as e:  # every failure is the test's business
                errors.append(e)

    threads = [threading.Thread(target=caller) for _ in range(3)]
    for t in threads:
        t.start()
    wait_for(lambda: len(seen) > 20, "calls to flow before the update")
    serve.run(Echo.bind("v2:"), name="roll", route_prefix="/roll")  # new constructor args
    n = len(seen)
    wait_for(lambda: len(seen) > n + 20, "calls to flow after the update")
    stop.set()
    for t in threads:
        t.join(WAIT_S)
    assert errors == []
    assert seen[0] == "v1:x" and seen[-1] == "v2:x"
    new = {h.pid.remote().result(timeout_s=WAIT_S) for _ in range(8)}
    assert not new & old
    assert replicas("roll", "Echo") == {"RUNNING": 2}


# ----------------------------------------------------------------------------- faults


def names(app: str, dep: str) -> list[str]:
    """The names of the deployment's routed replica actors (the controller's document)."""
    raw = library.kv_get(f"deployment/{app}/{dep}", namespace=_wire.KV_NAMESPACE)
    assert raw is not None, f"no document for deployment {dep!r} of {app!r}"
    return json.loads(raw)["replicas"]


def replica_handles(app: str, dep: str) -> dict[int, tuple[str, volley.ActorHandle]]:
    """The deployment's replica actors (name, handle) by pid, found by name as handles do."""
    out = {}
    for name in names(app, dep):
        a = volley.get_actor(name, namespace=_wire.KV_NAMESPACE)
        out[volley.get(a.stats.remote(), timeout=WAIT_S)["pid"]] = (name, a)
    return out


def test_a_sigkilled_replica_is_replaced_while_calls_go_to_the_other(served):
    h = serve.run(Echo.bind(), name="kill", route_prefix="/kill")
    by_pid = replica_handles("kill", "Echo")
    assert len(by_pid) == 2
    victim = sorted(by_pid)[0]
    victim_name, victim_actor = by_pid[victim]
    os.kill(victim, signal.SIGKILL)

    def known_dead() -> bool:
        try:
            volley.get(victim_actor.stats.remote(), timeout=WAIT_S)
        except volley.ActorDiedError:
            return True
        return False

    wait_for(known_dead, "this node to know the SIGKILLed replica dead")
    if not CLUSTER_MODE:
        # Every call made once the engine here knows is answered: the handle skips the dead
        # replica. (This node does not learn the state of an actor on another node.)
        for i in range(20):
            assert h.remote(i).result(timeout_s=WAIT_S) == str(i)
    wait_for(
        lambda: victim_name not in names("kill", "Echo"),
        "the controller to take the dead replica out of the routing",
    )
    for i in range(20):  # the survivor answers while the replacement starts
        assert h.remote(i).result(timeout_s=WAIT_S) == str(i)
    wait_for(
        lambda: len({h.pid.remote().result(timeout_s=WAIT_S) for _ in range(10)} - {victim}) == 2,
        "a new replica to replace the killed one",
    )
    assert replicas("kill", "Echo") == {"RUNNING": 2}
    assert "replaced" in serve.status().applications["kill"].deployments["Echo"].message


@serve.deployment(num_replicas=2, health_check_period_s=0.1, health_check_timeout_s=5)
class Flaky:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def check_health(self) -> None:
        if os.path.exists(f"{self.marker}.{os.getpid()}"):
            raise RuntimeError("the model went bad")

    def __call__(self):
        return os.getpid()


def test_a_replica_failing_its_health_check_is_replaced(served, tmp_path):
    marker = str(tmp_path / "bad")
    h = serve.run(Flaky.bind(marker), name="flaky", route_prefix=None)
    pids: set[int] = set()
    wait_for(
        lambda: (
            pids.update(h.remote().result(timeout_s=WAIT_S) for _ in range(4)) or len(pids) == 2
        ),
        "both replicas to answer",
    )
    bad = sorted(pids)[0]
    Path(f"{marker}.{bad}").touch()
    wait_for(
        lambda: (
            "the model went bad"
            in (serve.status().applications["flaky"].deployments["Flaky"].message)
        ),
        "the controller to see the failed health check",
    )
    wait_for(lambda: replicas("flaky", "Flaky") == {"RUNNING": 2}, "a replacement replica")
    after = {h.remote().result(timeout_s=WAIT_S) for _ in range(10)}
    assert bad not in after


# ----------------------------------------------------------------------------- autoscaling


@serve.deployment(
    autoscaling_config={
        "min_replicas": 0,
        "max_replicas": 3,
        "target_ongoing_requests": 1,
        "upscale_delay_s": 0,
        "downscale_delay_s": 0.5,
        "metrics_interval_s": 0.05,
        "look_back_period_s": 0.2,
    },
    max_ongoing_requests=1,
)
class Scaled:
    async def __call__(self, path: str) -> int:
        await _wait_file(path)
        return os.getpid()


def test_autoscaling_from_zero_up_to_max_and_back_to_zero(served, tmp_path):
    h = serve.run(Scaled.bind(), name="auto", route_prefix="/auto")
    assert replicas("auto", "Scaled") == {}
    assert routes()["routes"][0]["replicas"] == []
    gate = str(tmp_path / "go")
    # Calls made with no replica wait in the handle while the controller starts one.
    held = [h.remote(gate) for _ in range(3)]
    wait_for(lambda: replicas("auto", "Scaled").get("RUNNING") == 3, "3 replicas for 3 calls")
    Path(gate).touch()
    assert len({r.result(timeout_s=WAIT_S) for r in held}) >= 1
    wait_for(lambda: replicas("auto", "Scaled") == {}, "the replicas to scale back to zero")
    assert h.remote(gate).result(timeout_s=WAIT_S) > 0  # and up again for the next call


def test_a_replica_that_can_never_be_placed_fails_serve_run_at_once(served):
    impossible = Echo.options(ray_actor_options={"num_gpus": 64})
    with pytest.raises(RuntimeError, match="needs 64 GPU"):
        serve.run(impossible.bind(), name="nogpu", route_prefix=None)


def test_calls_beyond_max_queued_requests_are_refused_at_the_handle(served, tmp_path):
    h = serve.run(Gauge.options(max_queued_requests=1).bind(), name="bp", route_prefix=None)
    gate = str(tmp_path / "go")
    held = [h.hold.remote(gate) for _ in range(3)]  # 2 run, 1 waits
    with pytest.raises(serve.BackPressureError, match="max_queued_requests=1"):
        h.hold.remote(gate).result(timeout_s=WAIT_S)
    wait_for(
        lambda: serve.status().applications["bp"].deployments["Gauge"].ongoing_requests == 3,
        "the 3 accepted calls to reach the replica",
    )
    Path(gate).touch()
    for r in held:
        r.result(timeout_s=WAIT_S)
    assert h.peak_seen.remote().result(timeout_s=WAIT_S) == 2


def test_serve_start_writes_the_ingress_address_and_checks_it(served):
    with pytest.raises(ValueError, match="port'\\] must be an int in 0-65535"):
        serve.start(http_options={"port": 70000})
    with pytest.raises(ValueError, match="unknown http_options \\['hots'\\]"):
        serve.start(http_options={"hots": "x"})
    serve.start(http_options={"host": "127.0.0.1", "port": 0})
    raw = library.kv_get(_wire.HTTP_KEY, namespace=_wire.KV_NAMESPACE)
    assert json.loads(raw) == {"host": "127.0.0.1", "port": 0}
    assert serve.status().http == {"host": "127.0.0.1", "port": 0}
    serve.shutdown()
    assert library.kv_get(_wire.HTTP_KEY, namespace=_wire.KV_NAMESPACE) is None
    assert library.kv_get(_wire.ROUTES_KEY, namespace=_wire.KV_NAMESPACE) is None


def test_a_handle_from_before_a_serve_restart_finds_the_new_replicas(served):
    h = serve.run(Echo.bind("old:"), name="re", route_prefix=None)
    assert h.remote(1).result(timeout_s=WAIT_S) == "old:1"
    serve.shutdown()
    serve.run(Echo.bind("new:"), name="re", route_prefix=None)
    assert h.remote(1).result(timeout_s=WAIT_S) == "new:1"


@serve.deployment
class Web:
    async def __call__(self, request):
        return {"path": request.url.path if hasattr(request, "url") else None}


def test_the_replica_answers_a_request_frame_as_the_ingress_sends_it(served):
    pytest.importorskip("volley.serve._http", reason="the HTTP helper's module lands separately")
    serve.run(Web.bind(), name="web", route_prefix="/web")
    (route,) = routes()["routes"]
    raw = library.kv_get("deployment/web/Web", namespace=_wire.KV_NAMESPACE)
    (name,) = json.loads(raw)["replicas"]
    replica = volley.get_actor(name, namespace=_wire.KV_NAMESPACE)
    frame = _wire.encode_request("rid-1", "GET", "/web/x", "/web", "", "127.0.0.1:1", [], b"")
    status, headers, body = _wire.decode_response(
        volley.get(replica.handle_http.remote(frame), timeout=WAIT_S)
    )
    assert status == 200 and json.loads(body) == {"path": "/web/x"}
    assert route["replicas"] == [volley.get(replica.stats.remote(), timeout=WAIT_S)["actor_id"]]


def test_an_update_whose_constructor_raises_leaves_the_old_replicas_serving(served):
    h = serve.run(Echo.bind("ok:"), name="keep", route_prefix=None)
    with pytest.raises(RuntimeError, match="ValueError: no model file"):
        serve.run(Broken.options(name="Echo").bind(), name="keep", route_prefix=None)
    assert h.remote(1).result(timeout_s=WAIT_S) == "ok:1"
    st = serve.status().applications["keep"]
    assert st.status == "DEPLOY_FAILED" and st.deployments["Echo"].replica_states == {"RUNNING": 2}
    # The old code serves on (the failed one is not retried by the control loop).
    pids = {h.pid.remote().result(timeout_s=WAIT_S) for _ in range(10)}
    assert replicas("keep", "Echo") == {"RUNNING": 2} and len(pids) <= 2


def test_requests_the_ingress_holds_start_a_replica_of_a_deployment_at_zero(served, tmp_path):
    serve.run(Scaled.bind(), name="cold", route_prefix="/cold")
    assert replicas("cold", "Scaled") == {}
    assert library.kv_get(_wire.HTTP_KEY, namespace=_wire.KV_NAMESPACE) is not None
    # What the HTTP ingress writes while requests wait for a route with no replica.
    library.kv_put("waiting/cold/Scaled", json.dumps({"waiting": 2}), namespace=_wire.KV_NAMESPACE)
    wait_for(
        lambda: len(routes()["routes"][0]["replicas"]) == 2, "2 routed replicas for 2 requests"
    )
    library.kv_put("waiting/cold/Scaled", json.dumps({"waiting": 0}), namespace=_wire.KV_NAMESPACE)
    wait_for(lambda: replicas("cold", "Scaled") == {}, "the replicas to scale back to zero")
    serve.delete("cold")
    assert library.kv_get("waiting/cold/Scaled", namespace=_wire.KV_NAMESPACE) is None


def test_delete_lets_a_call_in_flight_finish_before_the_replica_stops(served, tmp_path):
    h = serve.run(Echo.options(num_replicas=1).bind(), name="drain", route_prefix="/drain")
    gate = str(tmp_path / "go")
    held = h.slow_pid.remote(gate)
    wait_for(
        lambda: serve.status().applications["drain"].deployments["Echo"].ongoing_requests == 1,
        "the held call to reach the replica",
    )
    deleting = threading.Thread(target=serve.delete, args=("drain",))
    deleting.start()
    wait_for(lambda: routes().get("routes") == [], "the route to be withdrawn first")
    assert deleting.is_alive()  # it waits for the call in flight
    Path(gate).touch()
    assert held.result(timeout_s=WAIT_S) > 0
    deleting.join(WAIT_S)
    assert not deleting.is_alive() and "drain" not in serve.status().applications


def test_a_call_in_flight_on_a_sigkilled_replica_fails_with_a_clear_error(served, tmp_path):
    h = serve.run(Echo.options(num_replicas=1).bind(), name="inflight", route_prefix=None)
    (pid,) = replica_handles("inflight", "Echo")
    held = h.slow_pid.remote(str(tmp_path / "never"))
    wait_for(
        lambda: serve.status().applications["inflight"].deployments["Echo"].ongoing_requests,
        "the held call to reach the replica",
    )
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(volley.ActorDiedError, match="SIGKILL"):
        held.result(timeout_s=WAIT_S)
    # A replacement takes the next calls.
    assert wait_for(lambda: h.pid.remote().result(timeout_s=WAIT_S) != pid, "a new replica")


def test_serve_start_raises_what_the_ingress_reports(served):
    # A port another socket holds: the ingress (Rust, in the head) cannot bind it and says so.
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"cannot listen on 127.0.0.1:{port}"):
            serve.start(http_options={"host": "127.0.0.1", "port": port})
    # The same address once it is free: it listens.
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    assert serve.status().http_status == {"host": "127.0.0.1", "port": port, "error": None}


def test_a_replica_far_over_its_limit_still_answers_the_controller(served, tmp_path):
    busy = Gauge.options(health_check_period_s=0.1, health_check_timeout_s=2)
    h = serve.run(busy.bind(), name="busy", route_prefix=None)
    (pid,) = replica_handles("busy", "Gauge")
    gate = str(tmp_path / "go")
    held = [h.hold.remote(gate) for _ in range(40)]  # 2 run, 38 wait in the replica
    # The metric read gets through (the count is the controller's) and no health check fails.
    wait_for(
        lambda: serve.status().applications["busy"].deployments["Gauge"].ongoing_requests == 40,
        "the controller to read 40 calls at the busy replica",
    )
    Path(gate).touch()
    for r in held:
        r.result(timeout_s=WAIT_S)
    assert replica_handles("busy", "Gauge").keys() == {pid}
    assert serve.status().applications["busy"].deployments["Gauge"].message == ""


def test_a_call_longer_than_the_graceful_shutdown_timeout_is_stopped_with_its_replica(
    served, tmp_path
):
    quick = Echo.options(num_replicas=1, graceful_shutdown_timeout_s=0.2)
    h = serve.run(quick.bind(), name="short", route_prefix=None)
    held = h.slow_pid.remote(str(tmp_path / "never"))
    wait_for(
        lambda: serve.status().applications["short"].deployments["Echo"].ongoing_requests,
        "the held call to reach the replica",
    )
    serve.delete("short")  # returns once the drain's 0.2 s are over and the replica is stopped
    with pytest.raises(volley.ActorDiedError, match="killed"):
        held.result(timeout_s=WAIT_S)  # it ran: it is not sent to another replica
