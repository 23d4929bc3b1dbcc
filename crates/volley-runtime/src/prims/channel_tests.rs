//! Channels without sockets: ops in, deliveries out.

use super::test_util::{answers, w};
use super::*;

fn created(out: Vec<Delivery>) -> u64 {
    match answers(out)[..] {
        [(_, _, PrimResult::Created(id))] => id,
        ref other => panic!("create answered {other:?}"),
    }
}

fn chan(p: &Prims, capacity: u64, broadcast: bool) -> u64 {
    created(p.op(w(1), 0, PrimOp::ChanCreate { capacity, broadcast, name: String::new() }))
}

fn send(chan: u64, item: &[u8]) -> PrimOp {
    PrimOp::ChanSend { chan, item: item.to_vec() }
}

fn recv(chan: u64) -> PrimOp {
    PrimOp::ChanRecv { chan, reg: 0 }
}

fn item(s: &[u8]) -> PrimResult {
    PrimResult::Item(s.to_vec())
}

fn rg(chan: u64) -> Guard {
    Guard { chan, reg: 0, send: None }
}

fn sg(chan: u64, item: &[u8]) -> Guard {
    Guard { chan, reg: 0, send: Some(ByteBuf::from(item.to_vec())) }
}

fn select(guards: Vec<Guard>, skip: bool) -> PrimOp {
    PrimOp::ChanSelect { guards, skip, priority: false }
}

/// Capacity 0: a send parks until a receiver takes the item, and then both complete.
#[test]
fn rendezvous_pairs_sender_and_receiver() {
    let p = Prims::default();
    let c = chan(&p, 0, false);
    assert!(p.op(w(2), 1, send(c, b"a")).is_empty());
    assert!(p.op(w(3), 1, send(c, b"b")).is_empty());
    assert_eq!(p.parked(), 2);
    let out = answers(p.op(w(4), 7, recv(c)));
    assert_eq!(out, vec![(2, 1, PrimResult::Done), (4, 7, item(b"a"))]);
    // A parked receiver is paired with the next sender.
    p.op(w(4), 8, recv(c)); // takes "b"
    assert!(p.op(w(4), 9, recv(c)).is_empty());
    let out = answers(p.op(w(5), 1, send(c, b"c")));
    assert_eq!(out, vec![(4, 9, item(b"c")), (5, 1, PrimResult::Done)]);
    assert_eq!(p.parked(), 0);
}

/// A buffered channel takes `capacity` items, then parks senders FIFO (backpressure).
#[test]
fn buffered_channel_backpressures_senders() {
    let p = Prims::default();
    let c = chan(&p, 2, false);
    assert_eq!(answers(p.op(w(2), 1, send(c, b"1"))), vec![(2, 1, PrimResult::Done)]);
    assert_eq!(answers(p.op(w(2), 2, send(c, b"2"))), vec![(2, 2, PrimResult::Done)]);
    assert!(p.op(w(2), 3, send(c, b"3")).is_empty());
    let out = answers(p.op(w(3), 1, recv(c)));
    assert_eq!(out, vec![(2, 3, PrimResult::Done), (3, 1, item(b"1"))]);
    for (req, want) in [(2, b"2"), (3, b"3")] {
        assert_eq!(answers(p.op(w(3), req, recv(c))), vec![(3, req, item(want))]);
    }
}

/// Over many selects on two ready channels, each is chosen about half the time; with
/// `priority` the first ready guard always wins.
#[test]
fn select_is_fair_over_ready_guards() {
    let p = Prims::default();
    let (a, b) = (chan(&p, 100, false), chan(&p, 100, false));
    for i in 0..100u8 {
        p.op(w(2), 1, send(a, &[i]));
        p.op(w(2), 1, send(b, &[i]));
    }
    let mut picked = [0; 2];
    for r in 0..100 {
        match &answers(p.op(w(3), r, select(vec![rg(a), rg(b)], false)))[..] {
            [(3, _, PrimResult::Selected { index, item: Some(_), .. })] => {
                picked[*index as usize] += 1
            }
            other => panic!("select answered {other:?}"),
        }
    }
    assert!(picked[0] >= 40 && picked[1] >= 40, "{picked:?}");
    for r in 0..10 {
        let op = PrimOp::ChanSelect { guards: vec![rg(a), rg(b)], skip: false, priority: true };
        let out = answers(p.op(w(3), r, op));
        assert!(matches!(out[..], [(3, _, PrimResult::Selected { index: 0, .. })]), "{out:?}");
    }
}

