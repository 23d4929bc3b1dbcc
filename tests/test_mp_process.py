"""volley.multiprocessing's Process, Pipe, queues and locks where CPython's own tests
(tests/peers/test_cpython_mp.py) do not look: real SIGKILLs from outside, a pipe whose other
end dies, a Process started inside a task, bad input, and Processes on the other nodes of a
real 3-node cluster."""

from __future__ import annotations

import gc
import logging
import os
import pickle
import queue
import select
import signal
import threading
import time

import pytest
from conftest import finish_driver, proc_state, start_driver, write_script

import volley
from volley import _mp_process
from volley import multiprocessing as vmp

pytestmark = pytest.mark.timeout(120)

WAIT = 60  # generous: the machine is shared


def sleep_forever(q=None) -> None:
    if q is not None:
        q.put(os.getpid())
    time.sleep(600)


def hold_pipe_end(conn, ready) -> None:
    ready.put(os.getpid())
    time.sleep(600)


def report(q) -> None:
    parent = vmp.parent_process()
    q.put(
        (
            os.getpid(),
            vmp.current_process().name,
            parent.pid,
            parent.is_alive(),
            volley.get_runtime_context().get_node_id(),
        )
    )


def start_child_from_daemon(q) -> None:
    p = vmp.Process(target=report, args=(q,))
    p.start()


def _alive(pid: int) -> bool:
    return proc_state(pid) not in (None, "Z")


def test_a_process_sigkilled_from_outside_ends_with_minus_9_and_join_returns(volley_shared):
    q = vmp.Queue()
    p = vmp.Process(target=sleep_forever, args=(q,))
    p.start()
    assert q.get(timeout=WAIT) == p.pid  # the pid is the process running the target
    assert p.is_alive() and p.exitcode is None and p in vmp.active_children()
    os.kill(p.pid, signal.SIGKILL)
    p.join(WAIT)
    assert p.exitcode == -signal.SIGKILL, "join returned before the process was reaped"
    assert not p.is_alive() and p not in vmp.active_children()
    assert not _alive(p.pid)


def test_terminate_ends_the_process_with_minus_sigterm_and_its_sentinel_becomes_readable(
    volley_shared,
):
    p = vmp.Process(target=sleep_forever)
    p.start()
    assert select.select([p.sentinel], [], [], 0)[0] == []
    assert p.join(0.05) is None and p.exitcode is None
    p.terminate()
    assert select.select([p.sentinel], [], [], WAIT)[0] == [p.sentinel]
    p.join(WAIT)
    assert p.exitcode == -signal.SIGTERM
    p.close()
    with pytest.raises(ValueError, match="closed"):
        p.is_alive()


