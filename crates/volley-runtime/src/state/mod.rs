//! The state API's tables: every task and actor the cluster has run, as rows a query filters
//! (`volley list tasks`, `volley.state`, the dashboard).
//!
//! Design: each node's scheduler notes compact events (`volley_sched::TaskEvent`: an id, and the
//! spec's `Arc` on submission); the node drains them after each scheduler call, stamps them with
//! one reading of the clock and folds them into its [`Tables`] (the head's, see `Head::tables`).
//! A node that is its own head (alone, or a cluster's head) thereby keeps the cluster's tables
//! with a function call and no socket. A member marks the rows it changed and sends them to the
//! head with each heartbeat (`PeerMsg::StateRows`, on the heartbeat's connection, before the
//! beat), so the head's tables are the one source of every view, a heartbeat behind at most.
//! Queries therefore go to the head (`HeadRequest::State`), where the filters are applied.
//!
//! Bounds: finished tasks are kept up to `VOLLEY_TASK_EVENTS_MAX` (default 100,000); the oldest
//! finished go first and answers count them in `dropped`. Tasks still waiting or running are
//! never dropped. Function names are interned (a row holds a number), so a row is ~100 bytes.

pub(crate) mod history;
pub mod kinds;
mod metrics;
mod query;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use volley_proto::{
    ActorId, ActorPart, ActorRow, ErrorKind, FilterOp, NodeId, ObjectId, StateAnswer, StateQuery,
    StateRows, TaskError, TaskId, TaskRow, TaskStateCode,
};
use volley_sched::{ActorRecord, Holder, Parent, Scheduler, TaskEvent};
use volley_store::sync::Mutex;

pub(crate) use query::generic_answer;

/// The default bound on finished tasks kept (`VOLLEY_TASK_EVENTS_MAX`).
pub const DEFAULT_MAX_FINISHED: usize = 100_000;

/// The most rows of one kind a member sends in one `StateRows` batch (keeps a frame small; the
/// rest goes with the next heartbeat).
const BATCH_ROWS: usize = 20_000;

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Whether recording is on for this process: `VOLLEY_TASK_EVENTS=0` turns it off (for the
/// overhead measurement, or a user who wants none of it).
pub(crate) fn recording_enabled() -> bool {
    std::env::var("VOLLEY_TASK_EVENTS").map_or(true, |v| v != "0")
}

/// One task as the table keeps it (compact: the name is interned, absent times are 0).
#[derive(Clone)]
struct Row {
    name: u32,
    state: TaskStateCode,
    job: Option<NodeId>,
    /// The actor of a call, interned like the name (`NO_ACTOR`: none): 4 bytes instead of an
    /// `Option<ActorId>`'s 24 in every row (issue 19: a queued task's row is ~90 bytes).
    actor: u32,
    node: Option<NodeId>,
    pid: u32,
    attempt: u32,
    submitted_ms: u64,
    started_ms: u64,
    ended_ms: u64,
    error: Option<Box<TaskError>>,
    /// Changed since the last batch sent to the head (members only).
    dirty: bool,
    /// Changed since the history writer last took the changes (see `history`).
    hdirty: bool,
    /// The node whose report set the state (the head's merge prefers the running node's word).
    src: NodeId,
}

use volley_proto::IdMap;
type IdSet<K> = HashSet<K, volley_proto::IdBuildHasher>;

#[derive(Default)]
struct Names {
    ids: HashMap<Arc<str>, u32>,
    names: Vec<Arc<str>>,
    /// The last name interned: a burst of one function's tasks skips the hash.
    last: Option<(Arc<str>, u32)>,
    /// The actors rows name, interned the same way (a row holds the number).
    actor_ids: IdMap<ActorId, u32>,
    actors: Vec<ActorId>,
}

/// A row's `actor` when the task is no actor's call.
const NO_ACTOR: u32 = u32::MAX;

impl Names {
    fn intern(&mut self, s: &str) -> u32 {
        if let Some((name, i)) = &self.last {
            if **name == *s {
                return *i;
            }
        }
        if let Some((name, i)) = self.ids.get_key_value(s) {
            self.last = Some((name.clone(), *i));
            return *i;
        }
        let i = self.names.len() as u32;
        let a: Arc<str> = Arc::from(s);
        self.names.push(a.clone());
        self.ids.insert(a, i);
        i
    }

    fn get(&self, i: u32) -> &str {
        self.names.get(i as usize).map_or("", |s| s)
    }

    /// The number of `actor` (`NO_ACTOR` for none).
    fn intern_actor(&mut self, actor: Option<ActorId>) -> u32 {
        let Some(a) = actor else {
            return NO_ACTOR;
        };
        if let Some(i) = self.actor_ids.get(&a) {
            return *i;
        }
        let i = self.actors.len() as u32;
        self.actors.push(a);
        self.actor_ids.insert(a, i);
        i
    }

    /// The actor numbered `i` by `intern_actor`.
    fn actor(&self, i: u32) -> Option<ActorId> {
        self.actors.get(i as usize).copied()
    }
}

/// Where a task's row is: `Seq` for a task this node's scheduler saw submitted (by the number
/// its events carry), `Id` for one that only members' batches brought (on a head).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loc {
    Seq(u64),
    Id(TaskId),
}

/// A row of the ring: the task's id and its row. A slot left empty (a number no submission
/// was logged for) has `name == VACANT`.
#[derive(Clone)]
struct Slot {
    id: TaskId,
    row: Row,
}

const VACANT: u32 = u32::MAX;

