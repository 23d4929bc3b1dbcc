"""GPUs without a GPU: a fake ``nvidia-smi`` on PATH (``VOLLEY_GPU_DETECT=nvidia-smi``, so
that a real NVML never answers first) is what detection finds; tasks, a node daemon
(``volley start``) and a submitted job's driver see the devices they hold in
``CUDA_VISIBLE_DEVICES``; a failing or hanging ``nvidia-smi`` means no GPU, without a hang."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_cluster import Cluster

import volley
from volley import _gpus, job

pytestmark = pytest.mark.one_node("each test starts its own node with fake GPUs")


def fake_smi(tmp: Path, gpus: int = 2, body: str | None = None) -> Path:
    """A directory holding an ``nvidia-smi`` that lists ``gpus`` GPUs for ``-L`` and a CSV row
    per GPU for ``--query-gpu`` (or runs ``body``, a shell script)."""
    d = tmp / "fake-bin"
    d.mkdir(exist_ok=True)
    if body is None:
        lines = "\n".join(
            f"echo 'GPU {i}: Fake GPU (UUID: GPU-0000000{i}-fake)'" for i in range(gpus)
        )
        rows = "\n".join(f"echo '{i}, Fake GPU, 1 MiB'" for i in range(gpus))
        body = f'if [ "$1" = "-L" ]; then\n{lines}\nelse\n{rows}\nfi\n'
    exe = d / "nvidia-smi"
    exe.write_text("#!/bin/sh\n" + body)
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return d


@pytest.fixture
def fake_env(monkeypatch, tmp_path):
    """This process (and the workers it starts) finds GPUs with the fake ``nvidia-smi``."""

    def use(gpus: int = 2, body: str | None = None, visible: str | None = None) -> None:
        d = fake_smi(tmp_path, gpus, body)
        monkeypatch.setenv("PATH", f"{d}{os.pathsep}{os.environ.get('PATH', '')}")
        monkeypatch.setenv("VOLLEY_GPU_DETECT", "nvidia-smi")
        if visible is None:
            monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        else:
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)

    return use


def _visible():
    time.sleep(0.3)  # overlap: the tasks hold their GPUs at the same time
    return os.environ.get("CUDA_VISIBLE_DEVICES"), volley.get_gpu_ids()


def test_the_fake_nvidia_smis_gpus_are_the_nodes_and_each_task_sees_its_own(no_volley, fake_env):
    fake_env(gpus=2)
    volley.init(num_cpus=2)
    assert volley.cluster_resources()["GPU"] == 2
    one = volley.remote(num_gpus=1)(_visible)
    assert sorted(volley.get([one.remote() for _ in range(2)])) == [("0", [0]), ("1", [1])]
    with pytest.raises(volley.exceptions.UnschedulableError):
        volley.get(one.options(num_gpus=3).remote(), timeout=30)
    volley.shutdown()
    # num_gpus given to init still wins.
    volley.init(num_cpus=2, num_gpus=1)
    assert volley.cluster_resources()["GPU"] == 1


def test_cuda_visible_devices_limits_the_node_to_the_devices_it_names(no_volley, fake_env):
    # The node's GPU 0 is device 1 and its GPU 1 device 0: tasks see the devices' own numbers.
    fake_env(gpus=4, visible="1,0")
    volley.init(num_cpus=2)
    assert volley.cluster_resources()["GPU"] == 2
    one = volley.remote(num_gpus=1)(_visible)
    assert sorted(volley.get([one.remote() for _ in range(2)])) == [("0", [0]), ("1", [1])]
    volley.shutdown()
    fake_env(gpus=4, visible="3")
    volley.init(num_cpus=2)
    assert volley.cluster_resources()["GPU"] == 1
    assert volley.get(one.remote()) == ("3", [3])
    # A task without GPUs keeps the node's own value.
    assert volley.get(volley.remote(lambda: os.environ.get("CUDA_VISIBLE_DEVICES")).remote()) == "3"
    volley.shutdown()
    for none in ("", "-1"):
        fake_env(gpus=4, visible=none)
        volley.init(num_cpus=2)
        assert "GPU" not in volley.cluster_resources(), none
        volley.shutdown()
    # Numbers past the GPUs found are not devices (CUDA stops the list there).
    fake_env(gpus=2, visible="1,5,0")
    assert _gpus.count() == 1


def test_a_failing_or_missing_nvidia_smi_or_none_means_no_gpu(no_volley, fake_env, tmp_path):
    fake_env(body="echo 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    volley.init(num_cpus=2)
    assert "GPU" not in volley.cluster_resources()
    with pytest.raises(volley.exceptions.UnschedulableError, match="needs 1 GPU but this node"):
        volley.get(volley.remote(num_gpus=1)(_visible).remote(), timeout=30)
    volley.shutdown()
    fake_env(gpus=2)
    os.environ["VOLLEY_GPU_DETECT"] = "none"  # (monkeypatch restores it)
    assert _gpus.count() == 0
    os.environ["VOLLEY_GPU_DETECT"] = "proc"  # only /proc: the fake is not asked
    proc = "/proc/driver/nvidia/gpus"
    assert _gpus.count() == (len(os.listdir(proc)) if os.path.isdir(proc) else 0)
    os.environ["PATH"] = str(tmp_path / "nothing-here")
    os.environ["VOLLEY_GPU_DETECT"] = "nvidia-smi"
    assert _gpus.found() is None and _gpus.count() == 0


def test_a_hanging_nvidia_smi_is_killed_says_so_and_means_no_gpu(
    no_volley, fake_env, caplog, monkeypatch
):
    # It hangs in a child of its shell, which holds the output pipe: its whole group goes.
    fake_env(body="sleep 120\necho 'GPU 0: late'\n")
    monkeypatch.setenv("VOLLEY_GPU_DETECT_TIMEOUT", "1")
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="volley"):
        assert _gpus.count() == 0
    took = time.monotonic() - start
    assert 1 <= took < 11, took
    assert "-L` did not answer in 1 s: no GPUs counted" in caplog.text, caplog.text
    # The default is a few seconds; nonsense is refused.
    monkeypatch.delenv("VOLLEY_GPU_DETECT_TIMEOUT")
    assert _gpus._timeout() == _gpus.SMI_TIMEOUT_S == 5.0
    for bad in ("0", "-2", "soon", "nan"):
        monkeypatch.setenv("VOLLEY_GPU_DETECT_TIMEOUT", bad)
        with pytest.raises(ValueError, match="VOLLEY_GPU_DETECT_TIMEOUT must be a number of "):
            _gpus.count()


def test_a_bad_detect_setting_is_refused_at_init(no_volley, monkeypatch):
    monkeypatch.setenv("VOLLEY_GPU_DETECT", "cuda")
    with pytest.raises(ValueError, match="VOLLEY_GPU_DETECT must be one of auto, nvml, "):
        volley.init(num_cpus=2)
    assert not volley.is_initialized()
    volley.init(num_cpus=2, num_gpus=0)  # given: no detection, no complaint
    assert "GPU" not in volley.cluster_resources()


def test_a_node_daemon_detects_gpus_and_a_jobs_driver_sees_those_held_for_it(no_volley, tmp_path):
    c = Cluster(tmp_path)
    d = fake_smi(tmp_path, gpus=2)
    c.env["PATH"] = f"{d}{os.pathsep}{c.env.get('PATH', '')}"
    c.env["VOLLEY_GPU_DETECT"] = "nvidia-smi"
    c.env.pop("CUDA_VISIBLE_DEVICES", None)
    try:
        c.start_nodes(2)  # the head and a node, each with two (fake) GPUs
        client = job.JobSubmissionClient(c.head, token=c.token)
        go = tmp_path / "go"
        show = (
            "import os, sys, time, volley\n"
            "print('sees', os.environ.get('CUDA_VISIBLE_DEVICES'), flush=True)\n"
            f"while len(sys.argv) > 1 and not os.path.exists({str(go)!r}):\n"
            "    time.sleep(0.05)\n"
            "volley.init(address='auto')\n"
            "print('cluster GPUs', volley.cluster_resources().get('GPU'), flush=True)\n"
        )
        script = tmp_path / "show.py"
        script.write_text(show)
        # Two jobs with a GPU each at once: each its own device.
        first = client.submit_job([sys.executable, str(script), "hold"], entrypoint_num_gpus=1)
        second = client.submit_job([sys.executable, str(script), "hold"], entrypoint_num_gpus=1)
        deadline = time.monotonic() + 30
        while not all("sees" in client.get_job_logs(j) for j in (first, second)):
            assert time.monotonic() < deadline, [client.get_job_logs(j) for j in (first, second)]
            time.sleep(0.05)
        seen = sorted(client.get_job_logs(j).split("\n")[0] for j in (first, second))
        assert seen == ["sees 0", "sees 1"], seen
        # Both held: a third that asks for a GPU waits, saying for what.
        third = client.submit_job([sys.executable, str(script)], entrypoint_num_gpus=0.5)
        row = client.get_job_info(third)
        assert row["status"] == "PENDING" and "waiting for 0.5 GPU" in row["message"], row
        go.touch()
        for j in (first, second, third):
            assert client.wait(j, timeout=60)["status"] == "SUCCEEDED", client.get_job_logs(j)
        # The drivers' own nodes add no GPUs: the daemons' two each are the cluster's.
        assert "cluster GPUs 4.0" in client.get_job_logs(first), client.get_job_logs(first)
        assert client.get_job_logs(third).startswith("sees 0\n") or client.get_job_logs(
            third
        ).startswith("sees 1\n"), client.get_job_logs(third)
        # A job that holds no GPU is shown none of them (the head's environment: unset).
        free = client.submit_job([sys.executable, str(script)])
        assert client.wait(free, timeout=60)["status"] == "SUCCEEDED"
        assert client.get_job_logs(free).startswith("sees None\n"), client.get_job_logs(free)
    finally:
        c.stop()


def _gpu_check(tmp_path: Path, gpus: int) -> tuple[subprocess.CompletedProcess, str]:
    d = fake_smi(tmp_path / f"with-{gpus}", gpus=gpus)
    env = dict(os.environ, PATH=f"{d}{os.pathsep}{os.environ.get('PATH', '')}")
    env["VOLLEY_GPU_DETECT"] = "nvidia-smi"
    env.pop("CUDA_VISIBLE_DEVICES", None)
    out = tmp_path / f"report-{gpus}.md"
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"
    r = subprocess.run(
        [sys.executable, str(script), "--no-torch", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return r, out.read_text() if out.exists() else ""


def _rows(report: str) -> dict[str, tuple[str, str]]:
    rows = {}
    for line in report.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 3 and cells[0] not in ("check", "---"):
            rows[cells[0]] = (cells[1], cells[2])
    return rows


CHECKS = ["detection", "task", "matmul", "fractions", "actor", "unschedulable"]


def test_the_gpu_check_passes_on_one_fake_gpu_and_fails_without_one(no_volley, tmp_path):
    (tmp_path / "with-1").mkdir()
    (tmp_path / "with-0").mkdir()
    r, report = _gpu_check(tmp_path, 1)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = _rows(report)
    assert list(rows) == CHECKS, report
    assert rows["matmul"] == ("SKIP", "skipped: no torch"), report
    assert all(rows[c][0] == "PASS" for c in CHECKS if c != "matmul"), report
    assert "volley 1, nvidia-smi -L 1" in rows["detection"][1]
    assert "CUDA_VISIBLE_DEVICES='0'" in rows["task"][1]
    assert "num_gpus=2: UnschedulableError" in rows["unschedulable"][1]
    assert "- result: PASS" in report and r.stdout.rstrip().endswith("PASS"), report
    for c in CHECKS:  # what it prints is what it writes
        assert f"{rows[c][0]} {c}: " in r.stdout, r.stdout
    # No GPU at all: the checks that need one fail, and so does the run.
    r, report = _gpu_check(tmp_path, 0)
    assert r.returncode == 1, r.stdout + r.stderr
    rows = _rows(report)
    assert list(rows) == CHECKS, report
    assert rows["detection"][0] == "FAIL" and rows["task"][0] == "FAIL", report
    assert "- result: FAIL" in report, report


def test_a_heads_cuda_visible_devices_limits_it_and_names_a_jobs_device(no_volley, tmp_path):
    c = Cluster(tmp_path)
    d = fake_smi(tmp_path, gpus=4)
    c.env["PATH"] = f"{d}{os.pathsep}{c.env.get('PATH', '')}"
    c.env["VOLLEY_GPU_DETECT"] = "nvidia-smi"
    c.env["CUDA_VISIBLE_DEVICES"] = "3,1"
    try:
        c.start_nodes(1)
        client = job.JobSubmissionClient(c.head, token=c.token)
        code = (
            "import os, volley\n"
            "print('sees', os.environ.get('CUDA_VISIBLE_DEVICES'), flush=True)\n"
            "volley.init(address='auto')\n"
            "print('cluster GPUs', volley.cluster_resources().get('GPU'), flush=True)\n"
        )
        # The head's GPU 0 is device 3; a variable of the job's own cannot claim another.
        j = client.submit_job(
            ["python", "-c", code],
            entrypoint_num_gpus=1,
            runtime_env={"env_vars": {"VOLLEY_JOB_GPUS": "1"}},
        )
        assert client.wait(j, timeout=60)["status"] == "SUCCEEDED", client.get_job_logs(j)
        assert client.get_job_logs(j) == "sees 3\ncluster GPUs 2.0\n"
    finally:
        c.stop()


FAKE_NVML = r"""
#include <stdlib.h>
#include <unistd.h>
int nvmlInit_v2(void) { if (getenv("FAKE_NVML_HANG")) sleep(120); return 0; }
int nvmlDeviceGetCount_v2(unsigned int *count) { *count = 3; return 0; }
int nvmlShutdown(void) { return 0; }
"""


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler for the fake NVML")
def test_nvml_is_asked_first_and_a_hanging_one_gives_way_to_nvidia_smi(tmp_path):
    # A fake libnvidia-ml.so.1 (3 GPUs) before a fake nvidia-smi (1 GPU), in fresh processes:
    # the dynamic loader reads LD_LIBRARY_PATH at start.
    src = tmp_path / "nvml.c"
    src.write_text(FAKE_NVML)
    lib = tmp_path / "lib"
    lib.mkdir()
    subprocess.run(
        ["cc", "-shared", "-fPIC", "-o", str(lib / "libnvidia-ml.so.1"), str(src)], check=True
    )
    d = fake_smi(tmp_path, gpus=1)
    env = dict(os.environ, LD_LIBRARY_PATH=str(lib), VOLLEY_GPU_DETECT="auto")
    env["PATH"] = f"{d}{os.pathsep}{env.get('PATH', '')}"
    env.pop("CUDA_VISIBLE_DEVICES", None)
    code = "import volley\nvolley.init(num_cpus=1)\nprint(volley.cluster_resources().get('GPU'))"

    def gpus(**extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", code],
            env=dict(env, **extra),
            capture_output=True,
            text=True,
            timeout=120,
        )

    r = gpus()
    assert r.returncode == 0 and r.stdout == "3.0\n", r
    r = gpus(VOLLEY_GPU_DETECT="nvidia-smi")
    assert r.returncode == 0 and r.stdout == "1.0\n", r
    start = time.monotonic()
    r = gpus(FAKE_NVML_HANG="1", VOLLEY_GPU_DETECT_TIMEOUT="1.5")
    assert r.returncode == 0 and r.stdout == "1.0\n", r
    assert "NVML (libnvidia-ml.so.1) did not answer in 1.5 s" in r.stderr, r.stderr
    assert time.monotonic() - start < 60
