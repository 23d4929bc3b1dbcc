"""Cluster plumbing shared by ``volley.init(address=...)`` and the ``volley`` command: where a
machine's cluster session lives, its token, and the head's address.

The session directory (``$VOLLEY_SESSION_DIR``, default ``/tmp/volley-<uid>``) holds, for the
cluster started on this machine: ``token`` (mode 0600), ``address`` (the head's ``host:port``),
``nodes/<pid>.json`` (one per daemon, removed when it stops) and ``logs/``.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

DEFAULT_PORT = 6380


def session_dir() -> Path:
    d = os.environ.get("VOLLEY_SESSION_DIR") or f"/tmp/volley-{os.getuid()}"
    return Path(d)


def new_token() -> str:
    return secrets.token_hex(32)


def write_private(path: Path, text: str) -> None:
    """Writes ``text`` to a file only this user can read."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def _setting(given: str | None, env: str, file: str) -> str | None:
    """A cluster setting: ``given``, else environment variable ``env``, else what the head on
    this machine recorded in the session dir's ``file`` (None if none of them says)."""
    if given:
        return given
    if os.environ.get(env):
        return os.environ[env]
    try:
        return (session_dir() / file).read_text().strip() or None
    except FileNotFoundError:
        return None


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


def record_node(info: dict) -> Path:
    path = session_dir() / "nodes" / f"{os.getpid()}.json"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text(json.dumps(info))
    return path


def recorded_nodes() -> list[dict]:
    out = []
    for p in sorted((session_dir() / "nodes").glob("*.json")):
        try:
            out.append(json.loads(p.read_text()))
        except (OSError, ValueError):
            continue
    return out
