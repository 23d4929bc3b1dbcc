"""Type stubs of volley._core, the Rust extension. Use the `volley` package, not this module."""

from concurrent.futures import Future
from typing import Any, Callable, Generator, Generic, TypeVar, final

_T_co = TypeVar("_T_co", covariant=True)

@final
class ObjectRef(Generic[_T_co]):
    """A ref to a value (of type ``_T_co``, for a type checker) that a task returns or ``put``
    stored."""
    def __hash__(self) -> int: ...
    def __eq__(self, value: object, /) -> bool: ...
    def hex(self) -> str: ...
    def binary(self) -> bytes: ...
    def future(self) -> Future[_T_co]: ...
    def __await__(self) -> Generator[Any, None, _T_co]: ...
    def __reduce__(self) -> tuple[Any, tuple[bytes]]: ...

PROTOCOL_VERSION: int
VERSION: str
#: The engine's error kinds (``ErrorKind`` in volley-proto), name -> code.
ERROR_KINDS: dict[str, int]

@final
class Failure:
    """A task's failure (``kind``: an ERROR_KINDS code): as the worker's handler reports it, and
    as ``get`` returns it, with the task's name and the pid it failed in."""

    kind: int
    message: str
    traceback: str
    exception: bytes | None
    task_name: str
    pid: int
    def __new__(
        cls,
        kind: int,
        message: str,
        traceback: str = ...,
        exception: bytes | None = None,
        task_name: str = ...,
        pid: int = 0,
    ) -> Failure: ...

@final
class TaskOptions:
    """What stays the same for every call of a remote function (or of its ``.options(...)``),
    checked and converted once; ``submit`` takes it."""

    name: str
    num_returns: int
    num_cpus: float
    max_retries: int
    retry_exceptions: bool
    streaming: bool
    #: Resources other than CPUs, as (name, amount).
    resources: list[tuple[str, float]]
    def __new__(
        cls,
        name: str,
        num_returns: int = 1,
        num_cpus: float = 1.0,
        max_retries: int = 3,
        retry_exceptions: bool = False,
        streaming: bool = False,
        resources: list[tuple[str, float]] = ...,
        strategy: tuple[str, int, bool] | None = None,
    ) -> TaskOptions: ...

@final
class ActorCallOptions:
    """What stays the same for every call of one actor method through one handle;
    ``submit_actor_call`` takes it."""

    method: str
    name: str
    num_returns: int
    streaming: bool
    def __new__(
        cls, method: str, name: str, num_returns: int = 1, streaming: bool = False
    ) -> ActorCallOptions: ...

@final
class ActorCreateOptions:
    """How an actor is created, checked where it is made; ``create_actor`` takes it."""

    class_name: str
    name: str | None
    namespace: str
    num_cpus: float
    def __new__(
        cls,
        class_name: str,
        *,
        num_cpus: float = 0.0,
        resources: list[tuple[str, float]] = ...,
        max_restarts: int = 0,
        max_task_retries: int = 0,
        max_concurrency: int = 1,
        is_async: bool = False,
        name: str | None = None,
        namespace: str = ...,
        detached: bool = False,
        get_if_exists: bool = False,
        strategy: tuple[str, int, bool] | None = None,
        meta: bytes = ...,
    ) -> ActorCreateOptions: ...

