"""``volley job submit|status|logs|stop|list``: jobs on a cluster's head (see ``volley.job``).

    volley job submit [--address HOST:PORT] [--working-dir DIR] [--runtime-env-json JSON]
                      [--submission-id ID] [--entrypoint-num-cpus N] [--entrypoint-num-gpus N]
                      [--entrypoint-resources JSON] [--no-wait] -- python script.py args
    volley job status ID [--json]
    volley job logs ID [--follow]
    volley job stop ID [--no-wait]
    volley job list [--json] [--session DIR]

``submit`` prints the job's id and, unless ``--no-wait``, follows its output and exits with 0
when it succeeded, 1 otherwise. ``list``, ``status`` and ``logs`` read the session directory's
records (``jobs/``, ``history/jobs.jsonl``) when no head runs on this machine any more;
``list --session DIR`` reads those of DIR without asking a head.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from . import _cluster, _runtime_dir, job


def register(sub: argparse._SubParsersAction) -> None:
    """Adds ``volley job ...`` to the ``volley`` command's parser."""
    j = sub.add_parser("job", help="submit and watch jobs run on the cluster's head")
    jsub = j.add_subparsers(dest="job_cmd", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--address", default=None, help="HOST:PORT of the head (default: auto)")
        p.add_argument("--token", default=None)
        p.add_argument("--tls-cert", default=None, help="the cluster's TLS certificate, if any")

    s = jsub.add_parser("submit", help="run a command as a job on the head")
    common(s)
    s.add_argument("--working-dir", default=None, help="directory to ship and run in")
    s.add_argument(
        "--runtime-env-json", default=None, help='e.g. {"env_vars": {"K": "v"}, "working_dir": "."}'
    )
    s.add_argument("--submission-id", default=None, help="the job's id (default: a new one)")
    s.add_argument("--entrypoint-num-cpus", type=float, default=None, help="CPUs the driver holds")
    s.add_argument("--entrypoint-num-gpus", type=float, default=None, help="GPUs the driver holds")
    s.add_argument(
        "--entrypoint-resources", default=None, help='custom resources, e.g. {"disk": 1}'
    )
    s.add_argument("--no-wait", action="store_true", help="return once it is submitted")
    s.add_argument("entrypoint", nargs=argparse.REMAINDER, help="-- the command to run")
    for name, what in (("status", "a job's status"), ("stop", "stop a job")):
        p = jsub.add_parser(name, help=what)
        common(p)
        p.add_argument("job_id")
        if name == "status":
            p.add_argument("--json", action="store_true")
        else:
            p.add_argument("--no-wait", action="store_true", help="do not wait for it to end")
    lg = jsub.add_parser("logs", help="a job's output")
    common(lg)
    lg.add_argument("job_id")
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing until it ends")
    ls = jsub.add_parser("list", help="every job of the cluster")
    common(ls)
    ls.add_argument("--json", action="store_true")
    ls.add_argument(
        "--session", default=None, help="read the jobs recorded in this session directory"
    )


def _client(args: argparse.Namespace) -> job.JobSubmissionClient:
    return job.JobSubmissionClient(args.address, token=args.token, tls_cert=args.tls_cert)


def _describe(row: dict) -> str:
    text = f"job {row['job_id']}: {row['status']}"
    if row.get("exit_code") is not None and row["status"] != "SUCCEEDED":
        text += f" (exit code {row['exit_code']})"
    if row.get("message"):
        text += f": {row['message']}"
    return text


def _recorded(args: argparse.Namespace, e: ConnectionError) -> list[dict] | None:
    """The session's job records when no head answers and none was named (None otherwise)."""
    if args.address is not None:
        return None
    rows = job.recorded_jobs()
    if rows:
        print(
            f"volley: {e}; showing the jobs recorded in {_cluster.session_dir()}", file=sys.stderr
        )
    return rows or None


def _follow(client: job.JobSubmissionClient, job_id: str) -> None:
    for text in client.tail_job_logs(job_id):
        sys.stdout.write(text)
        sys.stdout.flush()


def _submit(args: argparse.Namespace) -> int:
    entrypoint = args.entrypoint[1:] if args.entrypoint[:1] == ["--"] else args.entrypoint
    if not entrypoint:
        print(
            "volley: give the command after `--`: volley job submit -- python script.py",
            file=sys.stderr,
        )
        return 2
    env = None
    if args.runtime_env_json is not None:
        try:
            env = json.loads(args.runtime_env_json)
        except ValueError as e:
            print(f"volley: --runtime-env-json is not valid JSON: {e}", file=sys.stderr)
            return 2
        if not isinstance(env, dict):
            print("volley: --runtime-env-json must be a JSON object", file=sys.stderr)
            return 2
    resources = None
    if args.entrypoint_resources is not None:
        try:
            resources = json.loads(args.entrypoint_resources)
        except ValueError as e:
            print(f"volley: --entrypoint-resources is not valid JSON: {e}", file=sys.stderr)
            return 2
        if not isinstance(resources, dict):
            print(
                'volley: --entrypoint-resources must be a JSON object, e.g. {"disk": 1}',
                file=sys.stderr,
            )
            return 2
    client = _client(args)
    job_id = client.submit_job(
        entrypoint,
        working_dir=args.working_dir,
        runtime_env=env,
        submission_id=args.submission_id,
        entrypoint_num_cpus=args.entrypoint_num_cpus,
        entrypoint_num_gpus=args.entrypoint_num_gpus,
        entrypoint_resources=resources,
    )
    print(f"volley: job {job_id} submitted to {client.address}", flush=True)
    if args.no_wait:
        print(f"volley: follow it with `volley job logs {job_id} --follow`")
        return 0
    try:
        _follow(client, job_id)
    except KeyboardInterrupt:
        print(
            f"\nvolley: stopped following; job {job_id} keeps running "
            f"(`volley job logs {job_id} --follow`, `volley job stop {job_id}`)",
            file=sys.stderr,
        )
        return 130
    row = client.wait(job_id)
    print(f"volley: {_describe(row)}", flush=True)
    return 0 if row["status"] == "SUCCEEDED" else 1


def _status(args: argparse.Namespace) -> int:
    try:
        row = _client(args).get_job_info(args.job_id)
    except ConnectionError as e:
        rows = [r for r in _recorded(args, e) or [] if r["job_id"] == args.job_id]
        if not rows:
            raise
        row = rows[0]
    print(json.dumps(row, indent=2) if args.json else _describe(row))
    return 0


def _logs(args: argparse.Namespace) -> int:
    try:
        client = _client(args)
        if args.follow:
            _follow(client, args.job_id)
        else:
            sys.stdout.write(client.get_job_logs(args.job_id))
        return 0
    except ConnectionError as e:
        if not any(r["job_id"] == args.job_id for r in _recorded(args, e) or []):
            raise
        data = _runtime_dir.read_file(_cluster.session_dir() / "jobs" / f"{args.job_id}.log")
        sys.stdout.write((data or b"").decode(errors="replace"))
        return 0


def _stop(args: argparse.Namespace) -> int:
    client = _client(args)
    if not client.stop_job(args.job_id):
        print(f"volley: {_describe(client.get_job_info(args.job_id))} (already over)")
        return 0
    if args.no_wait:
        print(f"volley: stopping job {args.job_id}")
        return 0
    row = client.wait(args.job_id, timeout=60)
    print(f"volley: {_describe(row)}")
    return 0


def _list(args: argparse.Namespace) -> int:
    if args.session is not None:
        if (
            not (Path(args.session) / "jobs").is_dir()
            and not (Path(args.session) / "history").is_dir()
        ):
            raise ValueError(f"no volley jobs recorded in {args.session} (no jobs/ or history/)")
        rows = job.recorded_jobs(args.session)
    else:
        try:
            rows = _client(args).list_jobs()
        except ConnectionError as e:
            rows = _recorded(args, e)
            if rows is None:
                raise
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no jobs")
        return 0
    print(f"{'JOB ID':<24} {'STATUS':<10} {'START':<19} {'DURATION':>9}  ENTRYPOINT")
    for r in rows:
        start = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["start_ms"] / 1000))
        end = r["end_ms"] if r["end_ms"] is not None else time.time() * 1000
        took = f"{(end - r['start_ms']) / 1000:.1f}s"
        shown = r["entrypoint"] if r["entrypoint"] is not None else "(driver)"
        print(f"{r['job_id']:<24} {r['status']:<10} {start:<19} {took:>9}  {shown}")
    return 0


def main(args: argparse.Namespace) -> int:
    """Runs ``volley job <args.job_cmd>``; errors are one line on stderr and status 1."""
    run = {"submit": _submit, "status": _status, "logs": _logs, "stop": _stop, "list": _list}
    try:
        return run[args.job_cmd](args)
    except (ConnectionError, ValueError, TypeError, TimeoutError) as e:
        print(f"volley: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 130
