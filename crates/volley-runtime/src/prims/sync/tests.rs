//! Locks, semaphores, events, barriers and conditions without sockets: ops in, answers out.

use crate::prims::test_util::{answers, w};
use volley_proto::{undo_of, PrimOp, PrimResult, SyncKind, SyncOp, WorkerId};

use crate::prims::{Prims, Who};

fn create(p: &Prims, kind: SyncKind) -> u64 {
    match answers(p.op(w(1), 1, PrimOp::SyncCreate { kind }))[..] {
        [(1, 1, PrimResult::Created(id))] => id,
        ref other => panic!("create answered {other:?}"),
    }
}

fn sync(p: &Prims, who: Who, req: u64, prim: u64, op: SyncOp) -> Vec<(u32, u64, PrimResult)> {
    answers(p.op(who, req, PrimOp::Sync { prim, op }))
}

fn acquire(holder: u64) -> SyncOp {
    SyncOp::Acquire { holder, block: true }
}

const GOT: PrimResult = PrimResult::Acquired { died: false, notified: false };

/// Parked acquirers get the lock first come, first served, one per release.
#[test]
fn lock_waiters_are_fifo() {
    let p = Prims::default();
    let l = create(&p, SyncKind::Lock);
    assert_eq!(sync(&p, w(1), 10, l, acquire(0)), vec![(1, 10, GOT)]);
    for n in [2, 3, 4] {
        assert!(sync(&p, w(n), 10, l, acquire(0)).is_empty());
    }
    let none = SyncOp::Acquire { holder: 0, block: false };
    assert_eq!(sync(&p, w(5), 11, l, none), vec![(5, 11, PrimResult::Empty)]);
    for (releaser, next) in [(1, 2), (2, 3), (3, 4)] {
        let out = sync(&p, w(releaser), 12, l, SyncOp::Release { holder: 0 });
        assert_eq!(out, vec![(releaser, 12, PrimResult::Done), (next, 10, GOT)]);
    }
    assert_eq!(p.parked(), 0);
    let state = sync(&p, w(4), 13, l, SyncOp::State);
    assert_eq!(state, vec![(4, 13, PrimResult::State { value: 1, broken: false })]);
}

/// A dead holder's lock goes to the next waiter, which is told; the flag is given once.
#[test]
fn dead_holder_releases_with_flag() {
    let p = Prims::default();
    let l = create(&p, SyncKind::Lock);
    sync(&p, w(1), 1, l, acquire(7));
    sync(&p, w(2), 1, l, acquire(7));
    sync(&p, w(3), 1, l, acquire(7));
    const DIED: PrimResult = PrimResult::Acquired { died: true, notified: false };
    sync(&p, w(4), 1, l, acquire(7));
    assert_eq!(answers(p.drop_worker(WorkerId(1))), vec![(2, 1, DIED)]);
    // A dead process's parked acquire leaves the queue: nothing is handed to it.
    assert!(p.drop_worker(WorkerId(3)).is_empty());
    assert_eq!(sync(&p, w(2), 2, l, SyncOp::Release { holder: 7 })[1], (4, 1, GOT));
    // A semaphore frees every unit a dead process held, each reported to one acquirer.
    let s = create(&p, SyncKind::Semaphore { value: 2, bounded: true });
    sync(&p, w(5), 1, s, acquire(1));
    sync(&p, w(5), 2, s, acquire(2));
    assert!(sync(&p, w(6), 1, s, acquire(0)).is_empty());
    assert_eq!(answers(p.drop_worker(WorkerId(5))), vec![(6, 1, DIED)]);
    assert_eq!(sync(&p, w(7), 1, s, acquire(0)), vec![(7, 1, DIED)]);
    assert_eq!(sync(&p, w(6), 2, s, SyncOp::Release { holder: 0 }), vec![(6, 2, PrimResult::Done)]);
    assert_eq!(sync(&p, w(8), 1, s, acquire(0)), vec![(8, 1, GOT)]);
}

