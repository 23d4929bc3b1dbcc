//! The messages exchanged between a node and its worker processes (and, later, remote drivers).

use serde::{Deserialize, Serialize};

use crate::{ActorId, FunctionId, ObjectId, ProtoError, TaskId, WorkerId};

/// Bumped whenever a message changes shape.
pub const PROTOCOL_VERSION: u32 = 22;

/// The first frame on every connection, both ways.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Hello {
    pub version: u32,
    pub worker_id: WorkerId,
    pub pid: u32,
}

/// A serialised Python value: a pickle (protocol 5) stream, its out-of-band buffers, and the ids
/// of the `ObjectRef`s pickled inside it (which this value keeps alive while it exists).
///
/// A small value carries its bytes in `data` and `buffers`. A large one lives in the node's
/// shared-memory store: `shm` says where, and `data`/`buffers` are empty.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ObjectData {
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    pub buffers: Vec<serde_bytes::ByteBuf>,
    pub contained: Vec<ObjectId>,
    /// Boxed: most values are small and inline, and every queued task's arguments and every
    /// ready result is an `ObjectData` (8 bytes instead of 56 each; the wire format is the same).
    pub shm: Option<Box<ShmLoc>>,
    /// Keeps the store's copy of a large value allocated while this value exists. Set by the
    /// node, never sent.
    #[serde(skip)]
    pub keep: Keep,
}

impl ObjectData {
    /// An inline value.
    pub fn inline(
        data: Vec<u8>,
        buffers: Vec<serde_bytes::ByteBuf>,
        contained: Vec<ObjectId>,
    ) -> Self {
        ObjectData { data, buffers, contained, shm: None, keep: Keep::default() }
    }

    /// The inline form of a stored value, from a copy of its segment's bytes; `None` if the
    /// bytes are shorter than the layout says.
    pub fn from_segment(loc: &ShmLoc, bytes: &[u8], contained: Vec<ObjectId>) -> Option<Self> {
        let (offsets, total) = shm_layout(loc.data_len, &loc.buffer_lens);
        if total as usize > bytes.len() {
            return None;
        }
        let data = bytes[..loc.data_len as usize].to_vec();
        let buffers = offsets
            .iter()
            .zip(&loc.buffer_lens)
            .map(|(o, l)| serde_bytes::ByteBuf::from(&bytes[*o as usize..(o + l) as usize]))
            .collect();
        Some(ObjectData::inline(data, buffers, contained))
    }

    /// Bytes of the value (pickle stream and buffers), wherever they live.
    pub fn size(&self) -> usize {
        match &self.shm {
            Some(loc) => loc.size as usize,
            None => self.data.len() + self.buffers.iter().map(|b| b.len()).sum::<usize>(),
        }
    }
}

/// Where a large value lies in the node's shared-memory store, and how its bytes are laid out
/// there: the pickle stream at `offset`, then each buffer at the next multiple of
/// [`SHM_BUFFER_ALIGN`] (see [`shm_layout`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShmLoc {
    /// The store's handle for the segment.
    pub seg: u64,
    /// Byte offset of the segment in the store's memory (valid in the message that carries it:
    /// a spilled and restored segment moves).
    pub offset: u64,
    pub size: u64,
    pub data_len: u64,
    pub buffer_lens: Vec<u64>,
}

/// Buffers inside a stored value start at multiples of this, which suits any numpy dtype and
/// SIMD loads.
pub const SHM_BUFFER_ALIGN: u64 = 64;

/// Offsets (relative to the segment) of each buffer after a pickle stream of `data_len` bytes,
/// and the total size.
pub fn shm_layout(data_len: u64, buffer_lens: &[u64]) -> (Vec<u64>, u64) {
    let mut at = data_len;
    let mut offsets = Vec::with_capacity(buffer_lens.len());
    for len in buffer_lens {
        // Saturating: a layout from a confused peer ends at u64::MAX and fits nothing.
        at = at.div_ceil(SHM_BUFFER_ALIGN).saturating_mul(SHM_BUFFER_ALIGN);
        offsets.push(at);
        at = at.saturating_add(*len);
    }
    (offsets, at)
}