/// A select parked on two channels commits exactly once: the first channel to fire takes
/// it off the other's wait list, so a later send there waits for a real receiver.
#[test]
fn parked_select_commits_once() {
    let p = Prims::default();
    let (a, b) = (chan(&p, 0, false), chan(&p, 0, false));
    assert!(p.op(w(3), 5, select(vec![rg(a), rg(b), sg(a, b"out")], false)).is_empty());
    assert_eq!(p.parked(), 1);
    let out = answers(p.op(w(2), 1, send(b, b"x")));
    assert_eq!(out.len(), 2);
    assert!(matches!(
        &out[0],
        (3, 5, PrimResult::Selected { index: 1, chan, item: Some(i) }) if *chan == b && i.as_slice() == b"x"
    ));
    assert_eq!(out[1], (2, 1, PrimResult::Done));
    assert_eq!(p.parked(), 0);
    // Nobody waits on `a` now: a send parks, a recv finds no select's item.
    assert!(p.op(w(2), 2, send(a, b"y")).is_empty());
    assert_eq!(answers(p.op(w(4), 1, select(vec![rg(b)], true))), vec![(4, 1, PrimResult::Empty)]);
    // Its send guard fires for a receiver if it is parked again.
    let out = answers(p.op(w(4), 2, recv(a)));
    assert_eq!(out, vec![(2, 2, PrimResult::Done), (4, 2, item(b"y"))]);
    // A cancelled select is answered Empty once and is gone from every list.
    p.op(w(3), 6, select(vec![rg(a), rg(b)], false));
    assert_eq!(answers(p.op(w(3), 6, PrimOp::Cancel)), vec![(3, 6, PrimResult::Empty)]);
    assert!(answers(p.op(w(3), 6, PrimOp::Cancel)).is_empty());
    assert!(p.op(w(2), 3, send(a, b"z")).is_empty());
}

#[test]
fn select_needs_a_guard_and_a_known_channel() {
    let p = Prims::default();
    let out = answers(p.op(w(3), 1, select(vec![], false)));
    assert!(matches!(&out[..], [(3, 1, PrimResult::Error(m))] if m.contains("guard")));
    let out = answers(p.op(w(3), 2, select(vec![rg(12345)], false)));
    assert!(matches!(&out[..], [(3, 2, PrimResult::Closed(m))] if m.contains("12345")));
}

/// Poison fails every parked op (a select with a guard there too) and every later one.
#[test]
fn poison_wakes_parked_ops() {
    let p = Prims::default();
    let (a, b) = (chan(&p, 0, false), chan(&p, 0, false));
    p.op(w(2), 1, recv(a));
    p.op(w(4), 1, select(vec![rg(b), rg(a)], false));
    let out = answers(p.op(w(1), 9, PrimOp::ChanPoison { chan: a }));
    assert_eq!(out.len(), 3);
    for (who, req, r) in &out[..2] {
        assert!(matches!(r, PrimResult::Poisoned(m) if m.contains(&a.to_string())), "{who} {r:?}");
        assert_eq!(*req, 1);
    }
    assert_eq!(out[2], (1, 9, PrimResult::Done));
    // A parked sender is failed too.
    let c = chan(&p, 0, false);
    p.op(w(3), 1, send(c, b"x"));
    let out = answers(p.op(w(1), 10, PrimOp::ChanPoison { chan: c }));
    assert!(matches!(out[..], [(3, 1, PrimResult::Poisoned(_)), (1, 10, PrimResult::Done)]));
    assert_eq!(p.parked(), 0);
    assert!(matches!(answers(p.op(w(5), 1, send(a, b"y")))[..], [(5, 1, PrimResult::Poisoned(_))]));
    let out = answers(p.op(w(5), 2, select(vec![rg(b), rg(a)], true)));
    assert!(matches!(out[..], [(5, 2, PrimResult::Poisoned(_))]));
    // The select was taken off `b` too.
    assert!(p.op(w(6), 1, send(b, b"z")).is_empty());
}

