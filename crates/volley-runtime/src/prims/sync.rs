//! Locks, rlocks, semaphores, events, barriers and conditions on the primitive service.
//!
//! They share the service's lock, its parked-op table and its cancel protocol with queues:
//! a parked op waits in FIFO order until granted or cancelled, and exactly one answer reaches
//! its asker. A held unit is a *lease* of its holder (process and thread): when a worker's
//! connection closes, every unit it holds is released and the next acquirer is told
//! (`Acquired { died: true }`), so a lock never outlives its holder and nobody is left to wonder
//! why the state it guards is half-updated.

use std::collections::VecDeque;

use volley_proto::{PrimOp, PrimResult, SyncKind, SyncOp, WorkerId};

use super::{Inner, Parked, Waiter, Who};
use crate::prims::Delivery;

/// Who holds a unit: a process (`Who`) and a thread in it (chosen by the caller). A node-death
/// lease comes with a `Who` for a peer node's processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Holder {
    who: Who,
    thread: u64,
}

/// An acquire waiting for a unit; a condition's waiter too (`cond`), which takes back `holds`
/// holds of the lock and whose answer says whether it was `notified`.
#[derive(Debug, Clone, Copy)]
struct LockWaiter {
    w: Waiter,
    holder: Holder,
    holds: u64,
    cond: bool,
    notified: bool,
}

enum State {
    /// Lock, RLock and (bounded) semaphores: `free` units, held ones by holder (with an
    /// rlock's recursion count), FIFO waiters, and units freed by dead holders not yet reported.
    Units {
        kind: SyncKind,
        free: u64,
        holders: Vec<(Holder, u64)>,
        waiters: VecDeque<LockWaiter>,
        died: u64,
    },
    Event {
        set: bool,
        waiters: Vec<Waiter>,
    },
    Barrier {
        parties: u64,
        arrived: Vec<Waiter>,
        broken: bool,
    },
    Cond {
        lock: u64,
        waiters: VecDeque<LockWaiter>,
    },
}

/// One synchronisation primitive.
pub(super) struct SyncPrim {
    state: State,
}

fn gone(prim: u64) -> PrimResult {
    PrimResult::Closed(format!(
        "synchronisation primitive {prim} was shut down, or was made on another node (locks do \
         not cross nodes yet) or in another session"
    ))
}

fn err(msg: &str) -> PrimResult {
    PrimResult::Error(msg.to_string())
}

impl Inner {
    pub(super) fn sync_create(&mut self, me: Waiter, kind: SyncKind, out: &mut Vec<Delivery>) {
        let state = match kind {
            SyncKind::Lock | SyncKind::RLock => State::Units {
                kind,
                free: 1,
                holders: Vec::new(),
                waiters: VecDeque::new(),
                died: 0,
            },
            SyncKind::Semaphore { value, .. } => State::Units {
                kind,
                free: value,
                holders: Vec::new(),
                waiters: VecDeque::new(),
                died: 0,
            },
            SyncKind::Event => State::Event { set: false, waiters: Vec::new() },
            SyncKind::Barrier { parties: 0 } => {
                return self.answer(me, 0, err("a barrier needs at least 1 party, not 0"), out);
            }
            SyncKind::Barrier { parties } => {
                State::Barrier { parties, arrived: Vec::new(), broken: false }
            }
            SyncKind::Condition { lock } => {
                let ok = matches!(
                    self.sync.get(&lock).map(|p| &p.state),
                    Some(State::Units { kind: SyncKind::Lock | SyncKind::RLock, .. })
                );
                if !ok {
                    let m = format!(
                        "a condition needs a Lock or RLock of this node; {lock} is not one"
                    );
                    return self.answer(me, 0, PrimResult::Error(m), out);
                }
                State::Cond { lock, waiters: VecDeque::new() }
            }
        };
        let id = self.fresh_id();
        self.sync.insert(id, SyncPrim { state });
        self.answer(me, id, PrimResult::Created(id), out);
    }

