"""Names serve's parts share: the controller's actor name, the key-value documents' keys."""

from __future__ import annotations

from ._wire import HTTP_KEY, HTTP_STATUS_KEY, KV_NAMESPACE, ROUTES_KEY

#: The namespace of serve's named actors (the controller, the replicas) and of its KV documents.
NAMESPACE = KV_NAMESPACE
#: The controller's actor name.
CONTROLLER_NAME = "SERVE_CONTROLLER"

__all__ = [
    "CONTROLLER_NAME",
    "HTTP_KEY",
    "HTTP_STATUS_KEY",
    "NAMESPACE",
    "ROUTES_KEY",
    "ReplicaStoppingError",
    "deployment_key",
    "replica_name",
    "waiting_key",
]


def deployment_key(app: str, deployment: str) -> str:
    """The KV key of a deployment's replica document (what handles read)."""
    return f"deployment/{app}/{deployment}"


def replica_name(app: str, deployment: str, tag: str) -> str:
    """The actor name of a deployment's replica ``tag`` (the controller's epoch and a count)."""
    return f"SERVE_REPLICA::{app}#{deployment}#{tag}"


def waiting_key(app: str, deployment: str) -> str:
    """The KV key where the HTTP ingress says how many requests wait for a deployment that has
    no replica (``{"waiting": n}``): the autoscaler starts one (scale from zero)."""
    return f"waiting/{app}/{deployment}"


class ReplicaStoppingError(RuntimeError):
    """A handle call that came to a replica after its drain began: it did not run, and the
    handle sends it to another replica."""