struct Inner {
    names: Names,
    /// The rows of the tasks this node's scheduler saw submitted, in submission order: task
    /// number `seq` is at `ring[seq - base]`. An event finds its row by that index, and
    /// consecutive tasks touch consecutive memory (a hash table of 100,000 rows keyed by
    /// random ids cost a cache miss or two per event; see the module docs).
    ring: VecDeque<Slot>,
    /// The number of `ring[0]`.
    base: u64,
    /// Rows that left the ring's front before their task ended (a task that ran while more
    /// than the bound of newer ones finished), by number; and those of them that ended since,
    /// oldest first (the first to drop).
    early: IdMap<u64, Slot>,
    early_ended: VecDeque<u64>,
    /// Rows that only members' batches brought (tasks this node never saw), and the order
    /// they ended in.
    remote: IdMap<TaskId, Row>,
    remote_ended: VecDeque<TaskId>,
    /// The number of each row of the ring and of `early` by task id: made when the first
    /// member's batch arrives (a head merges by id), kept from then on. A node that is no
    /// cluster's head never pays for it.
    index: Option<IdMap<TaskId, u64>>,
    /// Rows in a final state, wherever they are (the bound counts these).
    finished: usize,
    /// The last runtime environment read for its job, and that job (see `env_job`).
    env_job: Option<(String, Option<NodeId>)>,
    dropped: u64,
    actors: IdMap<ActorId, ActorRow>,
    dirty_tasks: Vec<Loc>,
    dirty_actors: IdSet<ActorId>,
    hist_tasks: Vec<Loc>,
    hist_actors: IdSet<ActorId>,
    /// The log being folded in (swapped with `Tables::log`, so neither allocates anew).
    spare: Log,
    /// Histograms of the tasks that ended (for `/metrics`).
    metrics: metrics::TaskMetrics,
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            names: Names::default(),
            ring: VecDeque::new(),
            base: 1,
            early: IdMap::default(),
            early_ended: VecDeque::new(),
            remote: IdMap::default(),
            remote_ended: VecDeque::new(),
            index: None,
            finished: 0,
            env_job: None,
            dropped: 0,
            actors: IdMap::default(),
            dirty_tasks: Vec::new(),
            dirty_actors: IdSet::default(),
            hist_tasks: Vec::new(),
            hist_actors: IdSet::default(),
            spare: Log::default(),
            metrics: metrics::TaskMetrics::default(),
        }
    }
}

/// Events taken from the scheduler and not yet folded into the rows (see [`Tables::record`]).
#[derive(Default)]
struct Log {
    events: Vec<TaskEvent>,
    /// Per scheduler call, in order: how many of `events` it noted, this node, and when.
    runs: Vec<(usize, NodeId, u64)>,
    /// The state of the actor each `TaskEvent::Actor` names, read under the scheduler's lock,
    /// in the order of those events.
    actors: Vec<(ActorId, Option<ActorRecord>)>,
}

/// Events are folded into the rows once this many wait (or when someone reads the rows).
const FOLD_AT: usize = 4096;

/// Which change lists a changed row goes to.
#[derive(Clone, Copy)]
struct Marks {
    member: bool,
    history: bool,
}

/// The task and actor tables of a node (the cluster's, on the head). See the module docs.
pub struct Tables {
    inner: Mutex<Inner>,
    /// The scheduler's events since the last fold: appended to under the scheduler's lock (a
    /// copy of a few words), folded in bulk away from it (see [`Tables::record`]).
    log: Mutex<Log>,
    max_finished: usize,
    /// This node reports to another head: mark changed rows for the next batch.
    member: AtomicBool,
    /// The history writer runs: mark changed rows for it.
    history: AtomicBool,
    /// Jobs known by another id than their driver node's number (a submitted job's), by
    /// driver node: how rows show `job_id`, and what a `job_id` filter may name.
    job_names: Mutex<HashMap<NodeId, String>>,
    /// Events are stamped from the monotonic reading their scheduler call began with, plus
    /// the time of day (ms) at `epoch`, read again at each fold so that a step forward of the
    /// system's clock shows within one fold. It never moves back (a step back, or the
    /// millisecond either side of a reading, would stamp a later change before an earlier
    /// one): what changed after [`Tables::now_ms`] was read is stamped after it.
    epoch: Instant,
    wall_at_epoch: AtomicU64,
    /// The least stamp from now on: one past the last [`Tables::now_ms`] reading, so that a row
    /// that changes after a reading is stamped after it even in the same millisecond.
    floor: AtomicU64,
}

impl Default for Tables {
    fn default() -> Self {
        let max = std::env::var("VOLLEY_TASK_EVENTS_MAX")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(DEFAULT_MAX_FINISHED);
        Tables::with_max(max)
    }
}

impl Tables {
    /// Tables keeping at most `max_finished` finished tasks.
    pub fn with_max(max_finished: usize) -> Tables {
        Tables {
            inner: Mutex::new(Inner::default()),
            log: Mutex::new(Log::default()),
            max_finished,
            member: AtomicBool::new(false),
            history: AtomicBool::new(false),
            job_names: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
            wall_at_epoch: AtomicU64::new(now_ms()),
            floor: AtomicU64::new(0),
        }
    }

    /// The time of day (ms since the Unix epoch) on the clock that stamps this node's rows:
    /// a row that changes after this reading has a later `changed_ms`, and one that changed
    /// before it has no later one (the dashboard's `X-Volley-Now-Ms`, for a client that asks
    /// next for what changed since).
    pub(crate) fn now_ms(&self) -> u64 {
        let now = self.stamp(self.epoch.elapsed());
        self.floor.fetch_max(now + 1, Ordering::Relaxed);
        now
    }

    /// The stamp of what happens `since_epoch` after `epoch`: never before the floor.
    fn stamp(&self, since_epoch: std::time::Duration) -> u64 {
        let wall = self.wall_at_epoch.load(Ordering::Relaxed) + since_epoch.as_millis() as u64;
        wall.max(self.floor.load(Ordering::Relaxed))
    }

    /// From now on, changed rows are kept for [`Tables::take_batch`] (a member of a cluster).
    pub(crate) fn set_member(&self, on: bool) {
        self.member.store(on, Ordering::Release);
    }

    /// Folds the scheduler's events into the tables, stamped `now`; `me` is this node. Called
    /// with the scheduler's lock held (right after the call that noted them), so the events of
    /// one task arrive in order.
    #[cfg(test)]
    pub(crate) fn apply(
        &self,
        events: &mut Vec<TaskEvent>,
        sched: &Scheduler,
        me: NodeId,
        now: u64,
    ) {
        self.log_events(events, sched, me, now);
        self.flush();
    }

