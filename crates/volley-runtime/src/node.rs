//! The node: scheduler + worker connections + the driver's direct entry points.

mod async_prims;

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use volley_proto::{
    decode, encode, shm_layout, ActorAnswer, ActorRequest, ErrorPayload, FrameReader, FunctionId,
    HeadAnswer, HeadRequest, Hello, Keep, NodeToWorker, ObjectData, ObjectId, ProtoError,
    Reservation, TaskId, TaskResult, TaskSpec, WorkerId, WorkerToNode, PROTOCOL_VERSION,
};
use volley_sched::{
    Action, ActorError, Config, Holder, Scheduler, StreamStep, WaitOwner, WaiterId,
};
use volley_store::sync::{Condvar, Mutex};
use volley_store::{Owner, Store};

use crate::cluster::Cluster;
use crate::head::{Head, MemoryStore};
use crate::logs;
use crate::outbox::Outbox;
use crate::shared::{Shared, Slot, State, SupCmd};
use crate::supervisor::{self, SpawnSpec};
use crate::{RuntimeError, WaitError, CHECK_INTERVAL};

/// How a node is started.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub num_cpus: f64,
    /// The Python interpreter that runs workers, and its arguments (`-m volley._worker`).
    pub python: String,
    pub worker_args: Vec<String>,
    /// Extra environment for workers.
    pub env: Vec<(String, String)>,
    /// Workers inherit the driver's stdout/stderr (true) or write to /dev/null.
    pub log_to_driver: bool,
    pub pipeline_depth: usize,
    pub idle_worker_timeout_ms: u64,
    /// Bytes of shared memory for large objects.
    pub object_store_memory: u64,
    /// Where objects spill when the store is full.
    pub spill_dir: std::path::PathBuf,
    /// Values of at least this many bytes go to the store; smaller ones travel inline.
    pub inline_threshold: u64,
    /// Resources other than CPUs (`"GPU"`, custom names), in thousandths.
    pub resources: Vec<(String, u64)>,
    /// Worker processes at most, blocked ones and actors included.
    pub max_workers: usize,
    /// A task or actor stuck this long (actors or placement groups hold what it needs) gets a
    /// line on stderr saying why, once per function or class; 0: never.
    pub wait_notice_ms: u64,
    /// A worker template the driver forked from itself before starting the node (the first
    /// workers start sooner); None: the supervisor starts one (or execs workers).
    pub template: Option<crate::AdoptedTemplate>,
}

/// A value or error, shared with the node's copy.
pub type SharedResult = Result<Arc<ObjectData>, Arc<ErrorPayload>>;

/// A node running inside this process. See the crate documentation.
pub struct Node {
    shared: Arc<Shared>,
    /// The cluster, once this node has joined one (`shared` knows it only as its `Links`).
    cluster: std::sync::OnceLock<Arc<Cluster>>,
    /// The cluster's membership and directory while this node is its own head (alone, or the
    /// head of a cluster); unused once it joined another head.
    head: Arc<Head>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// serve's HTTP ingress, idle unless this node is the head and serve is started.
    ingress: Arc<crate::serve::Ingress>,
    /// The socket workers connect to (the accept thread holds it too; see `stop_accepting`).
    listener: Mutex<Option<Arc<UnixListener>>>,
}

fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    let ok = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf)).is_ok();
    if !ok {
        use std::hash::{BuildHasher, Hasher};
        for chunk in buf.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(Instant::now().elapsed().as_nanos());
            let v = h.finish().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

impl Node {
    /// Starts the node: binds its socket, starts its threads and spawns one worker per CPU (in
    /// parallel, without waiting for them).
    pub fn start(cfg: NodeConfig) -> Result<Node, RuntimeError> {
        let socket_name = format!("volley-{}-{}", std::process::id(), random_hex(8));
        // An abstract socket: nothing on the filesystem to clean up, even after a SIGKILL.
        let addr = SocketAddr::from_abstract_name(socket_name.as_bytes())?;
        let listener = Arc::new(UnixListener::bind_addr(&addr)?);
        let mut sc = Config::with_cpus(cfg.num_cpus);
        sc.resources = cfg.resources.iter().cloned().collect();
        sc.pipeline_depth = cfg.pipeline_depth;
        sc.idle_worker_timeout_ms = cfg.idle_worker_timeout_ms;
        sc.max_workers = cfg.max_workers.max(1);
        sc.wait_notice_ms = cfg.wait_notice_ms;
        let (tx, rx) = mpsc::channel();
        let store = Store::create(cfg.object_store_memory, &cfg.spill_dir)?;
        let store_fd = store.arena().raw_fd();
        let store_env =
            format!("/proc/self/fd/{store_fd}:{}:{}", store.capacity(), cfg.inline_threshold);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                sched: {
                    let mut s = Scheduler::new(sc);
                    s.set_recording(crate::state::recording_enabled());
                    s
                },
                conns: HashMap::new(),
                local: HashMap::new(),
            }),
            ready: Mutex::new(VecDeque::new()),
            ready_cv: Condvar::new(),
            lives: Mutex::new(HashMap::new()),
            sup: Mutex::new(tx),
            socket_name,
            token: random_hex(16),
            store_env,
            store_fd,
            store,
            closed: AtomicBool::new(false),
            started: Instant::now(),
            links: std::sync::OnceLock::new(),
            head: Arc::new(Head::new(Box::new(MemoryStore::default()))),
            prims: crate::prims::Prims::default(),
        });
        shared.head.job_table().set_python(&cfg.python);
        shared
            .head
            .set_releaser(Arc::new(crate::head::big_values::NodeReleaser(Arc::downgrade(&shared))));
        let spec = SpawnSpec {
            python: cfg.python,
            args: cfg.worker_args,
            env: cfg.env,
            log_to_driver: cfg.log_to_driver,
            adopt: cfg.template,
        };
        let mut threads = Vec::new();
        let (log_tx, log_rx, log_wake) = logs::channel()?;
        threads.push(
            std::thread::Builder::new()
                .name("volley-logs".into())
                .spawn(move || logs::run(log_rx, log_wake))?,
        );
        let s = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("volley-supervisor".into())
                .spawn(move || supervisor::run(s, spec, rx, log_tx))?,
        );
        let s = shared.clone();
        let l = listener.clone();
        threads.push(
            std::thread::Builder::new()
                .name("volley-accept".into())
                .spawn(move || accept_loop(s, l))?,
        );
        shared.with(|st, out| st.sched.start(out));
        let head = shared.head.clone();
        let ingress = crate::serve::Ingress::install(&shared);
        Ok(Node {
            shared,
            cluster: std::sync::OnceLock::new(),
            head,
            threads: Mutex::new(threads),
            ingress,
            listener: Mutex::new(Some(listener)),
        })
    }

    /// Makes this node part of a cluster (see [`crate::ClusterConfig`]); returns once it knows
    /// the cluster's view. Gives this node's id and the address it accepts peers on.
    pub fn join_cluster(&self, cfg: crate::ClusterConfig) -> Result<(u32, String), RuntimeError> {
        if self.cluster.get().is_some() {
            return Err(RuntimeError::Refused("this node is already in a cluster".into()));
        }
        let c = Cluster::start(self.shared.clone(), cfg, self.head.clone())?;
        let r = (c.node_id().0, c.addr().to_string());
        if c.is_head() {
            // A cluster's head runs submitted jobs (head/jobs.rs); a node that cannot keep
            // them in its session directory says so to whoever submits one.
            let holder = crate::head::jobs::NodeHolder(Arc::downgrade(&self.shared));
            self.head.job_table().set_holder(Arc::new(holder));
            if let Err(e) = self.head.job_table().enable(&r.1) {
                crate::diag::event!(Warn, "volley: this head will not run jobs: {e}");
            }
        }
        let _ = self.shared.links.set(c.clone());
        let _ = self.cluster.set(c);
        Ok(r)
    }

    /// Registers a runtime-environment package (see `TaskOptions::runtime_env`).
    pub fn register_package(&self, hash: String, bytes: Vec<u8>) -> Result<(), RuntimeError> {
        Ok(self.shared.register_package(hash, bytes)?)
    }

    /// This node's metrics now, as `volley status` and `volley.nodes()` show them (its id in the
    /// cluster, or 0 on its own).
    pub fn snapshot(&self) -> volley_proto::NodeSnapshot {
        self.shared.local_snapshot()
    }

    /// Asks the cluster's head (its key-value table, its directory): this node's own head by a
    /// function call, or the cluster's head over the network (a round trip, never under a lock).
    pub fn ask_head(&self, req: volley_proto::HeadRequest) -> volley_proto::HeadAnswer {
        if let Some(why) = req.check() {
            return volley_proto::HeadAnswer::Error(why);
        }
        self.shared.ask_head(req)
    }

    /// Writes the state API's task and actor rows under `dir` as they change, until the node
    /// shuts down (see `state::history`); for a cluster's head, in its session directory.
    pub fn record_history(&self, dir: &std::path::Path) -> Result<(), RuntimeError> {
        let t = crate::state::history::start(self.shared.clone(), dir)?;
        self.threads.lock().push(t);
        Ok(())
    }

    /// Answers a state API query (`volley list`, `volley.state`, the dashboard): tasks, actors,
    /// nodes, placement groups and jobs from the cluster's head (this node's own by a call),
    /// workers and objects from this node. A bad kind, key or value is a `Refused` error that
    /// says what is allowed.
    pub fn state_query(
        &self,
        q: &volley_proto::StateQuery,
    ) -> Result<volley_proto::StateAnswer, RuntimeError> {
        crate::state::kinds::check_kind(&q.kind).map_err(RuntimeError::Refused)?;
        match self.shared.ask_head(volley_proto::HeadRequest::State(q.clone())) {
            volley_proto::HeadAnswer::State(mut a) => {
                if q.kind == "tasks" && q.detail {
                    let st = self.shared.state.lock();
                    crate::state::explain_waits(&mut a, |id| st.sched.explain_wait(id));
                }
                Ok(a)
            }
            volley_proto::HeadAnswer::Error(why) => Err(RuntimeError::Refused(why)),
            other => {
                Err(RuntimeError::Refused(format!("unexpected answer from the head: {other:?}")))
            }
        }
    }

    /// The time of day (ms since the Unix epoch) on the clock this node's task rows are
    /// stamped with: a row that changes after this reading has a later `changed_ms`.
    pub fn rows_clock_ms(&self) -> u64 {
        self.head.tables.now_ms()
    }

    /// The Prometheus text of the tasks that ended in this node's tables (the cluster's, on
    /// its head): counts by final state, histograms of run time and scheduling latency.
    pub fn task_metrics(&self) -> String {
        self.head.tables.metrics_text()
    }

    /// The Prometheus text of serve's ingress and controller (empty unless this node served).
    pub fn serve_metrics(&self) -> String {
        self.ingress.metrics_text()
    }

    /// serve's figures for the dashboard's Serve view (`/api/v0/serve`).
    pub fn serve_view(&self) -> serde_json::Value {
        self.ingress.view()
    }

    /// The cluster's head, with this node's own entry fresh, if this node is its own head
    /// (alone, or the head of a cluster); `None` on a member of another head's cluster.
    pub fn head(&self) -> Option<Arc<Head>> {
        match self.cluster.get() {
            Some(c) if !c.is_head() => return None,
            Some(_) => self.head.refresh_self(self.shared.local_snapshot()),
            None => self.head.update_alone(self.shared.local_snapshot()),
        }
        Some(self.head.clone())
    }

    /// The cluster as this node last heard it from the head, a snapshot per node (empty outside
    /// a cluster).
    pub fn cluster_view(&self) -> Vec<volley_proto::NodeSnapshot> {
        self.cluster.get().map(|c| c.view()).unwrap_or_default()
    }

    /// The node's shared-memory object store.
    pub fn store(&self) -> &Arc<Store> {
        &self.shared.store
    }

    pub fn register_function(&self, id: FunctionId, bytes: &[u8]) {
        let mut st = self.shared.state.lock();
        if !st.sched.has_function(&id) {
            st.sched.register_function(id, Arc::from(bytes));
        }
    }

    /// Submits a task; the driver holds one reference to each return.
    pub fn submit(&self, spec: TaskSpec) {
        self.shared.with(|st, out| st.sched.submit(Holder::Local, spec, out));
    }

    pub fn put(&self, id: ObjectId, data: ObjectData) {
        self.shared.with(|st, out| st.sched.put(Holder::Local, id, data, out));
    }

    pub fn incref(&self, ids: &[ObjectId]) {
        self.shared.state.lock().sched.incref(Holder::Local, ids);
    }

    pub fn decref(&self, ids: &[ObjectId]) {
        self.shared.with(|st, out| st.sched.decref(Holder::Local, ids, out));
    }

    /// Cancels the task behind `id`; true if the request went to the node running it (it
    /// takes effect when that node has it).
    pub fn cancel(&self, id: ObjectId, force: bool) -> bool {
        self.shared.with(|st, out| {
            let elsewhere = st.sched.runs_elsewhere(id);
            st.sched.cancel(id, force, out);
            elsewhere
        })
    }

    /// Creates, finds, kills or describes an actor for this process.
    pub fn actor(&self, request: ActorRequest) -> ActorAnswer {
        match request {
            ActorRequest::Head(req) => return ActorAnswer::Head(self.ask_head(req)),
            ActorRequest::Lookup { name, namespace } => {
                return lookup(&self.shared, Holder::Local, name, namespace)
            }
            ActorRequest::Create(spec) => {
                let claim = claim_name(&self.shared, Holder::Local, &spec);
                if let Err(answer) = claim {
                    return *answer;
                }
                let request = ActorRequest::Create(spec);
                let answer = self
                    .shared
                    .with(|st, out| actor_request(&mut st.sched, Holder::Local, request, out));
                if let (ActorAnswer::Error(_), Ok(Some(release))) = (&answer, claim) {
                    self.shared.ask_head(release);
                }
                report_created(&self.shared, &answer);
                return answer;
            }
            _ => {}
        }
        self.shared.with(|st, out| actor_request(&mut st.sched, Holder::Local, request, out))
    }

    /// Runs an op of the primitive service (queues) for this process and waits for its answer;
    /// a parked op is cancelled after `timeout` (answered `Empty`/`Full`) or an interrupt.
    pub fn prim<E>(
        &self,
        op: volley_proto::PrimOp,
        timeout: Option<Duration>,
        check: impl FnMut() -> Result<(), E>,
    ) -> Result<volley_proto::PrimResult, WaitError<E>> {
        crate::prims::call_local(&self.shared, op, timeout, check)
    }

    /// Waits for `item` of a stream this process is the caller of (see `Scheduler::stream_next`).
    pub fn stream_next<E>(
        &self,
        item: ObjectId,
        timeout: Option<Duration>,
        check: impl FnMut() -> Result<(), E>,
    ) -> Result<StreamStep, WaitError<E>> {
        let ended = self.block_with(
            |st, out| st.sched.stream_next(Holder::Local, WaitOwner::Local, item, out),
            timeout,
            check,
        )?;
        if ended {
            return Ok(StreamStep::End);
        }
        Ok(self.shared.with(|st, out| st.sched.stream_take(Holder::Local, item, out)))
    }

    /// Gives back the items of a stream from `from` on.
    pub fn stream_release(&self, task: TaskId, from: u32) {
        self.shared.with(|st, out| st.sched.stream_release(Holder::Local, task, from, out));
    }

    /// Blocks until every object in `ids` is ready and returns their values or errors.
    pub fn get<E>(
        &self,
        ids: &[ObjectId],
        timeout: Option<Duration>,
        check: impl FnMut() -> Result<(), E>,
    ) -> Result<Vec<SharedResult>, WaitError<E>> {
        self.block_on(ids, usize::MAX, true, timeout, check)?;
        let st = self.shared.state.lock();
        Ok(ids.iter().map(|id| st.sched.result_of(id)).collect())
    }

    /// Blocks until `num` of `ids` are ready (or the timeout passes); returns readiness per id.
    pub fn wait<E>(
        &self,
        ids: &[ObjectId],
        num: usize,
        timeout: Option<Duration>,
        check: impl FnMut() -> Result<(), E>,
    ) -> Result<Vec<bool>, WaitError<E>> {
        match self.block_on(ids, num, false, timeout, check) {
            Ok(()) | Err(WaitError::Timeout) => {}
            Err(e) => return Err(e),
        }
        let st = self.shared.state.lock();
        Ok(ids.iter().map(|id| st.sched.is_ready(id)).collect())
    }

    fn block_on<E>(
        &self,
        ids: &[ObjectId],
        num: usize,
        fetch: bool,
        timeout: Option<Duration>,
        check: impl FnMut() -> Result<(), E>,
    ) -> Result<(), WaitError<E>> {
        let register = |st: &mut State, out: &mut Vec<Action>| {
            Some(st.sched.add_waiter(WaitOwner::Local, ids, num, fetch, out))
        };
        self.block_with(register, timeout, check).map(|_| ())
    }

    /// Registers a local waiter with `register` and blocks until it is woken. `Ok(true)` if
    /// `register` registered nothing.
    fn block_with<E>(
        &self,
        register: impl FnOnce(&mut State, &mut Vec<Action>) -> Option<WaiterId>,
        timeout: Option<Duration>,
        mut check: impl FnMut() -> Result<(), E>,
    ) -> Result<bool, WaitError<E>> {
        let slot = Arc::new(Slot::default());
        let (wid, now) = self.shared.with(|st, out| {
            let Some(wid) = register(st, out) else { return (None, true) };
            let before = out.len();
            out.retain(|a| !matches!(a, Action::WakeLocal { waiter } if *waiter == wid));
            let now = out.len() < before;
            if !now {
                st.local.insert(wid, slot.clone());
            }
            (Some(wid), now)
        });
        let Some(wid) = wid else { return Ok(true) };
        if now {
            return Ok(false);
        }
        // What we wait for may depend on a frame still queued for the flusher thread.
        crate::outbox::flush_queued();
        let deadline = timeout.map(|t| Instant::now() + t);
        // A short result usually arrives within a few tens of microseconds; spinning that long
        // saves the wake-up of a parked thread, which costs as much again on a small VM (unless
        // spins keep failing: see `spin`).
        if crate::spin::spin_wait(|| slot.flag.load(Ordering::Acquire)) {
            return Ok(false);
        }
        let abandon = |shared: &Shared| {
            shared.with(|st, _| {
                st.sched.remove_local_waiter(wid);
                st.local.remove(&wid);
            })
        };
        loop {
            {
                let mut done = slot.done.lock();
                if *done {
                    return Ok(false);
                }
                let mut step = CHECK_INTERVAL;
                if let Some(d) = deadline {
                    step = step.min(d.saturating_duration_since(Instant::now()));
                }
                done = slot.cv.wait_for(done, step);
                if *done {
                    return Ok(false);
                }
            }
            if let Err(e) = check() {
                abandon(&self.shared);
                return Err(WaitError::Interrupted(e));
            }
            if self.shared.closed.load(Ordering::Acquire) {
                return Err(WaitError::Closed);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                abandon(&self.shared);
                // It may have completed just now.
                return if *slot.done.lock() { Ok(false) } else { Err(WaitError::Timeout) };
            }
        }
    }

    /// Asks for `next_ready` to report each of `ids` once it is ready.
    pub fn watch(&self, ids: &[ObjectId]) {
        self.shared.with(|st, out| st.sched.watch(Holder::Local, ids, out));
    }

    /// Objects watched with [`Node::watch`] that became ready; waits up to `timeout` for one.
    pub fn next_ready(&self, timeout: Duration) -> Vec<ObjectId> {
        crate::outbox::flush_queued();
        let mut q = self.shared.ready.lock();
        if q.is_empty() && !self.shared.closed.load(Ordering::Acquire) {
            q = self.shared.ready_cv.wait_for(q, timeout);
        }
        q.drain(..).collect()
    }

    pub fn worker_pids(&self) -> Vec<u32> {
        self.shared.state.lock().sched.worker_pids().into_iter().map(|(_, p)| p).collect()
    }

    pub fn stats(&self) -> volley_sched::Stats {
        self.shared.state.lock().sched.stats()
    }

    /// Why the tasks behind `ids` have not started, a line each for those still waiting here
    /// (for the message of a `get` that timed out); at most `limit` distinct lines.
    pub fn explain_wait(&self, ids: &[ObjectId], limit: usize) -> Vec<String> {
        let st = self.shared.state.lock();
        let mut lines: Vec<String> = Vec::new();
        for id in ids {
            if lines.len() >= limit {
                break;
            }
            if let Some(l) = st.sched.explain_wait(*id) {
                if !lines.contains(&l) {
                    lines.push(l);
                }
            }
        }
        drop(st);
        if let Some((head, lost)) = self.cluster.get().and_then(|c| c.head_unreached()) {
            lines.push(format!(
                "this node has not reached the cluster's head at {head} for {:.0} s (it keeps \
                 trying): it knows only the nodes it heard of before, less those it lost since",
                lost.as_secs_f64()
            ));
        }
        lines
    }

    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Stops every worker (politely, then with SIGKILL after `grace`) and every thread.
    pub fn shutdown(&self, grace: Duration) {
        if self.shared.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.ingress.stop();
        // A head's submitted jobs end with it (their drivers would have no cluster).
        self.head.job_table().shutdown(grace);
        if let Some(c) = self.cluster.get() {
            c.close();
        }
        let bye = encode(&NodeToWorker::Shutdown).unwrap_or_default();
        let conns: Vec<Arc<Outbox>> = self.shared.state.lock().conns.values().cloned().collect();
        for c in &conns {
            let _ = c.send(&bye);
        }
        let _ = self.shared.sup.lock().send(SupCmd::Stop(grace));
        stop_accepting(&self.listener);
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
        for c in &conns {
            c.shutdown();
        }
        self.shared.ready_cv.notify_all();
        let mut st = self.shared.state.lock();
        for s in st.local.values() {
            s.cv.notify_all();
        }
        st.conns.clear();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown(Duration::from_millis(500));
    }
}