def _rebuild_ref(id: bytes) -> ObjectRef: ...
def begin_capture() -> None: ...
def end_capture() -> list[bytes]: ...
def start_node(
    num_cpus: float,
    python: str,
    worker_args: list[str],
    env: list[tuple[str, str]],
    log_to_driver: bool,
    pipeline_depth: int,
    idle_worker_timeout_ms: int,
    object_store_memory: int,
    spill_dir: str,
    inline_threshold: int,
    resources: list[tuple[str, float]] = ...,
    max_workers: int = 1024,
    wait_notice_ms: int = 10_000,
    template: tuple[int, int] | None = None,
) -> None: ...
def connect_worker(socket: str, worker_id: int, token: str) -> None: ...
def shutdown(grace: float = 1.0) -> None: ...
def mode() -> str | None: ...
def retire_worker() -> None: ...
def register_function(fid: bytes, data: bytes) -> None: ...
def submit(
    fid: bytes,
    data: bytes,
    buffers: list[Any],
    contained: list[bytes],
    deps: list[ObjectRef],
    options: TaskOptions,
) -> list[ObjectRef]: ...
def put(data: bytes, buffers: list[Any], contained: list[bytes]) -> ObjectRef: ...
def get(
    refs: list[ObjectRef], timeout: float | None = None
) -> list[tuple[Any, list[Any]] | Failure]: ...
def wait(refs: list[ObjectRef], num_returns: int, timeout: float | None = None) -> list[bool]: ...
def explain_wait(refs: list[ObjectRef]) -> list[str]: ...
def local_nodes() -> list[dict[str, Any]]: ...
def node_info(socket: str | None = None) -> dict[str, Any]: ...
def start_dashboard(
    host: str,
    port: int,
    port_given: bool,
    token: str,
    tls_cert: str | None = None,
    tls_key: str | None = None,
) -> str: ...
def stop_dashboard() -> None: ...
def dashboard_info() -> tuple[str, str] | None: ...
def cancel(r: ObjectRef, force: bool = False) -> bool: ...
def watch(refs: list[ObjectRef]) -> None: ...
def next_ready(timeout: float) -> list[bytes]: ...
def worker_pids() -> list[int]: ...
def stats() -> dict[str, float]: ...
def worker_main(handler: Callable[..., Any]) -> None: ...
def pg_create(
    id: str, name: str, bundles: list[list[tuple[str, float]]], strategy: str, value: bytes
) -> ObjectRef: ...
def pg_remove(id: str) -> None: ...
def pg_table() -> list[dict[str, Any]]: ...
def register_package(hash: str, data: bytes) -> None: ...
def self_signed_cert() -> tuple[str, str]: ...
def set_diagnostics_dir(path: str | None = None) -> None: ...
def diagnostics_file() -> str | None: ...
def query_cluster_status(
    address: str, token: str, tls_cert: str | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]: ...
def job_submit(
    address: str,
    token: str,
    tls_cert: str | None,
    argv: list[str],
    entrypoint: str,
    submission_id: str | None,
    working_dir: str | None,
    env_vars: list[tuple[str, str]],
    resources: list[tuple[str, int]] = ...,
    pip: list[str] = ...,
) -> dict[str, Any]: ...
def job_upload(
    address: str,
    token: str,
    tls_cert: str | None,
    hash: str,
    total: int,
    offset: int,
    data: bytes,
) -> int: ...
def job_status(address: str, token: str, tls_cert: str | None, job_id: str) -> dict[str, Any]: ...
def job_stop(address: str, token: str, tls_cert: str | None, job_id: str) -> dict[str, Any]: ...
def job_list(address: str, token: str, tls_cert: str | None) -> list[dict[str, Any]]: ...
def job_logs(
    address: str, token: str, tls_cert: str | None, job_id: str, offset: int
) -> tuple[bytes, int, bool]: ...
def state_query(
    kind: str,
    filters: list[tuple[str, str, str]],
    limit: int | None = None,
    detail: bool = False,
) -> str: ...
def record_history(path: str) -> None: ...
def _fill_actors_for_benchmark(n: int, classes: int = 20) -> None: ...
def query_state(
    address: str,
    token: str,
    kind: str,
    filters: list[tuple[str, str, str]],
    limit: int | None = None,
    detail: bool = False,
    tls_cert: str | None = None,
) -> str: ...

@final
class ShmBuffer:
    """Owner of one stored value's mapping; the read-only memoryviews of it keep it alive."""

