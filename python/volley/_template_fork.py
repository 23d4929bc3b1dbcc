"""The worker template forked from the driver itself (see ``_template.py`` for the template).

Exec'ing ``python -m volley._template`` is an interpreter start plus volley's imports: tens of
milliseconds before the first worker can be forked, most of a fresh driver's wait for its first
result. A driver that has one thread (and so can fork safely) and modest memory forks the
template from itself before its node starts: a millisecond, and the template has every module
the driver imported. The supervisor adopts it (``start_node(template=(pid, fd))``). This module
imports nothing of volley's (``_session`` uses it; the child loads ``_template``).
"""

from __future__ import annotations

import os
import sys

#: A driver over this resident size (MB) execs its template: a forked one would keep the
#: driver's pages alive (copy-on-write) after the driver frees them. ``VOLLEY_TEMPLATE_FORK_MAX_MB``
#: sets it; 0: never fork the template from the driver.
FORK_MAX_RSS_MB = 256

#: Why the last ``init`` did or did not fork its template (for the debug log and tests).
last_choice = ""


def fork_refusal() -> str | None:
    """Why this driver must not fork its worker template from itself, or None if it may.
    Raises ``ValueError`` for a ``VOLLEY_TEMPLATE_FORK_MAX_MB`` that is not a number of MB.

    >>> import os
    >>> os.environ["VOLLEY_WORKER_START"] = "exec"
    >>> fork_refusal()
    'VOLLEY_WORKER_START=exec'
    >>> os.environ["VOLLEY_TEMPLATE_FORK_MAX_MB"] = "lots"
    >>> fork_refusal()
    Traceback (most recent call last):
    ValueError: VOLLEY_TEMPLATE_FORK_MAX_MB must be a whole number of MB >= 0, not 'lots'
    >>> del os.environ["VOLLEY_TEMPLATE_FORK_MAX_MB"], os.environ["VOLLEY_WORKER_START"]
    """
    limit = FORK_MAX_RSS_MB
    text = os.environ.get("VOLLEY_TEMPLATE_FORK_MAX_MB", "").strip()
    if text:
        try:
            limit = int(text)
        except ValueError:
            limit = -1
        if limit < 0:
            raise ValueError(
                f"VOLLEY_TEMPLATE_FORK_MAX_MB must be a whole number of MB >= 0, not {text!r}"
            )
    if os.environ.get("VOLLEY_WORKER_START", "").strip() == "exec":
        return "VOLLEY_WORKER_START=exec"
    if "VOLLEY_PRELOAD" in os.environ:
        # A preload list means those modules and no others: a forked template would have
        # every module of the driver's too.
        return "VOLLEY_PRELOAD names the modules to preload"
    try:
        # A copy of this process is a copy of this interpreter: the workers' (sys.executable,
        # which exec'd ones run) must be the same one.
        if os.path.realpath(sys.executable) != os.path.realpath("/proc/self/exe"):
            return f"workers run {sys.executable!r}, not this process's interpreter"
        threads = len(os.listdir("/proc/self/task"))
    except OSError as e:
        return f"its interpreter or thread count is unknown ({e})"
    if threads != 1:
        # A thread may hold a lock (malloc's, an import's) that the child would find held.
        return f"the driver has {threads} threads"
    try:
        with open("/proc/self/statm", "rb") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20
    except (OSError, ValueError, IndexError) as e:
        return f"its resident size is unknown ({e})"
    if rss >= limit:
        return f"the driver's resident size is {rss} MB (the limit is {limit} MB)"
    return None


def fork_from_driver(
    env: list[tuple[str, str]], explicit_preload: bool = False
) -> tuple[int, int] | None:
    """Forks the worker template from this driver, if it may (see :func:`fork_refusal`):
    returns ``(pid, fd)`` for ``start_node``'s ``template``, the fd being the driver's end of
    the template's socket pair (the node owns it from then on). None: the node starts its
    template the usual way; :data:`last_choice` says why. ``explicit_preload``: ``init`` was
    given a preload list (those modules and no others: not a copy of the driver).
    """
    global last_choice
    why = fork_refusal()
    if why is None and explicit_preload:
        why = "init(preload=...) names the modules to preload"
    if why is not None:
        last_choice = f"the worker template is exec'd: {why}"
        return None
    # _socket, not socket: the driver needs two fds, not socket's enums (~2 ms to import).
    import _socket

    try:
        ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
    except OSError as e:
        last_choice = f"the worker template is exec'd: no socket pair for it ({e})"
        return None
    # Nothing buffered in the driver's streams may be written again by the child.
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    try:
        pid = os.fork()
    except OSError as e:
        ours.close()
        theirs.close()
        last_choice = f"the worker template is exec'd: fork failed ({e})"
        return None
    if pid == 0:
        code = 1
        try:
            ours.detach()  # closed with the driver's other fds; the object must not close it
            # By name: `_template` imports `_worker`, which imports `_session`, our importer.
            import importlib

            template = importlib.import_module("volley._template")
            code = template._forked_main(theirs.detach(), env)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException as e:
            try:
                os.write(2, f"volley: the worker template failed: {e!r}\n".encode())
            except OSError:
                pass
        finally:
            # Never back into the driver's code, its atexit handlers, its buffers.
            os._exit(code)
    theirs.close()
    last_choice = f"the worker template is forked from the driver (pid {pid})"
    return pid, ours.detach()
