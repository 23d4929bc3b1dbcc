"""volley demo: a parallel Monte Carlo estimate of pi and a small task graph, with timings."""

import random
import time

import volley


@volley.remote
def sample_pi(n: int, seed: int) -> int:
    """Counts how many of n random points in the unit square fall inside the quarter circle."""
    rng = random.Random(seed)
    inside = 0
    for _ in range(n):
        x, y = rng.random(), rng.random()
        inside += x * x + y * y <= 1.0
    return inside


@volley.remote
def load(part: int) -> list:
    return list(range(part * 1000, (part + 1) * 1000))


@volley.remote
def square_sum(xs: list) -> int:
    return sum(x * x for x in xs)


@volley.remote
def total(*parts: int) -> int:
    return sum(parts)


def main() -> None:
    t0 = time.perf_counter()
    ctx = volley.init()
    first = volley.get(sample_pi.remote(1, 0))
    print(f"init + first task result: {(time.perf_counter() - t0) * 1e3:.1f} ms (got {first})")

    # 1. Monte Carlo pi: the same work serially, then as parallel tasks.
    chunks, per_chunk = 16, 250_000
    t = time.perf_counter()
    for s in range(4):  # a quarter of the work, in this process, to compare against
        sample_pi.__wrapped__(per_chunk, s)
    serial_time = (time.perf_counter() - t) * chunks / 4
    t = time.perf_counter()
    inside = sum(volley.get([sample_pi.remote(per_chunk, s) for s in range(chunks)]))
    parallel_time = time.perf_counter() - t
    pi = 4 * inside / (chunks * per_chunk)
    print(
        f"pi ~ {pi:.5f} from {chunks * per_chunk:,} points: {parallel_time:.2f} s on "
        f"{ctx.num_cpus} CPUs vs ~{serial_time:.2f} s serially "
        f"({serial_time / parallel_time:.2f}x)"
    )

    # 2. A small task graph: refs passed as arguments wire tasks together; nothing waits in
    #    the driver until the final get.
    t = time.perf_counter()
    parts = [square_sum.remote(load.remote(p)) for p in range(8)]
    result = volley.get(total.remote(*parts))
    expected = sum(x * x for x in range(8000))
    print(
        f"task graph (8 loads -> 8 square sums -> 1 total, 17 tasks): {result} "
        f"(correct: {result == expected}) in {(time.perf_counter() - t) * 1e3:.1f} ms"
    )

    # 3. Many tiny tasks.
    t = time.perf_counter()
    refs = [square_sum.remote([i]) for i in range(10_000)]
    volley.get(refs)
    dt = time.perf_counter() - t
    print(f"10,000 tiny tasks: {dt * 1e3:.0f} ms ({10_000 / dt:,.0f} tasks/s)")

    volley.shutdown()


if __name__ == "__main__":
    main()