/// An opaque guard held alongside a value (see [`ObjectData::keep`]). Two values compare equal
/// whatever their guards.
///
/// A thin pointer (to the guard's `Arc`), not the fat `Arc<dyn Any>` itself: every queued
/// task's arguments and every ready result is an `ObjectData`, and only large values in the
/// store have a guard (issue 19: 8 bytes less in each).
#[derive(Clone, Default)]
pub struct Keep(Option<std::sync::Arc<KeepGuard>>);

type KeepGuard = std::sync::Arc<dyn std::any::Any + Send + Sync>;

impl Keep {
    /// Holds `guard` while the value (or a copy of it) exists.
    pub fn new(guard: KeepGuard) -> Keep {
        Keep(Some(std::sync::Arc::new(guard)))
    }

    /// Whether it holds a guard.
    pub fn is_held(&self) -> bool {
        self.0.is_some()
    }
}

impl PartialEq for Keep {
    fn eq(&self, _: &Keep) -> bool {
        true
    }
}

impl std::fmt::Debug for Keep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_held() { "Keep(held)" } else { "Keep(none)" })
    }
}

/// Why an object holds an error instead of a value.
///
/// The numbers are the kinds' codes for the Python layer (`_core.ERROR_KINDS` maps each
/// [`ErrorKind::name`] to its code); they are defined here only. The wire format does not use
/// them (serde encodes the variant's position).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[repr(u8)]
pub enum ErrorKind {
    /// The task raised; `exception` holds the pickled exception when it could be pickled.
    TaskException = 0,
    /// The worker running the task died and no retries were left.
    WorkerCrashed = 1,
    /// The task was cancelled.
    Cancelled = 2,
    /// The task's result could not be pickled, or its arguments could not be unpickled.
    Serialization = 3,
    /// No node can ever satisfy the task's resource request.
    Unschedulable = 5,
    /// The object is unknown here (freed, or never existed).
    ObjectLost = 6,
    /// Worker processes could not be started.
    WorkerStartFailed = 7,
    /// The shared-memory object store had no room, even after spilling.
    ObjectStoreFull = 8,
    /// An actor's `__init__` raised; `exception` holds the pickled exception.
    ActorCreation = 9,
    /// The actor's process died (or it was killed) and the call cannot run.
    ActorDied = 10,
    /// A streaming task ended before producing this item (never shown to users).
    EndOfStream = 11,
}

impl ErrorKind {
    /// Every kind, in declaration order.
    pub const ALL: [ErrorKind; 11] = [
        ErrorKind::TaskException,
        ErrorKind::WorkerCrashed,
        ErrorKind::Cancelled,
        ErrorKind::Serialization,
        ErrorKind::Unschedulable,
        ErrorKind::ObjectLost,
        ErrorKind::WorkerStartFailed,
        ErrorKind::ObjectStoreFull,
        ErrorKind::ActorCreation,
        ErrorKind::ActorDied,
        ErrorKind::EndOfStream,
    ];

    /// The kind's code (see the type's docs).
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The kind of a code, or None for a code no kind has.
    pub fn from_code(code: u8) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|k| k.code() == code)
    }

    /// The kind's name as the Python layer spells it (`TASK_EXCEPTION`, ...).
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::TaskException => "TASK_EXCEPTION",
            ErrorKind::WorkerCrashed => "WORKER_CRASHED",
            ErrorKind::Cancelled => "CANCELLED",
            ErrorKind::Serialization => "SERIALIZATION",
            ErrorKind::Unschedulable => "UNSCHEDULABLE",
            ErrorKind::ObjectLost => "OBJECT_LOST",
            ErrorKind::WorkerStartFailed => "WORKER_START_FAILED",
            ErrorKind::ObjectStoreFull => "OBJECT_STORE_FULL",
            ErrorKind::ActorCreation => "ACTOR_CREATION",
            ErrorKind::ActorDied => "ACTOR_DIED",
            ErrorKind::EndOfStream => "END_OF_STREAM",
        }
    }
}

/// An error stored in place of an object's value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorPayload {
    pub kind: ErrorKind,
    pub task_name: String,
    pub message: String,
    pub traceback: String,
    pub exception: Option<serde_bytes::ByteBuf>,
    pub pid: u32,
}

