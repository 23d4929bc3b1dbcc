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

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use volley_proto::{
    encode, NodeToWorker, PrimOp, PrimResult, WorkerId, MAX_PRIM_ITEM, PRIM_NO_REPLY,
};
use volley_store::sync::{Condvar, Mutex};

use crate::outbox::Outbox;
use crate::shared::Shared;
use crate::{WaitError, CHECK_INTERVAL};

/// Who asked: this node's driver, or one of its workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Who {
    Local,
    Worker(WorkerId),
}

/// An answer for a worker, to send once the service's lock is released. `unget` names the
/// queue an `Item` came from, so it can go back if the worker is gone.
#[derive(Debug)]
pub struct Delivery {
    pub worker: WorkerId,
    pub req: u64,
    pub result: PrimResult,
    pub queue: u64,
}

#[derive(Debug, Clone, Copy)]
struct Waiter {
    who: Who,
    req: u64,
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Parked {
    Get,
    Put,
    Join,
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
    unacked: HashMap<WorkerId, Vec<(u64, u64, Vec<u8>)>>,
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
        "queue {queue} was shut down, or was made on another node (queues do not cross nodes \
         yet) or in another session"
    ))
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
                if let PrimResult::Item(item) = &result {
                    let copy = (w.req, queue, item.clone());
                    self.unacked.entry(worker).or_default().push(copy);
                }
                out.push(Delivery { worker, req: w.req, result, queue })
            }
        }
    }

    fn op(&mut self, who: Who, req: u64, op: PrimOp, out: &mut Vec<Delivery>) {
        let me = Waiter { who, req };
        match op {
            PrimOp::QueueCreate { maxsize } => {
                self.next_id += 1;
                let id = self.next_id;
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
                let result = if let Some(g) = q.getters.pop_front() {
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
                if let Some(item) = q.items.pop_front() {
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
                } else {
                    self.answer(me, queue, PrimResult::Empty, out);
                }
            }
            PrimOp::Size { queue } => {
                let r = match self.queues.get(&queue) {
                    Some(q) => PrimResult::Size(q.items.len() as u64),
                    None => gone(queue),
                };
                self.answer(me, queue, r, out);
            }
            PrimOp::Close { queue } => {
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
                    Parked::Join => {
                        q.joiners.retain(|w| !(w.who == who && w.req == req));
                        PrimResult::Empty
                    }
                    Parked::Sync => return,
                };
                self.answer(me, queue, result, out);
            }
            PrimOp::Unget { queue, item } => self.unget(queue, item, out),
            PrimOp::Ack => {
                if let Who::Worker(w) = who {
                    if let Some(list) = self.unacked.get_mut(&w) {
                        list.retain(|(r, _, _)| *r != req);
                        if list.is_empty() {
                            self.unacked.remove(&w);
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
            // sync
            PrimOp::SyncCreate { kind } => self.sync_create(me, kind, out),
            PrimOp::Sync { prim, op } => self.sync_op(me, prim, op, out),
        }
    }

    /// Puts a got item back at the head of its queue (its taker is gone), or hands it to the
    /// first parked getter.
    fn unget(&mut self, queue: u64, item: Vec<u8>, out: &mut Vec<Delivery>) {
        let Some(q) = self.queues.get_mut(&queue) else { return };
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
        let mine: Vec<((Who, u64), (u64, Parked))> = self
            .parked
            .iter()
            .filter(|((who, _), _)| *who == Who::Worker(w))
            .map(|(k, v)| (*k, *v))
            .collect();
        for ((who, req), (queue, kind)) in mine {
            self.parked.remove(&(who, req));
            if kind == Parked::Sync {
                self.sync_unpark(who, req, queue, out);
            } else if let Some(q) = self.queues.get_mut(&queue) {
                q.getters.retain(|x| !(x.who == who && x.req == req));
                q.putters.retain(|(x, _)| !(x.who == who && x.req == req));
                q.joiners.retain(|x| !(x.who == who && x.req == req));
            }
        }
        // Its leases end: the locks and semaphore units it held go to their next waiters.
        self.sync_drop_holders(|who| who == Who::Worker(w), out);
        self.conns.remove(&w);
        for (_, queue, item) in self.unacked.remove(&w).unwrap_or_default().into_iter().rev() {
            self.unget(queue, item, out);
        }
    }
}

impl Prims {
    /// Runs `op` for `who`; returns the answers for workers (the driver's are kept here).
    pub fn op(&self, who: Who, req: u64, op: PrimOp) -> Vec<Delivery> {
        let mut out = Vec::new();
        let local = {
            let mut inner = self.inner.lock();
            let before = inner.local.len();
            inner.op(who, req, op, &mut out);
            inner.local.len() != before
        };
        if local {
            self.local_cv.notify_all();
        }
        out
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
pub(crate) fn serve_worker(shared: &Shared, w: WorkerId, req: u64, op: PrimOp) {
    let out = shared.prims.op(Who::Worker(w), req, op);
    deliver(shared, out);
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
    while let Some(d) = out.pop_front() {
        let conn = {
            let cached = shared.prims.inner.lock().conns.get(&d.worker).cloned();
            match cached {
                Some(c) => Some(c),
                None => {
                    let c = shared.state.lock().conns.get(&d.worker).cloned();
                    if let Some(c) = &c {
                        shared.prims.inner.lock().conns.insert(d.worker, c.clone());
                    }
                    c
                }
            }
        };
        let msg = NodeToWorker::PrimReply { req: d.req, result: d.result };
        let sent = match (&conn, encode(&msg)) {
            // Written now, not batched: a write to a process that died fails here, and the
            // item goes back.
            (Some(c), Ok(bytes)) => c.send(&bytes).is_ok(),
            _ => false,
        };
        if !sent {
            // Its items (this one included) go back to their queues.
            out.extend(shared.prims.drop_worker(d.worker));
        }
    }
}

mod sync;

#[cfg(test)]
mod tests;
