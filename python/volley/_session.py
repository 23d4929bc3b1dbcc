"""The core API: init/shutdown, remote functions, and get/put/wait/cancel."""

from __future__ import annotations

import atexit
import functools
import os
import sys
import threading
import time

from . import _core
from ._core import ObjectRef
from ._serialization import EMPTY_ARGS, Dep, describe_unpicklable, dumps, dumps_args, unpack
from .exceptions import GetTimeoutError, SerializationError

TYPE_CHECKING = False  # without importing typing, a slow import
if TYPE_CHECKING:
    from typing import Any, Callable, Sequence

_lock = threading.RLock()
_generation = 0  # bumped by every init/connect; remote functions re-register when it changes
_atexit_registered = False
# True once init has finished (or this worker has connected); False again after shutdown.
# `_ensure_init` reads it without the lock: the fast path of every first-call check.
_ready = False
_init_args: dict | None = None  # the running (or last) init's arguments, for a forked child
_auto_started_by: str | None = None  # the thread whose first call started volley, if one did
# In a child forked from a process that ran volley: what the parent ran ("driver", "cluster",
# "daemon" or "worker"); None otherwise, or once the child has started a volley of its own.
_forked_from: str | None = None

_EMPTY_ARGS = (EMPTY_ARGS, [], [])


class _Unset:
    """A cached value not computed yet; pickles as a reference, so it is the same object in
    every process."""

    def __reduce__(self) -> str:
        return "_UNSET"


_UNSET: Any = _Unset()

_TASK_OPTIONS = {
    "num_cpus",
    "num_gpus",
    "resources",
    "num_returns",
    "max_retries",
    "retry_exceptions",
    "name",
    "scheduling_strategy",
}


class NodeAffinitySchedulingStrategy:
    """Run a task, or start an actor, on one node of the cluster (``node_id`` as
    ``volley.nodes()`` lists it).

    With ``soft=False`` a task waits for that node (and fails with ``UnschedulableError`` if it
    is not in the cluster; an actor's creation raises ``ValueError``, and an actor whose node
    died is not restarted elsewhere); with ``soft=True`` it runs there if it can, else
    anywhere.

    >>> box = next(n["node_id"] for n in volley.nodes() if "GPU" in n["resources"])
    >>> f.options(scheduling_strategy=NodeAffinitySchedulingStrategy(box)).remote()
    """

    def __init__(self, node_id: int, soft: bool = False):
        if not isinstance(node_id, int) or node_id < 0:
            raise ValueError(f"node_id must be a node's id from volley.nodes(), not {node_id!r}")
        self.node_id = node_id
        self.soft = bool(soft)

    def __repr__(self) -> str:
        return f"NodeAffinitySchedulingStrategy({self.node_id}, soft={self.soft})"


def _strategy(options: dict):
    """``scheduling_strategy`` as ``_core.submit`` takes it: (kind, node, soft) or None."""
    s = options.get("scheduling_strategy")
    if s is None or s == "DEFAULT":
        return None
    if s == "SPREAD":
        return ("SPREAD", 0, False)
    if isinstance(s, NodeAffinitySchedulingStrategy):
        return ("NODE", s.node_id, s.soft)
    from ._placement import PlacementGroupSchedulingStrategy

    if isinstance(s, PlacementGroupSchedulingStrategy):
        return None  # Expressed through the bundle's resources (see _placement.bundle_request).
    raise ValueError(
        "scheduling_strategy must be 'DEFAULT', 'SPREAD', a NodeAffinitySchedulingStrategy or a "
        f"PlacementGroupSchedulingStrategy, not {s!r}"
    )


def _requests(opts: dict, default_cpus: float, where: str) -> tuple[float, list]:
    """(num_cpus, [(resource, amount)]) a task or actor asks for, in its placement group's
    bundle if its scheduling strategy names one."""
    cpus = float(opts.get("num_cpus", default_cpus))
    res = _resource_list(opts, where) if "resources" in opts or "num_gpus" in opts else []
    s = opts.get("scheduling_strategy")
    if s is not None and not isinstance(s, (str, NodeAffinitySchedulingStrategy)):
        from ._placement import bundle_request

        return 0.0, bundle_request(s, cpus, res, where)
    return cpus, res


class Context:
    """What ``init`` returns: use it in a ``with`` block to shut volley down on exit.

    >>> with volley.init(num_cpus=2):
    ...     volley.get(volley.put(1))
    1
    """

    def __init__(self, num_cpus: float):
        self.num_cpus = num_cpus

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc) -> None:
        shutdown()

    def __repr__(self) -> str:
        return f"volley.Context(num_cpus={self.num_cpus})"


def _resolve_tls_cert(cert: str | None) -> str | None:
    from . import _cluster

    return _cluster.resolve_tls_cert(cert)


