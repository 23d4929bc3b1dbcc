"""``volley.multiprocessing.Manager``: proxies of a manager's objects in the driver, tasks and
actors, on every node of a real cluster; concurrent updates; errors that keep their class; a
manager that is shut down or SIGKILLed fails its proxies' calls at once, naming it."""

from __future__ import annotations

import os
import pickle
import signal
import threading

import pytest

import volley
import volley.sync
import volley.util.queue
from volley.multiprocessing import Manager
from volley.multiprocessing.managers import (
    BaseManager,
    BaseProxy,
    ManagerDiedError,
    RemoteError,
    SyncManager,
)

pytestmark = pytest.mark.timeout(120)


class Account:
    """A user's own class, registered with a manager."""

    def __init__(self, balance: int = 0) -> None:
        self.balance = balance
        self._gate = threading.Event()

    def deposit(self, n: int) -> int:
        if n <= 0:
            raise InsufficientFunds(f"a deposit must be positive, not {n}")
        self.balance += n
        return self.balance

    def wait_forever(self) -> None:
        self._gate.wait()

    def pid(self) -> int:
        return os.getpid()


class InsufficientFunds(ValueError):
    pass


class BankManager(BaseManager):
    pass


BankManager.register("Account", Account)


@volley.remote(num_cpus=0.25)
def fill(d, lst, ns, q, i: int) -> str:
    d[i] = i * i
    lst.append(i)
    ns.last = i
    q.put(i)
    return os.environ.get("VOLLEY_NODE_ADDRESS", "here")


@volley.remote(num_cpus=0.25)
def count_up(d, lock, times: int) -> None:
    for _ in range(times):
        with lock:
            d["n"] = d["n"] + 1


@volley.remote(num_cpus=0.25)
def call_proxy(proxy, method: str, *args):
    try:
        return getattr(proxy, method)(*args)
    except Exception as e:
        return e


@volley.remote(num_cpus=0)
class Keeper:
    """An actor holding a proxy passed to its constructor."""

    def __init__(self, d) -> None:
        self.d = d

    def put(self, k, v) -> int:
        self.d[k] = v
        return len(self.d)


# ------------------------------------------------------------------------- one node


@pytest.fixture
def m(volley_shared):
    with Manager() as manager:
        yield manager


def test_containers_hold_values_for_the_driver(m):
    d = m.dict(a=1)
    d["b"] = 2
    assert sorted(d.items()) == [("a", 1), ("b", 2)]
    assert d.get("c", 3) == 3 and "a" in d and len(d) == 2
    lst = m.list([1, 2])
    lst += [3]
    lst *= 2
    assert lst[:] == [1, 2, 3, 1, 2, 3]
    ns = m.Namespace(x=1)
    ns.y = 2
    assert str(ns) == "Namespace(x=1, y=2)"
    v = m.Value("d", 1.5)
    v.value += 1
    assert v.get() == 2.5
    arr = m.Array("i", [1, 2, 3])
    arr[0] = 7
    assert list(arr) == [7, 2, 3]


def test_proxies_travel_to_tasks_and_actors(m):
    d, lst, ns, q = m.dict(), m.list(), m.Namespace(), m.Queue()
    volley.get([fill.remote(d, lst, ns, q, i) for i in range(4)], timeout=60)
    assert dict(d.items()) == {0: 0, 1: 1, 2: 4, 3: 9}
    assert sorted(lst[:]) == [0, 1, 2, 3]
    assert ns.last in range(4)
    assert sorted(q.get(timeout=30) for _ in range(4)) == [0, 1, 2, 3]
    keeper = Keeper.remote(d)
    assert volley.get(keeper.put.remote("k", "v"), timeout=60) == 5
    assert d["k"] == "v"
    # A pickled copy in this process reaches the same object.
    copy = pickle.loads(pickle.dumps(d))
    copy["z"] = 26
    assert d["z"] == 26


