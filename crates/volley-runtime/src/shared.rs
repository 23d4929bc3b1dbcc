//! The node's state as its threads share it: the scheduler under one lock, the worker
//! connections, the local waiters, and the routing of the scheduler's actions once that lock is
//! released.
//!
//! Every part of the runtime that drives the scheduler (the node's entry points, the worker
//! readers, the supervisor, the cluster's links, `volley status`) holds an `Arc<Shared>`; this
//! module imports none of them, so they all stand on it instead of on each other. The cluster
//! plugs in through [`Links`], the supervisor through [`SupCmd`].

use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use volley_proto::{
    encode, encode_execute, encode_get_reply, ErrorKind, ErrorPayload, Keep, NodeId, NodeSnapshot,
    ObjectData, ObjectId, SchedCounters, StoreCounters, TaskSpec, WorkerId,
};
use volley_sched::shrink::Shrink;
use volley_sched::{Action, Scheduler, WaiterId, WorkerExit};
use volley_store::sync::{Condvar, Mutex};
use volley_store::{Owner, Store};

use crate::outbox::Outbox;

/// What the node asks of its supervisor thread (see `supervisor`).
pub(crate) enum SupCmd {
    Spawn(WorkerId),
    Kill(WorkerId),
    /// Wait up to the given time for children to exit, then kill the rest and stop.
    Stop(Duration),
    /// What the worker template said (`template.rs`), read on its thread.
    Template(crate::template::TemplateEvent),
    /// A worker finished its handshake: the supervisor may start the next one.
    Connected(WorkerId),
}

/// The cluster as the node's state sees it, once the node has joined one: where actions meant
/// for other nodes go, and how the cluster describes this node. A trait so that the state does
/// not depend on the cluster's code (the cluster depends on the state).
pub(crate) trait Links: Send + Sync {
    /// Carries out scheduler actions meant for peers (called outside the state lock).
    fn dispatch_all(self: Arc<Self>, actions: Vec<Action>);
    /// This node as the cluster's view describes it (with its id and byte counters).
    fn local_snapshot(&self) -> NodeSnapshot;
    /// Asks the cluster's head (this node's own, or over the network); blocks for the answer.
    fn ask_head(&self, req: volley_proto::HeadRequest) -> volley_proto::HeadAnswer;
    /// This node's number in the cluster.
    fn node_id(&self) -> volley_proto::NodeId;
    /// The cluster's nodes as this node last heard them from the head.
    fn view(&self) -> Vec<NodeSnapshot>;
    /// Sends a primitive service message (`PeerMsg::Prim`/`PrimReply`) to `peer`; why not, if
    /// it cannot go.
    fn send_prim(
        self: Arc<Self>,
        peer: volley_proto::NodeId,
        msg: volley_proto::PeerMsg,
    ) -> Result<(), String>;
}

