"""Ray's ``ray.util.queue`` and ``multiprocessing.Queue``/``JoinableQueue`` for volley: a queue
that the driver, tasks and actors of one node share, with ``queue.Empty``/``queue.Full``.
See docs/queue.md.

>>> from volley.util.queue import Queue
>>> q = Queue()
>>> q.put({"x": 1}); q.get()
{'x': 1}
>>> q.shutdown()
"""

from __future__ import annotations

from queue import Empty, Full

from volley.library import JoinableQueue, Queue

__all__ = ["Empty", "Full", "JoinableQueue", "Queue"]
