//! The primitive service: queues (issue 20's first primitive) living in the node of the process
//! that made them, with a lock of their own so that a busy queue never holds up the scheduler.
//!
//! The service is sans-IO: an op comes in with who asked and its request id, and answers come
//! out as [`Delivery`]s, to send after the lock is released. Ops that cannot complete now
//! (a `get` on an empty queue, a `put` on a full one, a `join`) park the asker in FIFO order.
//! A parked op has no deadline here: its asker decides when to stop waiting and sends a
//! `Cancel`, answered in order on the asker's own connection, so exactly one answer reaches it
//! and an item is never both handed over and reported `Empty` (see [`PrimOp::Cancel`]).
//! Answers for this node's driver (`Who::Local`) are kept here until it takes them.
//!
//! A primitive's id names its home node (`prim_home`). An op on another node's primitive is
//! forwarded there (`PeerMsg::Prim`) under an id of this node's (`fwd`), and its answer
//! (`PeerMsg::PrimReply`) is handed to the asker as if it came from here: the item of a `get`
//! stays un-acknowledged in this node until the worker's `Ack`, and goes home again if the
//! worker dies first. When a node leaves the cluster, the ops forwarded to it fail `Closed`
//! naming it, and the ops it parked here are dropped.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_bytes::ByteBuf;
use volley_proto::{
    encode, prim_home, prim_id, Guard, NodeId, NodeToWorker, PeerMsg, PrimOp, PrimResult, WorkerId,
    MAX_PRIM_ITEM, PRIM_NO_REPLY, PRIM_RECALL,
};
use volley_store::sync::{Condvar, Mutex};

use crate::outbox::Outbox;
use crate::shared::Shared;
use crate::{WaitError, CHECK_INTERVAL};

pub(crate) mod async_local;
mod channel;

/// Who asked: this node's driver, one of its workers, or a process of another node (whose op
/// that node forwarded here; its request id is the forwarder's `fwd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Who {
    Local,
    Worker(WorkerId),
    Peer(NodeId),
}

/// A forwarded op's `fwd` with this bit set wants no answer unless it failed (an unbounded
/// queue's `put`, an `Unget`); the rest names the asker, to tell it of the failure.
const FWD_NO_REPLY: u64 = 1 << 63;
/// In a no-reply `fwd`: the asker is this node's driver, not a worker.
const FWD_LOCAL: u64 = 1 << 32;

/// An op forwarded to its primitive's home, waiting for the answer.
#[derive(Debug, Clone, Copy)]
struct Fwd {
    who: Who,
    req: u64,
    home: NodeId,
    target: u64,
    /// A `Cancel` for it went home already (its asker stopped waiting or died).
    cancelled: bool,
}

/// An answer for a worker or for another node, to send once the service's lock is released.
/// `queue` names the primitive an `Item` came from, so it can go back if the worker is gone.
#[derive(Debug)]
pub struct Delivery {
    pub to: Who,
    pub req: u64,
    pub result: PrimResult,
    pub queue: u64,
    /// The worker lent its CPU while this op was parked (see [`serve_worker`]): it takes it
    /// back once answered.
    pub lent: bool,
}

#[derive(Debug, Clone, Copy)]
struct Waiter {
    who: Who,
    req: u64,
}

/// A batch (`PrimOp::GetMany`) holds items up to about this many bytes (always at least one),
/// so a consumer's buffer of large items stays small.
const BATCH_BYTES: usize = 256 << 10;

/// An item handed to a worker that has not acknowledged it yet (see `Inner::unacked`).
#[derive(Debug)]
struct Taken {
    req: u64,
    /// The queue or channel it goes back to.
    from: u64,
    item: Vec<u8>,
    /// One of a batch's extra items: it waits in the worker's buffer until a later get hands
    /// it out (and counts in its queue's `lent` meanwhile).
    extra: bool,
}

#[derive(Default)]
struct Queue {
    /// 0: unbounded.
    maxsize: u64,
    items: VecDeque<Vec<u8>>,
    getters: VecDeque<Waiter>,
    putters: VecDeque<(Waiter, Vec<u8>)>,
    /// Items put and not yet marked done (`JoinableQueue`).
    unfinished: u64,
    joiners: Vec<Waiter>,
    /// Extra items of batches waiting in a worker's buffer: still counted by `Size`.
    lent: u64,
    /// The one worker whose buffer holds them: one at a time, so that items given back can go
    /// to the front of the queue in their order.
    holder: Option<WorkerId>,
    /// The holder was asked to give them back (another process waits); until it answers,
    /// items go to nobody (a getter could otherwise take a newer item than one given back
    /// later), and no batch is handed out.
    recalling: bool,
    /// Who got last, and how many gets in a row it made: a batch goes only to a consumer that
    /// gets alone, so that two that take turns do not pass batches back and forth.
    last_getter: Option<Who>,
    solo: u32,
}

