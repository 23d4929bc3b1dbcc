"""Placement groups on one machine: bundles reserve resources, tasks and actors run inside them,
removal releases them. (Across nodes: test_cluster.py.)"""

from __future__ import annotations

import os
import threading
import time

import pytest

import volley
from volley import PlacementGroupSchedulingStrategy as InBundle
from volley import placement_group, placement_group_table, remove_placement_group


@pytest.fixture
def two_cpus():
    volley.shutdown()
    volley.init(num_cpus=2, num_gpus=2, resources={"disk": 2})
    yield
    volley.shutdown()


@volley.remote
def task_env(delay: float = 0.0):
    time.sleep(delay)
    return os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES")


def test_a_group_reserves_its_bundles_and_tasks_run_inside(two_cpus):
    pg = placement_group([{"CPU": 1}, {"CPU": 1, "disk": 1}], name="gang")
    assert pg.wait(10)
    assert volley.get(pg.ready()) == pg
    row = placement_group_table(pg)
    assert row["state"] == "CREATED" and row["name"] == "gang"
    assert row["bundles_to_node_id"] == [0, 0]
    # Every CPU is reserved: a plain task waits, tasks in the bundles run.
    plain = task_env.remote()
    inside = [task_env.options(scheduling_strategy=InBundle(pg, i % 2)).remote() for i in range(4)]
    assert len(volley.get(inside, timeout=10)) == 4
    ready, _ = volley.wait([plain], timeout=0.5)
    assert ready == []
    remove_placement_group(pg)
    assert volley.get(plain, timeout=10)
    assert placement_group_table(pg)["state"] == "REMOVED"


def test_one_task_at_a_time_per_one_cpu_bundle(two_cpus):
    pg = placement_group([{"CPU": 1}])
    assert pg.wait(10)

    @volley.remote
    def span(delay):
        t0 = time.monotonic()
        time.sleep(delay)
        return t0, time.monotonic()

    spans = volley.get(
        [span.options(scheduling_strategy=InBundle(pg, 0)).remote(0.2) for _ in range(3)]
    )
    spans.sort()
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end - 0.01  # never two at once in one CPU
    # Bundle -1: any bundle with room.
    assert volley.get(span.options(scheduling_strategy=InBundle(pg)).remote(0))


def test_a_group_waits_for_busy_resources(two_cpus):
    first = placement_group([{"CPU": 2}], strategy="STRICT_PACK")
    assert first.wait(10)
    second = placement_group([{"CPU": 1}])
    assert not second.wait(0.3)
    assert placement_group_table(second)["state"] == "PENDING"
    assert "waiting for resources" in placement_group_table(second)["reason"]
    remove_placement_group(first)
    assert second.wait(10)


def test_a_group_the_machine_can_never_hold_fails_clearly(two_cpus):
    too_big = placement_group([{"CPU": 3}])
    with pytest.raises(volley.UnschedulableError, match="can never be placed"):
        volley.get(too_big.ready(), timeout=10)
    assert placement_group_table(too_big)["state"] == "FAILED"
    # STRICT_SPREAD needs a node per bundle: one machine holds only one.
    spread = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
    with pytest.raises(volley.UnschedulableError, match="STRICT_SPREAD"):
        spread.wait(10)
    # SPREAD and PACK settle for one node.
    assert placement_group([{"CPU": 1}, {"CPU": 1}], strategy="SPREAD").wait(10)


def test_bad_requests_are_refused_at_once(two_cpus):
    with pytest.raises(ValueError, match="non-empty"):
        placement_group([])
    with pytest.raises(ValueError, match="asks for nothing"):
        placement_group([{"CPU": 0}])
    with pytest.raises(ValueError, match="strategy"):
        placement_group([{"CPU": 1}], strategy="CLOSE")
    with pytest.raises(ValueError, match=">= 0"):
        placement_group([{"CPU": -1}])
    pg = placement_group([{"CPU": 1}])
    with pytest.raises(ValueError, match="bundle_index"):
        InBundle(pg, 1)
    with pytest.raises(ValueError, match="more than bundle 0"):
        task_env.options(scheduling_strategy=InBundle(pg, 0), num_cpus=2).remote()
    with pytest.raises(ValueError, match="more than any bundle"):
        task_env.options(scheduling_strategy=InBundle(pg), num_gpus=1).remote()