    pub(super) fn sync_op(&mut self, me: Waiter, prim: u64, op: SyncOp, out: &mut Vec<Delivery>) {
        let Some(p) = self.sync.get_mut(&prim) else {
            // Shutting down twice does nothing, as with queues.
            let r = if op == SyncOp::Close { PrimResult::Done } else { gone(prim) };
            return self.answer(me, prim, r, out);
        };
        let result = match (op, &mut p.state) {
            (
                SyncOp::Acquire { holder, block },
                State::Units { kind, free, holders, waiters, died },
            ) => {
                let holder = Holder { who: me.who, thread: holder };
                if *kind == SyncKind::RLock {
                    if let Some((_, n)) = holders.iter_mut().find(|(h, _)| *h == holder) {
                        *n += 1;
                        return self.answer(me, prim, acquired(false, false), out);
                    }
                }
                if *free > 0 {
                    *free -= 1;
                    holders.push((holder, 1));
                    acquired(take_died(died), false)
                } else if block {
                    let lw = LockWaiter { w: me, holder, holds: 1, cond: false, notified: false };
                    waiters.push_back(lw);
                    self.parked.insert((me.who, me.req), (prim, Parked::Sync));
                    return;
                } else {
                    PrimResult::Empty
                }
            }
            (SyncOp::Release { holder }, State::Units { kind, free, holders, .. }) => {
                let holder = Holder { who: me.who, thread: holder };
                let mine = holders.iter().position(|(h, _)| *h == holder);
                match (*kind, mine) {
                    (SyncKind::Lock, _) if holders.is_empty() => err("release unlocked lock"),
                    // Any holder may release a plain lock, as with `threading.Lock`.
                    (SyncKind::Lock, _) => {
                        holders.clear();
                        *free += 1;
                        PrimResult::Done
                    }
                    (SyncKind::RLock, None) => err("cannot release un-acquired lock"),
                    (SyncKind::RLock, Some(i)) => {
                        holders[i].1 -= 1;
                        if holders[i].1 == 0 {
                            holders.remove(i);
                            *free += 1;
                        }
                        PrimResult::Done
                    }
                    (SyncKind::Semaphore { value, bounded }, _) if bounded && *free >= value => {
                        err("Semaphore released too many times")
                    }
                    (_, mine) => {
                        // A semaphore may be released by anyone: the releaser's own unit ends
                        // if it holds one, else the longest held one (its holder's lease ends).
                        if let Some(i) = mine.or(if holders.is_empty() { None } else { Some(0) }) {
                            holders.remove(i);
                        }
                        *free += 1;
                        PrimResult::Done
                    }
                }
            }
            (SyncOp::State, State::Units { kind, free, holders, .. }) => {
                let value = match kind {
                    SyncKind::Semaphore { .. } => *free,
                    _ => holders.iter().map(|(_, n)| n).sum(),
                };
                PrimResult::State { value, broken: false }
            }
            (SyncOp::Set, State::Event { set, waiters }) => {
                *set = true;
                for w in std::mem::take(waiters) {
                    self.parked.remove(&(w.who, w.req));
                    self.answer(w, prim, PrimResult::Done, out);
                }
                PrimResult::Done
            }
            (SyncOp::Clear, State::Event { set, .. }) => {
                *set = false;
                PrimResult::Done
            }
            (SyncOp::Wait, State::Event { set: true, .. }) => PrimResult::Done,
            (SyncOp::Wait, State::Event { waiters, .. }) => {
                waiters.push(me);
                self.parked.insert((me.who, me.req), (prim, Parked::Sync));
                return;
            }
            (SyncOp::State, State::Event { set, .. }) => {
                PrimResult::State { value: u64::from(*set), broken: false }
            }
            (SyncOp::BarrierWait, State::Barrier { broken: true, .. }) => PrimResult::Broken(
                "the barrier is broken (aborted, reset while waited on, a \
                                    wait timed out or a party died)"
                    .into(),
            ),
            (SyncOp::BarrierWait, State::Barrier { parties, arrived, .. }) => {
                arrived.push(me);
                if (arrived.len() as u64) < *parties {
                    self.parked.insert((me.who, me.req), (prim, Parked::Sync));
                    return;
                }
                for (i, w) in std::mem::take(arrived).into_iter().enumerate() {
                    self.parked.remove(&(w.who, w.req));
                    self.answer(w, prim, PrimResult::Arrived(i as u64), out);
                }
                return;
            }
            (SyncOp::Abort, State::Barrier { .. }) => {
                self.break_barrier(prim, "the barrier was aborted", true, out);
                PrimResult::Done
            }
            (SyncOp::Reset, State::Barrier { .. }) => {
                self.break_barrier(
                    prim,
                    "the barrier was reset while this wait was parked",
                    false,
                    out,
                );
                PrimResult::Done
            }
            (SyncOp::State, State::Barrier { arrived, broken, .. }) => {
                PrimResult::State { value: arrived.len() as u64, broken: *broken }
            }
            (SyncOp::CondWait { holder }, State::Cond { lock, .. }) => {
                let lock = *lock;
                let holder = Holder { who: me.who, thread: holder };
                let Some(holds) = self.let_go(lock, holder, out) else {
                    return self.answer(me, prim, err("cannot wait on un-acquired lock"), out);
                };
                if let Some(SyncPrim { state: State::Cond { waiters, .. } }) =
                    self.sync.get_mut(&prim)
                {
                    waiters.push_back(LockWaiter {
                        w: me,
                        holder,
                        holds,
                        cond: true,
                        notified: false,
                    });
                    self.parked.insert((me.who, me.req), (prim, Parked::Sync));
                }
                return;
            }
            (SyncOp::Notify { holder, n }, State::Cond { lock, .. }) => {
                let lock = *lock;
                let holder = Holder { who: me.who, thread: holder };
                let owned = match self.sync.get(&lock).map(|p| &p.state) {
                    Some(State::Units { kind: SyncKind::RLock, holders, .. }) => {
                        holders.iter().any(|(h, _)| *h == holder)
                    }
                    Some(State::Units { holders, .. }) => !holders.is_empty(),
                    _ => false,
                };
                if !owned {
                    return self.answer(me, prim, err("cannot notify on un-acquired lock"), out);
                }
                let woken: Vec<LockWaiter> = match self.sync.get_mut(&prim) {
                    Some(SyncPrim { state: State::Cond { waiters, .. } }) => {
                        let n = usize::try_from(n).unwrap_or(usize::MAX).min(waiters.len());
                        waiters.drain(..n).collect()
                    }
                    _ => Vec::new(),
                };
                for mut lw in woken {
                    lw.notified = true;
                    self.queue_for_lock(lock, lw, out);
                }
                PrimResult::Done
            }
            (SyncOp::Close, _) => {
                if let Some(p) = self.sync.remove(&prim) {
                    let parked: Vec<Waiter> = match p.state {
                        State::Units { waiters, .. } | State::Cond { waiters, .. } => {
                            waiters.into_iter().map(|lw| lw.w).collect()
                        }
                        State::Event { waiters, .. } => waiters,
                        State::Barrier { arrived, .. } => arrived,
                    };
                    for w in parked {
                        self.parked.remove(&(w.who, w.req));
                        self.answer(w, prim, gone(prim), out);
                    }
                }
                PrimResult::Done
            }
            (SyncOp::HolderGone { holder }, State::Units { .. }) => {
                let gone = Holder { who: me.who, thread: holder };
                self.end_leases(prim, |h| h == gone);
                PrimResult::Done
            }
            (op, _) => PrimResult::Error(format!("{op:?} does not apply to primitive {prim}")),
        };
        self.answer(me, prim, result, out);
        self.pump(prim, out);
    }

