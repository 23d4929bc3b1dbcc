"""``@serve.multiplexed`` and ``serve.get_multiplexed_model_id()``: a per-replica LRU of loaded
models (loads counted per replica, eviction order, one load for concurrent calls of one id),
handle affinity (calls for a model keep going to the replica that holds it, from this process
and from another one that only reads the replicas' published model sets), and the model id
from the ``serve_multiplexed_model_id`` HTTP header."""

from __future__ import annotations

import asyncio
import json
import os
import urllib.request

import pytest
from conftest import wait_for

import volley
from volley import library, serve

WAIT_S = 30.0


@pytest.fixture
def http(serve_url):
    return serve_url


class Model:
    """A loaded model; its closing is recorded by the replica that loaded it."""

    def __init__(self, model_id: str, log: list[str]):
        self.model_id = model_id
        self.log = log

    async def aclose(self) -> None:
        self.log.append(f"unload {self.model_id}")

    def predict(self, x: int) -> str:
        return f"{self.model_id}:{x}"


@serve.deployment(num_replicas=1)
class Models:
    def __init__(self):
        self.log: list[str] = []
        self.entered = 0
        self.gate = asyncio.Event()

    @serve.multiplexed(max_num_models_per_replica=2)
    async def get_model(self, model_id: str) -> Model:
        self.log.append(f"load {model_id}")
        if model_id.startswith("slow"):
            await self.gate.wait()  # opened once every concurrent caller is in
        return Model(model_id, self.log)

    async def __call__(self, x: int) -> dict:
        model = await self.get_model(serve.get_multiplexed_model_id())
        return {"out": model.predict(x), "pid": os.getpid(), "obj": id(model)}

    async def many(self, n: int) -> dict:
        """``n`` concurrent callers of one slow model: the gate opens when all are in."""

        async def one():
            self.entered += 1
            if self.entered == n:
                asyncio.get_running_loop().call_soon(self.gate.set)
            return id(await self.get_model("slow-1"))

        ids = await asyncio.gather(*(one() for _ in range(n)))
        return {"ids": ids, "log": self.log}

    def events(self) -> list[str]:
        return list(self.log)


def test_lru_eviction_order_and_unload(volley_shared):
    h = serve.run(Models.bind(), name="mux", route_prefix=None)
    for m in ("a", "b", "a", "c", "b"):
        out = h.options(multiplexed_model_id=m).remote(1).result(timeout_s=WAIT_S)
        assert out["out"] == f"{m}:1"
    # a, b loaded; a used again (so b is the least recent); c evicts b; b evicts a.
    assert h.events.remote().result(timeout_s=WAIT_S) == [
        "load a",
        "load b",
        "load c",
        "unload b",
        "load b",
        "unload a",
    ]
    serve.delete("mux")


def test_concurrent_calls_for_one_model_load_it_once(volley_shared):
    h = serve.run(Models.bind(), name="mux", route_prefix=None)
    out = h.many.remote(8).result(timeout_s=WAIT_S)
    assert out["log"] == ["load slow-1"]
    assert len(set(out["ids"])) == 1
    serve.delete("mux")


@serve.deployment(num_replicas=3, max_ongoing_requests=8)
class Sharded:
    def __init__(self):
        self.loads: list[str] = []

    @serve.multiplexed(max_num_models_per_replica=2)
    async def get_model(self, model_id: str) -> str:
        self.loads.append(model_id)
        return model_id

    async def __call__(self, _request=None) -> dict:
        model = await self.get_model(serve.get_multiplexed_model_id())
        return {"model": model, "pid": os.getpid()}

    def loaded(self) -> dict:
        return {"pid": os.getpid(), "loads": list(self.loads)}


def _loads_per_replica(app: str) -> dict[int, list[str]]:
    """Every replica's loads, by pid: calls the replicas one by one through the actors."""
    out: dict[int, list[str]] = {}
    names = json.loads(
        library.kv_get(f"deployment/{app}/Sharded", namespace="volley.serve") or b"{}"
    )["replicas"]
    for name in names:
        doc = volley.get(
            volley.get_actor(name, namespace="volley.serve").handle_request.remote("loaded"),
            timeout=WAIT_S,
        )
        out[doc["pid"]] = doc["loads"]
    return out


@volley.remote
def calls_from_another_process(h, model: str, n: int) -> list[int]:
    return [
        h.options(multiplexed_model_id=model).remote().result(timeout_s=WAIT_S)["pid"]
        for _ in range(n)
    ]