def _default_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _default_gpus() -> int:
    """NVIDIA GPUs of this machine (as the driver lists them), or those CUDA_VISIBLE_DEVICES
    names."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    try:
        return len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return 0


def _check_resources(resources: Any, where: str) -> dict:
    if not isinstance(resources, dict):
        raise TypeError(f"{where}: resources must be a dict of name -> amount")
    out = {}
    for k, v in resources.items():
        if not isinstance(k, str) or k in ("CPU", "GPU"):
            raise ValueError(
                f"{where}: resource names are strings other than 'CPU' and 'GPU' "
                f"(use num_cpus/num_gpus), not {k!r}"
            )
        if not isinstance(v, (int, float)) or v < 0:
            raise ValueError(f"{where}: resource '{k}' must be a number >= 0, not {v!r}")
        out[k] = float(v)
    return out


def _resource_list(opts: dict, where: str) -> list:
    """``[(name, amount)]`` of the non-CPU resources in task or actor options."""
    res = _check_resources(opts.get("resources") or {}, where)
    g = opts.get("num_gpus") or 0
    if not isinstance(g, (int, float)) or g < 0:
        raise ValueError(f"num_gpus must be a number >= 0, not {g!r}")
    if g:
        res["GPU"] = float(g)
    return sorted(res.items())


def _default_store_memory() -> int:
    """30% of this machine's memory (or of the cgroup's limit, if lower)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit.isdigit():
            total = min(total, int(limit))
    except OSError:
        pass
    return max(64 << 20, int(total * 0.3))


def init(
    num_cpus: float | None = None,
    *,
    log_to_driver: bool = True,
    ignore_reinit_error: bool = False,
    pipeline_depth: int = 8,
    idle_worker_timeout: float = 2.0,
    object_store_memory: int | None = None,
    object_spill_dir: str | os.PathLike | None = None,
    inline_threshold: int = 100 * 1024,
    num_gpus: float | None = None,
    resources: dict[str, float] | None = None,
    address: str | None = None,
    token: str | None = None,
    runtime_env: dict | None = None,
    tls_cert: str | None = None,
    max_workers: int = 1024,
    _daemon: dict | None = None,
) -> Context:
    """Starts volley in this process: a node on Rust threads and one worker process per CPU.
    With ``address``, connects to a running cluster instead and runs tasks on its nodes.

    Args:
        num_cpus: CPUs to schedule (default: the cores this process may use). One worker
            process is started per CPU, in parallel; ``init`` does not wait for them.
        log_to_driver: print workers' stdout/stderr here, each line prefixed with
            ``(task_name pid=N)``.
        ignore_reinit_error: return quietly if volley is already running.
        pipeline_depth: tasks queued behind a running one on a worker when every CPU is busy.
        idle_worker_timeout: seconds before extra workers (started while others were blocked
            in ``get``) are stopped.
        object_store_memory: bytes of shared memory for large objects (default: 30% of the
            machine's memory). Pages are taken as objects are written, not up front. When it is
            full, the least recently used objects that nobody is reading spill to disk.
        object_spill_dir: where spilled objects go (default: the temporary directory). Spill
            files have no name: they vanish when freed, or when volley's processes die.
        inline_threshold: values whose pickled size (stream and buffers) is at least this many
            bytes go to the shared-memory store; smaller ones travel inside messages.
        num_gpus: GPUs to schedule (default: the NVIDIA GPUs this machine has).
        resources: custom resources and their amounts, e.g. ``{"disk": 2}``; tasks and actors
            asking for them (``resources={"disk": 1}``) wait until they are free.
        address: ``"HOST:PORT"`` of a cluster's head (``volley start --head``), or ``"auto"``
            for the one started on this machine. Tasks then run on the cluster's nodes; this
            process runs none itself (``num_cpus`` defaults to 0 here). Actors, for now, run on
            this machine.
        token: the cluster's token (default: ``VOLLEY_TOKEN``, else the token file the head
            wrote on this machine). A wrong one raises ``ConnectionError``.
        runtime_env: what every task and actor of this driver runs in, on every node:
            ``{"working_dir": "path", "py_modules": [module or path, ...], "env_vars":
            {"NAME": "value"}}``. ``working_dir`` is packed (without ``__pycache__``, ``.git``,
            ``.venv``; 512 MiB at most) and unpacked on each node, where tasks run in it with it
            first on ``sys.path``: they import the driver's own modules and read its files.
        tls_cert: with ``address``, the certificate (PEM) of a cluster started with
            ``--tls-cert``; default ``VOLLEY_TLS_CERT``, or the one the head on this machine
            uses. The driver trusts exactly that certificate.
        max_workers: worker processes this node runs at most, actors and workers blocked in
            ``get`` included. A task blocked in ``get`` lends its CPU to a new worker, so nested
            tasks need one worker per level: a task that finds all ``max_workers`` blocked, with
            nothing left running that could free one, fails with ``UnschedulableError``.

    A task or actor that cannot start for 10 s (``VOLLEY_WAIT_NOTICE_S`` seconds; 0: never)
    because actors or placement groups hold what it needs gets one line on stderr per function
    or actor class, saying what it waits for and who holds it: ``volley: task 'f' has waited 10
    s for 1 CPU: all 2 CPUs are held by actor 'A' (2 of them)``.

    The first ``.remote()`` call (or ``put``, an actor, a ``Pool``...) runs ``init()`` with
    defaults if you have not; when several threads make their first call at once, one starts
    volley and the others wait for it. An ``init()`` after such an automatic start raises
    ``RuntimeError`` saying so.

    Tasks and actors run with this process's ``multiprocessing`` authkey (as it is when
    ``init`` runs), on every node, so ``multiprocessing.Manager`` proxies can be passed to them.

    In a process forked from this one (``os.fork``, the ``fork`` start method), volley starts
    afresh at the child's first call, with these arguments (``num_cpus`` 1 if it is not given
    here; a cluster driver's child connects again); the parent's ``ObjectRef``s cannot be read
    there. A child of a worker process raises ``RuntimeError`` at its first call. See
    ``docs/processes.md``.

    >>> ctx = volley.init(num_cpus=2)
    >>> volley.is_initialized()
    True
    >>> volley.shutdown()
    """
    args = {k: v for k, v in locals().items() if k not in ("ignore_reinit_error", "_daemon")}
    return _init(args, ignore_reinit_error, _daemon, auto=False)


