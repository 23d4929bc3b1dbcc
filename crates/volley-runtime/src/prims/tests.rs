//! The queue service without sockets: ops in, deliveries out.

use super::test_util::{answers, w};
use super::*;

fn create(p: &Prims, maxsize: u64) -> u64 {
    match answers(p.op(w(1), 0, PrimOp::QueueCreate { maxsize }))[..] {
        [(1, 0, PrimResult::Created(id))] => id,
        ref other => panic!("create answered {other:?}"),
    }
}

fn put(queue: u64, item: &[u8], block: bool) -> PrimOp {
    PrimOp::Put { queue, item: item.to_vec(), block }
}

#[test]
fn items_come_out_in_order() {
    let p = Prims::default();
    let q = create(&p, 0);
    for i in 0..3u8 {
        assert_eq!(answers(p.op(w(1), 1, put(q, &[i], true))), vec![(1, 1, PrimResult::Done)]);
    }
    assert_eq!(
        answers(p.op(w(2), 9, PrimOp::Size { queue: q })),
        vec![(2, 9, PrimResult::Size(3))]
    );
    for i in 0..3u8 {
        let got = answers(p.op(w(2), 2, PrimOp::Get { queue: q, block: true }));
        assert_eq!(got, vec![(2, 2, PrimResult::Item(vec![i]))]);
    }
    let got = answers(p.op(w(2), 3, PrimOp::Get { queue: q, block: false }));
    assert_eq!(got, vec![(2, 3, PrimResult::Empty)]);
}

/// Parked getters are served first come, first served; the putter's own answer follows.
#[test]
fn parked_getters_are_fifo() {
    let p = Prims::default();
    let q = create(&p, 0);
    for (n, req) in [(2, 20), (3, 30), (4, 40)] {
        assert!(p.op(w(n), req, PrimOp::Get { queue: q, block: true }).is_empty());
    }
    assert_eq!(p.parked(), 3);
    let out = answers(p.op(w(1), 1, put(q, b"a", true)));
    assert_eq!(out, vec![(2, 20, PrimResult::Item(b"a".to_vec())), (1, 1, PrimResult::Done)]);
    let out = answers(p.op(w(1), 2, put(q, b"b", true)));
    assert_eq!(out[0], (3, 30, PrimResult::Item(b"b".to_vec())));
    assert_eq!(p.parked(), 1);
}

/// A full bounded queue refuses `put_nowait` and parks `put`; a get makes room for the first
/// parked putter, whose item keeps its place behind the others.
#[test]
fn bounded_queue_blocks_putters() {
    let p = Prims::default();
    let q = create(&p, 2);
    p.op(w(1), 1, put(q, b"1", true));
    p.op(w(1), 2, put(q, b"2", true));
    assert_eq!(answers(p.op(w(1), 3, put(q, b"x", false))), vec![(1, 3, PrimResult::Full)]);
    assert!(p.op(w(1), 4, put(q, b"3", true)).is_empty());
    assert!(p.op(w(5), 5, put(q, b"4", true)).is_empty());
    let out = answers(p.op(w(2), 6, PrimOp::Get { queue: q, block: true }));
    assert_eq!(out, vec![(2, 6, PrimResult::Item(b"1".to_vec())), (1, 4, PrimResult::Done)]);
    let mut got = Vec::new();
    for r in 7..10 {
        for (_, req, res) in answers(p.op(w(2), r, PrimOp::Get { queue: q, block: false })) {
            if req == r {
                got.push(res);
            }
        }
    }
    let items = ["2", "3", "4"].map(|s| PrimResult::Item(s.as_bytes().to_vec()));
    assert_eq!(got, items.to_vec());
}

/// A cancelled parked op is answered `Empty`/`Full` at once; a cancel that comes after the
/// answer (the op completed) is answered nothing, so the waiter gets exactly one answer.
#[test]
fn cancel_answers_once() {
    let p = Prims::default();
    let q = create(&p, 1);
    p.op(w(2), 1, PrimOp::Get { queue: q, block: true });
    assert_eq!(answers(p.op(w(2), 1, PrimOp::Cancel)), vec![(2, 1, PrimResult::Empty)]);
    assert_eq!(p.parked(), 0);
    // The item is not lost to the cancelled getter.
    p.op(w(1), 2, put(q, b"a", true));
    assert_eq!(answers(p.op(w(2), 1, PrimOp::Cancel)), vec![]);
    p.op(w(1), 3, put(q, b"b", true)); // Parked: the queue holds 1.
    assert_eq!(answers(p.op(w(1), 3, PrimOp::Cancel)), vec![(1, 3, PrimResult::Full)]);
    let out = answers(p.op(w(2), 4, PrimOp::Get { queue: q, block: false }));
    assert_eq!(out, vec![(2, 4, PrimResult::Item(b"a".to_vec()))]);
    assert_eq!(
        answers(p.op(w(2), 5, PrimOp::Size { queue: q })),
        vec![(2, 5, PrimResult::Size(0))]
    );
}