    /// Takes the events the scheduler noted (called under its lock, right after the call that
    /// noted them, so that one task's events stay in order): they are appended to a log, with
    /// one reading of the clock, and folded into the rows later in bulk, away from the
    /// scheduler's lock and with the caches warm (a fold per event cost the task path several
    /// times more). Whether the log is long enough to fold now ([`Tables::flush`], after the
    /// scheduler's lock is released).
    /// `at` is when the call began (the caller read the clock already: the time of day is
    /// derived from it instead of a second reading per call).
    pub(crate) fn record(&self, sched: &mut Scheduler, at: Instant) -> bool {
        let me = sched.node_id().unwrap_or(NodeId(0));
        let mut events = Vec::new();
        sched.swap_events(&mut events);
        let now = self.stamp(at.saturating_duration_since(self.epoch));
        let n = self.log_events(&mut events, sched, me, now);
        // Hand the (empty) buffer back so that the scheduler does not allocate a new one.
        sched.swap_events(&mut events);
        n >= FOLD_AT
    }

    fn log_events(
        &self,
        events: &mut Vec<TaskEvent>,
        sched: &Scheduler,
        me: NodeId,
        now: u64,
    ) -> usize {
        let mut log = self.log.lock();
        let log = &mut *log;
        for e in events.iter() {
            if let TaskEvent::Actor { actor } = e {
                log.actors.push((*actor, sched.actor_record(*actor)));
            }
        }
        log.runs.push((events.len(), me, now));
        log.events.append(events);
        log.events.len()
    }

    /// Gives back the room of the ring and the side tables once a burst of tasks has gone
    /// (the ring holds every task until it ends, a million after a million were queued, and a
    /// `VecDeque` keeps that room after they end and leave). Off the task path: the node's
    /// periodic tick. Says whether anything shrank.
    pub(crate) fn shrink(&self) -> bool {
        use volley_sched::shrink::Shrink;
        let mut g = self.inner.lock();
        let inner = &mut *g;
        let mut shrank = inner.ring.shrink_if_sparse();
        shrank |= inner.early.shrink_if_sparse();
        shrank |= inner.early_ended.shrink_if_sparse();
        shrank |= inner.remote.shrink_if_sparse();
        shrank |= inner.remote_ended.shrink_if_sparse();
        shrank |= inner.dirty_tasks.shrink_if_sparse();
        shrank |= inner.hist_tasks.shrink_if_sparse();
        if let Some(index) = &mut inner.index {
            shrank |= index.shrink_if_sparse();
        }
        shrank
    }

    /// Folds the logged events into the rows.
    pub(crate) fn flush(&self) {
        let mut g = self.inner.lock();
        self.flush_locked(&mut g);
    }

    fn flush_locked(&self, inner: &mut Inner) {
        let since = self.epoch.elapsed().as_millis() as u64;
        self.wall_at_epoch.fetch_max(now_ms().saturating_sub(since), Ordering::Relaxed);
        {
            let mut log = self.log.lock();
            if log.runs.is_empty() {
                return;
            }
            std::mem::swap(&mut *log, &mut inner.spare);
        }
        let mut log = std::mem::take(&mut inner.spare);
        let mut events = log.events.drain(..);
        let mut actors = log.actors.drain(..);
        for (n, me, now) in log.runs.drain(..) {
            self.fold(inner, events.by_ref().take(n), &mut actors, me, now);
        }
        drop((events, actors));
        inner.spare = log;
        inner.evict(self.max_finished);
    }

    fn fold(
        &self,
        inner: &mut Inner,
        events: impl Iterator<Item = TaskEvent>,
        actors: &mut impl Iterator<Item = (ActorId, Option<ActorRecord>)>,
        me: NodeId,
        now: u64,
    ) {
        let marks = self.marks();
        let member = marks.member;
        for ev in events {
            match ev {
                TaskEvent::Submitted { seq, spec, holder, parent } => {
                    let name = inner.names.intern(&spec.name);
                    // The driver's node, as its runtime environment names it (a nested task
                    // inherits it), else as the submission suggests.
                    let job = inner.env_job(&spec).or_else(|| match holder {
                        Holder::Local => Some(me),
                        Holder::Peer(p) => Some(p),
                        Holder::Worker(_) => inner.parent_job(parent),
                    });
                    let actor = inner.names.intern_actor(match &spec.actor {
                        ActorPart::Call(call) => Some(call.actor),
                        _ => None,
                    });
                    let state = if spec.deps.is_empty() {
                        TaskStateCode::Queued
                    } else {
                        TaskStateCode::WaitingArgs
                    };
                    let row = Row {
                        name,
                        state,
                        job,
                        actor,
                        node: Some(me),
                        pid: 0,
                        attempt: 0,
                        submitted_ms: now,
                        started_ms: 0,
                        ended_ms: 0,
                        error: None,
                        dirty: false,
                        hdirty: false,
                        src: me,
                    };
                    inner.insert(seq, spec.task_id, row, marks);
                }
                TaskEvent::Queued { seq, attempt } => {
                    inner.update(Loc::Seq(seq), marks, |r| {
                        r.state = TaskStateCode::Queued;
                        r.attempt = attempt;
                        r.node = Some(me);
                        r.pid = 0;
                    });
                }
                TaskEvent::Started { seq, pid, attempt } => {
                    inner.update(Loc::Seq(seq), marks, |r| {
                        r.state = TaskStateCode::Running;
                        r.node = Some(me);
                        r.pid = pid;
                        r.attempt = attempt;
                        r.started_ms = now;
                    });
                }
                TaskEvent::Forwarded { seq, peer } => {
                    inner.update(Loc::Seq(seq), marks, |r| {
                        r.state = TaskStateCode::Queued;
                        r.node = Some(peer);
                    });
                }
                TaskEvent::Finished { seq } => {
                    inner.end(seq, marks, |r| {
                        r.state = TaskStateCode::Finished;
                        r.ended_ms = now;
                    });
                }
                TaskEvent::Returned { seq } => inner.vacate(seq),
                TaskEvent::Failed { seq, error } => {
                    let state = if error.kind == ErrorKind::Cancelled {
                        TaskStateCode::Cancelled
                    } else {
                        TaskStateCode::Failed
                    };
                    let err = TaskError {
                        kind: error.kind,
                        message: error.message.clone(),
                        traceback: error.traceback.clone(),
                    };
                    inner.end(seq, marks, |r| {
                        r.state = state;
                        r.ended_ms = now;
                        r.error = Some(Box::new(err));
                        if error.pid != 0 && r.pid == 0 {
                            r.pid = error.pid;
                        }
                    });
                }
                TaskEvent::Actor { actor } => {
                    let rec = actors.next().filter(|(a, _)| *a == actor).and_then(|(_, r)| r);
                    if let Some(rec) = rec {
                        let job = match rec.holder {
                            Holder::Local => Some(me),
                            Holder::Peer(p) => Some(p),
                            Holder::Worker(_) => None,
                        };
                        let old = inner.actors.get_mut(&actor);
                        if let Some(old) = old.filter(|o| o.hosted && !rec.hosted) {
                            // A route's word (or its creator's) on an actor another node hosts
                            // and reported: only its death, as `merge` takes it. (A route knows
                            // little of it: its row would hide the host's.)
                            if rec.state == "DEAD" && old.state != "DEAD" {
                                old.state = rec.state.to_string();
                                old.death_cause = rec.death;
                                if member {
                                    inner.dirty_actors.insert(actor);
                                }
                                if marks.history {
                                    inner.hist_actors.insert(actor);
                                }
                            }
                            continue;
                        }
                        let old = inner.actors.get(&actor);
                        let row = ActorRow {
                            actor,
                            class_name: rec.class_name,
                            name: rec.name.unwrap_or_default(),
                            namespace: rec.namespace,
                            state: rec.state.to_string(),
                            restarts: rec.restarts,
                            pid: rec.pid,
                            node: Some(rec.remote.unwrap_or(me)),
                            job: old.and_then(|o| o.job).or(job),
                            detached: rec.detached,
                            death_cause: rec.death,
                            hosted: rec.hosted,
                        };
                        inner.actors.insert(actor, row);
                        if member {
                            inner.dirty_actors.insert(actor);
                        }
                        if marks.history {
                            inner.hist_actors.insert(actor);
                        }
                    }
                }
            }
        }
        inner.evict(self.max_finished);
    }