def _init(args: dict, ignore_reinit_error: bool, _daemon: dict | None, auto: bool) -> Context:
    """``init``, under the lock; ``auto``: the first volley call of some thread started it."""
    global _generation, _atexit_registered, _ready, _init_args, _auto_started_by, _forked_from
    num_cpus = args["num_cpus"]
    log_to_driver = args["log_to_driver"]
    pipeline_depth = args["pipeline_depth"]
    idle_worker_timeout = args["idle_worker_timeout"]
    object_store_memory = args["object_store_memory"]
    object_spill_dir = args["object_spill_dir"]
    inline_threshold = args["inline_threshold"]
    num_gpus = args["num_gpus"]
    resources = args["resources"]
    address = args["address"]
    token = args["token"]
    runtime_env = args["runtime_env"]
    tls_cert = args["tls_cert"]
    max_workers = args["max_workers"]
    with _lock:
        if _core.mode() is not None:
            if ignore_reinit_error or _core.mode() == "worker":
                return Context(num_cpus or 0)
            if _auto_started_by is not None:
                raise RuntimeError(
                    "volley is already initialised: the first volley call (in thread "
                    f"{_auto_started_by!r}) started it with default settings before this "
                    "init() ran; call volley.init() before any other volley call, or "
                    "volley.shutdown() first (or pass ignore_reinit_error=True)"
                )
            raise RuntimeError(
                "volley is already initialised; call volley.shutdown() first "
                "(or pass ignore_reinit_error=True)"
            )
        joining = None
        if address is not None:
            from . import _cluster

            joining = (_cluster.resolve_address(address), _cluster.resolve_token(token))
        cpus = _default_cpus() if num_cpus is None else num_cpus
        if joining is not None and num_cpus is None:
            cpus = 0
        clustered = joining is not None or _daemon is not None
        if not isinstance(cpus, (int, float)) or cpus < 0 or (cpus == 0 and not clustered):
            raise ValueError(f"num_cpus must be a positive number, not {num_cpus!r}")
        if pipeline_depth < 0:
            raise ValueError("pipeline_depth must be >= 0")
        if not isinstance(max_workers, int) or isinstance(max_workers, bool) or max_workers < 1:
            raise ValueError(f"max_workers must be an int >= 1, not {max_workers!r}")
        store = _default_store_memory() if object_store_memory is None else object_store_memory
        if not isinstance(store, int) or store < 4096:
            raise ValueError(f"object_store_memory must be at least 4096 bytes, not {store!r}")
        if not isinstance(inline_threshold, int) or inline_threshold < 0:
            raise ValueError(f"inline_threshold must be >= 0, not {inline_threshold!r}")
        gpus = _default_gpus() if num_gpus is None else num_gpus
        if not isinstance(gpus, (int, float)) or gpus < 0:
            raise ValueError(f"num_gpus must be a number >= 0, not {num_gpus!r}")
        custom = _check_resources(resources or {}, "init")
        notice_ms = _wait_notice_ms()
        from . import _runtime_env

        # Every task and actor carries the environment, and with it this process's
        # multiprocessing authkey: multiprocessing.Manager proxies passed to tasks then work
        # (see _runtime_env).
        env_desc, env_packages = _runtime_env.build(runtime_env or {}, _authkey())
        if gpus:
            custom["GPU"] = float(gpus)
        if object_spill_dir is None:
            import tempfile

            spill_dir = tempfile.gettempdir()
        else:
            spill_dir = os.fspath(object_spill_dir)
        # Workers skip `site` (-S) and get this process's sys.path instead: a faster start, and
        # the same modules importable as here.
        # ("" in sys.path means the current directory, as for `python -c` or a REPL.)
        path = os.pathsep.join(p or os.getcwd() for p in sys.path)
        env = [("VOLLEY_SYS_PATH", path), ("PYTHONPATH", path)]
        if _daemon is not None:
            env.append(("VOLLEY_NODE_ADDRESS", _daemon["listen"]))
        # The node's developer diagnostics go to a log file, not to this terminal: a daemon's
        # stderr is its log; a driver gets a file of its own, made on the first diagnostic.
        from . import _cluster

        _core.set_diagnostics_dir(None if _daemon else str(_cluster.session_dir() / "logs"))
        _core.start_node(
            float(cpus),
            sys.executable,
            ["-S", "-m", "volley._worker"],
            env,
            bool(log_to_driver),
            int(pipeline_depth),
            int(idle_worker_timeout * 1000),
            int(store),
            spill_dir,
            int(inline_threshold),
            sorted(custom.items()),
            max_workers=max_workers,
            wait_notice_ms=notice_ms,
        )
        try:
            for h, data in env_packages.items():
                _core.register_package(h, data)
            _core.set_runtime_env(env_desc, sorted(env_packages))
            if joining is not None:
                _core.join_cluster(
                    None,
                    joining[0],
                    joining[1],
                    True,
                    logs=bool(log_to_driver),
                    tls_cert=_resolve_tls_cert(tls_cert),
                )
            elif _daemon is not None:
                _daemon["joined"] = _core.join_cluster(
                    _daemon["listen"],
                    _daemon.get("head"),
                    _daemon["token"],
                    False,
                    _daemon.get("heartbeat_ms", 500),
                    _daemon.get("dead_after_ms", 10_000),
                    tls_cert=_daemon.get("tls_cert"),
                    tls_key=_daemon.get("tls_key"),
                )
        except BaseException:
            _core.shutdown(0.5)
            raise
        _generation += 1
        if not _atexit_registered:
            atexit.register(shutdown)
            _atexit_registered = True
        # What the first calls import, imported now: a module that one thread is importing
        # while another forks stays locked for ever in the child (see test_fork).
        import cloudpickle  # noqa: F401

        _init_args = None if _daemon is not None else args
        _auto_started_by = threading.current_thread().name if auto else None
        _forked_from = None
        _ready = True
        return Context(cpus)


