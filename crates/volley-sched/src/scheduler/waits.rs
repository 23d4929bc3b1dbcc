//! Waits: `get`/`wait` from this process or from a worker, and watches. A worker that must wait
//! lends its CPU until the wait ends (`WorkerEntry::block`); the tasks pipelined behind it are
//! taken back so they do not wait for it.

use super::*;

/// The waiter id of a wait the scheduler does not answer (see `begin_outside_wait`): no waiter
/// has it, so a `CancelRequest` for it finds nothing to answer here.
const OUTSIDE_WAIT: WaiterId = WaiterId::MAX;

impl Scheduler {
    /// Registers a wait for `needed` of `ids` (all of them with `usize::MAX`). A worker owner is
    /// answered with a message (values if `fetch`); a local one with `WakeLocal`. A worker that
    /// must wait lends its CPU until the wait ends.
    pub fn add_waiter(
        &mut self,
        owner: WaitOwner,
        ids: &[ObjectId],
        needed: usize,
        fetch: bool,
        out: &mut Vec<Action>,
    ) -> WaiterId {
        self.add_waiter_inner(owner, ids, needed, fetch, false, out)
    }

    pub(super) fn add_waiter_inner(
        &mut self,
        owner: WaitOwner,
        ids: &[ObjectId],
        needed: usize,
        fetch: bool,
        stream: bool,
        out: &mut Vec<Action>,
    ) -> WaiterId {
        let mut distinct: Vec<ObjectId> = ids.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        let ready = distinct.iter().filter(|id| self.is_ready(id)).count();
        let needed = needed.min(distinct.len());
        let remaining = needed.saturating_sub(ready);
        let wid = self.waiters.add(Waiter { owner, ids: ids.to_vec(), remaining, fetch, stream });
        if remaining == 0 {
            self.complete_waiter(wid, out);
            return wid;
        }
        for id in &distinct {
            if let Some(o) = self.objects.get_mut(id) {
                if matches!(o.state, ObjectState::Pending) {
                    o.waiting().waiters.push(wid);
                }
            }
        }
        if let WaitOwner::Worker { worker, req } = owner {
            self.lend_cpu(worker, req, wid, out);
        }
        wid
    }

    /// Worker `worker` blocks in request `req` (answered through `wid`): a pool worker lends the
    /// CPU its task holds until the wait ends, and the tasks pipelined behind it are taken back.
    fn lend_cpu(&mut self, worker: WorkerId, req: u64, wid: WaiterId, out: &mut Vec<Action>) {
        if let Some(w) = self.workers.get_mut(&worker) {
            if w.block(req, wid) {
                self.res.give_cpu(w.cpu_held);
                // Tasks pipelined behind the blocked one must not wait for it.
                if w.queue.len() > 1 {
                    let tasks = w.pipelined();
                    w.revoke_outstanding = true;
                    out.push(Action::Send { worker, msg: NodeToWorker::Revoke { tasks } });
                }
            }
        }
        self.schedule(out);
    }

    /// Worker `worker` waits in request `req` on something the scheduler does not hold (a
    /// queue, channel or lock of the node's primitive service): like a `get`, it lends its CPU,
    /// so that the task it waits for can run, until [`Scheduler::end_outside_wait`].
    pub fn begin_outside_wait(&mut self, worker: WorkerId, req: u64, out: &mut Vec<Action>) {
        self.lend_cpu(worker, req, OUTSIDE_WAIT, out);
    }

    /// The outside wait of `worker` in request `req` ended: it takes its CPU back.
    pub fn end_outside_wait(&mut self, worker: WorkerId, req: u64) {
        self.unblock(worker, req);
    }

    pub(super) fn complete_waiter(&mut self, wid: WaiterId, out: &mut Vec<Action>) {
        let Some(w) = self.waiters.remove(&wid) else {
            return;
        };
        match w.owner {
            WaitOwner::Local => out.push(Action::WakeLocal { waiter: wid }),
            WaitOwner::Worker { worker, req } => {
                self.unblock(worker, req);
                if w.stream {
                    let ready = self.stream_reply(Holder::Worker(worker), &w.ids);
                    out.push(Action::Send { worker, msg: NodeToWorker::WaitReply { req, ready } });
                } else if w.fetch {
                    let values = w.ids.iter().map(|id| self.result_of(id)).collect();
                    out.push(Action::GetReply { worker, req, values });
                } else {
                    let ready = w.ids.iter().filter(|id| self.is_ready(id)).copied().collect();
                    out.push(Action::Send { worker, msg: NodeToWorker::WaitReply { req, ready } });
                }
            }
        }
    }

    pub(super) fn unblock(&mut self, worker: WorkerId, req: u64) {
        if let Some(wk) = self.workers.get_mut(&worker) {
            if wk.unblock(req) {
                // Take the CPU back, even if that over-commits for a moment: the lent-out
                // work finishes and the balance returns.
                self.res.take_cpu(wk.cpu_held);
            }
        }
    }

    /// Abandons a local waiter (timeout or interrupt).
    pub fn remove_local_waiter(&mut self, wid: WaiterId) {
        self.waiters.remove(&wid);
    }

    /// A worker stops waiting on request `req`: it is answered with the ready subset, unless it
    /// was answered already.
    pub fn cancel_request(&mut self, worker: WorkerId, req: u64, out: &mut Vec<Action>) {
        let Some(wid) = self.workers.get(&worker).and_then(|w| w.requests.get(&req)).copied()
        else {
            return;
        };
        let Some(w) = self.waiters.remove(&wid) else {
            return;
        };
        self.unblock(worker, req);
        let ready = w.ids.iter().filter(|id| self.is_ready(id)).copied().collect();
        out.push(Action::Send { worker, msg: NodeToWorker::WaitReply { req, ready } });
        self.schedule(out);
    }

    /// Asks to be told (`LocalReady` or a `Ready` message) when each of `ids` is ready.
    pub fn watch(&mut self, holder: Holder, ids: &[ObjectId], out: &mut Vec<Action>) {
        let mut now = Vec::new();
        for id in ids {
            match self.objects.get_mut(id) {
                Some(o) if matches!(o.state, ObjectState::Pending) => {
                    o.waiting().watchers.push(holder)
                }
                _ => now.push(*id),
            }
        }
        if now.is_empty() {
            return;
        }
        match holder {
            Holder::Local => out.extend(now.into_iter().map(|id| Action::LocalReady { id })),
            Holder::Peer(_) => {}
            Holder::Worker(worker) => {
                out.push(Action::Send { worker, msg: NodeToWorker::Ready { ids: now } })
            }
        }
    }

    /// True once the object has a value or an error (or is unknown, which `result_of` reports).
    pub fn is_ready(&self, id: &ObjectId) -> bool {
        self.objects.is_ready(id)
    }

    /// The value or error of a ready object.
    pub fn result_of(&self, id: &ObjectId) -> Result<Arc<ObjectData>, Arc<ErrorPayload>> {
        self.objects.result_of(id)
    }

    pub fn object_state(&self, id: &ObjectId) -> Option<&ObjectState> {
        self.objects.state(id)
    }
}
