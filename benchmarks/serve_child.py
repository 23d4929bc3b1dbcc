"""The end of a serve benchmark's child process (``serve_http.py``, ``serve_fastapi.py``),
shared by volley's and Ray's runs: standard library only, since Ray's interpreter imports it
too (``run_system`` puts the repository on the child's ``PYTHONPATH``)."""

from __future__ import annotations

import sys
import time
import urllib.request
from typing import Any


def serve_until_told(
    serve: Any, port: int, checks: list[tuple[str, bytes | None, dict]], wait_s: float = 120.0
) -> None:
    """Waits until every ``(path, body, headers)`` in ``checks`` answers 200 on ``port``
    (``SystemExit`` after ``wait_s``), prints READY, then serves until a line comes on stdin
    and shuts ``serve`` down."""
    deadline = time.monotonic() + wait_s
    for path, body, headers in checks:
        while True:
            try:
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}{path}", data=body, headers=headers
                )
                with urllib.request.urlopen(req, timeout=10) as r:
                    if r.status == 200:
                        break
            except Exception as e:
                if time.monotonic() > deadline:
                    msg = f"{path} never answered 200 within {wait_s:.0f} s: {e!r}"
                    raise SystemExit(msg) from e
                time.sleep(0.2)
    print("READY", flush=True)
    sys.stdin.readline()
    serve.shutdown()
    print("BYE", flush=True)