    /// (The head) folds a member's batch in. A task seen by two nodes (the driver that sent it
    /// and the node that ran it) keeps the furthest state, and where it ran from the node that
    /// ran it; an actor keeps its host's word over a route's.
    pub(crate) fn merge(&self, rows: StateRows, from: NodeId) {
        let marks = Marks { member: false, history: self.history.load(Ordering::Acquire) };
        let mut g = self.inner.lock();
        self.flush_locked(&mut g);
        let inner = &mut *g;
        inner.ensure_index();
        for t in rows.tasks {
            let name = inner.names.intern(&t.name);
            let incoming = Row {
                name,
                state: t.state,
                job: t.job,
                actor: inner.names.intern_actor(t.actor),
                node: t.node,
                pid: t.pid.unwrap_or(0),
                attempt: t.attempt,
                submitted_ms: t.submitted_ms.unwrap_or(0),
                started_ms: t.started_ms.unwrap_or(0),
                ended_ms: t.ended_ms.unwrap_or(0),
                error: t.error.map(Box::new),
                dirty: false,
                hdirty: false,
                src: from,
            };
            inner.merge_in(t.task, incoming, marks);
        }
        for a in rows.actors {
            if marks.history {
                inner.hist_actors.insert(a.actor);
            }
            match inner.actors.get_mut(&a.actor) {
                Some(old) if old.hosted && !a.hosted => {
                    // A route's report: only what the host does not say.
                    old.job = old.job.or(a.job);
                    if a.state == "DEAD" && old.state != "DEAD" {
                        old.state = a.state;
                        old.death_cause = a.death_cause;
                    }
                }
                Some(old) => {
                    let job = old.job.or(a.job);
                    let restarts = old.restarts.max(a.restarts);
                    *old = ActorRow { job, restarts, ..a };
                }
                None => {
                    inner.actors.insert(a.actor, a);
                }
            }
        }
        inner.evict(self.max_finished);
    }

    fn marks(&self) -> Marks {
        Marks {
            member: self.member.load(Ordering::Acquire),
            history: self.history.load(Ordering::Acquire),
        }
    }

