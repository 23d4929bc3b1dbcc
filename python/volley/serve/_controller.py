"""serve's controller: one named async actor that holds the applications and their replicas.

``serve.run`` hands it an application's deployments; it starts each replica as an async volley
actor (named, so that handles in any process find it), waits until the replica's constructor ran
(a constructor that raises fails the deploy with its error), and then writes what the others
read in the head's key-value table (namespace ``volley.serve``): a document per deployment
(``deployment/APP/NAME``: the replica actors' names, for handles) and the ingress's routing table
(``routes``: the replica actors' ids per route prefix). Its loop, every ``TICK_S``, reads each
replica's ongoing count (a replica that does not answer is dead and is replaced), runs the
health checks, and scales autoscaled deployments. A redeploy with only a new ``user_config``
(or replica count) reconfigures the running replicas; one with new code or options starts new
replicas, routes to them once they are ready, and only then drains and stops the old ones.

Fault tolerance: the controller is started with ``max_restarts=-1``, so the engine restarts it
when its process dies (SIGKILL, OOM); its name resolves to the new process. At each change of
what it wants (an application deployed, updated or deleted, a target replica count, a replica
started, ready or stopped) it writes a *checkpoint* (key ``controller/checkpoint``): the
applications, their specs and targets, and each replica's actor name, id and node. A restarted
controller reads it in ``__init__`` and adopts the replicas still alive (found by name: their
processes never stopped, so the same pids serve), replaces the dead ones (its usual checks),
finishes a rolling update or a delete that the death cut short, and resumes autoscaling. The
routing table and the deployments' documents stay as they were meanwhile: the ingress and the
handles keep serving with them while no controller runs.
"""

from __future__ import annotations

import asyncio
import json
import math
import pickle
import threading
import time
import traceback
import uuid
from typing import Any

import volley
from volley import library

from ._common import (
    CONTROLLER_NAME,
    HTTP_KEY,
    HTTP_STATUS_KEY,
    NAMESPACE,
    ROUTES_KEY,
    deployment_key,
    replica_name,
    waiting_key,
)
from ._deployment import LIGHT_OPTIONS
from ._replica import CONTROL_SLOTS, Replica

#: How often the control loop runs.
TICK_S = 0.05
#: How long a replica may take to start (its constructor included) before the deploy fails.
READY_TIMEOUT_S = 120.0
#: How long a stats read may take before the replica counts as unresponsive.
STATS_TIMEOUT_S = 10.0
#: After a replica leaves the routing table, how long handles may still hold it (their refresh).
ROUTE_GRACE_S = 0.3
#: The key (namespace ``volley.serve``) of the figures the dashboard's ``/metrics`` and Serve
#: view show: replicas by state, target replicas, autoscaling decisions (read by the head's
#: engine, crates/volley-runtime/src/serve/metrics.rs; rewritten only when it changed).
METRICS_KEY = "metrics"
#: The KV key (namespace ``volley.serve``) of the controller's checkpoint.
CHECKPOINT_KEY = "controller/checkpoint"
#: How long a restarted controller tries to wake its own control loop (a call to itself).
WAKE_TIMEOUT_S = 120.0

_ReplicaActor: Any = None


def _replica_class() -> Any:
    global _ReplicaActor
    if _ReplicaActor is None:
        _ReplicaActor = volley.remote(Replica)
    return _ReplicaActor


def _error_text(e: BaseException) -> str:
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException):
        tb = getattr(e, "remote_traceback", "") or ""
        return f"{type(cause).__name__}: {cause}" + (f"\n{tb}" if tb else "")
    return "".join(traceback.format_exception_only(type(e), e)).strip()


class _ReplicaState:
    def __init__(self, name: str, handle: Any) -> None:
        self.name = name
        self.handle = handle
        self.actor_id = ""
        self.node = -1  # the node it runs on (the ingress routes there)
        self.state = "STARTING"
        self.ongoing = 0
        self.next_health = 0.0
        self.health_task: asyncio.Task | None = None
        self.stats_task: asyncio.Task | None = None
        self.version = 0  # the deployment's version (spec) it runs

    def record(self) -> dict:
        return {
            "name": self.name,
            "actor_id": self.actor_id,
            "node": self.node,
            "state": self.state,
            "version": self.version,
        }


