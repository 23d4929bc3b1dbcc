"""SharedDict against an actor holding a dict: operations per second of ``d[k] = v``, ``d[k]``
and ``incr``, from the driver and from 4 tasks at once (issue 20).

    python benchmarks/shared_state.py [--n 5000] [--rounds 3] \
        [--output benchmarks/RESULTS-shared.md]

Each round runs every row for both sides, alternating, so load on the machine hits both; the
median of the rounds is shown. The actor side is what Ray users write: one actor whose methods
get, set and increment a dict, called with ``volley.get(actor.method.remote(...))``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import volley


@volley.remote
class DictActor:
    def __init__(self) -> None:
        self.d: dict = {}

    def set(self, k: str, v: object) -> None:
        self.d[k] = v

    def get(self, k: str) -> object:
        return self.d.get(k)

    def incr(self, k: str) -> int:
        self.d[k] = self.d.get(k, 0) + 1
        return self.d[k]


VALUE = {"lr": 0.1, "name": "trial", "layers": [64, 32]}


def shared_ops(d: volley.SharedDict, op: str, n: int, tag: str) -> None:
    key = f"{op}-{tag}"
    if op == "set":
        for _ in range(n):
            d[key] = VALUE
    elif op == "get":
        d[key] = VALUE
        for _ in range(n):
            d[key]
    else:
        for _ in range(n):
            d.incr(key)


def actor_ops(a, op: str, n: int, tag: str) -> None:
    key = f"{op}-{tag}"
    if op == "set":
        for _ in range(n):
            volley.get(a.set.remote(key, VALUE))
    elif op == "get":
        volley.get(a.set.remote(key, VALUE))
        for _ in range(n):
            volley.get(a.get.remote(key))
    else:
        for _ in range(n):
            volley.get(a.incr.remote(key))


@volley.remote(num_cpus=0.5)
def in_task(kind: str, target, op: str, n: int, tag: str) -> float:
    t0 = time.perf_counter()
    (shared_ops if kind == "shared" else actor_ops)(target, op, n, tag)
    return time.perf_counter() - t0


def from_driver(kind: str, target, op: str, n: int) -> float:
    t0 = time.perf_counter()
    (shared_ops if kind == "shared" else actor_ops)(target, op, n, "driver")
    return n / (time.perf_counter() - t0)


def from_tasks(kind: str, target, op: str, n: int, tasks: int = 4) -> float:
    # Warm the workers first, so that starting them is not timed.
    volley.get([in_task.remote(kind, target, op, 1, f"w{i}") for i in range(tasks)])
    t0 = time.perf_counter()
    volley.get([in_task.remote(kind, target, op, n, f"t{i}") for i in range(tasks)])
    return tasks * n / (time.perf_counter() - t0)


def _member_rows(n: int, rounds: int) -> dict[tuple[str, str, str], list[float]]:
    """The driver rows again from a driver that joined a 1-CPU head on loopback (a member: each
    SharedDict operation is a round trip to the head's process; the actor runs on the head)."""
    import socket
    import subprocess
    import sys
    import tempfile

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = "bench-token-0123456789"
    tmp = tempfile.mkdtemp(prefix="volley-shared-bench-")
    env = dict(os.environ, VOLLEY_SESSION_DIR=os.path.join(tmp, "head"))
    log = open(os.path.join(tmp, "head.log"), "wb")
    head = subprocess.Popen(
        [sys.executable, "-m", "volley._cli", "start", "--head", "--host", "127.0.0.1",
         "--port", str(port), "--num-cpus", "1", "--token", token, "--block"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while "listening on" not in open(os.path.join(tmp, "head.log")).read():
            if head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the head did not start (see {tmp}/head.log)")
            time.sleep(0.05)
        volley.init(address=f"127.0.0.1:{port}", token=token)
        d = volley.SharedDict("bench-member")
        actor = DictActor.remote()
        volley.get(actor.get.remote("warm"))
        out: dict[tuple[str, str, str], list[float]] = {}
        for _ in range(rounds):
            for op in ("set", "get", "incr"):
                for kind, target in (("shared", d), ("actor", actor)):
                    out.setdefault(("member driver", op, kind), []).append(
                        from_driver(kind, target, op, n)
                    )
        volley.shutdown()
        return out
    finally:
        head.terminate()
        head.wait(timeout=30)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=5000, help="operations per process and row")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--output", default=None)
    args = p.parse_args()

    load_before = os.getloadavg()
    volley.init(num_cpus=2)
    d = volley.SharedDict("bench")
    actor = DictActor.remote()
    volley.get(actor.get.remote("warm"))
    rows = [(w, op) for w in ("driver", "4 tasks") for op in ("set", "get", "incr")]
    results: dict[tuple[str, str, str], list[float]] = {}
    for _ in range(args.rounds):
        for where, op in rows:
            for kind, target in (("shared", d), ("actor", actor)):
                f = from_driver if where == "driver" else from_tasks
                n = args.n if where == "driver" else args.n // 4
                results.setdefault((where, op, kind), []).append(f(kind, target, op, n))
    volley.shutdown()
    results.update(_member_rows(args.n // 4, args.rounds))
    rows += [("member driver", op) for op in ("set", "get", "incr")]
    load_after = os.getloadavg()

    names = {"set": "`d[k] = v`", "get": "`d[k]`", "incr": "`incr(k)`"}
    lines = [
        "# SharedDict against an actor holding a dict (issue 20)",
        "",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- Machine: nproc {os.cpu_count()}, {platform.platform()}",
        f"- Command: `python benchmarks/shared_state.py --n {args.n} --rounds {args.rounds}`",
        "- Load average (1/5/15 min): "
        f"{' '.join(f'{x:.2f}' for x in load_before)} before, "
        f"{' '.join(f'{x:.2f}' for x in load_after)} after",
        f"- One machine (`volley.init(num_cpus=2)`: the driver's node is the head); median of "
        f"{args.rounds} rounds, both sides alternated in each round. The value is a small dict "
        "(pickled, about 70 bytes); 4 tasks: 4 processes at once, each with its own key. "
        "'member driver': a driver that joined a 1-CPU head started with `volley start "
        "--head` on loopback (each operation a round trip to the head's process; the actor "
        "runs on the head).",
        "",
        "| operation | from | SharedDict ops/s | actor ops/s | SharedDict / actor |",
        "|---|---|---|---|---|",
    ]
    for where, op in rows:
        s = statistics.median(results[(where, op, "shared")])
        a = statistics.median(results[(where, op, "actor")])
        lines.append(f"| {names[op]} | {where} | {s:,.0f} | {a:,.0f} | {s / a:.1f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
