"""``multiprocessing``'s contexts and start methods on volley.

Every volley ``Process`` starts the same way (an actor of its own, forked by the node's
template and given the ``Process`` pickled, which is what ``spawn`` does), so the start
methods are names a script may ask for and check: ``get_context("fork")``, ``"spawn"`` and
``"forkserver"`` all give a context whose ``Process``, ``Queue``, ``Lock``, ``Pool``, ... are
volley's, and ``get_start_method()`` returns the name set (``"spawn"`` until one is). The
child is never a fork of the parent: what the parent changed in its globals after import is
not seen by the child, as with ``spawn``.
"""

from __future__ import annotations

import multiprocessing as _mp
import sys
from typing import Any

from . import _mp_process

__all__ = [
    "AuthenticationError",
    "BufferTooShort",
    "freeze_support",
    "get_all_start_methods",
    "get_context",
    "get_logger",
    "get_start_method",
    "log_to_stderr",
    "set_executable",
    "set_forkserver_preload",
    "set_start_method",
]

AuthenticationError = _mp.AuthenticationError
BufferTooShort = _mp.BufferTooShort

_METHODS = ("fork", "spawn", "forkserver")
_DEFAULT = "spawn"
_chosen = _mp_process.start_method


class Context:
    """What ``get_context(method)`` returns: ``volley.multiprocessing``'s names (``Process``,
    ``Pipe``, ``Queue``, ``Lock``, ``Pool``, ``cpu_count``, ...) as attributes, and the
    start method it stands for (its ``Process`` is named for it: ``ForkProcess``, ...).

    >>> from volley import multiprocessing
    >>> ctx = multiprocessing.get_context("fork")
    >>> ctx.get_start_method(), ctx.Queue is multiprocessing.Queue, ctx.Process.__name__
    ('fork', True, 'ForkProcess')
    """

    _name = ""
    Process: type = _mp_process.Process

    def __repr__(self) -> str:
        return f"<volley.multiprocessing {type(self).__name__}>"

    def __getattr__(self, name: str) -> Any:
        # volley.multiprocessing, which imports this module: loaded before any context exists
        # (contexts are made through it), so it is looked up, not imported (no import cycle).
        module = sys.modules[__package__ + ".multiprocessing"]
        if name.startswith("_") or name not in module.__all__:
            raise AttributeError(f"volley.multiprocessing's context has no attribute {name!r}")
        return getattr(module, name)

    def get_start_method(self, allow_none: bool = False) -> str:
        """The start method this context stands for."""
        return self._name

    def get_context(self, method: str | None = None) -> Context:
        """This context (no ``method``), or the one for ``method``."""
        return self if method is None else get_context(method)

    def set_start_method(self, method: str | None, force: bool = False) -> None:
        """A context of one method cannot change it: ``ValueError``, as ``multiprocessing``'s."""
        raise ValueError("cannot set start method of concrete context")


class ForkContext(Context):
    _name = "fork"
    Process = _mp_process.ForkProcess


class SpawnContext(Context):
    _name = "spawn"
    Process = _mp_process.SpawnProcess


class ForkServerContext(Context):
    _name = "forkserver"
    Process = _mp_process.ForkServerProcess


_CONTEXTS = {c._name: c() for c in (ForkContext, SpawnContext, ForkServerContext)}


def get_context(method: str | None = None) -> Context:
    """The context for ``method`` (``"fork"``, ``"spawn"``, ``"forkserver"``; None: the one
    set, see ``get_start_method``); ``ValueError`` for another name.

    >>> from volley.multiprocessing import get_context
    >>> get_context("spawn").Process.__module__
    'volley._mp_process'
    """
    if method is None:
        method = _chosen[0] or _DEFAULT
    context = _CONTEXTS.get(method)
    if context is None:
        raise ValueError(f"cannot find context for {method!r} (volley accepts {_METHODS})")
    return context


def get_start_method(allow_none: bool = False) -> str | None:
    """The start method set with ``set_start_method`` (``"spawn"`` if none was, or None with
    ``allow_none``).

    >>> from volley.multiprocessing import get_start_method
    >>> get_start_method() in ("fork", "spawn", "forkserver")
    True
    """
    if _chosen[0] is None and allow_none:
        return None
    return _chosen[0] or _DEFAULT


def set_start_method(method: str | None, force: bool = False) -> None:
    """Sets the start method name (``RuntimeError`` if one is set already, unless
    ``force``); every method starts a volley ``Process`` the same way.

    >>> from volley.multiprocessing import set_start_method, get_start_method
    >>> set_start_method("forkserver", force=True); get_start_method()
    'forkserver'
    >>> set_start_method(None, force=True)
    """
    if _chosen[0] is not None and not force:
        raise RuntimeError("context has already been set")
    if method is not None and method not in _METHODS:
        raise ValueError(f"cannot find context for {method!r} (volley accepts {_METHODS})")
    _chosen[0] = method


def get_all_start_methods() -> list[str]:
    """The start methods volley accepts (the default first).

    >>> from volley.multiprocessing import get_all_start_methods
    >>> get_all_start_methods()
    ['spawn', 'fork', 'forkserver']
    """
    return [_DEFAULT] + [m for m in _METHODS if m != _DEFAULT]


def freeze_support() -> None:
    """Nothing to do (``multiprocessing.freeze_support`` is for frozen Windows programs).

    >>> from volley.multiprocessing import freeze_support
    >>> freeze_support()
    """


def set_executable(executable: Any) -> None:
    """Accepted for compatibility; volley's nodes choose their workers' Python (``TypeError``
    for what is not a path).

    >>> from volley.multiprocessing import set_executable
    >>> import sys; set_executable(sys.executable)
    """
    import os

    os.fspath(executable)


def set_forkserver_preload(module_names: list[str]) -> None:
    """Accepted for compatibility: volley's node template preloads its own modules.

    >>> from volley.multiprocessing import set_forkserver_preload
    >>> set_forkserver_preload(["json"])
    """
    if not all(isinstance(name, str) for name in module_names):
        raise TypeError("module_names must be a list of strings")


def get_logger() -> Any:
    """``multiprocessing``'s logger (the standard library's, also in a volley ``Process``).

    >>> from volley.multiprocessing import get_logger
    >>> get_logger().name
    'multiprocessing'
    """
    return _mp.get_logger()


def log_to_stderr(level: int | None = None) -> Any:
    """``multiprocessing.log_to_stderr``: ``get_logger()`` with a handler writing to stderr
    (in a child, its stderr reaches the driver's as every worker's output does).

    >>> import logging
    >>> from volley.multiprocessing import log_to_stderr
    >>> log_to_stderr(logging.WARNING).level == logging.WARNING
    True
    """
    return _mp.log_to_stderr(level)
