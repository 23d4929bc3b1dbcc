//! Event-by-event tests of the scheduler's decisions.

use super::harness::*;
use super::*;
use volley_proto::TaskOptions;

#[test]
fn start_spawns_one_worker_per_cpu() {
    let mut h = H::new(3.0);
    h.s.start(&mut h.out);
    assert_eq!(h.connect_spawned().len(), 3);
}

#[test]
fn tasks_go_to_idle_workers_before_any_pipelining() {
    let mut h = H::started(2.0);
    h.submit(vec![]);
    h.submit(vec![]);
    let ex = h.executed();
    assert_eq!(ex.len(), 2);
    assert_ne!(ex[0].0, ex[1].0, "second task must go to the idle worker");
    // Third task: every CPU busy, so it is pipelined behind one of them.
    h.submit(vec![]);
    assert_eq!(h.executed().len(), 1);
    assert_eq!(h.s.stats().cpu_used_milli, 2000);
}

#[test]
fn pipelining_is_bounded_per_worker() {
    let mut h = H::started(1.0);
    for _ in 0..20 {
        h.submit(vec![]);
    }
    let ex = h.executed();
    assert_eq!(ex.len(), 1 + h.s.config().pipeline_depth);
    assert_eq!(h.s.stats().tasks_queued, 20 - ex.len());
}

#[test]
fn finished_worker_steals_tasks_pipelined_behind_a_long_one() {
    let mut h = H::started(2.0);
    for _ in 0..6 {
        h.submit(vec![]);
    }
    let ex = h.executed();
    let (w1, long) = ex[0];
    let w2 = ex[1].0;
    // w2 finishes everything it was given.
    for (w, t) in ex.iter().filter(|(w, _)| *w == w2) {
        h.done(*w, *t, 0);
    }
    let revoke = h.out.iter().find_map(|a| match a {
        Action::Send { worker, msg: NodeToWorker::Revoke { tasks } } if *worker == w1 => {
            Some(tasks.clone())
        }
        _ => None,
    });
    let tasks = revoke.expect("the idle worker must steal from the busy one");
    assert!(!tasks.contains(&long), "the running task is never revoked");
    h.out.clear();
    h.s.tasks_returned(w1, &tasks, &mut h.out);
    let ex = h.executed();
    assert!(!ex.is_empty() && ex.iter().all(|(w, _)| *w == w2));
}

#[test]
fn a_returned_task_is_requeued_even_if_it_became_the_head_meanwhile() {
    let mut h = H::started(2.0);
    for _ in 0..4 {
        h.submit(vec![]);
    }
    let ex = h.executed();
    let w1 = ex[0].0;
    let w1_tasks: Vec<TaskId> = ex.iter().filter(|(w, _)| *w == w1).map(|(_, t)| *t).collect();
    let w2 = ex.iter().find(|(w, _)| *w != w1).expect("two workers").0;
    for (w, t) in ex.iter().filter(|(w, _)| *w == w2) {
        h.done(*w, *t, 0);
    }
    let revoked = h
        .out
        .iter()
        .find_map(|a| match a {
            Action::Send { worker, msg: NodeToWorker::Revoke { tasks } } if *worker == w1 => {
                Some(tasks.clone())
            }
            _ => None,
        })
        .expect("steal");
    h.out.clear();
    // The running task finishes before the worker answers the revoke...
    h.done(w1, w1_tasks[0], 0);
    // ...so the revoked task is now at the head of w1's queue in the scheduler's view.
    h.s.tasks_returned(w1, &revoked, &mut h.out);
    let ex = h.executed();
    for t in &revoked {
        assert!(ex.iter().any(|(_, x)| x == t), "returned task {t:?} must be dispatched again");
    }
    for (w, t) in ex {
        h.done(w, t, 1);
    }
    assert_eq!(h.s.stats().tasks_assigned + h.s.stats().tasks_queued, 0);
    assert_eq!(h.s.stats().cpu_used_milli, 0);
}

#[test]
fn dependencies_wait_in_the_scheduler_and_values_are_shipped() {
    let mut h = H::started(1.0);
    let a = h.submit(vec![]);
    let b = h.submit(vec![a]);
    let ex = h.executed();
    assert_eq!(ex.len(), 1, "b must not be dispatched before a is done");
    h.done(ex[0].0, ex[0].1, 7);
    let deps = h.out.iter().find_map(|x| match x {
        Action::Execute { spec, deps, .. } if spec.task_id == { b.task } => Some(deps.clone()),
        _ => None,
    });
    assert_eq!(deps.expect("b dispatched")[0].data, vec![7]);
}

#[test]
fn failed_dependency_fails_dependents_without_running_them() {
    let mut h = H::started(1.0);
    let a = h.submit(vec![]);
    let b = h.submit(vec![a]);
    let c = h.submit(vec![b]);
    let ex = h.executed();
    let err = ErrorPayload {
        kind: ErrorKind::TaskException,
        task_name: "a".into(),
        message: "boom".into(),
        traceback: String::new(),
        exception: None,
        pid: 1,
    };
    h.s.task_done(ex[0].0, ex[0].1, TaskResult::Err { error: err, retryable: false }, &mut h.out);
    assert!(h.executed().is_empty());
    for id in [a, b, c] {
        assert_eq!(h.error_kind(id), Some(ErrorKind::TaskException));
    }
}

#[test]
fn crash_retries_the_running_task_and_requeues_the_rest_for_free() {
    let mut h = H::started(1.0);
    let opts = TaskOptions { max_retries: 1, ..Default::default() };
    let a = h.submit_opts(vec![], opts.clone());
    let b = h.submit_opts(vec![], opts);
    let ex = h.executed();
    assert_eq!(ex.len(), 2);
    let w = ex[0].0;
    h.s.worker_died(w, WorkerExit::killed("killed by signal 9"), &mut h.out);
    let w2 = h.connect_spawned()[0];
    let ex = h.executed();
    assert_eq!(ex.iter().map(|e| e.1).collect::<Vec<_>>(), vec![a.task, b.task]);
    // Second crash of a: no retries left; b (queued behind) still retried for free.
    h.s.worker_died(w2, WorkerExit::failed("exit code 1"), &mut h.out);
    assert_eq!(h.error_kind(a), Some(ErrorKind::WorkerCrashed));
    let w3 = h.connect_spawned()[0];
    let ex = h.executed();
    assert_eq!(ex, vec![(w3, b.task)]);
    h.done(w3, b.task, 3);
    assert_eq!(h.value(b), Some(3));
    assert_eq!(h.s.stats().worker_crashes, 2, "both deaths were crashes");
}

#[test]
fn blocked_worker_lends_its_cpu_and_gets_a_helper() {
    let mut h = H::started(1.0);
    let outer = h.submit(vec![]);
    let ex = h.executed();
    let w = ex[0].0;
    // The outer task submits an inner one and waits for it.
    let inner_spec = h.spec(vec![], TaskOptions::default());
    let inner = ObjectId::for_return(inner_spec.task_id, 1);
    h.s.submit(Holder::Worker(w), inner_spec, &mut h.out);
    // Every CPU is busy, so the inner task is pipelined behind the outer one...
    assert_eq!(h.executed(), vec![(w, inner.task)]);
    h.s.add_waiter(WaitOwner::Worker { worker: w, req: 1 }, &[inner], usize::MAX, true, &mut h.out);
    assert_eq!(h.s.stats().cpu_used_milli, 0);
    // ...and revoked when the outer one blocks on it.
    let revoked = h.out.iter().find_map(|a| match a {
        Action::Send { worker, msg: NodeToWorker::Revoke { tasks } } if *worker == w => {
            Some(tasks.clone())
        }
        _ => None,
    });
    assert_eq!(revoked, Some(vec![inner.task]));
    h.s.tasks_returned(w, &[inner.task], &mut h.out);
    let helper = h.connect_spawned();
    assert_eq!(helper.len(), 1);
    let ex = h.executed();
    assert_eq!(ex, vec![(helper[0], inner.task)]);
    h.done(helper[0], inner.task, 5);
    let replied =
        h.out.iter().any(|a| matches!(a, Action::GetReply { worker, req: 1, .. } if *worker == w));
    assert!(replied);
    assert_eq!(h.s.stats().cpu_used_milli, 1000);
    h.done(w, outer.task, 1);
    assert_eq!(h.value(outer), Some(1));
}