/// Per-task options that the scheduler and the worker act on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskOptions {
    /// CPUs held while the task runs, in thousandths of a CPU.
    pub cpu_milli: u32,
    /// Retries after a worker crash; negative means unlimited.
    pub max_retries: i32,
    /// Also retry when the task raises a Python exception.
    pub retry_exceptions: bool,
    /// The task is a generator: each item it yields becomes an object of its own (returns 2,
    /// 3, ...), sent as it is made; return 1 holds the count of items (or the task's error).
    pub streaming: bool,
    /// Other resources held while it runs (for an actor: for its lifetime), in thousandths:
    /// `"GPU"` and custom names.
    pub resources: Vec<(String, u64)>,
    /// The runtime environment to run it in (the driver's `runtime_env`), if any.
    pub runtime_env: Option<RuntimeEnv>,
    /// Where in a cluster it may run.
    pub strategy: Strategy,
}

/// Where in a cluster a task may run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Strategy {
    /// Here while this node has room, else the least loaded node with room.
    #[default]
    Default,
    /// The least loaded of this node and the others, each task anew.
    Spread,
    /// On this node (by its cluster id) only; `soft`: there if it can, else as by default.
    Node { id: u32, soft: bool },
}

/// A job's runtime environment as its tasks carry it: a description for the worker (JSON, read
/// only by Python) and the content hashes of the packages (zip files of directories) it names,
/// which travel to a node with the first task that needs them there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuntimeEnv {
    pub json: String,
    pub packages: Vec<String>,
}

impl Default for TaskOptions {
    fn default() -> Self {
        TaskOptions {
            cpu_milli: 1000,
            max_retries: 3,
            retry_exceptions: false,
            streaming: false,
            resources: Vec::new(),
            runtime_env: None,
            strategy: Strategy::Default,
        }
    }
}

/// How an actor is run and kept alive; set when it is created.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ActorOptions {
    /// The class's name, for messages.
    pub class_name: String,
    /// Times the actor is recreated after its process dies; negative means unlimited.
    pub max_restarts: i32,
    /// Times a call in flight when the process died is run again; negative means unlimited.
    pub max_task_retries: i32,
    /// Calls run at once (threads, or coroutines for an async actor).
    pub max_concurrency: u32,
    pub is_async: bool,
    /// A name makes the actor findable (and keeps it alive until killed or shutdown).
    pub name: Option<String>,
    pub namespace: String,
    /// Lives until killed, whatever happens to the handles and their driver.
    pub detached: bool,
    /// With a name that is taken: return that actor instead of failing.
    pub get_if_exists: bool,
    /// Opaque to the engine: what a caller needs to build a handle (method table, ...).
    #[serde(with = "serde_bytes")]
    pub meta: Vec<u8>,
}

/// What a task is: a plain function call, the creation of an actor, or a call of one of an
/// actor's methods.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub enum ActorPart {
    #[default]
    None,
    /// The task's function is the class; running it makes the instance. Its id is the actor's.
    Create(Box<ActorOptions>),
    /// Boxed: most tasks are no actor's calls, and inline the call's id and method made
    /// every queued task's spec 32 bytes larger (issue 19). Encoded as the fields of the
    /// struct variant it was: the wire format is unchanged.
    Call(Box<ActorCall>),
}

/// A call of an actor's method (see [`ActorPart::Call`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ActorCall {
    pub actor: ActorId,
    pub method: String,
}

/// Everything needed to run a task, as submitted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskSpec {
    pub task_id: TaskId,
    pub function: FunctionId,
    /// Shared by a function's tasks (the binding keeps one per remote function): a queued task
    /// holds a pointer, not a copy. Encoded as a string: the wire format is unchanged.
    pub name: std::sync::Arc<str>,
    /// The pickled `(args, kwargs)`; top-level refs were replaced by placeholders for `deps`.
    pub args: ObjectData,
    /// Objects whose values replace the placeholders, in order. The task waits for them.
    /// A boxed slice (16 bytes, not a `Vec`'s 24): set once, never grown. Encoded as a `Vec`.
    pub deps: Box<[ObjectId]>,
    pub num_returns: u32,
    /// Shared by every task submitted with the same options (a remote function's, or one
    /// `.options(...)` call's): a queued task holds a pointer, not a copy (issue 19). Encoded as
    /// the options themselves: the wire format is unchanged.
    pub options: std::sync::Arc<TaskOptions>,
    pub actor: ActorPart,
}