/// Once all writers retired, readers drain what is buffered and then fail `Retired`; once
/// all readers retired, writers fail. A silent leave (an end dropped) closes nothing.
#[test]
fn retire_closes_the_other_side() {
    let p = Prims::default();
    let c = chan(&p, 1, false);
    let w1 = created(p.op(w(2), 1, PrimOp::ChanJoin { chan: c, reader: false, travelling: false }));
    let w2 = created(p.op(w(3), 1, PrimOp::ChanJoin { chan: c, reader: false, travelling: false }));
    p.op(w(2), 2, send(c, b"last"));
    p.op(w(2), 3, PrimOp::ChanLeave { reg: w1, retire: true });
    assert_eq!(answers(p.op(w(4), 1, recv(c))), vec![(4, 1, item(b"last"))]);
    assert!(p.op(w(4), 2, recv(c)).is_empty());
    let out = answers(p.op(w(3), 2, PrimOp::ChanLeave { reg: w2, retire: true }));
    assert!(
        matches!(&out[0], (4, 2, PrimResult::Retired(m)) if m.contains("writer ends")),
        "{out:?}"
    );
    assert!(matches!(answers(p.op(w(4), 3, recv(c)))[..], [(4, 3, PrimResult::Retired(_))]));

    let c = chan(&p, 0, false);
    let r1 = created(p.op(w(4), 1, PrimOp::ChanJoin { chan: c, reader: true, travelling: false }));
    let r2 = created(p.op(w(5), 1, PrimOp::ChanJoin { chan: c, reader: true, travelling: false }));
    p.op(w(4), 2, PrimOp::ChanLeave { reg: r1, retire: false });
    assert!(p.op(w(2), 1, send(c, b"x")).is_empty());
    // The last reader's process dies: that retires its end.
    let out = answers(p.drop_worker(WorkerId(5)));
    assert!(matches!(&out[..], [(2, 1, PrimResult::Retired(m))] if m.contains("reader ends")));
    let _ = r2;
}

/// A pickled end's registration passes to the process that unpickles it, once.
#[test]
fn claim_moves_an_end_once() {
    let p = Prims::default();
    let c = chan(&p, 0, false);
    assert!(p
        .op(Who::Local, 1, PrimOp::ChanJoin { chan: c, reader: false, travelling: false })
        .is_empty());
    let Ok(Some(PrimResult::Created(reg))) = p.wait_local(1, None, &mut || Ok::<(), ()>(())) else {
        panic!("join answered no registration")
    };
    let claimed = created(p.op(w(2), 1, PrimOp::ChanClaim { chan: c, reg, reader: false }));
    assert_eq!(claimed, reg);
    let again = created(p.op(w(3), 1, PrimOp::ChanClaim { chan: c, reg, reader: false }));
    assert_ne!(again, reg);
    p.op(w(2), 2, PrimOp::ChanJoin { chan: c, reader: true, travelling: false });
    assert!(p.op(w(4), 1, recv(c)).is_empty());
    // Worker 2 dies: its claimed writer end retires, worker 3's still counts.
    p.drop_worker(WorkerId(2));
    assert!(p.op(w(4), 1, PrimOp::Cancel).len() == 1);
}

/// Every reader end of a broadcast channel gets each message; a full reader buffer parks
/// writers until that reader takes one.
#[test]
fn broadcast_reaches_every_reader() {
    let p = Prims::default();
    let c = chan(&p, 1, true);
    let regs: Vec<u64> = (2..5)
        .map(|n| {
            created(p.op(w(n), 1, PrimOp::ChanJoin { chan: c, reader: true, travelling: false }))
        })
        .collect();
    // Reader 2 waits already: it is handed the message directly.
    assert!(p.op(w(2), 2, PrimOp::ChanRecv { chan: c, reg: regs[0] }).is_empty());
    let out = answers(p.op(w(1), 1, send(c, b"m1")));
    assert_eq!(out, vec![(2, 2, item(b"m1")), (1, 1, PrimResult::Done)]);
    // Readers 3 and 4 hold m1 in their buffers (room 1): the next send parks.
    assert!(p.op(w(1), 2, send(c, b"m2")).is_empty());
    for (n, reg) in [(3, regs[1]), (4, regs[2])] {
        let out = answers(p.op(w(n), 2, PrimOp::ChanRecv { chan: c, reg }));
        assert_eq!(out.last(), Some(&(n, 2, item(b"m1"))));
    }
    assert_eq!(p.parked(), 0, "m2 went out once every buffer had room");
    for (n, reg) in [(2, regs[0]), (3, regs[1]), (4, regs[2])] {
        let out = answers(p.op(w(n), 3, PrimOp::ChanRecv { chan: c, reg }));
        assert_eq!(out, vec![(n, 3, item(b"m2"))]);
    }
    let out = answers(p.op(w(1), 3, recv(c)));
    assert!(matches!(&out[..], [(1, 3, PrimResult::Error(m))] if m.contains("reader end")));
}

