//! The scheduler's state and its event handlers.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use volley_proto::{
    ActorId, ActorPart, ErrorKind, ErrorPayload, FunctionId, NodeId, NodeToWorker, ObjectData,
    ObjectId, Strategy, TaskId, TaskResult, TaskSpec, WorkerId,
};

mod actors;
mod explain;
mod peers;
mod placement;
mod remote_actors;
mod streams;

use actors::ActorEntry;
pub use actors::ActorError;
pub use peers::PeerView;
use peers::{FromPeer, PeerEntry};
pub use remote_actors::ActorReport;
use streams::StreamState;
pub use streams::StreamStep;

/// Tuning knobs of one node's scheduler.
#[derive(Debug, Clone)]
pub struct Config {
    /// CPUs of this node, in thousandths.
    pub cpu_total_milli: u32,
    /// Tasks queued behind a running one on a worker, at most, when every CPU is busy.
    pub pipeline_depth: usize,
    /// Worker processes at most, blocked ones included.
    pub max_workers: usize,
    /// Extra workers (beyond one per CPU) idle this long are stopped.
    pub idle_worker_timeout_ms: u64,
    /// Workers that die before they connect, in a row, before queued tasks are failed.
    pub max_start_failures: u32,
    /// Resources other than CPUs (`"GPU"`, custom names), in thousandths.
    pub resources: HashMap<String, u64>,
    /// A task or actor stuck this long (an actor or placement group holds what it needs) gets a
    /// notice saying why, once per function or class (see `explain`); 0: never.
    pub wait_notice_ms: u64,
}

impl Config {
    pub fn with_cpus(cpus: f64) -> Self {
        Config {
            cpu_total_milli: (cpus * 1000.0).round() as u32,
            pipeline_depth: 8,
            max_workers: 1024,
            idle_worker_timeout_ms: 2000,
            max_start_failures: 5,
            resources: HashMap::new(),
            wait_notice_ms: 10_000,
        }
    }

    fn target_workers(&self) -> usize {
        (self.cpu_total_milli as usize).div_ceil(1000).max(1)
    }
}

pub type WaiterId = u64;

/// Who waits on a `get`/`wait`: a thread of this process, or a worker's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitOwner {
    Local,
    Worker { worker: WorkerId, req: u64 },
}

/// Who holds references: this process (the driver), or a worker process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Holder {
    Local,
    Worker(WorkerId),
    /// Another node of the cluster, for a task it sent here.
    Peer(NodeId),
}

/// How a worker process ended: in words for error messages, and whether it was killed by a
/// signal someone sent it. A worker killed before it connected did not fail to start: it is
/// replaced, and does not count toward `Config::max_start_failures`.
#[derive(Debug, Clone)]
pub struct WorkerExit {
    pub how: String,
    pub killed: bool,
}

impl WorkerExit {
    /// It exited, crashed, or could not be started.
    pub fn failed(how: impl Into<String>) -> Self {
        WorkerExit { how: how.into(), killed: false }
    }

    /// A signal sent from outside ended it (SIGKILL, SIGTERM, ...).
    pub fn killed(how: impl Into<String>) -> Self {
        WorkerExit { how: how.into(), killed: true }
    }
}

/// The state of an object as the scheduler sees it.
#[derive(Debug, Clone)]
pub enum ObjectState {
    Pending,
    Ready(Arc<ObjectData>),
    Failed(Arc<ErrorPayload>),
}

/// What the caller must do after an event.
#[derive(Debug)]
// `Send` carries small control messages, but its type can hold an `Execute`; boxing would cost an
// allocation per message for nothing.
#[allow(clippy::large_enum_variant)]
pub enum Action {
    /// Send a task to a worker (with the function's bytes the first time that worker needs it).
    Execute {
        worker: WorkerId,
        spec: Arc<TaskSpec>,
        function: Option<Arc<[u8]>>,
        deps: Vec<Arc<ObjectData>>,
        /// The GPUs (indices) the task may use: the worker sets `CUDA_VISIBLE_DEVICES` to them.
        gpus: Vec<u32>,
    },
    /// Send a small control message.
    Send { worker: WorkerId, msg: NodeToWorker },
    /// Answer a worker's `Get`.
    GetReply { worker: WorkerId, req: u64, values: Vec<Result<Arc<ObjectData>, Arc<ErrorPayload>>> },
    /// A local waiter is satisfied.
    WakeLocal { waiter: WaiterId },
    /// A locally watched object is ready.
    LocalReady { id: ObjectId },
    /// Start a worker process with this id.
    Spawn { worker: WorkerId },
    /// Kill this worker process at once (SIGKILL).
    Kill { worker: WorkerId },
    /// Something the user should see in the driver's log (an actor restarted, ...).
    Log(String),
    /// Send a task to another node, with the values it needs (see `peers`).
    Spill {
        peer: NodeId,
        spec: Arc<TaskSpec>,
        function: Option<Arc<[u8]>>,
        objects: Vec<(ObjectId, Arc<ObjectData>)>,
        /// Runtime-environment packages the peer has not had yet.
        packages: Vec<(String, Arc<[u8]>)>,
        /// Where the actors whose handles it carries live (see `remote_actors`).
        routes: Vec<(ActorId, NodeId, String)>,
        /// Refs inside its arguments that hold errors, with them.
        errors: Vec<(ObjectId, Arc<ErrorPayload>)>,
        /// Values it needs that the peer has a copy of already (see `PeerEntry::copies`).
        cached: Vec<ObjectId>,
        /// Large values it needs that the peer pulls, with a relay that may serve them too
        /// (see `peers`, "pulling large values").
        fetch: Vec<(ObjectId, Arc<ObjectData>, Option<NodeId>)>,
    },
    /// Pull a large value a task from `origin` needs into this node's store: from `relay`
    /// first if there is one, else (or if it cannot serve it) from `origin`. The runtime
    /// reports the outcome with `peer_object`. `value` is its layout, without bytes.
    Pull { origin: NodeId, id: ObjectId, value: Arc<ObjectData>, relay: Option<NodeId> },
    /// Send a value `peer` asked for (`peer_fetch`) in chunks, or why it cannot be; on the
    /// connection this node opened to it (`link`) or the one it opened here.
    PeerServe { peer: NodeId, id: ObjectId, value: Result<Arc<ObjectData>, String>, link: bool },
    /// Tell `peer` how the task it sent here ended.
    PeerDone {
        peer: NodeId,
        task: TaskId,
        result: Result<Vec<Arc<ObjectData>>, Arc<ErrorPayload>>,
        objects: Vec<(ObjectId, Arc<ObjectData>)>,
        /// Large results this node keeps a copy of for the peer (`PeerMsg::Done::kept`).
        kept: Vec<ObjectId>,
    },
    /// Ask `peer` to cancel a task this node sent it.
    PeerCancel { peer: NodeId, task: TaskId, force: bool },
    /// Tell the node that had an actor created here how it is (see `remote_actors`).
    PeerActorState {
        peer: NodeId,
        actor: ActorId,
        pid: u32,
        restarts: u32,
        death: Option<Arc<ErrorPayload>>,
        log: Option<String>,
    },
    /// Send `peer` an object a result it got earlier refers to, now that it is ready (or failed).
    PeerObject {
        peer: NodeId,
        id: ObjectId,
        result: Result<Arc<ObjectData>, Arc<ErrorPayload>>,
        objects: Vec<(ObjectId, Arc<ObjectData>)>,
    },
    /// Tell `peer` this node dropped its references to these (actors it hosts for us).
    PeerRelease { peer: NodeId, ids: Vec<ObjectId> },
    /// Forward `volley.kill` to the peer hosting the actor.
    PeerKill { peer: NodeId, actor: ActorId, no_restart: bool },
    /// Ask `peer` to reserve bundles of our placement group `pg` (see `placement`).
    PeerReserve { peer: NodeId, pg: String, bundles: Vec<(u32, Vec<(String, u64)>)> },
    /// Answer a peer's `PeerReserve`.
    PeerReserved { peer: NodeId, pg: String, bundles: Vec<u32>, ok: bool },
    /// Tell `peer` to release what it holds of our placement group `pg`.
    PeerPgRelease { peer: NodeId, pg: String, remove: bool },
    /// Ask `peer` to give back up to `max` of our tasks it has not started.
    PeerSteal { peer: NodeId, max: u32 },
    /// Give `peer` back tasks it sent that will not run here.
    PeerReturned { peer: NodeId, tasks: Vec<TaskId> },
    /// Tell `peer` a task it sent has started running here.
    PeerStarted { peer: NodeId, task: TaskId },
    /// Show `line` to the user of the node that sent the work here (`peer`): its driver prints
    /// it with its workers' output.
    PeerNotice { peer: NodeId, line: String },
}

