//! Task and actor events for the state API (`volley list tasks`, the dashboard): the scheduler
//! notes each step of a task's life and each change of an actor as a compact event in a buffer
//! that the runtime drains after each call (see `volley-runtime`'s `state` module), stamps with
//! its clock and folds into its tables. The scheduler keeps no clock and no history: an event is
//! an id and, for a submission, a clone of the spec's `Arc` (no string is copied here), so the
//! cost on the task path is a `Vec` push per step, and nothing when recording is off.

use super::*;

/// One step of a task's or an actor's life, as the scheduler saw it. A task's events after its
/// submission name it by `seq`, the number its submission got: the runtime keeps its rows in
/// submission order, so an event finds its row by an index instead of a hash lookup in a large
/// table (see `volley-runtime`'s `state` module).
#[derive(Debug, Clone)]
pub enum TaskEvent {
    /// A task was submitted by `holder` (actor creations are actors, not tasks: not noted).
    /// `seq` is one more than the last submission's, unless the task was submitted again while
    /// its entry still existed: then it keeps its number (its row is written again).
    Submitted {
        seq: u64,
        spec: Arc<TaskSpec>,
        holder: Holder,
        /// For a task submitted from a worker: what that worker runs (its job is the task's).
        parent: Parent,
    },
    /// It waits for a worker: its arguments are ready, or it goes back to the queue for another
    /// attempt (`attempt` counts the retries so far), or it was taken back from a busy worker.
    Queued {
        seq: u64,
        attempt: u32,
    },
    /// It runs in worker process `pid` (for an actor's call: sent to the actor's process);
    /// `attempt` counts the retries before this run.
    Started {
        seq: u64,
        pid: u32,
        attempt: u32,
    },
    /// Sent to another node, which runs it (and notes its own events).
    Forwarded {
        seq: u64,
        peer: NodeId,
    },
    Finished {
        seq: u64,
    },
    /// Given back to the peer that sent it, before it ran here (that peer schedules it again,
    /// and notes its own events): this node's row of it is no longer news.
    Returned {
        seq: u64,
    },
    /// Failed for good (or cancelled: the error's kind says which).
    Failed {
        seq: u64,
        error: Arc<ErrorPayload>,
    },
    /// Something of the actor changed (created, started, alive, restarting, dead): read it
    /// with [`Scheduler::actor_record`].
    Actor {
        actor: ActorId,
    },
}

/// What the worker that submitted a task was running: the nested task's job is its parent's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parent {
    /// Not submitted from a worker, or from one that runs nothing recorded.
    None,
    /// The task (by its `seq`) at the head of the worker's queue.
    Task(u64),
    /// The actor the worker hosts.
    Actor(ActorId),
}

/// An actor as the state API shows it.
#[derive(Debug, Clone)]
pub struct ActorRecord {
    pub class_name: String,
    pub name: Option<String>,
    pub namespace: String,
    /// `PENDING`, `ALIVE`, `RESTARTING` or `DEAD` (a process starting is still `PENDING`, or
    /// `RESTARTING` after a death).
    pub state: &'static str,
    pub restarts: u32,
    pub pid: u32,
    /// The peer it runs on, when not here.
    pub remote: Option<NodeId>,
    /// Whether this node hosts it (not only a route to another node's actor).
    pub hosted: bool,
    pub detached: bool,
    pub death: Option<String>,
    pub holder: Holder,
}

/// A worker process as the state API shows it.
#[derive(Debug, Clone)]
pub struct WorkerRecord {
    pub pid: u32,
    /// `STARTING`, `IDLE`, `BUSY`, `BLOCKED` or `ACTOR`.
    pub state: &'static str,
    pub actor: Option<ActorId>,
    /// The task it runs (the head of its queue).
    pub task: Option<TaskId>,
}

/// An object this node's scheduler knows, as the state API shows it.
#[derive(Debug, Clone)]
pub struct ObjectRecord {
    pub id: ObjectId,
    /// Its value's bytes (0 while pending or failed).
    pub size: u64,
    /// `PENDING`, `READY` or `FAILED`.
    pub state: &'static str,
    /// References held to it (by processes, pending tasks and other objects).
    pub refs: u32,
    /// Whether its value lives in the shared-memory store (else inline in the scheduler).
    pub in_store: bool,
}