def test_calls_for_a_model_keep_going_to_the_replica_that_holds_it(volley_shared):
    h = serve.run(Sharded.bind(), name="shard", route_prefix=None)
    where: dict[str, set[int]] = {}
    for _ in range(6):
        for m in ("m1", "m2", "m3"):
            out = h.options(multiplexed_model_id=m).remote().result(timeout_s=WAIT_S)
            assert out["model"] == m
            where.setdefault(m, set()).add(out["pid"])
    assert all(len(pids) == 1 for pids in where.values()), where
    loads = _loads_per_replica("shard")
    # Each model was loaded once, on the replica that served all its calls.
    assert sorted(m for ls in loads.values() for m in ls) == ["m1", "m2", "m3"], loads
    for m, (pid,) in where.items():
        assert m in loads[pid]
    # The replicas publish what they hold: another process (its own handle, no history of
    # these calls) sends m2's calls to the replica that holds it.
    (pid_m2,) = where["m2"]
    keys = library.kv_keys("models/shard/Sharded/", namespace="volley.serve")
    docs = [json.loads(library.kv_get(k, namespace="volley.serve")) for k in keys]
    assert sorted(m for d in docs for m in d["models"]) == ["m1", "m2", "m3"], docs
    pids = volley.get(calls_from_another_process.remote(h, "m2", 5), timeout=WAIT_S)
    assert set(pids) == {pid_m2}
    assert sorted(m for ls in _loads_per_replica("shard").values() for m in ls) == [
        "m1",
        "m2",
        "m3",
    ]
    serve.delete("shard")


def test_the_model_id_comes_from_the_http_header_and_the_ingress_keeps_it_on_one_replica(http):
    serve.run(Sharded.bind(), name="shard", route_prefix="/shard")

    def get(model: str) -> dict:
        req = urllib.request.Request(f"{http}/shard", headers={"serve_multiplexed_model_id": model})
        with urllib.request.urlopen(req, timeout=WAIT_S) as r:
            doc = json.loads(r.read())
        assert doc["model"] == model
        return doc

    where: dict[str, set[int]] = {}
    for _ in range(6):
        for m in ("h1", "h2", "h3"):
            where.setdefault(m, set()).add(get(m)["pid"])
    # The Rust ingress routes each model's requests to the replica that holds it (the one it
    # sent the model to first, then the one whose document lists it): each loaded once.
    assert all(len(pids) == 1 for pids in where.values()), where
    loads = _loads_per_replica("shard")
    assert sorted(m for ls in loads.values() for m in ls) == ["h1", "h2", "h3"], loads
    # Three models on three replicas: the ingress spreads new models to the emptiest.
    assert len({pid for pids in where.values() for pid in pids}) == 3, where
    # A model a handle call made a replica load is found there by the ingress too, through
    # the replica's published document.
    h = serve.get_app_handle("shard")
    pid = h.options(multiplexed_model_id="from-handle").remote().result(timeout_s=WAIT_S)["pid"]
    wait_for(
        lambda: any(
            "from-handle" in json.loads(library.kv_get(k, namespace="volley.serve"))["models"]
            for k in library.kv_keys("models/shard/Sharded/", namespace="volley.serve")
        ),
        "the replica to publish the model a handle call loaded",
    )
    # (The ingress never sent it: only the document can lead it there.)
    assert {get("from-handle")["pid"] for _ in range(5)} == {pid}


def test_bad_uses_say_what_is_wrong(volley_shared):
    with pytest.raises(ValueError, match="positive int"):
        serve.multiplexed(max_num_models_per_replica=0)
    with pytest.raises(TypeError, match="async function"):

        @serve.multiplexed
        def load(model_id):
            return model_id

    with pytest.raises(TypeError, match="takes the model id"):

        @serve.multiplexed
        async def load2(self, model_id, extra):
            return model_id

    h = serve.run(Models.bind(), name="mux", route_prefix=None)
    with pytest.raises(TypeError, match="multiplexed_model_id is a str"):
        h.options(multiplexed_model_id=3)
    # A call that names no model: the loader says so.
    with pytest.raises(TypeError, match="serve_multiplexed_model_id"):
        h.remote(1).result(timeout_s=WAIT_S)
    serve.delete("mux")


@serve.multiplexed(max_num_models_per_replica=1)
async def flaky_loader(model_id: str) -> str:
    if model_id == "bad":
        raise RuntimeError("no such weights")
    return model_id


def test_a_failed_load_is_not_cached():
    async def main():
        for _ in range(2):
            with pytest.raises(RuntimeError, match="no such weights"):
                await flaky_loader("bad")
        return await flaky_loader("good")

    assert asyncio.run(main()) == "good"


def test_an_evicted_models_del_runs_sync_or_async():
    gone: list[str] = []

    class SyncModel:
        def __init__(self, name: str):
            self.name = name

        def __del__(self):
            gone.append(f"sync {self.name}")

    class AsyncModel:
        def __init__(self, name: str):
            self.name = name

        async def __del__(self):
            gone.append(f"async {self.name}")

    @serve.multiplexed(max_num_models_per_replica=1)
    async def load(model_id: str):
        return (AsyncModel if model_id.startswith("a") else SyncModel)(model_id)

    async def main():
        for m in ("s1", "a1", "s2"):
            await load(m)

    asyncio.run(main())
    # s1 evicted by a1 (its __del__ ran as the cache let go), a1 by s2 (its async __del__
    # awaited); s2 is still held.
    assert gone == ["sync s1", "async a1"]
