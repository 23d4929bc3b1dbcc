//! Completion: what a task's end changes. Its results become objects (or hold its error), the
//! tasks and actor calls that depended on them become runnable (or fail alike), waiters and
//! watchers are told, a peer that sent the task gets its results, and what the task held is
//! released. A task that failed and may run again goes back to its ready queue.

use super::objects::Settled;
use super::*;

impl Scheduler {
    /// A worker finished a task.
    pub fn task_done(
        &mut self,
        wid: WorkerId,
        tid: TaskId,
        result: TaskResult,
        out: &mut Vec<Action>,
    ) {
        let Some(w) = self.workers.get_mut(&wid) else {
            return;
        };
        let Some(pos) = w.queue.iter().position(|t| *t == tid) else {
            return;
        };
        w.queue.remove(pos);
        let next_runs = pos == 0 && w.actor.is_none();
        self.refresh_head_cpu(wid);
        if next_runs {
            self.head_started(wid, out);
            self.cancel_started_head(wid, out);
        }
        if let Some(ActorPart::Create(_)) = self.tasks.get(&tid).map(|t| &t.spec.actor) {
            self.tasks.remove(&tid);
            self.actor_created(ActorId(tid), wid, result, out);
            self.schedule(out);
            return;
        }
        self.task_result(tid, result, out);
        self.schedule(out);
    }

    /// The task now at the head of worker `wid`'s queue was cancelled while it waited behind
    /// another: the cancel sent a `Revoke`, but the worker may have started it before the revoke
    /// arrived (the task before it finished meanwhile). Interrupt it (or, with `force`, kill the
    /// worker) as a cancel of a running task does; a worker that did give it back ignores this.
    pub(super) fn cancel_started_head(&mut self, wid: WorkerId, out: &mut Vec<Action>) {
        let Some(head) = self.workers.get(&wid).and_then(|w| w.queue.front()).copied() else {
            return;
        };
        let Some(force) = self.tasks.get(&head).and_then(|t| t.cancel) else {
            return;
        };
        if force {
            self.workers.doom(wid);
            out.push(Action::Send { worker: wid, msg: NodeToWorker::KillIfRunning { task: head } });
        } else {
            out.push(Action::Send { worker: wid, msg: NodeToWorker::Cancel { task: head } });
        }
    }

    /// The task at the head of worker `wid`'s queue has started: a peer that sent it is told,
    /// so that if this node dies only the tasks it really started use a retry there.
    pub(super) fn head_started(&mut self, wid: WorkerId, out: &mut Vec<Action>) {
        // The state API's start: when the task runs, not when it was queued behind another
        // in the worker's pipeline.
        if let Some(w) = self.workers.get(&wid) {
            if let Some(&tid) = w.queue.front() {
                if let Some(t) = self.tasks.get(&tid) {
                    let (seq, pid, attempt) = (t.seq, w.pid, t.attempts);
                    note!(self, TaskEvent::Started { seq, pid, attempt });
                }
            }
        }
        if !self.peers.has_tasks_from_peers() {
            return; // No peer's task here (always so on a lone node): nothing to look up.
        }
        let head = self.workers.get(&wid).and_then(|w| w.queue.front()).copied();
        if let Some(peer) = head.and_then(|t| self.peers.sender_of(&t)) {
            if let Some(task) = head {
                out.push(Action::PeerStarted { peer, task });
            }
        }
    }

    /// A task (not an actor's creation) ended with `result`, here or on a peer.
    pub(super) fn task_result(&mut self, tid: TaskId, result: TaskResult, out: &mut Vec<Action>) {
        let Some(task) = self.tasks.get_mut(&tid) else {
            return;
        };
        let name = task.spec.name.clone();
        let seq = task.seq;
        let call_of = match &task.spec.actor {
            ActorPart::Call(call) => Some(call.actor),
            _ => None,
        };
        match result {
            TaskResult::Ok(values) if values.len() == task.spec.num_returns as usize => {
                let spec = task.spec.clone();
                let values: Vec<Arc<ObjectData>> = values.into_iter().map(Arc::new).collect();
                for (id, v) in spec.return_ids().zip(values.iter()) {
                    self.object_ready(id, v.clone(), out);
                }
                self.report_to_peer(tid, &spec, Ok(values), out);
                self.stream_finished(tid, None, out);
                self.finish_task(tid, out);
                note!(self, TaskEvent::Finished { seq });
            }
            TaskResult::Ok(values) => {
                let msg = format!(
                    "task '{name}' declared num_returns={} but produced {} values",
                    task.spec.num_returns,
                    values.len()
                );
                self.fail_task(tid, error(ErrorKind::TaskException, &name, msg), out);
            }
            TaskResult::Err { error: e, retryable } => {
                if task.cancel.is_some() {
                    let msg = format!("task '{name}' was cancelled");
                    let mut err = error(ErrorKind::Cancelled, &name, msg);
                    Arc::make_mut(&mut err).traceback = e.traceback;
                    self.fail_task(tid, err, out);
                } else if retryable && retries_left(task) && call_of.is_none() {
                    task.attempts += 1;
                    task.state = TaskState::Queued;
                    self.enqueue(tid, false);
                    self.note_queued(tid);
                } else {
                    self.fail_task(tid, Arc::new(e), out);
                }
            }
        }
        if let Some(aid) = call_of {
            self.actor_call_finished(aid, out);
        }
    }

