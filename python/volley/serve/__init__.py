"""volley.serve: serve Python classes and functions over HTTP and to other Python code, with Ray
Serve's names.

``@serve.deployment(...)`` makes a class or function a deployment; ``Deployment.bind(*args)``
an application (bound deployments among the arguments reach the constructor as
``DeploymentHandle``s: composition); ``serve.run(app, name=..., route_prefix=...)`` deploys it
on volley actors (its replicas) and returns a handle on its ingress deployment. HTTP requests
reach the replicas through the ingress in volley's engine (Rust), with no Python process on the
way. See docs/serve.md.

>>> from volley import serve
>>> @serve.deployment(num_replicas=2)
... class Adder:
...     def __init__(self, n):
...         self.n = n
...     def __call__(self, x):
...         return x + self.n
>>> handle = serve.run(Adder.bind(10), name="adder", route_prefix="/add")
>>> handle.remote(5).result()
15
>>> serve.status().applications["adder"].deployments["Adder"].replica_states
{'RUNNING': 2}
>>> serve.delete("adder")
"""

from __future__ import annotations

from ._api import (
    ApplicationStatusOverview,
    DeploymentStatusOverview,
    ServeStatus,
    delete,
    get_app_handle,
    get_deployment_handle,
    run,
    shutdown,
    start,
    status,
)
from ._batching import batch
from ._context import get_multiplexed_model_id, get_request_id
from ._deployment import Application, Deployment, deployment
from ._fastapi import ingress
from ._handle import (
    BackPressureError,
    DeploymentHandle,
    DeploymentResponse,
    DeploymentResponseGenerator,
    NoReplicaError,
)
from ._http import (
    HTMLResponse,
    HTTPException,
    JSONResponse,
    PlainTextResponse,
    Request,
    Response,
    StreamingResponse,
)
from ._multiplex import multiplexed

__all__ = [
    "HTMLResponse",
    "HTTPException",
    "JSONResponse",
    "PlainTextResponse",
    "Request",
    "Response",
    "StreamingResponse",
    "Application",
    "BackPressureError",
    "ApplicationStatusOverview",
    "Deployment",
    "DeploymentHandle",
    "DeploymentResponse",
    "DeploymentResponseGenerator",
    "DeploymentStatusOverview",
    "NoReplicaError",
    "ServeStatus",
    "batch",
    "delete",
    "deployment",
    "get_app_handle",
    "get_deployment_handle",
    "get_multiplexed_model_id",
    "get_request_id",
    "ingress",
    "multiplexed",
    "run",
    "shutdown",
    "start",
    "status",
]
