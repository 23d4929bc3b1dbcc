"""The session: volley started in this process (``init``, ``shutdown``, the automatic start at
the first call, a forked child's fresh start) and what it knows of the cluster (``nodes``)."""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time

from . import _core
from ._resources import check_resources

TYPE_CHECKING = False  # without importing typing, a slow import
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any, Callable

_lock = threading.RLock()
generation = 0  # bumped by every init/connect; remote functions re-register when it changes
_atexit_registered = False
# True once init has finished (or this worker has connected); False again after shutdown.
# `ensure_init` reads it without the lock: the fast path of every first-call check.
_ready = False
_init_args: dict | None = None  # the running (or last) init's arguments, for a forked child
_auto_started_by: str | None = None  # the thread whose first call started volley, if one did
# In a child forked from a process that ran volley: what the parent ran ("driver", "cluster",
# "daemon" or "worker"); None otherwise, or once the child has started a volley of its own.
_forked_from: str | None = None
# The runtime environment this driver's node has (description, packages), and whether the
# multiprocessing authkey is still to go into it (see ensure_init).
_env_sent: tuple[str, list[str]] | None = None
_authkey_pending = False
# This driver's job id while volley runs (see _job_id); its tasks and actors get it with
# their runtime environment.
job_id: str | None = None
# Called (in order) by shutdown, after the node has stopped: see at_shutdown.
_shutdown_hooks: list[Callable[[], None]] = []


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


def _default_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


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
    dashboard: bool = False,
    dashboard_host: str = "127.0.0.1",
    dashboard_port: int | None = None,
    history: bool | None = None,
    preload: list[str] | tuple[str, ...] | None = None,
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
        num_gpus: GPUs to schedule (default: the NVIDIA GPUs this machine has, found with
            NVML, ``nvidia-smi -L`` or /proc and limited to those ``CUDA_VISIBLE_DEVICES``
            names; 0 for a driver joining a cluster). See docs/gpus.md.
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
        dashboard: serve the dashboard (pages, JSON API, ``/metrics``) from this process, on
            ``dashboard_host`` (default 127.0.0.1) and ``dashboard_port`` (default 8265, or a
            free port if taken; 0: any free port). Its URL, with the token that logs a browser
            in, is logged on the ``volley`` logger and given by ``volley.dashboard_url()``. See
            ``docs/dashboard.md``.
        history: write this driver's task, actor and job rows to the session directory's
            ``history/driver-<pid>-<ms>/`` as they change (default: ``VOLLEY_HISTORY=1``), so
            ``volley list tasks --session DIR`` shows them after this process exited or was
            killed. Off by default: it costs each task a little (see ``docs/state.md``). For a
            driver's own node only: a cluster's history is its head's.
        preload: modules the worker template imports before it forks workers, so every
            worker and actor finds them imported (their pages shared), e.g. ``["numpy",
            "mypackage.models"]``; ``[]``: none. Default: ``VOLLEY_PRELOAD`` (comma-separated),
            else numpy and scipy if this process imported them. A module that fails to import
            there is skipped with a warning; one that starts threads at import should not be
            preloaded. See docs/workers.md.

    A task or actor that cannot start for 10 s (``VOLLEY_WAIT_NOTICE_S`` seconds; 0: never)
    because actors or placement groups hold what it needs gets one line on stderr per function
    or actor class, saying what it waits for and who holds it: ``volley: task 'f' has waited 10
    s for 1 CPU: all 2 CPUs are held by actor 'A' (2 of them)``.

    The first ``.remote()`` call (or ``put``, an actor, a ``Pool``...) runs ``init()`` with
    defaults if you have not; when several threads make their first call at once, one starts
    volley and the others wait for it. An ``init()`` after such an automatic start raises
    ``RuntimeError`` saying so.

    Tasks and actors run with this process's ``multiprocessing`` authkey (as it is when
    ``init`` runs; a driver that imports ``multiprocessing`` only later sends it with the first
    submit after), on every node, so ``multiprocessing.Manager`` proxies can be passed to them.

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
    args = {k: v for k, v in locals().items() if k != "ignore_reinit_error"}
    return _init(args, ignore_reinit_error, None, auto=False)


