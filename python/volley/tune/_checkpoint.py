"""Checkpoints: a directory of a trial's state, kept by the tuner under the trial's folder.

A trainable makes one in a directory of its own (or from a small dict) and hands it to
``volley.tune.report(..., checkpoint=...)``; the tuner keeps a copy under
``storage_path/name/<trial>/checkpoint_NNNNNN``. On the driver's node the copy is a file copy
made by the trial itself; from another node the directory travels packed in the report
(through volley, no shared file system needed).

>>> import tempfile
>>> from volley.tune import Checkpoint
>>> ckpt = Checkpoint.from_dict({"step": 3})
>>> ckpt.to_dict()
{'step': 3}
>>> with tempfile.TemporaryDirectory() as d:
...     path = ckpt.to_directory(d)
...     Checkpoint.from_directory(path).to_dict()
{'step': 3}
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from typing import Any

__all__ = ["Checkpoint"]

#: The file a dict checkpoint is kept in inside its directory.
DICT_FILE = "_dict_checkpoint.pkl"


class Checkpoint:
    """A trial's saved state: a directory (``from_directory``) or a small dict (``from_dict``).

    ``path`` is the directory (None for a dict checkpoint not yet written anywhere).
    """

    def __init__(self, path: str | os.PathLike | None = None, *, _data: dict | None = None):
        if path is None and _data is None:
            raise ValueError("a Checkpoint needs a directory (Checkpoint.from_directory(path))")
        self.path = os.fspath(path) if path is not None else None
        self._data = _data

    @classmethod
    def from_directory(cls, path: str | os.PathLike) -> Checkpoint:
        """The checkpoint kept in directory ``path`` (which must exist).

        >>> Checkpoint.from_directory("/no/such/dir")
        Traceback (most recent call last):
        ValueError: Checkpoint.from_directory: '/no/such/dir' is not a directory
        """
        if not os.path.isdir(path):
            raise ValueError(f"Checkpoint.from_directory: {os.fspath(path)!r} is not a directory")
        return cls(os.path.abspath(path))

    @classmethod
    def from_dict(cls, data: dict) -> Checkpoint:
        """A checkpoint of a small picklable dict (kept as one file in its directory).

        >>> Checkpoint.from_dict({"w": [1.0, 2.0]}).to_dict()["w"]
        [1.0, 2.0]
        """
        if not isinstance(data, dict):
            raise TypeError(f"Checkpoint.from_dict takes a dict, not {type(data).__name__}")
        return cls(_data=dict(data))

    def to_dict(self) -> dict:
        """The dict of a ``from_dict`` checkpoint (``ValueError`` for a plain directory)."""
        if self._data is not None:
            return dict(self._data)
        assert self.path is not None
        f = os.path.join(self.path, DICT_FILE)
        if not os.path.exists(f):
            raise ValueError(
                f"checkpoint {self.path} was not made from a dict; use as_directory() to read it"
            )
        with open(f, "rb") as fh:
            return pickle.load(fh)

    def to_directory(self, path: str | os.PathLike | None = None) -> str:
        """Writes the checkpoint's files into ``path`` (a new temporary directory if None) and
        returns that directory."""
        dest = os.fspath(path) if path is not None else tempfile.mkdtemp(prefix="checkpoint_")
        os.makedirs(dest, exist_ok=True)
        if self._data is not None:
            with open(os.path.join(dest, DICT_FILE), "wb") as fh:
                pickle.dump(self._data, fh, protocol=5)
        else:
            assert self.path is not None
            shutil.copytree(self.path, dest, dirs_exist_ok=True)
        return dest

    @contextlib.contextmanager
    def as_directory(self) -> Iterator[str]:
        """A directory holding the checkpoint, for reading: its own directory when it has one,
        else a temporary one removed on exit.

        >>> with Checkpoint.from_dict({"a": 1}).as_directory() as d:
        ...     sorted(os.listdir(d))
        ['_dict_checkpoint.pkl']
        """
        if self.path is not None:
            yield self.path
            return
        d = self.to_directory()
        try:
            yield d
        finally:
            shutil.rmtree(d, ignore_errors=True)

    def __repr__(self) -> str:
        return f"Checkpoint({self.path!r})" if self.path else "Checkpoint(<dict>)"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Checkpoint) and self.path == other.path and self._data == other._data
        )

    def __hash__(self) -> int:
        return hash(self.path)


# ------------------------------------------------------------- moving a checkpoint to storage


def pack(path: str) -> bytes:
    """The directory ``path`` as the bytes of an uncompressed tar (to travel in a report).
    Links are followed (their files travel), as a copy on the driver's node follows them:
    a link would not point to the same file on another machine."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", dereference=True) as tar:
        tar.add(path, arcname=".")
    return buf.getvalue()


