//! A worker process's connection to its node.
//!
//! A reader thread owns the receiving side. Tasks it receives wait in a local queue until the
//! main thread takes them; a `Revoke` removes tasks the main thread has not started yet (this is
//! how the node steals work back and frees tasks queued behind one that blocked); a `Cancel`
//! interrupts the running task through a callback; replies to `Get`/`Wait` are matched to their
//! request. If the node goes away, the process exits at once.

mod async_prims;

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use volley_proto::{
    decode, encode, ErrorKind, ErrorPayload, FrameReader, FunctionId, Hello, IdGenerator,
    NodeToWorker, ObjectData, ObjectId, ProtoError, TaskId, TaskResult, TaskSpec, WorkerId,
    WorkerToNode, PROTOCOL_VERSION,
};
use volley_store::sync::{Condvar, Mutex};

use volley_store::Arena;

use crate::outbox::Outbox;
use crate::{RuntimeError, WaitError, CHECK_INTERVAL};

/// How often a cancelled task that still runs is interrupted again (see
/// [`WorkerConn::keep_interrupting`]). Long enough for a task's own handling of the first
/// `KeyboardInterrupt` (a `finally` that cleans up) to finish undisturbed in the usual case.
const REINTERRUPT: Duration = Duration::from_secs(1);

/// The most items one `get` from a queue asks its node for (`PrimOp::GetMany`):
/// `VOLLEY_QUEUE_BATCH`, default 64; 1 (or 0) turns batches off (one round trip a get).
fn max_batch() -> u32 {
    static MAX: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *MAX.get_or_init(|| {
        let v = std::env::var("VOLLEY_QUEUE_BATCH").ok().and_then(|v| v.parse().ok());
        v.unwrap_or(64).clamp(1, 4096)
    })
}

/// A consumer that takes the items of its last batch faster than one per this long (it
/// streams) asks for a batch twice as large next time; a slower one for one item, so that
/// items do not wait in its buffer while it works on each (another getter could take them).
const STREAMING: Duration = Duration::from_micros(500);

/// A channel send into a reserved slot (`ChanPost`) carries at most this many bytes; a larger
/// one waits for its answer as without a reservation.
const POST_BYTES: usize = 1 << 20;

/// What this process got in batches from one queue and has not handed out yet, and how large
/// its next batch may be.
struct Batch {
    /// Each item with the request that brought it (acknowledged as it is handed out).
    items: VecDeque<(u64, Vec<u8>)>,
    /// The size of the next batch to ask for.
    max: u32,
    /// When the last answer came, with how many items.
    arrived: Instant,
    n: u32,
}

/// A value as received from the node: inline bytes, or a view into the node's store that this
/// worker holds a lease on until the `Received` (and every clone of its `view`) is dropped.
pub struct Received {
    pub data: ObjectData,
    pub view: View,
}

pub enum View {
    Inline,
    Shm(Arc<ShmLease>),
    /// The node could not provide the value; the reason.
    Unavailable(String),
}

/// This worker's lease on a stored value; dropping it tells the node.
pub struct ShmLease {
    out: Arc<Outbox>,
    arena: Arc<Arena>,
    seg: u64,
    offset: u64,
    size: u64,
}

impl ShmLease {
    pub fn ptr(&self) -> *const u8 {
        self.arena.ptr(self.offset, self.size).unwrap_or(std::ptr::null_mut())
    }
    pub fn len(&self) -> usize {
        self.size as usize
    }
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }
}

impl Drop for ShmLease {
    fn drop(&mut self) {
        if let Ok(b) = encode(&WorkerToNode::Release { segs: vec![self.seg] }) {
            let _ = self.out.send(&b);
        }
    }
}

/// A task as received from the node.
pub struct ExecuteMsg {
    pub spec: TaskSpec,
    /// The view behind `spec.args` when the arguments are large.
    pub args: View,
    pub deps: Vec<Received>,
    /// The GPUs (indices) the task may use.
    pub gpus: Vec<u32>,
}

/// A reply to one of this worker's requests.
pub enum Reply {
    Get(Vec<Result<Received, ErrorPayload>>),
    Wait(Vec<ObjectId>),
    /// A segment's handle and offset, or why there is none.
    Alloc(Result<(u64, u64), String>),
    Actor(volley_proto::ActorAnswer),
    Prim(volley_proto::PrimResult),
}

