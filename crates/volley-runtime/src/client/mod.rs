//! This process's handle on volley: the embedded node (in a driver) or the connection to the node
//! (in a worker), plus the process-local reference table.
//!
//! Every `ObjectRef` alive in this process counts once in the local table; the node hears about an
//! id only when this process's count goes from 0 to 1 or back to 0, so passing refs around in
//! Python costs no messages.
//!
//! This is engine code that the Python binding only drives: it knows nothing of Python. The
//! store's write protocol is in [`store`], a worker's task loop in [`worker`] (which runs user
//! code through the [`worker::TaskRunner`] the binding implements).

mod async_prims;
mod error;
pub mod store;
pub mod worker;

#[cfg(test)]
mod tests;

pub use async_prims::ASYNC_REQ;
pub use error::ClientError;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use volley_proto::{
    ActorAnswer, ActorRequest, ErrorPayload, FunctionId, ObjectData, ObjectId, TaskSpec,
    WorkerToNode,
};
use volley_sched::StreamStep;
use volley_store::sync::{Mutex, RwLock};

use crate::{Node, Received, Reply, View, WaitError, WorkerConn};

/// Bytes of a stored value mapped into this process, and what keeps them there (a lease that
/// goes when the last holder of `guard` does).
#[derive(Clone)]
pub struct Mapped {
    pub ptr: usize,
    pub len: usize,
    pub guard: Arc<dyn std::any::Any + Send + Sync>,
}

pub enum Backend {
    Node(Node),
    Worker(Arc<WorkerConn>),
}

pub struct Client {
    pub backend: Backend,
    /// Values of at least this many bytes go to the object store.
    pub inline_threshold: u64,
    refs: Mutex<volley_proto::IdMap<ObjectId, u32>>,
    /// Functions already registered with the node (workers register before submitting).
    sent_functions: Mutex<HashSet<FunctionId>>,
    ids: volley_proto::IdGenerator,
    /// A worker's releases, sent after its next `Done` (or before it blocks): a ref inside a
    /// task's result is dropped before the result is sent, and the node must see the result
    /// (which keeps the ref alive) first.
    deferred_decrefs: Mutex<Vec<ObjectId>>,
    /// The runtime environment new tasks run in: the driver's, or in a worker the running
    /// task's (so nested tasks inherit it).
    runtime_env: Mutex<Option<volley_proto::RuntimeEnv>>,
    /// The last options made by [`Client::task_options`]: (the options they were made from,
    /// those with the runtime environment). A loop submitting one function's tasks shares one
    /// copy instead of copying the environment (a JSON text) into every queued task.
    options_made: Mutex<Option<(Arc<volley_proto::TaskOptions>, Arc<volley_proto::TaskOptions>)>>,
    /// The fork generation it was installed in (see [`fork_generation`]).
    generation: u64,
    /// Set by [`Client::retire`]: the worker exits once the running task's result is sent.
    retire: std::sync::atomic::AtomicBool,
    /// The primitive ops an event loop awaits (see [`async_prims`]).
    async_prims: async_prims::AsyncPrims,
}

static CLIENT: RwLock<Option<Arc<Client>>> = RwLock::new(None);

/// How many forks separate this process from the one that loaded this module (counted by
/// [`after_fork_in_child`]). A client, or a stored value's mapping, made in an earlier
/// generation is the parent's: its threads are gone, its sockets are the parent's, and the
/// child must neither use nor drop it (a drop would write to, or close, the parent's links).
static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);

pub fn fork_generation() -> u64 {
    FORK_GENERATION.load(Ordering::Acquire)
}

/// In the child just forked: forgets the parent's client without dropping it (see
/// [`FORK_GENERATION`]), and the rest of the engine's process state (see
/// [`crate::after_fork_in_child`]). Returns what the parent was: "driver", "worker" or
/// None.
pub fn after_fork_in_child() -> Option<&'static str> {
    FORK_GENERATION.fetch_add(1, Ordering::AcqRel);
    // Only the forking thread survives a fork; it holds no lock of ours (it was running
    // Python), so a lock held now was held by a thread that is gone and never lets go.
    // SAFETY: this is the child's only thread, and it holds no guard of CLIENT.
    unsafe { CLIENT.reset_after_fork() };
    let inherited = CLIENT.write().take();
    let was = inherited.as_ref().map(|c| c.mode());
    std::mem::forget(inherited);
    crate::after_fork_in_child();
    was
}

/// Makes `backend` this process's client (the one [`current`] returns).
pub fn install(backend: Backend, inline_threshold: u64) -> Arc<Client> {
    let c = Arc::new(Client::new(backend, inline_threshold));
    *CLIENT.write() = Some(c.clone());
    c
}

