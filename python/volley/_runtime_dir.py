"""This user's runtime directory: where a machine's cluster session and runtime_env packages live.

It is ``$VOLLEY_SESSION_DIR``, else ``$XDG_RUNTIME_DIR/volley`` when ``XDG_RUNTIME_DIR`` is set
and is a private directory of this user, else ``/tmp/volley-<uid>``. A shared place like
``/tmp`` lets anyone create that name first, so a directory is only used when it is a real
directory (not a symlink) owned by this user with no group or other access; it is created with
mode 0700 if missing, and refused with :class:`RuntimeDirError` otherwise. Files in it are
written to a fresh temporary name (``O_CREAT|O_EXCL|O_NOFOLLOW``, mode 0600) then renamed, and
read without following symlinks. ``crates/volley-runtime/src/rundir.rs`` applies the same rules
(the node writes runtime_env packages under ``<runtime dir>/packages``).
"""

from __future__ import annotations

import os
import stat

# pathlib where a Path is made (it costs every driver's start ~2 ms: urllib.parse, ipaddress)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path


class RuntimeDirError(OSError):
    """A runtime directory (or file in it) exists but is not safe to use."""


def _private(st: os.stat_result) -> str | None:
    """What is wrong with a directory's ``lstat`` (None: a real directory only we can use)."""
    if stat.S_ISLNK(st.st_mode):
        return "is a symlink"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if st.st_uid != os.getuid():
        return f"is owned by uid {st.st_uid}, not by this user (uid {os.getuid()})"
    if st.st_mode & 0o077:
        return f"has mode {stat.S_IMODE(st.st_mode):o} (group or others may use it; need 700)"
    return None


def runtime_dir() -> Path:
    """The runtime directory's path (not created nor checked: see :func:`ensure_private_dir`)."""
    from pathlib import Path

    return Path(runtime_dir_name())


def runtime_dir_name() -> str:
    """:func:`runtime_dir` as a string (without importing pathlib: a driver's ``init``)."""
    d = os.environ.get("VOLLEY_SESSION_DIR")
    if d:
        return d
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isabs(xdg):
        try:
            if _private(os.lstat(xdg)) is None:
                return os.path.join(xdg, "volley")
        except OSError:
            pass
    return f"/tmp/volley-{os.getuid()}"


def _refuse(path: Path, why: str) -> RuntimeDirError:
    return RuntimeDirError(
        f"refusing to use {path}: it {why}. Someone else may have created it to take over "
        f"this user's volley files; remove it (or set VOLLEY_SESSION_DIR to a private directory)"
    )


def check_private_dir(path: Path) -> bool:
    """True if ``path`` is a private directory of this user, False if it does not exist;
    raises :class:`RuntimeDirError` if it exists but is not safe."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    why = _private(st)
    if why:
        raise _refuse(path, why)
    return True


def ensure_private_dir(path: Path | str) -> Path:
    """Creates ``path`` (mode 0700, exclusively) or checks the existing one (see module doc).
    Missing parents are created too; only ``path`` itself is checked."""
    from pathlib import Path

    path = Path(path)
    if not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    check_private_dir(path)
    return path


def _written_aside(path: Path, data: str | bytes, mode: int) -> Path:
    """A fresh temporary file next to ``path`` (created exclusively, never through a symlink)
    holding ``data``."""
    if isinstance(data, str):
        data = data.encode()
    tmp = path.parent / f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def write_file(path: Path, data: str | bytes, mode: int = 0o600) -> None:
    """Replaces ``path`` atomically with ``data``: written aside, then renamed onto it."""
    tmp = _written_aside(path, data, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def create_file(path: Path, data: str | bytes, mode: int = 0o600) -> None:
    """Creates ``path`` with ``data``, whole or not at all: written aside, then linked to its
    name, which fails with ``FileExistsError`` if anything has the name (a symlink included).
    A reader never sees it half written."""
    tmp = _written_aside(path, data, mode)
    try:
        os.link(tmp, path, follow_symlinks=False)
    finally:
        tmp.unlink(missing_ok=True)


def read_file(path: Path) -> bytes | None:
    """The bytes of regular file ``path`` (None if it does not exist); refuses a symlink."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as e:
        if os.path.islink(path):
            raise RuntimeDirError(f"refusing to read {path}: it is a symlink") from e
        raise
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise RuntimeDirError(f"refusing to read {path}: it is not a regular file")
        return f.read()