def start_daemon(daemon: dict, **init_args: Any) -> tuple[int, str]:
    """Runs this process as a cluster node (``volley start``; the CLI's entry, not for users):
    ``init`` with ``init_args``, listening on ``daemon["listen"]`` and joining
    ``daemon["head"]`` (None: this node is the head) with ``daemon["token"]`` (and
    ``heartbeat_ms``, ``dead_after_ms``, ``tls_cert``, ``tls_key``). Returns the node's id and
    the address it listens on."""
    args = {**_INIT_DEFAULTS, **init_args}
    _init(args, False, daemon, auto=False)
    return daemon["joined"]


def _whole_lines_out() -> None:
    """Make an unbuffered ``sys.stdout``/``sys.stderr`` write each line in one piece.

    Workers write their lines to the same descriptors as this driver. Under ``python -u`` (or
    ``PYTHONUNBUFFERED``) ``print("a", 1)`` is four writes (``a``, `` ``, ``1``, newline), and a
    worker's line could land between them. Line buffering keeps what the user sees (each line
    appears when it ends, ``flush=True`` still flushes) and sends the line in one write.
    """
    import io

    for stream in (sys.stdout, sys.stderr):
        if (
            type(stream) is io.TextIOWrapper
            and stream.write_through
            and not stream.closed
            and isinstance(stream.buffer, io.RawIOBase)
        ):
            try:
                stream.reconfigure(line_buffering=True, write_through=False)
            except (ValueError, OSError):  # a stream another library already wrapped or closed
                pass