def _authkey() -> bytes:
    """This process's ``multiprocessing`` authkey (what its ``Manager`` servers accept)."""
    from multiprocessing import process

    return bytes(process.current_process().authkey)


# init's arguments as a first call that starts volley passes them: the defaults.
_INIT_DEFAULTS: dict = {"num_cpus": None, **(init.__kwdefaults__ or {})}
del _INIT_DEFAULTS["ignore_reinit_error"], _INIT_DEFAULTS["_daemon"]


def _wait_notice_ms() -> int:
    """``VOLLEY_WAIT_NOTICE_S`` (seconds, default 10; 0 turns the notices off) in ms."""
    text = os.environ.get("VOLLEY_WAIT_NOTICE_S", "").strip()
    if not text:
        return 10_000
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < 1e9:
        raise ValueError(f"VOLLEY_WAIT_NOTICE_S must be a number of seconds >= 0, not {text!r}")
    return int(seconds * 1000)


def shutdown() -> None:
    """Stops the workers and the node. Safe to call twice; ``init`` may be called again after.

    >>> volley.shutdown()
    >>> volley.is_initialized()
    False
    """
    global _ready, _auto_started_by
    with _lock:
        if _core.mode() != "driver":
            return
        from . import _futures

        _ready = False
        _auto_started_by = None
        _core.shutdown(1.0)
        _futures.fail_pending()


def nodes() -> list[dict]:
    """The cluster's nodes as this process last heard from the head (every second or so): a
    dict per node with ``node_id``, ``address``, ``num_cpus``, ``cpus_free``, ``resources``,
    ``workers``, ``store_used``, ``tasks_waiting`` (tasks not started: waiting for arguments,
    for resources, or queued on a worker behind a running task) with ``waiting`` (what they wait
    for and who holds it, a line per kind), ``driver``, and the bytes of stored values it has
    pulled from other nodes (``bytes_received``) and served to them (``bytes_served``).
    Empty outside a cluster (``volley status`` shows a driver's own node too).

    >>> volley.init(address="auto")  # doctest: +SKIP
    >>> [n["address"] for n in volley.nodes() if not n["driver"]]  # doctest: +SKIP
    ['127.0.0.1:6380', '127.0.0.2:6380']
    """
    return list(_core.cluster_nodes())


def is_initialized() -> bool:
    """True once ``init`` ran (or inside a worker).

    >>> volley.is_initialized()
    False
    """
    return _core.mode() is not None


def _ensure_init() -> None:
    """Starts volley with defaults unless it runs (the first call of any thread does this)."""
    if not _ready:
        _auto_init()


def _auto_init() -> None:
    # Several threads may make their first call at once: one starts volley, under the lock;
    # the others wait for the lock, then find it running.
    with _lock:
        if _ready:
            return
        if _forked_from is not None:
            _init_forked_child()
            return
        if _core.mode() is None:
            _init(dict(_INIT_DEFAULTS), False, None, auto=True)


def _init_forked_child() -> None:
    """The first volley call in a child forked from a process that ran volley: starts the
    child's own volley with the parent's ``init`` arguments (a cluster driver's child connects to
    the cluster again), or raises if the child cannot have one."""
    was = _forked_from
    if was == "worker":
        raise RuntimeError(
            f"volley cannot be used in a process forked from a volley worker (this is pid "
            f"{os.getpid()}, forked from pid {os.getppid()}): the worker's connection to its "
            "node belongs to the parent. Start the child with the 'spawn' or 'forkserver' "
            "multiprocessing start method, or submit volley tasks instead of forking"
        )
    if was == "daemon" or _init_args is None:
        raise RuntimeError(
            f"volley cannot be used in a process forked from a volley node daemon (this is "
            f"pid {os.getpid()}, forked from pid {os.getppid()}); start the child with the "
            "'spawn' start method"
        )
    args = dict(_init_args)
    if args.get("address") is None and args.get("num_cpus") is None:
        # A forked child is usually one of many siblings (a fork Pool, joblib's multiprocessing
        # backend): each taking every core would start siblings x cores workers.
        args["num_cpus"] = 1
    _init(args, False, None, auto=True)


def _after_fork_in_child() -> None:
    """``os.register_at_fork(after_in_child=...)``: the parent's volley (its node's threads,
    its sockets, its shared memory) is not this process's. Forget it without touching it; the
    child's first volley call starts a volley of its own (see ``_init_forked_child``)."""
    global _lock, _ready, _generation, _forked_from, _auto_started_by
    _lock = threading.RLock()  # a thread of the parent may have held it
    was = _core.after_fork_in_child()
    if was is None:
        return
    _ready = False
    _auto_started_by = None
    _generation += 1  # remote functions register again, with the child's node
    if was == "driver":
        args = _init_args or {}
        _forked_from = "daemon" if _init_args is None else "driver"
        if args.get("address") is not None:
            _forked_from = "cluster"
    else:
        _forked_from = "worker"
    # Futures of the parent's refs are the parent's; its completing thread is gone. (Nothing
    # is imported here: a module another thread was importing at the fork is locked here.)
    futures = sys.modules.get(__package__ + "._futures")
    if futures is not None:
        futures._lock = threading.Lock()
        futures._pending.clear()
        futures._thread = None


