"""Progress bars: tqdm when it is installed, else a plain line on stderr.

Updates are cheap (a counter); the bar is redrawn at most ten times a second, so a bar never
slows the work it reports on.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Sequence

from ._objects import wait

_REDRAW_S = 0.1


class Bar:
    """A progress bar over ``total`` items (``None``: unknown).

    >>> import io
    >>> bar = library.ProgressBar(3, "squares", file=io.StringIO())
    >>> bar.update(3)
    >>> bar.close()
    >>> bar.n
    3
    """

    def __init__(self, total: int | None, desc: str = "", file: Any = None):
        self.total = total
        self.desc = desc
        self.n = 0
        self._tqdm = None
        self._file = file if file is not None else sys.stderr
        self._last = 0.0
        self._start = time.monotonic()
        self._closed = False
        try:
            from tqdm.auto import tqdm
        except ImportError:
            tqdm = None
        if tqdm is not None:
            self._tqdm = tqdm(
                total=total, desc=desc or None, file=self._file, mininterval=_REDRAW_S
            )

    def update(self, n: int = 1) -> None:
        if n <= 0 or self._closed:
            return
        self.n += n
        if self._tqdm is not None:
            self._tqdm.update(n)
            return
        now = time.monotonic()
        if now - self._last >= _REDRAW_S or (self.total is not None and self.n >= self.total):
            self._last = now
            self._draw(now)

    def _draw(self, now: float, end: str = "\r") -> None:
        elapsed = max(now - self._start, 1e-9)
        rate = self.n / elapsed
        head = f"{self.desc}: " if self.desc else ""
        if self.total:
            frac = min(self.n / self.total, 1.0)
            filled = int(frac * 30)
            bar = "#" * filled + "-" * (30 - filled)
            line = f"{head}[{bar}] {self.n}/{self.total} ({frac:.0%}, {rate:,.0f}/s)"
        else:
            line = f"{head}{self.n} done ({rate:,.0f}/s)"
        try:
            self._file.write(line + end)
            self._file.flush()
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._tqdm is not None:
            self._tqdm.close()
        else:
            self._draw(time.monotonic(), end="\n")

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(refs: Sequence[Any], desc: str = "", *, file: Any = None) -> list:
    """Shows a live progress bar while ``refs`` finish; returns them (as a list) once all have.

    Errors are not raised here: ``volley.get`` on the refs raises them as usual.

    >>> @volley.remote
    ... def square(x):
    ...     return x * x
    >>> refs = [square.remote(i) for i in range(100)]
    >>> volley.get(volley.progress(refs, desc="squares"))[:3]
    [0, 1, 4]
    """

    refs = list(refs)
    pending = list(dict.fromkeys(refs))
    with Bar(len(pending), desc, file=file) as bar:
        while pending:
            ready, pending = wait(
                pending, num_returns=len(pending), timeout=_REDRAW_S, fetch_local=False
            )
            if not ready and pending:
                # Nothing finished within the redraw interval: wait for at least one.
                ready, pending = wait(pending, num_returns=1, fetch_local=False)
            bar.update(len(ready))
    return refs