/// Closing fails every parked op and every later one, naming the queue.
#[test]
fn close_fails_parked_and_later_ops() {
    let p = Prims::default();
    let q = create(&p, 1);
    p.op(w(2), 1, PrimOp::Get { queue: q, block: true });
    let out = answers(p.op(w(1), 2, PrimOp::Close { queue: q }));
    assert_eq!(out.len(), 2);
    assert!(matches!(&out[0], (2, 1, PrimResult::Closed(m)) if m.contains(&format!("queue {q}"))));
    assert_eq!(out[1], (1, 2, PrimResult::Done));
    assert!(matches!(
        answers(p.op(w(1), 3, put(q, b"a", true)))[..],
        [(1, 3, PrimResult::Closed(_))]
    ));
    assert_eq!(p.parked(), 0);
}

/// A dead worker's parked get is dropped: the next item goes to the next getter.
#[test]
fn dead_worker_loses_nothing() {
    let p = Prims::default();
    let q = create(&p, 0);
    p.op(w(2), 1, PrimOp::Get { queue: q, block: true });
    p.op(w(3), 1, PrimOp::Get { queue: q, block: true });
    assert!(p.drop_worker(WorkerId(2)).is_empty());
    let out = answers(p.op(w(1), 2, put(q, b"a", true)));
    assert_eq!(out[0], (3, 1, PrimResult::Item(b"a".to_vec())));
    // Worker 3 dies before its next op: the item it was handed goes back to the head.
    p.op(w(1), 3, put(q, b"b", true));
    assert!(p.drop_worker(WorkerId(3)).is_empty());
    let out = answers(p.op(w(4), 1, PrimOp::Get { queue: q, block: false }));
    assert_eq!(out, vec![(4, 1, PrimResult::Item(b"a".to_vec()))]);
    // Worker 4 acknowledges "a": its death now gives back nothing.
    p.op(w(4), 1, PrimOp::Ack);
    // A parked getter gets a dead worker's unacknowledged item at once.
    p.op(w(5), 1, PrimOp::Get { queue: q, block: false }); // "b", unacknowledged
    p.op(w(6), 1, PrimOp::Get { queue: q, block: true }); // parked
    let out = answers(p.drop_worker(WorkerId(5)));
    assert_eq!(out, vec![(6, 1, PrimResult::Item(b"b".to_vec()))]);
    assert!(p.drop_worker(WorkerId(4)).is_empty());
}

#[test]
fn join_waits_for_task_done() {
    let p = Prims::default();
    let q = create(&p, 0);
    assert_eq!(answers(p.op(w(1), 1, PrimOp::Join { queue: q })), vec![(1, 1, PrimResult::Done)]);
    p.op(w(1), 2, put(q, b"a", true));
    assert!(p.op(w(1), 3, PrimOp::Join { queue: q }).is_empty());
    p.op(w(2), 4, PrimOp::Get { queue: q, block: true });
    let out = answers(p.op(w(2), 5, PrimOp::TaskDone { queue: q }));
    assert_eq!(out, vec![(1, 3, PrimResult::Done), (2, 5, PrimResult::Done)]);
    let out = answers(p.op(w(2), 6, PrimOp::TaskDone { queue: q }));
    assert!(matches!(out[..], [(2, 6, PrimResult::Error(_))]));
}

#[test]
fn oversized_item_is_refused_with_the_limit() {
    let p = Prims::default();
    let q = create(&p, 0);
    let out = answers(p.op(w(1), 1, put(q, &vec![0; MAX_PRIM_ITEM + 1], true)));
    assert!(
        matches!(&out[..], [(1, 1, PrimResult::Error(m))] if m.contains(&MAX_PRIM_ITEM.to_string()))
    );
}