/// Ends the `accept` an accept loop waits in on the listener in `slot` (the loop sees its
/// node closed then, ends, and drops its own `Arc`), and lets go of it: once that loop has ended
/// the socket is closed (a TCP port is free again). Not by connecting to the socket to wake the
/// loop: that needs a descriptor, and `volley.shutdown()` in a process out of them waited for
/// the loop for good.
pub(crate) fn stop_accepting<L: std::os::fd::AsRawFd>(slot: &Mutex<Option<Arc<L>>>) {
    if let Some(l) = slot.lock().take() {
        // SAFETY: `shutdown(2)` on a socket we hold open (the `Arc`); no memory is involved.
        unsafe { libc::shutdown(l.as_raw_fd(), libc::SHUT_RDWR) };
    }
}

/// Connections to the node's socket refused because another user made them.
static FOREIGN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn accept_loop(shared: Arc<Shared>, listener: Arc<UnixListener>) {
    let mut backoff = Duration::ZERO;
    for stream in listener.incoming() {
        if shared.closed.load(Ordering::Acquire) {
            return;
        }
        let stream = match stream {
            Ok(s) => s,
            // Out of descriptors, accepting again at once fails again with a core spinning:
            // wait, longer each time (5 ms to 0.5 s), for some to be freed.
            Err(_) => {
                backoff = (backoff * 2).clamp(Duration::from_millis(5), Duration::from_millis(500));
                std::thread::sleep(backoff);
                continue;
            }
        };
        backoff = Duration::ZERO;
        // The socket is abstract: any local user may connect. Only this user's processes (its
        // workers, `volley status`) may talk to the node; another user's connection is closed
        // before a thread or a read is spent on it, and counted in the node's log.
        if let Some(uid) = crate::local_status::foreign_uid(&stream) {
            let n = FOREIGN.fetch_add(1, Ordering::Relaxed) + 1;
            if n <= 3 || n.is_multiple_of(100) {
                crate::diag::warn!(
                    "refused a connection to the node from another user (uid {uid}; {n} so far)"
                );
            }
            continue;
        }
        let s = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("volley-conn".into())
            .spawn(move || serve_worker(s, stream));
        if let Err(e) = spawned {
            crate::diag::event!(Error, "volley: could not start a connection thread: {e}");
        }
    }
}