    /// (The history writer) the rows changed since it last asked, rendered with detail.
    pub(crate) fn take_history(&self) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
        let mut g = self.inner.lock();
        self.flush_locked(&mut g);
        let inner = &mut *g;
        let locs = std::mem::take(&mut inner.hist_tasks);
        let mut tasks = Vec::with_capacity(locs.len());
        let names = std::mem::take(&mut inner.names);
        for loc in locs {
            if let Some((id, r)) = inner.row_mut(loc) {
                r.hdirty = false;
                tasks.push(task_json(id, r, &names, &HashMap::new(), true));
            }
        }
        inner.names = names;
        let actors = std::mem::take(&mut inner.hist_actors)
            .into_iter()
            .filter_map(|id| inner.actors.get(&id).map(actor_json))
            .collect();
        (tasks, actors)
    }

    /// (A member) the rows changed since the last batch, at most [`BATCH_ROWS`] of each kind.
    pub(crate) fn take_batch(&self) -> StateRows {
        let mut g = self.inner.lock();
        self.flush_locked(&mut g);
        let inner = &mut *g;
        let mut out = StateRows::default();
        let n = inner.dirty_tasks.len().min(BATCH_ROWS);
        let locs: Vec<Loc> = inner.dirty_tasks.drain(..n).collect();
        let names = std::mem::take(&mut inner.names);
        for loc in locs {
            if let Some((id, r)) = inner.row_mut(loc) {
                if r.dirty {
                    r.dirty = false;
                    out.tasks.push(to_wire(id, r, &names));
                }
            }
        }
        inner.names = names;
        let ids: Vec<ActorId> = inner.dirty_actors.iter().take(BATCH_ROWS).copied().collect();
        for id in ids {
            inner.dirty_actors.remove(&id);
            if let Some(a) = inner.actors.get(&id) {
                out.actors.push(a.clone());
            }
        }
        out
    }

    /// Answers a query of tasks or actors; other kinds are the caller's (see `Node::state_query`).
    pub fn query(&self, q: &StateQuery) -> Result<StateAnswer, String> {
        match q.kind.as_str() {
            "tasks" => self.query_tasks(q),
            "actors" => {
                let jobs = self.job_names.lock().clone();
                let mut g = self.inner.lock();
                self.flush_locked(&mut g);
                query::actor_answer(q, g.actors.values(), &|j| Tables::job_name(&jobs, j))
            }
            other => Err(format!("the task tables do not hold {other}")),
        }
    }

    /// Rows of driver node `node`'s job show `job_id` as `name` (a submitted job's id).
    pub(crate) fn name_job(&self, node: NodeId, name: String) {
        self.job_names.lock().insert(node, name);
    }

    /// How `node`'s job is named in rows.
    fn job_name(names: &HashMap<NodeId, String>, node: NodeId) -> String {
        names.get(&node).cloned().unwrap_or_else(|| job_str(node))
    }

    fn query_tasks(&self, q: &StateQuery) -> Result<StateAnswer, String> {
        let jobs = self.job_names.lock().clone();
        let preds = q
            .filters
            .iter()
            .map(|f| {
                // A job named by its submission id: the driver node it ran as.
                let node = (f.key == "job_id")
                    .then(|| jobs.iter().find(|(_, n)| **n == f.value.trim()).map(|(k, _)| k))
                    .flatten();
                match node {
                    Some(n) => query::TaskPred::parse(&f.key, f.op, &n.0.to_string()),
                    None => query::TaskPred::parse(&f.key, f.op, &f.value),
                }
            })
            .collect::<Result<Vec<_>, String>>()?;
        let mut g = self.inner.lock();
        self.flush_locked(&mut g);
        let names = &g.names;
        let mut hits: Vec<(&TaskId, &Row)> =
            g.rows().filter(|(id, r)| preds.iter().all(|p| p.matches(id, r, names))).collect();
        let total = hits.len();
        let limit = q.limit.filter(|l| *l > 0).map_or(usize::MAX, |l| l as usize);
        // Newest first; only the rows shown are sorted.
        let newest = |a: &(&TaskId, &Row), b: &(&TaskId, &Row)| {
            (b.1.submitted_ms, b.0).cmp(&(a.1.submitted_ms, a.0))
        };
        if limit < hits.len() {
            hits.select_nth_unstable_by(limit, newest);
            hits.truncate(limit);
        }
        hits.sort_by(newest);
        let rows: Vec<serde_json::Value> =
            hits.iter().map(|(id, r)| task_json(**id, r, names, &jobs, q.detail)).collect();
        let rows = serde_json::to_string(&rows).map_err(|e| e.to_string())?;
        Ok(StateAnswer {
            kind: q.kind.clone(),
            rows,
            total: total as u64,
            truncated: total > limit,
            dropped: g.dropped,
            missing: Vec::new(),
        })
    }

    /// The Prometheus text of the tasks that ended here (the cluster's, on the head):
    /// counts by final state and histograms of run time and scheduling latency.
    pub fn metrics_text(&self) -> String {
        let mut g = self.inner.lock();
        self.flush_locked(&mut g);
        g.metrics.render()
    }

    /// How many tasks the table holds, and how many finished ones it dropped.
    pub fn counts(&self) -> (usize, u64) {
        let mut g = self.inner.lock();
        self.flush_locked(&mut g);
        (g.rows().count(), g.dropped)
    }

    /// (Tests and benchmarks) fills the table with `n` finished tasks named `f0`..`f{names-1}`,
    /// one in ten failed.
    #[doc(hidden)]
    pub fn fill_finished(&self, n: usize, names: usize) {
        let mut g = self.inner.lock();
        let inner = &mut *g;
        let ids: Vec<u32> =
            (0..names.max(1)).map(|i| inner.names.intern(&format!("f{i}"))).collect();
        let start = now_ms();
        inner.ring.reserve(n);
        for i in 0..n {
            let failed = i % 10 == 0;
            let id = TaskId(((0xfeed_u128) << 64) | i as u128);
            inner.ring.push_back(Slot {
                id,
                row: Row {
                    name: ids[i % ids.len()],
                    state: if failed { TaskStateCode::Failed } else { TaskStateCode::Finished },
                    job: Some(NodeId(1)),
                    actor: NO_ACTOR,
                    node: Some(NodeId((i % 3) as u32 + 1)),
                    pid: 1000 + (i % 16) as u32,
                    attempt: 0,
                    submitted_ms: start + i as u64,
                    started_ms: start + i as u64,
                    ended_ms: start + i as u64 + 1,
                    error: failed.then(|| {
                        Box::new(TaskError {
                            kind: ErrorKind::TaskException,
                            message: "ValueError: boom".into(),
                            traceback: String::new(),
                        })
                    }),
                    dirty: false,
                    hdirty: false,
                    src: NodeId(1),
                },
            });
            inner.finished += 1;
            if let Some(ix) = inner.index.as_mut() {
                ix.insert(id, inner.base + inner.ring.len() as u64 - 1);
            }
        }
    }
}

impl Inner {
    /// Every row, wherever it is kept (the ring first, in submission order).
    fn rows(&self) -> impl Iterator<Item = (&TaskId, &Row)> {
        self.ring
            .iter()
            .filter(|s| s.row.name != VACANT)
            .map(|s| (&s.id, &s.row))
            .chain(self.early.values().map(|s| (&s.id, &s.row)))
            .chain(self.remote.iter())
    }

    /// The slot of task number `seq`, if this node still keeps its row.
    fn slot_mut(&mut self, seq: u64) -> Option<&mut Slot> {
        let slot = match seq.checked_sub(self.base) {
            Some(i) if (i as usize) < self.ring.len() => self.ring.get_mut(i as usize),
            _ => self.early.get_mut(&seq),
        };
        slot.filter(|s| s.row.name != VACANT)
    }

    /// The row at `loc`, with its task's id.
    fn row_mut(&mut self, loc: Loc) -> Option<(TaskId, &mut Row)> {
        match loc {
            Loc::Seq(seq) => self.slot_mut(seq).map(|s| (s.id, &mut s.row)),
            Loc::Id(id) => self.remote.get_mut(&id).map(|r| (id, r)),
        }
    }

    /// The job of what a worker was running when it submitted a task (a nested task's job).
    fn parent_job(&mut self, parent: Parent) -> Option<NodeId> {
        match parent {
            Parent::None => None,
            Parent::Task(seq) => self.slot_mut(seq).and_then(|s| s.row.job),
            Parent::Actor(a) => self.actors.get(&a).and_then(|a| a.job),
        }
    }