    /// Releases every hold `holder` has on lock `lock` (a condition wait); how many, or `None`
    /// if it holds none.
    fn let_go(&mut self, lock: u64, holder: Holder, out: &mut Vec<Delivery>) -> Option<u64> {
        let Some(SyncPrim { state: State::Units { kind, free, holders, .. } }) =
            self.sync.get_mut(&lock)
        else {
            return None;
        };
        let i = match kind {
            SyncKind::RLock => holders.iter().position(|(h, _)| *h == holder)?,
            // A plain lock has no owner to check, as with `threading.Condition(Lock())`.
            _ if holders.is_empty() => return None,
            _ => 0,
        };
        let (_, holds) = holders.remove(i);
        *free += 1;
        self.pump(lock, out);
        Some(holds)
    }

    /// Queues a condition's waiter for its lock (notified, or its wait cancelled).
    fn queue_for_lock(&mut self, lock: u64, lw: LockWaiter, out: &mut Vec<Delivery>) {
        match self.sync.get_mut(&lock) {
            Some(SyncPrim { state: State::Units { waiters, .. } }) => {
                waiters.push_back(lw);
                self.parked.insert((lw.w.who, lw.w.req), (lock, Parked::Sync));
                self.pump(lock, out);
            }
            _ => {
                self.parked.remove(&(lw.w.who, lw.w.req));
                self.answer(lw.w, lock, gone(lock), out);
            }
        }
    }