#[test]
fn references_free_objects_and_their_contents() {
    let mut h = H::started(1.0);
    let inner = ObjectId::for_return(h.ids.next_task(), 0);
    h.s.put(Holder::Local, inner, ObjectData::default(), &mut h.out);
    let outer = ObjectId::for_return(h.ids.next_task(), 0);
    let data = ObjectData { contained: vec![inner], ..Default::default() };
    h.s.put(Holder::Local, outer, data, &mut h.out);
    h.s.decref(Holder::Local, &[inner], &mut h.out);
    assert!(h.s.object_state(&inner).is_some(), "still held by outer's contents");
    h.s.decref(Holder::Local, &[outer], &mut h.out);
    assert!(h.s.object_state(&inner).is_none());
    assert!(h.s.object_state(&outer).is_none());
    assert_eq!(h.s.stats().objects, 0);
}

#[test]
fn cancel_queued_and_running_tasks() {
    let mut h = H::started(1.0);
    let a = h.submit(vec![]);
    let dep = h.submit(vec![a]);
    let ex = h.executed();
    h.s.cancel(dep, false, &mut h.out);
    assert_eq!(h.error_kind(dep), Some(ErrorKind::Cancelled));
    h.s.cancel(a, true, &mut h.out);
    // The worker ends only if it still runs `a` (its Done may be on the way).
    assert!(h.out.iter().any(|x| matches!(x,
        Action::Send { worker, msg: NodeToWorker::KillIfRunning { task } }
            if *worker == ex[0].0 && *task == { a.task })));
    assert!(h.killed().is_empty(), "no unconditional kill");
    h.s.worker_died(ex[0].0, WorkerExit::killed("killed"), &mut h.out);
    assert_eq!(h.error_kind(a), Some(ErrorKind::Cancelled));
}

#[test]
fn a_cancel_that_revoked_a_task_the_worker_then_started_interrupts_it() {
    let mut h = H::started(1.0);
    let a = h.submit(vec![]);
    let b = h.submit(vec![]); // Pipelined behind `a` on the one worker.
    let ex = h.executed();
    assert_eq!(ex.len(), 2, "both sent to the worker: {ex:?}");
    let w = ex[0].0;
    h.out.clear();
    h.s.cancel(b, false, &mut h.out);
    assert!(h
        .out
        .iter()
        .any(|x| matches!(x, Action::Send { msg: NodeToWorker::Revoke { .. }, .. })));
    // The worker finished `a` and started `b` before the revoke arrived.
    h.out.clear();
    h.s.task_done(w, a.task, TaskResult::Ok(vec![ObjectData::default()]), &mut h.out);
    assert!(
        h.out
            .iter()
            .any(|x| matches!(x, Action::Send { worker, msg: NodeToWorker::Cancel { task } }
            if *worker == w && *task == { b.task })),
        "the started task is interrupted: {:?}",
        h.out
    );
    // Its answer to the revoke: it had nothing left to give back.
    h.s.tasks_returned(w, &[], &mut h.out);
    let error = TaskResult::Err {
        error: ErrorPayload {
            kind: ErrorKind::TaskException,
            task_name: "b".into(),
            message: "KeyboardInterrupt".into(),
            traceback: String::new(),
            exception: None,
            pid: 1,
        },
        retryable: false,
    };
    h.s.task_done(w, b.task, error, &mut h.out);
    assert_eq!(h.error_kind(b), Some(ErrorKind::Cancelled));
}

#[test]
fn a_cancelled_task_that_starts_when_the_one_before_it_is_given_back_is_interrupted() {
    // Three tasks on one worker: `a` runs, `b` and `c` wait behind it; both are cancelled
    // (a revoke each). The worker gives `b` back but had already started `c` when `c`'s revoke
    // came. The scheduler hears `a` finish first (so it takes `b` for running), then `b` come
    // back: `c` is the running one now and must be interrupted, not left to run to its end.
    let mut h = H::started(1.0);
    let a = h.submit(vec![]);
    let b = h.submit(vec![]);
    let c = h.submit(vec![]);
    let ex = h.executed();
    assert_eq!(ex.len(), 3, "all three sent to the one worker: {ex:?}");
    let w = ex[0].0;
    h.s.cancel(b, false, &mut h.out);
    h.s.cancel(c, false, &mut h.out);
    h.out.clear();
    h.done(w, a.task, 1);
    h.out.clear();
    h.s.tasks_returned(w, &[b.task], &mut h.out); // Its answer to `b`'s revoke.
    let interrupted = |h: &H, t: TaskId| {
        h.out.iter().any(|x| {
            matches!(x, Action::Send { worker, msg: NodeToWorker::Cancel { task } }
                if *worker == w && *task == t)
        })
    };
    assert!(interrupted(&h, c.task), "the task that started is interrupted: {:?}", h.out);
    assert_eq!(h.error_kind(b), Some(ErrorKind::Cancelled));
    h.s.tasks_returned(w, &[], &mut h.out); // Its answer to `c`'s revoke: it had started.
    let error = TaskResult::Err {
        error: ErrorPayload {
            kind: ErrorKind::TaskException,
            task_name: "c".into(),
            message: "KeyboardInterrupt".into(),
            traceback: String::new(),
            exception: None,
            pid: 1,
        },
        retryable: false,
    };
    h.s.task_done(w, c.task, error, &mut h.out);
    assert_eq!(h.error_kind(c), Some(ErrorKind::Cancelled));
    assert_eq!(h.s.stats().cpu_used_milli, 0);
}

#[test]
fn a_retiring_worker_gives_back_its_queue_for_free_and_is_replaced_once() {
    let mut h = H::started(1.0);
    let opts = TaskOptions { max_retries: 0, ..Default::default() };
    let a = h.submit_opts(vec![], opts.clone());
    let b = h.submit_opts(vec![], opts);
    let ex = h.executed();
    assert_eq!(ex.len(), 2, "b is pipelined behind a");
    let w = ex[0].0;
    // a's task asked its worker to retire (a pool's maxtasksperchild): its result, then Retire.
    h.done(w, a.task, 1);
    h.s.worker_retiring(w, &mut h.out);
    assert!(h.executed().is_empty(), "no more work for a retiring worker");
    let new = h.connect_spawned();
    assert_eq!(new.len(), 1, "a replacement starts at once");
    assert_eq!(h.executed(), vec![(new[0], b.task)]);
    // Its exit is no crash: nothing fails, nothing more is spawned.
    h.s.worker_died(w, WorkerExit::failed("exit code 0"), &mut h.out);
    assert!(h.connect_spawned().is_empty());
    h.done(new[0], b.task, 2);
    assert_eq!((h.value(a), h.value(b)), (Some(1), Some(2)), "b used no retry (it has none)");
    assert_eq!(h.s.stats().workers_alive, 1);
}

#[test]
fn a_dead_worker_is_replaced_even_when_nothing_is_queued() {
    let mut h = H::started(2.0);
    let (w, _) = h.s.worker_pids()[0];
    h.s.worker_died(w, WorkerExit::killed("killed by signal 9"), &mut h.out);
    assert_eq!(h.connect_spawned().len(), 1);
    assert_eq!(h.s.stats().workers_alive, 2);
}