class _Deployment:
    def __init__(self, app: str, spec: dict) -> None:
        self.app = app
        self.name = spec["name"]
        self.spec = spec
        self.replicas: list[_ReplicaState] = []
        self.status = "UPDATING"
        self.message = ""
        self.target = self._initial_target()
        self.version = 0
        self.window: list[tuple[float, float]] = []
        self.waiting = (0, 0.0)  # calls waiting at handles, and when a handle said so
        self.up_since: float | None = None
        self.down_since: float | None = None
        self.next_stats = 0.0
        self.retry_at = 0.0
        self.scaled = {"up": 0, "down": 0}  # the autoscaler's changes of target, for /metrics

    @property
    def options(self) -> dict:
        return self.spec["options"]

    @property
    def autoscaling(self) -> dict | None:
        a = self.options.get("autoscaling_config")
        if a is None and self.options.get("num_replicas") == "auto":
            a = {
                "min_replicas": 1,
                "max_replicas": 100,
                "initial_replicas": None,
                "target_ongoing_requests": 2.0,
                "upscale_delay_s": 30.0,
                "downscale_delay_s": 600.0,
                "metrics_interval_s": 0.5,
                "look_back_period_s": 2.0,
            }
        return a

    def _initial_target(self) -> int:
        a = self.autoscaling
        if a is None:
            return int(self.options["num_replicas"])
        init = a.get("initial_replicas")
        return int(a["min_replicas"] if init is None else init)

    def running(self) -> list[_ReplicaState]:
        return [r for r in self.replicas if r.state == "RUNNING"]

    def live(self) -> list[_ReplicaState]:
        return [r for r in self.replicas if r.state in ("STARTING", "RUNNING")]

    def replica_states(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.replicas:
            out[r.state] = out.get(r.state, 0) + 1
        return out

    def record(self) -> dict:
        return {
            "spec": self.spec,
            "target": self.target,
            "version": self.version,
            "status": self.status,
            "message": self.message,
            "replicas": [r.record() for r in self.replicas],
        }


class _App:
    def __init__(self, name: str, route_prefix: str | None, ingress: str) -> None:
        self.name = name
        self.route_prefix = route_prefix
        self.ingress = ingress
        self.deployments: dict[str, _Deployment] = {}
        self.status = "DEPLOYING"
        self.message = ""
        self.lock = asyncio.Lock()

    def record(self) -> dict:
        return {
            "name": self.name,
            "route_prefix": self.route_prefix,
            "ingress": self.ingress,
            "status": self.status,
            "message": self.message,
            "deployments": [d.record() for d in self.deployments.values()],
        }


class Controller:
    """The controller actor (one per cluster, named ``SERVE_CONTROLLER``). ``token`` names
    this controller apart from an earlier one (serve shut down and started again): a restart
    of the same actor gets the same token, and recovers from the checkpoint it wrote."""

    def __init__(self, token: str = "") -> None:
        self._token = token
        self._apps: dict[str, _App] = {}
        self._counter = 0
        self._routes_version = 0
        self._loop_task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._http: dict | None = None
        # Names this controller's documents apart from an earlier controller's (kept across a
        # restart: the handles keep their view of the replicas).
        self._epoch = uuid.uuid4().hex[:8]
        self._metrics_doc = ""  # the figures last written under METRICS_KEY
        # Names this process's new replicas apart from those of the process before a restart.
        self._incarnation = uuid.uuid4().hex[:6]
        self._starting: set[str] = set()  # replicas started, not yet ready (killed on recovery)
        self._resume: list[Any] = []  # what a restart found cut short (run once the loop runs)
        self._checkpoint_error = ""
        self._recover()

    # ------------------------------------------------------------------ the calls serve makes

    async def ping(self) -> bool:
        self._ensure_loop()
        return True

    async def deploy(
        self, name: str, route_prefix: str | None, ingress: str, specs: list[dict]
    ) -> str | None:
        """Deploys (or updates) application ``name``; None once every replica is ready, else
        the error's text (the application is then marked DEPLOY_FAILED)."""
        self._ensure_loop()
        for other in self._apps.values():
            if other.name != name and route_prefix is not None and other.deployments:
                if other.route_prefix == route_prefix:  # (a failed new app holds none)
                    return (
                        f"route prefix {route_prefix!r} is taken by application {other.name!r}: "
                        "give this one another route_prefix (or delete that one)"
                    )
        app = self._apps.get(name)
        if app is None:
            app = self._apps[name] = _App(name, route_prefix, ingress)
        async with app.lock:
            app.status = "DEPLOYING"
            app.message = ""
            try:
                await self._deploy(app, specs)
            except Exception as e:
                app.status = "DEPLOY_FAILED"
                app.message = str(e) if isinstance(e, _DeployError) else _error_text(e)
                self._publish()
                return f"deploying application {name!r} failed: {app.message}"
            app.route_prefix = route_prefix
            app.ingress = ingress
            app.status = "RUNNING"
            self._publish()
        return None

    async def _deploy(self, app: _App, specs: list[dict]) -> None:
        new_names = {s["name"] for s in specs}
        for old in [d for n, d in app.deployments.items() if n not in new_names]:
            await self._stop_deployment(app, old)
        for spec in specs:  # in order: those a deployment takes come first
            d = app.deployments.get(spec["name"])
            if d is None:
                d = _Deployment(app.name, spec)
                try:
                    await self._start_replicas(d, d.target)
                except BaseException:
                    library.kv_delete(deployment_key(app.name, d.name), namespace=NAMESPACE)
                    raise
                app.deployments[spec["name"]] = d
            elif self._light(d.spec, spec) and all(r.version == d.version for r in d.live()):
                await self._update_light(d, spec)
            else:
                await self._roll(d, spec)
            d.status = "HEALTHY"
            d.message = ""
            self._publish()

    @staticmethod
    def _light(old: dict, new: dict) -> bool:
        if old["code"] != new["code"]:
            return False
        heavy = set(old["options"]) - LIGHT_OPTIONS
        return all(old["options"][k] == new["options"][k] for k in heavy)

    async def _update_light(self, d: _Deployment, spec: dict) -> None:
        old_config = d.options.get("user_config")
        old_target = d._initial_target()
        d.spec = spec
        self._checkpoint()
        if spec["options"].get("user_config") != old_config:
            calls = [r.handle.reconfigure.remote(d.options["user_config"]) for r in d.live()]
            for ref in calls:
                try:
                    await ref
                except Exception as e:
                    raise _DeployError(
                        f"deployment {d.name!r}: reconfigure raised {_error_text(e)}"
                    ) from e
        if d._initial_target() != old_target or d.autoscaling is None:
            d.target = d._initial_target()
        await self._reconcile(d, wait=True)

    async def _roll(self, d: _Deployment, spec: dict) -> None:
        """New code or options: new replicas first, then the old ones drain and stop."""
        old, old_spec, old_target = d.live(), d.spec, d.target
        d.spec = spec
        d.target = d._initial_target()
        d.status = "UPDATING"
        d.version += 1
        self._checkpoint()
        try:
            await self._start_replicas(d, d.target)
        except BaseException:  # the old replicas go on serving, with their code
            d.spec, d.target, d.status = old_spec, old_target, "HEALTHY"
            d.version -= 1
            self._checkpoint()
            raise
        for r in old:
            r.state = "STOPPING"
        self._publish()
        await asyncio.gather(*(self._stop_replica(d, r) for r in old))

    async def _start_replicas(self, d: _Deployment, n: int) -> None:
        """Starts ``n`` replicas and waits until all are ready; if one fails, stops those it
        started and raises the error."""
        started = [self._new_replica(d) for _ in range(n)]
        results = await asyncio.gather(
            *(self._await_ready(d, r) for r in started), return_exceptions=True
        )
        failed = [e for e in results if isinstance(e, BaseException)]
        if failed:
            for r in started:
                self._kill(d, r)
            raise _DeployError(
                f"a replica of deployment {d.name!r} failed to start: {_error_text(failed[0])}"
            )
        self._publish()

    def _new_replica(self, d: _Deployment) -> _ReplicaState:
        self._counter += 1
        name = replica_name(d.app, d.name, f"{self._incarnation}-{self._counter}")
        o = d.options
        rao = dict(o.get("ray_actor_options") or {})
        actor_opts: dict[str, Any] = {
            "name": name,
            "namespace": NAMESPACE,
            "max_concurrency": int(o["max_ongoing_requests"]) + CONTROL_SLOTS,
            # Not owned by the controller's process: replicas outlive a controller that dies
            # (the restarted one adopts them); serve stops them itself.
            "lifetime": "detached",
            # Over the nodes that fit, as Ray Serve places replicas (one node's failure takes
            # one replica, not all); on one machine the same as the default.
            "scheduling_strategy": "SPREAD",
        }
        for k in ("num_cpus", "num_gpus", "resources"):
            if rao.get(k) is not None:
                actor_opts[k] = rao[k]
        handle = (
            _replica_class()
            .options(**actor_opts)
            .remote(
                d.app,
                d.name,
                d.spec["target"],
                d.spec["init"],
                d.spec["is_class"],
                int(o["max_ongoing_requests"]),
            )
        )
        r = _ReplicaState(name, handle)
        r.version = d.version
        d.replicas.append(r)
        self._starting.add(name)
        self._checkpoint()  # a restart must know of it (to stop it), even if it never gets ready
        return r

    async def _await_ready(self, d: _Deployment, r: _ReplicaState) -> None:
        has_config = d.options.get("user_config") is not None
        ref = r.handle.ready.remote(d.options.get("user_config"), has_config)
        try:
            r.actor_id, r.node = await asyncio.wait_for(
                asyncio.wrap_future(ref.future()), READY_TIMEOUT_S
            )
        except asyncio.TimeoutError:
            raise _DeployError(
                f"a replica of deployment {d.name!r} was not ready within {READY_TIMEOUT_S:.0f} s "
                f"(does the cluster have what it asks for: {d.options.get('ray_actor_options')}?)"
            ) from None
        r.state = "RUNNING"
        self._starting.discard(r.name)
        r.next_health = time.monotonic() + float(d.options["health_check_period_s"])

    def _kill(self, d: _Deployment, r: _ReplicaState) -> None:
        r.state = "STOPPED"
        self._starting.discard(r.name)
        try:
            volley.kill(r.handle)
        except Exception:  # already gone
            pass
        if r in d.replicas:
            d.replicas.remove(r)

    async def _stop_replica(self, d: _Deployment, r: _ReplicaState) -> None:
        """Out of the routing table, a grace for handles to notice, drain, then stop."""
        r.state = "STOPPING"
        self._publish()
        await asyncio.sleep(ROUTE_GRACE_S)
        try:
            timeout = float(d.options["graceful_shutdown_timeout_s"])
            ref = r.handle.drain.remote(timeout)
            await asyncio.wait_for(asyncio.wrap_future(ref.future()), timeout + 5)
        except Exception:  # dead already, or did not drain in time: it is stopped anyway
            pass
        self._kill(d, r)

    async def _stop_deployment(self, app: _App, d: _Deployment) -> None:
        d.status = "DELETING"
        d.target = 0
        await asyncio.gather(*(self._stop_replica(d, r) for r in list(d.replicas)))
        app.deployments.pop(d.name, None)
        library.kv_delete(deployment_key(app.name, d.name), namespace=NAMESPACE)
        library.kv_delete(waiting_key(app.name, d.name), namespace=NAMESPACE)

    async def delete(self, name: str) -> str | None:
        """Deletes application ``name``; None, or the error's text."""
        app = self._apps.get(name)
        if app is None:
            return f"no application named {name!r}; running: {sorted(self._apps)}"
        async with app.lock:
            app.status = "DELETING"
            await asyncio.gather(
                *(self._stop_deployment(app, d) for d in list(app.deployments.values()))
            )
            self._apps.pop(name, None)
            self._publish()
        return None

    async def _delete_quietly(self, name: str) -> None:
        err = await self.delete(name)
        if err is not None:
            print(f"volley.serve: finishing the delete of {name!r}: {err}", flush=True)

    async def shutdown(self) -> None:
        for name in list(self._apps):
            await self.delete(name)
        library.kv_delete(HTTP_KEY, namespace=NAMESPACE)
        library.kv_delete(ROUTES_KEY, namespace=NAMESPACE)
        library.kv_delete(METRICS_KEY, namespace=NAMESPACE)
        self._metrics_doc = ""
        library.kv_delete(CHECKPOINT_KEY, namespace=NAMESPACE)
        self._token = ""  # nothing more is checkpointed
        if self._loop_task is not None:
            self._loop_task.cancel()

    async def set_http(self, host: str, port: int) -> None:
        self._http = {"host": host, "port": port}
        self._checkpoint()
        # The ingress answers each change anew: no answer to an earlier address may linger.
        library.kv_delete(HTTP_STATUS_KEY, namespace=NAMESPACE)
        library.kv_put(HTTP_KEY, json.dumps(self._http), namespace=NAMESPACE)

    async def ensure_http(self, host: str, port: int) -> None:
        """Writes the ingress's address unless one is set (``serve.run`` of a routed app)."""
        if self._http is None and library.kv_get(HTTP_KEY, namespace=NAMESPACE) is None:
            await self.set_http(host, port)

    async def note_waiting(self, app: str, deployment: str, n: int) -> None:
        """A handle has ``n`` calls waiting for a replica of the deployment."""
        a = self._apps.get(app)
        d = a.deployments.get(deployment) if a else None
        if d is not None:
            d.waiting = (n, time.monotonic())

    async def app_ingress(self, name: str) -> str | None:
        app = self._apps.get(name)
        return None if app is None else app.ingress

    async def has_deployment(self, app: str, deployment: str) -> bool:
        a = self._apps.get(app)
        return a is not None and deployment in a.deployments

    async def status(self) -> dict:
        raw = library.kv_get(HTTP_STATUS_KEY, namespace=NAMESPACE)
        return {
            "applications": {
                a.name: {
                    "status": a.status,
                    "message": a.message or self._checkpoint_error,
                    "route_prefix": a.route_prefix,
                    "ingress": a.ingress,
                    "deployments": {
                        d.name: {
                            "status": d.status,
                            "message": d.message,
                            "replica_states": d.replica_states(),
                            "target_replicas": d.target,
                            "ongoing_requests": sum(r.ongoing for r in d.running()),
                        }
                        for d in a.deployments.values()
                    },
                }
                for a in self._apps.values()
            },
            "http": self._http,
            "http_status": json.loads(raw) if raw else None,
        }

    # ------------------------------------------------------------------ what others read

    def _publish(self) -> None:
        """Writes each deployment's document and the routing table (whole, versioned)."""
        self._routes_version += 1
        v = self._routes_version
        routes = []
        for a in self._apps.values():
            for d in a.deployments.values():
                running = d.running()
                doc = {
                    "version": v,
                    "epoch": self._epoch,
                    "replicas": [r.name for r in running],
                    "target": d.target,
                    "max_ongoing_requests": int(d.options["max_ongoing_requests"]),
                    "max_queued_requests": int(d.options["max_queued_requests"]),
                }
                library.kv_put(deployment_key(a.name, d.name), json.dumps(doc), namespace=NAMESPACE)
            ingress = a.deployments.get(a.ingress)
            if a.route_prefix is None or ingress is None or a.status == "DELETING":
                continue
            o = ingress.options
            routes.append(
                {
                    "prefix": a.route_prefix,
                    "app": a.name,
                    "deployment": ingress.name,
                    "replicas": [r.actor_id for r in ingress.running()],
                    "replica_nodes": [r.node for r in ingress.running()],
                    "max_ongoing_requests": int(o["max_ongoing_requests"]),
                    "max_queued_requests": int(o["max_queued_requests"]),
                    "request_timeout_s": o.get("request_timeout_s"),
                }
            )
        doc = {"version": v, "routes": routes}
        library.kv_put(ROUTES_KEY, json.dumps(doc), namespace=NAMESPACE)
        self._publish_metrics()
        self._checkpoint()

    def _publish_metrics(self) -> None:
        """Writes the figures under ``METRICS_KEY`` if they changed since the last write."""
        deployments = [
            {
                "app": a.name,
                "deployment": d.name,
                "status": d.status,
                "route_prefix": a.route_prefix,
                "ingress": d.name == a.ingress,
                "target": d.target,
                "replicas": [
                    {"id": r.name, "actor_id": r.actor_id, "node": r.node, "state": r.state}
                    for r in d.replicas
                ],
                "autoscaling": d.scaled,
            }
            for a in self._apps.values()
            for d in a.deployments.values()
        ]
        doc = json.dumps({"deployments": deployments})
        if doc != self._metrics_doc:
            library.kv_put(METRICS_KEY, doc, namespace=NAMESPACE)
            self._metrics_doc = doc

    # ------------------------------------------------------------------ surviving a restart

    def _checkpoint(self) -> None:
        """Writes what a restarted controller needs (see the module's docstring)."""
        if not self._token:
            return
        doc = {
            "token": self._token,
            "epoch": self._epoch,
            "routes_version": self._routes_version,
            "http": self._http,
            "starting": sorted(self._starting),
            "apps": [a.record() for a in self._apps.values()],
        }
        try:
            library.kv_put(CHECKPOINT_KEY, pickle.dumps(doc, 5), namespace=NAMESPACE)
            self._checkpoint_error = ""
        except ValueError as e:  # over the KV's value limit: say so, keep serving
            self._checkpoint_error = (
                f"the controller's checkpoint could not be written ({e}): the applications "
                "will not survive a restart of the controller"
            )

    def _recover(self) -> None:
        """In ``__init__``: the state of the controller this process restarts, if any."""
        raw = library.kv_get(CHECKPOINT_KEY, namespace=NAMESPACE)
        if raw is None:
            return
        # Written by this actor (through the head, which takes writes only from the session).
        try:
            doc = pickle.loads(raw)
            doc["token"], doc["apps"]  # noqa: B018 (the keys a checkpoint has)
        except Exception as e:  # not a checkpoint this code wrote: start empty, and say so
            print(
                f"volley.serve: the controller's checkpoint cannot be read ({e!r}); "
                "starting with no application",
                flush=True,
            )
            library.kv_delete(CHECKPOINT_KEY, namespace=NAMESPACE)
            return
        if doc.get("token") != self._token or not self._token:
            # An earlier controller's, stopped without serve.shutdown: its replicas go.
            for a in doc.get("apps", []):
                for d in a["deployments"]:
                    for rec in d["replicas"]:
                        self._kill_by_name(rec["name"])
            for name in doc.get("starting", []):
                self._kill_by_name(name)
            library.kv_delete(CHECKPOINT_KEY, namespace=NAMESPACE)
            return
        self._epoch = doc["epoch"]
        self._http = doc["http"]
        self._routes_version = int(doc["routes_version"])
        raw_routes = library.kv_get(ROUTES_KEY, namespace=NAMESPACE)
        if raw_routes:  # (a later version may have been written after the checkpoint)
            self._routes_version = max(self._routes_version, int(json.loads(raw_routes)["version"]))
        adopted: set[str] = set()
        now = time.monotonic()
        for rec_app in doc["apps"]:
            app = _App(rec_app["name"], rec_app["route_prefix"], rec_app["ingress"])
            app.status, app.message = rec_app["status"], rec_app["message"]
            self._apps[app.name] = app
            for rec in rec_app["deployments"]:
                d = _Deployment(app.name, rec["spec"])
                d.target, d.version = int(rec["target"]), int(rec["version"])
                d.status, d.message = rec["status"], rec["message"]
                app.deployments[d.name] = d
                for rr in rec["replicas"]:
                    if rr["state"] not in ("RUNNING", "STOPPING"):
                        continue  # a replica not ready yet is stopped below, and replaced
                    try:
                        handle = volley.get_actor(rr["name"], namespace=NAMESPACE)
                    except ValueError:  # gone: the loop starts another
                        if rr["state"] == "RUNNING":
                            d.message = (
                                f"replica {rr['name']} replaced: it was gone when the "
                                "controller restarted"
                            )
                        continue
                    r = _ReplicaState(rr["name"], handle)
                    r.actor_id, r.node, r.version = rr["actor_id"], int(rr["node"]), rr["version"]
                    # Its health and load are read at once; a dead one is replaced then.
                    r.state, r.next_health = rr["state"], now
                    d.replicas.append(r)
                    adopted.add(r.name)
                    if r.state == "STOPPING":
                        self._resume.append(self._stop_replica(d, r))
            if app.status == "DELETING":
                self._resume.append(self._delete_quietly(app.name))
            else:
                self._resume.append(self._finish(app))
        for a in doc["apps"]:
            for d in a["deployments"]:
                for rr in d["replicas"]:
                    if rr["name"] not in adopted:
                        self._kill_by_name(rr["name"])
        for name in doc.get("starting", []):
            if name not in adopted:
                self._kill_by_name(name)
        # Nothing calls a restarted controller by itself: it calls itself to start its loop.
        threading.Thread(target=self._wake, name="serve-controller-wake", daemon=True).start()

    @staticmethod
    def _kill_by_name(name: str) -> None:
        try:
            volley.kill(volley.get_actor(name, namespace=NAMESPACE))
        except Exception:  # gone already
            pass

    @staticmethod
    def _wake() -> None:
        deadline = time.monotonic() + WAKE_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                me = volley.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
                volley.get(me.ping.remote(), timeout=30)
                return
            except Exception:  # not ready to take calls yet, or stopped meanwhile
                time.sleep(0.05)

    async def _finish(self, app: _App) -> None:
        """After a restart: a rolling update the death cut short is finished (new replicas
        first, then the old ones stop), the documents written anew."""
        async with app.lock:
            for d in list(app.deployments.values()):
                old = [r for r in d.live() if r.version != d.version]
                if not old:
                    continue
                try:
                    await self._start_replicas(d, d.target)
                except Exception as e:  # the old replicas go on serving
                    d.status, d.message = "UNHEALTHY", f"after a controller restart: {e}"
                    continue
                for r in old:
                    r.state = "STOPPING"
                self._publish()
                await asyncio.gather(*(self._stop_replica(d, r) for r in old))
                d.status, d.message = "HEALTHY", ""
            if app.status == "DEPLOYING" and app.deployments:
                app.status = "RUNNING"
            elif app.status == "DEPLOYING":
                app.status = "DEPLOY_FAILED"
                app.message = "the serve controller restarted during its first deploy: run it again"
            self._publish()

    # ------------------------------------------------------------------ the loop

    def _ensure_loop(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._loop())
            resume, self._resume = self._resume, []
            for coro in resume:
                self._spawn(coro)

    def _spawn(self, coro: Any) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _loop(self) -> None:
        while True:
            now = time.monotonic()
            for app in list(self._apps.values()):
                if app.lock.locked() or app.status == "DELETING":
                    continue
                for d in list(app.deployments.values()):
                    try:
                        self._watch(d, now)
                        self._autoscale(d, now)
                        await self._reconcile(d, wait=False)
                    except Exception as e:  # keep the loop alive; the status says it
                        d.message = f"controller: {_error_text(e)}"
            self._publish_metrics()
            await asyncio.sleep(TICK_S)

    def _watch(self, d: _Deployment, now: float) -> None:
        a = d.autoscaling
        interval = a["metrics_interval_s"] if a else 0.5
        if now >= d.next_stats:
            d.next_stats = now + interval
            for r in d.running():
                if r.stats_task is None or r.stats_task.done():
                    r.stats_task = asyncio.get_running_loop().create_task(self._stats(d, r))
            if a is not None and not d.running():
                self._read_ingress_waiting(d)
            total = sum(r.ongoing for r in d.running())
            n_wait, t_wait = d.waiting
            if now - t_wait < 1.0:
                total += n_wait
            d.window.append((now, total))
            look = a["look_back_period_s"] if a else 2.0
            d.window = [(t, x) for t, x in d.window if now - t <= look]
        for r in d.running():  # a death the engine knows of (about 10 µs a replica)
            st = volley.actor_state(r.handle)
            if st is None or st["state"] == "DEAD":
                cause = (st or {}).get("death_cause") or "it is gone"
                self._replica_failed(d, r, f"its process died: {cause}")
        period = float(d.options["health_check_period_s"])
        for r in d.running():
            if now >= r.next_health and (r.health_task is None or r.health_task.done()):
                r.next_health = now + period
                r.health_task = asyncio.get_running_loop().create_task(self._health(d, r))

    def _read_ingress_waiting(self, d: _Deployment) -> None:
        """Requests the HTTP ingress holds for a deployment with no replica: it writes
        ``{"waiting": n}`` under ``waiting/APP/DEPLOYMENT`` (see docs/serve.md)."""
        raw = library.kv_get(waiting_key(d.app, d.name), namespace=NAMESPACE)
        if raw:
            try:
                n = int(json.loads(raw).get("waiting", 0))
            except (ValueError, TypeError, AttributeError):
                return
            if n > 0:
                d.waiting = (max(n, d.waiting[0]), time.monotonic())

    async def _stats(self, d: _Deployment, r: _ReplicaState) -> None:
        try:
            ref = r.handle.stats.remote()
            s = await asyncio.wait_for(asyncio.wrap_future(ref.future()), STATS_TIMEOUT_S)
            r.ongoing = int(s["ongoing"])
        except asyncio.TimeoutError:
            pass  # a busy event loop: the health check's timeout decides about that
        except volley.ActorDiedError as e:
            self._replica_failed(d, r, f"its process is gone: {_error_text(e)}")
        except Exception as e:
            self._replica_failed(d, r, f"it did not answer: {_error_text(e)}")

    async def _health(self, d: _Deployment, r: _ReplicaState) -> None:
        timeout = float(d.options["health_check_timeout_s"])
        try:
            ref = r.handle.check_health.remote()
            await asyncio.wait_for(asyncio.wrap_future(ref.future()), timeout)
        except asyncio.TimeoutError:
            self._replica_failed(d, r, f"its health check took more than {timeout} s")
        except Exception as e:
            self._replica_failed(d, r, f"its health check failed: {_error_text(e)}")

    def _replica_failed(self, d: _Deployment, r: _ReplicaState, why: str) -> None:
        if r.state != "RUNNING":
            return
        d.message = f"replica {r.name} replaced: {why}"
        self._kill(d, r)
        self._publish()

    def _autoscale(self, d: _Deployment, now: float) -> None:
        a = d.autoscaling
        if a is None or not d.window:
            return
        avg = sum(x for _, x in d.window) / len(d.window)
        desired = math.ceil(avg / float(a["target_ongoing_requests"]) - 1e-9)
        n_wait, t_wait = d.waiting
        if n_wait and now - t_wait < 1.0:
            desired = max(desired, 1)
        desired = max(int(a["min_replicas"]), min(int(a["max_replicas"]), desired))
        if desired > d.target:
            d.down_since = None
            if d.up_since is None:
                d.up_since = now
            if now - d.up_since >= float(a["upscale_delay_s"]) or not d.running():
                d.target = desired
                d.up_since = None
                d.scaled["up"] += 1
                self._checkpoint()
        elif desired < d.target:
            d.up_since = None
            if d.down_since is None:
                d.down_since = now
            if now - d.down_since >= float(a["downscale_delay_s"]):
                d.target = desired
                d.down_since = None
                d.scaled["down"] += 1
                d.window.clear()
                self._checkpoint()
        else:
            d.up_since = d.down_since = None

    async def _reconcile(self, d: _Deployment, wait: bool) -> None:
        live = d.live()
        if len(live) < d.target and time.monotonic() >= d.retry_at:
            n = d.target - len(live)
            if wait:
                await self._start_replicas(d, n)
            else:
                for _ in range(n):
                    self._spawn(self._start_one(d, self._new_replica(d)))
        elif len(live) > d.target:
            extra = sorted(live, key=lambda r: (r.state != "STARTING", r.ongoing))
            for r in extra[: len(live) - d.target]:
                if wait:
                    await self._stop_replica(d, r)
                else:
                    r.state = "STOPPING"
                    self._spawn(self._stop_replica(d, r))

    async def _start_one(self, d: _Deployment, r: _ReplicaState) -> None:
        try:
            await self._await_ready(d, r)
        except Exception as e:
            d.status = "UNHEALTHY"
            d.message = f"a replica failed to start: {_error_text(e)}"
            d.retry_at = time.monotonic() + 2.0
            self._kill(d, r)
            return
        if d.status == "UNHEALTHY" or d.status == "UPDATING":
            d.status = "HEALTHY"
        self._publish()


class _DeployError(Exception):
    """A deploy that failed, with the text serve.run shows."""
