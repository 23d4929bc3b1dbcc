"""Application errors: TaskError (dual-typed with the original exception), propagation
through dependent tasks, serialization errors at submit time, get timeouts and
retry_exceptions."""

from __future__ import annotations

import functools
import os
import threading
import time

import pytest

import volley

pytestmark = pytest.mark.usefixtures("volley_shared")


class CustomError(Exception):
    pass


class DetailedError(ValueError):
    def __init__(self, code):
        super().__init__(f"failed with code {code}")
        self.code = code


class TwoArgError(Exception):
    """An exception whose args cannot rebuild it (unpickling calls cls(*args))."""

    def __init__(self, a, b):
        super().__init__(f"two-arg error {a}/{b}")


@volley.remote
def raise_value_error(msg):
    raise ValueError(msg)


def _deep_helper(n):
    if n == 0:
        raise KeyError("deep missing key")
    return _deep_helper(n - 1)


@volley.remote
def raise_deep():
    return _deep_helper(3)


@volley.remote
def raise_custom():
    raise CustomError("custom message 123")


@volley.remote
def raise_detailed():
    raise DetailedError(7)


@volley.remote
def raise_two_arg():
    raise TwoArgError(1, 2)


@volley.remote
def touch_and_add(path, x, y=0):
    with open(path, "a") as f:
        f.write("ran\n")
    return x + y


@volley.remote
def identity(x):
    return x


@volley.remote
def get_inner_and_catch(refs):
    try:
        volley.get(refs[0])
    except ValueError as e:
        return "caught", isinstance(e, volley.TaskError), "inner failure" in str(e)
    return "no error"


@volley.remote
def nested_failure():
    return volley.get(raise_value_error.remote("inner failure"))


@volley.remote
def sleep_then(seconds, value):
    time.sleep(seconds)
    return value


@volley.remote(num_returns=2)
def two_then_fail():
    raise RuntimeError("no pair for you")


@volley.remote
def return_lock():
    return threading.Lock()


def count_attempt(directory):
    n = len(os.listdir(directory)) + 1
    with open(os.path.join(directory, f"attempt-{n}-{os.getpid()}"), "w"):
        pass
    return n


@volley.remote(max_retries=3, retry_exceptions=True)
def flaky_exception(directory, fail_times):
    n = count_attempt(directory)
    if n <= fail_times:
        raise ValueError(f"flaky attempt {n}")
    return n


@volley.remote(max_retries=3)
def always_raises_counting(directory):
    n = count_attempt(directory)
    raise ValueError(f"attempt {n} failed")


# --------------------------------------------------------------------------- exception types


def test_exception_hierarchy():
    for exc in (
        volley.TaskError,
        volley.WorkerCrashedError,
        volley.SerializationError,
        volley.GetTimeoutError,
        volley.TaskCancelledError,
    ):
        assert issubclass(exc, volley.VolleyError), exc
        assert issubclass(exc, Exception), exc
    assert issubclass(volley.GetTimeoutError, TimeoutError)


def test_task_error_is_also_the_original_exception_class():
    ref = raise_value_error.remote("bad value 42")
    with pytest.raises(ValueError) as info:
        volley.get(ref)
    err = info.value
    assert isinstance(err, volley.TaskError)
    assert isinstance(err, volley.VolleyError)
    assert isinstance(err, ValueError)
    assert "bad value 42" in str(err)


def test_except_original_class_works_in_plain_try():
    caught = None
    try:
        volley.get(raise_value_error.remote("plain try"))
    except ValueError as e:  # user code does not need to know about volley.TaskError
        caught = e
    assert caught is not None and "plain try" in str(caught)


def test_task_error_contains_remote_traceback():
    with pytest.raises(KeyError) as info:
        volley.get(raise_deep.remote())
    text = str(info.value)
    assert isinstance(info.value, volley.TaskError)
    assert "Traceback" in text
    assert "_deep_helper" in text
    assert "raise_deep" in text
    assert "deep missing key" in text


def test_custom_module_level_exception_class():
    with pytest.raises(CustomError) as info:
        volley.get(raise_custom.remote())
    assert isinstance(info.value, volley.TaskError)
    assert "custom message 123" in str(info.value)


def test_exception_subclass_keeps_its_whole_hierarchy():
    with pytest.raises(DetailedError) as info:
        volley.get(raise_detailed.remote())
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, volley.TaskError)
    assert "failed with code 7" in str(info.value)


def test_exception_class_defined_inside_test():
    class LocalError(RuntimeError):
        pass

    @volley.remote
    def raise_local():
        raise LocalError("local class")

    with pytest.raises(LocalError) as info:
        volley.get(raise_local.remote())
    assert isinstance(info.value, volley.TaskError)
    assert "local class" in str(info.value)