/// The driver's answers are kept for it; a timed-out wait cancels and reports `Empty`.
#[test]
fn local_get_times_out_and_then_gets() {
    let p = Prims::default();
    let q = create(&p, 0);
    assert!(p.op(Who::Local, 7, PrimOp::Get { queue: q, block: true }).is_empty());
    let deadline = Some(Instant::now() + Duration::from_millis(30));
    let r = p.wait_local(7, deadline, &mut || Ok::<(), ()>(()));
    assert_eq!(r, Ok(None));
    p.op(Who::Local, 7, PrimOp::Cancel);
    assert_eq!(p.wait_local(7, None, &mut || Ok::<(), ()>(())), Ok(Some(PrimResult::Empty)));
    p.op(w(1), 1, put(q, b"z", true));
    assert_eq!(p.parked(), 0);
    assert_eq!(
        answers(p.op(w(2), 2, PrimOp::Size { queue: q })),
        vec![(2, 2, PrimResult::Size(1))]
    );
}

/// Two nodes' services, node 1 and node 2.
fn pair() -> [Prims; 2] {
    let nodes = [Prims::default(), Prims::default()];
    nodes[0].set_node(NodeId(1));
    nodes[1].set_node(NodeId(2));
    nodes
}

/// Carries every message between the two nodes until none is left (the links, by hand);
/// returns the answers for each node's workers.
fn settle(nodes: &[Prims; 2], mut pending: [Vec<Delivery>; 2]) -> [Vec<(u32, u64, PrimResult)>; 2] {
    let mut got = [Vec::new(), Vec::new()];
    loop {
        let mut moved = false;
        for i in 0..2 {
            let (me, other) = (NodeId(i as u32 + 1), 1 - i);
            let mut msgs = nodes[i].take_sends();
            for d in std::mem::take(&mut pending[i]) {
                match d.to {
                    Who::Peer(n) => {
                        msgs.push((n, PeerMsg::PrimReply { fwd: d.req, result: d.result }))
                    }
                    Who::Worker(w) => got[i].push((w.0, d.req, d.result)),
                    Who::Local => {}
                }
            }
            for (to, msg) in msgs {
                moved = true;
                assert_eq!(to, NodeId(other as u32 + 1));
                let out = match msg {
                    PeerMsg::Prim { fwd, op } => nodes[other].peer_op(me, fwd, op),
                    PeerMsg::PrimReply { fwd, result } => nodes[other].peer_reply(me, fwd, result),
                    m => panic!("unexpected {m:?}"),
                };
                pending[other].extend(out);
            }
        }
        if !moved && pending.iter().all(Vec::is_empty) {
            return got;
        }
    }
}

#[test]
fn an_op_on_another_nodes_queue_is_served_at_its_home() {
    let n = pair();
    let q = create(&n[1], 0);
    assert_eq!(prim_home(q), NodeId(2));
    // A worker of node 1 parks in get on node 2's queue: parked at the home.
    let got = settle(&n, [n[0].op(w(5), 3, PrimOp::Get { queue: q, block: true }), vec![]]);
    assert!(got.iter().all(Vec::is_empty));
    assert_eq!(n[1].parked(), 1);
    // A put at the home hands the item over the link to it.
    let got = settle(&n, [vec![], n[1].op(w(9), 1, put(q, b"x", true))]);
    assert_eq!(got[0], vec![(5, 3, PrimResult::Item(b"x".to_vec()))]);
    assert_eq!(got[1], vec![(9, 1, PrimResult::Done)]);
    // Size, put and get from node 1, in order.
    let got = settle(&n, [n[0].op(w(5), 4, put(q, b"y", true)), vec![]]);
    assert_eq!(got[0], vec![(5, 4, PrimResult::Done)]);
    let got = settle(&n, [n[0].op(w(5), 5, PrimOp::Size { queue: q }), vec![]]);
    assert_eq!(got[0], vec![(5, 5, PrimResult::Size(1))]);
}

