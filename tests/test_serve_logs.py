"""Request ids in a replica's log lines: what a replica prints or logs while it serves a
request (HTTP or a handle call, async or in a thread) carries the request's id, read back with
``volley logs --actor``; ``serve.get_request_id()`` is the id the client got in
``x-request-id``, and a handle call made while serving carries it on."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import urllib.request

import conftest
import pytest
from conftest import wait_for

import volley
import volley.state
from volley import library, serve

WAIT_S = 30.0


@pytest.fixture
def http(serve_url):
    return serve_url


@serve.deployment
class Inner:
    def __call__(self, word: str) -> str:  # a sync method: runs in a thread of the replica
        print(f"inner got {word}")
        return serve.get_request_id()


@serve.deployment
class Chatty:
    def __init__(self, inner):
        self.inner = inner
        self.log = logging.getLogger("chatty")
        handler = logging.StreamHandler()  # (made after the replica's streams are wrapped)
        handler.setFormatter(logging.Formatter("fmt-id=%(request_id)s %(message)s"))
        self.log.addHandler(handler)
        self.log.propagate = False

    async def __call__(self, request) -> dict:
        print(f"printed for {request.path}")
        self.log.warning("logged for %s", request.path)
        inner_id = await self.inner.remote(request.path)
        return {"rid": serve.get_request_id(), "inner": inner_id}

    async def plain(self) -> str:
        print("a plain handle call")
        return serve.get_request_id()


def _actor_id(app: str, deployment: str) -> str:
    """The state API's id of the deployment's one replica (what ``volley logs --actor`` takes)."""
    doc = json.loads(library.kv_get(f"deployment/{app}/{deployment}", namespace="volley.serve"))
    (name,) = doc["replicas"]
    actor = volley.get_actor(name, namespace="volley.serve")
    pid = volley.get(actor.stats.remote(), timeout=WAIT_S)["pid"]

    def alive() -> list[dict]:  # (on a cluster the rows reach the head with heartbeats)
        rows = volley.state.list_actors(filters={"pid": pid}, limit=None)
        return [r for r in rows if r["state"] == "ALIVE"]

    (row,) = wait_for(alive, f"the state API's row of the replica with pid {pid}", 30)
    return row["actor_id"]


def _logs_of(actor_id: str) -> str:
    """``volley logs --actor``'s output: this driver's own node, or the test cluster's head."""
    args = [sys.executable, "-m", "volley._cli", "logs", "--actor", actor_id]
    env = dict(os.environ)
    if conftest.CLUSTER_MODE:
        info = conftest._cluster_info
        env.update(VOLLEY_ADDRESS=info["head"], VOLLEY_TOKEN=info["token"])
    else:
        args += ["--address", f"local:{os.getpid()}"]
    out = subprocess.run(
        args,
        env=env,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    return out.stdout if out.returncode == 0 else ""


def _line_with(actor_id: str, text: str) -> str:
    def find():
        return next((ln for ln in _logs_of(actor_id).splitlines() if text in ln), "")

    return str(wait_for(find, f"a line with {text!r} in `volley logs --actor {actor_id}`", 30))


def test_a_replicas_lines_carry_the_request_id_the_client_got(http):
    serve.run(Chatty.bind(Inner.bind()), name="chat", route_prefix="/chat")
    req = urllib.request.Request(f"{http}/chat/hello")
    with urllib.request.urlopen(req, timeout=WAIT_S) as r:
        rid = r.headers["x-request-id"]
        doc = json.loads(r.read())
    assert rid and doc == {"rid": rid, "inner": rid}  # the handle call carried the id on
    chatty, inner = _actor_id("chat", "Chatty"), _actor_id("chat", "Inner")
    for actor, text in (
        (chatty, "printed for /chat/hello"),
        (chatty, "logged for /chat/hello"),
        (inner, "inner got /chat/hello"),
    ):
        line = _line_with(actor, text)
        assert f"request_id={rid}]" in line, line
    assert f"fmt-id={rid} logged" in _line_with(chatty, "logged for /chat/hello")


def test_a_handle_call_gets_an_id_of_its_own(volley_shared):
    h = serve.run(Chatty.bind(Inner.bind()), name="chat", route_prefix=None)
    first = h.plain.remote().result(timeout_s=WAIT_S)
    second = h.plain.remote().result(timeout_s=WAIT_S)
    assert first and second and first != second
    line = _line_with(_actor_id("chat", "Chatty"), f"request_id={second}]")
    assert line.endswith("a plain handle call"), line
    assert serve.get_request_id() == ""  # the driver serves no request
    serve.delete("chat")


@serve.deployment
class Talker:
    """Prints as it makes each chunk: the lines after the first chunk come from the stream's
    follower call, outside the request's own call."""

    def __call__(self, request):
        for i in range(3):
            print(f"sync chunk {i} of {request.path}")
            yield f"{i}\n"

    async def agen(self, n: int):
        for i in range(n):
            print(f"async item {i}")
            yield i


def test_a_streams_lines_after_its_first_chunk_carry_the_request_id(http):
    serve.run(Talker.bind(), name="talk", route_prefix="/talk")
    with urllib.request.urlopen(f"{http}/talk/s", timeout=WAIT_S) as r:
        rid = r.headers["x-request-id"]
        assert r.read() == b"0\n1\n2\n"
    talker = _actor_id("talk", "Talker")
    for i in range(3):
        line = _line_with(talker, f"sync chunk {i} of /talk/s")
        assert f"request_id={rid}]" in line, line
    # A handle's stream: its id is the one the call carried.
    h = serve.get_app_handle("talk")
    assert list(h.options(stream=True).agen.remote(3)) == [0, 1, 2]
    lines = [_line_with(talker, f"async item {i}") for i in range(3)]
    ids = {ln.split("request_id=")[1].split("]")[0] for ln in lines}
    assert len(ids) == 1 and ids != {rid} and "" not in ids, lines
    serve.delete("talk")
