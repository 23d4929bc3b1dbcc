"""Ray's ``ray.actor`` module path: volley's actor classes under it (``from volley.actor import
ActorHandle``, for type hints written for Ray). Ray's ``exit_actor()`` is not in volley yet."""

from __future__ import annotations

from ._actor import ActorClass, ActorHandle, ActorMethod, method

__all__ = ["ActorClass", "ActorHandle", "ActorMethod", "method"]


def __getattr__(name: str):
    if name == "exit_actor":
        raise AttributeError(
            "Ray's ray.actor.exit_actor() is not in volley yet: end an actor with "
            "volley.kill(handle), or let its last handle go; see docs/from-ray.md"
        )
    raise AttributeError(f"module 'volley.actor' has no attribute {name!r}")