def test_gpus_of_a_bundle_are_the_ones_its_tasks_see(two_cpus):
    pg = placement_group([{"CPU": 0.5, "GPU": 1}, {"CPU": 0.5, "GPU": 1}])
    assert pg.wait(10)
    seen = volley.get(
        [
            task_env.options(scheduling_strategy=InBundle(pg, i), num_cpus=0.5, num_gpus=1).remote()
            for i in range(2)
        ]
    )
    assert sorted(dev for _, dev in seen) == ["0", "1"]
    # The node's own GPUs are all reserved: a plain GPU task waits.
    plain = task_env.options(num_gpus=1, num_cpus=0).remote()
    assert volley.wait([plain], timeout=0.3)[0] == []
    remove_placement_group(pg)
    assert volley.get(plain, timeout=10)[1] in ("0", "1")


def test_actors_in_a_group_die_with_it(two_cpus):
    @volley.remote
    class Worker:
        def pid(self):
            return os.getpid()

    pg = placement_group([{"CPU": 1}, {"CPU": 1}])
    actors = [
        Worker.options(scheduling_strategy=InBundle(pg, i), num_cpus=1).remote() for i in range(2)
    ]
    assert len(set(volley.get([a.pid.remote() for a in actors], timeout=20))) == 2
    # A third one-CPU actor in the group has no room left: it waits.
    waiting = Worker.options(scheduling_strategy=InBundle(pg), num_cpus=1).remote()
    assert volley.actor_state(waiting)["state"] == "PENDING"
    remove_placement_group(pg)
    for a in actors:
        with pytest.raises(volley.ActorDiedError, match="placement group was removed"):
            volley.get(a.pid.remote(), timeout=10)
    with pytest.raises((volley.ActorCreationError, volley.ActorDiedError), match="removed"):
        volley.get(waiting.pid.remote(), timeout=10)
    # Their CPUs are free again.
    assert volley.get(Worker.options(num_cpus=2).remote().pid.remote(), timeout=20)


def test_a_running_task_is_stopped_and_waiting_ones_fail_when_the_group_goes(two_cpus):
    pg = placement_group([{"CPU": 1}])
    assert pg.wait(10)
    s = InBundle(pg, 0)
    running = task_env.options(scheduling_strategy=s, max_retries=0).remote(60)
    queued = task_env.options(scheduling_strategy=s).remote()
    time.sleep(0.5)
    remove_placement_group(pg)
    with pytest.raises((volley.WorkerCrashedError, volley.UnschedulableError)):
        volley.get(running, timeout=10)
    with pytest.raises(volley.UnschedulableError, match="removed"):
        volley.get(queued, timeout=10)
    with pytest.raises(volley.UnschedulableError, match="removed"):
        volley.get(task_env.options(scheduling_strategy=s).remote(), timeout=10)


def test_removing_before_ready_fails_ready(two_cpus):
    blocker = placement_group([{"CPU": 2}])
    assert blocker.wait(10)
    pending = placement_group([{"CPU": 1}])
    remove_placement_group(pending)
    with pytest.raises(volley.UnschedulableError, match="removed before it was ready"):
        volley.get(pending.ready(), timeout=10)


def test_groups_travel_into_tasks_which_schedule_into_them(two_cpus):
    pg = placement_group([{"CPU": 1}, {"CPU": 1}])
    assert pg.wait(10)

    @volley.remote(num_cpus=0)
    def parent(group):
        # The group arrives whole (ready ref included): children go into its bundles.
        assert group.wait(5)
        return volley.get(
            [task_env.options(scheduling_strategy=InBundle(group, i)).remote() for i in range(2)]
        )

    assert len(volley.get(parent.remote(pg), timeout=20)) == 2


def test_plain_tasks_are_not_held_up_by_tasks_waiting_for_a_bundle(two_cpus):
    pg = placement_group([{"CPU": 1}])
    assert pg.wait(10)
    s = InBundle(pg, 0)
    # One long task holds the bundle; more wait for it, queued ahead of plain tasks.
    volley.get(task_env.options(scheduling_strategy=s).remote(0), timeout=10)
    hold = task_env.options(scheduling_strategy=s).remote(4)
    behind = [task_env.options(scheduling_strategy=s).remote() for _ in range(3)]
    t0 = time.monotonic()
    volley.get([task_env.remote() for _ in range(4)], timeout=10)
    # They ran on the free CPU meanwhile: behind the bundle they would wait 4 s for `hold`.
    assert time.monotonic() - t0 < 3.5
    volley.get([hold, *behind], timeout=20)


def test_concurrent_creation_from_threads(two_cpus):
    groups = []

    def make():
        groups.append(placement_group([{"CPU": 0.25}]))

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({g.id for g in groups}) == 8
    assert all(g.wait(10) for g in groups)
    for g in groups:
        remove_placement_group(g)
    assert placement_group([{"CPU": 2}]).wait(10)
