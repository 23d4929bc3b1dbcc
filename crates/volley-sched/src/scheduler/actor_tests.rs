//! Event-by-event tests of actors and streams in the scheduler.

use super::actors::EARLY_CALL_WAIT_MS;
use super::harness::*;
use super::*;
use volley_proto::TaskOptions;

#[test]
fn calls_wait_for_the_actor_then_go_in_order_to_its_own_worker() {
    let mut h = H::started(2.0);
    let aid = h.create(0, 0, 0);
    let calls: Vec<TaskId> = (0..3).map(|_| h.call(Holder::Local, aid, vec![])).collect();
    assert!(h.executed().is_empty(), "nothing runs before __init__ is done");
    let w = h.bring_up(aid);
    let ex = h.executed();
    assert_eq!(ex, calls.iter().map(|t| (w, *t)).collect::<Vec<_>>());
    // Pool tasks never go to the actor's worker.
    assert!(h.s.workers.get(&w).is_some_and(|e| !e.is_idle()));
}

#[test]
fn a_callers_later_call_waits_for_an_earlier_one_with_a_pending_dependency() {
    let mut h = H::started(2.0);
    let aid = h.create(0, 0, 0);
    let w = h.bring_up(aid);
    let dep = ObjectId::for_return(h.ids.next_task(), 0);
    h.s.objects.insert_pending(dep);
    h.s.objects.incref(&dep);
    let first = h.call(Holder::Local, aid, vec![dep]);
    let second = h.call(Holder::Local, aid, vec![]);
    let other = h.call(Holder::Worker(WorkerId(1)), aid, vec![]);
    assert_eq!(h.executed(), vec![(w, other)], "another caller is not held up");
    h.s.object_ready(dep, Arc::new(ObjectData::default()), &mut h.out);
    assert_eq!(h.executed(), vec![(w, first), (w, second)]);
}

#[test]
fn actor_holds_its_cpus_and_creation_waits_for_them() {
    let mut h = H::started(2.0);
    let a = h.create(2000, 0, 0);
    h.bring_up(a);
    assert_eq!(h.s.stats().cpu_used_milli, 2000);
    let b = h.create(1000, 0, 0);
    assert!(h.connect_spawned_keep().is_empty(), "no room for the second actor yet");
    h.s.kill_actor(a, true, &mut h.out);
    let wa = h.killed()[0];
    h.s.worker_died(wa, WorkerExit::killed("killed"), &mut h.out);
    assert_eq!(h.s.actor_info(a).map(|i| i.state), Some("DEAD".into()));
    h.bring_up(b);
    assert_eq!(h.s.stats().cpu_used_milli, 1000);
}

#[test]
fn a_dead_actor_is_restarted_and_calls_in_flight_are_retried_within_limits() {
    let mut h = H::started(2.0);
    let aid = h.create(0, 1, 1);
    let w = h.bring_up(aid);
    let c1 = h.call(Holder::Local, aid, vec![]);
    let c2 = h.call(Holder::Local, aid, vec![]);
    assert_eq!(h.executed().len(), 2);
    h.s.worker_died(w, WorkerExit::killed("SIGKILL"), &mut h.out);
    assert_eq!(h.s.actor_info(aid).map(|i| (i.state, i.restarts)), Some(("RESTARTING".into(), 1)));
    let w2 = h.bring_up(aid);
    assert_eq!(h.executed(), vec![(w2, c1), (w2, c2)], "retried, in order");
    // Second death: no restarts left; the calls had their one retry.
    h.s.worker_died(w2, WorkerExit::killed("SIGKILL"), &mut h.out);
    assert_eq!(h.task_error(c1), Some(ErrorKind::ActorDied));
    assert_eq!(h.task_error(c2), Some(ErrorKind::ActorDied));
    let late = h.call(Holder::Local, aid, vec![]);
    assert_eq!(h.task_error(late), Some(ErrorKind::ActorDied));
    let st = h.s.stats();
    assert_eq!((st.actor_restarts, st.worker_crashes), (1, 2), "one restart, two crashes");
}

