"""``runtime_env``: the driver's code, files and environment variables, on every node.

The driver packs ``working_dir`` and each of ``py_modules`` into a zip named by the hash of its
contents and gives it to its node, which sends it to another node with the first task that
needs it there; each node keeps it as ``<packages dir>/<hash>.zip`` (``VOLLEY_PACKAGES_DIR``,
else ``packages/`` in this user's runtime directory: a private directory, checked as
``_runtime_dir`` says, so nobody else can swap what is in it). A node refuses a zip whose
SHA-256 does not start with its name, and a worker checks it again before it unpacks it once
(into ``<packages dir>/<hash>/``), then, for each task of that
environment, runs in the unpacked ``working_dir`` (its current directory, and first on
``sys.path``), with the ``py_modules`` importable and ``env_vars`` set. A worker that next runs
a task of another environment (or none) undoes all of it first.

Every driver's environment also holds its ``multiprocessing`` authkey (even without a
``runtime_env``): its tasks run with ``multiprocessing.current_process().authkey`` set to it, on
every node, so the driver's ``Manager`` proxies work in them (a driver that had not imported
``multiprocessing`` at ``init`` adds it at its first submit after importing it: see
``_session.ensure_init``). The key travels inside the tasks
only (over the worker's socket and the cluster's token-checked links, TLS when the cluster uses
it); it is never put on a command line, in an environment variable or in a file.
"""

from __future__ import annotations

import json
import os
import sys
import types

from . import _runtime_dir

# pathlib where a Path is made (it costs every driver's start ~2 ms: urllib.parse, ipaddress)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

KEYS = ("working_dir", "py_modules", "env_vars")
# Directories and files never packed.
_SKIP_DIRS = {"__pycache__", ".git", ".hg", ".svn", ".venv", "node_modules", ".mypy_cache"}
MAX_PACKAGE_BYTES = 512 << 20


def _zip_dir(root: Path, prefix: str = "") -> bytes:
    """A zip of ``root`` whose bytes depend only on the files' paths and contents."""
    import io
    import zipfile  # zipfile, io, shutil, multiprocessing: imported where used (start-up)
    from pathlib import Path

    buf = io.BytesIO()
    total = 0
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
            for name in sorted(filenames):
                if name.endswith((".pyc", ".pyo")):
                    continue
                path = Path(dirpath) / name
                if not path.is_file():
                    continue
                rel = path.relative_to(root).as_posix()
                data = path.read_bytes()
                total += len(data)
                if total > MAX_PACKAGE_BYTES:
                    raise ValueError(
                        f"runtime_env: {root} holds more than {MAX_PACKAGE_BYTES >> 20} MiB; "
                        "ship large data with volley.put instead"
                    )
                info = zipfile.ZipInfo(prefix + rel, date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = (path.stat().st_mode & 0o777) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                z.writestr(info, data)
    return buf.getvalue()


def _module_path(m) -> Path:
    from pathlib import Path

    if isinstance(m, types.ModuleType):
        files = getattr(m, "__path__", None)
        p = Path(list(files)[0]) if files else Path(m.__file__ or "")
    else:
        p = Path(os.fspath(m))
    p = p.resolve()
    if not p.exists():
        raise ValueError(f"runtime_env: py_modules entry {m!r} does not exist")
    return p


def build(
    runtime_env: dict, authkey: bytes | None = None, job_id: str | None = None
) -> tuple[str, dict[str, bytes]]:
    """Checks ``runtime_env`` and packs it: (the description workers read, {hash: zip}).

    ``authkey``: the driver's ``multiprocessing`` authkey, which its tasks run with (see
    ``apply``). The description travels only inside tasks, over the node's authenticated
    links, and is never written to a file, a command line or an environment variable."""
    if not isinstance(runtime_env, dict):
        raise TypeError(f"runtime_env must be a dict, not {type(runtime_env).__name__}")
    unknown = set(runtime_env) - set(KEYS)
    if unknown:
        raise ValueError(f"runtime_env: unknown key(s) {sorted(unknown)}; known: {list(KEYS)}")
    packages: dict[str, bytes] = {}

    def add(data: bytes) -> str:
        import hashlib  # here: loading OpenSSL's hashes costs every start ~2 ms

        h = hashlib.sha256(data).hexdigest()[:32]
        packages[h] = data
        return h

    desc: dict = {"working_dir": None, "py_modules": [], "env_vars": {}}
    wd = runtime_env.get("working_dir")
    if wd is not None:
        from pathlib import Path

        root = Path(os.fspath(wd)).resolve()
        if not root.is_dir():
            raise ValueError(f"runtime_env: working_dir {wd!r} is not a directory")
        desc["working_dir"] = add(_zip_dir(root))
    for m in runtime_env.get("py_modules") or []:
        p = _module_path(m)
        if p.is_dir():
            data = _zip_dir(p, prefix=p.name + "/")
        else:
            data = _zip_single(p)
        desc["py_modules"].append(add(data))
    env_vars = runtime_env.get("env_vars") or {}
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items()):
        raise TypeError("runtime_env: env_vars must map str to str")
    desc["env_vars"] = dict(sorted(env_vars.items()))
    if authkey is not None:
        desc["authkey"] = authkey.hex()
    if job_id is not None:
        desc["job_id"] = job_id
    return json.dumps(desc, sort_keys=True), packages