/// A receiver that dies before acknowledging its item gives it back to the next receiver,
/// also for an item a select took.
#[test]
fn dead_receiver_loses_nothing() {
    let p = Prims::default();
    let c = chan(&p, 0, false);
    p.op(w(2), 1, recv(c));
    p.op(w(1), 1, send(c, b"a"));
    p.op(w(3), 1, select(vec![rg(c)], false));
    p.op(w(1), 2, send(c, b"b"));
    assert!(p.drop_worker(WorkerId(2)).is_empty());
    assert!(p.drop_worker(WorkerId(3)).is_empty());
    let got: Vec<_> = [1, 2]
        .into_iter()
        .map(|r| answers(p.op(w(4), r, PrimOp::ChanRecv { chan: c, reg: 0 })))
        .collect();
    assert_eq!(got, vec![vec![(4, 1, item(b"b"))], vec![(4, 2, item(b"a"))]]);
}

/// An item its taker could not use (interrupted) goes back to the head of the channel, or
/// to a receiver waiting now; a broadcast reader's goes back to its own buffer.
#[test]
fn unget_puts_an_item_back() {
    let p = Prims::default();
    let c = chan(&p, 2, false);
    p.op(w(1), 1, send(c, b"a"));
    p.op(w(1), 2, send(c, b"b"));
    p.op(w(2), 1, recv(c)); // "a", then interrupted
    p.unget(c, b"a".to_vec());
    assert_eq!(answers(p.op(w(3), 1, recv(c))), vec![(3, 1, item(b"a"))]);
    let d = chan(&p, 0, false);
    p.op(w(3), 2, select(vec![rg(d)], false));
    let out = answers(p.unget(d, b"x".to_vec()));
    assert!(matches!(&out[..], [(3, 2, PrimResult::Selected { index: 0, item: Some(_), .. })]));
    let b = chan(&p, 1, true);
    let reg = created(p.op(w(4), 1, PrimOp::ChanJoin { chan: b, reader: true, travelling: false }));
    p.op(w(1), 3, send(b, b"m1"));
    p.op(w(4), 2, PrimOp::ChanRecv { chan: b, reg }); // "m1", then interrupted
    p.unget(reg, b"m1".to_vec());
    let out = answers(p.op(w(4), 3, PrimOp::ChanRecv { chan: b, reg }));
    assert_eq!(out, vec![(4, 3, item(b"m1"))]);
}

/// A broadcast writer waits for a reader end to exist, and for a full reader's room; that
/// reader leaving (or dying) lets it go on, and the reader's own parked recv fails.
#[test]
fn broadcast_writers_wait_for_readers() {
    let p = Prims::default();
    let c = chan(&p, 0, true);
    assert!(p.op(w(1), 1, send(c, b"m1")).is_empty(), "no reader end yet: the send waits");
    // The join lets the send through: m1 sits in the new reader's buffer (room 1).
    let out = answers(p.op(w(2), 1, PrimOp::ChanJoin { chan: c, reader: true, travelling: false }));
    assert!(matches!(out[..], [(1, 1, PrimResult::Done), (2, 1, PrimResult::Created(_))]));
    assert_eq!(p.parked(), 0);
    let fast =
        created(p.op(w(3), 1, PrimOp::ChanJoin { chan: c, reader: true, travelling: false }));
    assert!(p.op(w(1), 2, send(c, b"m2")).is_empty(), "the slow reader's buffer is full");
    assert!(p.op(w(3), 2, PrimOp::ChanRecv { chan: c, reg: fast }).is_empty());
    // The slow reader dies: its end retires, and m2 goes to the fast one.
    let out = answers(p.drop_worker(WorkerId(2)));
    assert_eq!(out, vec![(3, 2, item(b"m2")), (1, 2, PrimResult::Done)]);
    // The last reader retires while it waits in recv: its recv fails, writers fail too.
    assert!(p.op(w(3), 3, PrimOp::ChanRecv { chan: c, reg: fast }).is_empty());
    let out = answers(p.op(w(3), 4, PrimOp::ChanLeave { reg: fast, retire: true }));
    assert!(matches!(&out[..], [(3, 3, PrimResult::Retired(_)), (3, 4, PrimResult::Done)]));
    assert!(matches!(answers(p.op(w(1), 3, send(c, b"m3")))[..], [(1, 3, PrimResult::Retired(_))]));
}