#[derive(Default)]
pub(crate) struct Slot {
    pub(crate) done: Mutex<bool>,
    pub(crate) cv: Condvar,
    /// Mirrors `done` for the lock-free spin before parking.
    pub(crate) flag: std::sync::atomic::AtomicBool,
    /// Fired too when it is woken, for a waiter that awaits instead of blocking (serve's
    /// ingress).
    pub(crate) waker: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

pub(crate) struct State {
    pub(crate) sched: Scheduler,
    pub(crate) conns: HashMap<WorkerId, Arc<Outbox>>,
    pub(crate) local: HashMap<WaiterId, Arc<Slot>>,
}

/// A worker's life as seen by the two threads that watch it: its death is reported to the
/// scheduler once it has exited *and* every frame it sent has been read, so a result it sent just
/// before dying is never mistaken for a crash.
#[derive(Default)]
pub(crate) struct Life {
    pub(crate) exit: Option<WorkerExit>,
    pub(crate) connected: bool,
    pub(crate) reader_done: bool,
}

pub(crate) struct Shared {
    pub(crate) state: Mutex<State>,
    pub(crate) ready: Mutex<VecDeque<ObjectId>>,
    pub(crate) ready_cv: Condvar,
    pub(crate) lives: Mutex<HashMap<WorkerId, Life>>,
    pub(crate) sup: Mutex<Sender<SupCmd>>,
    /// The abstract Unix socket workers connect to (and `volley status` asks).
    pub(crate) socket_name: String,
    /// What a worker must show in its `Hello` to be served.
    pub(crate) token: String,
    /// `VOLLEY_STORE` for workers: where to map the store, its size, the inline threshold.
    pub(crate) store_env: String,
    /// The store's memfd, inherited by workers.
    pub(crate) store_fd: i32,
    pub(crate) store: Arc<Store>,
    /// Set once by `Node::shutdown`: threads that see it stop.
    pub(crate) closed: AtomicBool,
    /// The scheduler's clock starts here (see `tick`).
    pub(crate) started: Instant,
    /// The cluster, once this node has joined one.
    pub(crate) links: std::sync::OnceLock<Arc<dyn Links>>,
    /// The cluster's membership and directory while this node is its own head (alone, or the
    /// head of a cluster); unused once it joined another head.
    pub(crate) head: Arc<crate::head::Head>,
    /// Queues (and later channels and locks) made by this node's processes (`prims.rs`).
    pub(crate) prims: crate::prims::Prims,
}

/// Work to do after the state lock is released.
#[derive(Default)]
struct Deferred {
    flush: Vec<Arc<Outbox>>,
    wake: Vec<Arc<Slot>>,
    ready: Vec<ObjectId>,
    sup: Vec<SupCmd>,
    logs: Vec<String>,
    /// Messages for other nodes.
    peer: Vec<Action>,
}

impl Shared {
    /// Asks the cluster's head: this node's own by a call (alone, or as the head), else the
    /// head over the network. Never under the state lock: a member's question is a round trip.
    pub(crate) fn ask_head(&self, req: volley_proto::HeadRequest) -> volley_proto::HeadAnswer {
        if let Some(answer) = crate::cluster::ask_head_here(self, &req) {
            return answer;
        }
        if let volley_proto::HeadRequest::State(q) = &req {
            if self.links.get().is_none() {
                // Alone: events noted outside `with` (none today) and this node's entry.
                self.with(|_, _| ());
                if q.kind == "nodes" {
                    self.head.update_alone(self.local_snapshot());
                }
                if q.kind == "jobs" {
                    // Alone, this node is a driver's: its session is the one job.
                    let started = crate::state::now_ms()
                        .saturating_sub(self.started.elapsed().as_millis() as u64);
                    self.head.local_job(std::process::id(), started);
                }
            }
        }
        match self.links.get() {
            Some(links) => links.ask_head(req),
            None => {
                if req == volley_proto::HeadRequest::Directory {
                    // Alone, the head's entry for this node is refreshed only when asked.
                    self.head.update_alone(self.local_snapshot());
                }
                self.head.serve(req)
            }
        }
    }

    /// A state query about this node's own workers or objects (see `state::kinds`).
    pub(crate) fn state_local(
        &self,
        q: &volley_proto::StateQuery,
    ) -> Result<volley_proto::StateAnswer, String> {
        use crate::state::kinds;
        let me = self.local_snapshot().id;
        match q.kind.as_str() {
            "workers" => {
                let w = self.state.lock().sched.worker_records();
                kinds::workers(q, me, w)
            }
            "objects" => {
                let (objs, _) = self.state.lock().sched.object_records(usize::MAX);
                let spilled: HashSet<ObjectId> = self
                    .store
                    .objects()
                    .into_iter()
                    .filter(|o| o.spilled)
                    .filter_map(|o| o.object)
                    .collect();
                kinds::objects(q, me, objs, |o| spilled.contains(&o.id))
            }
            other => Err(format!("{other} are answered by the head")),
        }
    }