#[test]
fn impossible_cpu_request_fails_at_once() {
    let mut h = H::started(2.0);
    let a = h.submit_opts(vec![], TaskOptions { cpu_milli: 3000, ..Default::default() });
    assert_eq!(h.error_kind(a), Some(ErrorKind::Unschedulable));
}

#[test]
fn workers_that_never_start_fail_the_queue_instead_of_hanging() {
    let mut h = H::new(1.0);
    h.s.start(&mut h.out);
    let a = h.submit(vec![]);
    for i in 0..20 {
        h.s.tick(i * 1000, &mut h.out); // Past each back-off.
        for w in h.drain_spawned() {
            h.s.worker_died(w, WorkerExit::failed("exec failed"), &mut h.out);
        }
    }
    assert_eq!(h.error_kind(a), Some(ErrorKind::WorkerStartFailed));
    // Later tasks fail at once too, instead of waiting for workers that never come.
    let b = h.submit(vec![]);
    assert_eq!(h.error_kind(b), Some(ErrorKind::WorkerStartFailed));
}

#[test]
fn a_nested_task_past_the_worker_cap_fails_naming_the_cap_instead_of_waiting() {
    let mut cfg = Config::with_cpus(1.0);
    cfg.max_workers = 2;
    let mut h = H::with_config(cfg);
    h.s.start(&mut h.out);
    h.connect_spawned();
    // Each level runs on a worker, submits the next and blocks on it.
    let mut levels = vec![h.submit(vec![])];
    let mut ex = h.executed();
    let mut answered = false;
    for req in 1..=2 {
        let w = ex[0].0;
        let spec = h.spec(vec![], TaskOptions::default());
        let next = ObjectId::for_return(spec.task_id, 1);
        h.s.submit(Holder::Worker(w), spec, &mut h.out);
        h.s.add_waiter(WaitOwner::Worker { worker: w, req }, &[next], usize::MAX, true, &mut h.out);
        h.s.tasks_returned(w, &[next.task], &mut h.out);
        answered = h.out.iter().any(|a| matches!(a, Action::GetReply { req: 2, .. }));
        levels.push(next);
        h.connect_spawned();
        ex = h.executed();
        if req == 1 {
            assert_eq!(ex.len(), 1, "a second worker runs level 1");
        }
    }
    // Level 2 has no worker to run on, and none can come: it fails at once, saying why.
    match h.s.object_state(&levels[2]) {
        Some(ObjectState::Failed(e)) => {
            assert_eq!(e.kind, ErrorKind::Unschedulable);
            assert!(
                e.message.contains("max_workers") && e.message.contains("all 2"),
                "{}",
                e.message
            );
        }
        other => panic!("level 2 is {other:?}"),
    }
    // The level waiting on it is answered (with the error), so the chain unwinds.
    assert!(answered);
}

#[test]
fn workers_killed_before_they_connect_are_replaced_without_failing_tasks() {
    let mut h = H::new(1.0);
    h.s.start(&mut h.out);
    let a = h.submit(vec![]);
    let mut now = 0;
    // Far more kills than max_start_failures: each is replaced (after a back-off).
    for _ in 0..20 {
        for w in h.next_spawns(&mut now) {
            h.s.worker_died(w, WorkerExit::killed("killed by signal 9 (SIGKILL)"), &mut h.out);
        }
    }
    assert_eq!(h.error_kind(a), None, "a kill from outside is not a failure to start");
    let w = h.next_spawns(&mut now);
    assert!(h.s.worker_connected(w[0], 77, &mut h.out));
    let ex = h.executed();
    assert_eq!(ex.len(), 1);
    h.done(ex[0].0, ex[0].1, 9);
    assert_eq!(h.value(a), Some(9));
}

#[test]
fn spawns_back_off_while_workers_keep_dying_before_they_connect() {
    let mut h = H::new(1.0);
    h.s.start(&mut h.out);
    h.submit(vec![]);
    let mut total = 0;
    // Within one second of the scheduler's clock, ten kills in a row get far fewer spawns
    // than an immediate replacement each would.
    for t in 0..10 {
        for w in h.spawned() {
            total += 1;
            h.s.worker_died(w, WorkerExit::killed("killed"), &mut h.out);
        }
        h.s.tick(t * 100, &mut h.out);
    }
    assert!((3..=8).contains(&total), "{total} spawns");
}

#[test]
fn workers_that_fail_to_start_are_tried_again_and_the_node_recovers() {
    let mut h = H::new(1.0);
    h.s.start(&mut h.out);
    let a = h.submit(vec![]);
    let mut now = 0;
    while h.error_kind(a).is_none() {
        for w in h.spawned() {
            h.s.worker_died(w, WorkerExit::failed("exit code 1"), &mut h.out);
        }
        now += 100;
        h.s.tick(now, &mut h.out);
        assert!(now < 60_000, "the queue never failed");
    }
    assert_eq!(h.error_kind(a), Some(ErrorKind::WorkerStartFailed));
    // The interpreter is mended: the next probe connects, and tasks run again.
    let w = h.next_spawns(&mut now);
    assert!(h.s.worker_connected(w[0], 78, &mut h.out));
    let b = h.submit(vec![]);
    let ex = h.executed();
    assert_eq!(ex.len(), 1);
    h.done(ex[0].0, ex[0].1, 4);
    assert_eq!(h.value(b), Some(4));
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever order tasks finish and workers die in, every submitted task ends with a value
        /// or an error, CPU accounting returns to zero, and nothing is left behind.
        #[test]
        fn every_task_ends_and_accounting_balances(ops in proptest::collection::vec(0u8..4, 1..60)) {
            let mut h = H::started(2.0);
            let mut ids = Vec::new();
            for op in ops {
                match op {
                    0 | 1 => ids.push(h.submit(vec![])),
                    2 => {
                        let ex: Vec<_> = h.out.iter().filter_map(|a| match a {
                            Action::Execute { worker, spec, .. } => Some((*worker, spec.task_id)),
                            _ => None,
                        }).collect();
                        h.out.clear();
                        for (w, t) in ex { h.done(w, t, 1); }
                    }
                    _ => {
                        if let Some((w, _)) = h.s.worker_pids().first().copied() {
                            h.s.worker_died(w, WorkerExit::killed("killed"), &mut h.out);
                        }
                    }
                }
                h.connect_spawned_keep();
            }
            // Drain: finish whatever is dispatched until nothing is left.
            for _ in 0..500 {
                h.connect_spawned_keep();
                let ex = h.executed();
                if ex.is_empty() { break; }
                for (w, t) in ex { h.done(w, t, 1); }
            }
            for id in &ids {
                prop_assert!(h.s.is_ready(id));
            }
            prop_assert_eq!(h.s.stats().cpu_used_milli, 0);
            prop_assert_eq!(h.s.stats().tasks_assigned + h.s.stats().tasks_queued, 0);
        }
    }
}

// ------------------------------------------------------------------------------ peers

#[test]
fn a_node_without_room_spills_to_peers_up_to_their_cpus() {
    let mut h = H::started(1.0);
    h.s.set_peers(vec![peer(7, 2)], &mut h.out);
    let dep = ObjectId::for_return(h.ids.next_task(), 1);
    h.s.put(Holder::Local, dep, ObjectData::inline(vec![1], Vec::new(), Vec::new()), &mut h.out);
    let depth = 2 * peers::PEER_DEPTH as usize; // the peer has 2 CPUs
    let refs: Vec<ObjectId> = (0..depth + 12).map(|_| h.submit(vec![dep])).collect();
    assert_eq!(h.executed().len(), 9, "one runs here, eight queue behind it");
    let spilled = h.spilled();
    assert_eq!(spilled.len(), depth, "PEER_DEPTH per CPU of the peer: {spilled:?}");
    assert!(spilled.iter().all(|(p, _, objects)| *p == NodeId(7) && *objects == 1));
    // The peer finishes one: its result is here, and the last task goes there.
    let (_, tid, _) = spilled[0];
    let value = ObjectData::inline(vec![42], Vec::new(), Vec::new());
    h.s.peer_done(NodeId(7), tid, TaskResult::Ok(vec![value]), Vec::new(), &mut h.out);
    assert!(matches!(h.s.object_state(&ObjectId::for_return(tid, 1)), Some(ObjectState::Ready(_))));
    assert_eq!(h.spilled().len(), 1);
    assert_eq!(h.s.stats().tasks_remote, depth);
    assert!(refs.contains(&ObjectId::for_return(tid, 1)));
}