/// A worker's `Selected` item stays unacknowledged until its `Ack`; after it, the worker's
/// death gives nothing back.
#[test]
fn selected_items_are_acknowledged() {
    let p = Prims::default();
    let c = chan(&p, 1, false);
    p.op(w(1), 1, send(c, b"a"));
    p.op(w(2), 7, select(vec![rg(c)], false));
    p.op(w(2), 7, PrimOp::Ack);
    assert!(p.drop_worker(WorkerId(2)).is_empty());
    assert_eq!(answers(p.op(w(3), 1, select(vec![rg(c)], true))), vec![(3, 1, PrimResult::Empty)]);
}

/// A select over channels of two nodes is refused (the home of an id is in its top bits).
#[test]
fn select_over_two_nodes_is_refused() {
    let p = Prims::default();
    let c = chan(&p, 1, false);
    let far = volley_proto::prim_id(NodeId(7), 1);
    let out = answers(p.op(w(1), 1, select(vec![rg(c), rg(far)], true)));
    assert!(
        matches!(&out[..], [(1, 1, PrimResult::Error(m))] if m.contains("one node") && m.contains("node 7"))
    );
}

fn recv_many(chan: u64, max: u32) -> PrimOp {
    PrimOp::ChanRecvMany { chan, max }
}

fn post(chan: u64, item: &[u8]) -> PrimOp {
    PrimOp::ChanPost { chan, item: item.to_vec() }
}

fn items(list: &[&[u8]]) -> PrimResult {
    PrimResult::Items(list.iter().map(|i| ByteBuf::from(i.to_vec())).collect())
}

fn is_recall(d: &Delivery, to: Who, c: u64) -> bool {
    d.to == to && d.req == PRIM_RECALL && d.queue == c
}

/// A worker that sends alone to a buffered channel is granted slots (half the free room); its
/// posts fill them without answers; a sender that then finds no room parks and has the slots
/// recalled; the slots given back let it in.
#[test]
fn a_lone_sender_is_granted_slots_which_a_parked_sender_recalls() {
    let p = Prims::default();
    let c = chan(&p, 8, false);
    assert_eq!(answers(p.op(w(2), 1, send(c, b"1"))), vec![(2, 1, PrimResult::Done)]);
    // The second send in a row: 6 free, 3 of them reserved for worker 2.
    assert_eq!(answers(p.op(w(2), 2, send(c, b"2"))), vec![(2, 2, PrimResult::Granted(3))]);
    for i in [b"3", b"4"] {
        assert!(p.op(w(2), PRIM_NO_REPLY, post(c, i)).is_empty());
    }
    // 4 items and 1 reserved slot: 3 free for others.
    for (req, i) in [(1, b"a"), (2, b"b"), (3, b"c")] {
        assert_eq!(answers(p.op(w(3), req, send(c, i))), vec![(3, req, PrimResult::Done)]);
    }
    // Full but for worker 2's last slot: worker 3 parks and the slot is recalled.
    let out = p.op(w(3), 4, send(c, b"d"));
    assert_eq!(out.len(), 1);
    assert!(is_recall(&out[0], w(2), c), "{out:?}");
    // Worker 2 gives it back (and answers the recall): worker 3's item moves in.
    let out = answers(p.op(w(2), PRIM_NO_REPLY, PrimOp::ChanReturn { chan: c, n: 1 }));
    assert_eq!(out, vec![(3, 4, PrimResult::Done)]);
    p.op(w(2), PRIM_NO_REPLY, PrimOp::GiveBack { reqs: vec![], queue: c });
    // Every item, in order.
    for (req, want) in [b"1", b"2", b"3", b"4", b"a", b"b", b"c", b"d"].iter().enumerate() {
        let req = req as u64 + 10;
        assert_eq!(answers(p.op(w(4), req, recv(c))), vec![(4, req, item(*want))]);
    }
}

