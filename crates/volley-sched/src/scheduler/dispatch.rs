//! Dispatch: where runnable tasks go, as the coordinator decides it with the parts' queries.
//!
//! Runnable pool tasks wait in two ready queues (`Tasks`): tasks asking for resources other than
//! CPU, or for no CPU, are tried first from their own queue so they never wait behind plain tasks
//! for CPUs they do not need. A task goes to an idle worker while its resources are free; when
//! they are not it may go to a peer (`peers`), or be pipelined behind a running task of the same
//! size (`Workers::pipeline_target`); an idle worker takes back half the tasks pipelined on the
//! busiest one (`steal`). Placement groups and actors waiting to start are tried first.

use super::*;

impl Scheduler {
    pub(super) fn schedule(&mut self, out: &mut Vec<Action>) {
        while let Some(t) = self.peers.next_ended_rerun() {
            self.accept_peer_task(
                t.peer, t.spec, t.function, t.objects, t.routes, t.errors, t.cached, t.fetch, out,
            );
        }
        if self.placement.has_pending() {
            self.place_pgs(out);
        }
        if !self.actors.no_pending() {
            self.start_actors(out);
        }
        // Tasks asking for other resources (or no CPU) first, from their own queue: they must
        // not wait behind plain tasks for CPUs they do not need. One that waits for CPUs holds
        // the plain tasks back, as the head of a single queue would.
        let cpu_short = !self.queue(true).is_empty() && self.schedule_queue(true, out);
        if !cpu_short {
            self.schedule_queue(false, out);
        }
        if self.tasks.queued() == 0 {
            self.steal(out);
            if !self.peers.is_empty() {
                self.steal_from_peers(out);
            }
        }
    }

    pub(super) fn queue(&mut self, side: bool) -> &mut VecDeque<TaskId> {
        self.tasks.queue(side)
    }

    /// Puts a runnable task in its ready queue (see `schedule`).
    pub(super) fn enqueue(&mut self, tid: TaskId, front: bool) {
        self.tasks.enqueue(tid, front, self.now_ms);
    }

    pub(super) fn queued(&self) -> usize {
        self.tasks.queued()
    }

    /// Dispatches the runnable tasks of one queue; true if one waits for CPUs.
    pub(super) fn schedule_queue(&mut self, side: bool, out: &mut Vec<Action>) -> bool {
        let mut cpu_short = false;
        // Tasks that must wait for one particular node, set aside so they do not hold up the
        // rest, then put back in order.
        let mut parked = Vec::new();
        while let Some(&tid) = self.queue(side).front() {
            let Some(task) = self.tasks.get(&tid) else {
                self.queue(side).pop_front();
                continue;
            };
            let cpu = task.spec.options.cpu_milli;
            if cpu_short && cpu > 0 {
                // An earlier one waits for CPUs: it goes first.
                self.queue(side).pop_front();
                parked.push(tid);
                continue;
            }
            let mut may_spill = true;
            let from_peer = matches!(task.caller, Holder::Peer(_));
            match task.spec.options.strategy {
                Strategy::Node { id, .. } if NodeId(id) == self.peers.here() => may_spill = false,
                Strategy::Node { id, soft } => {
                    let peer = NodeId(id);
                    if self.try_spill_to(tid, peer, out) {
                        self.queue(side).pop_front();
                        continue;
                    }
                    if !soft {
                        self.queue(side).pop_front();
                        parked.push(tid);
                        continue;
                    }
                }
                // (A task a peer sent here stays here: it takes no turn.)
                Strategy::Spread if !self.peers.is_empty() && !from_peer => {
                    match self.spread_target(tid) {
                        // Its turn is here: it waits here for a CPU (an idle peer may take it).
                        Some(node) if node == self.peers.here() => may_spill = false,
                        Some(peer) if self.try_spill_to(tid, peer, out) => {
                            self.queue(side).pop_front();
                            continue;
                        }
                        _ => {}
                    }
                }
                Strategy::Spread | Strategy::Default => {}
            }
            let Some(task) = self.tasks.get(&tid) else {
                self.queue(side).pop_front();
                continue;
            };
            if placement::pg_of(&task.spec).is_some() {
                let name = task.spec.name.clone();
                let from_peer = matches!(task.caller, Holder::Peer(_));
                if let Some(why) = self.pg_removed(&task.spec) {
                    self.queue(side).pop_front();
                    self.fail_task(tid, error(ErrorKind::Unschedulable, &name, why), out);
                    continue;
                }
                if !self.holds_pg_resources(&task.spec) {
                    // Its bundle is on another node, or not placed yet.
                    self.queue(side).pop_front();
                    if from_peer {
                        let why = format!("'{name}' was sent to a node that holds no bundle of its placement group");
                        self.fail_task(tid, error(ErrorKind::Unschedulable, &name, why), out);
                    } else if !self.try_spill(tid, out) {
                        parked.push(tid);
                    }
                    continue;
                }
            }
            let Some(task) = self.tasks.get(&tid) else {
                self.queue(side).pop_front();
                continue;
            };
            let plain = task.spec.options.resources.is_empty();
            if self.res.fits(cpu, &task.spec.options.resources) {
                if let Some(w) = self.idle_worker() {
                    self.queue(side).pop_front();
                    self.assign(w, tid, out);
                    continue;
                }
                // CPU is free but no worker is: workers are starting, or busy ones are blocked and
                // lent their CPU. Make sure enough are coming rather than pipelining.
                self.ensure_workers(out);
                break;
            }
            if may_spill && self.try_spill(tid, out) {
                self.queue(side).pop_front();
                continue;
            }
            match self.pipeline_target(cpu).filter(|_| plain) {
                Some(w) => {
                    self.queue(side).pop_front();
                    self.assign(w, tid, out);
                }
                None if side => {
                    // Tasks behind it may want other resources, or none: on to them.
                    cpu_short |= self.res.cpu_short(cpu);
                    self.queue(side).pop_front();
                    parked.push(tid);
                }
                None => {
                    cpu_short = true;
                    break;
                }
            }
        }
        for tid in parked.into_iter().rev() {
            self.queue(side).push_front(tid);
        }
        cpu_short
    }