/// Releasing what is not held is refused with threading's words; an rlock counts its owner's
/// holds and refuses other owners; a bounded semaphore refuses a release past its value.
#[test]
fn release_errors_and_rlock_counts() {
    let p = Prims::default();
    let l = create(&p, SyncKind::Lock);
    let out = sync(&p, w(1), 1, l, SyncOp::Release { holder: 0 });
    assert!(matches!(&out[..], [(1, 1, PrimResult::Error(m))] if m == "release unlocked lock"));
    let r = create(&p, SyncKind::RLock);
    assert_eq!(sync(&p, w(1), 2, r, acquire(5)), vec![(1, 2, GOT)]);
    assert_eq!(sync(&p, w(1), 3, r, acquire(5)), vec![(1, 3, GOT)]);
    // Another thread of the same process is another owner.
    assert!(sync(&p, w(1), 4, r, acquire(6)).is_empty());
    let out = sync(&p, w(2), 5, r, SyncOp::Release { holder: 5 });
    assert!(matches!(&out[..], [(2, 5, PrimResult::Error(m))] if m.contains("un-acquired")));
    assert_eq!(sync(&p, w(1), 6, r, SyncOp::Release { holder: 5 }), vec![(1, 6, PrimResult::Done)]);
    let out = sync(&p, w(1), 7, r, SyncOp::Release { holder: 5 });
    assert_eq!(out, vec![(1, 7, PrimResult::Done), (1, 4, GOT)]);
    let b = create(&p, SyncKind::Semaphore { value: 1, bounded: true });
    let out = sync(&p, w(1), 8, b, SyncOp::Release { holder: 0 });
    assert!(matches!(&out[..], [(1, 8, PrimResult::Error(m))] if m.contains("too many")));
    let u = create(&p, SyncKind::Semaphore { value: 0, bounded: false });
    assert_eq!(sync(&p, w(1), 9, u, SyncOp::Release { holder: 0 }), vec![(1, 9, PrimResult::Done)]);
    assert_eq!(sync(&p, w(2), 10, u, acquire(0)), vec![(2, 10, GOT)]);
    let out =
        answers(p.op(w(1), 11, PrimOp::SyncCreate { kind: SyncKind::Barrier { parties: 0 } }));
    assert!(matches!(&out[..], [(1, 11, PrimResult::Error(_))]));
    let out = answers(p.op(w(1), 12, PrimOp::SyncCreate { kind: SyncKind::Condition { lock: b } }));
    assert!(matches!(&out[..], [(1, 12, PrimResult::Error(_))]));
}

/// A cancelled parked acquire is answered `Empty`; one granted before its cancel arrived is
/// answered nothing more, and the undo the waiter sends hands the lock to the next waiter.
#[test]
fn cancel_of_a_granted_acquire_releases_it() {
    let p = Prims::default();
    let l = create(&p, SyncKind::Lock);
    sync(&p, w(1), 1, l, acquire(0));
    sync(&p, w(2), 1, l, acquire(0));
    assert_eq!(answers(p.op(w(2), 1, PrimOp::Cancel)), vec![(2, 1, PrimResult::Empty)]);
    sync(&p, w(2), 2, l, acquire(0));
    sync(&p, w(3), 1, l, acquire(0));
    // Granted to worker 2 just as it was interrupted: its cancel comes too late.
    let out = sync(&p, w(1), 3, l, SyncOp::Release { holder: 0 });
    assert_eq!(out[1], (2, 2, GOT));
    assert!(answers(p.op(w(2), 2, PrimOp::Cancel)).is_empty());
    let op = PrimOp::Sync { prim: l, op: acquire(0) };
    let undo = undo_of(&op).op(GOT).expect("an acquire is undone by a release");
    let out = answers(p.op(w(2), 0, undo));
    assert_eq!(out, vec![(3, 1, GOT)]);
    assert_eq!(p.parked(), 0);
}

/// A condition wait gives the lock up, a notify queues the waiter for it, and the waiter's
/// answer comes only once it holds the lock again (an rlock with all its holds).
#[test]
fn condition_wait_hands_the_lock_back() {
    let p = Prims::default();
    let r = create(&p, SyncKind::RLock);
    let c = create(&p, SyncKind::Condition { lock: r });
    sync(&p, w(1), 1, r, acquire(0));
    sync(&p, w(1), 2, r, acquire(0));
    assert!(sync(&p, w(1), 3, c, SyncOp::CondWait { holder: 0 }).is_empty());
    // The lock is free for the notifier.
    assert_eq!(sync(&p, w(2), 1, r, acquire(0)), vec![(2, 1, GOT)]);
    let out = sync(&p, w(3), 9, c, SyncOp::Notify { holder: 0, n: 1 });
    assert!(matches!(&out[..], [(3, 9, PrimResult::Error(m))] if m.contains("un-acquired")));
    assert_eq!(
        sync(&p, w(2), 2, c, SyncOp::Notify { holder: 0, n: 1 }),
        vec![(2, 2, PrimResult::Done)]
    );
    // Notified, but the notifier still holds the lock: a cancel now does not answer.
    assert!(answers(p.op(w(1), 3, PrimOp::Cancel)).is_empty());
    let notified = PrimResult::Acquired { died: false, notified: true };
    let out = sync(&p, w(2), 3, r, SyncOp::Release { holder: 0 });
    assert_eq!(out, vec![(2, 3, PrimResult::Done), (1, 3, notified)]);
    // Both holds came back: two releases free it.
    sync(&p, w(1), 4, r, SyncOp::Release { holder: 0 });
    let state = sync(&p, w(1), 5, r, SyncOp::State);
    assert_eq!(state, vec![(1, 5, PrimResult::State { value: 1, broken: false })]);
    sync(&p, w(1), 6, r, SyncOp::Release { holder: 0 });
    // A timed-out wait takes the lock back too, answered not notified.
    sync(&p, w(1), 7, r, acquire(0));
    sync(&p, w(1), 8, c, SyncOp::CondWait { holder: 0 });
    let out = answers(p.op(w(1), 8, PrimOp::Cancel));
    assert_eq!(out, vec![(1, 8, PrimResult::Acquired { died: false, notified: false })]);
    let out = sync(&p, w(4), 1, c, SyncOp::CondWait { holder: 0 });
    assert!(matches!(&out[..], [(4, 1, PrimResult::Error(m))] if m.contains("un-acquired")));
}