pub fn current() -> Option<Arc<Client>> {
    CLIENT.read().clone()
}

pub fn take() -> Option<Arc<Client>> {
    CLIENT.write().take()
}

pub type SharedResult = Result<Arc<ObjectData>, Arc<ErrorPayload>>;

/// A fetched value, with its mapping when it lives in the store.
pub type Loaded = Result<(Arc<ObjectData>, Option<Mapped>), Arc<ErrorPayload>>;

fn unavailable(kind: volley_proto::ErrorKind, message: String) -> Arc<ErrorPayload> {
    Arc::new(ErrorPayload {
        kind,
        task_name: String::new(),
        message,
        traceback: String::new(),
        exception: None,
        pid: std::process::id(),
    })
}

/// Converts a value received by a worker, mapping it if it lives in the store.
pub fn load_received(r: Received) -> Loaded {
    match r.view {
        View::Inline => Ok((Arc::new(r.data), None)),
        View::Shm(lease) => {
            let m = Mapped { ptr: lease.ptr() as usize, len: lease.len(), guard: lease };
            Ok((Arc::new(r.data), Some(m)))
        }
        View::Unavailable(why) => Err(unavailable(
            volley_proto::ErrorKind::ObjectStoreFull,
            format!("a stored object could not be read: {why}"),
        )),
    }
}

impl Client {
    /// A client on `backend` that is not this process's (see [`install`]): tests run several.
    pub fn new(backend: Backend, inline_threshold: u64) -> Client {
        Client {
            backend,
            inline_threshold,
            refs: Mutex::new(volley_proto::IdMap::default()),
            sent_functions: Mutex::new(HashSet::new()),
            ids: volley_proto::IdGenerator::new(),
            deferred_decrefs: Mutex::new(Vec::new()),
            runtime_env: Mutex::new(None),
            options_made: Mutex::new(None),
            generation: fork_generation(),
            retire: std::sync::atomic::AtomicBool::new(false),
            async_prims: async_prims::AsyncPrims::default(),
        }
    }

