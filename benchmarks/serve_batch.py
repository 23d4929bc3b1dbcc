"""``@serve.batch`` against no batching: a numpy "model" (1024x1024 then 1024x16 matrix
products, float32, one BLAS thread) in one volley async actor, as a serve replica runs it.

Usage: python benchmarks/serve_batch.py [--calls 1000] [--trickle 100] [--runs 5] [--dim 1024]
[--no-write]

Three actors, the same model, one way each (and a fourth with no model at all, whose calls/s
is the most any of them could reach through the engine):
- ``plain``: ``async def predict(self, x)`` on one input (what a replica does without batching);
- ``fixed``: ``@batch(max_batch_size=32, batch_wait_timeout_s=0.01)`` on a list of inputs;
- ``adaptive``: ``@batch(max_batch_size=32, batch_wait_timeout_s=0.05, adaptive=True)``.

Rows (median of ``--runs``; within a run the four are measured one after another, the order
rotated from run to run):
- a burst: ``--calls`` concurrent actor calls sent from the driver at once: calls/s (first
  send to last answer), and p50/p99 latency (send to the method's return, one monotonic clock);
- a trickle: ``--trickle`` calls one at a time (each sent when the last is answered): p50/p99
  latency, which shows what a fixed wait costs when nobody else is coming.

The actors run one at a time (a burst, then a trickle, then the next actor), so each has the
machine's cores to itself apart from the driver.

Writes ``benchmarks/RESULTS-serve_batch.md`` unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")  # one BLAS thread in every process: the actor is one CPU

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))

import numpy as np  # noqa: E402

import volley  # noqa: E402
from volley.serve._batching import batch  # noqa: E402

DIM, OUT = 1024, 16
MAX_BATCH = 32


class _Weights:
    def __init__(self, dim: int) -> None:
        rng = np.random.default_rng(0)
        self.w1 = (rng.standard_normal((dim, dim)) / 32).astype(np.float32)
        self.w2 = (rng.standard_normal((dim, OUT)) / 32).astype(np.float32)
        self.sizes: list[int] = []

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x: (DIM,) or (n, DIM) -> the class of each input."""
        return np.argmax(np.maximum(x @ self.w1, 0) @ self.w2, axis=-1)

    async def batch_sizes(self) -> list[int]:
        """The sizes of the batches run since the last ask."""
        out, self.sizes = self.sizes, []
        return out


@volley.remote(num_cpus=1)
class Plain(_Weights):
    async def predict(self, x: np.ndarray) -> tuple[int, float]:
        self.sizes.append(1)
        return int(self.forward(x)), time.monotonic()


@volley.remote(num_cpus=1)
class NoModel(_Weights):
    async def predict(self, x: np.ndarray) -> tuple[int, float]:
        self.sizes.append(1)
        return 0, time.monotonic()


def _batched(xs: list[np.ndarray], model: _Weights) -> list[tuple[int, float]]:
    model.sizes.append(len(xs))
    ys = model.forward(np.stack(xs))
    done = time.monotonic()
    return [(int(y), done) for y in ys]


@volley.remote(num_cpus=1)
class Fixed(_Weights):
    @batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=0.01)
    async def predict(self, xs: list[np.ndarray]) -> list[tuple[int, float]]:
        return _batched(xs, self)


@volley.remote(num_cpus=1)
class Adaptive(_Weights):
    @batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=0.05, adaptive=True)
    async def predict(self, xs: list[np.ndarray]) -> list[tuple[int, float]]:
        return _batched(xs, self)


def _pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def burst(actor, inputs: list[np.ndarray]) -> tuple[float, float, float, float]:
    """calls/s, p50 ms, p99 ms, mean batch size."""
    sent = []
    refs = []
    for x in inputs:
        sent.append(time.monotonic())
        refs.append(actor.predict.remote(x))
    out = volley.get(refs, timeout=600)
    lat = [done - t for t, (_, done) in zip(sent, out)]
    rate = len(inputs) / (max(done for _, done in out) - sent[0])
    sizes = volley.get(actor.batch_sizes.remote(), timeout=60)
    return rate, _pct(lat, 50) * 1e3, _pct(lat, 99) * 1e3, sum(sizes) / len(sizes)