/// A barrier releases its parties with their arrival index; a party that dies or times out
/// breaks it for all, until `reset`.
#[test]
fn barrier_passes_and_breaks() {
    let p = Prims::default();
    let b = create(&p, SyncKind::Barrier { parties: 3 });
    assert!(sync(&p, w(1), 1, b, SyncOp::BarrierWait).is_empty());
    assert!(sync(&p, w(2), 1, b, SyncOp::BarrierWait).is_empty());
    let out = sync(&p, w(3), 1, b, SyncOp::BarrierWait);
    let idx: Vec<_> = out.iter().map(|(n, _, r)| (*n, r.clone())).collect();
    assert_eq!(
        idx,
        vec![(1, PrimResult::Arrived(0)), (2, PrimResult::Arrived(1)), (3, PrimResult::Arrived(2))]
    );
    // Next round: worker 2 dies while parked.
    sync(&p, w(1), 2, b, SyncOp::BarrierWait);
    sync(&p, w(2), 2, b, SyncOp::BarrierWait);
    let out = answers(p.drop_worker(WorkerId(2)));
    assert!(matches!(&out[..], [(1, 2, PrimResult::Broken(m))] if m.contains("(worker 2) died")));
    assert!(matches!(
        sync(&p, w(3), 2, b, SyncOp::BarrierWait)[..],
        [(3, 2, PrimResult::Broken(_))]
    ));
    sync(&p, w(1), 3, b, SyncOp::Reset);
    assert!(sync(&p, w(1), 4, b, SyncOp::BarrierWait).is_empty());
    let out = answers(p.op(w(1), 4, PrimOp::Cancel));
    assert!(matches!(&out[..], [(1, 4, PrimResult::Broken(_))]));
    let state = sync(&p, w(1), 5, b, SyncOp::State);
    assert_eq!(state, vec![(1, 5, PrimResult::State { value: 0, broken: true })]);
    assert_eq!(p.parked(), 0);
}

#[test]
fn event_wakes_every_waiter_and_close_fails_them() {
    let p = Prims::default();
    let e = create(&p, SyncKind::Event);
    for n in [1, 2, 3] {
        assert!(sync(&p, w(n), 1, e, SyncOp::Wait).is_empty());
    }
    let out = sync(&p, w(4), 1, e, SyncOp::Set);
    assert_eq!(out.len(), 4);
    assert_eq!(sync(&p, w(1), 2, e, SyncOp::Wait), vec![(1, 2, PrimResult::Done)]);
    sync(&p, w(1), 3, e, SyncOp::Clear);
    sync(&p, w(1), 4, e, SyncOp::Wait);
    let out = sync(&p, w(2), 2, e, SyncOp::Close);
    assert!(matches!(&out[..], [(1, 4, PrimResult::Closed(_)), (2, 2, PrimResult::Done)]));
    assert!(matches!(sync(&p, w(1), 5, e, SyncOp::Set)[..], [(1, 5, PrimResult::Closed(_))]));
    let l = create(&p, SyncKind::Lock);
    let out = sync(&p, w(1), 6, l, SyncOp::Set);
    assert!(matches!(&out[..], [(1, 6, PrimResult::Error(_))]));
}

