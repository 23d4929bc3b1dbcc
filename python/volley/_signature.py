"""Checking a call's arguments against the function's signature at ``.remote()``, in the caller.

A wrong call then raises ``TypeError`` where it was made, not later at ``get``. The check is a
stub: an empty function with the same parameters (defaults replaced by a placeholder), compiled
once per function. Calling it costs what any Python call costs (well under a microsecond), and
its errors are Python's own ("f() missing 1 required positional argument: 'b'").
"""

from __future__ import annotations

import inspect

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

#: A parameter as it travels in an actor's metadata: (name, kind, has a default).
Shape = tuple[tuple[str, int, bool], ...]

_KINDS = inspect.Parameter
_stubs: dict[tuple[str, Shape], Callable] = {}


def shape_of(obj: Any, drop_first: bool = False) -> Shape | None:
    """The parameters of ``obj`` (without the first one with ``drop_first``: a method's
    ``self``), or None when they cannot be read or when the call is not checkable.

    Wrappers are not followed (``follow_wrapped=False``): a decorator that passes some
    arguments itself must not make a valid call look wrong, so a ``*args, **kwargs`` wrapper
    accepts anything here.
    """
    try:
        sig = inspect.signature(obj, follow_wrapped=False)
    except (TypeError, ValueError):
        return None
    params = list(sig.parameters.values())
    if drop_first:
        positional = (_KINDS.POSITIONAL_ONLY, _KINDS.POSITIONAL_OR_KEYWORD)
        if not params or params[0].kind not in positional:
            return None  # def m(*args): self is inside args; leave it unchecked
        params = params[1:]
    return tuple((p.name, int(p.kind), p.default is not p.empty) for p in params)


def stub(name: str, shape: Shape | None) -> Callable | None:
    """An empty function named ``name`` taking the parameters ``shape`` describes (None for
    None); calling it with a call's arguments raises Python's ``TypeError`` for a wrong call."""
    if shape is None:
        return None
    key = (name, shape)
    found = _stubs.get(key)
    if found is not None:
        return found
    parts: list[str] = []
    posonly = False
    star = False
    for pname, kind, has_default in shape:
        if not pname.isidentifier():
            return None
        if kind != _KINDS.POSITIONAL_ONLY and posonly:
            parts.append("/")
            posonly = False
        default = "=__volley_default" if has_default else ""
        if kind == _KINDS.POSITIONAL_ONLY:
            posonly = True
            parts.append(pname + default)
        elif kind == _KINDS.POSITIONAL_OR_KEYWORD:
            parts.append(pname + default)
        elif kind == _KINDS.VAR_POSITIONAL:
            star = True
            parts.append("*" + pname)
        elif kind == _KINDS.KEYWORD_ONLY:
            if not star:
                parts.append("*")
                star = True
            parts.append(pname + default)
        elif kind == _KINDS.VAR_KEYWORD:
            parts.append("**" + pname)
        else:
            return None
    if posonly:
        parts.append("/")
    namespace: dict[str, Any] = {"__volley_default": None}
    try:
        exec(f"def stub({', '.join(parts)}):\n    pass\n", namespace)
    except SyntaxError:
        return None
    fn = namespace["stub"]
    # Python's messages name the function by its qualified name (3.10+) or its code's name.
    fn.__name__ = fn.__qualname__ = name
    fn.__code__ = fn.__code__.replace(co_name=name)
    if len(_stubs) < 10_000:
        _stubs[key] = fn
    return fn


def checker(fn: Any, name: str) -> Callable | None:
    """The stub checking calls of ``fn`` (None when its signature cannot be read)."""
    return stub(name, shape_of(fn))