def trickle(actor, inputs: list[np.ndarray]) -> tuple[float, float]:
    """p50 ms, p99 ms of calls made one at a time."""
    lat = []
    for x in inputs:
        t = time.monotonic()
        _, done = volley.get(actor.predict.remote(x), timeout=60)
        lat.append(done - t)
    volley.get(actor.batch_sizes.remote(), timeout=60)
    return _pct(lat, 50) * 1e3, _pct(lat, 99) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--trickle", type=int, default=100)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dim", type=int, default=DIM, help="the model's width (W1 is dim x dim)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    volley.init(num_cpus=4)
    rng = np.random.default_rng(1)
    dim = args.dim
    inputs = [rng.standard_normal(dim).astype(np.float32) for _ in range(args.calls)]
    actors = {
        "plain": Plain.remote(dim),
        "fixed": Fixed.remote(dim),
        "adaptive": Adaptive.remote(dim),
        "nomodel": NoModel.remote(dim),
    }
    for a in actors.values():  # start them, load the weights, let the adaptive wait learn
        burst(a, inputs[:200])
        trickle(a, inputs[:10])
    results: dict[str, dict[str, list[float]]] = {k: {} for k in actors}
    names = list(actors)
    for run in range(args.runs):
        for name in names[run % len(names) :] + names[: run % len(names)]:  # each goes first once
            a = actors[name]
            rate, p50, p99, mean_size = burst(a, inputs)
            t50, t99 = trickle(a, inputs[: args.trickle])
            for key, v in (
                ("rate", rate),
                ("p50", p50),
                ("p99", p99),
                ("size", mean_size),
                ("t50", t50),
                ("t99", t99),
            ):
                results[name].setdefault(key, []).append(v)
            print(
                f"run {run + 1} {name:8s} burst {rate:8.0f} calls/s p50 {p50:7.1f} ms "
                f"p99 {p99:7.1f} ms mean batch {mean_size:5.1f} | trickle p50 {t50:6.2f} ms "
                f"p99 {t99:6.2f} ms",
                flush=True,
            )
    volley.shutdown()
    load_after = os.getloadavg()[0]
    med = {k: {m: statistics.median(v) for m, v in r.items()} for k, r in results.items()}
    base = med["plain"]["rate"]
    rows = [
        "| model (one async actor) | burst calls/s | vs plain | burst p50 ms | burst p99 ms "
        "| mean batch | trickle p50 ms | trickle p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    labels = {
        "plain": "no batching",
        "fixed": f"`@batch(max_batch_size={MAX_BATCH}, batch_wait_timeout_s=0.01)`",
        "adaptive": f"`@batch(max_batch_size={MAX_BATCH}, batch_wait_timeout_s=0.05, "
        "adaptive=True)`",
        "nomodel": "no model, no batching: the method returns at once (the engine's ceiling)",
    }
    for name, m in med.items():
        rows.append(
            f"| {labels[name]} | {m['rate']:,.0f} | {m['rate'] / base:.1f}x | {m['p50']:.1f} "
            f"| {m['p99']:.1f} | {m['size']:.1f} | {m['t50']:.2f} | {m['t99']:.2f} |"
        )
    table = "\n".join(rows)
    print(table)
    if args.no_write:
        return
    runs_text = "\n".join(
        f"- {labels[k]}: burst calls/s "
        + ", ".join(f"{v:,.0f}" for v in r["rate"])
        + "; trickle p50 ms "
        + ", ".join(f"{v:.2f}" for v in r["t50"])
        for k, r in results.items()
    )
    cmd = (
        f"python benchmarks/serve_batch.py --calls {args.calls} --trickle {args.trickle} "
        f"--runs {args.runs} --dim {dim}"
    )
    text = f"""# `@serve.batch`: a numpy model in one volley async actor (issue 23)

`{cmd}`, {datetime.date.today().isoformat()}, {os.cpu_count()} cores. Load average (1 min)
{load_before:.1f} before, {load_after:.1f} after: a shared machine (other developers building
and testing on the same cores); rerun on a quiet one before quoting.

The model: `argmax(relu(x @ W1) @ W2)`, W1 {dim}x{dim} and W2 {dim}x{OUT} float32, one BLAS
thread. A burst is {args.calls} concurrent actor calls sent from the driver at once (one input
of {dim} floats each); a trickle is {args.trickle} calls made one at a time. Latency is from the
driver's send to the method's return (one monotonic clock). Medians of {args.runs} runs, the
four actors measured one after another within each run, in an order rotated from run to run.

{table}

Each run:
{runs_text}
"""
    (ROOT / "benchmarks" / "RESULTS-serve_batch.md").write_text(text)


if __name__ == "__main__":
    main()
