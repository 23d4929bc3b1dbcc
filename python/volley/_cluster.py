"""Cluster plumbing shared by ``volley.init(address=...)`` and the ``volley`` command: where a
machine's cluster session lives, its token, and the head's address.

The session directory (this user's runtime directory, see ``_runtime_dir``: ``$VOLLEY_SESSION_DIR``,
else ``$XDG_RUNTIME_DIR/volley``, else ``/tmp/volley-<uid>``; mode 0700, refused when someone else
could have made it) holds, for the cluster started on this machine: ``token``, ``address`` (the
head's ``host:port``), ``nodes/<pid>.json`` (one per daemon, removed when it stops), ``logs/``,
``packages/`` (runtime_env packages) and, after ``volley start --head --tls``, the generated
``cluster-cert.pem`` and ``cluster-key.pem``.
"""

from __future__ import annotations

import json
import os

from . import _runtime_dir

# pathlib where a Path is made (it costs every driver's start ~2 ms: urllib.parse, ipaddress)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

DEFAULT_PORT = 6380


def session_dir(create: bool = False) -> Path:
    """The session directory; with ``create``, made (or checked: ``RuntimeDirError``) first."""
    d = _runtime_dir.runtime_dir()
    return _runtime_dir.ensure_private_dir(d) if create else d


def private_subdir(name: str) -> Path:
    """``<session dir>/<name>/``, created or checked like the session directory."""
    return _runtime_dir.ensure_private_dir(session_dir(create=True) / name)


def new_token() -> str:
    import secrets  # here: `secrets` costs every start a few milliseconds

    return secrets.token_hex(32)


def write_private(path: Path, text: str) -> None:
    """Writes ``text`` to a file only this user can read, in a checked private directory
    (atomically, never through a symlink)."""
    _runtime_dir.ensure_private_dir(path.parent)
    _runtime_dir.write_file(path, text)


def read_private(path: Path) -> str | None:
    """The text of ``path`` in a private directory (None if either is missing); raises
    ``RuntimeDirError`` if the directory is not safe or the file is a symlink."""
    if not _runtime_dir.check_private_dir(path.parent):
        return None
    data = _runtime_dir.read_file(path)
    return None if data is None else data.decode(errors="replace")


def _setting(given: str | None, env: str, file: str) -> str | None:
    """A cluster setting: ``given``, else environment variable ``env``, else what the head on
    this machine recorded in the session dir's ``file`` (None if none of them says)."""
    if given:
        return given
    if os.environ.get(env):
        return os.environ[env]
    return (read_private(session_dir() / file) or "").strip() or None


def resolve_token(token: str | None) -> str:
    """The cluster token: the argument, else ``VOLLEY_TOKEN``, else the session's token file."""
    found = _setting(token, "VOLLEY_TOKEN", "token")
    if found is None:
        raise ConnectionError(
            f"no cluster token: pass token=..., set VOLLEY_TOKEN, or start the head on this "
            f"machine (`volley start --head` writes {session_dir() / 'token'})"
        )
    return found


def resolve_tls_cert(cert: str | None) -> str | None:
    """The cluster's TLS certificate (PEM path), if it uses TLS: the argument, else
    ``VOLLEY_TLS_CERT``, else the one ``volley start --head --tls-cert`` recorded here."""
    return _setting(cert, "VOLLEY_TLS_CERT", "tls_cert")


def connection_error(addr: str, source: str, e: BaseException) -> ConnectionError:
    """A ``ConnectionError`` that names the address tried, where it came from (``source``:
    ``"address='auto'"``, ``"VOLLEY_ADDRESS=..."``, ``"--address ..."``) and why it failed."""
    text = str(e)
    if addr in text:
        return ConnectionError(text)
    return ConnectionError(f"could not connect to the volley cluster at {addr} ({source}): {text}")


def resolve_address(address: str) -> str:
    """``host:port`` of the head; ``"auto"`` reads the one ``volley start --head`` recorded."""
    if address != "auto":
        if ":" not in address:
            return f"{address}:{DEFAULT_PORT}"
        return address
    found = _setting(None, "VOLLEY_ADDRESS", "address")
    if found is None:
        raise ConnectionError(
            f"address='auto' but no cluster runs on this machine "
            f"({session_dir() / 'address'} is missing); start one with `volley start --head`, "
            "or pass address='HOST:PORT'"
        )
    return found


def process_start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, field 22 of ``/proc/<pid>/stat``),
    None if there is no such process (or only its zombie). With the pid it names one process:
    a pid is reused, the pair is not."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ")".
    fields = text[text.rfind(b")") + 2 :].split()
    try:
        return None if fields[0] == b"Z" else int(fields[19])
    except (IndexError, ValueError):
        return None


def record_node(info: dict) -> Path:
    """Records this daemon (``info`` plus its pid's start time) for ``volley stop``."""
    path = private_subdir("nodes") / f"{os.getpid()}.json"
    info = dict(info, start_time=process_start_time(os.getpid()))
    _runtime_dir.write_file(path, json.dumps(info))
    return path


def recorded_nodes() -> list[dict]:
    """The node records of this machine's session, each with ``record`` (its file's path)."""
    nodes = session_dir() / "nodes"
    if not _runtime_dir.check_private_dir(session_dir()) or not (
        _runtime_dir.check_private_dir(nodes)
    ):
        return []
    out = []
    for p in sorted(nodes.glob("*.json")):
        try:
            info = json.loads(_runtime_dir.read_file(p) or b"")
            if not isinstance(info, dict) or not isinstance(info.get("pid"), int):
                raise ValueError("no pid")
        except (OSError, ValueError):
            continue
        info["record"] = str(p)
        out.append(info)
    return out


def is_recorded_process(info: dict) -> bool:
    """Whether the process a node record names is still that node: its pid runs and started
    when the record says (a pid freed by a dead node may now be any other process). A record
    without a start time (from an older volley) needs a ``volley._cli start`` command line."""
    started = info.get("start_time")
    if started is not None:
        return process_start_time(info["pid"]) == started
    try:
        with open(f"/proc/{info['pid']}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return b"volley._cli" in argv and b"start" in argv
