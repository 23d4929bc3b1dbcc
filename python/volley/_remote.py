"""``@volley.remote``: a remote function for a function, an actor class for a class."""

from __future__ import annotations

from typing import TypeVar, overload

from ._options import check_options
from ._remote_function import P, R, RemoteFunction

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Protocol

    from ._actor import ActorClass

    class _Decorator(Protocol):
        """What ``@volley.remote(option=...)`` returns: a decorator keeping the types."""

        @overload
        def __call__(self, obj: type[T], /) -> ActorClass[T]: ...
        @overload
        def __call__(self, obj: Callable[P, R], /) -> RemoteFunction[P, R]: ...


T = TypeVar("T")


@overload
def remote(obj: type[T], /) -> ActorClass[T]: ...
@overload
def remote(obj: Callable[P, R], /) -> RemoteFunction[P, R]: ...
@overload
def remote(
    *,
    num_cpus: float = ...,
    num_gpus: float = ...,
    resources: dict[str, float] = ...,
    num_returns: int | str = ...,
    max_retries: int = ...,
    retry_exceptions: bool = ...,
    name: str = ...,
    scheduling_strategy: Any = ...,
    **actor_options: Any,
) -> _Decorator: ...
def remote(*args: Any, **options: Any) -> Any:
    """Makes a function run remotely: ``@volley.remote`` or ``@volley.remote(num_cpus=2, ...)``.

    Options: ``num_cpus`` (CPUs held while it runs, default 1), ``num_gpus``, ``resources``
    (custom resources, ``{"name": amount}``), ``num_returns`` (default 1; ``"streaming"`` for
    a generator whose items come back one by one as refs, the default for a generator function:
    ``.remote()`` then returns an ``ObjectRefGenerator``; an int N makes a generator function
    yield exactly N values, each its own ref), ``max_retries`` (retries after its
    worker dies, default 3, -1 for unlimited), ``retry_exceptions`` (also retry when it raises),
    ``name`` (shown in logs and errors).

    On a class, it makes an actor (see ``volley.ActorClass``): ``Cls.remote(...)`` starts an
    instance in a process of its own and returns a handle whose methods are called with
    ``handle.method.remote(...)``.

    >>> @volley.remote(num_returns=2)
    ... def split(x):
    ...     return x, -x
    >>> a, b = split.remote(3)
    >>> volley.get([a, b])
    [3, -3]
    """
    if len(args) == 1 and not options and callable(args[0]):
        return _make_remote(args[0], {})
    if args:
        raise TypeError("use @volley.remote or @volley.remote(option=value, ...)")
    return lambda obj: _make_remote(obj, options)


def _make_remote(obj: Any, options: dict) -> Any:
    if isinstance(obj, type):
        from ._actor import ActorClass  # only for actors: a plain task starts without it

        return ActorClass(obj, options)
    return RemoteFunction(obj, check_options(options))