    pub(super) fn object_ready(
        &mut self,
        id: ObjectId,
        value: Arc<ObjectData>,
        out: &mut Vec<Action>,
    ) {
        // Nobody holding a reference any more, the value is dropped at once.
        let ready = || ObjectState::Ready(value.clone());
        let Some(dependents) = self.settle(id, ready, &value.contained, out) else {
            return;
        };
        for tid in dependents {
            let Some(t) = self.tasks.get_mut(&tid) else {
                continue;
            };
            if let TaskState::WaitingDeps(n) = &mut t.state {
                *n -= 1;
                if *n == 0 {
                    self.make_runnable(tid, out);
                }
            }
        }
        self.wake_gather(id, out);
    }

    /// Gives object `id` its state (see `Objects::settle`) and tells whoever waited for it; the
    /// objects its value holds (`contained`) are referenced first, so that no waiter's release
    /// can drop them. The tasks that depend on it, or `None` if it is unknown or was dropped
    /// (nobody references it). Peers waiting for it are served either way. One piece for a
    /// value and for an error, so that both reach waiters, watchers and peers alike.
    fn settle(
        &mut self,
        id: ObjectId,
        state: impl FnOnce() -> ObjectState,
        contained: &[ObjectId],
        out: &mut Vec<Action>,
    ) -> Option<Vec<TaskId>> {
        let dependents = match self.objects.settle(&id, state) {
            Settled::Unknown => return None,
            Settled::Dropped => None,
            Settled::Kept { waiters, dependents, watchers } => {
                for c in contained {
                    self.incref_one(*c);
                }
                self.notify(id, waiters, watchers, out);
                Some(dependents)
            }
        };
        if self.peers.has_serve_waits() {
            self.serve_waiting(id, out);
        }
        dependents
    }

    /// Dispatches again the actor calls held back for `id` (see `gather_waits`).
    pub(super) fn wake_gather(&mut self, id: ObjectId, out: &mut Vec<Action>) {
        if let Some(actors) = self.actors.take_gather(&id) {
            for a in actors {
                self.dispatch_actor(a, out);
            }
        }
    }

    pub(super) fn object_failed(
        &mut self,
        id: ObjectId,
        err: Arc<ErrorPayload>,
        out: &mut Vec<Action>,
    ) {
        let Some(dependents) = self.settle(id, || ObjectState::Failed(err.clone()), &[], out)
        else {
            return;
        };
        for tid in dependents {
            if matches!(self.tasks.get(&tid).map(|t| t.state), Some(TaskState::WaitingDeps(_))) {
                self.fail_task(tid, err.clone(), out);
            }
        }
        self.wake_gather(id, out);
    }

    pub(super) fn notify(
        &mut self,
        id: ObjectId,
        waiters: Vec<WaiterId>,
        watchers: Vec<Holder>,
        out: &mut Vec<Action>,
    ) {
        for wid in waiters {
            if self.waiters.one_ready(wid) {
                self.complete_waiter(wid, out);
            }
        }
        for h in watchers {
            match h {
                Holder::Local => out.push(Action::LocalReady { id }),
                Holder::Peer(peer) => self.forward_object(peer, id, out),
                Holder::Worker(worker) => {
                    if self.workers.contains_key(&worker) {
                        out.push(Action::Send {
                            worker,
                            msg: NodeToWorker::Ready { ids: vec![id] },
                        });
                    }
                }
            }
        }
    }

    /// Fails a task that has not produced its results: its returns hold `err`, its dependents
    /// fail alike, and its argument references are released.
    pub(super) fn fail_task(&mut self, tid: TaskId, err: Arc<ErrorPayload>, out: &mut Vec<Action>) {
        let Some(task) = self.tasks.get(&tid) else {
            return;
        };
        let mut call_of = None;
        let spec = task.spec.clone();
        let create_of = matches!(spec.actor, ActorPart::Create(_)).then_some(ActorId(tid));
        if create_of.is_none() {
            note!(self, TaskEvent::Failed { seq: task.seq, error: err.clone() });
        }
        match (&spec.actor, task.state) {
            (ActorPart::Call(call), TaskState::WaitingDeps(_) | TaskState::Queued) => {
                let (aid, caller) = (call.actor, task.caller);
                if let Some(a) = self.actors.get_mut(&aid) {
                    a.drop_call(caller, tid);
                }
                call_of = Some(aid);
            }
            (ActorPart::None, TaskState::Queued) => {
                self.tasks.unqueue(tid);
            }
            _ => {}
        }
        for id in spec.return_ids() {
            self.object_failed(id, err.clone(), out);
        }
        self.report_to_peer(tid, &spec, Err(err.clone()), out);
        self.stream_finished(tid, Some(err.clone()), out);
        self.finish_task(tid, out);
        if let Some(aid) = create_of {
            if let Some(a) = self.actors.get_mut(&aid) {
                a.args_released = true; // By `finish_task`, just now.
            }
            self.actor_dead(aid, err, out);
        }
        if let Some(aid) = call_of {
            // The next call of that caller may be runnable now.
            self.dispatch_actor(aid, out);
            self.actor_call_finished(aid, out);
        }
    }

    pub(super) fn finish_task(&mut self, tid: TaskId, out: &mut Vec<Action>) {
        let Some(task) = self.tasks.remove(&tid) else {
            return;
        };
        self.release_args(&task.spec, out);
        self.peers.task_ended(tid);
    }

    pub(super) fn release_args(&mut self, spec: &TaskSpec, out: &mut Vec<Action>) {
        for oid in spec.args.contained.iter().chain(spec.deps.iter()) {
            self.decref_one(*oid, out);
        }
    }
}