#[test]
fn deaths_the_scheduler_asked_for_are_not_crashes() {
    let mut h = H::started(2.0);
    let aid = h.create(0, 1, 0);
    let w = h.bring_up(aid);
    // volley.kill() with a restart allowed: the scheduler kills the process and restarts it.
    h.s.kill_actor(aid, false, &mut h.out);
    h.s.worker_died(w, WorkerExit::killed("SIGKILL"), &mut h.out);
    let w2 = h.bring_up(aid);
    h.s.kill_actor(aid, true, &mut h.out);
    h.s.worker_died(w2, WorkerExit::killed("SIGKILL"), &mut h.out);
    assert_eq!(h.s.stats().worker_crashes, 0, "both ends were asked for");
    assert_eq!(h.s.stats().actor_restarts, 1);
}

#[test]
fn init_failure_fails_the_actor_and_every_call() {
    let mut h = H::started(2.0);
    let aid = h.create(0, 3, 0);
    let call = h.call(Holder::Local, aid, vec![]);
    let w = h.connect_spawned_keep()[0];
    h.executed();
    let error = ErrorPayload {
        kind: ErrorKind::TaskException,
        task_name: String::new(),
        message: "ValueError".into(),
        traceback: String::new(),
        exception: None,
        pid: 1,
    };
    h.s.task_done(w, aid.0, TaskResult::Err { error, retryable: false }, &mut h.out);
    assert_eq!(h.task_error(call), Some(ErrorKind::ActorCreation));
    assert_eq!(h.task_error(aid.0), Some(ErrorKind::ActorCreation));
    assert_eq!(h.killed(), vec![w]);
}

#[test]
fn an_actor_without_handles_stops_once_its_calls_are_done() {
    let mut h = H::started(2.0);
    let aid = h.create(0, 0, 0);
    let w = h.bring_up(aid);
    let call = h.call(Holder::Local, aid, vec![]);
    h.executed();
    h.s.decref(Holder::Local, &[aid.object()], &mut h.out);
    assert!(!h.out.iter().any(|a| matches!(a, Action::Send { msg: NodeToWorker::Shutdown, .. })));
    h.done(w, call, 1);
    assert!(h.out.iter().any(
        |a| matches!(a, Action::Send { worker, msg: NodeToWorker::Shutdown } if *worker == w)
    ));
    h.s.worker_died(w, WorkerExit::failed("exit 0"), &mut h.out);
    assert_eq!(h.s.stats().actors, 0);
}

#[test]
fn stream_items_are_credited_to_the_caller_and_end_resolves_pending_asks() {
    let mut h = H::started(1.0);
    let spec = TaskSpec {
        task_id: h.ids.next_task(),
        function: CLASS,
        name: "gen".into(),
        args: ObjectData::default(),
        deps: Box::default(),
        num_returns: 1,
        options: std::sync::Arc::new(TaskOptions { streaming: true, ..Default::default() }),
        actor: ActorPart::None,
    };
    let tid = spec.task_id;
    h.s.submit(Holder::Local, spec, &mut h.out);
    let (w, _) = h.executed()[0];
    let item = |i| ObjectId::for_return(tid, i);
    h.s.stream_item(w, tid, 2, ObjectData::default(), &mut h.out);
    assert!(h.s.stream_next(Holder::Local, WaitOwner::Local, item(2), &mut h.out).is_some());
    assert_eq!(
        h.s.stream_take(Holder::Local, item(2), &mut h.out),
        StreamStep::Item { failed: false }
    );
    // Ask for item 3 before it exists, then the generator ends without it.
    assert!(h.s.stream_next(Holder::Local, WaitOwner::Local, item(3), &mut h.out).is_some());
    assert!(!h.s.is_ready(&item(3)));
    h.done(w, tid, 1);
    assert_eq!(h.s.stream_take(Holder::Local, item(3), &mut h.out), StreamStep::End);
    assert!(h.s.object_state(&item(3)).is_none(), "the end marker was freed");
    assert!(h.s.stream_next(Holder::Local, WaitOwner::Local, item(4), &mut h.out).is_none());
}

