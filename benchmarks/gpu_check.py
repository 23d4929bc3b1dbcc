"""Checks volley against this machine's real GPUs (issue 19), each printed PASS, FAIL or SKIP
with its figures:

- ``detection``: the GPUs volley schedules (``cluster_resources()["GPU"]``) are those
  ``nvidia-smi -L`` lists (limited to ``CUDA_VISIBLE_DEVICES`` when that is set), and NVML
  agrees where it is installed.
- ``task``: a ``num_gpus=1`` task sees one device in ``CUDA_VISIBLE_DEVICES`` (the same as
  ``get_gpu_ids()``) and can query it with ``nvidia-smi --query-gpu`` from inside.
- ``matmul``: that task runs a torch matmul on ``cuda`` (timed, checked against the CPU);
  "skipped: no torch" without torch (nothing is installed by this script).
- ``fractions``: four ``num_gpus=0.25`` tasks run at once on the same GPU (their time windows
  overlap; each does a torch matmul there when torch is present).
- ``actor``: an actor holding every GPU keeps a ``num_gpus=1`` task waiting; the task starts
  only after the actor is killed.
- ``unschedulable``: a task asking for one GPU more than the machine has fails with
  ``UnschedulableError``.

Exit status 0 when no check failed (a skipped one does not fail the run).

Usage: python benchmarks/gpu_check.py [--out REPORT.md] [--no-torch] [--size N]

``--no-torch`` runs as if torch were missing (CI, with a fake ``nvidia-smi``).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback

try:
    import volley
except ImportError:  # run from a checkout whose extension is built in place
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
    try:
        import volley
    except ImportError as e:
        print(
            f"FAIL setup: cannot import volley: {e} (build it with `make build`, or run this "
            "with the checkout's .venv/bin/python)",
            flush=True,
        )
        sys.exit(2)

from volley import _gpus
from volley.exceptions import UnschedulableError

TIMEOUT = 120.0  # the longest any one wait of a check may take


class Report:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str]] = []

    def add(self, name: str, result: str, figures: str) -> None:
        self.rows.append((name, result, figures))
        print(f"{result} {name}: {figures}", flush=True)

    def failed(self) -> bool:
        return any(r == "FAIL" for _, r, _ in self.rows)


def run_check(report: Report, name: str, fn) -> None:
    """Runs one check; an exception is its FAIL, with where it came from."""
    try:
        result, figures = fn()
    except Exception as e:  # noqa: BLE001 - every failure is a row of the report
        where = traceback.extract_tb(e.__traceback__)[-1]
        result, figures = "FAIL", f"{type(e).__name__}: {e} (line {where.lineno})"
    report.add(name, result, figures.replace("\n", " "))


def smi_query() -> str:
    """``nvidia-smi --query-gpu`` from the calling process: one CSV row per GPU."""
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=index,name,memory.used,memory.total", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return out.stdout.strip()


def matmul(n: int, iters: int = 20) -> dict:
    """A torch matmul of two n x n float32 matrices on cuda: the time per matmul, TFLOP/s and
    the largest error of a corner against the CPU."""
    import torch

    t0 = time.perf_counter()
    x = torch.randn(n, n, device="cuda")
    torch.cuda.synchronize()
    ready = time.perf_counter() - t0
    y = x @ x  # warm-up
    torch.cuda.synchronize()
    t1 = time.perf_counter()
    for _ in range(iters):
        y = x @ x
    torch.cuda.synchronize()
    took = time.perf_counter() - t1
    cpu = x[:8].cpu() @ x.cpu()[:, :8]
    err = float((y[:8, :8].cpu() - cpu).abs().max() / cpu.abs().max())
    return {
        "device": torch.cuda.get_device_name(0),
        "ms": took / iters * 1e3,
        "tflops": 2 * n**3 * iters / took / 1e12,
        "init_s": ready,
        "err": err,
    }


def main() -> int:  # noqa: PLR0915 - one check after the other
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="also write the report here, as markdown")
    ap.add_argument("--no-torch", action="store_true", help="run as if torch were missing")
    ap.add_argument("--size", type=int, default=8192, help="matmul size (default 8192)")
    args = ap.parse_args()
    torch = not args.no_torch and importlib.util.find_spec("torch") is not None
    report = Report()

    nvml = _gpus._nvml()
    smi = _gpus._nvidia_smi(timeout=30)
    proc = _gpus._proc()
    names = _gpus.visible(os.environ.get("CUDA_VISIBLE_DEVICES"), smi or None)
    expected = (len(names) if names is not None else smi) if smi is not None else None
    cpus = max(4, os.cpu_count() or 1)
    started = time.perf_counter()
    volley.init(num_cpus=cpus)
    init_s = time.perf_counter() - started
    gpus = int(volley.cluster_resources().get("GPU", 0))

    def detection():
        fig = (
            f"volley {gpus}, nvidia-smi -L {smi if smi is not None else 'n/a'}, NVML "
            f"{nvml if nvml is not None else 'n/a'}, /proc {proc if proc is not None else 'n/a'}"
            f", CUDA_VISIBLE_DEVICES {os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}, "
            f"VOLLEY_GPU_DETECT {os.environ.get('VOLLEY_GPU_DETECT', 'unset')}; init {init_s:.2f} s"
        )
        ok = expected is not None and gpus == expected and gpus > 0
        ok = ok and (nvml is None or smi is None or nvml == smi)
        return ("PASS" if ok else "FAIL"), fig

    run_check(report, "detection", detection)

    @volley.remote(num_gpus=1)
    def one_gpu(torch: bool, n: int):
        seen = os.environ.get("CUDA_VISIBLE_DEVICES")
        out = {"visible": seen, "ids": volley.get_gpu_ids(), "query": smi_query()}
        if torch:
            try:
                out["matmul"] = matmul(n)
            except Exception as e:  # noqa: BLE001 - reported as the matmul's failure
                out["matmul_error"] = f"{type(e).__name__}: {e}"
        return out

    task_out: dict = {}

    def task():
        t0 = time.perf_counter()
        task_out.update(volley.get(one_gpu.remote(torch, args.size), timeout=TIMEOUT))
        took = time.perf_counter() - t0
        seen, ids = task_out["visible"], task_out["ids"]
        ok = seen is not None and len(seen.split(",")) == 1 and [str(i) for i in ids] == [seen]
        query = task_out["query"].splitlines()
        ok = ok and len(query) >= 1
        fig = (
            f"CUDA_VISIBLE_DEVICES={seen!r}, get_gpu_ids()={ids}, nvidia-smi in the task: "
            f"{query[0] if query else 'nothing'}; task {took:.2f} s end to end"
        )
        return ("PASS" if ok else "FAIL"), fig

    run_check(report, "task", task)

    def matmul_check():
        if not torch:
            return "SKIP", "skipped: no torch"
        if "matmul_error" in task_out:
            return "FAIL", task_out["matmul_error"]
        if "matmul" not in task_out:
            return "FAIL", "the task did not run (see the task row)"
        m = task_out["matmul"]
        fig = (
            f"{m['device']}: {args.size}x{args.size} float32 matmul {m['ms']:.2f} ms "
            f"({m['tflops']:.1f} TFLOP/s), CUDA start + alloc {m['init_s']:.2f} s, "
            f"relative error vs CPU {m['err']:.1e}"
        )
        return ("PASS" if m["err"] < 1e-2 else "FAIL"), fig

    run_check(report, "matmul", matmul_check)

    @volley.remote(num_gpus=0.25)
    def quarter(torch: bool, hold: float):
        start = time.time()
        seen = os.environ.get("CUDA_VISIBLE_DEVICES")
        if torch:
            matmul(2048, iters=5)
        else:
            smi_query()
        time.sleep(hold)
        return start, time.time(), seen

    def fractions():
        @volley.remote
        def warm():
            time.sleep(0.2)
            return os.getpid()

        # Workers for all four first, so that start-up does not pull their windows apart.
        volley.get([warm.remote() for _ in range(4)], timeout=TIMEOUT)
        got = volley.get([quarter.remote(torch, 2.0) for _ in range(4)], timeout=TIMEOUT)
        starts = [s for s, _, _ in got]
        ends = [e for _, e, _ in got]
        seen = {v for _, _, v in got}
        overlap = min(ends) - max(starts)
        ok = overlap > 0 and len(seen) == 1 and None not in seen
        fig = (
            f"4 tasks on CUDA_VISIBLE_DEVICES {sorted(map(str, seen))}, all running together "
            f"for {max(overlap, 0):.2f} s (starts spread over {max(starts) - min(starts):.2f} s)"
            + ("" if torch else "; no torch: nvidia-smi query + sleep in each")
        )
        return ("PASS" if ok else "FAIL"), fig

    run_check(report, "fractions", fractions)

    def actor():
        n = max(gpus, 1)

        @volley.remote(num_gpus=n)
        class Holder:
            def devices(self):
                return os.environ.get("CUDA_VISIBLE_DEVICES")

        @volley.remote(num_gpus=1)
        def started():
            return time.time()

        h = Holder.remote()
        held = volley.get(h.devices.remote(), timeout=TIMEOUT)
        waiting = started.remote()
        wait_s = 3.0
        ready, _ = volley.wait([waiting], timeout=wait_s)
        killed = time.time()
        volley.kill(h)
        begun = volley.get(waiting, timeout=TIMEOUT)
        ok = not ready and begun >= killed
        fig = (
            f"actor held CUDA_VISIBLE_DEVICES={held!r}; the task "
            + ("waited" if not ready else "did NOT wait")
            + f" {wait_s:.0f} s and started {begun - killed:.2f} s after the kill"
        )
        return ("PASS" if ok else "FAIL"), fig

    run_check(report, "actor", actor)

    def unschedulable():
        @volley.remote(num_gpus=gpus + 1)
        def too_big():
            return "ran"

        t0 = time.perf_counter()
        try:
            volley.get(too_big.remote(), timeout=TIMEOUT)
        except UnschedulableError as e:
            return "PASS", (
                f"num_gpus={gpus + 1}: UnschedulableError in {time.perf_counter() - t0:.2f} s: {e}"
            )
        except Exception as e:  # noqa: BLE001 - the wrong kind of failure is this check's FAIL
            return "FAIL", f"num_gpus={gpus + 1}: {type(e).__name__} (not Unschedulable): {e}"
        return "FAIL", f"num_gpus={gpus + 1}: it ran"

    run_check(report, "unschedulable", unschedulable)
    volley.shutdown()

    if args.out:
        try:
            gpu_names = smi_query() if shutil.which("nvidia-smi") else "no nvidia-smi"
        except (OSError, subprocess.SubprocessError) as e:
            gpu_names = f"nvidia-smi failed: {e}"
        if torch:
            import torch as t

            torch_line = f"torch {t.__version__} (CUDA {t.version.cuda})"
        else:
            torch_line = "no torch" + (" (--no-torch)" if args.no_torch else "")
        lines = [
            "# GPU check",
            "",
            f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
            f"- host: {platform.node()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}",
            f"- GPUs (nvidia-smi): {gpu_names.replace(chr(10), '; ')}",
            f"- {torch_line}",
            f"- result: {'FAIL' if report.failed() else 'PASS'}",
            "",
            "| check | result | figures |",
            "|---|---|---|",
        ]
        lines += [f"| {n} | {r} | {f.replace('|', '/')} |" for n, r, f in report.rows]
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")
    print("FAIL" if report.failed() else "PASS", flush=True)
    return 1 if report.failed() else 0


if __name__ == "__main__":
    sys.exit(main())
