"""``@serve.ingress(app)``: a FastAPI app served from a deployment's class over real HTTP (the
Rust ingress, then the app run inside the replica): path, query and body parameters, pydantic
models, status codes, HTTPException, FastAPI's own 404 and 422, ``self`` the replica's
instance, the route prefix stripped (``root_path``), and a user error's 500 naming the request."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

pytest.importorskip("fastapi")

from fastapi import Depends, FastAPI, Header, HTTPException, Request  # noqa: E402
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from volley import serve  # noqa: E402

WAIT_S = 30.0


@pytest.fixture
def http(serve_url):
    return serve_url


def call(url: str, body: object = None, method: str | None = None, headers: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    hdrs = {"content-type": "application/json"} if data is not None else {}
    hdrs.update(headers or {})
    req = urllib.request.Request(url, data=data, headers=hdrs, method=method)
    try:
        with urllib.request.urlopen(req, timeout=WAIT_S) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


app = FastAPI()


class Refused(Exception):
    pass


@app.exception_handler(Refused)
async def refused(request, exc: Refused):
    return JSONResponse({"refused": str(exc)}, status_code=418)


def api_key(x_api_key: str = Header(...)) -> str:
    return x_api_key


class Item(BaseModel):
    name: str
    price: float
    tags: list[str] = []


@serve.deployment(num_replicas=1)
@serve.ingress(app)
class Store:
    def __init__(self, currency: str):
        self.currency = currency
        self.items: dict[int, Item] = {}

    @app.get("/")
    def root(self) -> dict:
        return {"currency": self.currency}

    @app.get("/items/{item_id}")
    async def get_item(self, item_id: int, full: bool = False) -> dict:
        if item_id not in self.items:
            raise HTTPException(status_code=404, detail=f"no item {item_id}")
        item = self.items[item_id]
        out = {"name": item.name}
        if full:
            out.update(price=item.price, tags=item.tags, currency=self.currency)
        return out

    @app.put("/items/{item_id}", status_code=201)
    def put_item(self, item_id: int, item: Item) -> dict:
        self.items[item_id] = item
        return {"stored": item_id, "pid": os.getpid()}

    @app.get("/text", response_class=PlainTextResponse)
    def text(self) -> str:
        return "plain"

    @app.get("/stream")
    def stream(self):
        return StreamingResponse((f"{i}," for i in range(5)), media_type="text/csv")

    @app.get("/secret")
    def secret(self, key: str = Depends(api_key)) -> dict:
        if key != "k1":
            raise Refused(f"key {key}")
        return {"currency": self.currency}

    @app.get("/boom")
    def boom(self):
        raise KeyError("lost")

    @app.get("/where")
    def where(self) -> dict:
        return {"rid": serve.get_request_id()}

    def count(self) -> int:  # a plain method: handle calls still reach it
        return len(self.items)


def test_routes_parameters_models_and_status_codes(http):
    h = serve.run(Store.bind("EUR"), name="store", route_prefix="/store")
    status, _, body = call(f"{http}/store")  # the prefix alone is the app's "/"
    assert (status, json.loads(body)) == (200, {"currency": "EUR"})
    status, _, body = call(f"{http}/store/items/7", {"name": "pen", "price": 1.5}, "PUT")
    assert status == 201, body
    assert json.loads(body)["stored"] == 7
    status, _, body = call(f"{http}/store/items/7?full=true")
    assert status == 200, body
    assert json.loads(body) == {"name": "pen", "price": 1.5, "tags": [], "currency": "EUR"}
    # self is the replica's instance: a handle call sees what HTTP stored.
    assert h.count.remote().result(timeout_s=WAIT_S) == 1
    status, headers, body = call(f"{http}/store/text")
    assert (status, body) == (200, b"plain")
    assert headers["content-type"].startswith("text/plain")
    # A streaming response is collected whole.
    assert call(f"{http}/store/stream")[2] == b"0,1,2,3,4,"


def test_fastapis_own_errors(http):
    serve.run(Store.bind("EUR"), name="store", route_prefix="/store")
    status, headers, body = call(f"{http}/store/items/99")
    assert (status, json.loads(body)) == (404, {"detail": "no item 99"})
    assert headers["x-request-id"]
    status, _, body = call(f"{http}/store/nowhere")  # no such route: FastAPI's 404
    assert (status, json.loads(body)) == (404, {"detail": "Not Found"})
    status, _, body = call(f"{http}/store/items/abc")  # not an int: FastAPI's 422
    assert status == 422
    assert json.loads(body)["detail"][0]["loc"] == ["path", "item_id"]
    status, _, body = call(f"{http}/store/items/1", {"name": "x"}, "PUT")  # no price
    assert status == 422
    assert json.loads(body)["detail"][0]["loc"] == ["body", "price"]
    status, _, body = call(f"{http}/store/", method="DELETE")
    assert status == 405
    # A dependency (a header) and the app's own exception handler.
    status, _, body = call(f"{http}/store/secret")
    assert status == 422 and json.loads(body)["detail"][0]["loc"] == ["header", "x-api-key"]
    status, _, body = call(f"{http}/store/secret", headers={"x-api-key": "k1"})
    assert (status, json.loads(body)) == (200, {"currency": "EUR"})
    status, _, body = call(f"{http}/store/secret", headers={"x-api-key": "k2"})
    assert (status, json.loads(body)) == (418, {"refused": "key k2"})


def test_a_user_error_is_a_500_naming_the_request_id(http):
    serve.run(Store.bind("EUR"), name="store", route_prefix="/store")
    status, headers, body = call(f"{http}/store/boom", headers={"x-request-id": "fa-1"})
    assert status == 500
    doc = json.loads(body)
    assert doc["request_id"] == headers["x-request-id"] == "fa-1"
    assert "KeyError" in doc["error"] and "lost" in doc["error"]
    status, headers, body = call(f"{http}/store/where")
    assert json.loads(body)["rid"] == headers["x-request-id"]


def test_prefix_root_serves_the_app_at_its_own_paths(http):
    serve.run(Store.bind("USD"), name="store", route_prefix="/")
    status, _, body = call(f"{http}/")
    assert (status, json.loads(body)) == (200, {"currency": "USD"})
    assert call(f"{http}/items/3")[0] == 404


def test_bad_uses_are_refused_at_the_decorator():
    with pytest.raises(TypeError, match="decorates a class"):
        serve.ingress(FastAPI())(lambda request: 1)
    with pytest.raises(TypeError, match="below @serve.deployment"):

        @serve.ingress(FastAPI())
        @serve.deployment
        class Wrong:
            pass

    with pytest.raises(TypeError, match="FastAPI app"):
        serve.ingress("not an app")


def test_without_fastapi_ingress_names_the_package():
    code = (
        "import sys; sys.modules['fastapi'] = None\n"
        "from volley import serve\n"
        "try:\n"
        "    serve.ingress(object())\n"
        "except ImportError as e:\n"
        "    print('ERR', e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=WAIT_S, env=os.environ
    )
    assert "ERR" in out.stdout, out.stderr
    assert "pip install fastapi" in out.stdout


def test_the_asgi_adapter_answers_an_app_that_sends_nothing_or_a_bad_frame():
    import asyncio

    from volley.serve import _wire
    from volley.serve._http import handle_frame_asgi

    async def silent(scope, receive, send):
        return None

    fr = _wire.encode_request("r-s", "GET", "/p/x", "/p", "", "", [], b"")
    status, headers, body = _wire.decode_response(asyncio.run(handle_frame_asgi(silent, fr)))
    assert status == 500 and json.loads(body)["request_id"] == "r-s"
    assert "without sending a response" in json.loads(body)["error"]
    status, _, body = _wire.decode_response(asyncio.run(handle_frame_asgi(silent, b"nope")))
    assert status == 500 and "malformed request frame" in json.loads(body)["error"]


def _lifespan_app(marker: str, fail: bool):
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        if fail:
            raise RuntimeError("weights missing")
        yield {"model": "loaded-at-startup"}
        with open(marker, "w") as f:
            f.write("shut down")

    return FastAPI(lifespan=lifespan)


def test_the_apps_lifespan_runs_in_each_replica(http, tmp_path):
    marker = str(tmp_path / "shutdown")
    life = _lifespan_app(marker, fail=False)

    @serve.deployment
    @serve.ingress(life)
    class WithLife:
        @life.get("/")
        def root(self, request: Request) -> dict:
            return {"model": request.state.model}

    serve.run(WithLife.bind(), name="life", route_prefix="/life")
    status, _, body = call(f"{http}/life")
    assert (status, json.loads(body)) == (200, {"model": "loaded-at-startup"})
    assert not os.path.exists(marker)
    serve.delete("life")  # the replica drains: the app's shutdown runs
    with open(marker) as f:
        assert f.read() == "shut down"


def test_a_failed_lifespan_startup_fails_the_deploy(http, tmp_path):
    broken = _lifespan_app(str(tmp_path / "never"), fail=True)

    @serve.deployment
    @serve.ingress(broken)
    class Broken:
        @broken.get("/")
        def root(self) -> dict:
            return {}

    with pytest.raises(RuntimeError, match="weights missing"):
        serve.run(Broken.bind(), name="broken", route_prefix="/broken")


def build_app():
    """Builds the app in the replica (Ray Serve's builder form): it may hold what cannot be
    pickled, such as a lock."""
    import threading

    from fastapi import FastAPI

    built = FastAPI()
    built_in = os.getpid()
    lock = threading.Lock()

    @built.get("/who")
    def who() -> dict:
        with lock:
            return {"pid": os.getpid(), "built_in": built_in}

    return built


def test_a_builder_function_makes_the_app_in_each_replica(http):
    dep = serve.deployment(num_replicas=1)(serve.ingress(build_app)())
    serve.run(dep.bind(), name="built", route_prefix="/built")
    status, _, body = call(f"{http}/built/who")
    doc = json.loads(body)
    assert status == 200 and doc["pid"] == doc["built_in"] != os.getpid(), doc


alone = FastAPI()


@alone.get("/hi/{name}")
def hi(name: str) -> dict:
    return {"hi": name}


def test_a_standalone_app_is_served_without_a_class_of_routes(http):
    serve.run(serve.deployment(serve.ingress(alone)()).bind(), name="alone", route_prefix="/a")
    assert call(f"{http}/a/hi/ada")[::2] == (200, b'{"hi":"ada"}')
    assert call(f"{http}/a/nowhere")[0] == 404


def test_a_builder_that_returns_no_app_fails_the_deploy_saying_so(volley_shared):
    def build_nothing():
        return 42

    dep = serve.deployment(serve.ingress(build_nothing)())
    with pytest.raises(RuntimeError, match="returned int, not an ASGI app"):
        serve.run(dep.bind(), name="nothing", route_prefix="/nothing")
    serve.delete("nothing")