def _init(args: dict, ignore_reinit_error: bool, daemon: dict | None, auto: bool) -> Context:
    """``init``, under the lock; ``auto``: the first volley call of some thread started it;
    ``daemon``: this process is a cluster node (see ``start_daemon``)."""
    # Only a driver or a node daemon runs these (a worker never calls init): imported here,
    # `import volley` stays fast in every worker process.
    from . import _cluster, _runtime_dir, _runtime_env

    global generation, _atexit_registered, _ready, _init_args, _auto_started_by, _forked_from
    global job_id, _authkey_pending, _env_sent
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
        from_env = False
        if address is None and daemon is None:
            address = os.environ.get("VOLLEY_ADDRESS", "").strip() or None
            from_env = address is not None
        history = _history_wanted(args.get("history"), address is not None or daemon is not None)
        if address is not None:
            joining = (_cluster.resolve_address(address), _cluster.resolve_token(token))
        cpus = _default_cpus() if num_cpus is None else num_cpus
        if joining is not None and num_cpus is None:
            cpus = 0
        clustered = joining is not None or daemon is not None
        if not isinstance(cpus, (int, float)) or cpus < 0 or (cpus == 0 and not clustered):
            raise ValueError(f"num_cpus must be a positive number, not {num_cpus!r}")
        if pipeline_depth < 0:
            raise ValueError("pipeline_depth must be >= 0")
        if not isinstance(max_workers, int) or isinstance(max_workers, bool) or max_workers < 1:
            raise ValueError(f"max_workers must be an int >= 1, not {max_workers!r}")
        preload = args.get("preload")
        if preload is not None:
            if isinstance(preload, str) or not isinstance(preload, (list, tuple)):
                raise TypeError(
                    f"preload must be a list of module names, not {type(preload).__name__}"
                )
            for m in preload:
                if not isinstance(m, str) or not all(p.isidentifier() for p in m.split(".")):
                    raise ValueError(f"preload: {m!r} is not a module name")
        store = _default_store_memory() if object_store_memory is None else object_store_memory
        if not isinstance(store, int) or store < 4096:
            raise ValueError(f"object_store_memory must be at least 4096 bytes, not {store!r}")
        if not isinstance(inline_threshold, int) or inline_threshold < 0:
            raise ValueError(f"inline_threshold must be >= 0, not {inline_threshold!r}")
        if num_gpus is not None:
            gpus = num_gpus
        elif joining is not None:
            # A driver joining a cluster lends it no GPUs unless asked (as with CPUs): a job's
            # driver that holds a GPU for itself would otherwise offer it to tasks too.
            gpus = 0
        else:
            from . import _gpus

            gpus = _gpus.count()
        if not isinstance(gpus, (int, float)) or gpus < 0:
            raise ValueError(f"num_gpus must be a number >= 0, not {num_gpus!r}")
        custom = check_resources(resources or {}, "init")
        notice_ms = _wait_notice_ms()
        # Every task and actor carries the environment, and with it this process's
        # multiprocessing authkey: multiprocessing.Manager proxies passed to tasks then work
        # (see _runtime_env).
        # Checked (and packed) before the node starts; the job id goes in once the node has
        # its id (see _job_id), so it is built again then.
        # A driver that has not imported multiprocessing has no Manager to pass yet: its key
        # goes in at the first submit after it imports it (ensure_init), and init does not pay
        # multiprocessing's import (~6 ms).
        eager = daemon is not None or "multiprocessing.process" in sys.modules
        env_desc, env_packages = _runtime_env.build(
            runtime_env or {}, _authkey() if eager else None, None
        )
        if gpus:
            custom["GPU"] = float(gpus)
        if object_spill_dir is None:
            spill_dir = _temp_dir()
        else:
            spill_dir = os.fspath(object_spill_dir)
        # Workers skip `site` (-S) and get this process's sys.path instead: a faster start, and
        # the same modules importable as here.
        # ("" in sys.path means the current directory, as for `python -c` or a REPL.)
        path = os.pathsep.join(p or os.getcwd() for p in sys.path)
        env = [("VOLLEY_SYS_PATH", path), ("PYTHONPATH", path)]
        # What the worker template imports before it forks workers (see _template.py).
        from ._preload import default_preload

        env.append(("VOLLEY_PRELOAD", default_preload() if preload is None else ",".join(preload)))
        if daemon is not None:
            env.append(("VOLLEY_NODE_ADDRESS", daemon["listen"]))
        # The node's developer diagnostics go to a log file, not to this terminal: a daemon's
        # stderr is its log; a driver gets a file of its own, made on the first diagnostic.
        logs_dir = os.path.join(_runtime_dir.runtime_dir_name(), "logs")
        _core.set_diagnostics_dir(None if daemon else logs_dir)
        # Each worker's output is kept in a file there too (`volley logs`; VOLLEY_WORKER_LOGS=0:
        # not kept).
        keep = os.environ.get("VOLLEY_WORKER_LOGS", "1").strip() != "0"
        _core.set_worker_log_dir(logs_dir if keep else None)
        # A one-threaded driver forks its worker template now, before the node's threads
        # start: the first worker is forked sooner (docs/workers.md).
        template = None
        if daemon is None:
            # What the driver's first .remote() imports anyway (cloudpickle, the remote-function
            # modules), imported before the fork: the template has them too instead of importing
            # them again on the same cores (~20 ms). By name: `_remote` imports this module.
            import importlib

            import cloudpickle  # noqa: F401

            importlib.import_module("volley._remote")
            from . import _template_fork

            template = _template_fork.fork_from_driver(env, explicit_preload=preload is not None)
        try:
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
                template=template,
            )
        except BaseException:
            if template is not None:
                _reap_template(template[0])
            raise
        if daemon is None:
            if log_to_driver:
                _whole_lines_out()
            # The node's messages to this driver's user go through logging.getLogger("volley").
            from . import _log

            _log.start()
            if "logging" in sys.modules:  # a driver that configured logging has imported it
                _log.logger.debug("volley: %s", _template_fork.last_choice)
        try:
            for h, data in env_packages.items():
                _core.register_package(h, data)
            node_number = 0  # a node alone is node 0
            if joining is not None:
                try:
                    node_number, _ = _core.join_cluster(
                        None,
                        joining[0],
                        joining[1],
                        True,
                        logs=bool(log_to_driver),
                        tls_cert=_cluster.resolve_tls_cert(tls_cert),
                    )
                except ConnectionError as e:
                    src = f"VOLLEY_ADDRESS={address}" if from_env else f"address={address!r}"
                    raise _cluster.connection_error(joining[0], src, e) from None
            elif daemon is not None:
                daemon["joined"] = _core.join_cluster(
                    daemon["listen"],
                    daemon.get("head"),
                    daemon["token"],
                    False,
                    daemon.get("heartbeat_ms", 500),
                    daemon.get("dead_after_ms", 10_000),
                    tls_cert=daemon.get("tls_cert"),
                    tls_key=daemon.get("tls_key"),
                )
            job = _job_id(node_number)
            desc = _runtime_env.with_job(env_desc, job, node_number)
            _core.set_runtime_env(desc, sorted(env_packages))
            _env_sent = (desc, sorted(env_packages))
            if history:
                _core.record_history(str(_driver_history_dir()))
            if args.get("dashboard") and not auto:
                from . import _dashboard

                token = joining[1] if joining is not None else None
                _dashboard.start(args["dashboard_host"], args["dashboard_port"], token, driver=True)
        except BaseException:
            _core.stop_dashboard()
            _core.shutdown(0.5)
            _stop_event_log()
            raise
        generation += 1
        if not _atexit_registered:
            atexit.register(shutdown)
            _atexit_registered = True
        # What the first calls import, imported now (not with volley, whose import stays fast
        # without it): a module that one thread is importing while another forks stays locked
        # for ever in the child (see test_fork).
        import cloudpickle  # noqa: F401

        _init_args = None if daemon is not None else args
        job_id = None if daemon is not None else job
        _auto_started_by = threading.current_thread().name if auto else None
        _forked_from = None
        _authkey_pending = not eager
        _ready = True
        return Context(cpus)