    pub(super) fn idle_worker(&self) -> Option<WorkerId> {
        self.workers.idle_worker()
    }

    pub(super) fn pipeline_target(&self, cpu: u32) -> Option<WorkerId> {
        self.workers.pipeline_target(cpu, self.cfg.pipeline_depth)
    }

    pub(super) fn ensure_workers(&mut self, out: &mut Vec<Action>) {
        if self.starts_failing() {
            // Workers cannot start: fail the queue rather than hang.
            if !self.workers.any_alive_pool() {
                self.fail_all_queued(out);
            }
            return;
        }
        if !self.spawn_allowed() {
            return; // Backing off; `tick` spawns when it is time.
        }
        let starting = self.workers.starting_pool();
        let free_cpus = (self.res.cpu_free() as usize).div_ceil(1000).max(1);
        let wanted = free_cpus.min(self.queued());
        let mut n = starting;
        while n < wanted && self.workers.len() < self.cfg.max_workers {
            self.spawn(out);
            n += 1;
        }
        if n == 0 && self.stuck_at_worker_cap() {
            self.fail_queued_at_cap(out);
        }
    }

    /// Every worker process this node may run exists, and nothing can ever free one: each pool
    /// worker (there is at least one) is blocked in `get`/`wait`, no actor is working, no task
    /// runs on another node. Nested tasks deeper than `max_workers` end here; waiting would
    /// never end. (Slots all held by actors are not this: the wait notice explains those. A
    /// `get` with a timeout counts as blocked too, though it might have given up later.)
    pub(super) fn stuck_at_worker_cap(&self) -> bool {
        if self.workers.len() < self.cfg.max_workers || !self.peers.is_empty() {
            return false;
        }
        let mut blocked = 0;
        for w in self.workers.values() {
            let progress = match w.actor {
                None if w.blocked > 0 => {
                    blocked += 1;
                    false
                }
                None => true,
                Some(_) => {
                    w.state == WorkerState::Starting || (w.blocked == 0 && !w.queue.is_empty())
                }
            };
            if progress {
                return false;
            }
        }
        blocked > 0 && !self.tasks.values().any(|t| matches!(t.state, TaskState::Remote(_)))
    }

    pub(super) fn fail_queued_at_cap(&mut self, out: &mut Vec<Action>) {
        let max = self.cfg.max_workers;
        let actors = self.workers.values().filter(|w| w.actor.is_some()).count();
        let held = match actors {
            0 => String::new(),
            n => format!(" ({n} of them by actors)"),
        };
        let queued = self.tasks.drain_queued();
        for tid in queued {
            let name = self.tasks.get(&tid).map(|t| t.spec.name.clone()).unwrap_or_default();
            let msg = format!(
                "task '{name}' cannot start: all {max} worker processes this node may run \
                 (max_workers) are taken{held}, the others by tasks blocked in get() or wait() \
                 on other tasks, so none is left to run it. Nested tasks more than {max} levels \
                 deep need a higher cap: volley.init(max_workers=N)"
            );
            self.fail_task(tid, error(ErrorKind::Unschedulable, &name, msg), out);
        }
    }