def test_exception_that_cannot_be_rebuilt_still_surfaces_as_task_error():
    with pytest.raises(volley.TaskError) as info:
        volley.get(raise_two_arg.remote(), timeout=30)
    assert "two-arg error 1/2" in str(info.value)


def test_failed_task_error_is_raised_on_every_get():
    ref = raise_value_error.remote("again")
    for _ in range(2):
        with pytest.raises(ValueError):
            volley.get(ref)


def test_get_list_with_one_failure_raises():
    refs = [identity.remote(1), raise_value_error.remote("one of many"), identity.remote(3)]
    with pytest.raises(ValueError) as info:
        volley.get(refs)
    assert "one of many" in str(info.value)


def test_all_returns_of_a_failed_multi_return_task_raise():
    a, b = two_then_fail.remote()
    for ref in (a, b):
        with pytest.raises(RuntimeError) as info:
            volley.get(ref)
        assert isinstance(info.value, volley.TaskError)
        assert "no pair for you" in str(info.value)


def test_pool_keeps_working_after_errors():
    for i in range(5):
        with pytest.raises(ValueError):
            volley.get(raise_value_error.remote(f"err {i}"))
    assert volley.get([identity.remote(i) for i in range(10)]) == list(range(10))


# --------------------------------------------------------------------------- propagation


def test_dependent_task_fails_with_same_error_without_running(tmp_path):
    marker = tmp_path / "ran"
    failed = raise_value_error.remote("upstream broke")
    downstream = touch_and_add.remote(str(marker), failed, 1)
    with pytest.raises(ValueError) as info:
        volley.get(downstream)
    assert isinstance(info.value, volley.TaskError)
    assert "upstream broke" in str(info.value)
    # Make sure the failure settled (downstream done) before checking the side effect.
    assert volley.wait([downstream], num_returns=1, timeout=10)[0] == [downstream]
    assert not marker.exists(), "dependent task ran although its argument failed"


def test_failed_keyword_argument_propagates(tmp_path):
    marker = tmp_path / "ran"
    failed = raise_custom.remote()
    downstream = touch_and_add.remote(str(marker), 1, y=failed)
    with pytest.raises(CustomError):
        volley.get(downstream)
    assert not marker.exists()


def test_error_propagates_through_a_chain(tmp_path):
    markers = [tmp_path / f"ran-{i}" for i in range(3)]
    ref = raise_value_error.remote("root cause")
    for m in markers:
        ref = touch_and_add.remote(str(m), ref)
    with pytest.raises(ValueError) as info:
        volley.get(ref)
    assert "root cause" in str(info.value)
    assert not any(m.exists() for m in markers)


def test_ref_to_failed_task_nested_in_list_is_not_resolved():
    failed = raise_value_error.remote("inner failure")
    # The list is not resolved, so the task runs and sees the failure only when it gets.
    assert volley.get(get_inner_and_catch.remote([failed])) == ("caught", True, True)


def test_error_from_nested_get_keeps_original_class():
    with pytest.raises(ValueError) as info:
        volley.get(nested_failure.remote())
    assert isinstance(info.value, volley.TaskError)
    assert "inner failure" in str(info.value)


# --------------------------------------------------------------------------- serialization


def test_unpicklable_argument_raises_serialization_error_at_submit():
    lock = threading.Lock()
    with pytest.raises(volley.SerializationError) as info:
        identity.remote(lock)
    assert isinstance(info.value, volley.VolleyError)
    assert "lock" in str(info.value).lower()


def test_unpicklable_keyword_argument_raises_at_submit():
    with pytest.raises(volley.SerializationError) as info:
        touch_and_add.remote("/nonexistent", 1, y=threading.Lock())
    assert "lock" in str(info.value).lower()


def test_unpicklable_nested_argument_raises_at_submit():
    with pytest.raises(volley.SerializationError) as info:
        identity.remote({"inner": [threading.Lock()]})
    assert "lock" in str(info.value).lower()


def test_function_closing_over_a_lock_raises_at_submit():
    lock = threading.Lock()

    @volley.remote  # decorating must not fail: the error belongs to .remote()
    def uses_lock():
        with lock:
            return 1

    with pytest.raises(volley.SerializationError) as info:
        uses_lock.remote()
    assert "lock" in str(info.value).lower()


def test_put_of_unpicklable_value_raises_serialization_error():
    with pytest.raises(volley.SerializationError) as info:
        volley.put(threading.Lock())
    assert "lock" in str(info.value).lower()