    /// Grants free units to the first waiters.
    fn pump(&mut self, prim: u64, out: &mut Vec<Delivery>) {
        let mut granted = Vec::new();
        if let Some(SyncPrim { state: State::Units { free, holders, waiters, died, .. } }) =
            self.sync.get_mut(&prim)
        {
            while *free > 0 {
                let Some(lw) = waiters.pop_front() else { break };
                *free -= 1;
                holders.push((lw.holder, lw.holds));
                granted.push((lw, take_died(died)));
            }
        }
        for (lw, died) in granted {
            self.parked.remove(&(lw.w.who, lw.w.req));
            self.answer(lw.w, prim, acquired(died, lw.notified), out);
        }
    }

    /// Answers every parked wait of barrier `prim` `Broken`; leaves it broken or, with `stay`
    /// false, whole again (`reset`).
    fn break_barrier(&mut self, prim: u64, why: &str, stay: bool, out: &mut Vec<Delivery>) {
        let Some(SyncPrim { state: State::Barrier { arrived, broken, .. } }) =
            self.sync.get_mut(&prim)
        else {
            return;
        };
        *broken = stay;
        for w in std::mem::take(arrived) {
            self.parked.remove(&(w.who, w.req));
            self.answer(w, prim, PrimResult::Broken(why.to_string()), out);
        }
    }

    /// Stops waiting on `me`'s op parked at `prim` (a timeout or an interrupt); answers it
    /// unless it is a condition's waiter queued for its lock, which answers once it has it.
    pub(super) fn sync_cancel(&mut self, me: Waiter, prim: u64, out: &mut Vec<Delivery>) {
        let is_me = |w: &Waiter| w.who == me.who && w.req == me.req;
        let Some(p) = self.sync.get_mut(&prim) else { return };
        match &mut p.state {
            State::Units { waiters, .. } => {
                let Some(i) = waiters.iter().position(|lw| is_me(&lw.w)) else { return };
                if waiters[i].cond {
                    // A condition's waiter takes its lock back before it returns.
                    self.parked.insert((me.who, me.req), (prim, Parked::Sync));
                    return;
                }
                waiters.remove(i);
                self.answer(me, prim, PrimResult::Empty, out);
            }
            State::Cond { lock, waiters } => {
                let lock = *lock;
                let Some(i) = waiters.iter().position(|lw| is_me(&lw.w)) else { return };
                if let Some(lw) = waiters.remove(i) {
                    self.queue_for_lock(lock, lw, out);
                }
            }
            State::Event { waiters, .. } => {
                waiters.retain(|w| !is_me(w));
                self.answer(me, prim, PrimResult::Empty, out);
            }
            State::Barrier { arrived, .. } => {
                // As `threading.Barrier`: a wait that times out breaks the barrier for all.
                arrived.retain(|w| !is_me(w));
                let why = "a party left the barrier: its wait timed out or was interrupted, or its process died";
                self.break_barrier(prim, why, true, out);
                self.answer(me, prim, PrimResult::Broken(why.to_string()), out);
            }
        }
    }