#[test]
fn an_item_on_its_way_to_a_dead_worker_of_another_node_goes_home() {
    let n = pair();
    let q = create(&n[1], 0);
    settle(&n, [vec![], n[1].op(w(9), 1, put(q, b"x", true))]);
    let got = settle(&n, [n[0].op(w(5), 3, PrimOp::Get { queue: q, block: false }), vec![]]);
    assert_eq!(got[0], vec![(5, 3, PrimResult::Item(b"x".to_vec()))]);
    // Killed before its acknowledgement: the item goes back to its queue at the home.
    let got = settle(&n, [n[0].drop_worker(WorkerId(5)), vec![]]);
    assert!(got.iter().all(Vec::is_empty));
    let got = settle(&n, [vec![], n[1].op(w(9), 2, PrimOp::Get { queue: q, block: false })]);
    assert_eq!(got[1], vec![(9, 2, PrimResult::Item(b"x".to_vec()))]);
    // Acknowledged, an item stays taken.
    settle(&n, [vec![], n[1].op(w(9), 3, put(q, b"z", true))]);
    settle(&n, [n[0].op(w(6), 7, PrimOp::Get { queue: q, block: false }), vec![]]);
    settle(&n, [n[0].op(w(6), 7, PrimOp::Ack), vec![]]);
    settle(&n, [n[0].drop_worker(WorkerId(6)), vec![]]);
    let got = settle(&n, [vec![], n[1].op(w(9), 4, PrimOp::Size { queue: q })]);
    assert_eq!(got[1], vec![(9, 4, PrimResult::Size(0))]);
}

#[test]
fn a_dead_worker_of_another_node_stops_waiting_at_the_home() {
    let n = pair();
    let q = create(&n[1], 0);
    settle(&n, [n[0].op(w(5), 3, PrimOp::Get { queue: q, block: true }), vec![]]);
    assert_eq!(n[1].parked(), 1);
    settle(&n, [n[0].drop_worker(WorkerId(5)), vec![]]);
    assert_eq!(n[1].parked(), 0, "the home dropped the dead worker's get");
    let got = settle(&n, [vec![], n[1].op(w(9), 1, put(q, b"x", true))]);
    assert_eq!(got[1], vec![(9, 1, PrimResult::Done)]);
    let got = settle(&n, [vec![], n[1].op(w(9), 2, PrimOp::Size { queue: q })]);
    assert_eq!(got[1], vec![(9, 2, PrimResult::Size(1))], "nobody took the item");
}

#[test]
fn a_cancelled_forwarded_get_is_answered_once() {
    let n = pair();
    let q = create(&n[1], 0);
    settle(&n, [n[0].op(w(5), 3, PrimOp::Get { queue: q, block: true }), vec![]]);
    let got = settle(&n, [n[0].op(w(5), 3, PrimOp::Cancel), vec![]]);
    assert_eq!(got[0], vec![(5, 3, PrimResult::Empty)]);
    assert_eq!(n[1].parked(), 0);
    let got = settle(&n, [n[0].op(w(5), 3, PrimOp::Cancel), vec![]]);
    assert!(got[0].is_empty(), "a second cancel gets no answer of its own");
}