def test_unpicklable_return_value_fails_at_get():
    with pytest.raises(volley.VolleyError) as info:
        volley.get(return_lock.remote(), timeout=30)
    assert not isinstance(info.value, volley.GetTimeoutError)
    assert "lock" in str(info.value).lower()


def test_pool_works_after_serialization_errors():
    for _ in range(3):
        with pytest.raises(volley.SerializationError):
            identity.remote(threading.Lock())
    assert volley.get(identity.remote("still fine")) == "still fine"


def test_unpicklable_function_names_what_it_captures():
    lock = threading.Lock()

    def helper():
        return lock

    @volley.remote
    def uses_lock():
        with lock:
            return 1

    @volley.remote
    def via_helper():
        return helper()

    with pytest.raises(volley.SerializationError) as info:
        uses_lock.remote()
    assert (
        "function 'test_unpicklable_function_names_what_it_captures.<locals>.uses_lock' "
        "captures 'lock' (a _thread.lock): TypeError: cannot pickle" in str(info.value)
    )
    # Through a nested function, and when the function itself is put or passed.
    with pytest.raises(volley.SerializationError) as info:
        via_helper.remote()
    assert "which captures 'lock' (a _thread.lock)" in str(info.value)
    with pytest.raises(volley.SerializationError) as info:
        volley.put(uses_lock._fn)
    assert "captures 'lock' (a _thread.lock)" in str(info.value)
    assert "the value given to put()" not in str(info.value)
    with pytest.raises(volley.SerializationError) as info:
        identity.remote(helper)
    assert "argument 0 (function" in str(info.value)
    assert "which captures 'lock' (a _thread.lock)" in str(info.value)


def test_unpicklable_actor_class_names_what_it_captures():
    lock = threading.Lock()

    @volley.remote
    class Guarded:
        def __init__(self):
            self.guard = lock

    with pytest.raises(volley.SerializationError) as info:
        Guarded.remote()
    text = str(info.value)
    assert "class 'test_unpicklable_actor_class_names_what_it_captures.<locals>.Guarded'" in text
    assert "method '__init__', which captures 'lock' (a _thread.lock)" in text


# --------------------------------------------------------------------------- signatures


@volley.remote
def two_args(a, b):
    return a + b


@volley.remote
def flexible(a, b=1, *rest, key, **extra):
    return a, b, rest, key, extra


