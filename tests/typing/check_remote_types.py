"""What a type checker sees through ``@volley.remote`` (``tests/test_typing.py`` runs mypy on
this file; it is never run itself)."""

from __future__ import annotations

from typing import Any

from typing_extensions import assert_type, reveal_type

import volley
from volley import ActorClass, ActorHandle, ObjectRef


@volley.remote
def add(a: int, b: int) -> int:
    return a + b


@volley.remote(num_cpus=2, max_retries=0)
def greet(name: str) -> str:
    return f"hello {name}"


class Counter:
    def __init__(self, start: int) -> None:
        self.n = start

    def incr(self) -> int:
        self.n += 1
        return self.n


# mypy does not let a class decorator change a class's type (pyright does): a program checked
# with mypy makes the actor class with a call to see it typed.
RemoteCounter = volley.remote(Counter)


def uses() -> None:
    ref = add.remote(1, 2)
    assert_type(ref, ObjectRef[int])
    assert_type(volley.get(ref), int)
    assert_type(volley.get([ref, ref]), list[int])
    assert_type(greet.remote("x"), ObjectRef[str])
    assert_type(greet.options(num_cpus=1).remote("x"), ObjectRef[str])
    assert_type(volley.put(b"data"), ObjectRef[bytes])
    assert_type(volley.get(volley.put(1.5)), float)
    ready, rest = volley.wait([ref])
    assert_type(ready, list[ObjectRef[int]])
    assert_type(RemoteCounter, ActorClass[Counter])
    handle = RemoteCounter.remote(0)
    assert_type(handle, ActorHandle[Counter])
    assert_type(handle.incr.remote(), Any)  # actor methods: not typed through (yet)
    reveal_type(add.remote)  # R: def (a: int, b: int) -> volley._core.ObjectRef[int]


def misuses() -> None:
    add.remote("one", 2)  # E: the argument's type
    add.remote(1)  # E: a missing argument
    volley.get(add.remote(1, 2)).upper()  # E: an int has no upper