struct ObjectEntry {
    state: ObjectState,
    refs: u32,
    waiters: Vec<WaiterId>,
    dependents: Vec<TaskId>,
    watchers: Vec<Holder>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TaskState {
    WaitingDeps(usize),
    Queued,
    Assigned(WorkerId),
    /// Sent to another node.
    Remote(NodeId),
}

struct TaskEntry {
    spec: Arc<TaskSpec>,
    state: TaskState,
    attempts: u32,
    /// `Some(force)` once cancelled.
    cancel: Option<bool>,
    /// Who submitted it (actor calls keep each caller's order).
    caller: Holder,
    /// When it last went into a ready queue (the clock of the last `tick`), for wait notices.
    queued_at: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WorkerState {
    Starting,
    Alive,
    Retiring,
}

struct WorkerEntry {
    state: WorkerState,
    pid: u32,
    /// Tasks sent to this worker, in the order it runs them; the head is running.
    queue: VecDeque<TaskId>,
    /// CPU held by the head task (counted in `cpu_used` unless the worker is blocked).
    cpu_held: u32,
    /// Nested blocking requests in progress; a blocked worker lends its CPU.
    blocked: u32,
    revoke_outstanding: bool,
    known_functions: HashSet<FunctionId>,
    /// References this process holds, released if it dies.
    held: HashMap<ObjectId, u32>,
    requests: HashMap<u64, WaiterId>,
    idle_since: u64,
    /// Resources other than CPU held by the head task.
    res_held: Vec<(String, u64)>,
    /// The GPUs (indices) among them.
    gpus: Vec<u32>,
    /// The actor this worker was started for; it never runs pool tasks.
    actor: Option<ActorId>,
}

impl WorkerEntry {
    fn is_idle(&self) -> bool {
        self.state == WorkerState::Alive
            && self.queue.is_empty()
            && self.blocked == 0
            && self.actor.is_none()
    }