def injects_first(fn):
    """A decorator that passes an argument itself: the wrapper's (*args, **kwargs) is what
    callers call, whatever ``__wrapped__`` says."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn("injected", *args, **kwargs)

    return wrapper


@volley.remote
@injects_first
def tagged(tag, x):
    return f"{tag}:{x}"


@volley.remote
class Adder:
    def __init__(self, start, *, step=1):
        self.n = start
        self.step = step

    def add(self, x, y=0):
        self.n += x + y
        return self.n

    @staticmethod
    def pure(x):
        return x

    @classmethod
    def name(cls, suffix):
        return cls.__name__ + suffix


def test_wrong_arguments_raise_type_error_at_remote():
    objects = volley.object_store_stats()["objects"]
    big = bytes(1 << 20)  # would be written to the store if the call went ahead
    cases = [
        (lambda: two_args.remote(big), "two_args() missing 1 required positional argument: 'b'"),
        (lambda: two_args.remote(1, 2, 3), "two_args() takes 2 positional arguments but 3"),
        (lambda: two_args.remote(1, c=big), "two_args() got an unexpected keyword argument 'c'"),
        (lambda: two_args.options(num_cpus=1).remote(), "missing 2 required positional"),
        (lambda: flexible.remote(1), "flexible() missing 1 required keyword-only argument"),
    ]
    for call, message in cases:
        with pytest.raises(TypeError) as info:
            call()
        assert message in str(info.value)
        assert not isinstance(info.value, volley.TaskError)  # raised here, not by a task
    # Nothing was submitted or stored.
    assert volley.object_store_stats()["objects"] == objects
    # Valid calls still work, including every kind of parameter.
    assert volley.get(two_args.remote(1, b=2)) == 3
    assert volley.get(flexible.remote(1, 2, 3, key=4, z=5)) == (1, 2, (3,), 4, {"z": 5})


@volley.remote
def call_inside(fn, *args):
    """Calls a remote function from inside a task (where it arrived pickled)."""
    try:
        return volley.get(fn.remote(*args))
    except TypeError as e:
        return f"TypeError: {e}"


def test_wrong_arguments_raise_at_remote_inside_a_task_too():
    assert volley.get(call_inside.remote(two_args, 1, 2)) == 3
    assert volley.get(call_inside.remote(two_args, 1)) == (
        "TypeError: two_args() missing 1 required positional argument: 'b'"
    )


def test_signature_check_never_refuses_a_valid_call():
    # A wrapper that passes arguments itself: checked against (*args, **kwargs), not the
    # wrapped function's signature.
    assert volley.get(tagged.remote(1)) == "injected:1"
    # Builtins: with a signature inspect can read (len), and without one (max): unchecked.
    assert volley.get(volley.remote(len).remote([1, 2])) == 2
    with pytest.raises(TypeError, match=r"len\(\) takes 1 positional argument but 2"):
        volley.remote(len).remote([1], [2])
    assert volley.get(volley.remote(max).remote(3, 9, 4)) == 9


def test_wrong_arguments_to_an_actor_raise_at_remote():
    with pytest.raises(TypeError, match=r"Adder\(\) missing 1 required positional argument"):
        Adder.remote()
    with pytest.raises(TypeError, match=r"Adder\(\) got an unexpected keyword argument 'stp'"):
        Adder.options(max_restarts=0).remote(1, stp=2)
    a = Adder.remote(10, step=2)
    for call, message in [
        (lambda: a.add.remote(), "Adder.add() missing 1 required positional argument: 'x'"),
        (lambda: a.add.remote(1, 2, 3), "Adder.add() takes from 1 to 2 positional arguments"),
        (lambda: a.pure.remote(1, 2), "Adder.pure() takes 1 positional argument but 2"),
        (lambda: a.name.remote(), "Adder.name() missing 1 required positional argument"),
        (lambda: a.add.options(num_returns=1).remote(y=1), "missing 1 required positional"),
    ]:
        with pytest.raises(TypeError) as info:
            call()
        assert message in str(info.value)
    # The handle still works, and so does a copy of it made in another process.
    assert volley.get(a.add.remote(1, y=2)) == 13
    assert volley.get(a.pure.remote(7)) == 7
    assert volley.get(a.name.remote("!")) == "Adder!"
    assert volley.get(identity.remote(a)).add.remote is not None
    with pytest.raises(TypeError, match="missing 1 required positional argument"):
        volley.get(identity.remote(a)).add.remote()
    # A method on its own, pickled into a task and back, still checks its calls.
    with pytest.raises(TypeError, match=r"Adder.add\(\) missing 1 required positional"):
        volley.get(identity.remote(a.add)).remote()
    assert volley.get(volley.get(identity.remote(a.pure)).remote(5)) == 5


# --------------------------------------------------------------------------- timeouts


def test_get_timeout_on_slow_task():
    ref = sleep_then.remote(1.5, "late")
    with pytest.raises(volley.GetTimeoutError) as info:
        volley.get(ref, timeout=0.1)
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, volley.VolleyError)
    # The timeout only gave up waiting; the task itself is unaffected.
    assert volley.get(ref, timeout=30) == "late"


def test_get_timeout_on_list():
    fast = identity.remote(1)
    slow = sleep_then.remote(1.0, 2)
    with pytest.raises(TimeoutError):
        volley.get([fast, slow], timeout=0.1)
    assert volley.get([fast, slow], timeout=30) == [1, 2]


def test_get_timeout_zero_on_finished_task_returns():
    ref = identity.remote("done")
    volley.wait([ref], num_returns=1, timeout=30)
    assert volley.get(ref, timeout=0) == "done"


# --------------------------------------------------------------------------- retry_exceptions


def test_retry_exceptions_retries_until_success(tmp_path):
    assert volley.get(flaky_exception.remote(str(tmp_path), 2), timeout=60) == 3
    assert len(os.listdir(tmp_path)) == 3


def test_retry_exceptions_gives_up_after_max_retries(tmp_path):
    with pytest.raises(ValueError) as info:
        volley.get(flaky_exception.remote(str(tmp_path), 100), timeout=60)
    assert "flaky attempt 4" in str(info.value)
    assert len(os.listdir(tmp_path)) == 4  # 1 attempt + max_retries=3


def test_exceptions_not_retried_by_default(tmp_path):
    with pytest.raises(ValueError) as info:
        volley.get(always_raises_counting.remote(str(tmp_path)), timeout=60)
    assert "attempt 1 failed" in str(info.value)
    assert len(os.listdir(tmp_path)) == 1


def test_retry_exceptions_via_options(tmp_path):
    ref = always_raises_counting.options(retry_exceptions=True, max_retries=2).remote(str(tmp_path))
    with pytest.raises(ValueError) as info:
        volley.get(ref, timeout=60)
    assert "attempt 3 failed" in str(info.value)
    assert len(os.listdir(tmp_path)) == 3