def _reap_template(pid: int) -> None:
    """Ends the worker template this driver forked for a node that did not start."""
    import signal

    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def _temp_dir() -> str:
    """``tempfile.gettempdir()``, without importing tempfile (and shutil, random, re with it:
    several milliseconds of every start) in the usual case: the first of ``$TMPDIR``,
    ``$TEMP``, ``$TMP`` that is set, else /tmp, being a writable directory. Anything else asks
    tempfile, which tries its other candidates."""
    if "tempfile" not in sys.modules:
        env = [os.environ.get(name) for name in ("TMPDIR", "TEMP", "TMP")]
        d = next((x for x in env if x), "/tmp")
        if os.path.isdir(d) and os.access(d, os.W_OK | os.X_OK):
            return os.path.abspath(d)
    import tempfile

    return tempfile.gettempdir()


def _job_id(node: int) -> str:
    """This driver's job id: ``VOLLEY_JOB_ID`` (what ``volley job submit`` gives the driver of
    a job it runs), else its node's number in the cluster (``"0"`` on one machine): the
    ``job_id`` the state API shows for its tasks and actors and ``volley list jobs`` for it."""
    given = os.environ.get("VOLLEY_JOB_ID", "").strip()
    return given or str(node)


def _history_wanted(history: bool | None, clustered: bool) -> bool:
    """Whether this driver's node writes the history (``init(history=...)``, else
    ``VOLLEY_HISTORY=1``); a driver in a cluster never does: its head writes the cluster's."""
    if history is not None and not isinstance(history, bool):
        raise TypeError(f"history must be True, False or None, not {history!r}")
    if history and clustered:
        raise ValueError(
            "history=True is for a driver's own node: in a cluster, its head (`volley start "
            "--head`) writes the history of every driver"
        )
    if history is None:
        history = os.environ.get("VOLLEY_HISTORY", "").strip() == "1" and not clustered
    return history


def _driver_history_dir() -> Path:
    """``<session dir>/history/driver-<pid>-<ms>/``, created exclusively (mode 0700): each
    driver of a session writes its own files there, and the readers merge them."""
    from . import _cluster

    parent = _cluster.private_subdir("history")
    d = parent / f"driver-{os.getpid()}-{time.time_ns() // 1_000_000}"
    os.mkdir(d, 0o700)  # FileExistsError rather than sharing another driver's files
    return d


def _authkey() -> bytes:
    """This process's ``multiprocessing`` authkey (what its ``Manager`` servers accept)."""
    from multiprocessing import process  # only a driver needs it: `import volley` stays fast

    return bytes(process.current_process().authkey)


# init's arguments as a first call that starts volley passes them: the defaults.
_INIT_DEFAULTS: dict = {"num_cpus": None, **(init.__kwdefaults__ or {})}
del _INIT_DEFAULTS["ignore_reinit_error"]


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
    global _ready, _auto_started_by, _authkey_pending, _env_sent
    with _lock:
        if _core.mode() != "driver":
            return
        _ready = False
        _auto_started_by = None
        _authkey_pending, _env_sent = False, None
        # Only a dashboard this process started is stopped (its module is loaded then); an
        # import here could fail, e.g. with every file descriptor taken, and leave the node up.
        dashboard = sys.modules.get(f"{__package__}._dashboard")
        if dashboard is not None:
            dashboard.stop()
        else:
            _core.stop_dashboard()
        _core.shutdown(1.0)
        _stop_event_log()
        for hook in _shutdown_hooks:
            hook()


def _stop_event_log() -> None:
    """Logs the node's last messages and stops routing them (see ``_log``), if a driver's init
    started it."""
    log = sys.modules.get("volley._log")
    if log is not None:
        log.stop()


def at_shutdown(hook: Callable[[], None]) -> None:
    """Has ``shutdown`` call ``hook`` after the node has stopped (``ref.future()``'s futures
    fail then), in this process only."""
    _shutdown_hooks.append(hook)