    /// Runs `f` on the state, routes the actions it produced, and carries them out once the lock
    /// is released.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut State, &mut Vec<Action>) -> R) -> R {
        let mut out = Vec::new();
        let mut d = Deferred::default();
        let mut fold = false;
        let (r, held) = {
            let mut st = self.state.lock();
            let since = Instant::now();
            let r = f(&mut st, &mut out);
            route(&mut st, &self.store, out, &mut d);
            if st.sched.has_events() {
                // Logged here, folded into the rows in bulk away from this lock (see `state`).
                fold = self.head.tables.record(&mut st.sched, since);
            }
            (r, since.elapsed())
        };
        if fold {
            self.head.tables.flush();
        }
        slow_lock(held); // Outside the lock: a backtrace takes a while to print.
        self.carry_out(d);
        r
    }

    fn carry_out(&self, d: Deferred) {
        let mut seen = HashSet::new();
        for o in d.flush {
            if seen.insert(Arc::as_ptr(&o)) {
                // A failed write means the worker is gone; its reader notices and reports it.
                let _ = o.flush_soon();
            }
        }
        for s in d.wake {
            s.flag.store(true, Ordering::Release);
            *s.done.lock() = true;
            s.cv.notify_all();
            if let Some(w) = s.waker.lock().take() {
                let _ = w.send(());
            }
        }
        if !d.ready.is_empty() {
            self.ready.lock().extend(d.ready);
            self.ready_cv.notify_all();
        }
        if !d.sup.is_empty() {
            let tx = self.sup.lock();
            for c in d.sup {
                let _ = tx.send(c);
            }
        }
        for line in d.logs {
            crate::diag::event!(Info, "{line}");
        }
        if !d.peer.is_empty() {
            if let Some(c) = self.links.get() {
                c.clone().dispatch_all(d.peer);
            }
        }
    }

