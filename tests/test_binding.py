"""The binding's boundary with the engine: error kinds defined once in Rust, typed objects."""

import types

import pytest

import volley
import volley._core as core
from volley import exceptions


def test_every_engine_error_kind_has_its_exception_class():
    # The kinds and their codes come from the engine (ErrorKind in volley-proto) only.
    kinds = core.ERROR_KINDS
    assert len(set(kinds.values())) == len(kinds), "one code per kind"
    assert set(exceptions.KIND_CLASSES) == set(kinds.values())
    for name, code in kinds.items():
        cls = exceptions.KIND_CLASSES[code]
        assert issubclass(cls, volley.VolleyError), name
    by_name = {n: exceptions.KIND_CLASSES[c] for n, c in kinds.items()}
    assert by_name["OBJECT_STORE_FULL"] is volley.ObjectStoreFullError
    assert by_name["CANCELLED"] is volley.TaskCancelledError
    assert by_name["ACTOR_DIED"] is volley.ActorDiedError
    # The kind that had no Python twin before.
    assert by_name["END_OF_STREAM"] is exceptions.EndOfStreamError


def test_an_error_result_of_each_kind_becomes_its_class():
    from volley._serialization import to_exception

    for name, code in core.ERROR_KINDS.items():
        if name in ("TASK_EXCEPTION", "ACTOR_CREATION"):
            continue  # built with their cause (tested with real tasks in test_errors.py)
        e = to_exception((False, code, "t", "it failed", "", None, 1))
        assert type(e) is exceptions.KIND_CLASSES[code], name
        assert str(e) == "it failed"


def test_objectref_is_generic_at_run_time(volley_2cpu):
    alias = volley.ObjectRef[int]
    assert isinstance(alias, types.GenericAlias)
    assert alias.__origin__ is volley.ObjectRef and alias.__args__ == (int,)
    ref = volley.put(3)
    assert isinstance(ref, volley.ObjectRef)
    assert volley.get(ref) == 3


def test_a_failure_with_a_kind_the_engine_lacks_is_refused_where_it_is_made():
    f = core.Failure(core.ERROR_KINDS["SERIALIZATION"], "no", "tb")
    assert (f.kind, f.message, f.traceback, f.exception) == (3, "no", "tb", None)
    assert "SERIALIZATION" in repr(f)
    with pytest.raises(ValueError, match="no error kind has code 200"):
        core.Failure(200, "no")