impl TaskSpec {
    pub fn return_ids(&self) -> impl Iterator<Item = ObjectId> + '_ {
        (1..=self.num_returns).map(|i| ObjectId::for_return(self.task_id, i))
    }
}

/// What a worker reports for a finished task.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum TaskResult {
    /// One value per declared return.
    Ok(Vec<ObjectData>),
    /// The task failed; `retryable` says whether the task's options allow another attempt.
    Err { error: ErrorPayload, retryable: bool },
}

/// A resolved object: its value or the error stored in its place.
pub type ObjectResult = Result<ObjectData, ErrorPayload>;

// Execute is the common message; boxing it would cost an allocation per task for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum NodeToWorker {
    /// Run a task. `function` is included the first time this worker sees it.
    /// `gpus`: the GPUs (indices on this node) the task may use.
    Execute {
        spec: TaskSpec,
        function: Option<serde_bytes::ByteBuf>,
        deps: Vec<ObjectData>,
        gpus: Vec<u32>,
    },
    /// Give back these tasks if they have not started; answered by `Returned`.
    Revoke { tasks: Vec<TaskId> },
    /// Interrupt this task if it is running.
    Cancel { task: TaskId },
    /// Values for a `Get`, in request order.
    GetReply { req: u64, values: Vec<ObjectResult> },
    /// The ready subset for a `Wait` (or for a cancelled `Get`/`Wait`).
    WaitReply { req: u64, ready: Vec<ObjectId> },
    /// Watched objects that became ready.
    Ready { ids: Vec<ObjectId> },
    /// Exit now.
    Shutdown,
    /// Answers `Alloc`: the new segment's handle and offset, or why there is no room.
    AllocReply { req: u64, result: Result<(u64, u64), String> },
    /// Answers `Actor`.
    ActorReply { req: u64, answer: ActorAnswer },
    /// Answers `Prim` (see `prims.rs`).
    PrimReply { req: u64, result: crate::PrimResult },
    /// Another process waits on `queue`: give back the items of its batches not handed out
    /// yet (`PrimOp::GiveBack`).
    PrimRecall { queue: u64 },
    /// End this process at once (as `SIGKILL` would) if it is still running `task`; ignored once
    /// that task is done. A forced cancel or a removed placement group means to end that task,
    /// and the node cannot know whether its `Done` is already on the way: a plain kill then
    /// took down the next task the worker had started.
    KillIfRunning { task: TaskId },
}

/// Requests about actors that need an answer (from a worker; a driver calls its node directly).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum ActorRequest {
    /// Create an actor (`spec.actor` is `Create`); answered `Found` (with `get_if_exists`, maybe
    /// an existing actor) or `Error`.
    Create(Box<TaskSpec>),
    /// Find a named actor; answered `Found` or `NotFound`.
    Lookup { name: String, namespace: String },
    /// Kill an actor's process; answered `Done`.
    Kill { actor: ActorId, no_restart: bool },
    /// Answered `State`.
    State { actor: ActorId },
    /// Reserve a placement group's bundles (see [`PgSpec`]); answered `Done` (its `ready` object
    /// becomes ready once every bundle is reserved) or `Error`.
    PgCreate(Box<PgSpec>),
    /// Release a placement group; answered `Done`.
    PgRemove { pg: String },
    /// Answered `Pgs`.
    PgTable,
    /// A question for the cluster's head (its key-value table, its directory); answered `Head`.
    Head(crate::HeadRequest),
}

/// How a placement group's bundles are placed on nodes.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum PgStrategy {
    /// As few nodes as possible (one if it fits).
    Pack,
    /// As many nodes as possible.
    Spread,
    /// All bundles on one node, or wait.
    StrictPack,
    /// Each bundle on a different node, or wait.
    StrictSpread,
}

