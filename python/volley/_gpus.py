"""The GPUs of this machine: how many a node schedules, and which device each of its GPU
indices is.

Detection asks, in order, until one answers:

1. NVML (``libnvidia-ml.so.1``, which the NVIDIA driver installs) through ctypes:
   ``nvmlInit_v2``, ``nvmlDeviceGetCount_v2``, ``nvmlShutdown``; no Python package needed.
   It gets a few seconds (on a thread: a hung driver hangs NVML's calls). ``auto`` skips it
   where the driver is absent (no ``/dev/nvidiactl``, ``/proc/driver/nvidia`` or WSL's
   ``/dev/dxg``) unless ``LD_LIBRARY_PATH`` has a ``libnvidia-ml.so.1``: a start-up cost.
2. ``nvidia-smi -L``: its ``GPU N:`` lines. It gets a few seconds; a missing binary, a failure
   or no answer in time means it knows nothing (a hang is killed and said in a warning).
3. ``/proc/driver/nvidia/gpus``: one directory per GPU.

``VOLLEY_GPU_DETECT`` picks one way instead of the chain (``nvml``, ``nvidia-smi``, ``proc``,
or ``none``; ``auto``, the default, is the chain): for machines where one of them lies or
hangs, and for tests, which give a fake ``nvidia-smi``. ``VOLLEY_GPU_DETECT_TIMEOUT`` is how
many seconds NVML and ``nvidia-smi`` each get (default 5).

``CUDA_VISIBLE_DEVICES`` in the node's environment limits the node to the devices it names, as
CUDA itself does: the list stops at its first entry that is not a device (``-1``, an empty
string: none at all), and numbers past the GPUs found are dropped (when some were found).
The node's GPU ``i`` is then the list's ``i``-th device: a task given GPU 0 on a node started
with ``CUDA_VISIBLE_DEVICES=2,3`` sees ``CUDA_VISIBLE_DEVICES=2`` (see :func:`device_names`).
``volley.init(num_gpus=...)`` and ``volley start --num-gpus`` still win over all of this.
"""

from __future__ import annotations

import os

# How long NVML or `nvidia-smi -L` may take before it is taken as knowing nothing (unless
# VOLLEY_GPU_DETECT_TIMEOUT says otherwise).
SMI_TIMEOUT_S = 5.0

METHODS = ("auto", "nvml", "nvidia-smi", "proc", "none")