os.register_at_fork(after_in_child=_after_fork_in_child)


def _mark_worker_connected() -> None:
    global _generation, _ready
    _generation += 1
    _ready = True


def _check_options(options: dict) -> dict:
    unknown = set(options) - _TASK_OPTIONS
    if unknown:
        raise TypeError(f"unknown option(s) {sorted(unknown)}; known: {sorted(_TASK_OPTIONS)}")
    n = options.get("num_returns", 1)
    if n != "streaming" and (not isinstance(n, int) or n < 1):
        raise ValueError(f"num_returns must be an int >= 1 or 'streaming', not {n!r}")
    _resource_list(options, "remote")
    c = options.get("num_cpus", 1)
    if not isinstance(c, (int, float)) or c < 0:
        raise ValueError(f"num_cpus must be a number >= 0, not {c!r}")
    r = options.get("max_retries", 3)
    if not isinstance(r, int) or r < -1:
        raise ValueError(f"max_retries must be an int >= -1 (-1: unlimited), not {r!r}")
    name = options.get("name")
    if name is not None and not isinstance(name, str):
        raise TypeError("name must be a string")
    _strategy(options)
    return options


#: A function (or actor class) this large when pickled gets a warning: it is sent to every
#: worker that runs it, and it usually closes over data that should be passed with put.
LARGE_FUNCTION_WARNING = 10 << 20


def _warn_large(fn: Any, size: int) -> None:
    """Warns (once per function: it is pickled once) that ``fn`` is large when pickled, naming
    the biggest value it captures when one can be found cheaply."""
    import warnings

    from ._serialization import _references, _what

    biggest, biggest_size = None, 0
    for how, v in _references(fn):
        n = getattr(v, "nbytes", None)
        if not isinstance(n, int):
            n = len(v) if isinstance(v, (bytes, bytearray, str)) else 0
        if n > biggest_size:
            biggest, biggest_size = how, n
    captured = f" (it {biggest}, {biggest_size / 1e6:.0f} MB)" if biggest_size > size // 2 else ""
    warnings.warn(
        f"{_what(fn)} is {size / 1e6:.0f} MB when pickled{captured}: put large data with "
        "volley.put and pass the ref",
        stacklevel=5,  # the caller's .remote() (-> _submit -> _function_id -> here)
    )


class _Shipped:
    """Something pickled once and registered with the node under a hash of its bytes (a
    function, or an actor class); ``_fn`` is the object."""

    _fn: Any
    _pickled: tuple[bytes, bytes] | None
    _registered_generation: int

    def _function_id(self, name: str) -> bytes:
        if self._pickled is None:
            import hashlib

            import cloudpickle

            try:
                data = cloudpickle.dumps(self._fn, protocol=5)
            except Exception as e:
                from ._serialization import describe_unpicklable_code

                raise SerializationError(describe_unpicklable_code(self._fn, e)) from e
            if len(data) >= LARGE_FUNCTION_WARNING:
                _warn_large(self._fn, len(data))
            self._pickled = (hashlib.blake2b(data, digest_size=16).digest(), data)
        fid, data = self._pickled
        if self._registered_generation != _generation:
            _core.register_function(fid, data)
            self._registered_generation = _generation
        return fid