/// A post into a poisoned channel is answered (to the no-reply request: the worker raises it
/// at its next op); one whose slot a dead worker held frees it.
#[test]
fn a_post_into_a_poisoned_channel_fails_and_a_dead_senders_slots_are_freed() {
    let p = Prims::default();
    let c = chan(&p, 4, false);
    p.op(w(2), 1, send(c, b"1"));
    assert_eq!(answers(p.op(w(2), 2, send(c, b"2"))), vec![(2, 2, PrimResult::Granted(1))]);
    // Worker 2 dies holding its slot: the slot is free for worker 3.
    p.drop_worker(WorkerId(2));
    assert_eq!(answers(p.op(w(3), 1, send(c, b"3"))), vec![(3, 1, PrimResult::Done)]);
    assert_eq!(answers(p.op(w(3), 2, send(c, b"4"))), vec![(3, 2, PrimResult::Done)]);
    assert!(p.op(w(3), 3, send(c, b"5")).len() <= 1); // full: parks
    let d = chan(&p, 8, false);
    p.op(w(5), 1, send(d, b"x"));
    assert_eq!(answers(p.op(w(5), 2, send(d, b"y"))), vec![(5, 2, PrimResult::Granted(3))]);
    p.op(w(6), 1, PrimOp::ChanPoison { chan: d });
    let out = answers(p.op(w(5), PRIM_NO_REPLY, post(d, b"z")));
    assert!(matches!(out[..], [(5, PRIM_NO_REPLY, PrimResult::Poisoned(_))]), "{out:?}");
}

/// Fills channel `c` with items 0..n from worker 1 (a driver-like sender: no grants), then has
/// worker 2 receive twice (so that it receives alone).
fn backlog(p: &Prims, c: u64, n: u8) {
    for i in 0..n {
        p.op(Who::Local, u64::from(i) + 100, send(c, &[i]));
    }
    for req in [1, 2] {
        p.op(w(2), req, recv(c));
        p.op(w(2), req, PrimOp::Ack);
    }
}

/// A lone receiver with a backlog takes a batch; its extra items keep their room until
/// handed out, so a sender still parks on a channel that is full counting them, and moves in
/// as they are acknowledged.
#[test]
fn a_batch_keeps_its_room_until_handed_out() {
    let p = Prims::default();
    let c = chan(&p, 6, false);
    backlog(&p, c, 6); // 0 and 1 received; 2..5 left
    let out = answers(p.op(w(2), 3, recv_many(c, 3)));
    assert_eq!(out, vec![(2, 3, items(&[&[2], &[3], &[4]]))]);
    p.op(w(2), 3, PrimOp::Ack); // the first, the caller's
                                // Items 5 + lent 3, 4: three taken of six; the driver fills the rest, then parks.
    for i in [6u8, 7, 8] {
        assert_eq!(p.op(Who::Local, 200 + u64::from(i), send(c, &[i])).len(), 0);
    }
    assert_eq!(p.parked(), 0);
    assert!(p.op(w(9), 1, send(c, &[9])).is_empty());
    assert_eq!(p.parked(), 1);
    // Handing out item 3 frees its room: the parked sender's item moves in.
    let out = answers(p.op(w(2), 3, PrimOp::Ack));
    assert_eq!(out, vec![(9, 1, PrimResult::Done)]);
}

