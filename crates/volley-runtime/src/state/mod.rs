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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use volley_proto::{
    ActorId, ActorPart, ActorRow, ErrorKind, FilterOp, NodeId, ObjectId, StateAnswer, StateQuery,
    StateRows, TaskError, TaskId, TaskRow, TaskStateCode,
};
use volley_sched::{ActorRecord, Holder, Scheduler, TaskEvent};
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
    actor: Option<ActorId>,
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

/// A hasher for ids (random prefixes and counters already): a multiply per word instead of
/// SipHash, for the table's per-task inserts and lookups. Ids come from the cluster's own
/// authenticated nodes, so flooding one bucket is not a concern here.
#[derive(Default, Clone, Copy)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn write_u128(&mut self, v: u128) {
        self.write_u64(v as u64);
        self.write_u64((v >> 64) as u64);
    }
}

type IdMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<IdHasher>>;
type IdSet<K> = HashSet<K, std::hash::BuildHasherDefault<IdHasher>>;

#[derive(Default)]
struct Names {
    ids: HashMap<Arc<str>, u32>,
    names: Vec<Arc<str>>,
    /// The last name interned: a burst of one function's tasks skips the hash.
    last: Option<(Arc<str>, u32)>,
}

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
}

#[derive(Default)]
struct Inner {
    names: Names,
    tasks: IdMap<TaskId, Row>,
    /// Finished tasks in the order they ended (the oldest is dropped first).
    finished: VecDeque<TaskId>,
    dropped: u64,
    actors: IdMap<ActorId, ActorRow>,
    dirty_tasks: Vec<TaskId>,
    dirty_actors: IdSet<ActorId>,
    hist_tasks: Vec<TaskId>,
    hist_actors: IdSet<ActorId>,
    /// The log being folded in (swapped with `Tables::log`, so neither allocates anew).
    spare: Log,
    /// Histograms of the tasks that ended (for `/metrics`).
    metrics: metrics::TaskMetrics,
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
        }
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
    pub(crate) fn record(&self, sched: &mut Scheduler) -> bool {
        let me = sched.node_id().unwrap_or(NodeId(0));
        let mut events = Vec::new();
        sched.swap_events(&mut events);
        let n = self.log_events(&mut events, sched, me, now_ms());
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

    /// Folds the logged events into the rows.
    pub(crate) fn flush(&self) {
        let mut g = self.inner.lock();
        self.flush_locked(&mut g);
    }

    fn flush_locked(&self, inner: &mut Inner) {
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
                TaskEvent::Submitted { spec, holder } => {
                    let name = inner.names.intern(&spec.name);
                    let job = match holder {
                        Holder::Local => Some(me),
                        Holder::Peer(p) => Some(p),
                        Holder::Worker(_) => None,
                    };
                    let actor = match &spec.actor {
                        ActorPart::Call { actor, .. } => Some(*actor),
                        _ => None,
                    };
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
                    inner.insert(spec.task_id, row, marks);
                }
                TaskEvent::Queued { task, attempt } => {
                    inner.update(task, marks, |r| {
                        r.state = TaskStateCode::Queued;
                        r.attempt = attempt;
                        r.node = Some(me);
                        r.pid = 0;
                    });
                }
                TaskEvent::Started { task, pid, attempt } => {
                    inner.update(task, marks, |r| {
                        r.state = TaskStateCode::Running;
                        r.node = Some(me);
                        r.pid = pid;
                        r.attempt = attempt;
                        r.started_ms = now;
                    });
                }
                TaskEvent::Forwarded { task, peer } => {
                    inner.update(task, marks, |r| {
                        r.state = TaskStateCode::Queued;
                        r.node = Some(peer);
                    });
                }
                TaskEvent::Finished { task } => {
                    inner.end(task, marks, |r| {
                        r.state = TaskStateCode::Finished;
                        r.ended_ms = now;
                    });
                }
                TaskEvent::Failed { task, error } => {
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
                    inner.end(task, marks, |r| {
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
        for t in rows.tasks {
            let name = inner.names.intern(&t.name);
            let incoming = Row {
                name,
                state: t.state,
                job: t.job,
                actor: t.actor,
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
            match inner.tasks.get_mut(&t.task) {
                None => {
                    let terminal = incoming.state.is_terminal();
                    inner.tasks.insert(t.task, incoming);
                    if terminal {
                        inner.ended(t.task);
                    }
                }
                Some(r) => {
                    let was_terminal = r.state.is_terminal();
                    merge_row(r, incoming);
                    if !was_terminal && r.state.is_terminal() {
                        inner.ended(t.task);
                    }
                }
            }
            inner.update(t.task, marks, |_| ());
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
        let ids = std::mem::take(&mut inner.hist_tasks);
        let mut tasks = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(r) = inner.tasks.get_mut(&id) {
                r.hdirty = false;
                tasks.push(task_json(id, r, &inner.names, &HashMap::new(), true));
            }
        }
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
        let ids: Vec<TaskId> = inner.dirty_tasks.drain(..n).collect();
        for id in ids {
            if let Some(r) = inner.tasks.get_mut(&id) {
                if !r.dirty {
                    continue;
                }
                r.dirty = false;
                out.tasks.push(to_wire(id, r, &inner.names));
            }
        }
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
        let mut hits: Vec<(&TaskId, &Row)> = g
            .tasks
            .iter()
            .filter(|(id, r)| preds.iter().all(|p| p.matches(id, r, names)))
            .collect();
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
        (g.tasks.len(), g.dropped)
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
        inner.tasks.reserve(n);
        for i in 0..n {
            let failed = i % 10 == 0;
            let id = TaskId(((0xfeed_u128) << 64) | i as u128);
            inner.tasks.insert(
                id,
                Row {
                    name: ids[i % ids.len()],
                    state: if failed { TaskStateCode::Failed } else { TaskStateCode::Finished },
                    job: Some(NodeId(1)),
                    actor: None,
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
            );
            inner.finished.push_back(id);
        }
    }
}

impl Inner {
    /// Task `task`, whose row is now in a final state, ended: it joins the finished (the
    /// oldest are dropped first) and the histograms.
    fn ended(&mut self, task: TaskId) {
        if let Some(r) = self.tasks.get(&task) {
            self.metrics.ended(r.state, r.submitted_ms, r.started_ms, r.ended_ms);
        }
        self.finished.push_back(task);
    }

    /// Puts a new row in for `task` (replacing any), marked changed: one probe of the table,
    /// whose misses are most of what recording costs.
    fn insert(&mut self, task: TaskId, row: Row, marks: Marks) {
        let r = match self.tasks.entry(task) {
            std::collections::hash_map::Entry::Occupied(mut o) => {
                o.insert(row);
                o.into_mut()
            }
            std::collections::hash_map::Entry::Vacant(v) => v.insert(row),
        };
        Inner::mark(r, task, marks, &mut self.dirty_tasks, &mut self.hist_tasks);
    }

    /// Like [`Inner::update`] for an event that ends the task ([`Inner::ended`]), with one
    /// lookup instead of two.
    fn end(&mut self, task: TaskId, marks: Marks, f: impl FnOnce(&mut Row)) {
        let Some(r) = self.tasks.get_mut(&task) else {
            return;
        };
        f(r);
        Inner::mark(r, task, marks, &mut self.dirty_tasks, &mut self.hist_tasks);
        self.metrics.ended(r.state, r.submitted_ms, r.started_ms, r.ended_ms);
        self.finished.push_back(task);
    }

    /// Puts a changed row on the change lists `marks` names (once until they are taken).
    fn mark(
        r: &mut Row,
        task: TaskId,
        marks: Marks,
        dirty: &mut Vec<TaskId>,
        hist: &mut Vec<TaskId>,
    ) {
        if marks.member && !r.dirty {
            r.dirty = true;
            dirty.push(task);
        }
        if marks.history && !r.hdirty {
            r.hdirty = true;
            hist.push(task);
        }
    }

    /// Updates a known task's row (an event for a task this node never saw submitted, e.g. an
    /// actor's creation, is ignored); whether it was known.
    fn update(&mut self, task: TaskId, marks: Marks, f: impl FnOnce(&mut Row)) -> bool {
        let Some(r) = self.tasks.get_mut(&task) else {
            return false;
        };
        f(r);
        if marks.member && !r.dirty {
            r.dirty = true;
            self.dirty_tasks.push(task);
        }
        if marks.history && !r.hdirty {
            r.hdirty = true;
            self.hist_tasks.push(task);
        }
        true
    }

    /// Drops the oldest finished tasks beyond `max`.
    /// Drops the oldest finished tasks beyond `max`. One not yet sent to the head (or to the
    /// history) waits for its batch, unless the head has been out of reach for so long that
    /// twice `max` finished tasks piled up: then it goes too, so a member's memory stays
    /// bounded whatever happens to its head.
    fn evict(&mut self, max: usize) {
        while self.finished.len() > max {
            let Some(id) = self.finished.pop_front() else { break };
            let pending = |r: &Row| r.dirty || r.hdirty;
            let hard = self.finished.len() >= max.saturating_mul(2);
            match self.tasks.get(&id) {
                Some(r) if pending(r) && !hard => {
                    self.finished.push_back(id);
                    break;
                }
                Some(r) if r.state.is_terminal() => {
                    self.tasks.remove(&id);
                    self.dropped += 1;
                }
                _ => {}
            }
        }
        // Ids of rows that went before their batch: forget them too.
        if self.dirty_tasks.len() > max.saturating_mul(4).max(1024) {
            let tasks = &self.tasks;
            self.dirty_tasks.retain(|id| tasks.get(id).is_some_and(|r| r.dirty));
        }
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
    r.actor = r.actor.or(n.actor);
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
        actor: r.actor,
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
    format!("{:032x}", id.0)
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
        "actor_id": r.actor.map(actor_hex),
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
        "{{\"kind\":{},\"rows\":{},\"total\":{},\"truncated\":{},\"dropped\":{}}}",
        serde_json::Value::from(a.kind.as_str()),
        if a.rows.is_empty() { "[]" } else { &a.rows },
        a.total,
        a.truncated,
        a.dropped
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