#[test]
fn only_the_running_call_is_charged_when_the_actor_dies_the_queued_ones_go_again() {
    let mut h = H::started(2.0);
    let aid = h.create(0, 1, 0); // max_task_retries=0
    let w = h.bring_up(aid);
    let calls: Vec<TaskId> = (0..5).map(|_| h.call(Holder::Local, aid, vec![])).collect();
    assert_eq!(h.executed().len(), 5);
    h.s.worker_died(w, WorkerExit::killed("SIGKILL"), &mut h.out);
    // The first call was running: with no retries it fails. The other four never started.
    assert_eq!(h.task_error(calls[0]), Some(ErrorKind::ActorDied));
    let w2 = h.bring_up(aid);
    let again: Vec<TaskId> = h.executed().into_iter().map(|(_, t)| t).collect();
    assert_eq!(again, calls[1..].to_vec(), "resent to the restarted actor, in order");
    for t in &calls[1..] {
        h.done(w2, *t, 1);
        assert_eq!(h.task_error(*t), None);
    }
}

#[test]
fn queued_calls_fail_when_the_actor_cannot_be_restarted() {
    let mut h = H::started(2.0);
    let aid = h.create(0, 0, 0);
    let w = h.bring_up(aid);
    let calls: Vec<TaskId> = (0..3).map(|_| h.call(Holder::Local, aid, vec![])).collect();
    h.s.worker_died(w, WorkerExit::killed("SIGKILL"), &mut h.out);
    for t in calls {
        assert_eq!(h.task_error(t), Some(ErrorKind::ActorDied), "no place left to run it");
    }
}

/// Calls queued in an actor's process behind the one it runs count as waiting in the node's
/// counters (`volley status` showed `tasks_waiting: 0` while an actor had four calls queued).
#[test]
fn calls_queued_on_an_actor_count_as_waiting() {
    let mut h = H::started(2.0);
    let aid = h.create(0, 0, 0);
    h.bring_up(aid);
    for _ in 0..5 {
        h.call(Holder::Local, aid, vec![]);
    }
    assert_eq!(h.executed().len(), 5, "all sent to the actor's process");
    let s = h.s.stats();
    assert_eq!((s.tasks_assigned, s.tasks_pipelined), (5, 4));
}

/// An actor of class "P" asking for `options`, created by a worker of this node (as inside a
/// task or an actor): its id, or why it was refused.
fn create_from_worker(h: &mut H, options: TaskOptions) -> Result<ActorId, ActorError> {
    let actor = ActorPart::Create(Box::new(volley_proto::ActorOptions {
        class_name: "P".into(),
        max_concurrency: 1,
        ..Default::default()
    }));
    let spec = task_spec(h.ids.next_task(), CLASS, "P", options, actor);
    h.s.create_actor(Holder::Worker(WorkerId(1)), spec, &mut h.out).map(|(aid, _)| aid)
}

/// Where each actor created since the last call went: `Some(peer)`, or `None` (started here).
fn placed(h: &mut H) -> Vec<Option<NodeId>> {
    let v = h
        .out
        .iter()
        .filter_map(|a| match a {
            Action::Spill { peer, .. } => Some(Some(*peer)),
            Action::Spawn { .. } => Some(None),
            _ => None,
        })
        .collect();
    h.connect_spawned();
    v
}