/// A placement group to create: bundles of resources reserved together.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PgSpec {
    /// Unique id, chosen by the creator; resource names `pg:<id>:<bundle>:<name>` and
    /// `pg:<id>:<name>` stand for what the bundles reserve.
    pub id: String,
    pub name: String,
    /// Per bundle: (resource, thousandths); `CPU` is one of the names.
    pub bundles: Vec<Vec<(String, u64)>>,
    pub strategy: PgStrategy,
    /// Becomes `value` once every bundle is reserved (fails if the group can never be placed,
    /// or is removed first). Held by the creator.
    pub ready: ObjectId,
    pub value: ObjectData,
}

/// A placement group as `placement_group_table` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PgInfo {
    pub id: String,
    pub name: String,
    /// `PENDING`, `CREATED`, `RESCHEDULING` (a node holding bundles died), `REMOVED`, `FAILED`.
    pub state: String,
    pub strategy: PgStrategy,
    pub bundles: Vec<Vec<(String, u64)>>,
    /// The node holding each bundle, once reserved.
    pub nodes: Vec<Option<u32>>,
    /// Why it cannot be placed, if it is waiting or failed.
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum ActorAnswer {
    /// The actor and its handle metadata; `created` is false for an existing one.
    Found {
        actor: ActorId,
        #[serde(with = "serde_bytes")]
        meta: Vec<u8>,
        created: bool,
    },
    NotFound,
    Error(String),
    Done,
    State(ActorInfo),
    Pgs(Vec<PgInfo>),
    Head(crate::HeadAnswer),
}

/// An actor's state, for users and tests.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ActorInfo {
    /// `PENDING` (waiting for its arguments or resources), `STARTING`, `ALIVE`, `RESTARTING`,
    /// `DEAD`.
    pub state: String,
    pub restarts: u32,
    pub pid: u32,
    pub class_name: String,
    pub name: Option<String>,
    pub namespace: String,
    /// Why it died, if it did.
    pub death: Option<String>,
    /// Calls queued or running.
    pub pending_calls: u32,
}

/// `Submit` (a whole `TaskSpec`) is as common as `Done`; boxing it would cost an allocation per
/// task for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum WorkerToNode {
    Done {
        task: TaskId,
        result: TaskResult,
    },
    Returned {
        tasks: Vec<TaskId>,
    },
    Submit {
        spec: TaskSpec,
    },
    RegisterFunction {
        id: FunctionId,
        bytes: serde_bytes::ByteBuf,
    },
    Put {
        id: ObjectId,
        data: ObjectData,
    },
    /// Block until all `ids` are ready, then answer `GetReply`. The worker's CPU is lent out
    /// meanwhile.
    Get {
        req: u64,
        ids: Vec<ObjectId>,
    },
    /// Block until `num_returns` of `ids` are ready, then answer `WaitReply`.
    Wait {
        req: u64,
        ids: Vec<ObjectId>,
        num_returns: u32,
    },
    /// Stop waiting on request `req`; the node answers with a `WaitReply` unless it already replied.
    CancelRequest {
        req: u64,
    },
    /// Send `Ready` for each of these once it is ready (without blocking the worker).
    Watch {
        ids: Vec<ObjectId>,
    },
    IncRef {
        ids: Vec<ObjectId>,
    },
    DecRef {
        ids: Vec<ObjectId>,
    },
    Cancel {
        id: ObjectId,
        force: bool,
    },
    /// Reserve `size` bytes in the store for a value this worker is about to write; answered by
    /// `AllocReply`. The segment is the worker's until a `Done`, `Put` or `Submit` names it.
    Alloc {
        req: u64,
        size: u64,
    },
    /// This worker no longer reads these segments (its views are gone), or gives up segments it
    /// allocated and never used.
    Release {
        segs: Vec<u64>,
    },
    /// An actor request, answered by `ActorReply`.
    Actor {
        req: u64,
        request: ActorRequest,
    },
    /// The `index`-th object (2, 3, ...) of streaming task `task`.
    Yield {
        task: TaskId,
        index: u32,
        data: ObjectData,
    },
    /// Wait for the `item` of a streaming task (this worker is its caller); answered by a
    /// `WaitReply` naming the item, or naming nothing if the stream ended before it.
    StreamNext {
        req: u64,
        item: ObjectId,
    },
    /// This worker will not take the items of streaming task `task` from `from` on.
    StreamRelease {
        task: TaskId,
        from: u32,
    },
    /// This worker exits after the result it just sent (a task asked it to: a pool's
    /// `maxtasksperchild`): give it no more tasks and take back those queued behind; its exit is
    /// not a crash.
    Retire,
    /// An op on the node's primitive service (queues), answered by `PrimReply` with the same
    /// `req` (a `Cancel` names the request it cancels).
    Prim {
        req: u64,
        op: crate::PrimOp,
    },
}

pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, ProtoError> {
    Ok(postcard::to_stdvec(msg)?)
}

pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ProtoError> {
    Ok(postcard::from_bytes(bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IdGenerator;

    /// Codes are unique and round-trip, names are unique, and `ALL` lists every kind (a kind
    /// added without a code or a name fails to compile in `name`, or here).
    #[test]
    fn error_kind_codes_are_one_table() {
        let mut codes = std::collections::HashSet::new();
        let mut names = std::collections::HashSet::new();
        for k in ErrorKind::ALL {
            assert!(codes.insert(k.code()), "{k:?}: duplicate code");
            assert!(names.insert(k.name()), "{k:?}: duplicate name");
            assert_eq!(ErrorKind::from_code(k.code()), Some(k));
        }
        assert_eq!(ErrorKind::from_code(4), None);
        assert_eq!(ErrorKind::from_code(200), None);
        // The wire encodes a kind by position, not by code: codes may have gaps.
        let b = postcard::to_allocvec(&ErrorKind::Unschedulable).expect("encodes");
        assert_eq!(b, vec![4]);
    }

    #[test]
    fn messages_roundtrip() {
        let g = IdGenerator::new();
        let spec = TaskSpec {
            task_id: g.next_task(),
            function: FunctionId([7; 16]),
            name: "f".into(),
            args: ObjectData::inline(
                vec![1, 2, 3],
                vec![serde_bytes::ByteBuf::from(vec![9; 1000])],
                vec![],
            ),
            deps: vec![ObjectId::for_return(g.next_task(), 1)].into(),
            num_returns: 2,
            options: std::sync::Arc::new(TaskOptions::default()),
            actor: ActorPart::None,
        };
        let msg = WorkerToNode::Submit { spec: spec.clone() };
        let back: WorkerToNode = decode(&encode(&msg).expect("encode")).expect("decode");
        assert_eq!(back, msg);
        assert_eq!(spec.return_ids().count(), 2);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(decode::<NodeToWorker>(&[0xff, 0xff, 0xff]).is_err());
    }
}

/// Borrowed mirror of the first [`NodeToWorker`] variants, so large messages are encoded straight
/// from the node's shared (`Arc`) copies without cloning their bytes first. Variant order must
/// match [`NodeToWorker`]; the test below checks that both encode alike.
#[derive(Serialize)]
enum NodeToWorkerRef<'a> {
    Execute {
        spec: &'a TaskSpec,
        function: Option<&'a serde_bytes::Bytes>,
        deps: &'a [&'a ObjectData],
        gpus: &'a [u32],
    },
    #[allow(dead_code)]
    Revoke,
    #[allow(dead_code)]
    Cancel,
    GetReply {
        req: u64,
        values: &'a [Result<&'a ObjectData, &'a ErrorPayload>],
    },
}

/// Encodes `NodeToWorker::Execute` from borrowed parts.
pub fn encode_execute(
    spec: &TaskSpec,
    function: Option<&[u8]>,
    deps: &[&ObjectData],
    gpus: &[u32],
) -> Result<Vec<u8>, ProtoError> {
    let function = function.map(serde_bytes::Bytes::new);
    let msg = NodeToWorkerRef::Execute { spec, function, deps, gpus };
    Ok(postcard::to_stdvec(&msg)?)
}

/// Encodes `NodeToWorker::GetReply` from borrowed values.
pub fn encode_get_reply(
    req: u64,
    values: &[Result<&ObjectData, &ErrorPayload>],
) -> Result<Vec<u8>, ProtoError> {
    Ok(postcard::to_stdvec(&NodeToWorkerRef::GetReply { req, values })?)
}

#[cfg(test)]
mod mirror_tests {
    use super::*;