#[derive(Default)]
struct Inner {
    tasks: VecDeque<ExecuteMsg>,
    /// Function bytes as they arrive. The node sends a function once per worker, with the
    /// first task that needs it; that task may be revoked before it runs, so the bytes are kept
    /// here rather than with the task.
    functions: HashMap<FunctionId, Arc<[u8]>>,
    replies: HashMap<u64, Reply>,
    /// Requests whose caller stopped waiting: their replies are dropped on arrival (releasing
    /// any leases they carry).
    abandoned: HashSet<u64>,
    ready: VecDeque<ObjectId>,
    current: Option<TaskId>,
    /// How many tasks the main thread has taken: tells one run of the current task from the
    /// next (a task id may run again here after a retry).
    runs: u64,
    interrupted: bool,
    shutdown: bool,
    closed: bool,
    /// The failure of an op sent without waiting (`PRIM_NO_REPLY`), reported at the next op.
    prim_failed: Option<volley_proto::PrimResult>,
    /// Items got from queues in batches, by queue (see [`WorkerConn::prim`]).
    batches: HashMap<u64, Batch>,
    /// The requests that asked for a batch (`GetMany`), with their queue.
    batch_reqs: HashMap<u64, u64>,
    /// Slots of buffered channels the node reserved for this process's sends
    /// (`PrimResult::Granted`), by channel: a send there goes without waiting (`ChanPost`).
    credits: HashMap<u64, u64>,
    /// This process's `ChanSend` requests awaiting their answer, with their channel.
    send_reqs: HashMap<u64, u64>,
    /// The running task sent an op without waiting for its answer (`PRIM_NO_REPLY`).
    no_reply_sent: bool,
    /// The `Fence` sent as the last such task ended, until answered: a failure that comes
    /// before it was that task's (see `PrimOp::Fence`).
    fence: Option<u64>,
}

impl Inner {
    /// The next item of `queue`'s buffer, its acknowledgement pushed to `out` (it rides on the
    /// next message; the node keeps a copy until then).
    fn buffered(&mut self, queue: u64, out: &Outbox) -> Option<Vec<u8>> {
        let (req, item) = self.batches.get_mut(&queue)?.items.pop_front()?;
        let ack = WorkerToNode::Prim { req, op: volley_proto::PrimOp::Ack };
        if let Ok(b) = encode(&ack) {
            out.push(&b);
        }
        Some(item)
    }

    /// The answer `result` to the batch request `req` on `queue` came: the items after the
    /// first wait in the buffer; the caller gets the first.
    fn batch_arrived(
        &mut self,
        req: u64,
        queue: u64,
        result: volley_proto::PrimResult,
    ) -> volley_proto::PrimResult {
        use volley_proto::PrimResult;
        let b = self.batches.entry(queue).or_insert_with(|| Batch {
            items: VecDeque::new(),
            max: 1,
            arrived: Instant::now(),
            n: 0,
        });
        match result {
            PrimResult::Items(items) => {
                b.arrived = Instant::now();
                b.n = items.len() as u32;
                let mut items = items.into_iter().map(|i| i.into_vec());
                let first = items.next().unwrap_or_default();
                b.items.extend(items.map(|i| (req, i)));
                PrimResult::Item(first)
            }
            r @ PrimResult::Item(_) => {
                b.arrived = Instant::now();
                b.n = 1;
                r
            }
            r => r,
        }
    }

    /// How many items the next get from `queue` asks for: twice the last batch's size while
    /// this process takes them faster than [`STREAMING`] each, else one.
    fn next_batch(&mut self, queue: u64) -> u32 {
        let Some(b) = self.batches.get_mut(&queue) else { return 1 };
        let streaming = b.n > 0 && b.arrived.elapsed() < STREAMING * b.n;
        b.max = if streaming { (b.max * 2).min(max_batch()) } else { 1 };
        b.max
    }

    /// Takes one reserved slot of `chan` for a send of `item`, pushing the send to `out` (to
    /// write with the next flush; under the lock, so a recall's return of the rest cannot
    /// overtake it); whether there was one.
    fn post(&mut self, chan: u64, item: &mut Vec<u8>, out: &Outbox) -> bool {
        // Large items wait for their answer (a frame's size is checked where it is sent).
        if item.len() > POST_BYTES {
            return false;
        }
        let Some(n) = self.credits.get_mut(&chan).filter(|n| **n > 0) else { return false };
        *n -= 1;
        self.no_reply_sent = true;
        let op = volley_proto::PrimOp::ChanPost { chan, item: std::mem::take(item) };
        if let Ok(b) = encode(&WorkerToNode::Prim { req: volley_proto::PRIM_NO_REPLY, op }) {
            out.push(&b);
        }
        true
    }

