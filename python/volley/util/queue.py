"""Ray's ``ray.util.queue``: not in volley yet. Importing it raises ``ImportError`` saying so
(queues that cross processes and nodes come with issue 20)."""

raise ImportError(
    "Ray's ray.util.queue is not in volley yet: cross-process queues come with issue 20; "
    "see docs/from-ray.md"
)