def test_eight_tasks_update_one_dict_concurrently(m):
    d, lock = m.dict(n=0), m.Lock()
    volley.get([count_up.remote(d, lock, 25) for _ in range(8)], timeout=90)
    assert d["n"] == 200  # no update lost under the manager's lock
    assert not lock.locked()
    lst = m.list()
    d2, ns, q = m.dict(), m.Namespace(), m.Queue()
    volley.get([fill.remote(d2, lst, ns, q, i) for i in range(8)], timeout=90)
    assert sorted(lst[:]) == list(range(8))  # appends from 8 tasks, none lost
    assert len(d2) == 8


def test_sync_types_are_volley_primitives(m):
    assert isinstance(m.Lock(), volley.sync.Lock)
    assert isinstance(m.RLock(), volley.sync.RLock)
    assert isinstance(m.Event(), volley.sync.Event)
    assert isinstance(m.Condition(), volley.sync.Condition)
    assert isinstance(m.Barrier(2), volley.sync.Barrier)
    assert isinstance(m.Queue(), volley.util.queue.Queue)
    assert isinstance(m.JoinableQueue(), volley.util.queue.JoinableQueue)
    assert isinstance(m.Semaphore(2), volley.sync.Semaphore)
    assert isinstance(m.BoundedSemaphore(2), volley.sync.BoundedSemaphore)


def test_errors_in_the_manager_keep_their_class(m):
    d, lst = m.dict(), m.list()
    with pytest.raises(KeyError) as e:
        d["missing"]
    assert type(e.value) is KeyError
    assert "KeyError" in str(e.value.__cause__)  # the manager's traceback
    with pytest.raises(IndexError):
        lst[3]
    with pytest.raises(AttributeError):
        _ = m.Namespace().nothing
    # In a task, the same.
    err = volley.get(call_proxy.remote(d, "__getitem__", "missing"), timeout=60)
    assert type(err) is KeyError


def test_a_creation_error_keeps_its_class(m):
    with pytest.raises(ValueError, match="at least 1"):
        m.Pool(0)


def test_a_pool_made_by_the_manager_runs_work(m):
    with m.Pool(2) as pool:
        assert pool.map(abs, [-1, -2, 3]) == [1, 2, 3]
        assert pool.apply_async(pow, (2, 5)).get(timeout=60) == 32


def test_an_unpicklable_argument_is_a_pickling_error_of_its_class(m):
    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    d = m.dict()
    with pytest.raises(RuntimeError, match="cannot pickle") as e:
        d["x"] = Unpicklable()
    assert isinstance(e.value, pickle.PicklingError)
    assert len(d) == 0  # nothing half-done


def test_registered_types_errors_and_exposed_methods(volley_shared):
    class Limited(BaseManager):
        pass

    Limited.register("Account", Account, exposed=("deposit",))
    with BankManager() as bank, Limited() as limited:
        acct = bank.Account(10)
        assert acct.deposit(5) == 15
        with pytest.raises(InsufficientFunds, match="positive"):
            acct.deposit(-1)
        assert isinstance(acct, BaseProxy) and hasattr(acct, "pid")
        small = limited.Account()
        assert not hasattr(small, "pid")
        with pytest.raises(RemoteError, match="not in the list of allowed methods"):
            small._callmethod("pid")
        # A task uses the registered type's proxy too.
        assert volley.get(call_proxy.remote(acct, "deposit", 1), timeout=60) == 16


def _environ() -> dict:
    return dict(os.environ)


def _setenv(key: str, value: str) -> None:
    os.environ[key] = value


def _fail(message: str) -> None:
    raise LookupError(message)


class EnvManager(BaseManager):
    pass


EnvManager.register("environ", _environ)


def test_initializer_runs_in_the_manager(volley_shared):
    m = EnvManager()
    m.start(initializer=_setenv, initargs=("VOLLEY_MGR_TEST", "set"))
    try:
        assert m.environ().get("VOLLEY_MGR_TEST") == "set"
        assert "VOLLEY_MGR_TEST" not in os.environ
    finally:
        m.shutdown()
    with pytest.raises(LookupError, match="no config"):
        EnvManager().start(initializer=_fail, initargs=("no config",))
    with pytest.raises(TypeError, match="initializer must be a callable"):
        SyncManager().start(initializer=42)