def unpack(data: bytes, dest: str) -> None:
    """Writes what ``pack`` made into the new directory ``dest`` (members that would land
    outside it, or links, are refused)."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        tar.extractall(dest, filter="data")


# ------------------------------------------------------------------ a trial's scratch space

#: Names of the scratch directories inside a trial's folder (a checkpoint being written,
#: saved or unpacked). Hidden, made 0700 and exclusively (``mkdtemp``), removed when done; a
#: process killed in the middle leaves one, removed at the trial's next start and at the
#: run's end (and when it is restored).
SCRATCH = ".volley_tmp_"
#: A reset's dict checkpoint written out by the driver for the trial to start from.
RESTORE_COPY = ".volley_restore_"


def scratch_dir(trial_dir: str, what: str) -> str:
    """A new private directory for ``what`` (save, restore, ckpt) in ``trial_dir``; in the
    system's temp dir only where that folder cannot be made (a node other than the driver's,
    whose disk has no such path for this user)."""
    try:
        os.makedirs(trial_dir, mode=0o700, exist_ok=True)
        return tempfile.mkdtemp(prefix=f"{SCRATCH}{what}_", dir=trial_dir)
    except OSError:
        return tempfile.mkdtemp(prefix=f"volley_tune_{what}_")


def clear_scratch(trial_dir: str, *prefixes: str, keep: str | None = None) -> None:
    """Removes what killed processes left in ``trial_dir``: entries named with one of
    ``prefixes`` (default: ``SCRATCH``), but ``keep``. A link is removed, never followed."""
    prefixes = prefixes or (SCRATCH,)
    try:
        names = os.listdir(trial_dir)
    except OSError:
        return  # not made yet (or on another node's disk)
    for name in names:
        path = os.path.join(trial_dir, name)
        if not name.startswith(prefixes) or path == keep:
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)


def hold_copy(ckpt: Checkpoint, trial_dir: str) -> Checkpoint:
    """A copy of ``ckpt`` in ``trial_dir`` (a new ``RESTORE_COPY`` folder) for the trial to
    start from: the checkpoint of another trial (a reset) may be pruned by that trial before
    this one starts, or while it reads it. Files are hard links where they can be (a
    checkpoint's files are never changed in place), else copies; a dict checkpoint is
    written out."""
    os.makedirs(trial_dir, mode=0o700, exist_ok=True)
    dest = tempfile.mkdtemp(prefix=RESTORE_COPY, dir=trial_dir)
    try:
        if ckpt.path is None:
            with open(os.path.join(dest, DICT_FILE), "wb") as fh:
                pickle.dump(ckpt._data, fh, protocol=5)
        else:
            shutil.copytree(ckpt.path, dest, copy_function=_link_or_copy, dirs_exist_ok=True)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return Checkpoint(dest)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, dst)


def write_into(ckpt: Checkpoint | dict | bytes, dest: str) -> None:
    """Makes ``dest`` (a checkpoint_NNNNNN directory) hold ``ckpt`` (a Checkpoint, or the
    packed bytes of one), atomically: written into a scratch directory beside it, then
    renamed into place."""
    tmp = scratch_dir(os.path.dirname(dest), "ckpt")
    try:
        if isinstance(ckpt, bytes):
            unpack(ckpt, tmp)
        else:
            assert isinstance(ckpt, Checkpoint)
            if ckpt._data is not None:
                with open(os.path.join(tmp, DICT_FILE), "wb") as fh:
                    pickle.dump(ckpt._data, fh, protocol=5)
            else:
                assert ckpt.path is not None
                shutil.copytree(ckpt.path, tmp, dirs_exist_ok=True)
        shutil.rmtree(dest, ignore_errors=True)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def portable(ckpt: Checkpoint) -> Any:
    """What of ``ckpt`` travels to another node: the dict itself, or the packed directory."""
    if ckpt._data is not None:
        return ckpt
    assert ckpt.path is not None
    return pack(ckpt.path)