/// A receiver that parks while a batch waits in another worker's buffer has it recalled and
/// gets the oldest item: every receiver sees the channel's order.
#[test]
fn a_parked_receiver_recalls_a_batch_and_order_holds() {
    let p = Prims::default();
    let c = chan(&p, 8, false);
    backlog(&p, c, 6);
    p.op(w(2), 3, recv_many(c, 3)); // 2 (the caller's), 3, 4 lent
    p.op(w(2), 3, PrimOp::Ack);
    // Worker 3 would get item 5, but 3 and 4 are older: it parks and the batch is recalled.
    let out = p.op(w(3), 1, recv(c));
    assert_eq!(out.len(), 1);
    assert!(is_recall(&out[0], w(2), c), "{out:?}");
    // A send meanwhile goes to the buffer, not to the parked receiver.
    assert!(answers(p.op(w(4), 1, send(c, b"x"))).iter().all(|a| a.0 == 4));
    let out = answers(p.op(w(2), PRIM_NO_REPLY, PrimOp::GiveBack { reqs: vec![3], queue: c }));
    assert_eq!(out, vec![(3, 1, item(&[3]))]);
    for (req, want) in [(2, &[4u8][..]), (3, &[5]), (4, b"x")] {
        assert_eq!(answers(p.op(w(3), req, recv(c))), vec![(3, req, item(want))]);
    }
}

/// A receiver killed with a batch in its buffer loses none of it: back at the head, in order.
#[test]
fn a_killed_batch_holders_items_go_back_in_order() {
    let p = Prims::default();
    let c = chan(&p, 8, false);
    backlog(&p, c, 6);
    p.op(w(2), 3, recv_many(c, 3));
    p.op(w(2), 3, PrimOp::Ack); // 2 handed out; 3, 4 in the buffer
    p.drop_worker(WorkerId(2));
    for (req, want) in [(1, 3u8), (2, 4), (3, 5)] {
        assert_eq!(answers(p.op(w(3), req, recv(c))), vec![(3, req, item(&[want]))]);
    }
    // All the room is back: eight sends fit.
    for i in 0..8u8 {
        assert_eq!(p.op(Who::Local, 300 + u64::from(i), send(c, &[i])).len(), 0);
    }
    assert_eq!(p.parked(), 0);
}

/// A receiver that finds the writers all retired while a batch is lent waits for the batch's
/// items (recalled) instead of failing `Retired`; once they are all taken it fails.
#[test]
fn writers_retired_while_a_batch_is_lent_still_hand_its_items_out() {
    let p = Prims::default();
    let c = chan(&p, 8, false);
    let reg =
        created(p.op(w(1), 50, PrimOp::ChanJoin { chan: c, reader: false, travelling: false }));
    backlog(&p, c, 4); // 0, 1 received; 2, 3 left
    p.op(w(2), 3, recv_many(c, 2)); // 2 (the caller's), 3 lent
    p.op(w(2), 3, PrimOp::Ack);
    p.op(w(1), 51, PrimOp::ChanLeave { reg, retire: true });
    let out = p.op(w(3), 1, recv(c));
    assert!(out.len() == 1 && is_recall(&out[0], w(2), c), "{out:?}");
    let out = answers(p.op(w(2), PRIM_NO_REPLY, PrimOp::GiveBack { reqs: vec![3], queue: c }));
    assert_eq!(out, vec![(3, 1, item(&[3]))]);
    let out = answers(p.op(w(3), 2, recv(c)));
    assert!(matches!(out[..], [(3, 2, PrimResult::Retired(_))]), "{out:?}");
}

/// A sender holding slots dies while another worker's batch is being recalled: the recall
/// goes on (a receiver parked meanwhile still gets the batch's items first).
#[test]
fn a_dead_slot_holder_does_not_end_anothers_recall() {
    let p = Prims::default();
    let c = chan(&p, 16, false);
    backlog(&p, c, 6);
    p.op(w(5), 1, send(c, b"s"));
    let granted = answers(p.op(w(5), 2, send(c, b"t")));
    assert!(matches!(granted[..], [(5, 2, PrimResult::Granted(_))]), "{granted:?}");
    p.op(w(2), 3, recv_many(c, 3)); // 2 (the caller's), 3, 4 lent
    p.op(w(2), 3, PrimOp::Ack);
    let out = p.op(w(3), 1, recv(c)); // parks, recalls the batch
    assert!(out.len() == 1 && is_recall(&out[0], w(2), c), "{out:?}");
    assert!(answers(p.drop_worker(WorkerId(5))).is_empty());
    let out = answers(p.op(w(2), PRIM_NO_REPLY, PrimOp::GiveBack { reqs: vec![3], queue: c }));
    assert_eq!(out, vec![(3, 1, item(&[3]))]);
}