def test_connect_attaches_to_a_started_manager_by_its_name(volley_shared):
    with BankManager() as bank:
        other = BankManager(address=bank.address)
        other.connect()
        acct = other.Account(3)
        assert acct.deposit(4) == 7
        other.shutdown()  # not its owner: the manager keeps running
        assert bank.Account(1).deposit(1) == 2
    with pytest.raises(ValueError, match="no volley Manager named 'nobody-here'"):
        BankManager(address="nobody-here").connect()


def test_bad_use_is_refused_at_the_call(volley_shared):
    m = SyncManager()
    with pytest.raises(Exception, match="has not been started"):
        m.dict()
    m.start()
    with pytest.raises(Exception, match="already started"):
        m.start()
    m.shutdown()
    m.shutdown()  # a second shutdown does nothing
    with pytest.raises(Exception, match="was shut down"):
        m.list()
    with pytest.raises(TypeError, match="address is its name"):
        BaseManager(address=("127.0.0.1", 5000))
    with pytest.raises(ValueError, match="typeid must be an identifier"):
        BankManager.register("not an identifier", Account)
    with pytest.raises(TypeError, match="callable must be callable"):
        BankManager.register("Thing", 42)


def test_shutdown_fails_the_proxies_and_stops_the_primitives(volley_shared):
    m = Manager()
    d, q = m.dict(), m.Queue()
    name = m.address
    m.shutdown()
    with pytest.raises(ManagerDiedError, match=name):
        d["x"] = 1
    with pytest.raises(volley.exceptions.ChannelClosed):  # the queue was shut down with its manager
        q.put(1, timeout=5)


def test_a_killed_manager_fails_calls_in_flight_and_later_naming_it(volley_shared):
    bank = BankManager()
    bank.start()
    acct = bank.Account()
    pid = acct.pid()
    assert pid != os.getpid()
    stuck = call_proxy.remote(acct, "wait_forever")  # a call that waits in the manager
    os.kill(pid, signal.SIGKILL)
    err = volley.get(stuck, timeout=60)  # the waiting call ends, it does not hang
    assert isinstance(err, ManagerDiedError) and bank.address in str(err)
    with pytest.raises(ManagerDiedError, match=bank.address) as e:
        acct.deposit(1)
    assert isinstance(e.value, ConnectionError) and isinstance(e.value, volley.ActorDiedError)
    bank.shutdown()


# ------------------------------------------------------------------- a cluster of three nodes


def test_proxies_work_in_tasks_on_every_node_of_a_cluster(three_node_cluster):
    ids = {n["address"]: n["node_id"] for n in volley.nodes() if not n["driver"]}
    on = [volley.NodeAffinitySchedulingStrategy(ids[a]) for a in three_node_cluster.addrs]
    with Manager() as m:
        d, lst, ns, q = m.dict(), m.list(), m.Namespace(), m.Queue()
        refs = [
            fill.options(scheduling_strategy=s).remote(d, lst, ns, q, i) for i, s in enumerate(on)
        ]
        assert sorted(volley.get(refs, timeout=120)) == sorted(three_node_cluster.addrs)
        assert dict(d.items()) == {0: 0, 1: 1, 2: 4}
        assert sorted(lst[:]) == [0, 1, 2]
        assert sorted(q.get(timeout=30) for _ in range(3)) == [0, 1, 2]
        d["n"], lock = 0, m.Lock()
        refs = [count_up.options(scheduling_strategy=s).remote(d, lock, 10) for s in on]
        volley.get(refs, timeout=120)
        assert d["n"] == 30


def test_a_container_built_from_another_proxy_of_the_same_manager(m):
    # The manager reads the other proxy itself: it must not wait for itself.
    pets = m.dict(ferrets=2)
    copy = m.dict(pets)
    assert copy.copy() == {"ferrets": 2}
    pets.update(m.dict(cats=1))
    assert sorted(pets.keys()) == ["cats", "ferrets"]
    lst = m.list([1])
    lst.extend(m.list([2, 3]))
    assert lst[:] == [1, 2, 3]
    assert m.list(m.list([4, 5]))[:] == [4, 5]