#[test]
fn a_task_no_node_can_run_says_what_the_cluster_has() {
    let mut h = H::new(0.0);
    let mut gpu_node = peer(1, 1);
    gpu_node.resources = vec![("GPU".to_string(), 1000, 1000)];
    h.s.set_peers(vec![gpu_node, peer(2, 2)], &mut h.out);
    let message = |h: &H, id: ObjectId| match h.s.object_state(&id) {
        Some(ObjectState::Failed(e)) if e.kind == ErrorKind::Unschedulable => e.message.clone(),
        other => panic!("not unschedulable: {other:?}"),
    };
    let gpu = |cpus: u32, gpus: u64| TaskOptions {
        cpu_milli: cpus,
        resources: vec![("GPU".to_string(), gpus)],
        ..TaskOptions::default()
    };
    let big = h.submit_opts(vec![], TaskOptions { cpu_milli: 3000, ..Default::default() });
    assert!(message(&h, big).contains("needs 3 CPUs but no node in the cluster has more than 2"));
    let gpus = h.submit_opts(vec![], gpu(1000, 1500));
    assert!(message(&h, gpus).contains("needs 1.5 GPU but no node in the cluster has more than 1"));
    // 2 CPUs are on one node and a GPU on another, but no node has both.
    let both = h.submit_opts(vec![], gpu(2000, 1000));
    assert!(
        message(&h, both).contains("needs 2 CPUs and 1 GPU on one node"),
        "{}",
        message(&h, both)
    );
    // What one node can hold goes there.
    let fits = h.submit_opts(vec![], gpu(1000, 1000));
    assert_eq!(
        h.spilled().iter().map(|s| (s.0, s.1)).collect::<Vec<_>>(),
        [(NodeId(1), fits.task)]
    );
}

#[test]
fn a_dead_peers_tasks_are_retried_or_fail() {
    let mut h = H::new(0.0);
    h.s.set_peers(vec![peer(1, 1), peer(2, 1)], &mut h.out);
    // Retried when its peer dies (onto the other one), and again when that one dies.
    let retried =
        h.submit_opts(Vec::new(), TaskOptions { max_retries: 2, ..TaskOptions::default() });
    let failed =
        h.submit_opts(Vec::new(), TaskOptions { max_retries: 0, ..TaskOptions::default() });
    let spilled = h.spilled();
    assert_eq!(spilled.len(), 2);
    let on = |id: ObjectId| spilled.iter().find(|s| s.1 == { id.task }).map(|s| s.0);
    assert_ne!(on(retried), on(failed), "one per peer");
    for (peer, task, _) in &spilled {
        h.s.peer_started(*peer, *task); // Both were running there.
    }
    // Both peers die; then a new one joins.
    h.s.peer_gone(NodeId(1), "killed", &mut h.out);
    h.s.peer_gone(NodeId(2), "killed", &mut h.out);
    assert!(
        matches!(h.s.object_state(&failed), Some(ObjectState::Failed(e)) if e.kind == ErrorKind::WorkerCrashed)
    );
    assert!(matches!(h.s.object_state(&retried), Some(ObjectState::Pending)));
    assert_eq!(
        h.spilled().iter().map(|s| (s.0, s.1)).collect::<Vec<_>>(),
        vec![(NodeId(2), retried.task)]
    );
    h.s.set_peers(vec![peer(3, 1)], &mut h.out);
    assert_eq!(
        h.spilled().iter().map(|s| (s.0, s.1)).collect::<Vec<_>>(),
        vec![(NodeId(3), retried.task)]
    );
}

#[test]
fn only_the_tasks_a_dead_peer_started_use_a_retry() {
    let mut h = H::new(0.0);
    h.s.set_peers(vec![peer(1, 1)], &mut h.out);
    let no_retries = TaskOptions { max_retries: 0, ..TaskOptions::default() };
    let ids: Vec<ObjectId> =
        (0..10).map(|_| h.submit_opts(Vec::new(), no_retries.clone())).collect();
    assert_eq!(h.spilled().len(), 10, "one running there, nine queued behind it");
    h.s.peer_started(NodeId(1), ids[0].task);
    h.s.peer_gone(NodeId(1), "killed", &mut h.out);
    // The one the 1-CPU node said it started fails (no retries). The nine others never
    // started there: they wait for a place to run, their retries untouched.
    assert!(
        matches!(h.s.object_state(&ids[0]), Some(ObjectState::Failed(e)) if e.kind == ErrorKind::WorkerCrashed)
    );
    for id in &ids[1..] {
        assert!(matches!(h.s.object_state(id), Some(ObjectState::Pending)));
    }
    h.s.set_peers(vec![peer(2, 1)], &mut h.out);
    assert_eq!(h.spilled().len(), 9);
}

#[test]
fn a_peers_task_is_reported_started_when_a_worker_starts_it_not_while_queued() {
    let mut h = H::started(1.0);
    let started = |h: &H| -> Vec<TaskId> {
        h.out
            .iter()
            .filter_map(|a| match a {
                Action::PeerStarted { peer, task } if *peer == NodeId(5) => Some(*task),
                _ => None,
            })
            .collect()
    };
    let first = h.spec(vec![], TaskOptions::default());
    let second = h.spec(vec![], TaskOptions::default());
    let (t1, t2) = (first.task_id, second.task_id);
    h.sent_by(NodeId(5), first, vec![]);
    h.sent_by(NodeId(5), second, vec![]);
    // One CPU: the first runs, the second is pipelined behind it on the same worker.
    let ex = h.executed();
    assert_eq!(ex.len(), 2);
    assert_eq!(started(&h), vec![t1]);
    h.out.clear();
    h.done(ex[0].0, t1, 1);
    assert_eq!(started(&h), vec![t2], "reported once it is the one running");
}

#[test]
fn a_task_from_a_peer_reports_back_and_releases_what_it_held() {
    let mut h = H::started(1.0);
    let arg = ObjectId::for_return(h.ids.next_task(), 1);
    let spec = h.spec(vec![arg], TaskOptions::default());
    let tid = spec.task_id;
    let objects = vec![(arg, ObjectData::inline(vec![5], Vec::new(), Vec::new()))];
    h.s.accept_peer_task(
        NodeId(9),
        spec,
        None,
        objects,
        vec![],
        vec![],
        vec![],
        vec![],
        &mut h.out,
    );
    let ex = h.executed();
    assert_eq!(ex.len(), 1);
    let value = ObjectData::inline(vec![6], Vec::new(), Vec::new());
    h.s.task_done(ex[0].0, tid, TaskResult::Ok(vec![value]), &mut h.out);
    let done = h.peer_results();
    assert_eq!(done, vec![(NodeId(9), tid, vec![6])]);
    assert_eq!(h.s.stats().objects, 0, "the argument and the result are freed here");
}