def _nvml_in_time(timeout: float | None = None) -> int | None:
    """:func:`_nvml` on a thread of its own, given ``timeout`` seconds: a driver in a bad state
    can hang NVML's calls, and a call into C cannot be interrupted (the thread is left behind,
    a daemon, and NVML is taken as knowing nothing; a warning says so)."""
    import threading

    timeout = _timeout() if timeout is None else timeout
    got: list[int | None] = []
    t = threading.Thread(target=lambda: got.append(_nvml()), name="volley-nvml", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        import logging

        logging.getLogger("volley").warning(
            "volley: NVML (libnvidia-ml.so.1) did not answer in %g s: no GPUs counted from it "
            "(set VOLLEY_GPU_DETECT, or pass num_gpus)",
            timeout,
        )
        return None
    return got[0] if got else None


def _nvml() -> int | None:
    """GPUs NVML counts, or None without NVML (no driver library, or it does not start)."""
    import ctypes

    try:
        lib = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return None
    try:
        if lib.nvmlInit_v2() != 0:
            return None
    except AttributeError:
        return None
    try:
        count = ctypes.c_uint(0)
        if lib.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0:
            return None
        return int(count.value)
    except AttributeError:
        return None
    finally:
        lib.nvmlShutdown()


def _nvidia_smi(timeout: float | None = None) -> int | None:
    """GPUs ``nvidia-smi -L`` lists, or None when it is missing, fails or does not answer in
    ``timeout`` seconds (its process group is killed then, so that a child of it holding the
    pipe cannot keep us waiting)."""
    timeout = _timeout() if timeout is None else timeout
    exe = _on_path("nvidia-smi")
    if exe is None:
        return None
    import re
    import signal
    import subprocess

    try:
        p = subprocess.Popen(
            [exe, "-L"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError:
        return None
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except OSError:
            pass
        p.communicate()
        import logging

        logging.getLogger("volley").warning(
            "volley: `%s -L` did not answer in %g s: no GPUs counted from it "
            "(set VOLLEY_GPU_DETECT, or pass num_gpus)",
            exe,
            timeout,
        )
        return None
    if p.returncode != 0:
        return None
    return len(re.findall(r"^GPU \d+:", out.decode(errors="replace"), re.MULTILINE))


#: What the NVIDIA driver makes on a machine that has it: its control device (also in a
#: container given GPUs), its /proc directory, or WSL's GPU device.
_DRIVER_PATHS = ("/dev/nvidiactl", "/proc/driver/nvidia", "/dev/dxg")


def _nvml_may_answer() -> bool:
    """Whether NVML may know of GPUs: the NVIDIA driver is present (see :data:`_DRIVER_PATHS`;
    the system's NVML knows nothing without it), or a ``libnvidia-ml.so.1`` of the user's own
    is on ``LD_LIBRARY_PATH``. Otherwise the ``auto`` chain skips NVML, which a driver's
    ``init`` would pay for on every machine without a GPU."""
    if any(os.path.exists(p) for p in _DRIVER_PATHS):
        return True
    dirs = os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep)
    return any(d and os.path.exists(os.path.join(d, "libnvidia-ml.so.1")) for d in dirs)


def _on_path(name: str) -> str | None:
    """``shutil.which(name)`` without importing shutil: a start-up cost where it is absent."""
    for d in os.environ.get("PATH", os.defpath).split(os.pathsep):
        p = os.path.join(d or ".", name)
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    return None


def _proc() -> int | None:
    try:
        return len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return None


def _timeout() -> float:
    """``VOLLEY_GPU_DETECT_TIMEOUT`` (seconds), or :data:`SMI_TIMEOUT_S`."""
    raw = os.environ.get("VOLLEY_GPU_DETECT_TIMEOUT", "").strip()
    if not raw:
        return SMI_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"VOLLEY_GPU_DETECT_TIMEOUT must be a number of seconds > 0, not {raw!r}")
    return value


def _method() -> str:
    method = os.environ.get("VOLLEY_GPU_DETECT", "auto").strip().lower() or "auto"
    if method not in METHODS:
        raise ValueError(
            f"VOLLEY_GPU_DETECT must be one of {', '.join(METHODS)}, not "
            f"{os.environ.get('VOLLEY_GPU_DETECT')!r}"
        )
    return method


def found() -> int | None:
    """The GPUs this machine has, by the first way of ``VOLLEY_GPU_DETECT`` that knows (None
    when none does), not limited by ``CUDA_VISIBLE_DEVICES``.

    >>> import os
    >>> os.environ["VOLLEY_GPU_DETECT"] = "none"
    >>> found() is None
    True
    >>> del os.environ["VOLLEY_GPU_DETECT"]
    """
    method = _method()
    _timeout()  # a bad value is refused even where nothing would wait
    ways = {"nvml": _nvml_in_time, "nvidia-smi": _nvidia_smi, "proc": _proc}
    if method == "none":
        return None
    chain = list(ways.values()) if method == "auto" else [ways[method]]
    if method == "auto" and not _nvml_may_answer():
        chain.remove(_nvml_in_time)  # a thread and ctypes, for nothing: ~5-15 ms of init
    for way in chain:
        n = way()
        if n is not None:
            return n
    return None


def visible(value: str | None, total: int | None = None) -> list[str] | None:
    """The devices a ``CUDA_VISIBLE_DEVICES`` value names, as CUDA reads it: up to its first
    entry that is not a device (``-1``, empty, a number past ``total`` when that is known);
    None when the variable is not set (every device is visible).

    >>> visible("0,2")
    ['0', '2']
    >>> visible("1,-1,0"), visible(""), visible("-1"), visible(None)
    (['1'], [], [], None)
    >>> visible("0,1,2,3", total=2)
    ['0', '1']
    >>> visible("GPU-8f3a,MIG-1c2d")
    ['GPU-8f3a', 'MIG-1c2d']
    """
    if value is None:
        return None
    names: list[str] = []
    for entry in value.split(","):
        entry = entry.strip()
        if entry.isdigit():
            if total is not None and int(entry) >= total:
                break
        elif not entry.startswith(("GPU-", "MIG-")):
            break
        names.append(entry)
    return names


def count() -> int:
    """The GPUs a node on this machine schedules when ``num_gpus`` is not given: those found
    (see the module documentation), limited to those ``CUDA_VISIBLE_DEVICES`` names.

    >>> import os
    >>> os.environ["VOLLEY_GPU_DETECT"] = "none"
    >>> os.environ["CUDA_VISIBLE_DEVICES"] = "3,5"
    >>> count()
    2
    >>> del os.environ["VOLLEY_GPU_DETECT"], os.environ["CUDA_VISIBLE_DEVICES"]
    """
    total = found()
    names = visible(os.environ.get("CUDA_VISIBLE_DEVICES"), total or None)
    if names is not None:
        return len(names)
    return total or 0


def device_names(indices, base: str | None) -> list[str]:
    """What ``CUDA_VISIBLE_DEVICES`` lists for the node's GPU ``indices``, given the node's own
    value ``base``: the base's entries at those places (a node limited to ``2,3`` gives its GPU
    0 as ``2``), the indices themselves when the base is unset or too short.

    >>> device_names([0], "2,3"), device_names([1, 0], None), device_names([1], "-1")
    (['2'], ['1', '0'], ['1'])
    """
    names = visible(base) or []
    return [names[i] if i < len(names) else str(i) for i in (int(i) for i in indices)]