    /// Gives back the reserved slots of `chan` (every channel: None) this process has not
    /// used, pushing the op to `out`; whether there were any.
    fn return_credits(&mut self, chan: Option<u64>, out: &Outbox) -> bool {
        let mine: Vec<(u64, u64)> = self
            .credits
            .iter()
            .filter(|(c, n)| **n > 0 && chan.is_none_or(|x| x == **c))
            .map(|(c, n)| (*c, *n))
            .collect();
        for (c, n) in &mine {
            self.credits.remove(c);
            let op = volley_proto::PrimOp::ChanReturn { chan: *c, n: *n };
            if let Ok(b) = encode(&WorkerToNode::Prim { req: volley_proto::PRIM_NO_REPLY, op }) {
                out.push(&b);
            }
        }
        !mine.is_empty()
    }

    /// Empties the buffers of `queue` (every queue: None), pushing to `out` the op that gives
    /// their items back (to write with the next message); whether there was any. `recalled`:
    /// it answers the node's recall of `queue`, always sent.
    fn give_back(&mut self, queue: Option<u64>, recalled: bool, out: &Outbox) -> bool {
        let mut reqs = Vec::new();
        for (q, b) in self.batches.iter_mut() {
            if queue.is_none_or(|x| x == *q) {
                reqs.extend(b.items.drain(..).map(|(r, _)| r));
                b.max = 1;
            }
        }
        if queue.is_none() {
            self.batches.clear();
        }
        reqs.dedup();
        if reqs.is_empty() && !recalled {
            return false;
        }
        let queue = if recalled { queue.unwrap_or(0) } else { 0 };
        let op = volley_proto::PrimOp::GiveBack { reqs, queue };
        if let Ok(b) = encode(&WorkerToNode::Prim { req: volley_proto::PRIM_NO_REPLY, op }) {
            out.push(&b);
        }
        true
    }
}

/// The running task, as seen by `finish_task`.
pub struct CurrentTask {
    /// An interrupt was sent to the main thread for this task (a cancel); it may still be pending.
    pub interrupted: bool,
}

pub struct WorkerConn {
    out: Arc<Outbox>,
    /// This process's mapping of the node's object store, if it has one.
    arena: Option<Arc<Arena>>,
    /// Values of at least this many bytes go to the store.
    pub inline_threshold: u64,
    inner: Mutex<Inner>,
    cv: Condvar,
    next_req: AtomicU64,
    pub ids: IdGenerator,
    pub worker_id: WorkerId,
    interrupt: fn(),
}