#[test]
fn a_task_sent_again_while_its_orphaned_attempt_runs_waits_for_it() {
    // The peer was thought gone (its attempt here cancelled while running), came back and sent
    // the same task again: the old attempt's outcome must not answer the new one.
    let mut h = H::started(1.0);
    let spec = h.spec(vec![], TaskOptions::default());
    let tid = spec.task_id;
    let send = |h: &mut H, spec: TaskSpec| {
        h.s.accept_peer_task(
            NodeId(9),
            spec,
            None,
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
            &mut h.out,
        )
    };
    send(&mut h, spec.clone());
    let first = h.executed();
    assert_eq!(first.len(), 1);
    h.s.peer_gone(NodeId(9), "missed its heartbeats", &mut h.out);
    h.out.clear();
    send(&mut h, spec);
    assert!(h.executed().is_empty(), "not started while the old attempt runs");
    let interrupted = ErrorPayload {
        kind: ErrorKind::TaskException,
        task_name: "t".into(),
        message: "KeyboardInterrupt".into(),
        traceback: String::new(),
        exception: None,
        pid: 1,
    };
    h.s.task_done(
        first[0].0,
        tid,
        TaskResult::Err { error: interrupted, retryable: false },
        &mut h.out,
    );
    assert!(
        !h.out.iter().any(|a| matches!(a, Action::PeerDone { .. })),
        "the orphaned attempt's outcome goes nowhere: {:?}",
        h.out
    );
    let second = h.executed();
    assert_eq!(second.len(), 1, "the new attempt starts once the old one ended");
    let value = ObjectData::inline(vec![7], Vec::new(), Vec::new());
    h.s.task_done(second[0].0, tid, TaskResult::Ok(vec![value]), &mut h.out);
    let done = h.peer_results();
    assert_eq!(done, vec![(NodeId(9), tid, vec![7])]);
}

#[test]
fn tasks_are_unschedulable_only_if_no_node_could_run_them() {
    let mut h = H::new(0.0);
    h.s.set_peers(vec![peer(1, 4)], &mut h.out);
    let ok = h.submit_opts(Vec::new(), TaskOptions { cpu_milli: 4000, ..TaskOptions::default() });
    let never =
        h.submit_opts(Vec::new(), TaskOptions { cpu_milli: 8000, ..TaskOptions::default() });
    assert!(matches!(h.s.object_state(&ok), Some(ObjectState::Pending)));
    assert!(
        matches!(h.s.object_state(&never), Some(ObjectState::Failed(e)) if e.kind == ErrorKind::Unschedulable)
    );
}

#[test]
fn a_task_waiting_for_its_node_does_not_hold_up_the_others() {
    let mut h = H::new(0.0);
    h.s.set_node_id(NodeId(1));
    h.s.set_peers(vec![peer(2, 1), peer(3, 1)], &mut h.out);
    let on2 =
        TaskOptions { strategy: Strategy::Node { id: 2, soft: false }, ..TaskOptions::default() };
    // Node 2 takes PEER_DEPTH of them; the next waits for it, and a plain task goes past it.
    let depth = peers::PEER_DEPTH as usize;
    let pinned: Vec<ObjectId> =
        (0..=depth).map(|_| h.submit_opts(Vec::new(), on2.clone())).collect();
    let plain = h.submit(Vec::new());
    let spilled = h.spilled();
    assert_eq!(spilled.iter().filter(|s| s.0 == NodeId(2)).count(), depth);
    assert!(spilled.contains(&(NodeId(3), plain.task, 0)));
    // When node 2 finishes one, the waiting one goes there, not to idle node 3.
    let value = ObjectData::inline(vec![1], Vec::new(), Vec::new());
    h.s.peer_done(NodeId(2), pinned[0].task, TaskResult::Ok(vec![value]), Vec::new(), &mut h.out);
    assert_eq!(h.spilled(), vec![(NodeId(2), pinned[depth].task, 0)]);
}

#[test]
fn tasks_queued_on_a_busy_peer_come_back_when_another_has_room() {
    let mut h = H::new(0.0); // a driver's node: everything goes to peers
    h.s.set_peers(vec![peer(1, 1), peer(2, 1)], &mut h.out);
    let n = 2 * peers::PEER_DEPTH as usize;
    let refs: Vec<ObjectId> = (0..n).map(|_| h.submit(Vec::new())).collect();
    let spilled = h.spilled();
    assert_eq!(spilled.len(), n);
    // Peer 2 finishes all of its tasks; peer 1 is stuck on its first.
    let value = || TaskResult::Ok(vec![ObjectData::inline(vec![1], Vec::new(), Vec::new())]);
    for (p, t, _) in spilled.iter().filter(|s| s.0 == NodeId(2)) {
        h.s.peer_done(*p, *t, value(), Vec::new(), &mut h.out);
    }
    let steals: Vec<_> = h
        .out
        .iter()
        .filter_map(|a| match a {
            Action::PeerSteal { peer, max } => Some((*peer, *max)),
            _ => None,
        })
        .collect();
    let half = (peers::PEER_DEPTH - 1).div_ceil(2);
    assert_eq!(steals, vec![(NodeId(1), half)], "asked once, for half of what waits there");
    // Peer 1 gives back the newest ones; they go to peer 2.
    let back: Vec<TaskId> = spilled
        .iter()
        .filter(|s| s.0 == NodeId(1))
        .map(|s| s.1)
        .rev()
        .take(half as usize)
        .collect();
    h.out.clear();
    h.s.peer_returned(NodeId(1), &back, &mut h.out);
    let again = h.spilled();
    assert_eq!(again.len(), back.len());
    assert!(again.iter().all(|(p, t, _)| *p == NodeId(2) && back.contains(t)));
    assert!(refs.iter().all(|r| h.s.object_state(r).is_some()));
}