    /// Keeps a runtime-environment package: in the scheduler (to pass on to peers) and as
    /// `<packages dir>/<hash>.zip` for this node's workers to unpack.
    /// A package whose bytes do not hash to its name is refused (so a peer cannot swap the code
    /// of a known package), as is one that cannot be stored safely.
    pub(crate) fn register_package(&self, hash: String, bytes: Vec<u8>) -> std::io::Result<()> {
        if !valid_hash(&hash) || !crate::rundir::package_matches(&hash, &bytes) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("runtime_env package {hash:.40}: its content does not match its hash"),
            ));
        }
        crate::rundir::write_package(&hash, &bytes).map_err(|e| {
            std::io::Error::new(e.kind(), format!("could not store runtime_env package: {e}"))
        })?;
        self.state.lock().sched.register_package(hash, Arc::from(bytes));
        Ok(())
    }

    /// This node's snapshot as `volley status` shows it (see `local_status`): with its id and
    /// address in the cluster, or as a driver's own node (id 0) outside one.
    pub(crate) fn local_snapshot(&self) -> NodeSnapshot {
        match self.links.get() {
            Some(c) => c.local_snapshot(),
            None => self.snapshot(NodeId(0), String::new(), true),
        }
    }

    /// The nodes a worker of this node sees (`volley.nodes()` in a task): the cluster's, or
    /// this node alone outside one.
    pub(crate) fn nodes_view(&self) -> Vec<NodeSnapshot> {
        match self.links.get().map(|c| c.view()) {
            Some(v) if !v.is_empty() => v,
            _ => vec![self.local_snapshot()],
        }
    }

    /// This node's metrics now, the one place a [`NodeSnapshot`] is built (the cluster adds its
    /// byte counters). One lock of the state for the scheduler's part.
    pub(crate) fn snapshot(&self, id: NodeId, addr: String, driver: bool) -> NodeSnapshot {
        let st = self.state.lock();
        let stats = st.sched.stats();
        let resources = st.sched.resource_usage();
        let waiting = st.sched.waiting_reasons(8);
        let named = st.sched.named_actors();
        let groups = st.sched.pg_table();
        drop(st);
        let store = self.store.stats();
        let (mem_total, mem_used) = crate::host::memory().unwrap_or((0, 0));
        NodeSnapshot {
            id,
            addr,
            cpu_total_milli: stats.cpu_total_milli,
            cpu_free_milli: stats.cpu_total_milli.saturating_sub(stats.cpu_used_milli),
            resources,
            workers: (stats.workers_alive + stats.workers_starting) as u32,
            store_used: store.used,
            store_capacity: store.capacity,
            tasks_waiting: (stats.tasks_queued + stats.tasks_waiting + stats.tasks_pipelined)
                as u32,
            waiting,
            named,
            bytes_received: 0,
            bytes_served: 0,
            driver,
            pid: std::process::id(),
            groups,
            sched: SchedCounters {
                workers_alive: stats.workers_alive as u32,
                workers_starting: stats.workers_starting as u32,
                workers_blocked: stats.workers_blocked as u32,
                tasks_waiting_deps: stats.tasks_waiting as u32,
                tasks_queued: stats.tasks_queued as u32,
                tasks_assigned: stats.tasks_assigned as u32,
                tasks_pipelined: stats.tasks_pipelined as u32,
                tasks_remote: stats.tasks_remote as u32,
                objects: stats.objects as u32,
                actors: stats.actors as u32,
                cpu_used_milli: stats.cpu_used_milli,
                actor_restarts: stats.actor_restarts,
                worker_crashes: stats.worker_crashes,
            },
            store: StoreCounters {
                pinned: store.pinned,
                objects: store.objects as u64,
                objects_in_memory: store.objects_in_memory as u64,
                objects_spilled: store.objects_spilled as u64,
                spilled_bytes: store.spilled_bytes,
                spill_count: store.spill_count,
                spill_bytes_total: store.spill_bytes_total,
                restore_count: store.restore_count,
                restore_bytes_total: store.restore_bytes_total,
            },
            mem_total,
            mem_used,
            heartbeat_rtt_us: 0,
        }
    }

    pub(crate) fn tick(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        let (shrank, live) = self.with(|st, out| {
            st.sched.tick(now, out);
            (st.sched.shrink(), st.sched.live_entries())
        });
        let shrank = shrank | self.head.tables.shrink() | self.ready.lock().shrink_if_sparse();
        crate::memory::TRIMMER.after_tick(live, shrank, now);
    }

    /// Called by the supervisor when a worker process has been reaped.
    pub(crate) fn worker_exited(&self, id: WorkerId, how: WorkerExit) {
        let report = {
            let mut lives = self.lives.lock();
            let life = lives.entry(id).or_default();
            life.exit = Some(how.clone());
            !life.connected || life.reader_done
        };
        if report {
            self.report_death(id, how);
        }
    }

    pub(crate) fn reader_finished(&self, id: WorkerId) {
        let exit = {
            let mut lives = self.lives.lock();
            let life = lives.entry(id).or_default();
            life.reader_done = true;
            life.exit.clone()
        };
        crate::prims::worker_gone(self, id);
        self.with(|st, _| {
            if let Some(c) = st.conns.remove(&id) {
                c.shutdown();
            }
        });
        match exit {
            Some(how) => self.report_death(id, how),
            // Make sure the process is really gone; its reaping reports the death.
            None => {
                let _ = self.sup.lock().send(SupCmd::Kill(id));
            }
        }
    }

    fn report_death(&self, id: WorkerId, how: WorkerExit) {
        self.lives.lock().remove(&id);
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        self.with(|st, out| {
            st.conns.remove(&id);
            st.sched.worker_died(id, how, out)
        });
        // Its views and unfinished writes die with it.
        self.store.owner_gone(Owner::Worker(id));
    }
}