def test_a_pipe_whose_other_end_is_killed_raises_eof_and_broken_pipe(volley_shared):
    mine, theirs = vmp.Pipe()
    ready = vmp.Queue()
    p = vmp.Process(target=hold_pipe_end, args=(theirs, ready))
    p.start()
    theirs.close()  # the child's copy is the only one left
    ready.get(timeout=WAIT)
    assert not mine.poll(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.join(WAIT)
    assert mine.poll(WAIT), "EOF did not arrive after the holder of the other end died"
    with pytest.raises(EOFError):
        mine.recv()
    with pytest.raises(EOFError):  # EOF stays EOF
        mine.recv_bytes()
    with pytest.raises(BrokenPipeError):
        mine.send("nobody reads this")


def test_a_closed_connection_refuses_every_op_and_a_message_that_does_not_fit_is_kept(
    volley_shared,
):
    a, b = vmp.Pipe()
    b.send_bytes(b"0123456789")
    buf = bytearray(4)
    with pytest.raises(vmp.BufferTooShort) as e:
        a.recv_bytes_into(buf)
    assert e.value.args == (b"0123456789",)
    b.send_bytes(b"abcdef", 2, 3)
    assert a.recv_bytes() == b"cde"
    b.send({"k": 1})
    assert pickle.loads(a.recv_bytes()) == {"k": 1}  # send's message read as bytes
    b.send_bytes(b"x" * 10)
    with pytest.raises(OSError, match="bad message length"):
        a.recv_bytes(maxlength=5)
    assert a.closed
    for op in (a.recv, a.poll, lambda: a.send(1)):
        with pytest.raises(OSError, match="handle is closed"):
            op()
    with pytest.raises(ValueError, match="offset"):
        b.send_bytes(b"abc", 5)


def test_fileno_is_readable_exactly_while_a_message_waits(volley_shared):
    a, b = vmp.Pipe()
    fd = a.fileno()
    assert select.select([fd], [], [], 0)[0] == []
    b.send("x")
    assert select.select([fd], [], [], WAIT)[0] == [fd]
    assert a.recv() == "x"
    assert select.select([fd], [], [], 0)[0] == []
    b.close()
    assert select.select([fd], [], [], WAIT)[0] == [fd]  # EOF is readable
    with pytest.raises(EOFError):
        a.recv()


def total_of(q, refs) -> None:
    q.put(sum(volley.get(refs[0])))


def test_lambdas_and_closures_travel_by_value(volley_shared):
    q, factor = vmp.Queue(), 7
    p = vmp.Process(target=lambda: q.put(6 * factor))
    p.start()
    assert q.get(timeout=WAIT) == 42
    p.join(WAIT)
    assert p.exitcode == 0


def test_a_ref_passed_to_a_process_outlives_the_parents_copy(volley_shared):
    q = vmp.Queue()
    ref = volley.put(list(range(100_000)))
    p = vmp.Process(target=total_of, args=(q, [ref]))
    p.start()
    del ref
    gc.collect()
    assert q.get(timeout=WAIT) == sum(range(100_000))
    p.join(WAIT)
    assert p.exitcode == 0


def send_many(conn, n) -> None:
    for i in range(n):
        conn.send(i)
    conn.close()


def test_fileno_holds_a_bounded_number_ahead_and_loses_nothing(volley_shared):
    mine, theirs = vmp.Pipe()
    fd = mine.fileno()
    n = 3000  # more than the receiving thread holds ahead (1024) and a pipe's buffer (1024)
    p = vmp.Process(target=send_many, args=(theirs, n))
    p.start()
    theirs.close()
    got = []
    while True:
        assert select.select([fd], [], [], WAIT)[0] == [fd], f"fd not readable after {len(got)}"
        try:
            got.append(mine.recv())
        except EOFError:
            break
    p.join(WAIT)
    assert got == list(range(n)) and p.exitcode == 0
    mine.close()


def test_start_join_and_close_raise_as_multiprocessing_does(volley_shared):
    p = vmp.Process(target=time.sleep, args=(0,))
    with pytest.raises(AssertionError, match="can only join a started process"):
        p.join()
    with pytest.raises(ValueError, match="not started"):
        p.sentinel  # noqa: B018
    p.start()
    with pytest.raises(AssertionError, match="cannot start a process twice"):
        p.start()
    p.join(WAIT)
    assert p.exitcode == 0
    with pytest.raises(TypeError, match="options"):
        vmp.Process(target=print, options=["num_cpus"])


def test_a_target_that_cannot_be_pickled_fails_start_and_starts_nothing(volley_shared):
    lock = threading.Lock()
    p = vmp.Process(target=print, args=(lock,))
    with pytest.raises(pickle.PicklingError, match="could not pickle"):
        p.start()
    assert p.exitcode is None and not p.is_alive() and p not in vmp.active_children()


def explode() -> None:
    raise RuntimeError("this cannot be rebuilt in the child")


class LoadsBadly:
    """Pickles fine; unpickling it (in the child) raises."""

    def __reduce__(self) -> tuple:
        return (explode, ())


def test_a_process_that_cannot_be_rebuilt_in_the_child_ends_with_1_and_says_why(
    volley_shared, capfd
):
    p = vmp.Process(target=print, args=(LoadsBadly(),))
    p.start()
    p.join(WAIT)
    assert p.exitcode == 1
    err = capfd.readouterr().err
    assert "Process could not start" in err and "this cannot be rebuilt" in err


def test_bad_options_fail_start_and_start_nothing(volley_shared):
    for options, error in (({"num_cpus": -1}, ValueError), ({"no_such_option": 1}, TypeError)):
        p = vmp.Process(target=print, options=options)
        with pytest.raises(error):
            p.start()
        assert p.exitcode is None and p not in vmp.active_children()


def test_small_misuses_are_refused_where_they_are_made(volley_shared):
    a, b = vmp.Pipe()
    with pytest.raises(ValueError, match="size is negative"):
        a.send_bytes(b"abc", 0, -1)
    with pytest.raises(ValueError, match="buffer length < offset \\+ size"):
        a.send_bytes(b"abc", 1, 5)
    with pytest.raises(ValueError, match="negative maxlength"):
        b.recv_bytes(-1)
    a.send("held")
    assert b.poll(WAIT)
    with pytest.raises(ValueError, match="recv\\(\\) it first"):
        pickle.dumps(b)  # the message poll() took would be lost or read twice
    assert b.recv() == "held"
    with pytest.raises(RuntimeError, match="already been set"):
        vmp.set_start_method("spawn")
        vmp.set_start_method("fork")
    vmp.set_start_method(None, force=True)
    with pytest.raises(ValueError, match="cannot find context"):
        vmp.set_start_method("threads", force=True)
    with pytest.raises(TypeError):
        vmp.set_executable(3)
    with pytest.raises(TypeError, match="module_names"):
        vmp.set_forkserver_preload([1])
    with pytest.raises(AttributeError, match="no attribute 'Thread'"):
        vmp.get_context().Thread  # noqa: B018


def test_a_daemonic_process_may_not_have_children(volley_shared, capfd):
    q = vmp.Queue()
    p = vmp.Process(target=start_child_from_daemon, args=(q,), daemon=True)
    p.start()
    p.join(WAIT)
    assert p.exitcode == 1
    with pytest.raises(queue.Empty):
        q.get(timeout=0.1)


def test_the_child_knows_its_name_and_its_live_parent(volley_shared):
    q = vmp.Queue()
    p = vmp.Process(target=report, args=(q,), name="reporter")
    p.start()
    pid, name, parent_pid, parent_alive, _ = q.get(timeout=WAIT)
    p.join(WAIT)
    assert (pid, name, parent_pid, parent_alive) == (p.pid, "reporter", os.getpid(), True)
    assert vmp.current_process().name == "MainProcess" and vmp.parent_process() is None


@volley.remote
def run_a_process_in_a_task() -> tuple[int, int, str]:
    q = vmp.Queue()
    p = vmp.Process(target=report, args=(q,))
    p.start()
    pid, _, parent, _, _ = q.get(timeout=WAIT)
    p.join(WAIT)
    return p.exitcode, parent - os.getpid(), str(pid == p.pid)


def test_a_process_started_inside_a_task(volley_shared):
    assert volley.get(run_a_process_in_a_task.remote(), timeout=WAIT) == (0, 0, "True")


def test_join_of_a_joinable_queue_with_a_timeout_says_what_it_waited_for(volley_shared):
    q = vmp.JoinableQueue()
    q.put("job")
    with pytest.raises(TimeoutError, match=r"not marked done with task_done\(\).*1 not even"):
        q.join(timeout=0.05)
    q.get(timeout=WAIT)
    q.task_done()
    assert q.join(timeout=WAIT) is None
    with pytest.raises(ValueError, match="task_done"):
        q.task_done()


def test_a_queue_of_any_context_works_with_a_process_of_any_other(volley_shared):
    for queue_method in vmp.get_all_start_methods():
        q = vmp.get_context(queue_method).Queue()
        for method in vmp.get_all_start_methods():
            p = vmp.get_context(method).Process(target=q.put, args=(method,))
            p.start()
            p.join(WAIT)
            assert (p.exitcode, q.get(timeout=WAIT)) == (0, method)


@volley.remote(num_cpus=2)
def hold_every_cpu(running, release) -> None:
    running.set()
    deadline = time.monotonic() + WAIT
    while not release.is_set() and time.monotonic() < deadline:
        time.sleep(0.01)  # not release.wait(): a task blocked in volley lends its CPUs


@pytest.mark.one_node("a task holds every CPU of the one node the child could go to")
def test_a_start_that_waits_for_room_says_what_it_waits_for(volley_shared, monkeypatch, capsys):
    running, release = vmp.Event(), vmp.Event()
    held = hold_every_cpu.remote(running, release)
    assert running.wait(WAIT)

    class ReleaseOnNotice(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "has not started after" in record.getMessage():
                release.set()  # the notice came: now let the child have the CPUs

    handler = ReleaseOnNotice()
    monkeypatch.setattr(_mp_process, "START_NOTICE_S", 0.05)
    logging.getLogger("volley.multiprocessing").addHandler(handler)
    try:
        p = vmp.Process(target=print, args=("ran",), name="needs-2", options={"num_cpus": 2})
        p.start()
    finally:
        logging.getLogger("volley.multiprocessing").removeHandler(handler)
    p.join(WAIT)
    assert p.exitcode == 0
    volley.get(held, timeout=WAIT)
    err = capsys.readouterr().err
    assert "needs-2" in err and "has not started after" in err and "'num_cpus': 2" in err


def test_locks_take_multiprocessing_arguments(volley_shared):
    lock = vmp.Lock()
    assert lock.acquire(block=True, timeout=-5)  # a negative timeout does not wait
    assert lock.acquire(False, 10) is False  # a timeout without blocking is ignored
    assert lock.acquire(True, 0.01) is False
    lock.release()
    with pytest.raises(RuntimeError):
        lock.release()
    sem = vmp.BoundedSemaphore(1)
    with pytest.raises(ValueError):
        sem.release()
    assert vmp.get_context("forkserver").Lock is vmp.Lock
    with pytest.raises(ValueError, match="cannot find context"):
        vmp.get_context("thread")


def test_at_exit_daemonic_children_are_terminated_and_the_others_joined(tmp_path):
    done = tmp_path / "done"
    script = write_script(
        tmp_path,
        f"""
        import os, time
        from volley import multiprocessing as mp

        def finish(path):
            time.sleep(0.5)
            open(path, "w").write("joined")

        def forever(q):
            q.put(os.getpid())
            time.sleep(600)

        class Shouter(mp.Process):
            def run(self):
                print("shouted by", self.name, flush=True)

        if __name__ == "__main__":
            q = mp.Queue()
            mp.Process(target=finish, args=({str(done)!r},)).start()
            mp.Process(target=forever, args=(q,), daemon=True).start()
            print("daemon", q.get(timeout=60), flush=True)
            s = Shouter(name="shouter")
            s.start()
            s.join()
            print("exitcode", s.exitcode, flush=True)

            # A Process started by a task, then an actor of the script's that dies: its line
            # comes after any line about the Process's end (the node's lines are in order).
            import logging, threading, volley

            @volley.remote
            def in_a_task():
                p = mp.Process(target=print, args=("from the task's child",))
                p.start()
                p.join()
                return p.exitcode

            @volley.remote
            class Marker:
                def die(self):
                    os._exit(0)

            seen = threading.Event()

            class Watch(logging.Handler):
                def emit(self, record):
                    if "'Marker' died" in record.getMessage():
                        seen.set()

            print("task child", volley.get(in_a_task.remote()), flush=True)
            logging.getLogger("volley").addHandler(Watch())
            m = Marker.remote()
            m.die.remote()
            print("marker seen", seen.wait(60), flush=True)
        """,
    )
    proc = start_driver(script)
    out, err = finish_driver(proc, timeout=WAIT)
    assert proc.returncode == 0, err
    assert done.read_text() == "joined", "the script ended before its non-daemon child"
    assert "shouted by shouter" in out and "exitcode 0" in out, out  # a __main__ subclass
    daemon = int(out.split()[1])
    assert not _alive(daemon), "the daemonic child outlived its parent"
    assert "task child 0" in out and "marker seen True" in out, out
    deaths = [line for line in err.splitlines() if "died" in line]
    assert deaths and all("'Marker' died" in line for line in deaths), err


def test_the_paths_for_a_child_on_another_machine(volley_shared, monkeypatch):
    # This machine's pid space named differently: the parent takes the child for one on another
    # machine (a pipe as sentinel, signals sent by a task on the child's node, the life lease
    # for parent_process()), as it does for a child whose pids it cannot see.
    monkeypatch.setattr(_mp_process, "_PIDSPACE", ("another machine", 0))
    q = vmp.Queue()
    p = vmp.Process(target=report, args=(q,))
    p.start()
    assert q.get(timeout=WAIT)[2:4] == (os.getpid(), True)  # parent alive, by the lease
    p.join(WAIT)
    assert p.exitcode == 0
    assert select.select([p.sentinel], [], [], WAIT)[0] == [p.sentinel]

    p = vmp.Process(target=sleep_forever, args=(q,))
    p.start()
    assert q.get(timeout=WAIT) == p.pid
    assert select.select([p.sentinel], [], [], 0)[0] == []
    p.terminate()  # by a task on the child's node
    p.join(WAIT)
    assert p.exitcode == -signal.SIGTERM
    assert select.select([p.sentinel], [], [], WAIT)[0] == [p.sentinel]
    p.close()


def report_parent_death(q) -> None:
    parent = vmp.parent_process()
    q.put(("grandchild up", parent.is_alive()))
    parent.join(WAIT)
    q.put(("parent gone", parent.is_alive()))


def parent_elsewhere(q) -> None:
    # As if this process's children ran on another machine: they follow its life by its lease.
    _mp_process._PIDSPACE = ("another machine", 0)
    vmp.Process(target=report_parent_death, args=(q,)).start()
    time.sleep(600)


def test_a_child_on_another_machine_sees_its_parent_die(volley_shared):
    q = vmp.Queue()
    p = vmp.Process(target=parent_elsewhere, args=(q,))
    p.start()
    assert q.get(timeout=WAIT) == ("grandchild up", True)
    os.kill(p.pid, signal.SIGKILL)
    assert q.get(timeout=WAIT) == ("parent gone", False)
    p.join(WAIT)
    assert p.exitcode == -signal.SIGKILL


def test_a_process_whose_volley_stopped_counts_as_killed(volley_2cpu):
    p = vmp.Process(target=sleep_forever)
    p.start()
    pid = p.pid
    volley.shutdown()  # kills every actor of this session
    assert p.join(WAIT) is None and p.exitcode == -signal.SIGKILL
    assert not p.is_alive() and not _alive(pid)


# ------------------------------------------------------------------ a real 3-node cluster


def test_processes_on_the_other_nodes_of_a_cluster(three_node_cluster, monkeypatch):
    # This module is not importable on the cluster's nodes: the targets travel by value.
    def report(q) -> None:
        parent = vmp.parent_process()
        node = volley.get_runtime_context().get_node_id()
        q.put((os.getpid(), vmp.current_process().name, parent.pid, parent.is_alive(), node))

    def hold_pipe_end(conn, ready) -> None:
        ready.put(os.getpid())
        time.sleep(600)

    ids = {n["address"]: n["node_id"] for n in volley.nodes() if not n["driver"]}
    here = volley.get_runtime_context().get_node_id()
    q, (mine, theirs) = vmp.Queue(), vmp.Pipe()
    ps = []
    for node in ids.values():
        on = volley.NodeAffinitySchedulingStrategy(node)
        ps.append(vmp.Process(target=report, args=(q,), options={"scheduling_strategy": on}))
    for p in ps:
        p.start()
    got = [q.get(timeout=WAIT) for _ in ps]
    for p in ps:
        p.join(WAIT)
    assert sorted(g[4] for g in got) == sorted(ids.values())
    assert {g[0] for g in got} == {p.pid for p in ps}
    assert all(g[2] == os.getpid() and g[3] for g in got)
    assert [p.exitcode for p in ps] == [0, 0, 0]

    # A pipe to a process on another node, which is then killed: EOF here. The nodes share
    # this machine; named as another machine's, the child is killed by a task on its node.
    monkeypatch.setattr(_mp_process, "_PIDSPACE", ("another machine", 0))
    other = next(n for n in ids.values() if n != here)
    on = volley.NodeAffinitySchedulingStrategy(other)
    p = vmp.Process(target=hold_pipe_end, args=(theirs, q), options={"scheduling_strategy": on})
    p.start()
    theirs.close()
    assert q.get(timeout=WAIT) == p.pid
    p.kill()
    p.join(WAIT)
    assert p.exitcode == -signal.SIGKILL
    assert mine.poll(WAIT), "EOF did not arrive from the other node"
    with pytest.raises(EOFError):
        mine.recv()
