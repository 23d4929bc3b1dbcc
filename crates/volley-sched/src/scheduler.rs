//! The coordinator: `Scheduler` owns the parts (see the crate documentation), takes each event
//! and dispatches it, and holds the decisions that span parts: where a runnable task goes
//! (`dispatch`), what a finished or failed task changes (`completion`), who waits (`waits`), and
//! (here) what a released reference frees.
//! The parts live in the submodules; the event methods (`submit`, `task_done`, `worker_died`,
//! ...), `Action`, `Config` and `Stats` stay here because they are the crate's interface.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use volley_proto::{
    ActorId, ActorPart, ErrorKind, ErrorPayload, FunctionId, NodeId, NodeToWorker, ObjectData,
    ObjectId, Strategy, TaskId, TaskResult, TaskSpec, WorkerId,
};

/// Notes a task or actor event when recording is on (see `events`). A macro, not a method, so
/// that it borrows only the two fields it touches and can be used while a part is borrowed.
macro_rules! note {
    ($s:expr, $ev:expr) => {
        if $s.recording {
            $s.events.push($ev);
        }
    };
}

/// The access a part gives to its table of records (objects, tasks, workers, actors, peers),
/// written once for all of them: lookups, and `get_mut`/`remove` for the coordinator's updates.
/// Adding a record goes through the part's own methods, which keep its invariants.
macro_rules! table_access {
    ($part:ident . $field:ident : $k:ty => $v:ty) => {
        #[allow(dead_code)] // Each part uses the accessors it needs.
        impl $part {
            pub(super) fn get(&self, k: &$k) -> Option<&$v> {
                self.$field.get(k)
            }

            pub(super) fn get_mut(&mut self, k: &$k) -> Option<&mut $v> {
                self.$field.get_mut(k)
            }

            pub(super) fn contains_key(&self, k: &$k) -> bool {
                self.$field.contains_key(k)
            }

            pub(super) fn remove(&mut self, k: &$k) -> Option<$v> {
                self.$field.remove(k)
            }

            pub(super) fn len(&self) -> usize {
                self.$field.len()
            }

            pub(super) fn is_empty(&self) -> bool {
                self.$field.is_empty()
            }

            pub(super) fn iter(&self) -> impl Iterator<Item = (&$k, &$v)> {
                self.$field.iter()
            }

            pub(super) fn keys(&self) -> impl Iterator<Item = &$k> {
                self.$field.keys()
            }

            pub(super) fn values(&self) -> impl Iterator<Item = &$v> {
                self.$field.values()
            }

            pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = (&$k, &mut $v)> {
                self.$field.iter_mut()
            }
        }
    };
}

mod actors;
mod code;
mod completion;
mod dispatch;
mod events;
mod explain;
mod held;
mod objects;
mod peers;
mod placement;
mod remote_actors;
mod resources;
mod streams;
mod tasks;
mod waits;
mod workers;

pub use actors::ActorError;
use actors::Actors;
use code::Registry;
pub use events::{ActorRecord, ObjectRecord, Parent, TaskEvent, WorkerRecord};
use objects::{Objects, Waiter, Waiters};
pub use peers::PeerView;
use peers::Peers;
pub use remote_actors::ActorReport;
use resources::Resources;
pub use streams::StreamStep;
use streams::Streams;
use tasks::{TaskEntry, TaskState, Tasks};
use workers::{WorkerState, Workers};

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
        /// Where the actors live whose handles the results carry (`PeerMsg::Done::routes`).
        routes: Vec<(ActorId, NodeId, String)>,
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
    /// Actors this node restarted after their process died, in all.
    pub actor_restarts: u64,
    /// Worker processes (pool or actor) that died without being told to (a signal from
    /// outside, a crash, an exit in user code, a failed start), in all; retirements and the
    /// scheduler's own kills are not counted.
    pub worker_crashes: u64,
}