def with_job(desc: str, job_id: str, node: int | None = None) -> str:
    """The description ``desc`` (from :func:`build`) with the driver's job id in it, and the
    number of the driver's node (``job_node``), which the state API files the job's tasks
    under wherever they run, nested ones included (they inherit the description)."""
    d = json.loads(desc)
    d["job_id"] = job_id
    if node is not None:
        d["job_node"] = node
    return json.dumps(d, sort_keys=True)


def with_authkey(desc: str, authkey: bytes) -> str:
    """The description ``desc`` with the driver's ``multiprocessing`` authkey in it (a driver
    that imported multiprocessing only after ``init``)."""
    d = json.loads(desc)
    d["authkey"] = authkey.hex()
    return json.dumps(d, sort_keys=True)


def _zip_single(path: Path) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        info = zipfile.ZipInfo(path.name, date_time=(1980, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        z.writestr(info, path.read_bytes())
    return buf.getvalue()


# ----------------------------------------------------------------------------------- in workers

_current: str | None = None
_undo: list = []


def _packages_dir() -> Path:
    """The packages directory (the same as the node's, ``rundir.rs``), checked private."""
    d = os.environ.get("VOLLEY_PACKAGES_DIR")
    if d:
        return _runtime_dir.ensure_private_dir(d)
    root = _runtime_dir.ensure_private_dir(_runtime_dir.runtime_dir())
    return _runtime_dir.ensure_private_dir(root / "packages")


def _unpacked(h: str) -> Path:
    """``<packages dir>/<hash>/``, unpacked from its zip the first time (atomically), after
    checking that the zip is the package ``h`` names."""
    base = _packages_dir()
    target = base / h
    if target.is_dir():
        return target
    archive = base / f"{h}.zip"
    data = _runtime_dir.read_file(archive)
    if data is None:
        raise RuntimeError(f"runtime_env package {h} has not reached this node ({archive})")
    import hashlib

    if len(h) < 32 or not hashlib.sha256(data).hexdigest().startswith(h):
        raise RuntimeError(
            f"runtime_env package {h}: {archive} does not match its hash; refusing to run it"
        )
    import io
    import shutil
    import zipfile

    tmp = base / f".{h}.{os.getpid()}.unpacking"
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for info in z.infolist():
            dest = (tmp / info.filename).resolve()
            if not str(dest).startswith(str(tmp.resolve())):
                raise RuntimeError(f"runtime_env package {h}: unsafe path {info.filename!r}")
        z.extractall(tmp)
        for info in z.infolist():
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                os.chmod(tmp / info.filename, mode)
    try:
        os.rename(tmp, target)
    except OSError:  # another worker won the race
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def apply(desc: str | None) -> None:
    """Makes this worker run in the environment ``desc`` (from ``build``), undoing the last."""
    global _current
    if desc == _current:
        return
    while _undo:
        _undo.pop()()
    _current = None
    if desc is None:
        return
    d = json.loads(desc)
    for h in reversed(d.get("py_modules") or []):
        _push_path(str(_unpacked(h)))
    if d.get("working_dir"):
        wd = str(_unpacked(d["working_dir"]))
        _push_path(wd)
        old = os.getcwd()
        os.chdir(wd)
        _undo.append(lambda: os.chdir(old))
    for k, v in (d.get("env_vars") or {}).items():
        before = os.environ.get(k)
        os.environ[k] = v
        _undo.append(lambda k=k, before=before: _restore_env(k, before))
    if d.get("authkey"):
        _set_authkey(bytes.fromhex(d["authkey"]))
    if d.get("job_id"):
        _set_job_id(d["job_id"])
    _current = desc


#: The job (driver) whose task or actor runs in this worker now (``get_runtime_context``).
job_id: str | None = None


def _set_job_id(value: str | None) -> None:
    global job_id
    before, job_id = job_id, value
    _undo.append(lambda: _set_job_id_only(before))


def _set_job_id_only(value: str | None) -> None:
    global job_id
    job_id = value


def _set_authkey(key: bytes) -> None:
    """Runs this worker's tasks with their driver's ``multiprocessing`` authkey, so that the
    ``Manager`` proxies they receive can reach their servers (and processes they start inherit
    it, as children of the driver would)."""
    from multiprocessing import process

    proc = process.current_process()
    before = proc.authkey
    if bytes(before) == key:
        return
    proc.authkey = key
    _undo.append(lambda: setattr(proc, "authkey", before))


def _push_path(p: str) -> None:
    sys.path.insert(0, p)

    def undo():
        try:
            sys.path.remove(p)
        except ValueError:
            pass

    _undo.append(undo)


def _restore_env(k: str, before: str | None) -> None:
    if before is None:
        os.environ.pop(k, None)
    else:
        os.environ[k] = before