class RemoteFunction(_Shipped):
    """A function that runs as a task in a worker process; made by ``@volley.remote``.

    ``f.remote(*args, **kwargs)`` submits a call and returns an ``ObjectRef`` at once (a list of
    refs when ``num_returns > 1``). Top-level ``ObjectRef`` arguments are replaced by their values
    before the call; the task waits for them in the scheduler, not in a worker.

    >>> @volley.remote
    ... def add(a, b):
    ...     return a + b
    >>> volley.get(add.remote(1, add.remote(2, 3)))
    6
    """

    def __init__(self, fn: Callable, options: dict):
        self._fn = fn
        self._options = _check_options(dict(options))
        self._name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", "task")
        self._pickled: tuple[bytes, bytes] | None = None
        self._registered_generation = -1
        self._check: Any = _UNSET  # the signature stub, made at the first call
        # A generator function streams its items unless num_returns says otherwise (as Ray's
        # tasks do since Ray 2.8).
        self._default_returns: int | str = "streaming" if _is_generator(fn) else 1
        functools.update_wrapper(self, fn)

    def __getstate__(self) -> dict:
        # Registration is per process: a copy pickled into a task registers itself again there.
        state = self.__dict__.copy()
        state["_registered_generation"] = -1
        state["_check"] = _UNSET  # a stub is made where it is used
        return state

    def __call__(self, *args, **kwargs):
        raise TypeError(
            f"remote function '{self._name}' cannot be called directly; "
            f"use {self._name}.remote(...)"
        )

    def __repr__(self) -> str:
        return f"<volley.RemoteFunction {self._name}>"

    def options(self, **options: Any) -> _Bound:
        """The same function with some options overridden for the calls made through it.

        >>> a, b = divmod_task.options(num_returns=2).remote(7, 2)
        """
        merged = dict(self._options)
        merged.update(options)
        return _Bound(self, _check_options(merged))

    def remote(self, *args: Any, **kwargs: Any):
        """Submits a call; returns an ``ObjectRef`` (or a list of them for ``num_returns > 1``).

        Arguments that do not fit the function's signature raise ``TypeError`` here, before
        anything is submitted; unpicklable ones raise ``SerializationError``.
        """
        return self._submit(args, kwargs, self._options)

    def _submit(self, args: tuple, kwargs: dict, opts: dict):
        check = self._check
        if check is not None:
            if check is _UNSET:
                from ._signature import checker

                check = self._check = checker(self._fn, self._name)
            if check is not None:
                # A wrong call fails here, before anything is submitted or stored.
                try:
                    check(*args, **kwargs)
                except TypeError as e:
                    raise TypeError(str(e)) from None
        _ensure_init()
        name = opts.get("name") or self._name
        fid = self._function_id(name)
        deps: list[ObjectRef] = []
        if args or kwargs:
            if any(type(a) is ObjectRef for a in args):
                args = tuple(_dep(a, deps) for a in args)
            if any(type(v) is ObjectRef for v in kwargs.values()):
                kwargs = {k: _dep(v, deps) for k, v in kwargs.items()}
            try:
                data, buffers, contained = dumps_args(args, kwargs)
            except Exception as e:
                msg = describe_unpicklable(args, kwargs, f"task '{name}'", e)
                raise SerializationError(msg) from e
        else:
            data, buffers, contained = _EMPTY_ARGS
        n = opts.get("num_returns", self._default_returns)
        streaming = n == "streaming"
        cpus, resources = _requests(opts, 1, f"task '{name}'")
        refs = _core.submit(
            fid,
            name,
            data,
            buffers,
            contained,
            deps,
            1 if streaming else n,
            cpus,
            opts.get("max_retries", 3),
            bool(opts.get("retry_exceptions", False)),
            streaming,
            resources,
            _strategy(opts),
        )
        if streaming:
            from ._actor import ObjectRefGenerator

            return ObjectRefGenerator(refs[0])
        return refs[0] if n == 1 else refs


def _is_generator(fn: Any) -> bool:
    """Whether ``fn`` is a generator function (``def f(): yield``)."""
    import inspect

    return inspect.isgeneratorfunction(fn)


def _dep(value: Any, deps: list) -> Any:
    if type(value) is ObjectRef:
        deps.append(value)
        return Dep(len(deps) - 1)
    return value


class _Bound:
    """A remote function with options fixed by ``.options(...)``."""

    def __init__(self, rf: RemoteFunction, options: dict):
        self._rf = rf
        self._options = options

    def remote(self, *args: Any, **kwargs: Any):
        return self._rf._submit(args, kwargs, self._options)

    def options(self, **options: Any) -> _Bound:
        merged = dict(self._options)
        merged.update(options)
        return _Bound(self._rf, _check_options(merged))


def remote(*args: Any, **options: Any):
    """Makes a function run remotely: ``@volley.remote`` or ``@volley.remote(num_cpus=2, ...)``.

    Options: ``num_cpus`` (CPUs held while it runs, default 1), ``num_gpus``, ``resources``
    (custom resources, ``{"name": amount}``), ``num_returns`` (default 1; ``"streaming"`` for
    a generator whose items come back one by one as refs, the default for a generator function:
    ``.remote()`` then returns an ``ObjectRefGenerator``; an int N makes a generator function
    yield exactly N values, each its own ref), ``max_retries`` (retries after its
    worker dies, default 3, -1 for unlimited), ``retry_exceptions`` (also retry when it raises),
    ``name`` (shown in logs and errors).

    On a class, it makes an actor (see ``volley.ActorClass``): ``Cls.remote(...)`` starts an
    instance in a process of its own and returns a handle whose methods are called with
    ``handle.method.remote(...)``.

    >>> @volley.remote(num_returns=2)
    ... def split(x):
    ...     return x, -x
    >>> a, b = split.remote(3)
    >>> volley.get([a, b])
    [3, -3]
    """
    if len(args) == 1 and not options and callable(args[0]):
        return _make_remote(args[0], {})
    if args:
        raise TypeError("use @volley.remote or @volley.remote(option=value, ...)")
    return lambda obj: _make_remote(obj, options)


def _make_remote(obj: Any, options: dict):
    if isinstance(obj, type):
        from ._actor import ActorClass

        return ActorClass(obj, options)
    return RemoteFunction(obj, _check_options(options))


def _refs_list(refs: Any, what: str) -> list[ObjectRef]:
    if not isinstance(refs, (list, tuple)):
        raise TypeError(f"{what} takes an ObjectRef or a list of them, not {type(refs).__name__}")
    for r in refs:
        if type(r) is not ObjectRef:
            raise TypeError(f"{what} takes ObjectRefs, but got a {type(r).__name__}")
    return list(refs)