fn valid_hash(h: &str) -> bool {
    !h.is_empty() && h.len() <= 128 && h.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The largest stored value sent inline when it cannot be mapped (frames stay far below the
/// frame size limit; larger ones fail with `ObjectStoreFull`).
const MAX_INLINE_FALLBACK: u64 = 64 << 20;

/// Pins a stored value for `worker` and gives the copy to send, with the segment's current offset.
/// If it cannot be brought back into memory, its bytes go inline instead; `Err` if even that
/// fails.
fn lease_for<'a>(
    store: &Store,
    worker: WorkerId,
    v: &'a ObjectData,
) -> Result<Cow<'a, ObjectData>, volley_store::StoreError> {
    let Some(loc) = &v.shm else { return Ok(Cow::Borrowed(v)) };
    let mut copy = ObjectData {
        data: Vec::new(),
        buffers: Vec::new(),
        contained: v.contained.clone(),
        shm: None,
        keep: Keep::default(),
    };
    match store.lease(loc.seg, Owner::Worker(worker)) {
        Ok(offset) => {
            let mut loc = loc.clone();
            loc.offset = offset;
            copy.shm = Some(loc);
        }
        Err(e) if loc.size > MAX_INLINE_FALLBACK => return Err(e),
        Err(_) => {
            let bytes = store.read_copy(loc.seg)?;
            copy = ObjectData::from_segment(loc, &bytes, v.contained.clone())
                .ok_or(volley_store::StoreError::Unknown(loc.seg))?;
        }
    }
    Ok(Cow::Owned(copy))
}

/// A value the worker will find unreadable (an offset outside the store), with the reason in
/// its pickle stream's place; used only if a stored value could not be read at all.
fn unreadable(v: &ObjectData, why: &str) -> ObjectData {
    let mut loc = v.shm.clone().unwrap_or_default();
    loc.offset = u64::MAX;
    ObjectData {
        data: why.as_bytes().to_vec(),
        buffers: Vec::new(),
        contained: v.contained.clone(),
        shm: Some(loc),
        keep: Keep::default(),
    }
}

/// Holding the state lock this long delays everything, heartbeats included (a node whose
/// heartbeats stop is declared dead): logged with where it was held, to find out why.
const SLOW_LOCK: Duration = Duration::from_millis(500);

/// At most one backtrace this often: a node that keeps holding its lock long would otherwise
/// spend its time writing them.
const SLOW_LOCK_EVERY: Duration = Duration::from_secs(10);

/// `SLOW_LOCK`, or `VOLLEY_TEST_SLOW_LOCK_MS` (tests: makes every lock use slow enough).
fn slow_lock_limit() -> Duration {
    static LIMIT: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::env::var("VOLLEY_TEST_SLOW_LOCK_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(SLOW_LOCK, Duration::from_millis)
    })
}

