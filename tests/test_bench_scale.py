"""benchmarks/scale.py runs every cell and writes its table (timings are not asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_scale_quick_has_every_row(tmp_path: Path) -> None:
    """--quick --tiny at 1 and 2 workers: a row per (benchmark, worker count), no cell in
    error, and the results file keeps the sections other benchmarks wrote."""
    out = tmp_path / "RESULTS-scale.md"
    out.write_text("# Scale\n\n## Fork template\n\nkept as it was\n")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--quick", "--tiny",
         "--workers", "1,2", "--runs", "1", "--timeout", "60", "--output", str(out)],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    sys.path.insert(0, str(ROOT))
    from benchmarks.scale import BENCHES, sizes

    titles = [title.format(**sizes(True, True)) for _, title, _ in BENCHES]
    rows = [
        line for line in proc.stdout.splitlines() if line.startswith("| ") and "---" not in line
    ]
    assert rows[0].startswith("| benchmark | workers | volley | mp | cf |"), rows[0]
    body = rows[1:]
    expected = [(t, n) for t in titles for n in ("1", "2")]
    assert [(r.split(" | ")[0][2:], r.split(" | ")[1]) for r in body] == expected, proc.stdout
    for row in body:
        assert "error" not in row, row
        systems_and_ratios = row.split(" | ")[2:7]  # volley, mp, cf, volley vs mp, volley vs cf
        assert all(cell.strip() for cell in systems_and_ratios), f"a cell is empty: {row}"
    text = out.read_text()
    assert "## Fork template\n\nkept as it was" in text
    assert text.count("## Per-core scaling") == 1
    for title in titles:
        assert title in text


def test_scale_rejects_bad_arguments() -> None:
    """A worker count that is not a positive integer, or an unknown benchmark, is refused
    before anything runs."""
    for bad in ("0", "two", ""):
        proc = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--workers", bad],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert "--workers" in proc.stderr
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--only", "tiny,nosuch"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 2 and "unknown benchmarks ['nosuch']" in proc.stderr, proc.stderr


def test_background_load_runs_during_the_block_and_stops_after(capsys) -> None:
    """run.py --background N: N busy processes live (and use CPU) inside the block, none after;
    the harness says so on stderr."""
    import os
    import time

    sys.path.insert(0, str(ROOT))
    from benchmarks.common import process_tree
    from benchmarks.run import background_load

    def spinning() -> tuple[list[int], list[int]]:
        children = [p for p in process_tree(os.getpid()) if p != os.getpid()]
        busy = []
        for pid in children:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if b"while True: pass" in f.read():
                        busy.append(pid)
            except FileNotFoundError:
                pass
        return busy, children

    with background_load(2):
        # A child just forked shows its parent's command line until it has exec'd.
        deadline = time.monotonic() + 30
        busy, children = spinning()
        while len(busy) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
            busy, children = spinning()
        assert len(busy) == 2, children
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # each is spinning: its CPU time grows
            ticks = []
            for pid in busy:
                with open(f"/proc/{pid}/stat") as f:
                    ticks.append(sum(int(x) for x in f.read().rsplit(")", 1)[1].split()[11:13]))
            if all(ticks):
                break
            time.sleep(0.05)
        assert all(ticks), ticks
    for pid in busy:
        assert not os.path.exists(f"/proc/{pid}"), f"busy process {pid} still running"
    err = capsys.readouterr().err
    assert "background load: 2 busy process(es) started" in err
    assert "background load: 2 busy process(es) stopped" in err