def get(refs: ObjectRef | Sequence[ObjectRef], *, timeout: float | None = None) -> Any:
    """Waits for refs and returns their values (a list for a list).

    Raises the task's error (``TaskError``, ``WorkerCrashedError``, ``TaskCancelledError``, ...)
    and ``GetTimeoutError`` after ``timeout`` seconds; its message says why a task that has not
    started yet waits (what it asks for, and who holds it). Ctrl-C interrupts the wait at once.

    Large values come from the shared-memory store without a copy: numpy arrays (also inside
    dicts, lists and DataFrames) and memoryviews are **read-only** views of it. Writing raises
    numpy's ``ValueError: assignment destination is read-only``; ``arr.copy()`` gives a private,
    writable copy. The memory stays valid as long as a view of it lives.

    >>> volley.get([volley.put("a"), volley.put("b")])
    ['a', 'b']
    >>> import numpy as np
    >>> x = volley.get(volley.put(np.arange(1_000_000)))
    >>> x.flags.writeable, x.copy().flags.writeable
    (False, True)
    """
    if type(refs) is ObjectRef:
        return get([refs], timeout=timeout)[0]
    refs = _refs_list(refs, "get")
    if timeout is not None and timeout < 0:
        raise ValueError("timeout must be >= 0")
    if not refs:
        return []
    try:
        results = _core.get(refs, timeout)
    except TimeoutError:
        why = "".join(f"; {line}" for line in _core.explain_wait(refs))
        raise GetTimeoutError(
            f"get timed out after {timeout} s waiting for {len(refs)} object(s){why}"
        ) from None
    return [unpack(r) for r in results]


def put(value: Any) -> ObjectRef:
    """Stores a value and returns a ref to it, to pass to many tasks without re-sending it.

    A value of ``inline_threshold`` bytes or more (see ``init``) is written into the node's
    shared-memory store with one copy; tasks and ``get`` then read it in place. Raises
    ``SerializationError`` if it cannot be pickled, and ``ObjectStoreFullError`` if the store
    has no room even after spilling.

    >>> ref = volley.put([1, 2, 3])
    >>> volley.get(ref)
    [1, 2, 3]
    """
    if type(value) is ObjectRef:
        raise TypeError("put() takes a value, not an ObjectRef")
    _ensure_init()
    try:
        data, buffers, contained = dumps(value)
    except Exception as e:
        if callable(value) and hasattr(value, "__qualname__"):  # a function or class
            from ._serialization import describe_unpicklable_code

            raise SerializationError(describe_unpicklable_code(value, e)) from e
        raise SerializationError(
            f"could not serialize the value given to put() (a {type(value).__qualname__}): "
            f"{type(e).__name__}: {e}"
        ) from e
    return _core.put(data, buffers, contained)


def object_store_stats(objects: bool = False) -> dict:
    """Counters of this node's shared-memory object store (in the driver).

    Keys: ``capacity``, ``used`` (bytes allocated), ``pinned`` (bytes that cannot be spilled:
    being read through live views, or being written), ``objects``, ``objects_in_memory``,
    ``objects_spilled``, ``spilled_bytes``, ``spill_count``/``spill_bytes_total`` and
    ``restore_count``/``restore_bytes_total`` since start, ``spill_dir``, ``inline_threshold``.
    With ``objects=True``, ``object_list`` has one dict per stored value (``object`` id,
    ``size``, ``spilled``, ``leases``, ...). Values smaller than the inline threshold are not in
    the store and not counted.

    >>> import numpy as np
    >>> ref = volley.put(np.zeros(1_000_000))
    >>> volley.object_store_stats()["objects"]
    1
    """
    _ensure_init()
    return _core.store_stats(objects)


def wait(
    refs: Sequence[ObjectRef],
    *,
    num_returns: int = 1,
    timeout: float | None = None,
    fetch_local: bool = True,
) -> tuple[list[ObjectRef], list[ObjectRef]]:
    """Waits until ``num_returns`` refs are ready or ``timeout`` seconds pass.

    Returns ``(ready, not_ready)``, each in the order given; ``ready`` holds at most
    ``num_returns`` refs. A ref is ready once its task finished (a task that raised is ready:
    ``get`` raises its error).

    ``fetch_local`` (default True, as in Ray): a ready ref's value is also on this node, so
    ``get`` on it returns without a transfer. On one machine every finished value is already
    local (in this node's memory or shared-memory store), so it changes nothing there. In a
    cluster, a value made on another node is pulled here before its ref counts as ready (a ref
    whose pull has not finished within ``timeout`` is in ``not_ready``). With
    ``fetch_local=False`` a ref is ready as soon as its value exists anywhere in the cluster,
    and nothing is pulled.

    ``refs`` may also hold ``ObjectRefGenerator``s (a streaming task's), as in Ray: one is
    ready once its next item is (``next`` then returns that item's ref at once), or once the
    stream has ended (``next`` raises ``StopIteration``).

    >>> ready, rest = volley.wait([fast.remote(), slow.remote()], num_returns=1)
    """
    if isinstance(refs, (list, tuple)) and any(type(r) is not ObjectRef for r in refs):
        from ._actor import ObjectRefGenerator

        if any(isinstance(r, ObjectRefGenerator) for r in refs):
            return _wait_streams(list(refs), num_returns, timeout, fetch_local)
    refs = _refs_list(refs, "wait")
    if len(set(refs)) != len(refs):
        raise ValueError("wait() got the same ObjectRef twice")
    if not isinstance(fetch_local, bool):
        raise TypeError(f"fetch_local must be True or False, not {fetch_local!r}")
    if not refs:
        return [], []
    if not isinstance(num_returns, int) or not 1 <= num_returns <= len(refs):
        raise ValueError(f"num_returns must be between 1 and {len(refs)}, not {num_returns!r}")
    if timeout is not None and timeout < 0:
        raise ValueError("timeout must be >= 0")
    deadline = None if timeout is None else time.monotonic() + timeout
    flags = _core.wait(refs, num_returns, timeout)
    ready: list[ObjectRef] = []
    not_ready: list[ObjectRef] = []
    for r, ok in zip(refs, flags):
        (ready if ok and len(ready) < num_returns else not_ready).append(r)
    if fetch_local and ready and _may_be_remote():
        local = _fetch(ready, deadline)
        if len(local) < len(ready):
            ready, not_ready = [r for r in refs if r in local], [r for r in refs if r not in local]
    return ready, not_ready