    /// Drops `who`'s op parked at `prim` (its process is gone): a barrier it waited at breaks.
    pub(super) fn sync_unpark(&mut self, who: Who, req: u64, prim: u64, out: &mut Vec<Delivery>) {
        let is_it = |w: &Waiter| w.who == who && w.req == req;
        let Some(p) = self.sync.get_mut(&prim) else { return };
        match &mut p.state {
            State::Units { waiters, .. } | State::Cond { waiters, .. } => {
                waiters.retain(|lw| !is_it(&lw.w));
            }
            State::Event { waiters, .. } => waiters.retain(|w| !is_it(w)),
            State::Barrier { arrived, .. } => {
                arrived.retain(|w| !is_it(w));
                let why = match who {
                    Who::Worker(w) => {
                        format!("a party (worker {}) died waiting at the barrier", w.0)
                    }
                    Who::Peer(n) => {
                        format!("a party's node {} left while it waited at the barrier", n.0)
                    }
                    Who::Local => "a party died waiting at the barrier".to_string(),
                };
                self.break_barrier(prim, &why, true, out);
            }
        }
    }

    /// Frees the units of `prim` whose holders `dead` picks, counting them for the next
    /// acquirers' flag; the caller pumps.
    fn end_leases(&mut self, prim: u64, dead: impl Fn(Holder) -> bool) -> bool {
        let Some(SyncPrim { state: State::Units { free, holders, died, .. } }) =
            self.sync.get_mut(&prim)
        else {
            return false;
        };
        let before = holders.len();
        holders.retain(|(h, _)| !dead(*h));
        let n = (before - holders.len()) as u64;
        *free += n;
        *died += n;
        n > 0
    }

    /// Notes a worker's acquire of another node's lock or semaphore (see `remote_holds`).
    pub(super) fn note_remote_hold(&mut self, who: Who, op: &PrimOp) {
        let held = match (who, op) {
            (
                Who::Worker(w),
                PrimOp::Sync {
                    prim,
                    op: SyncOp::Acquire { holder, .. } | SyncOp::CondWait { holder },
                },
            ) => (w, *prim, *holder),
            _ => return,
        };
        self.remote_holds.entry(held.0).or_default().insert((held.1, held.2));
    }

    /// Worker `w` died: the homes of the other nodes' locks it took end its leases there.
    pub(super) fn end_remote_holds(&mut self, w: WorkerId) {
        for (prim, holder) in self.remote_holds.remove(&w).unwrap_or_default() {
            let op = PrimOp::Sync { prim, op: SyncOp::HolderGone { holder } };
            self.forward(Who::Local, u64::MAX, prim, op);
        }
    }

    /// Ends the leases of the processes `dead` picks (they died: a worker, or later every
    /// process of a dead peer node): their units are freed, and the next acquirer of each is
    /// told that a holder died.
    pub(super) fn sync_drop_holders(
        &mut self,
        dead: impl Fn(Who) -> bool,
        out: &mut Vec<Delivery>,
    ) {
        let ids: Vec<u64> = self.sync.keys().copied().collect();
        for id in ids {
            if self.end_leases(id, |h| dead(h.who)) {
                self.pump(id, out);
            }
        }
    }
}

fn acquired(died: bool, notified: bool) -> PrimResult {
    PrimResult::Acquired { died, notified }
}

/// Whether the next grant reports a dead holder (one report per unit freed by a death).
fn take_died(died: &mut u64) -> bool {
    let d = *died > 0;
    *died = died.saturating_sub(1);
    d
}

#[cfg(test)]
mod tests;
