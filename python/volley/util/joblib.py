"""Ray's ``ray.util.joblib`` module: ``register_ray()`` makes joblib's ``"ray"`` backend run
on volley (the same backend as ``volley.joblib.register()``'s ``"volley"``)."""

from __future__ import annotations


def register_ray() -> None:
    """Registers volley's joblib backend under Ray's name, ``"ray"`` (and ``"volley"``).

    >>> import joblib
    >>> from volley.util.joblib import register_ray
    >>> register_ray()
    >>> with joblib.parallel_backend("ray"):
    ...     joblib.Parallel()(joblib.delayed(abs)(-i) for i in range(3))
    [0, 1, 2]
    """
    from joblib import register_parallel_backend

    from ..joblib import VolleyBackend, register

    register()
    register_parallel_backend("ray", VolleyBackend)


__all__ = ["register_ray"]