    /// The job a task's runtime environment names (`job_node`: the number of its driver's
    /// node, which `volley.init` writes there). The description is the same for all of a
    /// driver's tasks, so the last one read is kept: a comparison per task, no parse.
    fn env_job(&mut self, spec: &volley_proto::TaskSpec) -> Option<NodeId> {
        let json = &spec.options.runtime_env.as_ref()?.json;
        if let Some((last, job)) = &self.env_job {
            if last == json {
                return *job;
            }
        }
        let job = serde_json::from_str::<serde_json::Value>(json)
            .ok()
            .and_then(|v| v.get("job_node")?.as_u64())
            .and_then(|n| u32::try_from(n).ok())
            .map(NodeId);
        self.env_job = Some((json.clone(), job));
        job
    }

    /// Makes the index by task id of the rows this node's scheduler gave numbers (the first
    /// member's batch on a head needs it; see `index`).
    fn ensure_index(&mut self) {
        if self.index.is_some() {
            return;
        }
        let mut ix = IdMap::default();
        for (i, s) in self.ring.iter().enumerate() {
            if s.row.name != VACANT {
                ix.insert(s.id, self.base + i as u64);
            }
        }
        for (seq, s) in &self.early {
            ix.insert(s.id, *seq);
        }
        self.index = Some(ix);
    }

    /// Task `seq`'s submission: its row (written again if the number is known: the task was
    /// submitted again while the scheduler still had it).
    fn insert(&mut self, seq: u64, task: TaskId, mut row: Row, marks: Marks) {
        if let Some(ix) = self.index.as_mut() {
            ix.insert(task, seq);
            // A member's batch told of it first: that row joins this one.
            if let Some(old) = self.remote.remove(&task) {
                if old.state.is_terminal() {
                    self.finished -= 1;
                }
                merge_row(&mut row, old);
            }
        }
        let terminal = row.state.is_terminal();
        let slot = Slot { id: task, row };
        let old = match seq.checked_sub(self.base) {
            Some(i) if (i as usize) < self.ring.len() => {
                Some(std::mem::replace(&mut self.ring[i as usize], slot))
            }
            Some(i) => {
                if self.ring.is_empty() {
                    self.base = seq;
                } else {
                    // Numbers no submission was logged for (none expected): empty slots.
                    let gap = (i as usize) - self.ring.len();
                    let vacant = Slot { id: TaskId(0), row: vacant_row() };
                    self.ring.extend(std::iter::repeat_n(vacant, gap));
                }
                self.ring.push_back(slot);
                None
            }
            None => self.early.insert(seq, slot),
        };
        if old.is_some_and(|o| o.row.name != VACANT && o.row.state.is_terminal()) {
            self.finished -= 1;
        }
        if terminal {
            self.finished += 1;
        }
        self.mark_at(Loc::Seq(seq), marks);
    }

    /// Puts the row at `loc` on the change lists `marks` names (once until they are taken).
    fn mark_at(&mut self, loc: Loc, marks: Marks) {
        let Some((_, r)) = self.row_mut(loc) else {
            return;
        };
        let member = marks.member && !r.dirty;
        let history = marks.history && !r.hdirty;
        r.dirty |= member;
        r.hdirty |= history;
        if member {
            self.dirty_tasks.push(loc);
        }
        if history {
            self.hist_tasks.push(loc);
        }
    }

    /// Updates a known task's row (an event for a task whose row is gone, or that was never
    /// noted, is ignored); whether it was known.
    fn update(&mut self, loc: Loc, marks: Marks, f: impl FnOnce(&mut Row)) -> bool {
        let Some((_, r)) = self.row_mut(loc) else {
            return false;
        };
        f(r);
        self.mark_at(loc, marks);
        true
    }

    /// Task `seq` went back to the node that sent it before it ran here: its row goes (the
    /// sender's row, and the row of the node that runs it, tell of it from then on; if it
    /// comes back here, it is a new submission with a new number).
    fn vacate(&mut self, seq: u64) {
        let in_ring = seq.checked_sub(self.base).is_some_and(|i| (i as usize) < self.ring.len());
        let Some(s) = self.slot_mut(seq) else {
            return;
        };
        let (id, terminal) = (s.id, s.row.state.is_terminal());
        if in_ring {
            s.row = vacant_row();
        } else {
            self.early.remove(&seq);
        }
        if terminal {
            self.finished -= 1;
        }
        if let Some(ix) = self.index.as_mut() {
            if ix.get(&id) == Some(&seq) {
                ix.remove(&id);
            }
        }
    }

    /// Like [`Inner::update`] for the event that ends task `seq`: its row joins the finished
    /// (counted by the bound) and the histograms.
    fn end(&mut self, seq: u64, marks: Marks, f: impl FnOnce(&mut Row)) {
        let in_ring = seq.checked_sub(self.base).is_some_and(|i| (i as usize) < self.ring.len());
        let Some(s) = self.slot_mut(seq) else {
            return;
        };
        let r = &mut s.row;
        let was = r.state.is_terminal();
        f(r);
        if !was && r.state.is_terminal() {
            let (st, s, b, e) = (r.state, r.submitted_ms, r.started_ms, r.ended_ms);
            self.metrics.ended(st, s, b, e);
            self.finished += 1;
            if !in_ring {
                self.early_ended.push_back(seq);
            }
        }
        self.mark_at(Loc::Seq(seq), marks);
    }

    /// (The head) a member's row of `task`: merged into the row this node keeps of it, or
    /// kept as it comes.
    fn merge_in(&mut self, task: TaskId, incoming: Row, marks: Marks) {
        let seq = self.index.as_ref().and_then(|ix| ix.get(&task)).copied();
        let loc = match seq {
            Some(seq) => Loc::Seq(seq),
            None => Loc::Id(task),
        };
        let in_ring = seq
            .and_then(|s| s.checked_sub(self.base))
            .is_some_and(|i| (i as usize) < self.ring.len());
        match self.row_mut(loc) {
            None => {
                let terminal = incoming.state.is_terminal();
                if terminal {
                    self.metrics.ended(
                        incoming.state,
                        incoming.submitted_ms,
                        incoming.started_ms,
                        incoming.ended_ms,
                    );
                }
                self.remote.insert(task, incoming);
                if terminal {
                    self.finished += 1;
                    self.remote_ended.push_back(task);
                }
                self.mark_at(Loc::Id(task), marks);
            }
            Some((_, r)) => {
                let was = r.state.is_terminal();
                merge_row(r, incoming);
                if !was && r.state.is_terminal() {
                    let (st, s, b, e) = (r.state, r.submitted_ms, r.started_ms, r.ended_ms);
                    self.metrics.ended(st, s, b, e);
                    self.finished += 1;
                    match (loc, in_ring) {
                        (Loc::Id(id), _) => self.remote_ended.push_back(id),
                        (Loc::Seq(seq), false) => self.early_ended.push_back(seq),
                        (Loc::Seq(_), true) => {}
                    }
                }
                self.mark_at(loc, marks);
            }
        }
    }

