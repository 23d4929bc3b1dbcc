//! A worker process's connection to its node.
//!
//! A reader thread owns the receiving side. Tasks it receives wait in a local queue until the
//! main thread takes them; a `Revoke` removes tasks the main thread has not started yet (this is
//! how the node steals work back and frees tasks queued behind one that blocked); a `Cancel`
//! interrupts the running task through a callback; replies to `Get`/`Wait` are matched to their
//! request. If the node goes away, the process exits at once.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use volley_proto::{
    decode, encode, ErrorKind, ErrorPayload, FrameReader, FunctionId, Hello, IdGenerator,
    NodeToWorker, ObjectData, ObjectId, ProtoError, TaskId, TaskResult, TaskSpec, WorkerId,
    WorkerToNode, PROTOCOL_VERSION,
};

use crate::outbox::Outbox;
use crate::{RuntimeError, WaitError, CHECK_INTERVAL};

/// A task as received from the node.
pub struct ExecuteMsg {
    pub spec: TaskSpec,
    pub deps: Vec<ObjectData>,
}

#[derive(Default)]
struct Inner {
    tasks: VecDeque<ExecuteMsg>,
    /// Function bytes as they arrive. The node sends a function once per worker, with the
    /// first task that needs it; that task may be revoked before it runs, so the bytes are kept
    /// here rather than with the task.
    functions: HashMap<FunctionId, Arc<[u8]>>,
    replies: HashMap<u64, NodeToWorker>,
    ready: VecDeque<ObjectId>,
    current: Option<TaskId>,
    interrupted: bool,
    shutdown: bool,
    closed: bool,
}

/// The running task, as seen by `finish_task`.
pub struct CurrentTask {
    /// An interrupt was sent to the main thread for this task (a cancel); it may still be pending.
    pub interrupted: bool,
}

pub struct WorkerConn {
    out: Outbox,
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
        interrupt: fn(),
    ) -> Result<Arc<WorkerConn>, RuntimeError> {
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
        let conn = Arc::new(WorkerConn {
            out: Outbox::new(stream.try_clone()?)?,
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

    fn read_loop(&self, stream: UnixStream) {
        let mut reader = FrameReader::new(&stream);
        loop {
            let msg = match reader.next_frame() {
                Ok(frame) => decode::<NodeToWorker>(frame),
                Err(e) => Err(e),
            };
            let Ok(msg) = msg else { break };
            let mut inner = self.inner.lock();
            match msg {
                NodeToWorker::Execute { spec, function, deps } => {
                    if let Some(f) = function {
                        inner.functions.insert(spec.function, Arc::from(f.into_vec()));
                    }
                    inner.tasks.push_back(ExecuteMsg { spec, deps });
                }
                NodeToWorker::Revoke { tasks } => {
                    let wanted: HashSet<TaskId> = tasks.into_iter().collect();
                    let mut returned = Vec::new();
                    inner.tasks.retain(|t| {
                        let r = wanted.contains(&t.spec.task_id);
                        if r {
                            returned.push(t.spec.task_id);
                        }
                        !r
                    });
                    drop(inner);
                    let _ = self.send(&WorkerToNode::Returned { tasks: returned });
                    continue;
                }
                NodeToWorker::Cancel { task } => {
                    if inner.current == Some(task) && !inner.interrupted {
                        inner.interrupted = true;
                        (self.interrupt)();
                    } else if let Some(pos) =
                        inner.tasks.iter().position(|t| t.spec.task_id == task)
                    {
                        let t = inner.tasks.remove(pos);
                        drop(inner);
                        if let Some(t) = t {
                            let error = ErrorPayload {
                                kind: ErrorKind::Cancelled,
                                task_name: t.spec.name.clone(),
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
                NodeToWorker::GetReply { req, .. } | NodeToWorker::WaitReply { req, .. } => {
                    inner.replies.insert(req, msg);
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

    pub fn send(&self, msg: &WorkerToNode) -> Result<(), RuntimeError> {
        Ok(self.out.send(&encode(msg)?)?)
    }

    /// Waits for the next task; `None` when told to shut down.
    pub fn next_task(&self) -> Option<ExecuteMsg> {
        let mut inner = self.inner.lock();
        loop {
            if inner.shutdown || inner.closed {
                return None;
            }
            if let Some(t) = inner.tasks.pop_front() {
                inner.current = Some(t.spec.task_id);
                inner.interrupted = false;
                return Some(t);
            }
            self.cv.wait(&mut inner);
        }
    }

    /// Marks the running task finished (no interrupt can be sent for it from now on) and says
    /// whether one was sent.
    pub fn finish_task(&self) -> CurrentTask {
        let mut inner = self.inner.lock();
        inner.current = None;
        CurrentTask { interrupted: std::mem::take(&mut inner.interrupted) }
    }

    /// Sends a request built with a fresh request id and waits for its reply. On timeout the
    /// request is cancelled and the node's answer to that (the ready subset) is returned instead,
    /// flagged by `Err(WaitError::Timeout)` only if it is not a `GetReply`.
    pub fn request<E>(
        &self,
        build: impl FnOnce(u64) -> WorkerToNode,
        timeout: Option<Duration>,
        mut check: impl FnMut() -> Result<(), E>,
    ) -> Result<NodeToWorker, WaitError<E>> {
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
                self.cv.wait_for(&mut inner, step);
                if let Some(r) = inner.replies.remove(&req) {
                    return Ok(r);
                }
            }
            if let Err(e) = check() {
                let _ = self.send(&WorkerToNode::CancelRequest { req });
                return Err(WaitError::Interrupted(e));
            }
            if !cancelled && deadline.is_some_and(|d| Instant::now() >= d) {
                cancelled = true;
                self.send(&WorkerToNode::CancelRequest { req }).map_err(|_| WaitError::Closed)?;
            }
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
            self.cv.wait_for(&mut inner, timeout);
        }
        inner.ready.drain(..).collect()
    }
}