/// One node's scheduler. See the crate documentation.
pub struct Scheduler {
    cfg: Config,
    /// Objects: states, references, who waits on each.
    objects: Objects,
    /// Tasks, and the ready queues of runnable pool tasks.
    tasks: Tasks,
    /// The worker processes, and the spawn back-off.
    workers: Workers,
    /// Functions (and actor classes) by id.
    functions: Registry<FunctionId>,
    /// Runtime-environment packages by content hash (see `TaskOptions::runtime_env`).
    packages: Registry<String>,
    /// `get`/`wait` calls in progress.
    waiters: Waiters,
    now_ms: u64,
    /// CPUs, GPUs and custom resources: totals and use.
    res: Resources,
    /// Actors, their names and start queue.
    actors: Actors,
    streams: Streams,
    /// The other nodes of the cluster, and what this node does for them.
    peers: Peers,
    /// Placement groups: those made here, bundles held here.
    placement: placement::Placement,
    /// What the wait notices have said already (see `explain`).
    notices: explain::Notices,
    /// Whether task and actor events are noted (see `events`), and those not yet taken.
    recording: bool,
    events: Vec<TaskEvent>,
    /// The number the next recorded task gets (`TaskEntry::seq`; from 1, 0 is "not recorded").
    next_seq: u64,
    /// Counters for `/metrics` (see `Stats`): increments only, off the task path.
    actor_restarts: u64,
    worker_crashes: u64,
    /// Resources held for submitted jobs' entrypoints (see `held`).
    holds: held::Holds,
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
        let res = Resources::new(cfg.cpu_total_milli, cfg.resources.clone());
        Scheduler {
            cfg,
            res,
            objects: Objects::default(),
            tasks: Tasks::default(),
            workers: Workers::new(),
            functions: Registry::default(),
            packages: Registry::default(),
            waiters: Waiters::default(),
            now_ms: 0,
            actors: Actors::default(),
            streams: Streams::default(),
            peers: Peers::default(),
            placement: Default::default(),
            notices: Default::default(),
            recording: false,
            events: Vec::new(),
            next_seq: 1,
            actor_restarts: 0,
            worker_crashes: 0,
            holds: Default::default(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Resources other than CPU: name, total, free (thousandths).
    pub fn resource_usage(&self) -> Vec<(String, u64, u64)> {
        self.res.usage()
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
        let id = self.workers.add(actor, self.now_ms);
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
        let recovered = self.workers.start_succeeded();
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
        self.workers.pids()
    }

    /// A worker process ended (or could not be started). Its running task is retried or failed;
    /// tasks queued behind it go back to the queue; its references are released.
    pub fn worker_died(&mut self, id: WorkerId, exit: WorkerExit, out: &mut Vec<Action>) {
        let Some(w) = self.workers.remove(&id) else {
            return;
        };
        if !w.told_to_exit && w.state != WorkerState::Retiring {
            self.worker_crashes += 1;
        }
        if w.blocked == 0 {
            self.res.give_cpu(w.cpu_held);
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
                self.note_queued(tid);
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

    /// A worker died before it connected: counted by the spawn back-off (see `Workers`).
    fn died_before_connecting(&mut self, exit: &WorkerExit) {
        self.workers.died_before_connecting(exit, self.now_ms);
    }

    /// Workers fail to start: queued tasks fail, and only probes are spawned.
    fn starts_failing(&self) -> bool {
        self.workers.starts_failing(self.cfg.max_start_failures)
    }

    fn spawn_allowed(&self) -> bool {
        self.workers.spawn_allowed(self.now_ms, self.cfg.max_start_failures)
    }

    /// Spawns held back by the back-off or by failing starts, once their time has come.
    fn spawn_when_due(&mut self, out: &mut Vec<Action>) {
        if self.starts_failing() {
            if self.workers.probe_due(self.now_ms) {
                // Once one connects, the pool is refilled.
                self.spawn(out);
            }
        } else if self.workers.backoff_ended(self.now_ms) {
            self.top_up(out);
            self.schedule(out);
        }
    }

    /// Replaces dead workers so the pool keeps one worker per CPU.
    fn top_up(&mut self, out: &mut Vec<Action>) {
        if !self.spawn_allowed() {
            return;
        }
        for _ in self.workers.active_pool()..self.cfg.target_workers() {
            self.spawn(out);
        }
    }

    fn fail_all_queued(&mut self, out: &mut Vec<Action>) {
        let queued = self.tasks.drain_queued();
        for tid in queued {
            let name = self.tasks.get(&tid).map(|t| t.spec.name.clone()).unwrap_or_default();
            let (n, how) = self.workers.start_failure();
            let msg = format!("worker processes fail to start ({n} attempts in a row): {how}");
            self.fail_task(tid, error(ErrorKind::WorkerStartFailed, &name, msg), out);
        }
    }

    /// Advances the clock: extra idle workers are stopped after a while.
    /// Gives back the room of the per-task and per-object tables when a burst of work is over
    /// and they are far below their capacity (amortised: see `crate::shrink`). Called by the
    /// node's periodic tick, never on the task path. Says whether a table shrank.
    pub fn shrink(&mut self) -> bool {
        self.tasks.shrink() | self.objects.shrink()
    }

    /// How many tasks and objects this node knows: what a burst of work grows, and what the
    /// node watches to decide when to give memory back to the OS.
    pub fn live_entries(&self) -> usize {
        self.tasks.len() + self.objects.len()
    }

    pub fn tick(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        self.now_ms = now_ms;
        self.spawn_when_due(out);
        self.wait_notices(out);
        self.expire_early_calls(out);
        let target = self.cfg.target_workers();
        let mut active = self.workers.active_pool();
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
        self.functions.add(id, bytes);
    }

    /// Records a runtime-environment package (a zip), to send to peers with tasks that need it.
    pub fn register_package(&mut self, hash: String, bytes: Arc<[u8]>) {
        self.packages.add(hash, bytes);
    }

    pub fn has_package(&self, hash: &str) -> bool {
        self.packages.contains(hash)
    }

    pub fn has_function(&self, id: &FunctionId) -> bool {
        self.functions.contains(id)
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
            self.streams.start(tid, holder);
        }
        if let ActorPart::Call(call) = &spec.actor {
            let actor = call.actor;
            if self.held_for_creation(actor, holder, tid) {
                return;
            }
            if let Err(e) = self.actor_accepts(actor, &spec.name) {
                self.fail_task(tid, e, out);
                return;
            }
            self.queue_actor_call(actor, holder, tid, out);
            return;
        } else {
            if let Some(msg) = self.unschedulable(&spec) {
                self.fail_task(tid, error(ErrorKind::Unschedulable, &spec.name, msg), out);
                return;
            }
            if !self.functions.contains(&spec.function) {
                let msg = format!("task '{}' names a function this node does not know", spec.name);
                self.fail_task(tid, error(ErrorKind::Serialization, &spec.name, msg), out);
                return;
            }
        }
        self.resolve_deps(tid, out);
    }

    /// Queues call `tid` of `holder` for actor `aid` (known here) and resolves its arguments.
    fn queue_actor_call(
        &mut self,
        aid: ActorId,
        holder: Holder,
        tid: TaskId,
        out: &mut Vec<Action>,
    ) {
        if let Some(a) = self.actors.get_mut(&aid) {
            a.queue_call(holder, tid);
        }
        self.resolve_deps(tid, out);
    }

    /// Records a task and its references: the returns (held by `holder`) and its arguments.
    fn insert_task(&mut self, holder: Holder, spec: TaskSpec) -> Arc<TaskSpec> {
        let tid = spec.task_id;
        let spec = Arc::new(spec);
        for rid in spec.return_ids() {
            self.objects.insert_pending(rid);
            self.incref(holder, &[rid]);
        }
        for oid in spec.args.contained.iter().chain(spec.deps.iter()) {
            self.incref_one(*oid);
        }
        let mut entry = TaskEntry::new(spec.clone(), holder);
        if self.recording && !matches!(spec.actor, ActorPart::Create(_)) {
            entry.seq = self.note_submitted(&spec, holder, self.tasks.get(&tid).map(|t| t.seq));
        }
        self.tasks.insert(tid, entry);
        spec
    }

    /// Why a task or actor can never run here (it asks for more than the node has), if so.
    fn unschedulable(&self, spec: &TaskSpec) -> Option<String> {
        let placeable = !matches!(spec.actor, ActorPart::Call(_));
        self.unschedulable_where(spec, placeable)
    }

    /// `unschedulable`, where `placeable` says whether the work may go to another node (work a
    /// peer sent here never moves on).
    fn unschedulable_where(&self, spec: &TaskSpec, placeable: bool) -> Option<String> {
        if let Strategy::Node { id, soft: false } = spec.options.strategy {
            let known = NodeId(id) == self.peers.here() || self.peers.contains_key(&NodeId(id));
            if !known {
                return Some(format!(
                    "task '{}' must run on node {id}, which is not in the cluster",
                    spec.name
                ));
            }
        }
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
            .fold(self.res.cpu_total(), u32::max);
        if spec.options.cpu_milli > cpus {
            return Some(format!(
                "{what} '{}' needs {} CPUs but {place} {}; it can never run",
                spec.name,
                milli(spec.options.cpu_milli.into()),
                milli(cpus.into())
            ));
        }
        let mut fits_here = spec.options.cpu_milli <= self.res.cpu_total();
        for (r, amount) in &spec.options.resources {
            if r.starts_with(placement::PG_PREFIX) {
                continue; // The group's bundles may not be placed yet.
            }
            let here = self.res.total(r);
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

    /// Takes `res` for a task or actor; gives the GPUs (indices) picked for it.
    fn acquire_res(&mut self, res: &[(String, u64)]) -> Vec<u32> {
        let placement = &self.placement;
        self.res.acquire(res, |r, a| placement.bundle_gpus(r, a))
    }

    fn release_res(&mut self, res: &[(String, u64)], gpus: &[u32]) {
        self.res.release(res, gpus);
    }

    /// Counts a new task's pending dependencies; it becomes runnable once they are all ready, and
    /// fails if one failed.
    fn resolve_deps(&mut self, tid: TaskId, out: &mut Vec<Action>) {
        let Some(spec) = self.tasks.get(&tid).map(|t| t.spec.clone()) else {
            return;
        };
        let mut pending: u32 = 0;
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
                        o.waiting().dependents.push(tid);
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
        if !t.spec.deps.is_empty() || matches!(t.spec.actor, ActorPart::Call(_)) {
            // A task with no arguments to wait for is queued from its submission on.
            let (seq, attempt) = (t.seq, t.attempts);
            note!(self, TaskEvent::Queued { seq, attempt });
        }
        match &t.spec.actor {
            ActorPart::None => self.enqueue(tid, false),
            ActorPart::Create(_) => {
                // The actor keeps the spec (to restart it); the task entry is made again each
                // time the creation runs.
                self.tasks.remove(&tid);
                let aid = ActorId(tid);
                if let Some(a) = self.actors.get_mut(&aid) {
                    a.runnable = true;
                    self.actors.push_pending(aid);
                }
            }
            ActorPart::Call(call) => {
                let aid = call.actor;
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

    // ------------------------------------------------------------ cancellation

    /// Cancels the task that produces `id`. Queued tasks fail at once; a running one is
    /// interrupted (`force`: its worker is killed).
    /// Whether the task behind `id` was sent to another node (a cancel goes there).
    pub fn runs_elsewhere(&self, id: ObjectId) -> bool {
        self.tasks.get(&{ id.task }).is_some_and(|t| matches!(t.state, TaskState::Remote(_)))
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
                        w.told_to_exit = true;
                        let msg = NodeToWorker::KillIfRunning { task: tid };
                        out.push(Action::Send { worker: wid, msg });
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
                        w.hold(*id);
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
                if !w.release(id) {
                    continue; // Not ours to release.
                }
            }
            self.decref_one(*id, out);
        }
    }

    fn incref_one(&mut self, id: ObjectId) {
        self.objects.incref(&id);
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

    pub fn stats(&self) -> Stats {
        let mut s = Stats {
            objects: self.objects.len(),
            cpu_used_milli: self.res.cpu_used(),
            cpu_total_milli: self.res.cpu_total(),
            actors: self.actors.len(),
            actor_restarts: self.actor_restarts,
            worker_crashes: self.worker_crashes,
            ..Default::default()
        };
        for w in self.workers.values() {
            match w.state {
                WorkerState::Starting => s.workers_starting += 1,
                _ => s.workers_alive += 1,
            }
            // Calls queued in an actor's process behind those it runs wait too (`volley
            // status` showed none while an actor had four calls queued).
            let running = w.actor.map_or(1, |a| self.actors.concurrency(a));
            s.tasks_pipelined += w.queue.len().saturating_sub(running);
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

fn retries_left(task: &TaskEntry) -> bool {
    task.retries_left()
}

/// An amount in thousandths as the user wrote it: `1500` is "1.5", `2000` is "2".
fn milli(amount: u64) -> String {
    format!("{}", amount as f64 / 1000.0)
}

#[cfg(test)]
mod harness;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod actor_tests;

#[cfg(test)]
mod perf;

#[cfg(test)]
mod sizes;