    /// Drops the oldest finished tasks beyond `max`: those that ended after leaving the ring,
    /// then the ring's front or the members' rows, whichever was submitted first. A task
    /// still waiting or running at the ring's front moves aside (to `early`) and is never
    /// dropped. A row not yet sent to the head (or to the history) waits for its batch, unless
    /// the head has been out of reach for so long that twice `max` finished tasks piled up:
    /// then it goes too, so a member's memory stays bounded whatever happens to its head.
    fn evict(&mut self, max: usize) {
        let pending = |r: &Row| r.dirty || r.hdirty;
        while self.finished > max {
            let hard = self.finished >= max.saturating_mul(2);
            if let Some(&seq) = self.early_ended.front() {
                match self.early.get(&seq) {
                    Some(s) if s.row.state.is_terminal() && pending(&s.row) && !hard => break,
                    Some(s) if s.row.state.is_terminal() => {
                        let id = s.id;
                        self.early.remove(&seq);
                        self.forget(id, Some(seq));
                    }
                    _ => {}
                }
                self.early_ended.pop_front();
                continue;
            }
            let remote_front = loop {
                match self.remote_ended.front() {
                    None => break None,
                    Some(id) => match self.remote.get(id) {
                        Some(r) if r.state.is_terminal() => break Some((*id, r.submitted_ms)),
                        _ => {
                            self.remote_ended.pop_front();
                        }
                    },
                }
            };
            let ring_first = match (self.ring.front(), remote_front) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some(s), Some((_, ms))) => s.row.submitted_ms <= ms,
            };
            if ring_first {
                let Some(front) = self.ring.front() else { break };
                if front.row.name != VACANT
                    && front.row.state.is_terminal()
                    && pending(&front.row)
                    && !hard
                {
                    break;
                }
                let Some(s) = self.ring.pop_front() else { break };
                let seq = self.base;
                self.base += 1;
                if s.row.name == VACANT {
                    continue;
                }
                if s.row.state.is_terminal() {
                    self.forget(s.id, Some(seq));
                } else {
                    self.early.insert(seq, s);
                }
            } else if let Some((id, _)) = remote_front {
                let r = self.remote.get(&id);
                if r.is_some_and(&pending) && !hard {
                    break;
                }
                self.remote.remove(&id);
                self.remote_ended.pop_front();
                self.forget(id, None);
            }
        }
        // Places of rows that went before their batch: forget them too.
        if self.dirty_tasks.len() > max.saturating_mul(4).max(1024) {
            let mut v = std::mem::take(&mut self.dirty_tasks);
            v.retain(|l| self.row_mut(*l).is_some_and(|(_, r)| r.dirty));
            self.dirty_tasks = v;
        }
    }

    /// A finished row was dropped (`seq`: one of this node's numbers).
    fn forget(&mut self, id: TaskId, seq: Option<u64>) {
        self.finished -= 1;
        self.dropped += 1;
        if let (Some(ix), Some(seq)) = (self.index.as_mut(), seq) {
            if ix.get(&id) == Some(&seq) {
                ix.remove(&id);
            }
        }
    }
}

/// The row of an empty slot (see [`Slot`]).
fn vacant_row() -> Row {
    Row {
        name: VACANT,
        state: TaskStateCode::Finished,
        job: None,
        actor: NO_ACTOR,
        node: None,
        pid: 0,
        attempt: 0,
        submitted_ms: 0,
        started_ms: 0,
        ended_ms: 0,
        error: None,
        dirty: false,
        hdirty: false,
        src: NodeId(0),
    }
}

fn merge_row(r: &mut Row, n: Row) {
    let from_runner = n.pid != 0 || n.started_ms != 0;
    let take_state = if r.state.is_terminal() {
        false
    } else {
        n.state.is_terminal() || n.src == r.src || n.state >= r.state
    };
    if take_state {
        r.state = n.state;
        r.src = n.src;
    }
    if from_runner {
        r.node = n.node;
        r.pid = n.pid;
        r.started_ms = n.started_ms;
    } else if r.node.is_none() {
        r.node = n.node;
    }
    r.job = r.job.or(n.job);
    if r.actor == NO_ACTOR {
        r.actor = n.actor;
    }
    r.attempt = r.attempt.max(n.attempt);
    if n.submitted_ms != 0 && (r.submitted_ms == 0 || n.submitted_ms < r.submitted_ms) {
        r.submitted_ms = n.submitted_ms;
    }
    if r.ended_ms == 0 {
        r.ended_ms = n.ended_ms;
    }
    match (&r.error, n.error) {
        (None, e) => r.error = e,
        // The running node's error has the traceback; a relayed one may not.
        (Some(old), Some(e)) if old.traceback.is_empty() && !e.traceback.is_empty() => {
            r.error = Some(e)
        }
        _ => {}
    }
}

fn opt(ms: u64) -> Option<u64> {
    (ms != 0).then_some(ms)
}

fn to_wire(id: TaskId, r: &Row, names: &Names) -> TaskRow {
    TaskRow {
        task: id,
        name: names.get(r.name).to_string(),
        state: r.state,
        job: r.job,
        actor: names.actor(r.actor),
        node: r.node,
        pid: (r.pid != 0).then_some(r.pid),
        attempt: r.attempt,
        submitted_ms: opt(r.submitted_ms),
        started_ms: opt(r.started_ms),
        ended_ms: opt(r.ended_ms),
        error: r.error.as_deref().cloned(),
    }
}

/// A task id as the state API writes it: 32 hex digits (the first 32 of its results'
/// `ObjectRef.hex()`).
pub(crate) fn task_hex(id: TaskId) -> String {
    format!("{:032x}", { id.0 })
}

/// An actor id as volley prints it (`ActorHandle`'s id: its object's hex).
pub(crate) fn actor_hex(id: ActorId) -> String {
    id.object().hex()
}