    #[test]
    fn borrowed_encodings_match_owned_ones() {
        let spec = TaskSpec {
            task_id: TaskId(5),
            function: FunctionId([1; 16]),
            name: "g".into(),
            args: ObjectData::default(),
            deps: Box::default(),
            num_returns: 1,
            options: std::sync::Arc::new(TaskOptions::default()),
            actor: ActorPart::Call(Box::new(ActorCall {
                actor: ActorId(TaskId(9)),
                method: "m".into(),
            })),
        };
        let mut dep = ObjectData::inline(vec![4, 5], vec![], vec![]);
        dep.shm = Some(Box::new(ShmLoc {
            seg: 3,
            offset: 4096,
            size: 10,
            data_len: 2,
            buffer_lens: vec![8],
        }));
        let bytes = encode_execute(&spec, Some(b"fn"), &[&dep], &[1, 3]).expect("encode");
        let owned = NodeToWorker::Execute {
            spec,
            function: Some(serde_bytes::ByteBuf::from(b"fn".to_vec())),
            deps: vec![dep.clone()],
            gpus: vec![1, 3],
        };
        assert_eq!(decode::<NodeToWorker>(&bytes).expect("decode"), owned);

        let err = ErrorPayload {
            kind: ErrorKind::Cancelled,
            task_name: "t".into(),
            message: "m".into(),
            traceback: String::new(),
            exception: None,
            pid: 1,
        };
        let bytes = encode_get_reply(9, &[Ok(&dep), Err(&err)]).expect("encode");
        let owned = NodeToWorker::GetReply { req: 9, values: vec![Ok(dep), Err(err)] };
        assert_eq!(decode::<NodeToWorker>(&bytes).expect("decode"), owned);
    }

    /// The layout of issue 19's smaller queued task (an 8-aligned `TaskId` and a 4-aligned
    /// `ObjectId`, a shared
    /// `Arc<str>` name, a boxed actor call) encodes every task exactly as the plain types it
    /// replaced did: no protocol version bump, and old and new nodes agree on the bytes.
    #[test]
    fn the_compact_task_spec_encodes_as_the_plain_one_did() {
        #[derive(Serialize)]
        enum PlainActorPart {
            #[allow(dead_code)]
            None,
            #[allow(dead_code)]
            Create(Box<ActorOptions>),
            Call {
                actor: u128,
                method: String,
            },
        }
        #[derive(Serialize)]
        struct PlainSpec {
            task_id: u128,
            function: FunctionId,
            name: String,
            args: ObjectData,
            deps: Vec<(u128, u32)>,
            num_returns: u32,
            options: TaskOptions,
            actor: PlainActorPart,
        }
        let task = u128::MAX - 7;
        let spec = TaskSpec {
            task_id: TaskId(task),
            function: FunctionId([2; 16]),
            name: "f".into(),
            args: ObjectData::inline(vec![1, 2, 3], vec![], vec![]),
            deps: vec![ObjectId::for_return(TaskId(task - 1), 2)].into(),
            num_returns: 1,
            options: std::sync::Arc::new(TaskOptions::default()),
            actor: ActorPart::Call(Box::new(ActorCall {
                actor: ActorId(TaskId(9)),
                method: "m".into(),
            })),
        };
        let plain = PlainSpec {
            task_id: task,
            function: FunctionId([2; 16]),
            name: "f".into(),
            args: ObjectData::inline(vec![1, 2, 3], vec![], vec![]),
            deps: vec![(task - 1, 2)],
            num_returns: 1,
            options: TaskOptions::default(),
            actor: PlainActorPart::Call { actor: 9, method: "m".into() },
        };
        let bytes = postcard::to_stdvec(&spec).expect("encode");
        assert_eq!(bytes, postcard::to_stdvec(&plain).expect("encode"));
        assert_eq!(decode::<TaskSpec>(&bytes).expect("decode"), spec);
        assert_eq!(std::mem::size_of::<ObjectId>(), 20, "a task id and a u32, no padding");
    }
}

#[cfg(test)]
mod layout_tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_do_not_overlap() {
        let (offs, total) = shm_layout(5, &[3, 0, 100]);
        assert_eq!(offs, vec![64, 128, 128]);
        assert_eq!(total, 228);
        let (offs, total) = shm_layout(0, &[]);
        assert!(offs.is_empty());
        assert_eq!(total, 0);
    }
}