/// The driver's side (`call_local`): a lock granted just as the waiting caller is interrupted
/// is released again, so the interrupt leaks nothing and the lock is free afterwards.
#[test]
fn an_interrupted_local_acquire_granted_meanwhile_is_released() {
    use crate::WaitError;
    let dir = std::env::temp_dir().join(format!("volley-sync-test-{}", std::process::id()));
    let node = crate::testing::node(&dir, 1 << 20);
    let never = || Ok::<(), ()>(());
    // The answer, or a panic naming the wait's error (`WaitError` has no `PartialEq`).
    let ok = |r: Result<PrimResult, WaitError<()>>| r.unwrap_or_else(|e| panic!("{e:?}"));
    let kind = SyncKind::Lock;
    let Ok(PrimResult::Created(l)) = node.prim(PrimOp::SyncCreate { kind }, None, never) else {
        panic!("no lock made");
    };
    let op = |op| PrimOp::Sync { prim: l, op };
    assert_eq!(ok(node.prim(op(acquire(1)), None, never)), GOT);
    // The second acquire parks; its interrupt check releases the first hold (granting the
    // parked acquire) and then reports the interrupt, as a Ctrl-C arriving just then would.
    let r = node.prim(op(acquire(2)), None, || {
        let released = node.prim(op(SyncOp::Release { holder: 1 }), None, never);
        assert_eq!(ok(released), PrimResult::Done);
        Err("interrupted")
    });
    assert!(matches!(r, Err(WaitError::Interrupted("interrupted"))), "{r:?}");
    let state = node.prim(op(SyncOp::State), None, never);
    assert_eq!(ok(state), PrimResult::State { value: 0, broken: false });
    let free = node.prim(op(SyncOp::Acquire { holder: 3, block: false }), None, never);
    assert_eq!(ok(free), GOT);
}

/// A holder on another node (its op forwarded here) holds a lease of its node: when that node
/// leaves the cluster, the lock goes to the next waiter, told a holder died, and a barrier
/// that node's process waited at breaks.
#[test]
fn a_peer_nodes_death_ends_its_leases() {
    use volley_proto::NodeId;
    let p = Prims::default();
    p.set_node(NodeId(1));
    let l = create(&p, SyncKind::Lock);
    let b = create(&p, SyncKind::Barrier { parties: 2 });
    assert_eq!(volley_proto::prim_home(l), NodeId(1));
    let got = p.peer_op(NodeId(2), 5, PrimOp::Sync { prim: l, op: acquire(9) });
    assert!(matches!(&got[..], [d] if d.to == Who::Peer(NodeId(2)) && d.result == GOT));
    assert!(p.peer_op(NodeId(2), 6, PrimOp::Sync { prim: b, op: SyncOp::BarrierWait }).is_empty());
    assert!(sync(&p, w(3), 1, l, acquire(0)).is_empty());
    let out = answers(p.peer_gone(NodeId(2), "its link closed"));
    assert_eq!(out, vec![(3, 1, PrimResult::Acquired { died: true, notified: false })]);
    let out = sync(&p, w(3), 2, b, SyncOp::BarrierWait);
    assert!(matches!(&out[..], [(3, 2, PrimResult::Broken(_))]), "{out:?}");
}

/// A worker of node 2 holding node 1's lock dies (its node lives on): node 2 tells node 1,
/// which hands the lock to the next waiter, told that a holder died.
#[test]
fn a_remote_holders_death_is_told_to_the_home() {
    const DIED: PrimResult = PrimResult::Acquired { died: true, notified: false };
    use volley_proto::{NodeId, PeerMsg};
    let (home, away) = (Prims::default(), Prims::default());
    home.set_node(NodeId(1));
    away.set_node(NodeId(2));
    let l = create(&home, SyncKind::Lock);
    // Carries the messages `away` sends to node 1 there; what node 1 answers, to whom.
    let carry = |away: &Prims| -> Vec<(Who, PrimResult)> {
        let mut got = Vec::new();
        for (to, msg) in away.take_sends() {
            assert_eq!(to, NodeId(1));
            let PeerMsg::Prim { fwd, op } = msg else { panic!("{msg:?}") };
            got.extend(home.peer_op(NodeId(2), fwd, op).into_iter().map(|d| (d.to, d.result)));
        }
        got
    };
    assert!(away.op(w(7), 1, PrimOp::Sync { prim: l, op: acquire(70) }).is_empty());
    assert_eq!(carry(&away), vec![(Who::Peer(NodeId(2)), GOT)]);
    assert!(sync(&home, w(3), 1, l, acquire(0)).is_empty());
    assert!(away.drop_worker(WorkerId(7)).is_empty());
    // `HolderGone` itself wants no answer; the waiter gets the lock.
    assert_eq!(carry(&away), vec![(w(3), DIED)]);
    let out = sync(&home, w(3), 3, l, SyncOp::Release { holder: 0 });
    assert_eq!(out, vec![(3, 3, PrimResult::Done)]);
}