def nodes() -> list[dict]:
    """The cluster's nodes as this process last heard from the head (every second or so): a
    dict per node with ``node_id``, ``address``, ``pid``, ``num_cpus``, ``cpus_free``,
    ``resources`` (name: ``(total, free)``), ``workers``, ``store_used``, ``store_capacity``,
    ``tasks_waiting`` (tasks not started: waiting for arguments, for resources, or queued on a
    worker behind a running task) with ``waiting`` (what they wait for and who holds it, a line
    per kind), ``driver``, the bytes of stored values it has pulled from other nodes
    (``bytes_received``) and served to them (``bytes_served``), and two dicts of counters:
    ``scheduler`` (``workers_alive``, ``workers_starting``, ``workers_blocked``,
    ``tasks_waiting_deps``, ``tasks_queued``, ``tasks_assigned``, ``tasks_pipelined``,
    ``tasks_remote``, ``objects``, ``actors``, ``cpu_used_milli``, ``actor_restarts``,
    ``worker_crashes``) and ``store`` (``used``,
    ``capacity``, ``pinned``, ``objects``, ``objects_in_memory``, ``objects_spilled``,
    ``spilled_bytes``, ``spill_count``, ``spill_bytes_total``, ``restore_count``,
    ``restore_bytes_total``), and ``named_actors`` (its named and detached actors: ``name``,
    empty for a detached actor without one, ``namespace``, ``class_name``, ``actor_id``), the
    host's memory in bytes (``mem_total``, ``mem_used``: total minus available, from
    /proc/meminfo; 0 where unreadable) and the round trip of its last heartbeat to the head
    (``heartbeat_rtt_ms``; 0 for the head and a lone node). It
    is the node's one snapshot, the one ``volley status --json``
    prints. Outside a cluster it lists this process's own node (``node_id`` 0, ``address``
    ``""``, ``driver`` True), with the same keys.

    >>> volley.init(num_cpus=2)
    volley.Context(num_cpus=2)
    >>> [(n["node_id"], n["num_cpus"]) for n in volley.nodes()]
    [(0, 2.0)]
    >>> volley.shutdown()

    On a cluster (``volley.init(address="auto")``):

    >>> [n["address"] for n in volley.nodes() if not n["driver"]]  # doctest: +SKIP
    ['127.0.0.1:6380', '127.0.0.2:6380']
    """
    ensure_init()
    found = list(_core.cluster_nodes())
    if found:
        return found
    if _core.mode() == "worker":  # its node's view, over the node's socket
        return list(_core.cluster_nodes(os.environ["VOLLEY_NODE_SOCKET"]))
    return [_core.node_info()]


def is_initialized() -> bool:
    """True once ``init`` ran (or inside a worker).

    >>> volley.is_initialized()
    False
    """
    return _core.mode() is not None


def ensure_init() -> None:
    """Starts volley with defaults unless it runs (the first call of any thread does this)."""
    if not _ready:
        _auto_init()
    if _authkey_pending and "multiprocessing.process" in sys.modules:
        _send_authkey()


def _send_authkey() -> None:
    """The driver imported multiprocessing after ``init``: its authkey goes into the runtime
    environment of the tasks and actors it submits from now on (see ``init``)."""
    global _authkey_pending, _env_sent
    from . import _runtime_env

    with _lock:
        if not _authkey_pending or _env_sent is None:
            return
        desc, packages = _env_sent
        desc = _runtime_env.with_authkey(desc, _authkey())
        _core.set_runtime_env(desc, packages)
        _env_sent = (desc, packages)
        _authkey_pending = False


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
    global _lock, _ready, generation, _forked_from, _auto_started_by
    _lock = threading.RLock()  # a thread of the parent may have held it
    global _authkey_pending, _env_sent
    _authkey_pending, _env_sent = False, None
    was = _core.after_fork_in_child()
    log = sys.modules.get("volley._log")
    if log is not None:
        log.after_fork_in_child()
    if was is None:
        return
    _ready = False
    _auto_started_by = None
    generation += 1  # remote functions register again, with the child's node
    if was == "driver":
        args = _init_args or {}
        _forked_from = "daemon" if _init_args is None else "driver"
        if args.get("address") is not None:
            _forked_from = "cluster"
    else:
        _forked_from = "worker"


os.register_at_fork(after_in_child=_after_fork_in_child)


def mark_worker_connected() -> None:
    """This process is a worker that has connected to its node: volley calls in tasks use it."""
    global generation, _ready
    generation += 1
    _ready = True