impl Scheduler {
    /// Every worker process of this node.
    pub fn worker_records(&self) -> Vec<WorkerRecord> {
        let mut v: Vec<WorkerRecord> = self
            .workers
            .values()
            .map(|w| WorkerRecord {
                pid: w.pid,
                state: match (w.state, w.actor, w.blocked, w.queue.is_empty()) {
                    (workers::WorkerState::Starting, _, _, _) => "STARTING",
                    (_, Some(_), _, _) => "ACTOR",
                    (_, None, b, _) if b > 0 => "BLOCKED",
                    (_, None, _, true) => "IDLE",
                    _ => "BUSY",
                },
                actor: w.actor,
                task: w.queue.front().copied(),
            })
            .collect();
        v.sort_by_key(|w| w.pid);
        v
    }

    /// The objects this node's scheduler knows, at most `limit` (and how many there are).
    pub fn object_records(&self, limit: usize) -> (Vec<ObjectRecord>, usize) {
        let v = self
            .objects
            .iter()
            .take(limit)
            .map(|(id, o)| {
                let (state, size, in_store) = match &o.state {
                    ObjectState::Pending => ("PENDING", 0, false),
                    ObjectState::Failed(_) => ("FAILED", 0, false),
                    ObjectState::Ready(d) => match &d.shm {
                        Some(loc) => ("READY", loc.size, true),
                        None => (
                            "READY",
                            (d.data.len() + d.buffers.iter().map(|b| b.len()).sum::<usize>())
                                as u64,
                            false,
                        ),
                    },
                };
                ObjectRecord { id: *id, size, state, refs: o.refs, in_store }
            })
            .collect();
        (v, self.objects.len())
    }

    /// Turns event recording on or off (off by default, so the scheduler's own tests and users
    /// that never read the state pay nothing).
    pub fn set_recording(&mut self, on: bool) {
        self.recording = on;
        if !on {
            self.events.clear();
        }
    }

    /// The events noted since the last call, oldest first, swapped into `buf` (an empty
    /// buffer the caller keeps, which becomes the scheduler's: no allocation per call).
    pub fn swap_events(&mut self, buf: &mut Vec<TaskEvent>) {
        std::mem::swap(&mut self.events, buf);
    }

    /// Whether events wait to be taken (one load: the runtime checks it after every call).
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    pub(super) fn note_queued(&mut self, task: TaskId) {
        if !self.recording {
            return;
        }
        if let Some(t) = self.tasks.get(&task) {
            let (seq, attempt) = (t.seq, t.attempts);
            self.events.push(TaskEvent::Queued { seq, attempt });
        }
    }

    /// Notes a task's submission (recording is on); its number: `again`'s, the number of the
    /// entry this submission replaces, if any, else the next one.
    pub(super) fn note_submitted(
        &mut self,
        spec: &Arc<TaskSpec>,
        holder: Holder,
        again: Option<u64>,
    ) -> u64 {
        let seq = match again {
            Some(s) if s != 0 => s,
            _ => {
                let s = self.next_seq;
                self.next_seq += 1;
                s
            }
        };
        let parent = match holder {
            Holder::Worker(w) => match self.workers.get(&w) {
                Some(w) if w.actor.is_some() => w.actor.map_or(Parent::None, Parent::Actor),
                Some(w) => w
                    .queue
                    .front()
                    .and_then(|t| self.tasks.get(t))
                    .filter(|t| t.seq != 0)
                    .map_or(Parent::None, |t| Parent::Task(t.seq)),
                None => Parent::None,
            },
            _ => Parent::None,
        };
        self.events.push(TaskEvent::Submitted { seq, spec: spec.clone(), holder, parent });
        seq
    }

    /// This node's number in the cluster, once it joined one.
    pub fn node_id(&self) -> Option<NodeId> {
        self.peers.node_id()
    }

    /// Actor `aid` as the state API shows it, if this node knows it.
    pub fn actor_record(&self, aid: ActorId) -> Option<ActorRecord> {
        let a = self.actors.get(&aid)?;
        let state = match a.life {
            actors::Life::Pending | actors::Life::Starting if a.restarts > 0 => "RESTARTING",
            actors::Life::Pending | actors::Life::Starting => "PENDING",
            actors::Life::Alive => "ALIVE",
            actors::Life::Restarting => "RESTARTING",
            actors::Life::Dead => "DEAD",
        };
        let o = a.opts();
        Some(ActorRecord {
            class_name: o.class_name.clone(),
            name: o.name.clone(),
            namespace: o.namespace.clone(),
            state,
            restarts: a.restarts + a.peer_restarts,
            pid: a.pid,
            remote: a.remote,
            hosted: a.remote.is_none(),
            detached: o.detached,
            death: a.death.as_ref().map(|e| e.message.clone()),
            holder: a.caller,
        })
    }
}