fn slow_lock(held: Duration) {
    if held < slow_lock_limit() {
        return;
    }
    static LAST: Mutex<Option<Instant>> = Mutex::new(None);
    static SKIPPED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    {
        // try_lock: another report being made now stands for this one too (and a child forked
        // while a thread of the parent held it never waits for it).
        let Some(mut last) = LAST.try_lock() else {
            SKIPPED.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if last.is_some_and(|t| t.elapsed() < SLOW_LOCK_EVERY) {
            SKIPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *last = Some(Instant::now());
    }
    let skipped = SKIPPED.swap(0, Ordering::Relaxed);
    let at = std::backtrace::Backtrace::force_capture();
    crate::diag::warn!(
        "the node's state lock was held for {held:?} ({skipped} more slow holds since the \
         last report) by\n{at}"
    );
}

fn route(st: &mut State, store: &Store, out: Vec<Action>, d: &mut Deferred) {
    for a in out {
        let worker = match &a {
            Action::Execute { worker, .. }
            | Action::Send { worker, .. }
            | Action::GetReply { worker, .. } => Some(*worker),
            _ => None,
        };
        let conn = worker.and_then(|w| st.conns.get(&w).cloned());
        if worker.is_some() && conn.is_none() {
            continue; // Gone; its death is being reported.
        }
        let (worker, bytes) = match a {
            Action::Execute { worker, spec, function, deps, gpus } => {
                let fix = |v: &ObjectData| -> ObjectData {
                    match lease_for(store, worker, v) {
                        Ok(c) => c.into_owned(),
                        Err(e) => unreadable(v, &e.to_string()),
                    }
                };
                let spec: Cow<TaskSpec> = if spec.args.shm.is_some() {
                    let mut s = (*spec).clone();
                    s.args = fix(&spec.args);
                    Cow::Owned(s)
                } else {
                    Cow::Borrowed(&*spec)
                };
                let deps: Vec<Cow<ObjectData>> = deps
                    .iter()
                    .map(|v| if v.shm.is_some() { Cow::Owned(fix(v)) } else { Cow::Borrowed(&**v) })
                    .collect();
                let deps: Vec<&ObjectData> = deps.iter().map(|d| d.as_ref()).collect();
                (worker, encode_execute(&spec, function.as_deref(), &deps, &gpus))
            }
            Action::Send { worker, msg } => (worker, encode(&msg)),
            Action::GetReply { worker, req, values } => {
                let fixed: Vec<Result<Cow<ObjectData>, Cow<ErrorPayload>>> = values
                    .iter()
                    .map(|v| match v {
                        Ok(x) => lease_for(store, worker, x).map_err(|e| {
                            Cow::Owned(ErrorPayload {
                                kind: ErrorKind::ObjectStoreFull,
                                task_name: String::new(),
                                message: format!("could not read a stored object: {e}"),
                                traceback: String::new(),
                                exception: None,
                                pid: std::process::id(),
                            })
                        }),
                        Err(e) => Err(Cow::Borrowed(&**e)),
                    })
                    .collect();
                let vals: Vec<Result<&ObjectData, &ErrorPayload>> = fixed
                    .iter()
                    .map(|v| v.as_ref().map(|x| x.as_ref()).map_err(|e| e.as_ref()))
                    .collect();
                (worker, encode_get_reply(req, &vals))
            }
            Action::WakeLocal { waiter } => {
                if let Some(s) = st.local.remove(&waiter) {
                    d.wake.push(s);
                }
                continue;
            }
            Action::LocalReady { id } => {
                d.ready.push(id);
                continue;
            }
            Action::Spawn { worker } => {
                d.sup.push(SupCmd::Spawn(worker));
                continue;
            }
            Action::Kill { worker } => {
                d.sup.push(SupCmd::Kill(worker));
                continue;
            }
            Action::Log(line) => {
                d.logs.push(line);
                continue;
            }
            a @ (Action::Spill { .. }
            | Action::PeerDone { .. }
            | Action::PeerCancel { .. }
            | Action::PeerRelease { .. }
            | Action::PeerKill { .. }
            | Action::PeerReserve { .. }
            | Action::PeerReserved { .. }
            | Action::PeerPgRelease { .. }
            | Action::PeerSteal { .. }
            | Action::PeerReturned { .. }
            | Action::PeerStarted { .. }
            | Action::PeerNotice { .. }
            | Action::PeerObject { .. }
            | Action::PeerActorState { .. }
            | Action::Pull { .. }
            | Action::PeerServe { .. }) => {
                d.peer.push(a);
                continue;
            }
        };
        let Some(conn) = conn else { continue };
        match bytes {
            Ok(b) => {
                conn.push(&b);
                d.flush.push(conn);
            }
            Err(e) => crate::diag::event!(
                Error,
                "volley: could not encode a message for worker {}: {e}",
                worker.0
            ),
        }
    }
}