impl Queue {
    fn note_getter(&mut self, who: Who) {
        if self.last_getter == Some(who) {
            self.solo = self.solo.saturating_add(1);
        } else {
            self.last_getter = Some(who);
            self.solo = 1;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Parked {
    Get,
    Put,
    Join,
    /// A channel op (its guards' wait lists are in `channel::Chans`).
    Chan,
    /// At a lock, semaphore, event, barrier or condition (the id is that primitive's).
    Sync,
}

#[derive(Default)]
struct Inner {
    queues: HashMap<u64, Queue>,
    /// Locks, semaphores, events, barriers and conditions ([`sync`]).
    sync: HashMap<u64, sync::SyncPrim>,
    next_id: u64,
    /// Where each parked op waits: (asker, request) -> (queue, kind).
    parked: HashMap<(Who, u64), (u64, Parked)>,
    /// Answers for the driver's threads, by request id.
    local: HashMap<u64, PrimResult>,
    next_local: u64,
    /// Workers' connections, taken from the node's table on their first op (so an answer does
    /// not take the scheduler's lock).
    conns: HashMap<WorkerId, Arc<Outbox>>,
    /// Items handed to each worker whose arrival it has not acknowledged yet, as (request,
    /// queue, item): if it dies first they go back to the head of their queues, so an item on
    /// its way to a consumer killed mid-`get` is not lost. The acknowledgement rides on the
    /// worker's next message (no write of its own: a get stays one round trip), so an item a
    /// consumer took and was killed before its next message reaches another consumer too.
    unacked: HashMap<WorkerId, Vec<Taken>>,
    chans: channel::Chans,
    /// Parked ops whose worker lent its CPU to the scheduler while they wait.
    lent: HashSet<(WorkerId, u64)>,
    /// This node's id in its cluster (and the ids it had before a head restart renumbered
    /// the nodes): primitives made here carry it. `None` alone: every id is this node's.
    me: Option<NodeId>,
    was: Vec<NodeId>,
    /// Ops forwarded to other nodes, by `fwd`, and the `fwd` of each asker's op.
    forwarded: HashMap<u64, Fwd>,
    by_asker: HashMap<(Who, u64), u64>,
    next_fwd: u64,
    /// Messages for other nodes, sent once the lock is released (see [`deliver`]).
    sends: Vec<(NodeId, PeerMsg)>,
    /// Locks and semaphores of other nodes each worker here asked for, as (primitive,
    /// holder): when the worker dies, their homes are told to end its leases.
    remote_holds: HashMap<WorkerId, HashSet<(u64, u64)>>,
}

/// The node's primitive service.
pub struct Prims {
    inner: Mutex<Inner>,
    /// Wakes the driver's threads when `local` gets an answer.
    local_cv: Condvar,
}

impl Default for Prims {
    /// Ids start at a random point, so that an id taken to another node (or kept from an
    /// earlier session) names no queue there instead of someone else's.
    fn default() -> Prims {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let seed =
            (nanos ^ (u64::from(std::process::id()) << 40)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let inner = Inner { next_id: (seed >> 12) << 8, ..Inner::default() };
        Prims { inner: Mutex::new(inner), local_cv: Condvar::new() }
    }
}

fn gone(queue: u64) -> PrimResult {
    PrimResult::Closed(format!(
        "queue {queue} was shut down, or was made in another session or on a node that has \
         since left the cluster"
    ))
}

/// The op of a `select`, a `get` or a `put` that may park: its worker lends its CPU.
fn may_park(op: &PrimOp) -> bool {
    use volley_proto::SyncOp;
    match op {
        PrimOp::Put { block, .. } | PrimOp::Get { block, .. } | PrimOp::GetMany { block, .. } => {
            *block
        }
        PrimOp::Join { .. }
        | PrimOp::ChanSend { .. }
        | PrimOp::ChanRecv { .. }
        | PrimOp::ChanRecvMany { .. } => true,
        PrimOp::ChanSelect { skip, .. } => !*skip,
        PrimOp::Sync { op: SyncOp::Acquire { block, .. }, .. } => *block,
        PrimOp::Sync {
            op: SyncOp::Wait | SyncOp::BarrierWait | SyncOp::CondWait { .. }, ..
        } => true,
        _ => false,
    }
}

impl Inner {
    /// Records `result` for `w`: kept for the driver, or returned for a worker.
    fn answer(&mut self, w: Waiter, queue: u64, result: PrimResult, out: &mut Vec<Delivery>) {
        match w.who {
            // An undo's answer (see `call_local`): nobody waits for it.
            Who::Local if w.req == u64::MAX => {}
            Who::Local => {
                self.local.insert(w.req, result);
            }
            Who::Worker(_) if w.req == PRIM_NO_REPLY && result == PrimResult::Done => {}
            Who::Worker(worker) => {
                // Where the item goes back to: a select's says (its guards' channels differ).
                let taken = match &result {
                    PrimResult::Item(item) => Some((queue, item.clone())),
                    PrimResult::Selected { chan, item: Some(item), .. } => {
                        Some((*chan, item.to_vec()))
                    }
                    _ => None,
                };
                if let Some((from, item)) = taken {
                    let copy = Taken { req: w.req, from, item, extra: false };
                    self.unacked.entry(worker).or_default().push(copy);
                }
                if let PrimResult::Items(items) = &result {
                    let list = self.unacked.entry(worker).or_default();
                    for (i, item) in items.iter().enumerate() {
                        let item = item.to_vec();
                        list.push(Taken { req: w.req, from: queue, item, extra: i > 0 });
                    }
                }
                let lent = self.lent.remove(&(worker, w.req));
                out.push(Delivery { to: w.who, req: w.req, result, queue, lent })
            }
            Who::Peer(_) if w.req & FWD_NO_REPLY != 0 && result == PrimResult::Done => {}
            Who::Peer(_) => {
                out.push(Delivery { to: w.who, req: w.req, result, queue, lent: false })
            }
        }
    }

    /// Whether the primitive `id` lives here.
    fn is_home(&self, id: u64) -> bool {
        let home = prim_home(id);
        self.me.is_none_or(|me| me == home) || self.was.contains(&home)
    }

    /// A fresh id for a primitive made here.
    fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        prim_id(self.me.unwrap_or(NodeId(0)), self.next_id)
    }

    /// Sends `op` on another node's primitive `target` to its home.
    fn forward(&mut self, who: Who, req: u64, target: u64, op: PrimOp) {
        channel::forwarding(self, who, req, &op);
        let home = prim_home(target);
        let fwd = if req == PRIM_NO_REPLY || req == u64::MAX {
            // Answered only if it fails: the asker is told at its next op.
            FWD_NO_REPLY
                | match who {
                    Who::Worker(w) => u64::from(w.0),
                    _ => FWD_LOCAL,
                }
        } else {
            self.next_fwd += 1;
            let fwd = self.next_fwd & !FWD_NO_REPLY;
            self.forwarded.insert(fwd, Fwd { who, req, home, target, cancelled: false });
            self.by_asker.insert((who, req), fwd);
            fwd
        };
        self.sends.push((home, PeerMsg::Prim { fwd, op }));
    }

    /// Asks the home of the forwarded op `fwd` to stop waiting on it (answered `Empty`/`Full`
    /// if it was still parked; else its answer is on its way).
    fn cancel_forwarded(&mut self, fwd: u64) {
        if let Some(f) = self.forwarded.get_mut(&fwd) {
            if !f.cancelled {
                f.cancelled = true;
                let home = f.home;
                self.sends.push((home, PeerMsg::Prim { fwd, op: PrimOp::Cancel }));
            }
        }
    }

    /// The answer to an op this node forwarded to `from`.
    fn forwarded_answer(
        &mut self,
        from: NodeId,
        fwd: u64,
        result: PrimResult,
        out: &mut Vec<Delivery>,
    ) {
        if fwd & FWD_NO_REPLY != 0 {
            // A no-reply op failed: its worker raises it at its next op.
            if fwd & FWD_LOCAL == 0 {
                let to = Who::Worker(WorkerId(fwd as u32));
                out.push(Delivery { to, req: PRIM_NO_REPLY, result, queue: 0, lent: false });
            }
            return;
        }
        let Some(f) = self.forwarded.get(&fwd).copied() else { return };
        if f.home != from {
            return; // Not the node it was sent to: ignored.
        }
        self.forwarded.remove(&fwd);
        self.by_asker.remove(&(f.who, f.req));
        channel::forwarded_answer(self, f.who, f.req, &result);
        self.answer(Waiter { who: f.who, req: f.req }, f.target, result, out);
    }

    /// Node `node` left: the ops forwarded to it fail, naming it, and those it parked here
    /// are dropped.
    fn drop_peer(&mut self, node: NodeId, why: &str, out: &mut Vec<Delivery>) {
        let lost: Vec<u64> =
            self.forwarded.iter().filter(|(_, f)| f.home == node).map(|(k, _)| *k).collect();
        for fwd in lost {
            let msg = format!(
                "the primitive this waited on lived on node {}, which is gone ({why})",
                node.0
            );
            self.forwarded_answer(node, fwd, PrimResult::Closed(msg), out);
        }
        self.drop_parked(Who::Peer(node), out);
        // The channel ends its processes held retire.
        channel::drop_holder(self, Who::Peer(node), out);
        // The leases its processes held end (a dead worker's there ends only with its node).
        self.sync_drop_holders(|who| who == Who::Peer(node), out);
    }

    /// Drops every op `who` has parked here (a barrier it waited at breaks).
    fn drop_parked(&mut self, who: Who, out: &mut Vec<Delivery>) {
        let mine: Vec<((Who, u64), (u64, Parked))> =
            self.parked.iter().filter(|((w, _), _)| *w == who).map(|(k, v)| (*k, *v)).collect();
        for ((who, req), (queue, kind)) in mine {
            self.parked.remove(&(who, req));
            if kind == Parked::Chan {
                channel::drop_parked(self, (who, req));
                continue;
            }
            if kind == Parked::Sync {
                self.sync_unpark(who, req, queue, out);
            } else if let Some(q) = self.queues.get_mut(&queue) {
                q.getters.retain(|x| !(x.who == who && x.req == req));
                q.putters.retain(|(x, _)| !(x.who == who && x.req == req));
                q.joiners.retain(|x| !(x.who == who && x.req == req));
            }
        }
    }

    fn op(&mut self, who: Who, req: u64, op: PrimOp, out: &mut Vec<Delivery>) {
        let me = Waiter { who, req };
        if let Some(target) = op.target() {
            if !self.is_home(target) {
                if let Who::Peer(_) = who {
                    // Not ours, and we do not pass it on again.
                    return self.answer(me, target, gone(target), out);
                }
                self.note_remote_hold(who, &op);
                return self.forward(who, req, target, op);
            }
        }
        if let (PrimOp::Cancel, Some(fwd)) = (&op, self.by_asker.get(&(who, req)).copied()) {
            return self.cancel_forwarded(fwd);
        }
        match op {
            PrimOp::QueueCreate { maxsize } => {
                let id = self.fresh_id();
                self.queues.insert(id, Queue { maxsize, ..Queue::default() });
                self.answer(me, id, PrimResult::Created(id), out);
            }
            PrimOp::Put { queue, item, block } => {
                if item.len() > MAX_PRIM_ITEM {
                    let msg = format!(
                        "a queue item is at most {MAX_PRIM_ITEM} bytes pickled, this one is {}: \
                         put a volley.put() ref of it in the queue instead",
                        item.len()
                    );
                    return self.answer(me, queue, PrimResult::Error(msg), out);
                }
                let Some(q) = self.queues.get_mut(&queue) else {
                    return self.answer(me, queue, gone(queue), out);
                };
                // No hand-over while a recall is on (see `Queue::recalling`).
                let handed = if q.recalling { None } else { q.getters.pop_front() };
                let result = if let Some(g) = handed {
                    // An empty queue with a waiting getter: hand the item over directly.
                    q.unfinished += 1;
                    self.parked.remove(&(g.who, g.req));
                    self.answer(g, queue, PrimResult::Item(item), out);
                    PrimResult::Done
                } else if q.maxsize == 0 || (q.items.len() as u64) < q.maxsize {
                    q.unfinished += 1;
                    q.items.push_back(item);
                    PrimResult::Done
                } else if block {
                    q.putters.push_back((me, item));
                    self.parked.insert((who, req), (queue, Parked::Put));
                    return;
                } else {
                    PrimResult::Full
                };
                self.answer(me, queue, result, out);
            }
            PrimOp::Get { queue, block } => {
                let Some(q) = self.queues.get_mut(&queue) else {
                    return self.answer(me, queue, gone(queue), out);
                };
                q.note_getter(who);
                // Older items wait in another worker's buffer: this getter waits for them
                // (the recall below), not to take a newer one first.
                let held = q.recalling || q.holder.is_some_and(|h| Who::Worker(h) != who);
                let first = if held { None } else { q.items.pop_front() };
                if let Some(item) = first {
                    // Room for the first parked putter.
                    let moved = q.putters.pop_front().map(|(p, pitem)| {
                        q.unfinished += 1;
                        q.items.push_back(pitem);
                        p
                    });
                    self.answer(me, queue, PrimResult::Item(item), out);
                    if let Some(p) = moved {
                        self.parked.remove(&(p.who, p.req));
                        self.answer(p, queue, PrimResult::Done, out);
                    }
                } else if block {
                    q.getters.push_back(me);
                    self.parked.insert((who, req), (queue, Parked::Get));
                    self.recall(queue, who, out);
                } else {
                    self.answer(me, queue, PrimResult::Empty, out);
                    self.recall(queue, who, out);
                }
            }
            PrimOp::GetMany { queue, block, max } => {
                let Who::Worker(_) = who else {
                    // The driver's and other nodes' gets take one item (no buffer there).
                    return self.op(who, req, PrimOp::Get { queue, block }, out);
                };
                self.get_many(me, queue, block, max, out)
            }
            PrimOp::GiveBack { reqs, queue } => {
                if let Who::Worker(w) = who {
                    self.give_back(w, |t| reqs.contains(&t.req), out);
                    if queue != 0 && channel::is_chan(self, queue) {
                        return channel::gave_back(self, w, queue, out);
                    }
                    // Still lent to it: a batch the recall overtook on its way (a recall is
                    // written by the waiting getter's thread, a batch by this worker's). Asked
                    // again from here, after that batch: the recall goes on till it is back.
                    let lent = |q: &Queue| q.lent > 0 && q.holder == Some(w) && q.recalling;
                    if queue != 0 && self.queues.get(&queue).is_some_and(lent) {
                        let to = Who::Worker(w);
                        let result = PrimResult::Done;
                        out.push(Delivery { to, req: PRIM_RECALL, result, queue, lent: false });
                    } else if queue != 0 {
                        self.end_recall(queue, out);
                    }
                }
            }
            PrimOp::Size { queue } => {
                let r = match self.queues.get(&queue) {
                    Some(q) => PrimResult::Size(q.items.len() as u64 + q.lent),
                    None => gone(queue),
                };
                self.answer(me, queue, r, out);
            }
            PrimOp::Close { queue } => {
                if let Some(w) = self.queues.get(&queue).and_then(|q| q.holder) {
                    // The items in its buffer are dropped with the rest.
                    let to = Who::Worker(w);
                    let result = PrimResult::Done;
                    out.push(Delivery { to, req: PRIM_RECALL, result, queue, lent: false });
                }
                if let Some(q) = self.queues.remove(&queue) {
                    let parked = q
                        .getters
                        .into_iter()
                        .chain(q.putters.into_iter().map(|(w, _)| w))
                        .chain(q.joiners);
                    for w in parked {
                        self.parked.remove(&(w.who, w.req));
                        self.answer(w, queue, gone(queue), out);
                    }
                }
                self.answer(me, queue, PrimResult::Done, out);
            }
            PrimOp::Cancel => {
                let Some((queue, kind)) = self.parked.remove(&(who, req)) else { return };
                if kind == Parked::Chan {
                    return channel::cancel(self, me, out);
                }
                if kind == Parked::Sync {
                    return self.sync_cancel(me, queue, out);
                }
                let Some(q) = self.queues.get_mut(&queue) else { return };
                let result = match kind {
                    Parked::Get => {
                        q.getters.retain(|w| !(w.who == who && w.req == req));
                        PrimResult::Empty
                    }
                    Parked::Put => {
                        q.putters.retain(|(w, _)| !(w.who == who && w.req == req));
                        PrimResult::Full
                    }
                    Parked::Join | Parked::Chan => {
                        q.joiners.retain(|w| !(w.who == who && w.req == req));
                        PrimResult::Empty
                    }
                    Parked::Sync => return,
                };
                self.answer(me, queue, result, out);
            }
            PrimOp::Unget { queue, item } => self.unget(queue, item, out),
            PrimOp::Ack => {
                // One item of answer `req` arrived (a batch's items are acknowledged one by
                // one, in order, as the worker hands them out).
                if let Who::Worker(w) = who {
                    if let Some(list) = self.unacked.get_mut(&w) {
                        if let Some(pos) = list.iter().position(|t| t.req == req) {
                            let t = list.remove(pos);
                            if list.is_empty() {
                                self.unacked.remove(&w);
                            }
                            if t.extra {
                                if let Some(q) = self.queues.get_mut(&t.from) {
                                    q.lent = q.lent.saturating_sub(1);
                                    if q.lent == 0 && !q.recalling {
                                        q.holder = None;
                                    }
                                } else {
                                    channel::acked(self, t.from, out);
                                }
                            }
                        }
                    }
                }
            }
            PrimOp::TaskDone { queue } => {
                let Some(q) = self.queues.get_mut(&queue) else {
                    return self.answer(me, queue, gone(queue), out);
                };
                if q.unfinished == 0 {
                    let msg = "task_done() called more times than there were items".to_string();
                    return self.answer(me, queue, PrimResult::Error(msg), out);
                }
                q.unfinished -= 1;
                let joiners =
                    if q.unfinished == 0 { std::mem::take(&mut q.joiners) } else { vec![] };
                for j in joiners {
                    self.parked.remove(&(j.who, j.req));
                    self.answer(j, queue, PrimResult::Done, out);
                }
                self.answer(me, queue, PrimResult::Done, out);
            }
            PrimOp::Join { queue } => {
                let Some(q) = self.queues.get_mut(&queue) else {
                    return self.answer(me, queue, gone(queue), out);
                };
                if q.unfinished == 0 {
                    self.answer(me, queue, PrimResult::Done, out);
                } else {
                    q.joiners.push(me);
                    self.parked.insert((who, req), (queue, Parked::Join));
                }
            }
            // channels
            PrimOp::ChanCreate { capacity, broadcast, name } => {
                channel::create(self, me, capacity, broadcast, name, out)
            }
            PrimOp::ChanSend { chan, item } => {
                let guard = Guard { chan, reg: 0, send: Some(ByteBuf::from(item)) };
                channel::op(self, me, vec![guard], false, false, true, out)
            }
            PrimOp::ChanRecv { chan, reg } => channel::op(
                self,
                me,
                vec![Guard { chan, reg, send: None }],
                false,
                false,
                true,
                out,
            ),
            PrimOp::ChanSelect { guards, skip, priority } => {
                channel::op(self, me, guards, true, skip, priority, out)
            }
            PrimOp::ChanPoison { chan } => channel::poison(self, me, chan, out),
            PrimOp::ChanJoin { chan, reader, .. } => channel::join(self, me, chan, reader, out),
            PrimOp::ChanClaim { chan, reg, reader } => {
                channel::claim(self, me, chan, reg, reader, out)
            }
            PrimOp::ChanLeave { reg, retire } => {
                channel::leave(self, reg, retire, out);
                self.answer(me, 0, PrimResult::Done, out);
            }
            // Done by `hold_refs` (the driver's) or node.rs (a worker's).
            PrimOp::ChanHold { .. } => self.answer(me, 0, PrimResult::Done, out),
            PrimOp::ChanRecvMany { chan, max } => channel::recv_many(self, me, chan, max, out),
            PrimOp::ChanPost { chan, item } => channel::post(self, me, chan, item, out),
            PrimOp::ChanReturn { chan, n } => channel::uncredit(self, who, chan, n, out),
            PrimOp::Fence => self.answer(me, 0, PrimResult::Done, out),
            // sync
            PrimOp::SyncCreate { kind } => self.sync_create(me, kind, out),
            PrimOp::Sync { prim, op } => self.sync_op(me, prim, op, out),
        }
    }

    /// Puts a got item back at the head of its queue (its taker is gone), or hands it to the
    /// first parked getter.
    fn unget(&mut self, queue: u64, item: Vec<u8>, out: &mut Vec<Delivery>) {
        if !self.is_home(queue) {
            return self.forward(Who::Local, u64::MAX, queue, PrimOp::Unget { queue, item });
        }
        let Some(q) = self.queues.get_mut(&queue) else {
            channel::unget(self, queue, item, out);
            return;
        };
        if let Some(g) = q.getters.pop_front() {
            self.parked.remove(&(g.who, g.req));
            self.answer(g, queue, PrimResult::Item(item), out);
        } else {
            q.items.push_front(item);
        }
    }

    /// Drops every op `w` has parked (its process is gone) and puts back the items it had
    /// not acknowledged.
    fn drop_worker(&mut self, w: WorkerId, out: &mut Vec<Delivery>) {
        self.drop_parked(Who::Worker(w), out);
        // Its ops waiting on other nodes: their homes stop waiting (an item already on its
        // way comes back here, finds the worker gone and goes home again).
        let away: Vec<u64> = self
            .forwarded
            .iter()
            .filter(|(_, f)| f.who == Who::Worker(w))
            .map(|(k, _)| *k)
            .collect();
        for fwd in away {
            self.cancel_forwarded(fwd);
        }
        // Its leases end: the locks and semaphore units it held go to their next waiters,
        // here and on the other nodes it took some from.
        self.sync_drop_holders(|who| who == Who::Worker(w), out);
        self.end_remote_holds(w);
        self.conns.remove(&w);
        self.lent.retain(|(x, _)| *x != w);
        channel::drop_holder(self, Who::Worker(w), out);
        channel::drop_remote_ends(self, w);
        self.give_back(w, |_| true, out);
        channel::drop_worker(self, w, out);
        let held: Vec<u64> =
            self.queues.iter().filter(|(_, q)| q.holder == Some(w)).map(|(id, _)| *id).collect();
        for queue in held {
            self.end_recall(queue, out);
        }
    }

    /// Takes up to `max` items for worker `me` (a batch), or parks it as a `Get` does.
    fn get_many(&mut self, me: Waiter, queue: u64, block: bool, max: u32, out: &mut Vec<Delivery>) {
        let Some(q) = self.queues.get_mut(&queue) else {
            return self.answer(me, queue, gone(queue), out);
        };
        let Who::Worker(worker) = me.who else { return };
        let other_holds = q.holder.is_some_and(|h| h != worker);
        let alone = q.last_getter == Some(me.who) && q.solo >= 2;
        if q.items.len() < 2 || max < 2 || q.recalling || other_holds || !alone {
            return self.op(me.who, me.req, PrimOp::Get { queue, block }, out);
        }
        q.note_getter(me.who);
        let mut items = Vec::new();
        let mut bytes = 0;
        let mut moved = Vec::new();
        while let Some(item) = q.items.pop_front() {
            bytes += item.len();
            items.push(ByteBuf::from(item));
            // Room for the first parked putter.
            if let Some((p, pitem)) = q.putters.pop_front() {
                q.unfinished += 1;
                q.items.push_back(pitem);
                moved.push(p);
            }
            if items.len() >= max as usize || bytes >= BATCH_BYTES {
                break;
            }
        }
        if items.len() > 1 {
            q.lent += items.len() as u64 - 1;
            q.holder = Some(worker);
        }
        let result = if items.len() == 1 {
            PrimResult::Item(items.remove(0).into_vec())
        } else {
            PrimResult::Items(items)
        };
        self.answer(me, queue, result, out);
        for p in moved {
            self.parked.remove(&(p.who, p.req));
            self.answer(p, queue, PrimResult::Done, out);
        }
    }

    /// Asks the worker whose buffer holds items of `queue` (unless it is `asker`) to give them
    /// back: another process waits for one. Until it answers, the queue hands out nothing.
    fn recall(&mut self, queue: u64, asker: Who, out: &mut Vec<Delivery>) {
        let Some(q) = self.queues.get_mut(&queue) else { return };
        let Some(w) = q.holder.filter(|w| !q.recalling && q.lent > 0 && Who::Worker(*w) != asker)
        else {
            return;
        };
        q.recalling = true;
        let to = Who::Worker(w);
        out.push(Delivery { to, req: PRIM_RECALL, result: PrimResult::Done, queue, lent: false });
    }

    /// The holder of `queue`'s lent items answered its recall (or died): the queue hands
    /// items out again, first to the getters parked meanwhile.
    fn end_recall(&mut self, queue: u64, out: &mut Vec<Delivery>) {
        let Some(q) = self.queues.get_mut(&queue) else { return };
        q.recalling = false;
        if q.lent == 0 {
            q.holder = None;
        }
        let mut handed = Vec::new();
        while !q.items.is_empty() && !q.getters.is_empty() {
            if let (Some(g), Some(item)) = (q.getters.pop_front(), q.items.pop_front()) {
                handed.push((g, item));
            }
        }
        // Room for parked putters.
        let mut moved = Vec::new();
        while q.maxsize == 0 || (q.items.len() as u64) < q.maxsize {
            let Some((p, pitem)) = q.putters.pop_front() else { break };
            q.unfinished += 1;
            q.items.push_back(pitem);
            moved.push(p);
        }
        for (g, item) in handed {
            self.parked.remove(&(g.who, g.req));
            self.answer(g, queue, PrimResult::Item(item), out);
        }
        for p in moved {
            self.parked.remove(&(p.who, p.req));
            self.answer(p, queue, PrimResult::Done, out);
        }
    }

    /// Puts the un-acknowledged items of worker `w` that `which` picks back at the head of
    /// their queues, in their order (ahead of any item put since: they are older).
    fn give_back(&mut self, w: WorkerId, which: impl Fn(&Taken) -> bool, out: &mut Vec<Delivery>) {
        let Some(list) = self.unacked.remove(&w) else { return };
        let (back, keep): (Vec<Taken>, Vec<Taken>) = list.into_iter().partition(|t| which(t));
        if !keep.is_empty() {
            self.unacked.insert(w, keep);
        }
        let mut touched = Vec::new();
        let mut chans = Vec::new();
        for t in back.into_iter().rev() {
            let Some(q) = self.queues.get_mut(&t.from) else {
                if channel::is_chan(self, t.from) {
                    // Back to the head of the buffer, in order; handed out below.
                    channel::put_back(self, t.from, t.item, t.extra);
                    if !chans.contains(&t.from) {
                        chans.push(t.from);
                    }
                } else {
                    self.unget(t.from, t.item, out);
                }
                continue;
            };
            if t.extra {
                q.lent = q.lent.saturating_sub(1);
            }
            q.items.push_front(t.item);
            if !touched.contains(&t.from) {
                touched.push(t.from);
            }
        }
        for queue in touched {
            let settle = self.queues.get(&queue).is_some_and(|q| !q.recalling);
            if settle {
                self.end_recall(queue, out); // not recalling: hands to parked getters
            }
        }
        for c in chans {
            // Recalling: the answer to the recall (`GiveBack` naming it) ends it.
            if !channel::recalling(self, c) {
                channel::end_recall(self, c, out);
            }
        }
    }
}

impl Prims {
    /// Runs `op` for `who`; returns the answers for workers (the driver's are kept here).
    pub fn op(&self, who: Who, req: u64, op: PrimOp) -> Vec<Delivery> {
        self.op_parks(who, req, op).0
    }

    /// [`Prims::op`], also saying whether the op parked (it waits for another's op).
    pub fn op_parks(&self, who: Who, req: u64, op: PrimOp) -> (Vec<Delivery>, bool) {
        let mut out = Vec::new();
        let may_park = may_park(&op);
        let (local, parked) = {
            let mut inner = self.inner.lock();
            let before = inner.local.len();
            inner.op(who, req, op, &mut out);
            let parked = inner.parked.contains_key(&(who, req))
                || (may_park && inner.by_asker.contains_key(&(who, req)));
            (inner.local.len() != before, parked)
        };
        if local {
            self.local_cv.notify_all();
        }
        (out, parked)
    }

    /// Notes that worker `w` lends its CPU while its op `req` is parked; false (and nothing
    /// noted) if the op was answered in the meantime. Called under the scheduler's lock, so
    /// that the answer's taking the CPU back comes after the lending.
    fn mark_lent(&self, w: WorkerId, req: u64) -> bool {
        let mut inner = self.inner.lock();
        let key = (Who::Worker(w), req);
        if !inner.parked.contains_key(&key) && !inner.by_asker.contains_key(&key) {
            return false;
        }
        inner.lent.insert((w, req));
        true
    }

    /// Puts a got item back (its taker is gone); returns answers for workers.
    pub fn unget(&self, queue: u64, item: Vec<u8>) -> Vec<Delivery> {
        self.op(Who::Local, u64::MAX, PrimOp::Unget { queue, item })
    }

    /// Forgets worker `w`: its parked ops are dropped, so nothing is handed to a dead process,
    /// and the items it had not acknowledged go back; returns answers for other workers.
    pub fn drop_worker(&self, w: WorkerId) -> Vec<Delivery> {
        let mut out = Vec::new();
        self.inner.lock().drop_worker(w, &mut out);
        out
    }

    /// This node is `id` in its cluster from now on: primitives made here carry it, and those
    /// of other nodes are reached through their homes.
    pub fn set_node(&self, id: NodeId) {
        let mut inner = self.inner.lock();
        if let Some(before) = inner.me.replace(id) {
            if before != id && !inner.was.contains(&before) {
                inner.was.push(before);
            }
        }
    }

    /// Runs an op that node `from` forwarded here for one of its processes.
    pub fn peer_op(&self, from: NodeId, fwd: u64, op: PrimOp) -> Vec<Delivery> {
        self.op(Who::Peer(from), fwd, op)
    }

    /// Hands the answer `from` sent to the op this node forwarded as `fwd` to its asker.
    pub fn peer_reply(&self, from: NodeId, fwd: u64, result: PrimResult) -> Vec<Delivery> {
        let mut out = Vec::new();
        let local = {
            let mut inner = self.inner.lock();
            let before = inner.local.len();
            inner.forwarded_answer(from, fwd, result, &mut out);
            inner.local.len() != before
        };
        if local {
            self.local_cv.notify_all();
        }
        out
    }

    /// Node `node` left the cluster (see [`Inner::drop_peer`]).
    pub fn peer_gone(&self, node: NodeId, why: &str) -> Vec<Delivery> {
        let mut out = Vec::new();
        let local = {
            let mut inner = self.inner.lock();
            let before = inner.local.len();
            inner.drop_peer(node, why, &mut out);
            inner.local.len() != before
        };
        if local {
            self.local_cv.notify_all();
        }
        out
    }

    /// The messages for other nodes the last ops produced.
    fn take_sends(&self) -> Vec<(NodeId, PeerMsg)> {
        std::mem::take(&mut self.inner.lock().sends)
    }

    /// How many ops are parked now (tests, diagnostics).
    pub fn parked(&self) -> usize {
        self.inner.lock().parked.len()
    }

    fn next_local(&self) -> u64 {
        let mut inner = self.inner.lock();
        inner.next_local += 1;
        inner.next_local
    }

    /// Waits for the answer to the driver's request `req` until `deadline` (None: forever);
    /// `Ok(None)` when the deadline passed.
    fn wait_local<E>(
        &self,
        req: u64,
        deadline: Option<Instant>,
        check: &mut impl FnMut() -> Result<(), E>,
    ) -> Result<Option<PrimResult>, E> {
        loop {
            {
                let mut inner = self.inner.lock();
                loop {
                    if let Some(r) = inner.local.remove(&req) {
                        return Ok(Some(r));
                    }
                    let now = Instant::now();
                    if deadline.is_some_and(|d| now >= d) {
                        return Ok(None);
                    }
                    let step = deadline.map_or(CHECK_INTERVAL, |d| (d - now).min(CHECK_INTERVAL));
                    let slept = Instant::now();
                    inner = self.local_cv.wait_for(inner, step);
                    if slept.elapsed() >= step {
                        break;
                    }
                }
            }
            check()?;
        }
    }
}

/// The op a caller runs, with its wait: the driver's side, on its embedded node.
pub(crate) fn call_local<E>(
    shared: &Shared,
    op: PrimOp,
    timeout: Option<Duration>,
    mut check: impl FnMut() -> Result<(), E>,
) -> Result<PrimResult, WaitError<E>> {
    if shared.closed.load(std::sync::atomic::Ordering::Acquire) {
        return Err(WaitError::Closed);
    }
    hold_refs(shared, &op);
    let prims = &shared.prims;
    let req = prims.next_local();
    let undo = volley_proto::undo_of(&op);
    deliver(shared, prims.op(Who::Local, req, op));
    let deadline = timeout.map(|t| Instant::now() + t);
    // `None`: the node shut down under the waiting caller.
    let mut check = || {
        if shared.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(None);
        }
        check().map_err(Some)
    };
    match prims.wait_local(req, deadline, &mut check) {
        Ok(Some(r)) => Ok(r),
        Ok(None) => {
            // Timed out: a cancel answers a parked op now; else its answer is already here.
            deliver(shared, prims.op(Who::Local, req, PrimOp::Cancel));
            let r = prims.wait_local(req, None, &mut || Ok::<(), ()>(()));
            Ok(r.ok().flatten().unwrap_or(PrimResult::Empty))
        }
        Err(None) => Err(WaitError::Closed),
        Err(Some(e)) => {
            deliver(shared, prims.op(Who::Local, req, PrimOp::Cancel));
            if let Ok(Some(result)) = prims.wait_local(req, None, &mut || Ok::<(), ()>(())) {
                // Got just as the caller was interrupted: an item goes back for the next
                // taker, a lock unit to the next waiter.
                if let Some(op) = undo.op(result) {
                    deliver(shared, prims.op(Who::Local, u64::MAX, op));
                }
            }
            Err(WaitError::Interrupted(e))
        }
    }
}

/// Runs worker `w`'s op (from its connection's reader, in the order the worker sent them).
///
/// A pool worker whose op parks lends its CPU, as in a nested `get`: a task blocked in
/// `queue.get()` must not hold the only CPU the task that would feed it needs.
pub(crate) fn serve_worker(shared: &Shared, w: WorkerId, req: u64, op: PrimOp) {
    let (out, parked) = shared.prims.op_parks(Who::Worker(w), req, op);
    deliver(shared, out);
    if parked {
        // Lock order: the scheduler's, then the service's (never the other way round).
        shared.with(|st, out| {
            if shared.prims.mark_lent(w, req) {
                st.sched.begin_outside_wait(w, req, out);
            }
        });
    }
}

/// Holds (or lets go of) a large channel message's objects for the node itself
/// ([`PrimOp::ChanHold`]): not for the asking process, whose death must not free them. (A
/// worker's is done in the scheduler's turn for its messages, after its `Put`: node.rs.)
fn hold_refs(shared: &Shared, op: &PrimOp) {
    if let PrimOp::ChanHold { ids, hold } = op {
        use volley_sched::Holder;
        if *hold {
            shared.state.lock().sched.incref(Holder::Local, ids);
        } else {
            shared.with(|st, out| st.sched.decref(Holder::Local, ids, out));
        }
    }
}

/// Forgets worker `w` (its connection closed), putting back the items it had not acknowledged,
/// so a consumer killed while an item was on its way to it loses nothing.
pub(crate) fn worker_gone(shared: &Shared, w: WorkerId) {
    let out = shared.prims.drop_worker(w);
    deliver(shared, out);
}

/// Sends answers to workers. A worker whose connection is gone is forgotten (see
/// [`worker_gone`]): its items go back to their queues, to the next getter.
pub(crate) fn deliver(shared: &Shared, out: Vec<Delivery>) {
    let mut out = VecDeque::from(out);
    loop {
        let Some(d) = out.pop_front() else {
            // Then the forwarded ops and answers for other nodes the ops produced (taken
            // under the service's lock once a round, and only when this node is in a cluster);
            // sending them may answer workers here, another round.
            let sends = match shared.links.get() {
                Some(_) => shared.prims.take_sends(),
                None => Vec::new(),
            };
            if sends.is_empty() {
                break;
            }
            for (node, msg) in sends {
                send_to_peer(shared, node, msg, &mut out);
            }
            continue;
        };
        let worker = match d.to {
            Who::Worker(w) => w,
            Who::Peer(node) => {
                let msg = PeerMsg::PrimReply { fwd: d.req, result: d.result };
                send_to_peer(shared, node, msg, &mut out);
                continue;
            }
            Who::Local => continue,
        };
        let conn = {
            let cached = shared.prims.inner.lock().conns.get(&worker).cloned();
            match cached {
                Some(c) => Some(c),
                None => {
                    let c = shared.state.lock().conns.get(&worker).cloned();
                    if let Some(c) = &c {
                        shared.prims.inner.lock().conns.insert(worker, c.clone());
                    }
                    c
                }
            }
        };
        if d.lent {
            shared.with(|st, _| st.sched.end_outside_wait(worker, d.req));
        }
        let msg = if d.req == PRIM_RECALL {
            NodeToWorker::PrimRecall { queue: d.queue }
        } else {
            NodeToWorker::PrimReply { req: d.req, result: d.result }
        };
        let sent = match (&conn, encode(&msg)) {
            // Written now, not batched: a write to a process that died fails here, and the
            // item goes back.
            (Some(c), Ok(bytes)) => c.send(&bytes).is_ok(),
            _ => false,
        };
        if !sent {
            // Its items (this one included) go back to their queues.
            out.extend(shared.prims.drop_worker(worker));
        }
    }
}

/// Sends `msg` to node `node`; a request that cannot go (no route to that node) is answered
/// `Closed` to its asker at once.
fn send_to_peer(shared: &Shared, node: NodeId, msg: PeerMsg, out: &mut VecDeque<Delivery>) {
    let Some(links) = shared.links.get() else { return };
    let fwd = match &msg {
        PeerMsg::Prim { fwd, .. } => Some(*fwd),
        _ => None,
    };
    if let Err(why) = links.clone().send_prim(node, msg) {
        if let Some(fwd) = fwd {
            let msg = format!("the primitive lives on node {}, which {why}", node.0);
            out.extend(shared.prims.peer_reply(node, fwd, PrimResult::Closed(msg)));
        }
    }
}

/// Runs an op node `from` forwarded here (from its connection's reader).
pub(crate) fn serve_peer(shared: &Shared, from: NodeId, fwd: u64, op: PrimOp) {
    let out = shared.prims.peer_op(from, fwd, op);
    deliver(shared, out);
}

/// Hands the answer to an op this node forwarded to its asker.
pub(crate) fn peer_reply(shared: &Shared, from: NodeId, fwd: u64, result: PrimResult) {
    let out = shared.prims.peer_reply(from, fwd, result);
    deliver(shared, out);
}

/// Node `node` left the cluster: ops waiting on its primitives fail, its parked ops go.
pub(crate) fn peer_gone(shared: &Shared, node: NodeId, why: &str) {
    let out = shared.prims.peer_gone(node, why);
    deliver(shared, out);
}

mod sync;

#[cfg(test)]
mod channel_tests;
#[cfg(test)]
mod test_util;
#[cfg(test)]
mod tests;