#[test]
fn ops_waiting_on_a_node_that_left_fail_naming_it() {
    let n = pair();
    let q = create(&n[1], 0);
    settle(&n, [n[0].op(w(5), 3, PrimOp::Get { queue: q, block: true }), vec![]]);
    let got = answers(n[0].peer_gone(NodeId(2), "it stopped answering"));
    match &got[..] {
        [(5, 3, PrimResult::Closed(m))] => {
            assert!(m.contains("node 2") && m.contains("it stopped answering"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    // The home forgets what the departed node parked there.
    assert_eq!(n[1].parked(), 1);
    assert!(n[1].peer_gone(NodeId(1), "gone").is_empty());
    assert_eq!(n[1].parked(), 0);
}

#[test]
fn a_failed_no_reply_put_on_another_node_reaches_its_worker() {
    let n = pair();
    let q = create(&n[1], 0);
    settle(&n, [vec![], n[1].op(w(9), 1, PrimOp::Close { queue: q })]);
    let got = settle(&n, [n[0].op(w(5), PRIM_NO_REPLY, put(q, b"x", false)), vec![]]);
    assert!(matches!(&got[0][..], [(5, PRIM_NO_REPLY, PrimResult::Closed(_))]), "{got:?}");
    // A put that succeeds sends nothing back.
    let q2 = create(&n[1], 0);
    let got = settle(&n, [n[0].op(w(5), PRIM_NO_REPLY, put(q2, b"x", false)), vec![]]);
    assert!(got.iter().all(Vec::is_empty));
}

#[test]
fn a_peer_op_on_a_primitive_not_here_is_not_passed_on() {
    let n = pair();
    let elsewhere = prim_id(NodeId(3), 77);
    let got = n[1].peer_op(NodeId(1), 4, PrimOp::Size { queue: elsewhere });
    assert!(matches!(
        &got[..],
        [Delivery { to: Who::Peer(NodeId(1)), req: 4, result: PrimResult::Closed(_), .. }]
    ));
    assert!(n[1].take_sends().is_empty());
}

fn get(queue: u64, block: bool) -> PrimOp {
    PrimOp::Get { queue, block }
}

fn get_many(queue: u64, max: u32) -> PrimOp {
    PrimOp::GetMany { queue, block: true, max }
}

fn items(xs: &[&[u8]]) -> PrimResult {
    PrimResult::Items(xs.iter().map(|x| ByteBuf::from(x.to_vec())).collect())
}

/// A queue of `n` one-byte items 0..n, and worker 2 having got two alone (so that its next
/// `GetMany` may take a batch).
fn streaming(p: &Prims, n: u8) -> u64 {
    let q = create(p, 0);
    for i in 0..n {
        p.op(w(1), 1, put(q, &[i], true));
    }
    for (req, i) in [(2, 0u8), (3, 1)] {
        assert_eq!(
            answers(p.op(w(2), req, get(q, true))),
            vec![(2, req, PrimResult::Item(vec![i]))]
        );
        p.op(w(2), req, PrimOp::Ack);
    }
    q
}

/// A consumer that gets alone takes a batch; its items count in `qsize` until each is
/// acknowledged (handed out), and the batch holds at most `max`.
#[test]
fn a_lone_consumer_takes_batches_counted_until_acknowledged() {
    let p = Prims::default();
    let q = streaming(&p, 8);
    let out = answers(p.op(w(2), 4, get_many(q, 3)));
    assert_eq!(out, vec![(2, 4, items(&[&[2], &[3], &[4]]))]);
    // Three left in the queue, two extras in the worker's buffer (the first was the caller's).
    let size = |p: &Prims| answers(p.op(w(3), 9, PrimOp::Size { queue: q }));
    assert_eq!(size(&p), vec![(3, 9, PrimResult::Size(5))]);
    p.op(w(2), 4, PrimOp::Ack); // the first
    p.op(w(2), 4, PrimOp::Ack); // handed out from the buffer
    assert_eq!(size(&p), vec![(3, 9, PrimResult::Size(4))]);
    p.op(w(2), 4, PrimOp::Ack);
    assert_eq!(size(&p), vec![(3, 9, PrimResult::Size(3))]);
    // A driver's (or another node's) GetMany takes one item.
    let out = p.op(Who::Local, 7, get_many(q, 3));
    assert!(out.is_empty());
}

/// Two consumers taking turns get one item at a time: no batch goes back and forth.
#[test]
fn consumers_taking_turns_get_no_batches() {
    let p = Prims::default();
    let q = create(&p, 0);
    for i in 0..6u8 {
        p.op(w(1), 1, put(q, &[i], true));
    }
    for (n, req) in [(2, 1), (3, 1), (2, 2), (3, 2)] {
        let out = answers(p.op(w(n), req, get_many(q, 8)));
        assert!(matches!(out[..], [(_, _, PrimResult::Item(_))]), "{out:?}");
    }
}

/// Another getter finding the queue "empty" while a batch's items wait in a worker's buffer
/// has them recalled, and waits for them rather than take a newer item first: every consumer
/// sees the items in the queue's order.
#[test]
fn a_waiting_getter_recalls_a_buffer_and_order_holds() {
    let p = Prims::default();
    let q = streaming(&p, 5);
    let out = answers(p.op(w(2), 4, get_many(q, 2)));
    assert_eq!(out, vec![(2, 4, items(&[&[2], &[3]]))]);
    p.op(w(2), 4, PrimOp::Ack); // item 2 handed out; 3 waits in the buffer
                                // Worker 3 gets: item 4 is in the queue, but 3 is older and lent: 3 waits, 2 is recalled.
    let out = p.op(w(3), 1, get(q, true));
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].to, out[0].req, out[0].queue), (w(2), PRIM_RECALL, q));
    // A put meanwhile goes to the queue, not to the parked getter.
    assert_eq!(answers(p.op(w(1), 5, put(q, &[5], true))), vec![(1, 5, PrimResult::Done)]);
    // The holder's own next get waits behind worker 3 too.
    assert!(p.op(w(2), 5, get(q, true)).is_empty());
    // It gives back item 3: worker 3 gets it, then worker 2 gets item 4.
    let out = answers(p.op(w(2), PRIM_NO_REPLY, PrimOp::GiveBack { reqs: vec![4], queue: q }));
    assert_eq!(out, vec![(3, 1, PrimResult::Item(vec![3])), (2, 5, PrimResult::Item(vec![4]))]);
    let size = answers(p.op(w(4), 1, PrimOp::Size { queue: q }));
    assert_eq!(size, vec![(4, 1, PrimResult::Size(1))]);
}

/// A recall whose holder had handed everything out is answered with no items and ends.
#[test]
fn an_empty_answer_to_a_recall_ends_it() {
    let p = Prims::default();
    let q = streaming(&p, 4);
    p.op(w(2), 4, get_many(q, 2)); // items 2, 3
    p.op(w(3), 1, get(q, true)); // parks, recalls
    p.op(w(2), 4, PrimOp::Ack);
    p.op(w(2), 4, PrimOp::Ack); // both handed out before the recall arrived
    let out = answers(p.op(w(2), PRIM_NO_REPLY, PrimOp::GiveBack { reqs: vec![], queue: q }));
    assert!(out.is_empty());
    let out = answers(p.op(w(1), 2, put(q, b"x", true)));
    assert_eq!(out[0], (3, 1, PrimResult::Item(b"x".to_vec())));
}

/// A consumer killed with items in its buffer loses none: they go back to the head of the
/// queue in order (the first to the getter parked meanwhile), and a recall in progress ends.
#[test]
fn a_killed_batch_holder_gives_its_items_back_in_order() {
    let p = Prims::default();
    let q = streaming(&p, 6);
    p.op(w(2), 4, get_many(q, 3)); // 2 (the caller's), 3, 4
    p.op(w(2), 4, PrimOp::Ack); // 2 handed out
    p.op(w(3), 1, get(q, true)); // parks (5 is newer than the lent 3, 4), recalls
    let out = answers(p.drop_worker(WorkerId(2)));
    assert_eq!(out, vec![(3, 1, PrimResult::Item(vec![3]))]);
    for (req, i) in [(2, 4u8), (3, 5)] {
        let got = answers(p.op(w(3), req, get(q, false)));
        assert_eq!(got, vec![(3, req, PrimResult::Item(vec![i]))]);
    }
    let size = answers(p.op(w(3), 9, PrimOp::Size { queue: q }));
    assert_eq!(size, vec![(3, 9, PrimResult::Size(0))]);
}

/// A worker whose task ended gives back its buffer (no recall): the items are first again.
#[test]
fn items_given_back_at_a_task_end_are_first_again() {
    let p = Prims::default();
    let q = streaming(&p, 5);
    p.op(w(2), 4, get_many(q, 2)); // 2, 3
    p.op(w(2), 4, PrimOp::Ack);
    p.op(w(2), PRIM_NO_REPLY, PrimOp::GiveBack { reqs: vec![4], queue: 0 });
    for (req, i) in [(1, 3u8), (2, 4)] {
        let got = answers(p.op(w(5), req, get(q, false)));
        assert_eq!(got, vec![(5, req, PrimResult::Item(vec![i]))]);
    }
}

/// A recall can overtake the batch it is about on the worker's connection (they are written
/// by different threads): the worker answers it with nothing, so the node asks again, and the
/// getters parked meanwhile still get nothing newer than the batch's items.
#[test]
fn a_recall_that_overtook_its_batch_is_made_again() {
    let p = Prims::default();
    let q = streaming(&p, 6);
    p.op(w(2), 4, get_many(q, 3)); // 2 (the caller's), 3, 4: still on their way
    p.op(w(3), 1, get(q, true)); // parks, recalls
    p.op(w(2), 4, PrimOp::Ack); // item 2 arrived
                                // The recall arrived before the batch: nothing to give back yet.
    let out = p.op(w(2), PRIM_NO_REPLY, PrimOp::GiveBack { reqs: vec![], queue: q });
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].to, out[0].req, out[0].queue), (w(2), PRIM_RECALL, q));
    assert!(p.op(w(1), 2, put(q, b"x", true)).iter().all(|d| d.to == w(1)));
    // The batch came, then the second recall: 3 and 4 go back, ahead of 5.
    let out = answers(p.op(w(2), PRIM_NO_REPLY, PrimOp::GiveBack { reqs: vec![4], queue: q }));
    assert_eq!(out, vec![(3, 1, PrimResult::Item(vec![3]))]);
    for (req, i) in [(2, 4u8), (3, 5)] {
        let got = answers(p.op(w(3), req, get(q, false)));
        assert_eq!(got, vec![(3, req, PrimResult::Item(vec![i]))]);
    }
}