#[test]
fn a_worker_node_places_actors_across_the_cluster() {
    // A 1-CPU node that runs work (not a driver's), next to a 1-CPU node and one with a GPU.
    let mut h = H::started(1.0);
    let mut gpu_node = peer(3, 1);
    gpu_node.resources = vec![("GPU".to_string(), 1000, 1000)];
    h.s.set_peers(vec![peer(2, 1), gpu_node], &mut h.out);
    h.out.clear();
    let cpus = |c: u32| TaskOptions { cpu_milli: c, ..TaskOptions::default() };
    // What fits here now starts here (the local node first).
    create_from_worker(&mut h, cpus(0)).expect("ok");
    assert_eq!(placed(&mut h), [None]);
    // (It holds this node's CPU from now on.)
    create_from_worker(&mut h, cpus(1000)).expect("ok");
    assert_eq!(placed(&mut h), [None]);
    // Fits here, but not now: a peer with a free CPU.
    create_from_worker(&mut h, cpus(1000)).expect("ok");
    let first = placed(&mut h);
    assert!(matches!(first[..], [Some(_)]), "{first:?}");
    // A resource only a peer has: that peer.
    let gpu = TaskOptions { resources: vec![("GPU".into(), 1000)], ..TaskOptions::default() };
    create_from_worker(&mut h, gpu).expect("ok");
    assert_eq!(placed(&mut h), [Some(NodeId(3))]);
    // SPREAD from a node already hosting actors: a peer.
    let spread = TaskOptions { strategy: Strategy::Spread, ..TaskOptions::default() };
    create_from_worker(&mut h, spread).expect("ok");
    let spread_to = placed(&mut h);
    assert!(matches!(spread_to[..], [Some(_)]), "{spread_to:?}");
    // Hard node affinity to the GPU node, asking for its GPU.
    let pinned = TaskOptions {
        strategy: Strategy::Node { id: 3, soft: false },
        resources: vec![("GPU".into(), 500)],
        ..TaskOptions::default()
    };
    create_from_worker(&mut h, pinned).expect("ok");
    assert_eq!(placed(&mut h), [Some(NodeId(3))]);
    // Nothing fits anywhere: the cluster-wide error, at once.
    let two_gpus = TaskOptions { resources: vec![("GPU".into(), 2000)], ..TaskOptions::default() };
    match create_from_worker(&mut h, two_gpus) {
        Err(ActorError::Unschedulable(m)) => {
            assert!(m.contains("needs 2 GPU but no node in the cluster has more than 1"), "{m}")
        }
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn an_actor_a_peer_sent_is_never_passed_on() {
    // This node has no GPU; a creation a peer sent asking for one is refused here, not sent on.
    let mut h = H::started(1.0);
    let mut gpu_node = peer(3, 1);
    gpu_node.resources = vec![("GPU".to_string(), 1000, 1000)];
    h.s.set_peers(vec![gpu_node], &mut h.out);
    h.out.clear();
    let actor = ActorPart::Create(Box::new(volley_proto::ActorOptions {
        class_name: "P".into(),
        max_concurrency: 1,
        ..Default::default()
    }));
    let options = TaskOptions { resources: vec![("GPU".into(), 1000)], ..TaskOptions::default() };
    let spec = task_spec(h.ids.next_task(), CLASS, "P", options, actor);
    match h.s.create_actor(Holder::Peer(NodeId(3)), spec, &mut h.out) {
        Err(ActorError::Unschedulable(m)) => assert!(m.contains("this node has 0"), "{m}"),
        other => panic!("not refused: {other:?}"),
    }
    assert!(h.spilled().is_empty());
}

#[test]
fn an_actors_death_is_told_to_every_node_and_routes_there_see_it() {
    // The host: its actor is SIGKILLed with no restarts left; each peer hears of the death.
    let mut h = H::started(1.0);
    h.s.set_peers(vec![peer(5, 1), peer_view(6, 0, 0, true)], &mut h.out);
    h.out.clear();
    let aid = h.create(0, 0, 0);
    let w = h.bring_up(aid);
    h.out.clear();
    h.s.worker_died(w, WorkerExit::killed("SIGKILL"), &mut h.out);
    let mut told: Vec<NodeId> = h
        .out
        .iter()
        .filter_map(|a| match a {
            Action::PeerActorState { peer, actor, death: Some(_), .. } if *actor == aid => {
                Some(*peer)
            }
            _ => None,
        })
        .collect();
    told.sort();
    assert_eq!(told, [NodeId(5), NodeId(6)]);

    // A node with a route to an actor node 7 hosts: the word makes it DEAD there, with the
    // cause, and a call fails at once instead of going to node 7.
    let mut r = H::started(1.0);
    r.s.set_peers(vec![peer(7, 1)], &mut r.out);
    let remote = ActorId(r.ids.next_task());
    r.s.route_to_actor(remote, NodeId(7), "A");
    assert_eq!(r.s.actor_info(remote).map(|i| i.state), Some("ALIVE".into()));
    let cause = "actor 'A' died: its process was killed by signal 9 (SIGKILL)";
    let death = error(ErrorKind::ActorDied, "A", cause.into());
    let report = ActorReport { pid: 0, restarts: 0, death: Some((*death).clone()), log: None };
    // From a node that does not host it: ignored.
    r.s.peer_actor_state(NodeId(8), remote, report.clone(), &mut r.out);
    assert_eq!(r.s.actor_info(remote).map(|i| i.state), Some("ALIVE".into()));
    r.s.peer_actor_state(NodeId(7), remote, report, &mut r.out);
    let info = r.s.actor_info(remote).expect("known");
    assert_eq!((info.state.as_str(), info.death.as_deref()), ("DEAD", Some(cause)));
    r.out.clear();
    let call = r.call(Holder::Local, remote, vec![]);
    assert_eq!(r.task_error(call), Some(ErrorKind::ActorDied));
    assert!(r.spilled().is_empty(), "nothing was sent to node 7");
}

#[test]
fn a_result_sent_back_to_a_peer_says_where_the_actors_it_names_live() {
    // Node 2 runs a task node 5 sent; the task returns the handle of an actor it made here.
    let mut h = H::started(2.0);
    h.s.set_node_id(NodeId(2));
    h.s.set_peers(vec![peer(5, 1)], &mut h.out);
    h.out.clear();
    let aid = h.create(0, 0, 0);
    h.bring_up(aid);
    h.out.clear();
    let spec = h.spec(vec![], TaskOptions { cpu_milli: 1000, ..TaskOptions::default() });
    let tid = spec.task_id;
    h.sent_by(NodeId(5), spec, vec![]);
    let (w, t) = h.executed()[0];
    assert_eq!(t, tid);
    let v = ObjectData { data: vec![1], contained: vec![aid.object()], ..Default::default() };
    h.s.task_done(w, t, TaskResult::Ok(vec![v]), &mut h.out);
    let routes: Vec<_> = h
        .out
        .iter()
        .filter_map(|a| match a {
            Action::PeerDone { peer, task, routes, .. } if *task == tid => Some((*peer, routes)),
            _ => None,
        })
        .collect();
    assert_eq!(routes, [(NodeId(5), &vec![(aid, NodeId(2), "A".to_string())])]);
}

#[test]
fn a_peers_call_that_outruns_the_actors_creation_waits_for_it() {
    // Node 5 places actor A here and hands its handle to a task on node 6; node 6's call comes
    // in before node 5's creation does.
    let mut h = H::node_among(2, vec![peer(5, 1), peer(6, 1)]);
    let create = h.actor_spec("A", 0, 0, 0);
    let aid = ActorId(create.task_id);
    let first = h.call(Holder::Peer(NodeId(6)), aid, vec![]);
    let second = h.call(Holder::Peer(NodeId(6)), aid, vec![]);
    h.s.tick(EARLY_CALL_WAIT_MS - 1, &mut h.out);
    assert_eq!((h.task_error(first), h.task_error(second)), (None, None));
    assert!(h.executed().is_empty());
    h.sent_by(NodeId(5), create, vec![]);
    let w = h.bring_up(aid);
    assert_eq!(h.executed(), [(w, first), (w, second)], "in the order they came");
    h.done(w, first, 1);
    // The wait is over for them: the deadline passing later fails nothing.
    h.s.tick(2 * EARLY_CALL_WAIT_MS, &mut h.out);
    assert_eq!(h.task_error(second), None);
}

#[test]
fn a_peers_call_for_an_actor_never_created_here_fails_after_the_wait() {
    let mut h = H::started(1.0);
    h.s.set_peers(vec![peer(6, 1)], &mut h.out);
    let aid = ActorId(h.ids.next_task());
    let call = h.call(Holder::Peer(NodeId(6)), aid, vec![]);
    h.s.tick(EARLY_CALL_WAIT_MS - 1, &mut h.out);
    assert_eq!(h.task_error(call), None);
    h.s.tick(EARLY_CALL_WAIT_MS, &mut h.out);
    assert_eq!(h.task_error(call), Some(ErrorKind::ActorDied));
    let Some(ObjectState::Failed(e)) = h.s.object_state(&ObjectId::for_return(call, 1)) else {
        panic!("the call failed")
    };
    assert!(e.message.contains("did not arrive within 10 s"), "{}", e.message);
    // A call from this node's own driver for an unknown actor still fails at once.
    let mine = h.call(Holder::Local, aid, vec![]);
    assert_eq!(h.task_error(mine), Some(ErrorKind::ActorDied));
}

#[test]
fn a_peers_call_for_an_actor_this_node_forgot_fails_at_once() {
    let mut h = H::started(2.0);
    h.s.set_peers(vec![peer(6, 1)], &mut h.out);
    let aid = h.create(0, 0, 0);
    let w = h.bring_up(aid);
    h.s.decref(Holder::Local, &[aid.object()], &mut h.out);
    h.s.worker_died(w, WorkerExit::failed("exit 0"), &mut h.out);
    assert_eq!(h.s.stats().actors, 0);
    let call = h.call(Holder::Peer(NodeId(6)), aid, vec![]);
    assert_eq!(h.task_error(call), Some(ErrorKind::ActorDied));
}

#[test]
fn spread_actors_take_turns_over_the_nodes_whatever_they_host_already() {
    // A node that runs actors itself (node 1: a serve controller's, say) next to peers 2 and
    // 3, and node 3 already hosts three of this node's actors. Counting what each node hosts,
    // SPREAD sent the next two both to node 2; taking turns, as Ray does, it does not.
    let mut h = H::node_among(1, vec![peer_view(2, 4, 4, false), peer_view(3, 4, 4, false)]);
    let no_cpu = TaskOptions { cpu_milli: 0, ..TaskOptions::default() };
    let on_3 = TaskOptions { strategy: Strategy::Node { id: 3, soft: false }, ..no_cpu.clone() };
    for _ in 0..3 {
        create_from_worker(&mut h, on_3.clone()).expect("ok");
    }
    assert_eq!(placed(&mut h), [Some(NodeId(3)); 3]);
    let spread = TaskOptions { strategy: Strategy::Spread, ..no_cpu };
    for _ in 0..3 {
        create_from_worker(&mut h, spread.clone()).expect("ok");
    }
    let mut to = placed(&mut h);
    to.sort();
    assert_eq!(to, [None, Some(NodeId(2)), Some(NodeId(3))], "one on each node, this one too");
    // Two that need a CPU, while node 2 has none free: node 2 is passed over.
    h.s.set_peers(vec![peer_view(2, 4, 0, false), peer_view(3, 4, 4, false)], &mut h.out);
    h.out.clear();
    let spread_cpu = TaskOptions { strategy: Strategy::Spread, ..TaskOptions::default() };
    for _ in 0..2 {
        create_from_worker(&mut h, spread_cpu.clone()).expect("ok");
    }
    let mut to = placed(&mut h);
    to.sort();
    assert_eq!(to, [None, Some(NodeId(3))]);
}

#[test]
fn a_spread_actor_waiting_here_for_a_cpu_keeps_its_turn() {
    // This node's one CPU is held; its turn comes while no node has a CPU free: it waits here
    // and does not take turn after turn each time the scheduler looks at it again.
    let mut h = H::node_among(1, vec![peer_view(2, 1, 0, false)]);
    let spread = TaskOptions { strategy: Strategy::Spread, ..TaskOptions::default() };
    let holder = TaskOptions { strategy: Strategy::Node { id: 1, soft: false }, ..spread.clone() };
    create_from_worker(&mut h, holder).expect("ok");
    assert_eq!(placed(&mut h), [None]);
    // Node 2 had the last turn: the next is this node's, with no room now anywhere.
    h.s.peers.spread_last = Some(NodeId(2));
    let waiting = create_from_worker(&mut h, spread.clone()).expect("ok");
    assert_eq!(placed(&mut h), []);
    for _ in 0..3 {
        h.s.set_peers(vec![peer_view(2, 1, 0, false)], &mut h.out);
    }
    assert_eq!(h.s.peers.spread_turns.get(&waiting.0), Some(&NodeId(1)));
    assert_eq!(h.s.peers.spread_last, Some(NodeId(1)), "no second turn");
    assert_eq!(placed(&mut h), []);
}

#[test]
fn a_peers_call_for_an_actor_still_waiting_for_its_arguments_follows_it_to_its_node() {
    // A driver's node (5) creates actor A, whose argument a task on node 2 still computes,
    // and lists it by name; node 4 calls it meanwhile. Once A starts on node 2 the call goes
    // there, and its result comes back to node 4.
    let mut h = H::new(0.0);
    h.s.set_prefer_peers(true);
    h.s.set_node_id(NodeId(5));
    h.s.set_peers(vec![peer(2, 1), peer_view(4, 0, 0, true)], &mut h.out);
    let arg = h.submit(vec![]);
    let [(to, arg_task, _)] = h.spilled()[..] else { panic!("{:?}", h.out) };
    assert_eq!(to, NodeId(2));
    let mut create = h.actor_spec("A", 0, 0, 0);
    create.deps = vec![arg].into();
    let (aid, _) = h.s.create_actor(Holder::Local, create, &mut h.out).expect("ok");
    let options = TaskOptions { cpu_milli: 0, max_retries: 0, ..Default::default() };
    let part =
        ActorPart::Call(Box::new(volley_proto::ActorCall { actor: aid, method: "m".into() }));
    let spec = task_spec(h.ids.next_task(), FunctionId([0; 16]), "A.m", options, part);
    let call = spec.task_id;
    h.sent_by(NodeId(4), spec, vec![]);
    assert!(h.spilled().is_empty(), "nothing can go yet");
    let value = || TaskResult::Ok(vec![ObjectData::inline(vec![1], Vec::new(), Vec::new())]);
    h.s.peer_done(NodeId(2), arg_task, value(), Vec::new(), &mut h.out);
    let sent = h.spilled();
    assert_eq!(sent.iter().map(|s| (s.0, s.1)).collect::<Vec<_>>(), [(NodeId(2), aid.0)]);
    h.s.peer_done(NodeId(2), aid.0, value(), Vec::new(), &mut h.out);
    let sent = h.spilled();
    assert_eq!(sent.iter().map(|s| (s.0, s.1)).collect::<Vec<_>>(), [(NodeId(2), call)]);
    h.s.peer_done(NodeId(2), call, value(), Vec::new(), &mut h.out);
    assert!(h.peer_results().iter().any(|(p, t, _)| (*p, *t) == (NodeId(4), call)));
}

/// The cluster directory's entry for actor `aid` of class "A", named `name`, on `node`.
fn listing(aid: ActorId, name: &str, node: u32) -> volley_proto::NamedActor {
    volley_proto::NamedActor {
        namespace: String::new(),
        name: name.into(),
        actor: aid,
        node: NodeId(node),
        class: "A".into(),
        meta: Vec::new(),
    }
}

#[test]
fn a_call_routed_to_a_drivers_node_waits_until_the_cluster_lists_the_actors_node() {
    // This node (3) found named actor A through the directory while its creator, driver's
    // node 5, held it waiting for its arguments: a driver's node takes no calls.
    let mut h = H::started(1.0);
    h.s.set_node_id(NodeId(3));
    let aid = ActorId(TaskId(7 << 64));
    let late = |node: u32| listing(aid, "late", node);
    let views = |placed: bool| {
        let mut host = peer(2, 1);
        let mut creator = peer_view(5, 0, 0, true);
        if placed {
            host.named = vec![late(2)];
        } else {
            creator.named = vec![late(5)];
        }
        vec![host, creator]
    };
    h.s.set_peers(views(false), &mut h.out);
    h.out.clear();
    assert_eq!(h.s.lookup_actor("late", "").map(|(a, _)| a), Some(aid));
    let call = h.call(Holder::Local, aid, vec![]);
    assert!(h.spilled().is_empty(), "not sent to the driver's node");
    let why = h.s.explain_wait(ObjectId::for_return(call, 1)).unwrap_or_default();
    assert!(why.contains("which a driver's node (node 5) holds"), "{why}");
    // Node 2's heartbeat lists it: the call goes there.
    h.s.set_peers(views(true), &mut h.out);
    assert_eq!(h.spilled().iter().map(|s| (s.0, s.1)).collect::<Vec<_>>(), [(NodeId(2), call)]);
}

#[test]
fn a_call_routed_to_a_node_not_in_the_view_goes_once_it_is_and_fails_if_it_never_is() {
    // The directory answers before the next view: its routes may name nodes this node has
    // not seen yet.
    let mut h = H::node_among(3, vec![peer(2, 1)]);
    let soon = ActorId(TaskId(8 << 64));
    let never = ActorId(TaskId(9 << 64));
    h.s.route_to_actor(soon, NodeId(6), "A");
    h.s.route_to_actor(never, NodeId(7), "B");
    let first = h.call(Holder::Local, soon, vec![]);
    let lost = h.call(Holder::Local, never, vec![]);
    assert!(h.spilled().is_empty());
    let why = h.s.explain_wait(ObjectId::for_return(first, 1)).unwrap_or_default();
    assert!(why.contains("waits for node 6, where its actor 'A' lives, to appear"), "{why}");
    // Node 6 is in the next view: the call goes. Node 7 is in none: once no node has listed
    // its actor for UNLISTED_MS, the actor is dead here and the call fails saying so.
    let mut now = 1_000;
    h.s.tick(now, &mut h.out);
    h.s.set_peers(vec![peer(2, 1), peer(6, 1)], &mut h.out);
    assert_eq!(h.spilled().iter().map(|s| (s.0, s.1)).collect::<Vec<_>>(), [(NodeId(6), first)]);
    for _ in 0..9 {
        now += 500;
        h.s.tick(now, &mut h.out);
        h.s.set_peers(vec![peer(2, 1), peer(6, 1)], &mut h.out);
        assert_eq!(h.task_error(lost), None, "at {now} ms");
    }
    now += 500;
    h.s.tick(now, &mut h.out);
    h.s.set_peers(vec![peer(2, 1), peer(6, 1)], &mut h.out);
    assert_eq!(h.task_error(lost), Some(ErrorKind::ActorDied));
    assert!(h.spilled().is_empty());
}

#[test]
fn a_route_to_a_driver_that_stops_listing_the_actor_with_no_node_listing_it_dies() {
    // Driver's node 5 held named actor A waiting for its arguments, and its creation failed
    // there: no node lists A any more. Calls held here fail once UNLISTED_MS has passed.
    let mut h = H::started(1.0);
    h.s.set_node_id(NodeId(3));
    let aid = ActorId(TaskId(7 << 64));
    let late = listing(aid, "late", 5);
    let mut creator = peer_view(5, 0, 0, true);
    creator.named = vec![late];
    h.s.set_peers(vec![peer(2, 1), creator.clone()], &mut h.out);
    assert!(h.s.lookup_actor("late", "").is_some());
    let call = h.call(Holder::Local, aid, vec![]);
    // Listed by its creator: it waits, however long.
    h.s.tick(60_000, &mut h.out);
    h.s.set_peers(vec![peer(2, 1), creator.clone()], &mut h.out);
    assert_eq!(h.task_error(call), None);
    creator.named.clear();
    h.s.set_peers(vec![peer(2, 1), creator.clone()], &mut h.out);
    h.s.tick(64_000, &mut h.out);
    h.s.set_peers(vec![peer(2, 1), creator.clone()], &mut h.out);
    assert_eq!(h.task_error(call), None);
    h.s.tick(65_000, &mut h.out);
    h.s.set_peers(vec![peer(2, 1), creator], &mut h.out);
    assert_eq!(h.task_error(call), Some(ErrorKind::ActorDied));
}

#[test]
fn a_placed_actor_lives_on_when_its_creator_leaves_in_the_view_that_first_lists_its_host() {
    // Driver's node 5 placed detached actor A on node 2 and left; one view both drops node 5
    // and shows node 2 listing A: the call goes to node 2, and A is not dead here.
    let mut h = H::started(1.0);
    h.s.set_node_id(NodeId(3));
    let aid = ActorId(TaskId(7 << 64));
    let at = |node: u32| listing(aid, "kept", node);
    let mut creator = peer_view(5, 0, 0, true);
    creator.named = vec![at(5)];
    h.s.set_peers(vec![peer(2, 1), creator], &mut h.out);
    assert!(h.s.lookup_actor("kept", "").is_some());
    let call = h.call(Holder::Local, aid, vec![]);
    let mut host = peer(2, 1);
    host.named = vec![at(2)];
    h.s.set_peers(vec![host], &mut h.out);
    assert_eq!(h.spilled().iter().map(|s| (s.0, s.1)).collect::<Vec<_>>(), [(NodeId(2), call)]);
    assert_eq!(h.task_error(call), None);
}