    pub(super) fn assign(&mut self, wid: WorkerId, tid: TaskId, out: &mut Vec<Action>) {
        self.spread_done(tid);
        let Some(task) = self.tasks.get_mut(&tid) else {
            return;
        };
        let Some(w) = self.workers.get_mut(&wid) else {
            return;
        };
        task.state = TaskState::Assigned(wid);
        let (seq, pid, attempt) = (task.seq, w.pid, task.attempts);
        let spec = task.spec.clone();
        w.queue.push_back(tid);
        let runs_now = w.queue.len() == 1 && w.actor.is_none();
        if runs_now {
            w.cpu_held = spec.options.cpu_milli;
            self.res.take_cpu(w.cpu_held);
            if !spec.options.resources.is_empty() {
                w.res_held = spec.options.resources.clone();
                let gpus = self.acquire_res(&spec.options.resources);
                if let Some(w) = self.workers.get_mut(&wid) {
                    w.gpus = gpus;
                }
            }
            self.head_started(wid, out);
        } else if w.actor.is_some() {
            // An actor's call: it runs in the actor's own order (or at once, with threads).
            note!(self, TaskEvent::Started { seq, pid, attempt });
        }
        let Some(w) = self.workers.get_mut(&wid) else {
            return;
        };
        let gpus = match w.actor {
            Some(aid) => self.actors.get(&aid).map(|a| a.gpus.clone()).unwrap_or_default(),
            None if w.queue.len() == 1 => w.gpus.clone(),
            None => Vec::new(), // Pipelined tasks ask for no GPUs.
        };
        let function = if w.known_functions.insert(spec.function) {
            self.functions.get(&spec.function).cloned()
        } else {
            None
        };
        let deps = spec
            .deps
            .iter()
            .filter_map(|d| match self.objects.get(d).map(|o| &o.state) {
                Some(ObjectState::Ready(v)) => Some(v.clone()),
                _ => None,
            })
            .collect();
        out.push(Action::Execute { worker: wid, spec, function, deps, gpus });
    }

    /// An idle worker takes back half of the tasks pipelined behind the busiest worker.
    pub(super) fn steal(&mut self, out: &mut Vec<Action>) {
        for _ in 0..self.workers.idle_count() {
            let Some(vid) = self.workers.steal_victim() else { return };
            let Some(v) = self.workers.get_mut(&vid) else {
                return;
            };
            let waiting = v.queue.len() - 1;
            let take = waiting.div_ceil(2);
            let tasks: Vec<TaskId> = v.queue.iter().skip(v.queue.len() - take).copied().collect();
            v.revoke_outstanding = true;
            out.push(Action::Send { worker: vid, msg: NodeToWorker::Revoke { tasks } });
        }
    }

    /// A worker gave back tasks it had not started.
    pub fn tasks_returned(&mut self, wid: WorkerId, tasks: &[TaskId], out: &mut Vec<Action>) {
        let Some(w) = self.workers.get_mut(&wid) else {
            return;
        };
        w.revoke_outstanding = false;
        // The worker's word is final: it had not started these, even one we took for running
        // because the task before it finished while the revoke was on its way.
        let head = w.queue.front().copied();
        let mut back = Vec::new();
        for tid in tasks {
            if let Some(pos) = w.queue.iter().position(|t| t == tid) {
                w.queue.remove(pos);
                back.push(*tid);
            }
        }
        let head_changed = w.actor.is_none() && w.queue.front().is_some_and(|t| Some(*t) != head);
        self.refresh_head_cpu(wid);
        if head_changed {
            // The task we took for running was given back: the worker runs the one behind it
            // instead, which starts now (and, if it was cancelled on its way, is interrupted:
            // its own revoke found it started).
            self.head_started(wid, out);
            self.cancel_started_head(wid, out);
        }
        if self.peers.has_revoked() {
            back = self.return_revoked_to_peers(back, out);
        }
        for tid in back.into_iter().rev() {
            let Some(task) = self.tasks.get_mut(&tid) else {
                continue;
            };
            if task.cancel.is_some() {
                let name = task.spec.name.clone();
                let msg = format!("task '{name}' was cancelled");
                self.fail_task(tid, error(ErrorKind::Cancelled, &name, msg), out);
            } else if let ActorPart::Call(call) = &task.spec.actor {
                let (aid, caller) = (call.actor, task.caller);
                task.state = TaskState::Queued;
                note!(self, TaskEvent::Queued { seq: task.seq, attempt: task.attempts });
                if let Some(a) = self.actors.get_mut(&aid) {
                    a.requeue_call(caller, tid);
                }
                self.dispatch_actor(aid, out);
            } else {
                task.state = TaskState::Queued;
                self.enqueue(tid, true);
                self.note_queued(tid);
            }
        }
        self.schedule(out);
    }

    /// Re-derives the CPU a worker holds from the task now at the head of its queue.
    pub(super) fn refresh_head_cpu(&mut self, wid: WorkerId) {
        let Some(w) = self.workers.get_mut(&wid) else {
            return;
        };
        if w.queue.is_empty() {
            w.idle_since = self.now_ms;
        }
        if w.actor.is_some() {
            return; // The actor holds its resources, not its calls.
        }
        let head = w.queue.front().and_then(|t| self.tasks.get(t));
        let held = head.map_or(0, |t| t.spec.options.cpu_milli);
        let res = head.map(|t| t.spec.options.resources.clone()).unwrap_or_default();
        if w.blocked == 0 {
            self.res.give_cpu(w.cpu_held);
            self.res.take_cpu(held);
        }
        w.cpu_held = held;
        let old = std::mem::replace(&mut w.res_held, res.clone());
        let old_gpus = std::mem::take(&mut w.gpus);
        self.release_res(&old, &old_gpus);
        let gpus = self.acquire_res(&res);
        if let Some(w) = self.workers.get_mut(&wid) {
            w.gpus = gpus;
        }
    }
}