    /// A pool worker that counts towards the one-per-CPU target.
    fn is_active_pool(&self) -> bool {
        self.state != WorkerState::Retiring && self.blocked == 0 && self.actor.is_none()
    }
}

struct Waiter {
    owner: WaitOwner,
    ids: Vec<ObjectId>,
    remaining: usize,
    fetch: bool,
    /// A streaming caller's wait for one item (see `streams`).
    stream: bool,
}

/// Counts for status displays and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub workers_alive: usize,
    pub workers_starting: usize,
    pub workers_blocked: usize,
    pub tasks_waiting: usize,
    pub tasks_queued: usize,
    pub tasks_assigned: usize,
    pub objects: usize,
    pub cpu_used_milli: u32,
    /// The CPUs this node schedules, in thousandths.
    pub cpu_total_milli: u32,
    pub actors: usize,
    /// Tasks sent to other nodes, still running there.
    pub tasks_remote: usize,
    /// Tasks sent to a worker behind the one it runs (also in `tasks_assigned`): they wait.
    pub tasks_pipelined: usize,
}

/// One node's scheduler. See the crate documentation.
pub struct Scheduler {
    cfg: Config,
    objects: HashMap<ObjectId, ObjectEntry>,
    tasks: HashMap<TaskId, TaskEntry>,
    ready: VecDeque<TaskId>,
    /// Runnable tasks that ask for resources other than CPU, or for no CPU.
    side_ready: VecDeque<TaskId>,
    workers: HashMap<WorkerId, WorkerEntry>,
    functions: HashMap<FunctionId, Arc<[u8]>>,
    waiters: HashMap<WaiterId, Waiter>,
    next_waiter: WaiterId,
    next_worker: u32,
    cpu_used: u32,
    /// Workers that failed to start (not killed from outside), in a row.
    start_failures: u32,
    last_start_failure: String,
    /// Workers that died before they connected, for any reason, in a row: spawns back off.
    early_deaths: u32,
    /// No pool worker is spawned before this (the back-off after early deaths).
    spawn_after_ms: u64,
    /// While workers fail to start, one is tried again at this time (to recover once they can).
    next_probe_ms: u64,
    now_ms: u64,
    /// Resources other than CPU in use, in thousandths.
    res_used: HashMap<String, u64>,
    actors: HashMap<ActorId, ActorEntry>,
    /// (namespace, name) of named actors.
    names: HashMap<(String, String), ActorId>,
    /// Actors ready to start, waiting for resources, in creation order.
    pending_actors: VecDeque<ActorId>,
    streams: HashMap<TaskId, StreamState>,
    /// The other nodes of the cluster (empty on a lone node).
    peers: std::collections::BTreeMap<NodeId, PeerEntry>,
    /// Tasks other nodes sent here.
    from_peer: HashMap<TaskId, FromPeer>,
    /// Tasks a peer sent again while their earlier attempt, orphaned when that peer was
    /// thought gone, still runs here: accepted once it has ended (`ended_reruns`).
    reruns: HashMap<TaskId, Box<peers::PeerTask>>,
    ended_reruns: Vec<TaskId>,
    /// A driver's node: actors go to peers.
    prefer_peers: bool,
    /// This node's id in its cluster.
    node_id: Option<NodeId>,
    /// References peers hold on actors they had created here.
    peer_actor_refs: HashMap<NodeId, Vec<ObjectId>>,
    /// Per GPU (by index): thousandths in use.
    gpu_used: Vec<u32>,
    /// Runtime-environment packages by content hash (see `TaskOptions::runtime_env`).
    packages: HashMap<String, Arc<[u8]>>,
    /// Placement groups this node created.
    pgs: HashMap<String, placement::PgEntry>,
    /// Placement-group bundles held on this node.
    reservations: HashMap<String, placement::Reservation>,
    /// Placement groups waiting for bundles to be placed (in id order).
    pending_pgs: std::collections::BTreeSet<String>,
    /// Placement groups removed (tasks waiting for them fail).
    removed_pgs: HashSet<String>,
    /// Tasks of peers this node asked its workers to give back, to return them to those peers
    /// (see `peer_steal`).
    revoked_for_peer: HashSet<TaskId>,
    /// Copies of large values peers sent with tasks, kept here until the peer lets them go
    /// (see `PeerEntry::copies`).
    peer_copies: HashMap<NodeId, HashSet<ObjectId>>,
    /// Actors with a call held back for a ref in its arguments still being made (to go to a
    /// peer, a call carries the values of those refs): dispatched again once it is ready.
    gather_waits: HashMap<ObjectId, Vec<ActorId>>,
    /// Large values peers are pulling from this node, by the node serving each pull (`None`:
    /// this one), to spread the pulls of one value over the nodes holding it.
    fanout: HashMap<ObjectId, HashMap<Option<NodeId>, u32>>,
    /// Peers that asked for a value this node is still pulling itself: served once it is here.
    serve_waits: HashMap<ObjectId, Vec<(NodeId, bool)>>,
    /// What the wait notices have said already (see `explain`).
    notices: explain::Notices,
}

fn error(kind: ErrorKind, task_name: &str, message: String) -> Arc<ErrorPayload> {
    Arc::new(ErrorPayload {
        kind,
        task_name: task_name.to_string(),
        message,
        traceback: String::new(),
        exception: None,
        pid: 0,
    })
}

impl Scheduler {
    pub fn new(cfg: Config) -> Self {
        let gpus = cfg.resources.get("GPU").copied().unwrap_or(0);
        Scheduler {
            cfg,
            objects: HashMap::new(),
            tasks: HashMap::new(),
            ready: VecDeque::new(),
            side_ready: VecDeque::new(),
            workers: HashMap::new(),
            functions: HashMap::new(),
            waiters: HashMap::new(),
            next_waiter: 1,
            next_worker: 1,
            cpu_used: 0,
            start_failures: 0,
            last_start_failure: String::new(),
            early_deaths: 0,
            spawn_after_ms: 0,
            next_probe_ms: 0,
            now_ms: 0,
            res_used: HashMap::new(),
            actors: HashMap::new(),
            names: HashMap::new(),
            pending_actors: VecDeque::new(),
            streams: HashMap::new(),
            peers: std::collections::BTreeMap::new(),
            from_peer: HashMap::new(),
            reruns: HashMap::new(),
            ended_reruns: Vec::new(),
            prefer_peers: false,
            node_id: None,
            peer_actor_refs: HashMap::new(),
            gpu_used: vec![0; (gpus / 1000) as usize],
            packages: HashMap::new(),
            pgs: HashMap::new(),
            reservations: HashMap::new(),
            pending_pgs: Default::default(),
            removed_pgs: HashSet::new(),
            gather_waits: HashMap::new(),
            revoked_for_peer: HashSet::new(),
            peer_copies: HashMap::new(),
            fanout: HashMap::new(),
            serve_waits: HashMap::new(),
            notices: Default::default(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Resources other than CPU: name, total, free (thousandths).
    pub fn resource_usage(&self) -> Vec<(String, u64, u64)> {
        let mut v: Vec<(String, u64, u64)> = self
            .cfg
            .resources
            .iter()
            .map(|(r, total)| {
                let used = self.res_used.get(r).copied().unwrap_or(0);
                (r.clone(), *total, total.saturating_sub(used))
            })
            .collect();
        v.sort();
        v
    }

    // ----------------------------------------------------------------- workers

    /// Starts the initial pool: one worker per CPU, spawned together.
    pub fn start(&mut self, out: &mut Vec<Action>) {
        for _ in 0..self.cfg.target_workers() {
            self.spawn(out);
        }
    }

    fn spawn(&mut self, out: &mut Vec<Action>) {
        self.spawn_for(None, out);
    }

    fn spawn_for(&mut self, actor: Option<ActorId>, out: &mut Vec<Action>) -> WorkerId {
        let id = WorkerId(self.next_worker);
        self.next_worker += 1;
        self.workers.insert(
            id,
            WorkerEntry {
                state: WorkerState::Starting,
                pid: 0,
                queue: VecDeque::new(),
                cpu_held: 0,
                blocked: 0,
                revoke_outstanding: false,
                known_functions: HashSet::new(),
                held: HashMap::new(),
                requests: HashMap::new(),
                idle_since: self.now_ms,
                res_held: Vec::new(),
                gpus: Vec::new(),
                actor,
            },
        );
        out.push(Action::Spawn { worker: id });
        id
    }

    /// A spawned worker connected and said hello. Returns false for an unknown worker.
    pub fn worker_connected(&mut self, id: WorkerId, pid: u32, out: &mut Vec<Action>) -> bool {
        let Some(w) = self.workers.get_mut(&id) else {
            return false;
        };
        if w.state != WorkerState::Starting {
            return false;
        }
        w.state = WorkerState::Alive;
        w.pid = pid;
        w.idle_since = self.now_ms;
        let actor = w.actor;
        let recovered = self.start_failures > 0 || self.early_deaths > 0;
        self.start_failures = 0;
        self.early_deaths = 0;
        self.spawn_after_ms = 0;
        if let Some(aid) = actor {
            self.actor_worker_connected(aid, id, pid, out);
        }
        if recovered {
            self.top_up(out);
        }
        self.schedule(out);
        true
    }

    /// Ids and pids of live workers.
    pub fn worker_pids(&self) -> Vec<(WorkerId, u32)> {
        let mut v: Vec<_> =
            self.workers.iter().filter(|(_, w)| w.pid != 0).map(|(id, w)| (*id, w.pid)).collect();
        v.sort();
        v
    }

    /// A worker process ended (or could not be started). Its running task is retried or failed;
    /// tasks queued behind it go back to the queue; its references are released.
    pub fn worker_died(&mut self, id: WorkerId, exit: WorkerExit, out: &mut Vec<Action>) {
        let Some(w) = self.workers.remove(&id) else {
            return;
        };
        if w.blocked == 0 {
            self.cpu_used -= w.cpu_held;
        }
        self.release_res(&w.res_held, &w.gpus);
        for waiter in w.requests.values() {
            self.waiters.remove(waiter);
        }
        if let Some(aid) = w.actor {
            for (oid, n) in &w.held {
                for _ in 0..*n {
                    self.decref_one(*oid, out);
                }
            }
            if w.state == WorkerState::Starting {
                self.died_before_connecting(&exit);
            }
            self.actor_worker_died(aid, id, w.pid, w.queue, exit, out);
            self.schedule(out);
            return;
        }
        let mut requeue = Vec::new();
        for (i, tid) in w.queue.iter().enumerate() {
            let Some(task) = self.tasks.get_mut(tid) else {
                continue;
            };
            let name = task.spec.name.clone();
            if task.cancel.is_some() {
                let msg = format!("task '{name}' was cancelled");
                self.fail_task(*tid, error(ErrorKind::Cancelled, &name, msg), out);
            } else if i > 0 {
                requeue.push(*tid);
            } else if retries_left(task) {
                task.attempts += 1;
                requeue.push(*tid);
            } else {
                let max = task.spec.options.max_retries;
                let msg = format!(
                    "the worker process (pid {}) running task '{name}' died ({}); \
                     it was tried {} time(s) and max_retries={max} allows no more",
                    w.pid,
                    exit.how,
                    task.attempts + 1
                );
                let mut err = error(ErrorKind::WorkerCrashed, &name, msg);
                Arc::make_mut(&mut err).pid = w.pid;
                self.fail_task(*tid, err, out);
            }
        }
        for tid in requeue.into_iter().rev() {
            if let Some(task) = self.tasks.get_mut(&tid) {
                task.state = TaskState::Queued;
                self.enqueue(tid, true);
            }
        }
        for (oid, n) in w.held {
            for _ in 0..n {
                self.decref_one(oid, out);
            }
        }
        if w.state == WorkerState::Starting {
            self.died_before_connecting(&exit);
        }
        if w.state != WorkerState::Retiring {
            self.top_up(out);
        }
        self.schedule(out);
    }

    /// A worker said it exits after its current task (see `WorkerToNode::Retire`): it gets no
    /// more tasks, those queued behind go back to the queue with no attempt used, and a
    /// replacement starts. Its exit then is that of a retiring worker, not a crash.
    pub fn worker_retiring(&mut self, id: WorkerId, out: &mut Vec<Action>) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        if w.state != WorkerState::Alive || w.actor.is_some() {
            return;
        }
        w.state = WorkerState::Retiring;
        let queued: Vec<TaskId> = w.queue.iter().copied().collect();
        self.tasks_returned(id, &queued, out);
        self.top_up(out);
        self.schedule(out);
    }

    /// A worker died before it connected. Killed from outside, it is only replaced; otherwise it
    /// counts as a failure to start. Either way, after a few in a row the next spawns back off
    /// (50 ms doubling to 1 s), so a broken start does not become a fork loop.
    fn died_before_connecting(&mut self, exit: &WorkerExit) {
        if !exit.killed {
            self.start_failures += 1;
            self.last_start_failure = exit.how.clone();
        }
        self.early_deaths += 1;
        if self.early_deaths > 2 {
            let delay = (50u64 << (self.early_deaths - 3).min(5)).min(1000);
            self.spawn_after_ms = self.now_ms + delay;
        }
    }

    /// Workers fail to start: queued tasks fail, and only probes are spawned.
    fn starts_failing(&self) -> bool {
        self.start_failures >= self.cfg.max_start_failures
    }

    fn spawn_allowed(&self) -> bool {
        !self.starts_failing() && self.now_ms >= self.spawn_after_ms
    }

    /// Spawns held back by `spawn_after_ms` or by failing starts, once their time has come.
    fn spawn_when_due(&mut self, out: &mut Vec<Action>) {
        if self.starts_failing() {
            let starting = self
                .workers
                .values()
                .any(|w| w.state == WorkerState::Starting && w.actor.is_none());
            if !starting && self.now_ms >= self.next_probe_ms {
                // One worker at a time, every 2 s: once one connects, the pool is refilled.
                self.next_probe_ms = self.now_ms + 2000;
                self.spawn(out);
            }
        } else if self.spawn_after_ms != 0 && self.now_ms >= self.spawn_after_ms {
            self.spawn_after_ms = 0;
            self.top_up(out);
            self.schedule(out);
        }
    }

    /// Replaces dead workers so the pool keeps one worker per CPU.
    fn top_up(&mut self, out: &mut Vec<Action>) {
        if !self.spawn_allowed() {
            return;
        }
        let active = self.workers.values().filter(|w| w.is_active_pool()).count();
        for _ in active..self.cfg.target_workers() {
            self.spawn(out);
        }
    }

    fn fail_all_queued(&mut self, out: &mut Vec<Action>) {
        let mut queued: Vec<TaskId> = self.ready.drain(..).collect();
        queued.extend(self.side_ready.drain(..));
        for tid in queued {
            let name = self.tasks.get(&tid).map(|t| t.spec.name.clone()).unwrap_or_default();
            let msg = format!(
                "worker processes fail to start ({} attempts in a row): {}",
                self.start_failures, self.last_start_failure
            );
            self.fail_task(tid, error(ErrorKind::WorkerStartFailed, &name, msg), out);
        }
    }

    /// Advances the clock: extra idle workers are stopped after a while.
    pub fn tick(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        self.now_ms = now_ms;
        self.spawn_when_due(out);
        self.wait_notices(out);
        let target = self.cfg.target_workers();
        let mut active = self.workers.values().filter(|w| w.is_active_pool()).count();
        if active <= target {
            return;
        }
        let mut idle: Vec<(u64, WorkerId)> = self
            .workers
            .iter()
            .filter(|(_, w)| {
                w.is_idle() && now_ms - w.idle_since >= self.cfg.idle_worker_timeout_ms
            })
            .map(|(id, w)| (w.idle_since, *id))
            .collect();
        idle.sort();
        for (_, id) in idle {
            if active <= target {
                break;
            }
            if let Some(w) = self.workers.get_mut(&id) {
                w.state = WorkerState::Retiring;
                out.push(Action::Send { worker: id, msg: NodeToWorker::Shutdown });
                active -= 1;
            }
        }
    }

    // ------------------------------------------------------------ submission

    pub fn register_function(&mut self, id: FunctionId, bytes: Arc<[u8]>) {
        self.functions.entry(id).or_insert(bytes);
    }

    /// Records a runtime-environment package (a zip), to send to peers with tasks that need it.
    pub fn register_package(&mut self, hash: String, bytes: Arc<[u8]>) {
        self.packages.entry(hash).or_insert(bytes);
    }

    pub fn has_package(&self, hash: &str) -> bool {
        self.packages.contains_key(hash)
    }

    pub fn has_function(&self, id: &FunctionId) -> bool {
        self.functions.contains_key(id)
    }

    /// A task is submitted by `holder`, who holds one reference to each of its returns.
    pub fn submit(&mut self, holder: Holder, spec: TaskSpec, out: &mut Vec<Action>) {
        if let ActorPart::Create(_) = spec.actor {
            // Actors are created with `create_actor`, which answers; a plain submit of one is a
            // confused peer: fail it like an unknown function.
            let name = spec.name.clone();
            let tid = spec.task_id;
            self.insert_task(holder, spec);
            let msg = format!("actor '{name}' must be created with create_actor");
            self.fail_task(tid, error(ErrorKind::Serialization, &name, msg), out);
            return;
        }
        let tid = spec.task_id;
        let streaming = spec.options.streaming;
        let spec = self.insert_task(holder, spec);
        if streaming {
            self.streams.insert(tid, StreamState::new(holder));
        }
        if let ActorPart::Call { actor, .. } = &spec.actor {
            if let Err(e) = self.actor_accepts(*actor, &spec.name) {
                self.fail_task(tid, e, out);
                return;
            }
            if let Some(a) = self.actors.get_mut(actor) {
                a.callers.entry(holder).or_default().push_back(tid);
            }
        } else {
            if let Some(msg) = self.unschedulable(&spec) {
                self.fail_task(tid, error(ErrorKind::Unschedulable, &spec.name, msg), out);
                return;
            }
            if !self.functions.contains_key(&spec.function) {
                let msg = format!("task '{}' names a function this node does not know", spec.name);
                self.fail_task(tid, error(ErrorKind::Serialization, &spec.name, msg), out);
                return;
            }
        }
        self.resolve_deps(tid, out);
    }

    /// Records a task and its references: the returns (held by `holder`) and its arguments.
    fn insert_task(&mut self, holder: Holder, spec: TaskSpec) -> Arc<TaskSpec> {
        let tid = spec.task_id;
        let spec = Arc::new(spec);
        for rid in spec.return_ids() {
            self.objects.insert(
                rid,
                ObjectEntry {
                    state: ObjectState::Pending,
                    refs: 0,
                    waiters: Vec::new(),
                    dependents: Vec::new(),
                    watchers: Vec::new(),
                },
            );
            self.incref(holder, &[rid]);
        }
        for oid in spec.args.contained.iter().chain(spec.deps.iter()) {
            self.incref_one(*oid);
        }
        self.tasks.insert(
            tid,
            TaskEntry {
                spec: spec.clone(),
                state: TaskState::WaitingDeps(0),
                attempts: 0,
                cancel: None,
                caller: holder,
                queued_at: 0,
            },
        );
        spec
    }

    /// Why a task or actor can never run here (it asks for more than the node has), if so.
    fn unschedulable(&self, spec: &TaskSpec) -> Option<String> {
        if let Strategy::Node { id, soft: false } = spec.options.strategy {
            let known = Some(NodeId(id)) == self.node_id || self.peers.contains_key(&NodeId(id));
            if !known {
                return Some(format!(
                    "task '{}' must run on node {id}, which is not in the cluster",
                    spec.name
                ));
            }
        }
        let placeable = match spec.actor {
            ActorPart::None => true,
            ActorPart::Create(_) => self.prefer_peers,
            ActorPart::Call { .. } => false,
        };
        if placeable && self.peer_could_run(spec) {
            return None;
        }
        let what = match &spec.actor {
            ActorPart::Create(_) => "actor",
            _ => "task",
        };
        // Where it could have gone to another node, the message speaks of the whole cluster and
        // of the most any one node has.
        let cluster = placeable && !self.peers.is_empty();
        let place = if cluster { "no node in the cluster has more than" } else { "this node has" };
        let cpus = self
            .peers
            .values()
            .filter(|p| cluster && !p.view.driver)
            .map(|p| p.view.cpu_total_milli)
            .fold(self.cfg.cpu_total_milli, u32::max);
        if spec.options.cpu_milli > cpus {
            return Some(format!(
                "{what} '{}' needs {} CPUs but {place} {}; it can never run",
                spec.name,
                milli(spec.options.cpu_milli.into()),
                milli(cpus.into())
            ));
        }
        let mut fits_here = spec.options.cpu_milli <= self.cfg.cpu_total_milli;
        for (r, amount) in &spec.options.resources {
            if r.starts_with(placement::PG_PREFIX) {
                continue; // The group's bundles may not be placed yet.
            }
            let here = self.cfg.resources.get(r).copied().unwrap_or(0);
            fits_here &= *amount <= here;
            let total = self
                .peers
                .values()
                .filter(|p| cluster && !p.view.driver)
                .flat_map(|p| p.view.resources.iter())
                .filter(|(name, _, _)| name == r)
                .map(|(_, total, _)| *total)
                .fold(here, u64::max);
            if *amount > total {
                return Some(format!(
                    "{what} '{}' needs {} {r} but {place} {}; it can never run",
                    spec.name,
                    milli(*amount),
                    milli(total)
                ));
            }
        }
        // Each amount is on some node, but no one node has all of them.
        (cluster && !fits_here).then(|| {
            let mut needs = vec![format!("{} CPUs", milli(spec.options.cpu_milli.into()))];
            needs.extend(
                spec.options
                    .resources
                    .iter()
                    .filter(|(r, _)| !r.starts_with(placement::PG_PREFIX))
                    .map(|(r, a)| format!("{} {r}", milli(*a))),
            );
            format!(
                "{what} '{}' needs {} on one node, and no node in the cluster has all of \
                 them; it can never run",
                spec.name,
                needs.join(" and ")
            )
        })
    }

    /// Whether `cpu` and `res` are free now.
    fn fits(&self, cpu: u32, res: &[(String, u64)]) -> bool {
        self.cpu_used + cpu <= self.cfg.cpu_total_milli
            && res.iter().all(|(r, a)| {
                let used = self.res_used.get(r).copied().unwrap_or(0);
                used + a <= self.cfg.resources.get(r).copied().unwrap_or(0)
            })
    }

    /// Takes `res`; gives the GPUs (indices) picked for its `GPU` amount.
    fn acquire_res(&mut self, res: &[(String, u64)]) -> Vec<u32> {
        let mut gpus = Vec::new();
        for (r, a) in res {
            *self.res_used.entry(r.clone()).or_insert(0) += a;
            if r == "GPU" {
                gpus = self.take_gpus(*a);
            } else if gpus.is_empty() {
                if let Some(g) = self.bundle_gpus(r, *a) {
                    gpus = g;
                }
            }
        }
        gpus
    }

    fn release_res(&mut self, res: &[(String, u64)], gpus: &[u32]) {
        for (r, a) in res {
            if let Some(u) = self.res_used.get_mut(r) {
                *u = u.saturating_sub(*a);
            }
            if r == "GPU" {
                let each = if *a >= 1000 { 1000 } else { *a as u32 };
                for g in gpus {
                    if let Some(u) = self.gpu_used.get_mut(*g as usize) {
                        *u = u.saturating_sub(each);
                    }
                }
            }
        }
    }

    /// Whole GPUs for an amount of one or more (the lowest free indices), or the fullest GPU
    /// with room for a fraction of one.
    fn take_gpus(&mut self, amount: u64) -> Vec<u32> {
        if amount == 0 || self.gpu_used.is_empty() {
            return Vec::new();
        }
        if amount >= 1000 {
            let want = amount.div_ceil(1000) as usize;
            let free: Vec<u32> = (0..self.gpu_used.len() as u32)
                .filter(|g| self.gpu_used[*g as usize] == 0)
                .take(want)
                .collect();
            for g in &free {
                self.gpu_used[*g as usize] = 1000;
            }
            return free;
        }
        let a = amount as u32;
        let best = (0..self.gpu_used.len())
            .filter(|g| self.gpu_used[*g] + a <= 1000)
            .max_by_key(|g| (self.gpu_used[*g], std::cmp::Reverse(*g)));
        match best {
            Some(g) => {
                self.gpu_used[g] += a;
                vec![g as u32]
            }
            None => Vec::new(),
        }
    }

    /// Counts a new task's pending dependencies; it becomes runnable once they are all ready, and
    /// fails if one failed.
    fn resolve_deps(&mut self, tid: TaskId, out: &mut Vec<Action>) {
        let Some(spec) = self.tasks.get(&tid).map(|t| t.spec.clone()) else {
            return;
        };
        let mut pending = 0;
        for dep in &spec.deps {
            match self.objects.get_mut(dep) {
                None => {
                    let msg = format!("argument {dep:?} of task '{}' no longer exists", spec.name);
                    self.fail_task(tid, error(ErrorKind::ObjectLost, &spec.name, msg), out);
                    return;
                }
                Some(o) => match &o.state {
                    ObjectState::Ready(_) => {}
                    ObjectState::Failed(e) => {
                        let e = e.clone();
                        self.fail_task(tid, e, out);
                        return;
                    }
                    ObjectState::Pending => {
                        pending += 1;
                        o.dependents.push(tid);
                    }
                },
            }
        }
        if let Some(t) = self.tasks.get_mut(&tid) {
            if pending == 0 {
                self.make_runnable(tid, out);
                self.schedule(out);
            } else {
                t.state = TaskState::WaitingDeps(pending);
            }
        }
    }

    /// A task's dependencies are ready: queue it where its kind runs.
    fn make_runnable(&mut self, tid: TaskId, out: &mut Vec<Action>) {
        let Some(t) = self.tasks.get_mut(&tid) else {
            return;
        };
        t.state = TaskState::Queued;
        match &t.spec.actor {
            ActorPart::None => self.enqueue(tid, false),
            ActorPart::Create(_) => {
                // The actor keeps the spec (to restart it); the task entry is made again each
                // time the creation runs.
                self.tasks.remove(&tid);
                let aid = ActorId(tid);
                if let Some(a) = self.actors.get_mut(&aid) {
                    a.runnable = true;
                    self.pending_actors.push_back(aid);
                }
            }
            ActorPart::Call { actor, .. } => {
                let aid = *actor;
                self.dispatch_actor(aid, out);
            }
        }
    }

    /// `holder` stores a value under a fresh id and holds one reference to it.
    pub fn put(&mut self, holder: Holder, id: ObjectId, data: ObjectData, out: &mut Vec<Action>) {
        self.new_object(id);
        self.incref(holder, &[id]);
        self.object_ready(id, Arc::new(data), out);
    }

    // ------------------------------------------------------------ dispatch

    fn schedule(&mut self, out: &mut Vec<Action>) {
        while let Some(tid) = self.ended_reruns.pop() {
            if let Some(t) = self.reruns.remove(&tid) {
                let t = *t;
                self.accept_peer_task(
                    t.peer, t.spec, t.function, t.objects, t.routes, t.errors, t.cached, t.fetch,
                    out,
                );
            }
        }
        if !self.pending_pgs.is_empty() {
            self.place_pgs(out);
        }
        if !self.pending_actors.is_empty() {
            self.start_actors(out);
        }
        // Tasks asking for other resources (or no CPU) first, from their own queue: they must
        // not wait behind plain tasks for CPUs they do not need. One that waits for CPUs holds
        // the plain tasks back, as the head of a single queue would.
        let cpu_short = !self.side_ready.is_empty() && self.schedule_queue(true, out);
        if !cpu_short {
            self.schedule_queue(false, out);
        }
        if self.ready.is_empty() && self.side_ready.is_empty() {
            self.steal(out);
            if !self.peers.is_empty() {
                self.steal_from_peers(out);
            }
        }
    }

    fn queue(&mut self, side: bool) -> &mut VecDeque<TaskId> {
        if side {
            &mut self.side_ready
        } else {
            &mut self.ready
        }
    }

    /// Puts a runnable task in its ready queue (see `schedule`).
    fn enqueue(&mut self, tid: TaskId, front: bool) {
        let now = self.now_ms;
        let side = self.tasks.get_mut(&tid).is_some_and(|t| {
            t.queued_at = now;
            t.spec.options.cpu_milli == 0 || !t.spec.options.resources.is_empty()
        });
        let q = self.queue(side);
        if front {
            q.push_front(tid);
        } else {
            q.push_back(tid);
        }
    }

    fn queued(&self) -> usize {
        self.ready.len() + self.side_ready.len()
    }

    /// Dispatches the runnable tasks of one queue; true if one waits for CPUs.
    fn schedule_queue(&mut self, side: bool, out: &mut Vec<Action>) -> bool {
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
            match task.spec.options.strategy {
                Strategy::Node { id, .. } if Some(NodeId(id)) == self.node_id => may_spill = false,
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
                Strategy::Spread if self.spread_to_peer(cpu) => {
                    if self.try_spill(tid, out) {
                        self.queue(side).pop_front();
                        continue;
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
            if self.fits(cpu, &task.spec.options.resources) {
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
                    cpu_short |= self.cpu_used + cpu > self.cfg.cpu_total_milli;
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

    fn idle_worker(&self) -> Option<WorkerId> {
        // Lowest id first keeps the choice deterministic.
        self.workers.iter().filter(|(_, w)| w.is_idle()).map(|(id, _)| *id).min()
    }

    fn pipeline_target(&self, cpu: u32) -> Option<WorkerId> {
        if cpu == 0 || self.cfg.pipeline_depth == 0 {
            return None;
        }
        self.workers
            .iter()
            .filter(|(_, w)| {
                w.state == WorkerState::Alive
                    && w.actor.is_none()
                    && w.res_held.is_empty()
                    && w.blocked == 0
                    && !w.queue.is_empty()
                    && w.queue.len() <= self.cfg.pipeline_depth
                    && w.cpu_held == cpu
            })
            .map(|(id, w)| (w.queue.len(), *id))
            .min()
            .map(|(_, id)| id)
    }

    fn ensure_workers(&mut self, out: &mut Vec<Action>) {
        if self.starts_failing() {
            // Workers cannot start: fail the queue rather than hang.
            let alive =
                self.workers.values().any(|w| w.state == WorkerState::Alive && w.actor.is_none());
            if !alive {
                self.fail_all_queued(out);
            }
            return;
        }
        if !self.spawn_allowed() {
            return; // Backing off; `tick` spawns when it is time.
        }
        let starting = self
            .workers
            .values()
            .filter(|w| w.state == WorkerState::Starting && w.actor.is_none())
            .count();
        let free_cpus = ((self.cfg.cpu_total_milli - self.cpu_used) as usize).div_ceil(1000).max(1);
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
    fn stuck_at_worker_cap(&self) -> bool {
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

    fn fail_queued_at_cap(&mut self, out: &mut Vec<Action>) {
        let max = self.cfg.max_workers;
        let actors = self.workers.values().filter(|w| w.actor.is_some()).count();
        let held = match actors {
            0 => String::new(),
            n => format!(" ({n} of them by actors)"),
        };
        let mut queued: Vec<TaskId> = self.ready.drain(..).collect();
        queued.extend(self.side_ready.drain(..));
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

    fn assign(&mut self, wid: WorkerId, tid: TaskId, out: &mut Vec<Action>) {
        let Some(task) = self.tasks.get_mut(&tid) else {
            return;
        };
        let Some(w) = self.workers.get_mut(&wid) else {
            return;
        };
        task.state = TaskState::Assigned(wid);
        let spec = task.spec.clone();
        w.queue.push_back(tid);
        let runs_now = w.queue.len() == 1 && w.actor.is_none();
        if runs_now {
            w.cpu_held = spec.options.cpu_milli;
            self.cpu_used += w.cpu_held;
            if !spec.options.resources.is_empty() {
                w.res_held = spec.options.resources.clone();
                let gpus = self.acquire_res(&spec.options.resources);
                if let Some(w) = self.workers.get_mut(&wid) {
                    w.gpus = gpus;
                }
            }
            self.head_started(wid, out);
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
    fn steal(&mut self, out: &mut Vec<Action>) {
        let idle = self.workers.values().filter(|w| w.is_idle()).count();
        for _ in 0..idle {
            let victim = self
                .workers
                .iter()
                .filter(|(_, w)| {
                    !w.revoke_outstanding
                        && w.queue.len() > 1
                        && w.blocked == 0
                        && w.actor.is_none()
                })
                .map(|(id, w)| (w.queue.len(), std::cmp::Reverse(*id)))
                .max()
                .map(|(_, std::cmp::Reverse(id))| id);
            let Some(vid) = victim else { return };
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
        let mut back = Vec::new();
        for tid in tasks {
            if let Some(pos) = w.queue.iter().position(|t| t == tid) {
                w.queue.remove(pos);
                back.push(*tid);
            }
        }
        self.refresh_head_cpu(wid);
        if !self.revoked_for_peer.is_empty() {
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
            } else if let ActorPart::Call { actor, .. } = &task.spec.actor {
                let (aid, caller) = (*actor, task.caller);
                task.state = TaskState::Queued;
                if let Some(a) = self.actors.get_mut(&aid) {
                    a.callers.entry(caller).or_default().push_front(tid);
                }
                self.dispatch_actor(aid, out);
            } else {
                task.state = TaskState::Queued;
                self.enqueue(tid, true);
            }
        }
        self.schedule(out);
    }

    /// Re-derives the CPU a worker holds from the task now at the head of its queue.
    fn refresh_head_cpu(&mut self, wid: WorkerId) {
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
            self.cpu_used = self.cpu_used - w.cpu_held + held;
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

    // ------------------------------------------------------------ completion

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
    fn cancel_started_head(&mut self, wid: WorkerId, out: &mut Vec<Action>) {
        let Some(head) = self.workers.get(&wid).and_then(|w| w.queue.front()).copied() else {
            return;
        };
        let Some(force) = self.tasks.get(&head).and_then(|t| t.cancel) else {
            return;
        };
        if force {
            out.push(Action::Kill { worker: wid });
        } else {
            out.push(Action::Send { worker: wid, msg: NodeToWorker::Cancel { task: head } });
        }
    }

    /// The task at the head of worker `wid`'s queue has started: a peer that sent it is told,
    /// so that if this node dies only the tasks it really started use a retry there.
    fn head_started(&mut self, wid: WorkerId, out: &mut Vec<Action>) {
        if self.from_peer.is_empty() {
            return; // No peer's task here (always so on a lone node): nothing to look up.
        }
        let head = self.workers.get(&wid).and_then(|w| w.queue.front()).copied();
        if let Some(peer) = head.and_then(|t| self.from_peer.get(&t)).map(|f| f.peer) {
            if let Some(task) = head {
                out.push(Action::PeerStarted { peer, task });
            }
        }
    }

    /// A task (not an actor's creation) ended with `result`, here or on a peer.
    fn task_result(&mut self, tid: TaskId, result: TaskResult, out: &mut Vec<Action>) {
        let Some(task) = self.tasks.get_mut(&tid) else {
            return;
        };
        let name = task.spec.name.clone();
        let call_of = match &task.spec.actor {
            ActorPart::Call { actor, .. } => Some(*actor),
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
                } else {
                    self.fail_task(tid, Arc::new(e), out);
                }
            }
        }
        if let Some(aid) = call_of {
            self.actor_call_finished(aid, out);
        }
    }

    fn object_ready(&mut self, id: ObjectId, value: Arc<ObjectData>, out: &mut Vec<Action>) {
        let Some(o) = self.objects.get_mut(&id) else {
            return;
        };
        if o.refs == 0 {
            // Nobody holds a reference any more: drop the value at once.
            self.objects.remove(&id);
            if !self.serve_waits.is_empty() {
                self.serve_waiting(id, out);
            }
            return;
        }
        o.state = ObjectState::Ready(value.clone());
        let waiters = std::mem::take(&mut o.waiters);
        let dependents = std::mem::take(&mut o.dependents);
        let watchers = std::mem::take(&mut o.watchers);
        for c in &value.contained {
            self.incref_one(*c);
        }
        self.notify(id, waiters, watchers, out);
        if !self.serve_waits.is_empty() {
            self.serve_waiting(id, out);
        }
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

    /// Dispatches again the actor calls held back for `id` (see `gather_waits`).
    fn wake_gather(&mut self, id: ObjectId, out: &mut Vec<Action>) {
        if self.gather_waits.is_empty() {
            return;
        }
        if let Some(actors) = self.gather_waits.remove(&id) {
            for a in actors {
                self.dispatch_actor(a, out);
            }
        }
    }

    fn object_failed(&mut self, id: ObjectId, err: Arc<ErrorPayload>, out: &mut Vec<Action>) {
        let Some(o) = self.objects.get_mut(&id) else {
            return;
        };
        if o.refs == 0 {
            self.objects.remove(&id);
            if !self.serve_waits.is_empty() {
                self.serve_waiting(id, out);
            }
            return;
        }
        o.state = ObjectState::Failed(err.clone());
        let waiters = std::mem::take(&mut o.waiters);
        let dependents = std::mem::take(&mut o.dependents);
        let watchers = std::mem::take(&mut o.watchers);
        self.notify(id, waiters, watchers, out);
        if !self.serve_waits.is_empty() {
            self.serve_waiting(id, out);
        }
        for tid in dependents {
            if matches!(self.tasks.get(&tid).map(|t| t.state), Some(TaskState::WaitingDeps(_))) {
                self.fail_task(tid, err.clone(), out);
            }
        }
        self.wake_gather(id, out);
    }

    fn notify(
        &mut self,
        id: ObjectId,
        waiters: Vec<WaiterId>,
        watchers: Vec<Holder>,
        out: &mut Vec<Action>,
    ) {
        for wid in waiters {
            let done = match self.waiters.get_mut(&wid) {
                Some(w) => {
                    w.remaining = w.remaining.saturating_sub(1);
                    w.remaining == 0
                }
                None => false,
            };
            if done {
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
    fn fail_task(&mut self, tid: TaskId, err: Arc<ErrorPayload>, out: &mut Vec<Action>) {
        let Some(task) = self.tasks.get(&tid) else {
            return;
        };
        let mut call_of = None;
        let create_of = matches!(task.spec.actor, ActorPart::Create(_)).then_some(ActorId(tid));
        match (&task.spec.actor, task.state) {
            (ActorPart::Call { actor, .. }, TaskState::WaitingDeps(_) | TaskState::Queued) => {
                let (aid, caller) = (*actor, task.caller);
                if let Some(q) = self.actors.get_mut(&aid).and_then(|a| a.callers.get_mut(&caller))
                {
                    if let Some(pos) = q.iter().position(|t| *t == tid) {
                        q.remove(pos);
                    }
                }
                call_of = Some(aid);
            }
            (ActorPart::None, TaskState::Queued) => {
                for q in [&mut self.ready, &mut self.side_ready] {
                    if let Some(pos) = q.iter().position(|t| *t == tid) {
                        q.remove(pos);
                    }
                }
            }
            _ => {}
        }
        let spec = task.spec.clone();
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

    fn finish_task(&mut self, tid: TaskId, out: &mut Vec<Action>) {
        let Some(task) = self.tasks.remove(&tid) else {
            return;
        };
        self.release_args(&task.spec, out);
        if self.reruns.contains_key(&tid) {
            self.ended_reruns.push(tid); // Accepted by the next `schedule`.
        }
    }

    fn release_args(&mut self, spec: &TaskSpec, out: &mut Vec<Action>) {
        for oid in spec.args.contained.iter().chain(spec.deps.iter()) {
            self.decref_one(*oid, out);
        }
    }

    // ------------------------------------------------------------ waiting

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

    fn add_waiter_inner(
        &mut self,
        owner: WaitOwner,
        ids: &[ObjectId],
        needed: usize,
        fetch: bool,
        stream: bool,
        out: &mut Vec<Action>,
    ) -> WaiterId {
        let wid = self.next_waiter;
        self.next_waiter += 1;
        let mut distinct: Vec<ObjectId> = ids.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        let ready = distinct.iter().filter(|id| self.is_ready(id)).count();
        let needed = needed.min(distinct.len());
        let remaining = needed.saturating_sub(ready);
        self.waiters.insert(wid, Waiter { owner, ids: ids.to_vec(), remaining, fetch, stream });
        if remaining == 0 {
            self.complete_waiter(wid, out);
            return wid;
        }
        for id in &distinct {
            if let Some(o) = self.objects.get_mut(id) {
                if matches!(o.state, ObjectState::Pending) {
                    o.waiters.push(wid);
                }
            }
        }
        if let WaitOwner::Worker { worker, req } = owner {
            if let Some(w) = self.workers.get_mut(&worker) {
                w.requests.insert(req, wid);
                w.blocked += 1;
                if w.blocked == 1 && w.actor.is_none() {
                    self.cpu_used -= w.cpu_held;
                    // Tasks pipelined behind the blocked one must not wait for it.
                    if w.queue.len() > 1 {
                        let tasks: Vec<TaskId> = w.queue.iter().skip(1).copied().collect();
                        w.revoke_outstanding = true;
                        out.push(Action::Send { worker, msg: NodeToWorker::Revoke { tasks } });
                    }
                }
            }
            self.schedule(out);
        }
        wid
    }

    fn complete_waiter(&mut self, wid: WaiterId, out: &mut Vec<Action>) {
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

    fn unblock(&mut self, worker: WorkerId, req: u64) {
        if let Some(wk) = self.workers.get_mut(&worker) {
            if wk.requests.remove(&req).is_some() && wk.blocked > 0 {
                wk.blocked -= 1;
                if wk.blocked == 0 && wk.actor.is_none() {
                    // Take the CPU back, even if that over-commits for a moment: the lent-out
                    // work finishes and the balance returns.
                    self.cpu_used += wk.cpu_held;
                }
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
                Some(o) if matches!(o.state, ObjectState::Pending) => o.watchers.push(holder),
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
        !matches!(self.objects.get(id).map(|o| &o.state), Some(ObjectState::Pending))
    }

    /// The value or error of a ready object.
    pub fn result_of(&self, id: &ObjectId) -> Result<Arc<ObjectData>, Arc<ErrorPayload>> {
        match self.objects.get(id).map(|o| &o.state) {
            Some(ObjectState::Ready(v)) => Ok(v.clone()),
            Some(ObjectState::Failed(e)) => Err(e.clone()),
            Some(ObjectState::Pending) => {
                Err(error(ErrorKind::ObjectLost, "", format!("object {id:?} is not ready")))
            }
            None => Err(error(
                ErrorKind::ObjectLost,
                "",
                format!("object {id:?} does not exist (it was freed, or never created here)"),
            )),
        }
    }

    pub fn object_state(&self, id: &ObjectId) -> Option<&ObjectState> {
        self.objects.get(id).map(|o| &o.state)
    }

    // ------------------------------------------------------------ cancellation

    /// Cancels the task that produces `id`. Queued tasks fail at once; a running one is
    /// interrupted (`force`: its worker is killed).
    /// Whether the task behind `id` was sent to another node (a cancel goes there).
    pub fn runs_elsewhere(&self, id: ObjectId) -> bool {
        self.tasks.get(&id.task).is_some_and(|t| matches!(t.state, TaskState::Remote(_)))
    }

    pub fn cancel(&mut self, id: ObjectId, force: bool, out: &mut Vec<Action>) {
        let tid = id.task;
        let Some(task) = self.tasks.get_mut(&tid) else {
            return;
        };
        let name = task.spec.name.clone();
        match task.state {
            TaskState::WaitingDeps(_) | TaskState::Queued => {
                let msg = format!("task '{name}' was cancelled before it ran");
                self.fail_task(tid, error(ErrorKind::Cancelled, &name, msg), out);
            }
            TaskState::Remote(peer) => {
                task.cancel = Some(force);
                out.push(Action::PeerCancel { peer, task: tid, force });
            }
            TaskState::Assigned(wid) => {
                task.cancel = Some(force);
                let Some(w) = self.workers.get_mut(&wid) else {
                    return;
                };
                if w.actor.is_some() {
                    // The actor process knows which calls it has started; killing it for one
                    // call would lose its state, so `force` does not apply.
                    out.push(Action::Send { worker: wid, msg: NodeToWorker::Cancel { task: tid } });
                } else if w.queue.front() == Some(&tid) {
                    if force {
                        out.push(Action::Kill { worker: wid });
                    } else {
                        out.push(Action::Send {
                            worker: wid,
                            msg: NodeToWorker::Cancel { task: tid },
                        });
                    }
                } else {
                    out.push(Action::Send {
                        worker: wid,
                        msg: NodeToWorker::Revoke { tasks: vec![tid] },
                    });
                }
            }
        }
        self.schedule(out);
    }

    // ------------------------------------------------------------ references

    pub fn incref(&mut self, holder: Holder, ids: &[ObjectId]) {
        for id in ids {
            if let Some(o) = self.objects.get_mut(id) {
                o.refs += 1;
                if let Holder::Worker(w) = holder {
                    if let Some(w) = self.workers.get_mut(&w) {
                        *w.held.entry(*id).or_insert(0) += 1;
                    }
                }
            }
        }
    }

    pub fn decref(&mut self, holder: Holder, ids: &[ObjectId], out: &mut Vec<Action>) {
        for id in ids {
            if let Holder::Worker(w) = holder {
                let Some(w) = self.workers.get_mut(&w) else {
                    continue;
                };
                match w.held.get_mut(id) {
                    Some(n) if *n > 1 => *n -= 1,
                    Some(_) => {
                        w.held.remove(id);
                    }
                    None => continue, // Not ours to release.
                }
            }
            self.decref_one(*id, out);
        }
    }

    fn incref_one(&mut self, id: ObjectId) {
        if let Some(o) = self.objects.get_mut(&id) {
            o.refs += 1;
        }
    }

    fn decref_one(&mut self, id: ObjectId, out: &mut Vec<Action>) {
        let mut work = vec![id];
        while let Some(id) = work.pop() {
            let Some(o) = self.objects.get_mut(&id) else {
                continue;
            };
            o.refs = o.refs.saturating_sub(1);
            if o.refs > 0 {
                continue;
            }
            if id.index == 1 && self.actors.contains_key(&ActorId(id.task)) {
                self.actor_unreferenced(ActorId(id.task), out);
                let Some(o) = self.objects.get(&id) else { continue };
                if o.refs > 0 {
                    continue;
                }
            }
            let Some(o) = self.objects.get_mut(&id) else {
                continue;
            };
            match &o.state {
                // The producing task still runs; its result is dropped when it arrives.
                ObjectState::Pending => {}
                ObjectState::Ready(v) => {
                    work.extend(v.contained.iter().copied());
                    let copied = v.shm.is_some();
                    self.objects.remove(&id);
                    if copied && !self.peers.is_empty() {
                        self.drop_copies(id, out);
                    }
                }
                ObjectState::Failed(_) => {
                    self.objects.remove(&id);
                }
            }
        }
    }

    /// What waits on this node and why, a line per kind (most common first), at most `limit`:
    /// tasks waiting for their arguments or for resources, actors waiting for resources,
    /// placement groups waiting for room.
    pub fn waiting_reasons(&self, limit: usize) -> Vec<String> {
        // Grouped by what they wait for first; a line is written once per group (a heartbeat
        // must not format a string per queued task).
        type Key<'a> = (&'a str, Option<usize>, u32, &'a [(String, u64)]);
        let mut groups: HashMap<Key<'_>, usize> = HashMap::new();
        for t in self.tasks.values() {
            let o = &t.spec.options;
            let key: Key<'_> = match t.state {
                TaskState::WaitingDeps(n) => (&t.spec.name, Some(n), 0, &[]),
                TaskState::Queued if matches!(t.spec.actor, ActorPart::None) => {
                    (&t.spec.name, None, o.cpu_milli, &o.resources)
                }
                _ => continue,
            };
            *groups.entry(key).or_insert(0) += 1;
        }
        // Who holds what a demand needs takes a walk over the actors, groups and workers: once
        // per distinct demand, however many tasks and actors wait for it.
        let mut holders: HashMap<(u32, Vec<(String, u64)>), String> = HashMap::new();
        let mut held_by = |cpu: u32, res: &[(String, u64)]| -> String {
            holders.entry((cpu, res.to_vec())).or_insert_with(|| self.held_by(cpu, res)).clone()
        };
        let mut counts: HashMap<String, usize> = HashMap::new();
        for ((name, deps, cpu, res), n) in groups {
            let why = match deps {
                Some(d) => format!("waiting for {d} argument(s) to be made"),
                None => format!("waiting for {}{}", demand_text(cpu, res), held_by(cpu, res)),
            };
            *counts.entry(format!("task '{name}': {why}")).or_insert(0) += n;
        }
        for aid in &self.pending_actors {
            if let Some(a) = self.actors.get(aid) {
                let o = &a.create.options;
                let line = format!(
                    "actor '{}': waiting for {}{}",
                    a.class(),
                    demand_text(o.cpu_milli, &o.resources),
                    held_by(o.cpu_milli, &o.resources)
                );
                *counts.entry(line).or_insert(0) += 1;
            }
        }
        self.pipelined_reasons(&mut counts);
        let mut lines: Vec<(usize, String)> = counts.into_iter().map(|(l, n)| (n, l)).collect();
        lines.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut out: Vec<String> = self.pgs_waiting();
        out.extend(lines.into_iter().map(|(n, l)| if n > 1 { format!("{n} x {l}") } else { l }));
        out.truncate(limit);
        out
    }

    pub fn stats(&self) -> Stats {
        let mut s = Stats {
            objects: self.objects.len(),
            cpu_used_milli: self.cpu_used,
            cpu_total_milli: self.cfg.cpu_total_milli,
            actors: self.actors.len(),
            ..Default::default()
        };
        for w in self.workers.values() {
            match w.state {
                WorkerState::Starting => s.workers_starting += 1,
                _ => s.workers_alive += 1,
            }
            if w.actor.is_none() {
                s.tasks_pipelined += w.queue.len().saturating_sub(1);
            }
            if w.blocked > 0 {
                s.workers_blocked += 1;
            }
        }
        for t in self.tasks.values() {
            match t.state {
                TaskState::WaitingDeps(_) => s.tasks_waiting += 1,
                TaskState::Queued => s.tasks_queued += 1,
                TaskState::Assigned(_) => s.tasks_assigned += 1,
                TaskState::Remote(_) => s.tasks_remote += 1,
            }
        }
        s
    }
}

/// "1 CPU, 2 GPU" for a request (placement-group resources named by their bundle).
fn demand_text(cpu_milli: u32, resources: &[(String, u64)]) -> String {
    let mut need = format!("{} CPU", cpu_milli as f64 / 1000.0);
    for (r, a) in resources {
        if !r.starts_with(placement::PG_PREFIX) {
            need.push_str(&format!(", {} {r}", *a as f64 / 1000.0));
        } else if r.ends_with(":bundle") && r.matches(':').count() == 3 {
            need.push_str(&format!(", its bundle ({r})"));
        }
    }
    need
}

fn retries_left(task: &TaskEntry) -> bool {
    let max = task.spec.options.max_retries;
    max < 0 || task.attempts < max as u32
}

/// An amount in thousandths as the user wrote it: `1500` is "1.5", `2000` is "2".
fn milli(amount: u64) -> String {
    format!("{}", amount as f64 / 1000.0)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod actor_tests;