    /// "driver" (it runs a node) or "worker".
    pub fn mode(&self) -> &'static str {
        match self.backend {
            Backend::Node(_) => "driver",
            Backend::Worker(_) => "worker",
        }
    }

    /// True in a process forked from the one that made this client (see [`FORK_GENERATION`]).
    pub fn is_foreign(&self) -> bool {
        self.generation != fork_generation()
    }

    pub fn runtime_env(&self) -> Option<volley_proto::RuntimeEnv> {
        self.runtime_env.lock().clone()
    }

    /// A task's options: `base` (a remote function's, without a runtime environment) with
    /// this process's runtime environment now: `base` itself without one, else the copy made
    /// for the last task of the same options while the environment is the same (a driver's
    /// environment is set once; a worker's is its running task's). Shared by the tasks
    /// submitted with it: no copy, no allocation per task in a loop over one function.
    pub fn task_options(
        &self,
        base: &Arc<volley_proto::TaskOptions>,
    ) -> Arc<volley_proto::TaskOptions> {
        let env = self.runtime_env.lock();
        if *env == base.runtime_env {
            return base.clone();
        }
        let mut made = self.options_made.lock();
        if let Some((from, with_env)) = &*made {
            if Arc::ptr_eq(from, base) && with_env.runtime_env == *env {
                return with_env.clone();
            }
        }
        let mut o = (**base).clone();
        o.runtime_env = env.clone();
        let o = Arc::new(o);
        *made = Some((base.clone(), o.clone()));
        o
    }

    pub fn set_runtime_env(&self, env: Option<volley_proto::RuntimeEnv>) {
        *self.runtime_env.lock() = env;
    }

    pub fn next_task_id(&self) -> volley_proto::TaskId {
        match &self.backend {
            Backend::Node(_) => self.ids.next_task(),
            Backend::Worker(w) => w.ids.next_task(),
        }
    }

    /// Counts one more local reference; tells the node on the first one unless the node counted
    /// it already (the returns of a task we submit, a value we put).
    pub fn hold(&self, id: ObjectId, counted_by_node: bool) {
        let first = {
            let mut refs = self.refs.lock();
            let n = refs.entry(id).or_insert(0);
            *n += 1;
            *n == 1
        };
        if first && !counted_by_node {
            match &self.backend {
                Backend::Node(n) => n.incref(&[id]),
                Backend::Worker(w) => {
                    let _ = w.send(&WorkerToNode::IncRef { ids: vec![id] });
                }
            }
        }
    }

    pub fn release(&self, id: ObjectId) {
        let last = {
            let mut refs = self.refs.lock();
            match refs.get_mut(&id) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    refs.remove(&id);
                    // A table that held a million refs gives the room back once most are
                    // gone (two compares per release; the rehash is amortised).
                    volley_sched::shrink::Shrink::shrink_if_sparse(&mut *refs);
                    true
                }
                None => false,
            }
        };
        if last {
            match &self.backend {
                Backend::Node(n) => {
                    if !n.is_closed() {
                        n.decref(&[id])
                    }
                }
                Backend::Worker(_) => self.deferred_decrefs.lock().push(id),
            }
        }
    }

    /// Sends a worker's deferred releases.
    pub fn flush_decrefs(&self) {
        if let Backend::Worker(w) = &self.backend {
            let ids = std::mem::take(&mut *self.deferred_decrefs.lock());
            if !ids.is_empty() {
                let _ = w.send_soon(&WorkerToNode::DecRef { ids });
            }
        }
    }

    pub fn register_function(&self, id: FunctionId, bytes: &[u8]) -> Result<(), ClientError> {
        if !self.sent_functions.lock().insert(id) {
            return Ok(());
        }
        match &self.backend {
            Backend::Node(n) => {
                n.register_function(id, bytes);
                Ok(())
            }
            Backend::Worker(w) => w
                .send(&WorkerToNode::RegisterFunction {
                    id,
                    bytes: serde_bytes::ByteBuf::from(bytes.to_vec()),
                })
                .map_err(ClientError::from),
        }
    }

    pub fn submit(&self, spec: TaskSpec) -> Result<(), ClientError> {
        match &self.backend {
            Backend::Node(n) => {
                n.submit(spec);
                Ok(())
            }
            Backend::Worker(w) => {
                w.send_soon(&WorkerToNode::Submit { spec }).map_err(ClientError::from)
            }
        }
    }

    pub fn put(&self, id: ObjectId, data: ObjectData) -> Result<(), ClientError> {
        match &self.backend {
            Backend::Node(n) => {
                n.put(id, data);
                Ok(())
            }
            Backend::Worker(w) => {
                w.send_soon(&WorkerToNode::Put { id, data }).map_err(ClientError::from)
            }
        }
    }

    /// Whether large values can go to a shared-memory store from this process.
    pub fn has_store(&self) -> bool {
        match &self.backend {
            Backend::Node(_) => true,
            Backend::Worker(w) => w.arena().is_some(),
        }
    }

    pub fn get<E>(
        &self,
        ids: &[ObjectId],
        timeout: Option<Duration>,
        check: impl FnMut() -> Result<(), E>,
    ) -> Result<Vec<Loaded>, WaitError<E>> {
        match &self.backend {
            Backend::Node(n) => {
                let values = n.get(ids, timeout, check)?;
                Ok(values.into_iter().map(|v| load_local(n, v)).collect())
            }
            Backend::Worker(w) => {
                let reply =
                    w.request(|req| WorkerToNode::Get { req, ids: ids.to_vec() }, timeout, check)?;
                match reply {
                    Reply::Get(values) => Ok(values
                        .into_iter()
                        .map(|v| v.map_err(Arc::new).and_then(load_received))
                        .collect()),
                    _ => Err(WaitError::Timeout),
                }
            }
        }
    }

    pub fn wait<E>(
        &self,
        ids: &[ObjectId],
        num: usize,
        timeout: Option<Duration>,
        check: impl FnMut() -> Result<(), E>,
    ) -> Result<Vec<bool>, WaitError<E>> {
        match &self.backend {
            Backend::Node(n) => n.wait(ids, num, timeout, check),
            Backend::Worker(w) => {
                self.flush_decrefs();
                let build =
                    |req| WorkerToNode::Wait { req, ids: ids.to_vec(), num_returns: num as u32 };
                match w.request(build, timeout, check)? {
                    Reply::Wait(ready) => {
                        let ready: HashSet<ObjectId> = ready.into_iter().collect();
                        Ok(ids.iter().map(|id| ready.contains(id)).collect())
                    }
                    _ => Err(WaitError::Closed),
                }
            }
        }
    }

    /// Cancels the task behind `id`; true if the request is on its way to another node.
    pub fn cancel(&self, id: ObjectId, force: bool) -> Result<bool, ClientError> {
        match &self.backend {
            Backend::Node(n) => Ok(n.cancel(id, force)),
            Backend::Worker(w) => {
                w.send(&WorkerToNode::Cancel { id, force }).map_err(ClientError::from)?;
                Ok(true) // Its node acts on it after this returns.
            }
        }
    }

    /// Creates, finds, kills or describes an actor.
    pub fn actor(&self, request: ActorRequest) -> Result<ActorAnswer, ClientError> {
        match &self.backend {
            Backend::Node(n) => Ok(n.actor(request)),
            Backend::Worker(w) => {
                let never = || Ok::<(), ()>(());
                match w.request(|req| WorkerToNode::Actor { req, request }, None, never) {
                    Ok(Reply::Actor(a)) => Ok(a),
                    Ok(_) => Err(ClientError::Unexpected("a reply to an actor request".into())),
                    Err(_) => Err(ClientError::Closed),
                }
            }
        }
    }

    /// Runs an op of this node's primitive service (queues) and waits for its answer (see
    /// [`crate::prims`]); `timeout` bounds how long a parked op waits.
    pub fn prim<E>(
        &self,
        op: volley_proto::PrimOp,
        timeout: Option<Duration>,
        check: impl FnMut() -> Result<(), E>,
    ) -> Result<volley_proto::PrimResult, WaitError<E>> {
        match &self.backend {
            Backend::Node(n) => n.prim(op, timeout, check),
            Backend::Worker(w) => w.prim(op, timeout, check),
        }
    }

    /// Runs an op whose answer is `Done` unless it fails (a `put` on an unbounded queue) without
    /// waiting for it in a worker: a failure is returned by this process's next op.
    pub fn prim_no_reply(
        &self,
        op: volley_proto::PrimOp,
    ) -> Result<volley_proto::PrimResult, ClientError> {
        match &self.backend {
            Backend::Node(n) => {
                n.prim(op, None, || Ok::<(), ()>(())).map_err(|_| ClientError::Closed)
            }
            Backend::Worker(w) => w.prim_no_reply(op).map_err(ClientError::from),
        }
    }

    /// Waits for the next item of a stream this process called.
    pub fn stream_next<E>(
        &self,
        item: ObjectId,
        check: impl FnMut() -> Result<(), E>,
    ) -> Result<StreamStep, WaitError<E>> {
        match &self.backend {
            Backend::Node(n) => n.stream_next(item, None, check),
            Backend::Worker(w) => {
                self.flush_decrefs();
                match w.request(|req| WorkerToNode::StreamNext { req, item }, None, check)? {
                    Reply::Wait(ready) if ready.contains(&item) => {
                        Ok(StreamStep::Item { failed: false })
                    }
                    Reply::Wait(_) => Ok(StreamStep::End),
                    _ => Err(WaitError::Closed),
                }
            }
        }
    }

    pub fn stream_release(&self, task: volley_proto::TaskId, from: u32) {
        match &self.backend {
            Backend::Node(n) => {
                if !n.is_closed() {
                    n.stream_release(task, from)
                }
            }
            Backend::Worker(w) => {
                let _ = w.send(&WorkerToNode::StreamRelease { task, from });
            }
        }
    }

    pub fn watch(&self, ids: &[ObjectId]) -> Result<(), ClientError> {
        match &self.backend {
            Backend::Node(n) => {
                n.watch(ids);
                Ok(())
            }
            Backend::Worker(w) => {
                w.send(&WorkerToNode::Watch { ids: ids.to_vec() }).map_err(ClientError::from)
            }
        }
    }

    pub fn next_ready(&self, timeout: Duration) -> Vec<ObjectId> {
        match &self.backend {
            Backend::Node(n) => n.next_ready(timeout),
            Backend::Worker(w) => w.next_ready(timeout),
        }
    }
}

/// Maps a value the driver's own node holds (leasing it from the store if it lives there). If it
/// cannot be brought back into memory (the store is full of objects being read), its bytes are
/// copied out of the spill file instead: slower, but nothing fails that could be served.
pub fn load_local(n: &Node, v: SharedResult) -> Loaded {
    let v = v?;
    let Some(loc) = &v.shm else { return Ok((v, None)) };
    match n.store().lease_local(loc.seg) {
        Ok(lease) => {
            let m = Mapped { ptr: lease.ptr() as usize, len: lease.len(), guard: Arc::new(lease) };
            Ok((v, Some(m)))
        }
        Err(first) => {
            let copy = n
                .store()
                .read_copy(loc.seg)
                .ok()
                .and_then(|bytes| ObjectData::from_segment(loc, &bytes, v.contained.clone()));
            match copy {
                Some(c) => Ok((Arc::new(c), None)),
                None => Err(unavailable(
                    volley_proto::ErrorKind::ObjectStoreFull,
                    format!("a stored object could not be read: {first}"),
                )),
            }
        }
    }
}