def _wait_streams(
    items: list, num_returns: int, timeout: float | None, fetch_local: bool
) -> tuple[list, list]:
    """``wait`` over refs and ``ObjectRefGenerator``s: a generator is ready once its next
    step (an item, or the end) is there, fetched by a thread of its own."""
    from concurrent.futures import FIRST_COMPLETED
    from concurrent.futures import wait as wait_futures

    from ._actor import ObjectRefGenerator

    for r in items:
        if type(r) is not ObjectRef and not isinstance(r, ObjectRefGenerator):
            raise TypeError(
                f"wait takes ObjectRefs and ObjectRefGenerators, but got a {type(r).__name__}"
            )
    if len(set(items)) != len(items):
        raise ValueError("wait() got the same ObjectRef (or ObjectRefGenerator) twice")
    if not isinstance(fetch_local, bool):
        raise TypeError(f"fetch_local must be True or False, not {fetch_local!r}")
    if not isinstance(num_returns, int) or not 1 <= num_returns <= len(items):
        raise ValueError(f"num_returns must be between 1 and {len(items)}, not {num_returns!r}")
    if timeout is not None and timeout < 0:
        raise ValueError("timeout must be >= 0")
    deadline = None if timeout is None else time.monotonic() + timeout
    refs = [r for r in items if type(r) is ObjectRef]
    gens = [g for g in items if type(g) is not ObjectRef]
    while True:
        flags = dict(zip(refs, _core.wait(refs, len(refs), 0.0))) if refs else {}
        ready_gens = {id(g) for g in gens if g._is_ready()}
        count = sum(flags.values()) + len(ready_gens)
        left = None if deadline is None else deadline - time.monotonic()
        if count >= num_returns or (left is not None and left <= 0):
            break
        pending_gens = [g._ahead for g in gens if id(g) not in ready_gens]
        pending_refs = [r for r in refs if not flags[r]]
        if not pending_gens:  # only refs can make up the rest: the engine waits for them
            _core.wait(pending_refs, num_returns - count, left)
        elif not pending_refs:
            wait_futures(pending_gens, timeout=left, return_when=FIRST_COMPLETED)
        else:  # both: no single call waits for either; look again every 20 ms
            _core.wait(pending_refs, 1, 0.02 if left is None else min(0.02, left))
    ready: list = []
    for r in items:
        ok = flags.get(r, False) if type(r) is ObjectRef else id(r) in ready_gens
        if ok and len(ready) < num_returns:
            ready.append(r)
    if fetch_local and _may_be_remote():
        plain = [r for r in ready if type(r) is ObjectRef]
        local = _fetch(plain, deadline) if plain else set()
        ready = [r for r in ready if type(r) is not ObjectRef or r in local]
    taken = {id(r) for r in ready}
    return ready, [r for r in items if id(r) not in taken]


def _may_be_remote() -> bool:
    """Whether a finished value may live on another node: in a cluster's driver, or in a
    worker (whose node may be part of a cluster)."""
    return _core.mode() == "worker" or bool(_core.cluster_nodes())


def _fetch(refs: list[ObjectRef], deadline: float | None) -> set[ObjectRef]:
    """Brings the values of finished refs to this node (as ``get`` does, without unpickling
    them); returns the refs whose values are here by ``deadline``. A ref whose value is an
    error (a lost object, ...) counts as here: ``get`` raises that error at once."""

    def left() -> float | None:
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    try:
        _core.get(refs, left())
        return set(refs)
    except TimeoutError:
        timed_out = True
    except Exception:
        timed_out = False  # one of them is an error: look at each
    here = set()
    for r in refs:
        try:
            _core.get([r], 0.0 if timed_out else left())
        except TimeoutError:
            continue
        except Exception:
            pass
        here.add(r)
    return here


#: How long ``cancel`` waits for a task on another node to be cancelled there.
CANCEL_WAIT_S = 2.0


def cancel(ref: ObjectRef, *, force: bool = False) -> None:
    """Cancels the task behind ``ref``; its ``get`` then raises ``TaskCancelledError``.

    A task still waiting is dropped. A running task gets a ``KeyboardInterrupt``; with
    ``force=True`` its worker process is killed instead (and replaced). A finished task is left
    alone.

    When the task was sent to another node (or ``cancel`` is called inside a task), the
    request travels there: ``cancel`` waits until the task's ref is ready, up to
    ``CANCEL_WAIT_S`` (2 s), so that a task queued there does not start after ``cancel``
    returns. A running task that ignores the interrupt for longer finishes cancelling later.

    >>> ref = sleepy.remote(60)
    >>> volley.cancel(ref)
    """
    if type(ref) is not ObjectRef:
        raise TypeError(f"cancel() takes an ObjectRef, not {type(ref).__name__}")
    if _core.cancel(ref, force):
        wait([ref], timeout=CANCEL_WAIT_S, fetch_local=False)


def _cancel_soon(ref: ObjectRef, force: bool = False) -> None:
    """``cancel`` without waiting for a task on another node to be cancelled there (the
    adapters stopping work nobody waits for)."""
    _core.cancel(ref, force)