/// A job id: the number of the driver's node, as a string (`JobInfo::node`).
pub(crate) fn job_str(id: NodeId) -> String {
    id.0.to_string()
}

fn task_json(
    id: TaskId,
    r: &Row,
    names: &Names,
    jobs: &HashMap<NodeId, String>,
    detail: bool,
) -> serde_json::Value {
    let duration =
        (r.ended_ms != 0 && r.started_ms != 0).then(|| r.ended_ms.saturating_sub(r.started_ms));
    let waiting_for = match r.state {
        TaskStateCode::WaitingArgs => Some("its arguments (results of other tasks)"),
        TaskStateCode::Queued => Some("a worker with free CPU and resources"),
        _ => None,
    };
    let mut v = serde_json::json!({
        "task_id": task_hex(id),
        "name": names.get(r.name),
        "state": r.state.name(),
        "job_id": r.job.map(|j| Tables::job_name(jobs, j)),
        "actor_id": names.actor(r.actor).map(actor_hex),
        "node_id": r.node.map(|n| n.0),
        "worker_pid": (r.pid != 0).then_some(r.pid),
        "attempt": r.attempt,
        "submitted_ms": opt(r.submitted_ms),
        "started_ms": opt(r.started_ms),
        "ended_ms": opt(r.ended_ms),
        "duration_ms": duration,
        "waiting_for": waiting_for,
        "error_kind": r.error.as_ref().map(|e| e.kind.name()),
        "error_message": r.error.as_ref().map(|e| e.message.as_str()),
    });
    if detail {
        v["traceback"] = r.error.as_ref().map(|e| e.traceback.as_str()).into();
    }
    v
}

fn actor_json(a: &ActorRow) -> serde_json::Value {
    serde_json::json!({
        "actor_id": actor_hex(a.actor),
        "class_name": a.class_name,
        "name": (!a.name.is_empty()).then_some(a.name.as_str()),
        "namespace": a.namespace,
        "state": a.state,
        "restarts": a.restarts,
        "pid": (a.pid != 0).then_some(a.pid),
        "node_id": a.node.map(|n| n.0),
        "job_id": a.job.map(job_str),
        "detached": a.detached,
        "death_cause": a.death_cause,
    })
}

/// Renders an answer as the JSON object of the HTTP API and the CLI's `--json`: `{"kind",
/// "rows", "total", "truncated", "dropped"}`.
pub fn answer_json(a: &StateAnswer) -> String {
    format!(
        "{{\"kind\":{},\"rows\":{},\"total\":{},\"truncated\":{},\"dropped\":{},\"missing\":{}}}",
        serde_json::Value::from(a.kind.as_str()),
        if a.rows.is_empty() { "[]" } else { &a.rows },
        a.total,
        a.truncated,
        a.dropped,
        serde_json::Value::from(a.missing.clone())
    )
}

/// Puts the scheduler's own words (`explain`) in `waiting_for` of the rows of tasks that wait
/// here, for detailed answers (a task waiting on another node keeps the table's general line).
pub(crate) fn explain_waits(a: &mut StateAnswer, explain: impl Fn(ObjectId) -> Option<String>) {
    let Ok(mut rows) = serde_json::from_str::<Vec<serde_json::Value>>(&a.rows) else {
        return;
    };
    let mut changed = false;
    for r in &mut rows {
        let waits = matches!(r["state"].as_str(), Some("WAITING_ARGS" | "QUEUED"));
        let id = r["task_id"].as_str().and_then(|h| u128::from_str_radix(h, 16).ok());
        if let (true, Some(id)) = (waits, id) {
            if let Some(line) = explain(ObjectId::for_return(TaskId(id), 1)) {
                r["waiting_for"] = line.into();
                changed = true;
            }
        }
    }
    if changed {
        if let Ok(text) = serde_json::to_string(&rows) {
            a.rows = text;
        }
    }
}

impl Tables {
    /// (Benchmarks only: `benchmarks/dashboard_scale.py`) puts `n` actor rows into the tables
    /// through the path a member's heartbeat batch takes ([`Tables::merge`]), as if node `from`
    /// hosted them: a 2-core machine cannot start 10,000 real actors, and the dashboard's
    /// figures at that scale need the rows, not the processes. One in four is `DEAD`, the rest
    /// `ALIVE`; classes `Bench0`..`Bench{classes-1}`, one in ten named.
    #[doc(hidden)]
    pub fn fill_actors_for_benchmark(&self, n: usize, classes: usize, from: NodeId) {
        let classes = classes.max(1);
        let actors = (0..n)
            .map(|i| {
                let dead = i % 4 == 0;
                ActorRow {
                    actor: ActorId(TaskId((0xbe7c_u128 << 64) | i as u128)),
                    class_name: format!("Bench{}", i % classes),
                    name: if i % 10 == 0 { format!("bench-{i}") } else { String::new() },
                    namespace: "bench".into(),
                    state: if dead { "DEAD" } else { "ALIVE" }.into(),
                    restarts: 0,
                    pid: 100_000 + i as u32,
                    node: Some(from),
                    job: Some(from),
                    detached: false,
                    death_cause: dead.then(|| "killed by the benchmark".to_string()),
                    hosted: true,
                }
            })
            .collect();
        self.merge(StateRows { tasks: Vec::new(), actors }, from);
    }
}

/// Asks the head at `addr` a state query from outside the cluster (`volley list --address`),
/// over an authenticated connection of its own. A bad query is `Refused` with the head's
/// reason; an unreachable head, the connection's error.
pub fn query_head(
    addr: &str,
    token: &[u8],
    tls: Option<&crate::TlsConfig>,
    q: StateQuery,
) -> Result<StateAnswer, crate::RuntimeError> {
    kinds::check_kind(&q.kind).map_err(crate::RuntimeError::Refused)?;
    match crate::cluster::ask_head_at(addr, token, tls, volley_proto::HeadRequest::State(q))? {
        volley_proto::HeadAnswer::State(a) => Ok(a),
        volley_proto::HeadAnswer::Error(why) => Err(crate::RuntimeError::Refused(why)),
        other => Err(crate::RuntimeError::Refused(format!("unexpected answer: {other:?}"))),
    }
}

/// Parses a filter's operator as the CLI and the Python API write it.
pub fn parse_op(op: &str) -> Option<FilterOp> {
    FilterOp::parse(op)
}

#[cfg(test)]
mod tests;