impl WorkerConn {
    /// Connects to the node's socket and says hello. `interrupt` is called (from the reader
    /// thread) to interrupt the main thread's running task.
    pub fn connect(
        socket_name: &str,
        worker_id: WorkerId,
        token: &str,
        store: Option<&str>,
        interrupt: fn(),
    ) -> Result<Arc<WorkerConn>, RuntimeError> {
        // `VOLLEY_STORE`: "PATH:CAPACITY:INLINE_THRESHOLD".
        let (arena, inline_threshold) = match store {
            Some(spec) => {
                let mut parts = spec.rsplitn(3, ':');
                let threshold = parts.next().and_then(|t| t.parse().ok());
                let cap = parts.next().and_then(|c| c.parse().ok());
                let path = parts.next();
                match (path, cap, threshold) {
                    (Some(p), Some(c), Some(t)) => (Some(Arc::new(Arena::open(p, c)?)), t),
                    _ => {
                        return Err(RuntimeError::Refused(format!(
                            "malformed object store address {spec:?}"
                        )))
                    }
                }
            }
            None => (None, u64::MAX),
        };
        let addr = SocketAddr::from_abstract_name(socket_name.as_bytes())?;
        let mut stream = UnixStream::connect_addr(&addr)?;
        let hello = Hello { version: PROTOCOL_VERSION, worker_id, pid: std::process::id() };
        volley_proto::write_frame(&mut stream, &encode(&(hello, token.to_string()))?)?;
        let reply: Hello =
            match volley_proto::read_frame(&mut stream, volley_proto::MAX_HANDSHAKE_FRAME) {
                Ok(frame) => decode(&frame)?,
                Err(ProtoError::Closed) => {
                    return Err(RuntimeError::Refused("the node closed the connection".into()))
                }
                Err(e) => return Err(e.into()),
            };
        if reply.version != PROTOCOL_VERSION {
            return Err(ProtoError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: reply.version,
            }
            .into());
        }
        let stream = Arc::new(stream);
        let conn = Arc::new(WorkerConn {
            out: Arc::new(Outbox::new(stream.clone())),
            arena,
            inline_threshold,
            inner: Mutex::new(Inner::default()),
            cv: Condvar::new(),
            next_req: AtomicU64::new(1),
            ids: IdGenerator::new(),
            worker_id,
            interrupt,
        });
        let c = conn.clone();
        std::thread::Builder::new()
            .name("volley-reader".into())
            .spawn(move || c.read_loop(stream))?;
        Ok(conn)
    }

    fn read_loop(self: &Arc<Self>, stream: Arc<UnixStream>) {
        let mut reader = FrameReader::new(&*stream);
        loop {
            let msg = match reader.next_frame() {
                Ok(frame) => decode::<NodeToWorker>(frame),
                Err(e) => Err(e),
            };
            let Ok(msg) = msg else { break };
            // Views are built before taking the lock: building one may send a message.
            let msg = match msg {
                NodeToWorker::Execute { spec, function, deps, gpus } => {
                    let args = self.view_of(&spec.args);
                    let deps: Vec<Received> = deps.into_iter().map(|d| self.receive(d)).collect();
                    let mut inner = self.inner.lock();
                    if let Some(f) = function {
                        inner.functions.insert(spec.function, Arc::from(f.into_vec()));
                    }
                    inner.tasks.push_back(ExecuteMsg { spec, args, deps, gpus });
                    drop(inner);
                    self.cv.notify_all();
                    continue;
                }
                NodeToWorker::GetReply { req, values } => {
                    let values: Vec<Result<Received, ErrorPayload>> =
                        values.into_iter().map(|v| v.map(|d| self.receive(d))).collect();
                    let mut inner = self.inner.lock();
                    if !inner.abandoned.remove(&req) {
                        inner.replies.insert(req, Reply::Get(values));
                        drop(inner);
                        self.cv.notify_all();
                    } else {
                        drop(inner);
                        drop(values); // Releases its leases.
                    }
                    continue;
                }
                other => other,
            };
            let mut inner = self.inner.lock();
            match msg {
                NodeToWorker::Execute { .. } | NodeToWorker::GetReply { .. } => {}
                NodeToWorker::Revoke { tasks } => {
                    let wanted: HashSet<TaskId> = tasks.into_iter().collect();
                    let (gone, kept): (VecDeque<ExecuteMsg>, VecDeque<ExecuteMsg>) =
                        std::mem::take(&mut inner.tasks)
                            .into_iter()
                            .partition(|t| wanted.contains(&t.spec.task_id));
                    inner.tasks = kept;
                    drop(inner);
                    let returned: Vec<TaskId> = gone.iter().map(|t| t.spec.task_id).collect();
                    drop(gone); // Releases their leases: outside the lock.
                    let _ = self.send(&WorkerToNode::Returned { tasks: returned });
                    continue;
                }
                NodeToWorker::KillIfRunning { task } => {
                    // Running it, or about to (it came, the one before it is done): either way no
                    // other task of this process has started since.
                    let next = inner.tasks.front().is_some_and(|t| t.spec.task_id == task);
                    let here = inner.current == Some(task) || (inner.current.is_none() && next);
                    if here {
                        // SAFETY: plain syscalls; this process ends here, as the node asked.
                        unsafe {
                            libc::kill(libc::getpid(), libc::SIGKILL);
                        }
                    }
                    continue;
                }
                NodeToWorker::Cancel { task } => {
                    if inner.current == Some(task) && !inner.interrupted {
                        inner.interrupted = true;
                        (self.interrupt)();
                        let run = inner.runs;
                        drop(inner);
                        self.keep_interrupting(run);
                        continue;
                    } else if let Some(pos) =
                        inner.tasks.iter().position(|t| t.spec.task_id == task)
                    {
                        let t = inner.tasks.remove(pos);
                        drop(inner);
                        if let Some(t) = t {
                            let error = ErrorPayload {
                                kind: ErrorKind::Cancelled,
                                task_name: t.spec.name.to_string(),
                                message: format!(
                                    "task '{}' was cancelled before it ran",
                                    t.spec.name
                                ),
                                traceback: String::new(),
                                exception: None,
                                pid: std::process::id(),
                            };
                            let result = TaskResult::Err { error, retryable: false };
                            let _ = self.send(&WorkerToNode::Done { task, result });
                        }
                        continue;
                    }
                }
                NodeToWorker::WaitReply { req, ready } => {
                    if !inner.abandoned.remove(&req) {
                        inner.replies.insert(req, Reply::Wait(ready));
                    }
                }
                NodeToWorker::AllocReply { req, result } => {
                    if inner.abandoned.remove(&req) {
                        if let Ok((seg, _)) = result {
                            drop(inner);
                            let _ = self.send(&WorkerToNode::Release { segs: vec![seg] });
                            continue;
                        }
                    } else {
                        inner.replies.insert(req, Reply::Alloc(result));
                    }
                }
                NodeToWorker::ActorReply { req, answer } => {
                    if !inner.abandoned.remove(&req) {
                        inner.replies.insert(req, Reply::Actor(answer));
                    }
                }
                NodeToWorker::PrimReply { req: volley_proto::PRIM_NO_REPLY, result } => {
                    if inner.current.is_some() && inner.fence.is_none() {
                        // Raised by the task's next primitive op.
                        inner.prim_failed.get_or_insert(result);
                    } else {
                        // The task that sent it is over: said, not raised in the next one.
                        unreported_failure(&result);
                    }
                }
                NodeToWorker::PrimReply { req, .. } if inner.fence == Some(req) => {
                    // The ended task's ops are all answered: later failures are the next's.
                    inner.fence = None;
                    continue;
                }
                NodeToWorker::PrimReply { req, mut result } => {
                    if !inner.send_reqs.is_empty() {
                        if let Some(chan) = inner.send_reqs.remove(&req) {
                            // Slots reserved for this process's next sends: taken here, by
                            // the reader, so that a recall that follows returns them.
                            if let volley_proto::PrimResult::Granted(n) = result {
                                *inner.credits.entry(chan).or_default() += n;
                                result = volley_proto::PrimResult::Done;
                            }
                        }
                    }
                    let batch = match inner.batch_reqs.is_empty() {
                        true => None,
                        false => inner.batch_reqs.remove(&req),
                    };
                    let result = match batch {
                        Some(queue) => inner.batch_arrived(req, queue, result),
                        None => result,
                    };
                    if result.hands_item() {
                        // The node keeps a copy of an item until this process has it.
                        let ack = WorkerToNode::Prim { req, op: volley_proto::PrimOp::Ack };
                        if let Ok(b) = encode(&ack) {
                            // With this process's next message: no write of its own.
                            self.out.push(&b);
                        }
                    }
                    inner.replies.insert(req, Reply::Prim(result));
                }
                NodeToWorker::PrimRecall { queue } => {
                    // Another process waits on `queue`: what this one has not handed out goes
                    // back (after the acknowledgements of what it has: same outbox, in order).
                    // Queued before the lock is let go: a get that finds the buffer empty
                    // after this sends its request after the items went back, so that it
                    // cannot take newer items first.
                    // A channel's reserved slots go back too (before the answer to the recall).
                    inner.return_credits(Some(queue), &self.out);
                    let back = inner.give_back(Some(queue), true, &self.out);
                    drop(inner);
                    if back {
                        let _ = self.out.flush();
                    }
                    continue;
                }
                NodeToWorker::Ready { ids } => inner.ready.extend(ids),
                NodeToWorker::Shutdown => inner.shutdown = true,
            }
            drop(inner);
            self.cv.notify_all();
        }
        let shutdown = {
            let mut inner = self.inner.lock();
            inner.closed = true;
            inner.shutdown
        };
        self.cv.notify_all();
        if !shutdown {
            // The node is gone (the driver died or closed us): nothing left to work for.
            // SAFETY: _exit is always safe to call; it ends the process without unwinding.
            unsafe { libc::_exit(1) };
        }
    }

    /// Interrupts run `run` of the current task again every [`REINTERRUPT`] until it ends, from
    /// a thread of its own. One signal can be lost: under load, a SIGINT sent some 70 µs after
    /// a task started now and then never raised in it, and the task slept on (test_cancel's
    /// just-sent test, about 1 round in 300 to 1000). CPython notes a signal in two steps, and
    /// a main thread taking the GIL back can overwrite the second (its "check signals" flag)
    /// with a value read before the signal came; one that lands just before a blocking call
    /// (`time.sleep`) does not wake that call either.
    fn keep_interrupting(self: &Arc<Self>, run: u64) {
        let conn = self.clone();
        let again = move || loop {
            std::thread::sleep(REINTERRUPT);
            let inner = conn.inner.lock();
            if inner.runs != run || inner.current.is_none() || inner.closed {
                return; // It ended (or the worker is going): nothing to interrupt.
            }
            (conn.interrupt)();
        };
        // Without a thread the first signal stays the only one, as before.
        let _ = std::thread::Builder::new().name("volley-cancel".into()).spawn(again);
    }

    pub fn send(&self, msg: &WorkerToNode) -> Result<(), RuntimeError> {
        Ok(self.out.send(&encode(msg)?)?)
    }

    /// Like [`WorkerConn::send`], but during a burst of messages the write is batched with the
    /// ones that follow (see [`Outbox::flush_soon`]). For messages nobody waits on here.
    pub fn send_soon(&self, msg: &WorkerToNode) -> Result<(), RuntimeError> {
        Ok(self.out.send_soon(&encode(msg)?)?)
    }

    /// Writes every message still pending.
    pub fn flush(&self) -> Result<(), RuntimeError> {
        Ok(self.out.flush()?)
    }

    /// Waits for the next task; `None` when told to shut down.
    pub fn next_task(&self) -> Option<ExecuteMsg> {
        let mut inner = self.inner.lock();
        if inner.tasks.is_empty() {
            // Out of work: the results of a burst still pending go out now.
            drop(inner);
            crate::outbox::flush_queued();
            inner = self.inner.lock();
        }
        loop {
            if inner.shutdown || inner.closed {
                return None;
            }
            if let Some(t) = inner.tasks.pop_front() {
                inner.current = Some(t.spec.task_id);
                inner.runs += 1;
                inner.interrupted = false;
                return Some(t);
            }
            inner = self.cv.wait(inner);
        }
    }

    /// Marks the running task finished (no interrupt can be sent for it from now on) and says
    /// whether one was sent.
    pub fn finish_task(&self) -> CurrentTask {
        let mut inner = self.inner.lock();
        inner.current = None;
        let interrupted = std::mem::take(&mut inner.interrupted);
        // A failed op the task did not wait for and never heard of: said here, so that the
        // next task of this process does not raise it as its own.
        if let Some(failed) = inner.prim_failed.take() {
            unreported_failure(&failed);
        }
        // A task's unused batch items go back to their queues: nobody else here will get them.
        let back = !inner.batches.is_empty() && inner.give_back(None, false, &self.out);
        // And the channel slots reserved for its sends.
        let back = inner.return_credits(None, &self.out) || back;
        // A failure of an op it sent without waiting may still come: a fence tells it from
        // the next task's (the reader reports what comes before the fence's answer).
        let fenced = std::mem::take(&mut inner.no_reply_sent);
        if fenced {
            let req = self.next_req.fetch_add(1, Ordering::Relaxed);
            inner.fence = Some(req);
            let op = volley_proto::PrimOp::Fence;
            if let Ok(b) = encode(&WorkerToNode::Prim { req, op }) {
                self.out.push(&b);
            }
        }
        let back = back || fenced;
        drop(inner);
        if back {
            let _ = self.out.flush_soon();
        }
        CurrentTask { interrupted }
    }

    /// Sends a request built with a fresh request id and waits for its reply. On timeout the
    /// request is cancelled and the node's answer to that (the ready subset) is returned instead,
    /// flagged by `Err(WaitError::Timeout)` only if it is not a `GetReply`.
    pub fn request<E>(
        &self,
        build: impl FnOnce(u64) -> WorkerToNode,
        timeout: Option<Duration>,
        mut check: impl FnMut() -> Result<(), E>,
    ) -> Result<Reply, WaitError<E>> {
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        self.send(&build(req)).map_err(|_| WaitError::Closed)?;
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut cancelled = false;
        loop {
            {
                let mut inner = self.inner.lock();
                if let Some(r) = inner.replies.remove(&req) {
                    return Ok(r);
                }
                if inner.closed {
                    return Err(WaitError::Closed);
                }
                let mut step = CHECK_INTERVAL;
                if let (Some(d), false) = (deadline, cancelled) {
                    step = step.min(d.saturating_duration_since(Instant::now()));
                }
                inner = self.cv.wait_for(inner, step);
                if let Some(r) = inner.replies.remove(&req) {
                    return Ok(r);
                }
            }
            if let Err(e) = check() {
                {
                    let mut inner = self.inner.lock();
                    if let Some(r) = inner.replies.remove(&req) {
                        drop(inner);
                        drop(r);
                    } else {
                        inner.abandoned.insert(req);
                    }
                }
                let _ = self.send(&WorkerToNode::CancelRequest { req });
                return Err(WaitError::Interrupted(e));
            }
            if !cancelled && deadline.is_some_and(|d| Instant::now() >= d) {
                cancelled = true;
                self.send(&WorkerToNode::CancelRequest { req }).map_err(|_| WaitError::Closed)?;
            }
        }
    }

    /// Runs an op of the node's primitive service and waits for its answer. After `timeout`,
    /// or when `check` fails, the op is cancelled and its one answer still awaited (the node
    /// answers a cancel at once, in order): a timed-out op thus reports `Empty`/`Full` only if
    /// it really got nothing, and an item got just as `check` failed goes back to the queue.
    pub fn prim<E>(
        &self,
        op: volley_proto::PrimOp,
        timeout: Option<Duration>,
        mut check: impl FnMut() -> Result<(), E>,
    ) -> Result<volley_proto::PrimResult, WaitError<E>> {
        use volley_proto::PrimOp;
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        let mut batch_of = None;
        let op = {
            let mut inner = self.inner.lock();
            if let Some(failed) = inner.prim_failed.take() {
                return Ok(failed);
            }
            match op {
                // A get from a queue takes the next item of this process's batch, if it has
                // one, without asking the node; else it asks for a batch.
                PrimOp::Get { queue, block } => {
                    if let Some(item) = inner.buffered(queue, &self.out) {
                        return Ok(volley_proto::PrimResult::Item(item));
                    }
                    let max = inner.next_batch(queue);
                    inner.batch_reqs.insert(req, queue);
                    batch_of = Some(queue);
                    match max {
                        1 => PrimOp::Get { queue, block },
                        max => PrimOp::GetMany { queue, block, max },
                    }
                }
                PrimOp::Close { queue } => {
                    // Its buffered items are dropped with the queue's.
                    inner.give_back(Some(queue), false, &self.out);
                    PrimOp::Close { queue }
                }
                // A recv from a buffered channel works as a get from a queue: from this
                // process's batch first, else asking for one.
                PrimOp::ChanRecv { chan, reg: 0 } => {
                    if let Some(item) = inner.buffered(chan, &self.out) {
                        return Ok(volley_proto::PrimResult::Item(item));
                    }
                    let max = inner.next_batch(chan);
                    inner.batch_reqs.insert(req, chan);
                    batch_of = Some(chan);
                    match max {
                        1 => PrimOp::ChanRecv { chan, reg: 0 },
                        max => PrimOp::ChanRecvMany { chan, max },
                    }
                }
                // A send into a slot the node reserved for this process does not wait.
                PrimOp::ChanSend { chan, mut item } => {
                    if inner.post(chan, &mut item, &self.out) {
                        drop(inner);
                        self.out.flush_soon().map_err(|_| WaitError::Closed)?;
                        return Ok(volley_proto::PrimResult::Done);
                    }
                    inner.send_reqs.insert(req, chan);
                    PrimOp::ChanSend { chan, item }
                }
                // What this process holds of the guards' channels goes back first: the node
                // would wait for its own batch, or count its own slots as taken.
                PrimOp::ChanSelect { guards, skip, priority } => {
                    for g in &guards {
                        inner.return_credits(Some(g.chan), &self.out);
                        inner.give_back(Some(g.chan), false, &self.out);
                    }
                    PrimOp::ChanSelect { guards, skip, priority }
                }
                PrimOp::ChanPoison { chan } => {
                    inner.return_credits(Some(chan), &self.out);
                    inner.give_back(Some(chan), false, &self.out);
                    PrimOp::ChanPoison { chan }
                }
                op => op,
            }
        };
        let undo = volley_proto::undo_of(&op);
        self.send(&WorkerToNode::Prim { req, op }).map_err(|_| WaitError::Closed)?;
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut cancelled = false;
        let mut interrupted = None;
        loop {
            let mut inner = self.inner.lock();
            loop {
                if let Some(r) = inner.replies.remove(&req) {
                    if let Some(b) = batch_of.and_then(|q| inner.batches.get_mut(&q)) {
                        // Timed from here: how fast this caller takes items, not wake-ups.
                        b.arrived = Instant::now();
                    }
                    drop(inner);
                    let Reply::Prim(result) = r else { return Err(WaitError::Closed) };
                    let Some(e) = interrupted else { return Ok(result) };
                    // Got just as the caller was interrupted: an item goes back, a lock
                    // unit is released (answered only if that fails, which nobody awaits).
                    if let Some(op) = undo.op(result) {
                        if let Some(queue) = batch_of {
                            // The rest of its batch goes back first, so that the item lands
                            // ahead of them at the head of the queue.
                            self.inner.lock().give_back(Some(queue), false, &self.out);
                        }
                        let req = volley_proto::PRIM_NO_REPLY;
                        let _ = self.send(&WorkerToNode::Prim { req, op });
                    }
                    return Err(WaitError::Interrupted(e));
                }
                if inner.closed {
                    return Err(WaitError::Closed);
                }
                let now = Instant::now();
                if !cancelled && deadline.is_some_and(|d| now >= d) {
                    break;
                }
                let mut step = CHECK_INTERVAL;
                if let (Some(d), false) = (deadline, cancelled) {
                    step = step.min(d - now);
                }
                let slept = Instant::now();
                inner = self.cv.wait_for(inner, step);
                if slept.elapsed() >= step {
                    break;
                }
            }
            drop(inner);
            if cancelled {
                continue; // Only the answer is awaited now.
            }
            if let Err(e) = check() {
                interrupted = Some(e);
            } else if deadline.is_none_or(|d| Instant::now() < d) {
                continue;
            }
            cancelled = true;
            self.send(&WorkerToNode::Prim { req, op: PrimOp::Cancel })
                .map_err(|_| WaitError::Closed)?;
        }
    }

    /// Sends an op whose answer nobody waits for (see `PRIM_NO_REPLY`), batched with the
    /// ones that follow during a burst; the failure of an earlier one is returned instead.
    pub fn prim_no_reply(
        &self,
        op: volley_proto::PrimOp,
    ) -> Result<volley_proto::PrimResult, RuntimeError> {
        {
            let mut inner = self.inner.lock();
            if let Some(failed) = inner.prim_failed.take() {
                return Ok(failed);
            }
            inner.no_reply_sent = true;
        }
        self.send_soon(&WorkerToNode::Prim { req: volley_proto::PRIM_NO_REPLY, op })?;
        Ok(volley_proto::PrimResult::Done)
    }

    /// Wraps a value from the node, taking over the lease the node registered for it.
    fn receive(&self, data: ObjectData) -> Received {
        let view = self.view_of(&data);
        Received { data, view }
    }

    fn view_of(&self, data: &ObjectData) -> View {
        let Some(loc) = &data.shm else { return View::Inline };
        if loc.offset == u64::MAX {
            // The node could not read it; it sent the reason instead (and holds no lease).
            return View::Unavailable(String::from_utf8_lossy(&data.data).into_owned());
        }
        let lease = |arena: &Arc<Arena>| {
            Arc::new(ShmLease {
                out: self.out.clone(),
                arena: arena.clone(),
                seg: loc.seg,
                offset: loc.offset,
                size: loc.size,
            })
        };
        match &self.arena {
            Some(a) if a.ptr(loc.offset, loc.size).is_some() => View::Shm(lease(a)),
            Some(a) => {
                drop(lease(a)); // Still release the node's lease.
                View::Unavailable(format!(
                    "segment {} at {}+{} lies outside the store",
                    loc.seg, loc.offset, loc.size
                ))
            }
            None => {
                let _ = self.send(&WorkerToNode::Release { segs: vec![loc.seg] });
                View::Unavailable("this worker has no object store mapped".into())
            }
        }
    }

    /// This process's mapping of the store, if any.
    pub fn arena(&self) -> Option<&Arc<Arena>> {
        self.arena.as_ref()
    }

    /// Reserves `size` bytes in the store for a value this worker writes; returns the segment's
    /// handle and offset. The segment is released if the worker never names it in a message.
    pub fn alloc(&self, size: u64) -> Result<(u64, u64), String> {
        if self.arena.is_none() {
            return Err("this worker has no object store mapped".into());
        }
        let never = || Ok::<(), ()>(());
        match self.request(|req| WorkerToNode::Alloc { req, size }, None, never) {
            Ok(Reply::Alloc(r)) => r,
            Ok(_) => Err("unexpected reply to an allocation".into()),
            Err(_) => Err("the node has shut down".into()),
        }
    }

    /// Gives back segments this worker allocated and will not send.
    pub fn release_segments(&self, segs: Vec<u64>) {
        if !segs.is_empty() {
            let _ = self.send(&WorkerToNode::Release { segs });
        }
    }

    /// The bytes of a function the node has sent to this worker.
    pub fn function(&self, id: &FunctionId) -> Option<Arc<[u8]>> {
        self.inner.lock().functions.get(id).cloned()
    }

    /// Watched objects that became ready; waits up to `timeout` for one.
    pub fn next_ready(&self, timeout: Duration) -> Vec<ObjectId> {
        let mut inner = self.inner.lock();
        if inner.ready.is_empty() && !inner.closed {
            inner = self.cv.wait_for(inner, timeout);
        }
        inner.ready.drain(..).collect()
    }
}

/// Says (on this worker's stderr, which reaches the driver) that an op sent without waiting (an
/// unbounded queue's `put`, a lock's `release`) failed after the task that sent it ended.
fn unreported_failure(result: &volley_proto::PrimResult) {
    let why = match result {
        volley_proto::PrimResult::Closed(m) | volley_proto::PrimResult::Error(m) => m.as_str(),
        _ => return,
    };
    crate::diag::event!(
        Warn,
        "volley: a queue put or lock release that its task did not wait for failed after the \
         task ended: {why}"
    );
}
