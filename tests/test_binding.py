"""The binding's boundary with the engine: error kinds defined once in Rust, typed objects."""

import types

import pytest

import volley
import volley._core as core
from volley import exceptions
from volley._remote_function import EMPTY_PACKED


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
        e = to_exception(core.Failure(code, "it failed", "", None, task_name="t", pid=1))
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


def test_task_options_are_checked_and_converted_where_they_are_made():
    o = core.TaskOptions(
        "f", 2, 0.5, 0, True, False, [("GPU", 1.0), ("x", 0.0)], ("SPREAD", 0, False)
    )
    assert (o.name, o.num_returns, o.num_cpus, o.max_retries) == ("f", 2, 0.5, 0)
    assert o.retry_exceptions and not o.streaming
    assert o.resources == [("GPU", 1.0)]  # a zero amount asks for nothing
    assert "SPREAD" in repr(o) or "Spread" in repr(o)
    with pytest.raises(ValueError, match="num_returns"):
        core.TaskOptions("f", 0)
    with pytest.raises(ValueError, match="num_returns"):
        core.TaskOptions("f", 2, streaming=True)
    with pytest.raises(ValueError, match="num_cpus"):
        core.TaskOptions("f", num_cpus=-1.0)
    with pytest.raises(ValueError, match="max_retries"):
        core.TaskOptions("f", max_retries=-2)
    with pytest.raises(ValueError, match="resource 'GPU'"):
        core.TaskOptions("f", resources=[("GPU", -1.0)])
    with pytest.raises(ValueError, match="unknown strategy"):
        core.TaskOptions("f", strategy=("NEAR", 0, False))
    a = core.ActorCallOptions("m", "A.m", 3)
    assert (a.method, a.name, a.num_returns, a.streaming) == ("m", "A.m", 3, False)
    with pytest.raises(ValueError, match="num_returns"):
        core.ActorCallOptions("m", "A.m", 0)


def test_actor_create_options_are_checked_where_they_are_made():
    # Before: create_actor took 18 positional arguments, checked on each creation.
    o = core.ActorCreateOptions("A", num_cpus=0.5, name="n", namespace="ns", detached=True)
    assert (o.class_name, o.name, o.namespace, o.num_cpus) == ("A", "n", "ns", 0.5)
    assert repr(o).startswith('ActorCreateOptions("A", name="n"') and "detached=True" in repr(o)
    assert core.ActorCreateOptions("A").name is None
    with pytest.raises(ValueError, match="max_concurrency"):
        core.ActorCreateOptions("A", max_concurrency=0)
    with pytest.raises(ValueError, match="num_cpus"):
        core.ActorCreateOptions("A", num_cpus=-1.0)
    with pytest.raises(ValueError, match="resource 'x'"):
        core.ActorCreateOptions("A", resources=[("x", -2.0)])
    with pytest.raises(ValueError, match="unknown strategy"):
        core.ActorCreateOptions("A", strategy=("NEAR", 0, False))
    with pytest.raises(TypeError):
        core.ActorCreateOptions("A", 1.0)  # everything but the class name by keyword


def test_submit_takes_only_typed_options(volley_2cpu):
    @volley.remote
    def f():
        return 1

    ref = f.remote()
    typed = f._typed
    assert f.remote() is not ref and f._typed is typed, "converted once, not per call"
    assert isinstance(typed[0], core.TaskOptions) and typed[0].name.endswith("f")
    fid = f._function_id("f")
    data, buffers, contained = EMPTY_PACKED
    with pytest.raises(TypeError):
        core.submit(fid, data, buffers, contained, [], {"num_returns": 1})
    refs = core.submit(fid, data, buffers, contained, [], core.TaskOptions("g", max_retries=0))
    assert len(refs) == 1 and volley.get(refs[0]) == 1


def test_get_returns_a_value_as_data_and_buffers_and_an_error_as_a_failure(volley_2cpu):
    @volley.remote
    def boom():
        raise KeyError("k")

    ok, bad = volley.put(5), boom.remote()
    volley.wait([bad], num_returns=1, timeout=60)
    value, failure = core.get([ok, bad], 60.0)
    assert type(value) is tuple and len(value) == 2
    assert volley._serialization.loads(*value) == 5
    assert type(failure) is core.Failure
    assert failure.kind == core.ERROR_KINDS["TASK_EXCEPTION"]
    assert failure.task_name.endswith("boom") and failure.pid > 0
    assert "KeyError" in failure.traceback and failure.exception is not None
    with pytest.raises(KeyError):
        volley.get(bad)


def test_options_objects_travel_in_a_pickled_remote_function(volley_2cpu):
    # The converted options are a _core object made per process: a remote function (or its
    # .options copy) used here, then sent inside a task, is made again where it lands.
    @volley.remote
    def f(x):
        return x * 2

    two = f.options(num_returns=1, max_retries=0)
    assert volley.get([f.remote(1), two.remote(2)]) == [2, 4]

    @volley.remote
    def outer(g, h):
        return volley.get([g.remote(3), h.remote(4)])

    assert volley.get(outer.remote(f, two)) == [6, 8]


def test_a_remote_function_or_actor_class_called_directly_names_remote():
    @volley.remote
    def f():
        return 1

    @volley.remote
    class Acc:
        pass

    with pytest.raises(
        TypeError, match=r"remote function '.*f' cannot be called directly; use .*f\.remote"
    ):
        f()
    with pytest.raises(
        TypeError, match=r"actor class 'Acc' cannot be instantiated directly; use Acc\.remote"
    ):
        Acc()
    assert repr(f).startswith("<volley.RemoteFunction ") and repr(f).endswith("f>")
    assert repr(Acc).startswith("<volley.ActorClass ") and repr(Acc).endswith("Acc>")