def create_actor(
    fid: bytes,
    data: bytes,
    buffers: list[Any],
    contained: list[bytes],
    deps: list[ObjectRef],
    options: ActorCreateOptions,
) -> tuple[ObjectRef, bytes, bool]: ...
def submit_actor_call(
    actor: ObjectRef,
    data: bytes,
    buffers: list[Any],
    contained: list[bytes],
    deps: list[ObjectRef],
    options: ActorCallOptions,
) -> list[ObjectRef]: ...
def get_actor(name: str, namespace: str) -> tuple[ObjectRef, bytes] | None: ...
def kill_actor(actor: ObjectRef, no_restart: bool) -> None: ...
def actor_state(actor: ObjectRef) -> dict[str, Any] | None: ...
def stream_next(end: ObjectRef, index: int) -> ObjectRef | None: ...
def stream_release(end: ObjectRef, from_: int) -> None: ...
def stream_yield(
    task_id: int, index: int, data: bytes, buffers: list[Any], contained: list[bytes]
) -> None: ...
def complete_task(
    task_id: int, name: str, ans: Failure | list[tuple[bytes, list[Any], list[bytes]]]
) -> None: ...
def set_runtime_env(json: str | None, packages: list[str] = ...) -> None: ...
def after_fork_in_child() -> str | None: ...
def store_stats(objects: bool = False) -> dict[str, Any]: ...
def join_cluster(
    listen: str | None,
    head: str | None,
    token: str,
    driver: bool,
    heartbeat_ms: int = 500,
    dead_after_ms: int = 10000,
    logs: bool = True,
    tls_cert: str | None = None,
    tls_key: str | None = None,
) -> tuple[int, str]: ...
def cluster_nodes(socket: str | None = None) -> list[dict[str, Any]]: ...
def set_worker_log_dir(path: str | None = None) -> None: ...
def list_logs(path: str) -> list[dict[str, Any]]: ...
def read_log(
    path: str, name: str, offset: int | None = None, max: int = 65536
) -> tuple[bytes, int, int, int]: ...
def node_logs(
    address: str, token: str, node: int, tls_cert: str | None = None
) -> tuple[list[dict[str, Any]], int, str | None]: ...
def node_read_log(
    address: str,
    token: str,
    node: int,
    name: str,
    offset: int | None = None,
    max: int = 65536,
    tls_cert: str | None = None,
) -> tuple[bytes, int, int, int]: ...
def route_events(on: bool) -> int | None: ...
def take_events() -> list[tuple[int, str]]: ...
def query_cluster(
    address: str, token: str, tls_cert: str | None = None
) -> list[dict[str, Any]]: ...
def kv_put(namespace: str, key: bytes, value: bytes, overwrite: bool) -> bool: ...
def kv_get(namespace: str, key: bytes) -> bytes | None: ...
def kv_delete(namespace: str, key: bytes) -> bool: ...
def kv_keys(namespace: str, prefix: bytes) -> list[bytes]: ...
def kv_incr(namespace: str, key: bytes, delta: int) -> int: ...
def kv_compare_and_set(
    namespace: str, key: bytes, expected: bytes | None, new: bytes | None
) -> bool: ...
def kv_setdefault(namespace: str, key: bytes, value: bytes) -> bytes: ...
def kv_watch(
    namespace: str, key: bytes, seen: int | None, wait_ms: int
) -> tuple[int, bool, bytes | None]: ...
def directory() -> dict[str, list[dict[str, Any]]]: ...

# The node's primitive service (volley.util.queue)
def queue_create(maxsize: int) -> int: ...
def queue_put(
    queue: int,
    item: bytes,
    block: bool = True,
    timeout: float | None = None,
    no_reply: bool = False,
) -> bool: ...
def queue_get(queue: int, block: bool = True, timeout: float | None = None) -> bytes | None: ...
def queue_size(queue: int) -> int: ...
def queue_close(queue: int) -> None: ...
def queue_task_done(queue: int) -> None: ...
def queue_join(queue: int, timeout: float | None = None) -> bool: ...