#[test]
fn a_peer_gives_back_queued_and_pipelined_tasks_it_has_not_started() {
    let mut h = H::started(1.0);
    h.s.set_recording(true);
    let mut tids = Vec::new();
    for _ in 0..12 {
        let spec = h.spec(Vec::new(), TaskOptions::default());
        tids.push(spec.task_id);
        h.sent_by(NodeId(9), spec, vec![]);
    }
    let ex = h.executed();
    assert_eq!(ex.len(), 9, "one running, eight pipelined behind it, three queued");
    h.out.clear();
    h.s.peer_steal(NodeId(9), 5, &mut h.out);
    let returned: Vec<TaskId> = h
        .out
        .iter()
        .flat_map(|a| match a {
            Action::PeerReturned { peer, tasks } if *peer == NodeId(9) => tasks.clone(),
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(returned, vec![tids[11], tids[10], tids[9]], "the queued ones at once");
    // Each noted as given back, by the number its submission got here (the state API drops
    // this node's row of it: the sender's tells of it from then on).
    let mut events = Vec::new();
    h.s.swap_events(&mut events);
    let seq_of = |tid: TaskId| {
        events.iter().find_map(|e| match e {
            TaskEvent::Submitted { seq, spec, .. } if spec.task_id == tid => Some(*seq),
            _ => None,
        })
    };
    let given: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            TaskEvent::Returned { seq } => Some(*seq),
            _ => None,
        })
        .collect();
    let expected: Vec<u64> = [11, 10, 9].iter().filter_map(|i| seq_of(tids[*i])).collect();
    assert_eq!((given.len(), given), (3, expected));
    let revoke: Vec<TaskId> = h
        .out
        .iter()
        .flat_map(|a| match a {
            Action::Send { msg: NodeToWorker::Revoke { tasks }, .. } => tasks.clone(),
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(revoke, vec![tids[8], tids[7]], "then the newest pipelined ones");
    // The worker had started neither... except it gives back only one.
    h.out.clear();
    h.s.tasks_returned(ex[0].0, &[tids[8]], &mut h.out);
    assert!(h.out.iter().any(|a| matches!(a,
        Action::PeerReturned { peer, tasks } if *peer == NodeId(9) && tasks == &vec![tids[8]])));
    assert_eq!(h.s.stats().objects, 8, "the four returned tasks' results are gone here");
}

#[test]
fn placement_group_bundles_are_reserved_and_used() {
    use volley_proto::{PgSpec, PgStrategy};
    let mut h = H::started(2.0);
    let ready = ObjectId::for_return(h.ids.next_task(), 0);
    let spec = PgSpec {
        id: "g1".into(),
        name: String::new(),
        bundles: vec![vec![("CPU".into(), 1000)], vec![("CPU".into(), 1000)]],
        strategy: PgStrategy::Pack,
        ready,
        value: ObjectData::inline(vec![7], Vec::new(), Vec::new()),
    };
    h.s.create_pg(Holder::Local, spec, &mut h.out).expect("valid");
    assert_eq!(h.value(ready), Some(7));
    // Both CPUs are reserved: a plain task waits, one in bundle 0 runs.
    let plain = h.submit(Vec::new());
    assert!(h.executed().is_empty());
    let res = vec![
        ("pg:g1:0:CPU".to_string(), 1000),
        ("pg:g1:0:bundle".to_string(), 1),
        ("pg:g1:CPU".to_string(), 1000),
        ("pg:g1:bundle".to_string(), 1),
    ];
    let inside = h.submit_opts(
        Vec::new(),
        TaskOptions { cpu_milli: 0, resources: res.clone(), ..TaskOptions::default() },
    );
    let ex = h.executed();
    assert_eq!(ex.len(), 1);
    assert_eq!(ex[0].1, { inside.task });
    // Removal frees the CPUs (the plain task runs) and fails what still asks for the group.
    h.s.remove_pg("g1", &mut h.out);
    // The worker ends if it still runs the group's task, not if it moved on (it was
    // killed by its id, and the task it had started since died with it).
    assert!(h.out.iter().any(|a| matches!(a,
        Action::Send { worker, msg: NodeToWorker::KillIfRunning { task } }
            if *worker == ex[0].0 && *task == { inside.task })));
    assert!(h.killed().is_empty(), "no unconditional kill");
    let later = h.submit_opts(
        Vec::new(),
        TaskOptions { cpu_milli: 0, resources: res, ..TaskOptions::default() },
    );
    assert_eq!(h.error_kind(later), Some(ErrorKind::Unschedulable));
    assert!(h.executed().iter().any(|(_, t)| *t == { plain.task }));
}

#[test]
fn a_large_value_goes_to_a_peer_once_and_is_let_go_with_ours() {
    use volley_proto::ShmLoc;
    let mut h = H::new(0.0);
    h.s.set_peers(vec![peer(1, 1)], &mut h.out);
    let big = ObjectId::for_return(h.ids.next_task(), 1);
    let shm = ShmLoc { seg: 1, offset: 0, size: 4096, data_len: 8, buffer_lens: Vec::new() };
    let value = ObjectData { shm: Some(Box::new(shm)), ..Default::default() };
    h.s.put(Holder::Local, big, value, &mut h.out);
    let refs: Vec<ObjectId> = (0..3).map(|_| h.submit(vec![big])).collect();
    let sent: Vec<(usize, usize, Vec<ObjectId>)> = h
        .out
        .iter()
        .filter_map(|a| match a {
            Action::Spill { objects, cached, fetch, .. } => {
                Some((objects.len(), fetch.len(), cached.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(sent, vec![(0, 1, vec![]), (0, 0, vec![big]), (0, 0, vec![big])], "pulled once");
    // Once every task is done and we drop ours, the peer is told to let its copy go.
    let done = || TaskResult::Ok(vec![ObjectData::inline(vec![1], Vec::new(), Vec::new())]);
    for r in &refs {
        h.s.peer_done(NodeId(1), r.task, done(), Vec::new(), &mut h.out);
    }
    h.out.clear();
    h.s.decref(Holder::Local, &[big], &mut h.out);
    assert!(h.out.iter().any(
        |a| matches!(a, Action::PeerRelease { peer, ids } if *peer == NodeId(1) && ids == &vec![big])
    ));
}

#[test]
fn a_peer_keeps_copies_until_their_owner_lets_them_go() {
    use volley_proto::ShmLoc;
    let mut h = H::started(1.0);
    let big = ObjectId::for_return(h.ids.next_task(), 1);
    let shm = ShmLoc { seg: 1, offset: 0, size: 4096, data_len: 8, buffer_lens: Vec::new() };
    let value = ObjectData { shm: Some(Box::new(shm)), ..Default::default() };
    let first = h.spec(vec![big], TaskOptions::default());
    let second = h.spec(vec![big], TaskOptions::default());
    let (t1, t2) = (first.task_id, second.task_id);
    let objects = vec![(big, value)];
    h.s.accept_peer_task(
        NodeId(9),
        first,
        None,
        objects,
        vec![],
        vec![],
        vec![],
        vec![],
        &mut h.out,
    );
    let w = h.executed()[0].0;
    h.s.task_done(w, t1, TaskResult::Ok(vec![ObjectData::default()]), &mut h.out);
    assert!(h.s.is_ready(&big), "kept after the task");
    h.sent_by(NodeId(9), second, vec![big]);
    assert_eq!(h.executed().len(), 1, "runs with the kept copy");
    h.s.task_done(w, t2, TaskResult::Ok(vec![ObjectData::default()]), &mut h.out);
    h.s.peer_release(NodeId(9), &[big], &mut h.out);
    assert!(h.s.object_state(&big).is_none(), "let go");
    // A task naming a copy that is gone fails instead of waiting forever.
    let third = h.spec(vec![big], TaskOptions::default());
    let t3 = third.task_id;
    h.sent_by(NodeId(9), third, vec![big]);
    assert!(h.out.iter().any(|a| matches!(a,
        Action::PeerDone { task, result: Err(e), .. } if *task == t3 && e.kind == ErrorKind::ObjectLost)));
}

#[test]
fn a_task_goes_where_its_large_argument_already_is_when_that_node_has_a_free_cpu() {
    use volley_proto::ShmLoc;
    let mut h = H::new(0.0);
    h.s.set_peers(vec![peer(1, 2), peer(2, 2)], &mut h.out);
    let big = ObjectId::for_return(h.ids.next_task(), 1);
    let shm = ShmLoc { seg: 1, offset: 0, size: 1 << 20, data_len: 8, buffer_lens: Vec::new() };
    h.s.put(
        Holder::Local,
        big,
        ObjectData { shm: Some(Box::new(shm)), ..Default::default() },
        &mut h.out,
    );
    let first = h.submit(vec![big]);
    let to = |h: &mut H| h.spilled().into_iter().map(|s| s.0).collect::<Vec<_>>();
    let holder = to(&mut h)[0];
    // Plain tasks would alternate between the two; those needing `big` follow it while the
    // node holding it has a free CPU.
    let _ = h.submit(vec![big]);
    assert_eq!(to(&mut h), vec![holder]);
    let _ = h.submit(vec![big]);
    assert_ne!(to(&mut h), vec![holder], "its CPUs are taken: least loaded again");
    assert!(matches!(h.s.object_state(&first), Some(ObjectState::Pending)));
}

#[test]
fn a_value_sent_to_many_peers_is_pulled_down_a_tree() {
    use volley_proto::ShmLoc;
    let mut h = H::new(0.0);
    h.s.set_peers((1..=7).map(|n| peer(n, 1)).collect(), &mut h.out);
    let big = ObjectId::for_return(h.ids.next_task(), 1);
    let shm = ShmLoc { seg: 1, offset: 0, size: 1 << 20, data_len: 8, buffer_lens: Vec::new() };
    h.s.put(
        Holder::Local,
        big,
        ObjectData { shm: Some(Box::new(shm)), ..Default::default() },
        &mut h.out,
    );
    let spread = || TaskOptions { strategy: Strategy::Spread, ..TaskOptions::default() };
    for _ in 0..7 {
        let _ = h.submit_opts(vec![big], spread());
    }
    let pulls: Vec<(NodeId, Option<NodeId>)> = h
        .out
        .iter()
        .filter_map(|a| match a {
            Action::Spill { peer, fetch, .. } => Some((*peer, fetch[0].2)),
            _ => None,
        })
        .collect();
    assert_eq!(pulls.len(), 7, "one task per node: {pulls:?}");
    // This node serves two; every node that got it serves at most two more.
    let mut served: HashMap<Option<NodeId>, u32> = HashMap::new();
    for (to, from) in &pulls {
        *served.entry(*from).or_default() += 1;
        if let Some(relay) = from {
            let got = pulls.iter().position(|(n, _)| n == relay);
            let me = pulls.iter().position(|(n, _)| n == to);
            assert!(got < me, "a relay got it before: {pulls:?}");
        }
    }
    assert_eq!(served.get(&None), Some(&2), "{pulls:?}");
    assert!(served.values().all(|n| *n <= 2), "{pulls:?}");
}

#[test]
fn a_pull_is_served_from_the_store_or_once_the_copy_here_is_whole() {
    use volley_proto::ShmLoc;
    let mut h = H::started(1.0);
    let big = ObjectId::for_return(h.ids.next_task(), 1);
    let shm = ShmLoc { seg: 1, offset: 0, size: 4096, data_len: 8, buffer_lens: Vec::new() };
    let layout = ObjectData { shm: Some(Box::new(shm)), ..Default::default() };
    // A peer's task needs `big`: this node pulls it from that peer, once for two tasks.
    let first = h.spec(vec![big], TaskOptions::default());
    let second = h.spec(vec![big], TaskOptions::default());
    let fetch = || vec![(big, layout.clone(), None)];
    h.s.accept_peer_task(
        NodeId(9),
        first,
        None,
        vec![],
        vec![],
        vec![],
        vec![],
        fetch(),
        &mut h.out,
    );
    h.s.accept_peer_task(
        NodeId(9),
        second,
        None,
        vec![],
        vec![],
        vec![],
        vec![],
        fetch(),
        &mut h.out,
    );
    let pulls = h.out.iter().filter(|a| matches!(a, Action::Pull { id, .. } if *id == big)).count();
    assert_eq!(pulls, 1, "two tasks, one pull");
    assert!(h.executed().is_empty(), "they wait for it");
    // Another peer asks this node for it meanwhile: answered once it is here.
    h.s.peer_fetch(NodeId(5), big, false, &mut h.out);
    assert!(!h.out.iter().any(|a| matches!(a, Action::PeerServe { .. })));
    let arrived = ObjectData { shm: layout.shm.clone(), ..Default::default() };
    h.s.peer_object(big, Ok(arrived), Vec::new(), &mut h.out);
    assert!(h.out.iter().any(|a| matches!(a,
        Action::PeerServe { peer, value: Ok(_), link: false, .. } if *peer == NodeId(5))));
    assert_eq!(h.executed().len(), 2, "both run now (one queued behind the other)");
    // A value this node does not hold is refused, so the asker goes elsewhere.
    let other = ObjectId::for_return(h.ids.next_task(), 1);
    h.s.peer_fetch(NodeId(5), other, true, &mut h.out);
    assert!(h.out.iter().any(|a| matches!(a,
        Action::PeerServe { id, value: Err(_), link: true, .. } if *id == other)));
}

fn large_value() -> ObjectData {
    use volley_proto::ShmLoc;
    let shm = ShmLoc { seg: 1, offset: 0, size: 4096, data_len: 8, buffer_lens: Vec::new() };
    ObjectData { shm: Some(Box::new(shm)), ..Default::default() }
}

#[test]
fn a_large_value_nested_in_a_small_one_stays_as_the_peers_copy_after_the_task() {
    // The peer sends a task whose argument (small, inline) holds a ref to a large value that
    // this node pulls and keeps as the peer's copy. The small one is freed at the task's end;
    // the large one must stay, for the peer's next task names it as kept here (`cached`).
    let mut h = H::started(1.0);
    let big = ObjectId::for_return(h.ids.next_task(), 1);
    let small = ObjectId::for_return(h.ids.next_task(), 1);
    let outer = || ObjectData { contained: vec![big], ..Default::default() };
    let first = h.spec(vec![small], TaskOptions::default());
    let t1 = first.task_id;
    h.s.accept_peer_task(
        NodeId(9),
        first,
        None,
        vec![(small, outer())],
        vec![],
        vec![],
        vec![],
        vec![(big, large_value(), None)],
        &mut h.out,
    );
    h.s.peer_object(big, Ok(large_value()), Vec::new(), &mut h.out);
    let ran = h.executed();
    assert_eq!(ran.len(), 1, "the first task runs once its value is here");
    h.s.task_done(ran[0].0, t1, TaskResult::Ok(vec![ObjectData::default()]), &mut h.out);
    assert!(h.s.objects.contains_key(&big), "the peer's copy went with the value naming it");
    let second = h.spec(vec![small], TaskOptions::default());
    let t2 = second.task_id;
    h.s.accept_peer_task(
        NodeId(9),
        second,
        None,
        vec![(small, outer())],
        vec![],
        vec![],
        vec![big],
        vec![],
        &mut h.out,
    );
    let failed = h
        .out
        .iter()
        .any(|a| matches!(a, Action::PeerDone { task, result: Err(_), .. } if *task == t2));
    assert!(!failed, "the second task found its cached value gone");
    let ran = h.executed();
    assert_eq!(ran.len(), 1, "the second task runs");
    h.s.task_done(ran[0].0, t2, TaskResult::Ok(vec![ObjectData::default()]), &mut h.out);
    assert!(h.s.objects.contains_key(&big), "kept until the peer lets it go");
    // Once the peer lets its copy go, the value goes.
    h.s.peer_release(NodeId(9), &[big], &mut h.out);
    assert!(!h.s.objects.contains_key(&big), "the copy outlived the peer's release");
}

#[test]
fn a_large_result_of_a_peers_task_stays_here_until_the_peer_lets_it_go() {
    let mut h = H::started(1.0);
    let (big_task, small_task) =
        (h.spec(vec![], TaskOptions::default()), h.spec(vec![], TaskOptions::default()));
    let (t1, t2) = (big_task.task_id, small_task.task_id);
    let (big, small) = (ObjectId::for_return(t1, 1), ObjectId::for_return(t2, 1));
    for spec in [big_task, small_task] {
        h.sent_by(NodeId(9), spec, vec![]);
    }
    let ran = h.executed();
    h.s.task_done(ran[0].0, t1, TaskResult::Ok(vec![large_value()]), &mut h.out);
    h.s.task_done(ran[1].0, t2, TaskResult::Ok(vec![ObjectData::default()]), &mut h.out);
    let kept: Vec<(TaskId, Vec<ObjectId>)> = h
        .out
        .iter()
        .filter_map(|a| match a {
            Action::PeerDone { task, kept, .. } => Some((*task, kept.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(kept, vec![(t1, vec![big]), (t2, vec![])]);
    assert!(h.s.is_ready(&big), "the large result is kept");
    assert!(h.s.object_state(&small).is_none(), "the small one is not");
    // A later task of the peer's that needs it runs with the copy kept here.
    let next = h.spec(vec![big], TaskOptions::default());
    let t3 = next.task_id;
    h.sent_by(NodeId(9), next, vec![big]);
    let w = h.executed()[0].0;
    h.s.task_done(w, t3, TaskResult::Ok(vec![ObjectData::default()]), &mut h.out);
    assert!(h.s.is_ready(&big));
    h.s.peer_release(NodeId(9), &[big], &mut h.out);
    assert!(h.s.object_state(&big).is_none(), "let go with the peer's release");
}

#[test]
fn a_task_needing_a_result_a_peer_kept_goes_to_that_peer_without_the_bytes() {
    let mut h = H::new(0.0);
    h.s.set_peers(vec![peer(1, 1), peer(2, 1)], &mut h.out);
    let made = h.submit(vec![]);
    let spilled_to = |h: &H, t: TaskId| {
        h.out.iter().find_map(|a| match a {
            Action::Spill { peer, spec, cached, fetch, .. } if spec.task_id == t => {
                Some((*peer, cached.clone(), fetch.len()))
            }
            _ => None,
        })
    };
    let (maker, _, _) = spilled_to(&h, made.task).expect("spilled");
    h.s.peer_done(maker, made.task, TaskResult::Ok(vec![large_value()]), Vec::new(), &mut h.out);
    h.s.peer_kept(maker, vec![made], &mut h.out);
    h.out.clear();
    let uses = h.submit(vec![made]);
    assert_eq!(spilled_to(&h, uses.task), Some((maker, vec![made], 0)), "there, nothing pulled");
    // A kept id this node no longer holds is let go at once; ours dropped, the copy too.
    let unknown = ObjectId::for_return(h.ids.next_task(), 1);
    h.out.clear();
    h.s.peer_kept(maker, vec![unknown], &mut h.out);
    assert!(h.out.iter().any(
        |a| matches!(a, Action::PeerRelease { peer, ids } if *peer == maker && ids == &vec![unknown])
    ));
    let done = TaskResult::Ok(vec![ObjectData::inline(vec![1], Vec::new(), Vec::new())]);
    h.s.peer_done(maker, uses.task, done, Vec::new(), &mut h.out);
    h.out.clear();
    h.s.decref(Holder::Local, &[made], &mut h.out);
    assert!(h.out.iter().any(
        |a| matches!(a, Action::PeerRelease { peer, ids } if *peer == maker && ids == &vec![made])
    ));
}

/// A node in no cluster is node 0 (as `volley.nodes()` shows it): a task or an actor pinned to
/// node 0 runs there; one pinned to any other node is unschedulable.
#[test]
fn a_lone_node_is_node_zero_for_node_affinity() {
    let mut h = H::started(1.0);
    let on =
        |id| TaskOptions { strategy: Strategy::Node { id, soft: false }, ..TaskOptions::default() };
    let here = h.submit_opts(Vec::new(), on(0));
    let executed = h.executed();
    assert_eq!(executed.len(), 1);
    assert_eq!(executed[0].1, { here.task });
    let elsewhere = h.submit_opts(Vec::new(), on(1));
    assert_eq!(h.error_kind(elsewhere), Some(ErrorKind::Unschedulable));
}

#[test]
fn spread_tasks_take_turns_over_every_node_even_when_each_ends_before_the_next() {
    // Node 2 (this one, 1 CPU) between peers 1 and 3. Each task ends before the next is
    // submitted, so every node is idle at each choice: they still go round, as with Ray.
    let mut h = H::node_among(2, vec![peer(1, 1), peer(3, 1)]);
    let spread = || TaskOptions { strategy: Strategy::Spread, ..TaskOptions::default() };
    let value = || TaskResult::Ok(vec![ObjectData::inline(vec![1], Vec::new(), Vec::new())]);
    let mut went = Vec::new();
    for _ in 0..6 {
        let r = h.submit_opts(vec![], spread());
        let (local, spilled) = (h.executed(), h.spilled());
        match (local.as_slice(), spilled.as_slice()) {
            ([(w, t)], []) => {
                went.push(2);
                h.done(*w, *t, 1);
            }
            ([], [(p, t, _)]) => {
                went.push(p.0);
                h.s.peer_done(*p, *t, value(), Vec::new(), &mut h.out);
            }
            other => panic!("one task, one place: {other:?}"),
        }
        assert!(matches!(h.s.object_state(&r), Some(ObjectState::Ready(_))));
        h.out.clear();
    }
    assert_eq!(went, vec![1, 2, 3, 1, 2, 3]);
}

#[test]
fn spread_passes_over_a_busy_node_while_another_is_free() {
    // This node (id 2, 1 CPU) runs a long task: SPREAD tasks go to the peers while they have
    // a free CPU by what this node sent them, then take turns queueing on every node.
    let mut h = H::started(1.0);
    h.s.set_node_id(NodeId(2));
    h.s.set_peers(vec![peer(1, 1), peer(3, 1)], &mut h.out);
    let _busy = h.submit(vec![]);
    assert_eq!(h.executed().len(), 1);
    h.out.clear();
    let spread = || TaskOptions { strategy: Strategy::Spread, ..TaskOptions::default() };
    let mut to = Vec::new();
    for _ in 0..2 {
        let _ = h.submit_opts(vec![], spread());
        to.extend(h.spilled().into_iter().map(|s| s.0 .0));
    }
    to.sort_unstable();
    assert_eq!(to, vec![1, 3], "each free peer took one");
    // Every node is busy now: the next ones queue in turn, this node's share waiting here.
    for _ in 0..3 {
        let _ = h.submit_opts(vec![], spread());
    }
    let mut queued: Vec<u32> = h.spilled().into_iter().map(|s| s.0 .0).collect();
    queued.sort_unstable();
    assert_eq!(queued, vec![1, 3], "one for each peer");
    // This node's share waits here, behind the long task on its one worker.
    assert_eq!(h.executed().len() + h.s.stats().tasks_queued, 1);
}

#[test]
fn a_spread_task_waiting_here_for_a_worker_keeps_its_turn() {
    // This node (2) has a free CPU but its worker is still starting: the task whose turn is
    // here waits for it, and later passes over the queue do not give it another turn.
    let mut h = H::new(1.0);
    h.s.set_node_id(NodeId(2));
    h.s.set_peers(vec![peer(1, 1), peer(3, 1)], &mut h.out);
    h.s.start(&mut h.out); // (its Spawn stays in `out` until the worker connects below)
    let spread = || TaskOptions { strategy: Strategy::Spread, ..TaskOptions::default() };
    let _ = h.submit_opts(vec![], spread());
    let here = h.submit_opts(vec![], spread());
    for _ in 0..3 {
        h.s.tick(0, &mut h.out); // passes over the queue while the worker starts
    }
    let _ = h.submit_opts(vec![], spread());
    let mut to: Vec<u32> = h.spilled().into_iter().map(|s| s.0 .0).collect();
    assert_eq!(to, vec![1]);
    let w = h.connect_spawned_keep();
    assert_eq!(h.executed(), vec![(w[0], here.task)]);
    // The one behind it (held back meanwhile) takes the next turn: node 3.
    to.extend(h.spilled().into_iter().map(|s| s.0 .0));
    assert_eq!(to, vec![1, 3]);
}

#[test]
fn a_spread_task_a_peer_sent_runs_here_and_takes_no_turn() {
    // Peer 1 sent a SPREAD task here (node 2): it runs here, as every task a peer sends does,
    // and the turns of this node's own SPREAD tasks start where they would have.
    let mut h = H::node_among(2, vec![peer(1, 1), peer(3, 1)]);
    let spread = || TaskOptions { strategy: Strategy::Spread, ..TaskOptions::default() };
    let theirs = h.spec(vec![], spread());
    let tid = theirs.task_id;
    h.sent_by(NodeId(1), theirs, vec![]);
    assert_eq!(h.executed().iter().map(|e| e.1).collect::<Vec<_>>(), [tid]);
    let _ = h.submit_opts(vec![], spread());
    assert_eq!(h.spilled().iter().map(|s| s.0).collect::<Vec<_>>(), [NodeId(1)]);
}