/// A worker's handshake (`Some`), or a status query from `volley status`, answered (`None`).
fn handshake(shared: &Shared, stream: &mut UnixStream) -> Result<Option<Hello>, String> {
    stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    let frame = volley_proto::read_frame(stream, volley_proto::MAX_HANDSHAKE_FRAME)
        .map_err(|e| e.to_string())?;
    if crate::local_status::is_query(&frame) {
        crate::local_status::answer(shared, stream, &frame)?;
        return Ok(None);
    }
    let (hello, token): (Hello, String) = decode(&frame).map_err(|e| e.to_string())?;
    if hello.version != PROTOCOL_VERSION {
        return Err(ProtoError::VersionMismatch { ours: PROTOCOL_VERSION, theirs: hello.version }
            .to_string());
    }
    if !constant_time_eq(token.as_bytes(), shared.token.as_bytes()) {
        return Err("wrong session token".into());
    }
    {
        let mut lives = shared.lives.lock();
        let life = lives.entry(hello.worker_id).or_default();
        if life.exit.is_some() || life.connected {
            return Err(format!("worker {} is not expected", hello.worker_id.0));
        }
        life.connected = true;
    }
    let _ = shared.sup.lock().send(SupCmd::Connected(hello.worker_id));
    let reply =
        Hello { version: PROTOCOL_VERSION, worker_id: hello.worker_id, pid: std::process::id() };
    let bytes = encode(&reply).map_err(|e| e.to_string())?;
    volley_proto::write_frame(stream, &bytes).map_err(|e| e.to_string())?;
    stream.set_read_timeout(None).map_err(|e| e.to_string())?;
    Ok(Some(hello))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn serve_worker(shared: Arc<Shared>, mut stream: UnixStream) {
    if shared.closed.load(Ordering::Acquire) {
        return;
    }
    let hello = match handshake(&shared, &mut stream) {
        Ok(Some(h)) => h,
        Ok(None) => return,
        Err(e) => {
            // A worker killed while it connected, or a local process without the token: for
            // the node's log, not the user's terminal.
            crate::diag::warn!("refused a connection to the node: {e}");
            return;
        }
    };
    let wid = hello.worker_id;
    let stream = Arc::new(stream);
    let outbox = Arc::new(Outbox::new(stream.clone()));
    let known = shared.with(|st, out| {
        st.conns.insert(wid, outbox);
        st.sched.worker_connected(wid, hello.pid, out)
    });
    if known {
        let mut reader = FrameReader::new(&*stream);
        let mut batch = Vec::new();
        loop {
            // Every frame one read brought in is handled under one lock of the state: a burst of
            // results costs one lock, not one each.
            let mut failed = None;
            let mut closed = false;
            loop {
                let msg = match reader.next_frame() {
                    Ok(frame) => decode::<WorkerToNode>(frame),
                    Err(ProtoError::Closed) => {
                        closed = true;
                        break;
                    }
                    // A killed worker's socket may be reset rather than closed.
                    Err(ProtoError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                        closed = true;
                        break;
                    }
                    Err(e) => Err(e),
                };
                match msg
                    .map_err(|e| e.to_string())
                    .and_then(|m| prepare(&shared, wid, m, &mut batch))
                {
                    Ok(Some(m)) => batch.push(m),
                    Ok(None) => {}
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
                if batch.len() >= MAX_BATCH || !reader.has_buffered_frame() {
                    break;
                }
            }
            if !batch.is_empty() {
                shared.with(|st, out| {
                    for m in batch.drain(..) {
                        apply(&mut st.sched, wid, m, out);
                    }
                });
            }
            if !reader.has_buffered_frame() {
                // About to block in a read: what the batch sent out in a burst goes now.
                crate::outbox::flush_queued();
            }
            if let Some(e) = failed {
                if !shared.closed.load(Ordering::Acquire) {
                    crate::diag::event!(
                        Warn,
                        "volley: dropping worker {} after a bad frame: {e}",
                        wid.0
                    );
                }
                break;
            }
            if closed {
                break;
            }
        }
    }
    shared.reader_finished(wid);
}

/// Adopts a value a worker wrote into the store: the segment becomes a stored value, kept while
/// `v` (or a clone) exists.
fn seal(
    shared: &Shared,
    w: WorkerId,
    v: &mut ObjectData,
    object: Option<ObjectId>,
) -> Result<(), String> {
    let Some(loc) = &v.shm else { return Ok(()) };
    let (_, total) = shm_layout(loc.data_len, &loc.buffer_lens);
    if total != loc.size {
        return Err(format!("segment {} has a layout of {total} bytes, not {}", loc.seg, loc.size));
    }
    let sealed = shared
        .store
        .seal(Owner::Worker(w), loc.seg, loc.size, object)
        .map_err(|e| e.to_string())?;
    v.keep = Keep::new(sealed);
    Ok(())
}

/// The most frames from one worker handled under one lock of the state.
const MAX_BATCH: usize = 256;

/// Does the part of handling worker `w`'s message that needs no scheduler (adopting stored
/// values, allocations, releases); gives back the message if the scheduler must see it. An `Err`
/// is a protocol violation that ends the connection.
fn prepare(
    shared: &Arc<Shared>,
    w: WorkerId,
    mut msg: WorkerToNode,
    batch: &mut Vec<WorkerToNode>,
) -> Result<Option<WorkerToNode>, String> {
    match &mut msg {
        WorkerToNode::Done { task, result: TaskResult::Ok(values) } => {
            for (i, v) in values.iter_mut().enumerate() {
                seal(shared, w, v, Some(ObjectId::for_return(*task, i as u32 + 1)))?;
            }
        }
        WorkerToNode::Put { id, data } => seal(shared, w, data, Some(*id))?,
        WorkerToNode::Yield { task, index, data } => {
            seal(shared, w, data, Some(ObjectId::for_return(*task, *index)))?
        }
        WorkerToNode::Submit { spec } => seal(shared, w, &mut spec.args, None)?,
        WorkerToNode::Alloc { req, size } => {
            let result = shared.store.alloc(Owner::Worker(w), *size).map_err(|e| e.to_string());
            let reply = encode(&NodeToWorker::AllocReply { req: *req, result })
                .map_err(|e| e.to_string())?;
            let conn = shared.state.lock().conns.get(&w).cloned();
            if let Some(c) = conn {
                let _ = c.send(&reply);
            }
            return Ok(None);
        }
        WorkerToNode::Release { segs } => {
            for seg in segs.iter() {
                shared.store.release(*seg, Owner::Worker(w));
            }
            return Ok(None);
        }
        // A channel message's hold: in the scheduler's turn below, after this worker's `Put`.
        WorkerToNode::Prim { op: volley_proto::PrimOp::ChanHold { .. }, .. } => {}
        WorkerToNode::Prim { req, op } => {
            // The primitive service's, under its own lock, in this worker's order.
            let op = std::mem::replace(op, volley_proto::PrimOp::Cancel);
            crate::prims::serve_worker(shared, w, *req, op);
            return Ok(None);
        }
        WorkerToNode::Actor { req, request: ActorRequest::Head(q) } => {
            // Not the scheduler's, and a member's question is a round trip: answered from a
            // thread of its own, so this worker's other messages are not held up behind it.
            // Alone, the node is its own head and a key-value operation is a short call under
            // the head's lock: answered here (a thread per `SharedDict` operation cost more
            // than the operation).
            let q = std::mem::replace(q, HeadRequest::Directory);
            if shared.links.get().is_none() && q.is_quick_kv() {
                let answer = ActorAnswer::Head(shared.ask_head(q));
                let reply = encode(&NodeToWorker::ActorReply { req: *req, answer })
                    .map_err(|e| e.to_string())?;
                if let Some(c) = shared.state.lock().conns.get(&w).cloned() {
                    let _ = c.send(&reply);
                }
                return Ok(None);
            }
            answer_from_thread(shared, w, *req, move |s| ActorAnswer::Head(s.ask_head(q)))?;
            return Ok(None);
        }
        WorkerToNode::Actor { req, request: ActorRequest::Create(spec) }
            if shared.links.get().is_some() =>
        {
            // A name is claimed at the head before the scheduler sees the creation, here in
            // the reader so that the worker's messages keep their order (a named creation is
            // rare, and a round trip).
            let named =
                matches!(&spec.actor, volley_proto::ActorPart::Create(o) if o.name.is_some());
            let answer = match claim_name(shared, Holder::Worker(w), spec) {
                Err(answer) => *answer,
                Ok(_) if !named => return Ok(Some(msg)),
                Ok(claim) => {
                    // Created here, after the messages before it (the class's registration),
                    // so that the head lists the actor before the worker hears it exists.
                    let (h, spec) = (Holder::Worker(w), spec.clone());
                    let answer = shared.with(|st, out| {
                        for m in batch.drain(..) {
                            apply(&mut st.sched, w, m, out);
                        }
                        actor_request(&mut st.sched, h, ActorRequest::Create(spec), out)
                    });
                    if let (ActorAnswer::Error(_), Some(release)) = (&answer, claim) {
                        shared.ask_head(release);
                    }
                    report_created(shared, &answer);
                    answer
                }
            };
            let reply = encode(&NodeToWorker::ActorReply { req: *req, answer })
                .map_err(|e| e.to_string())?;
            let conn = shared.state.lock().conns.get(&w).cloned();
            if let Some(c) = conn {
                let _ = c.send(&reply);
            }
            return Ok(None);
        }
        WorkerToNode::Actor { req, request: ActorRequest::Lookup { name, namespace } }
            if shared.links.get().is_some() =>
        {
            // In a cluster, a name this node does not know is asked of the head (a round trip).
            let (name, namespace) = (std::mem::take(name), std::mem::take(namespace));
            let h = Holder::Worker(w);
            answer_from_thread(shared, w, *req, move |s| lookup(s, h, name, namespace))?;
            return Ok(None);
        }
        _ => {}
    }
    Ok(Some(msg))
}

/// Answers worker `w`'s actor request `req` from a thread of its own (a question to the head
/// may be a round trip over the network, which the worker's reader must not wait for).
fn answer_from_thread(
    shared: &Arc<Shared>,
    w: WorkerId,
    req: u64,
    answer: impl FnOnce(&Shared) -> ActorAnswer + Send + 'static,
) -> Result<(), String> {
    let shared = shared.clone();
    let run = move || {
        let answer = answer(&shared);
        let reply = encode(&NodeToWorker::ActorReply { req, answer });
        let conn = shared.state.lock().conns.get(&w).cloned();
        if let (Ok(reply), Some(c)) = (reply, conn) {
            let _ = c.send(&reply);
        }
    };
    std::thread::Builder::new()
        .name("volley-head-ask".into())
        .spawn(run)
        .map(|_| ())
        .map_err(|e| format!("no thread to ask the head: {e}"))
}

/// In a cluster, claims a named actor's name at the head before this node creates it, so that
/// of two drivers (or tasks) on different nodes racing for one name exactly one gets it:
/// `Err` with the answer for a name another node holds (with `get_if_exists` the existing
/// actor, else the error a duplicate name gets on one node), else the request that gives the
/// claim back if the creation fails. Alone, or with no head to ask, the scheduler decides as
/// on one node.
fn claim_name(
    shared: &Shared,
    holder: Holder,
    spec: &TaskSpec,
) -> Result<Option<HeadRequest>, Box<ActorAnswer>> {
    let (volley_proto::ActorPart::Create(o), Some(links)) = (&spec.actor, shared.links.get())
    else {
        return Ok(None);
    };
    let Some(name) = o.name.clone() else { return Ok(None) };
    let (namespace, node) = (o.namespace.clone(), links.node_id());
    let req = HeadRequest::ReserveName { namespace: namespace.clone(), name: name.clone(), node };
    match shared.ask_head(req) {
        HeadAnswer::Reservation(Reservation::Taken) => {
            let existing = o.get_if_exists.then(|| existing(shared, holder, &namespace, &name));
            let error =
                || ActorAnswer::Error(ActorError::NameTaken { name, namespace }.to_string());
            Err(Box::new(existing.flatten().unwrap_or_else(error)))
        }
        HeadAnswer::Reservation(Reservation::Reserved) => {
            Ok(Some(HeadRequest::ReleaseName { namespace, name, node }))
        }
        _ => Ok(None),
    }
}

/// In a cluster, tells the head of a named actor this node just created (`answer`), where it
/// runs (here, or the peer it was placed on), as the next heartbeat of that node would list
/// it, so that `get_actor` on any node finds it as soon as the creation returned rather than a
/// heartbeat later. Without an answer from the head, that heartbeat lists it.
fn report_created(shared: &Shared, answer: &ActorAnswer) {
    let ActorAnswer::Found { actor, created: true, .. } = answer else { return };
    let Some(links) = shared.links.get() else {
        return; // Alone: this node's scheduler answers every lookup.
    };
    let Some(entry) = shared.with(|st, _| st.sched.named_entry(*actor)) else { return };
    let me = links.node_id();
    shared.ask_head(if entry.node == me {
        HeadRequest::NameCreated(entry)
    } else {
        HeadRequest::NamePlaced { actor: entry, by: me }
    });
}

/// The actor another node holds the name of, for `get_if_exists`: a route to it and a
/// reference for `holder`. A name only claimed so far is listed once its creation returns
/// there (or with a heartbeat of the node hosting it), so the head is asked again for a few
/// seconds; `None` if it never shows up (the creation failed there).
fn existing(shared: &Shared, holder: Holder, namespace: &str, name: &str) -> Option<ActorAnswer> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let req = HeadRequest::LookupName { namespace: namespace.into(), name: name.into() };
        if let HeadAnswer::Named(Some(n)) = shared.ask_head(req) {
            let (actor, meta) = shared.with(|st, _| st.sched.route_named(holder, &n))?;
            return Some(ActorAnswer::Found { actor, meta, created: false });
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Finds a named actor for `holder`: this node's own, else (in a cluster) the one the head
/// lists, wherever it runs. The head is asked outside the state lock.
fn lookup(shared: &Shared, holder: Holder, name: String, namespace: String) -> ActorAnswer {
    let request = ActorRequest::Lookup { name: name.clone(), namespace: namespace.clone() };
    let here = shared.with(|st, out| actor_request(&mut st.sched, holder, request, out));
    if !matches!(here, ActorAnswer::NotFound) || shared.links.get().is_none() {
        return here;
    }
    let HeadAnswer::Named(Some(n)) = shared.ask_head(HeadRequest::LookupName { namespace, name })
    else {
        return ActorAnswer::NotFound;
    };
    match shared.with(|st, _| st.sched.route_named(holder, &n)) {
        Some((actor, meta)) => ActorAnswer::Found { actor, meta, created: false },
        None => ActorAnswer::NotFound,
    }
}

/// The scheduler's part of handling worker `w`'s message.
fn apply(s: &mut Scheduler, w: WorkerId, msg: WorkerToNode, out: &mut Vec<Action>) {
    let h = Holder::Worker(w);
    {
        match msg {
            WorkerToNode::Done { task, result } => s.task_done(w, task, result, out),
            WorkerToNode::Returned { tasks } => s.tasks_returned(w, &tasks, out),
            WorkerToNode::Submit { spec } => s.submit(h, spec, out),
            WorkerToNode::RegisterFunction { id, bytes } => {
                if !s.has_function(&id) {
                    s.register_function(id, Arc::from(bytes.into_vec()));
                }
            }
            WorkerToNode::Put { id, data } => s.put(h, id, data, out),
            WorkerToNode::Get { req, ids } => {
                s.add_waiter(WaitOwner::Worker { worker: w, req }, &ids, usize::MAX, true, out);
            }
            WorkerToNode::Wait { req, ids, num_returns } => {
                s.add_waiter(
                    WaitOwner::Worker { worker: w, req },
                    &ids,
                    num_returns as usize,
                    false,
                    out,
                );
            }
            WorkerToNode::CancelRequest { req } => s.cancel_request(w, req, out),
            WorkerToNode::Watch { ids } => s.watch(h, &ids, out),
            WorkerToNode::IncRef { ids } => s.incref(h, &ids),
            WorkerToNode::DecRef { ids } => s.decref(h, &ids, out),
            WorkerToNode::Cancel { id, force } => s.cancel(id, force, out),
            WorkerToNode::Actor { req, request } => {
                let answer = actor_request(s, h, request, out);
                out.push(Action::Send { worker: w, msg: NodeToWorker::ActorReply { req, answer } });
            }
            WorkerToNode::Yield { task, index, data } => s.stream_item(w, task, index, data, out),
            WorkerToNode::StreamNext { req, item } => {
                if s.stream_next(h, WaitOwner::Worker { worker: w, req }, item, out).is_none() {
                    let msg = NodeToWorker::WaitReply { req, ready: Vec::new() };
                    out.push(Action::Send { worker: w, msg });
                }
            }
            WorkerToNode::StreamRelease { task, from } => s.stream_release(h, task, from, out),
            WorkerToNode::Retire => s.worker_retiring(w, out),
            WorkerToNode::Prim { req, op: volley_proto::PrimOp::ChanHold { ids, hold } } => {
                // Held for the node, not the worker: the message outlives its sender.
                if hold {
                    s.incref(Holder::Local, &ids);
                } else {
                    s.decref(Holder::Local, &ids, out);
                }
                let msg = NodeToWorker::PrimReply { req, result: volley_proto::PrimResult::Done };
                out.push(Action::Send { worker: w, msg });
            }
            // Taken before the scheduler (`prepare`): the primitive service's.
            WorkerToNode::Prim { .. } => {}
            WorkerToNode::Alloc { .. } | WorkerToNode::Release { .. } => {}
        }
    }
}

/// Carries out an actor request from `holder`.
fn actor_request(
    s: &mut Scheduler,
    holder: Holder,
    request: ActorRequest,
    out: &mut Vec<Action>,
) -> ActorAnswer {
    match request {
        ActorRequest::Create(spec) => match s.create_actor(holder, *spec, out) {
            Ok((actor, created)) => {
                let meta = s.actor_meta(actor).unwrap_or_default();
                ActorAnswer::Found { actor, meta, created }
            }
            Err(e) => ActorAnswer::Error(e.to_string()),
        },
        ActorRequest::Lookup { name, namespace } => match s.lookup_actor(&name, &namespace) {
            Some((actor, meta)) => {
                // The caller's new handle holds a reference, counted here so the actor cannot
                // vanish between the answer and the handle.
                s.incref(holder, &[actor.object()]);
                ActorAnswer::Found { actor, meta, created: false }
            }
            None => ActorAnswer::NotFound,
        },
        ActorRequest::Kill { actor, no_restart } => {
            s.kill_actor(actor, no_restart, out);
            ActorAnswer::Done
        }
        ActorRequest::State { actor } => match s.actor_info(actor) {
            Some(info) => ActorAnswer::State(info),
            None => ActorAnswer::NotFound,
        },
        ActorRequest::PgCreate(spec) => match s.create_pg(holder, *spec, out) {
            Ok(()) => ActorAnswer::Done,
            Err(e) => ActorAnswer::Error(e),
        },
        ActorRequest::PgRemove { pg } => {
            s.remove_pg(&pg, out);
            ActorAnswer::Done
        }
        ActorRequest::PgTable => ActorAnswer::Pgs(s.pg_table()),
        // Taken before the scheduler (`prepare`, `Node::actor`): it is not the scheduler's.
        ActorRequest::Head(_) => {
            ActorAnswer::Head(HeadAnswer::Error("a head request reached the scheduler".into()))
        }
    }
}
