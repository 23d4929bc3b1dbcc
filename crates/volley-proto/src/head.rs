//! Requests to the cluster's head about what it keeps for the whole cluster: its key-value table
//! and its directory (named actors, placement groups, jobs).
//!
//! A node asks its head with `PeerMsg::Head` (the first message of a connection, answered with
//! `PeerMsg::HeadReply`); a worker asks its node with `ActorRequest::Head`, and a node that is
//! its own head answers with a function call, so one machine and a cluster share the code.

use serde::{Deserialize, Serialize};

use crate::{JobRow, JobSpec, NamedActor, NodeId, PgInfo};

/// The most bytes of one key-value entry's key, and of its value: the table is for small
/// shared state (addresses, configurations, checkpoints' paths), not for data, which belongs
/// in the object store.
pub const MAX_KV_KEY: usize = 4 << 10;
pub const MAX_KV_VALUE: usize = 4 << 20;

/// A job: one driver's session in the cluster, known by the node its driver joined as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobInfo {
    /// The driver's node (a job's id for now: drivers join once per session).
    pub node: NodeId,
    /// The driver's process.
    pub pid: u32,
    /// Milliseconds since the Unix epoch when it joined, and when it left (`None` while it runs).
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
}

/// The head's directory as one answer (for the state API and `volley.library.directory`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Directory {
    /// Every named actor, by namespace and name.
    pub actors: Vec<NamedActor>,
    /// Every placement group, with the node whose driver made it.
    pub groups: Vec<(NodeId, PgInfo)>,
    /// Every job since the head started, by node.
    pub jobs: Vec<JobInfo>,
}

/// The head's answer to `HeadRequest::ReserveName`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reservation {
    /// The name is now claimed for the asking node (release it if the creation fails).
    Reserved,
    /// The asking node already holds the name (an actor it hosts, or a claim it made): its own
    /// scheduler, which knows whether that actor still lives, decides.
    Mine,
    /// Another node holds the name.
    Taken,
}

/// A question to the head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HeadRequest {
    /// Store `value` under `key` in `namespace` (keeping an existing value unless
    /// `overwrite`); answered `Stored`.
    KvPut {
        namespace: String,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        overwrite: bool,
    },
    /// Answered `Value`.
    KvGet {
        namespace: String,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Answered `Deleted`.
    KvDelete {
        namespace: String,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// The keys of `namespace` starting with `prefix`, in order; answered `Keys`.
    KvKeys {
        namespace: String,
        #[serde(with = "serde_bytes")]
        prefix: Vec<u8>,
    },
    /// The whole directory; answered `Directory`.
    Directory,
    /// The named actor `name` of `namespace`, wherever it runs; answered `Named`.
    LookupName { namespace: String, name: String },
    /// Node `node` is about to create an actor named `name` in `namespace`: the name is
    /// claimed for it (atomically at the head, so of two nodes racing for one name exactly one
    /// gets it); answered `Reservation`.
    ReserveName { namespace: String, name: String, node: NodeId },
    /// Node `node` did not create the actor it reserved the name for; answered `Deleted`.
    ReleaseName { namespace: String, name: String, node: NodeId },
    /// Run a job's driver on the head (`volley job submit`); answered `Job` (its row) or
    /// `JobRefused`.
    JobSubmit(JobSpec),
    /// A job's row; answered `Job` or `JobRefused` (no such job).
    JobStatus { id: String },
    /// End a job (SIGTERM to its driver's process group, SIGKILL after a grace period);
    /// answered `Job` with its row as it is now.
    JobStop { id: String },
    /// Every job the head knows (submitted ones and drivers that joined); answered `Jobs`.
    JobList,
    /// A job's output from byte `offset` on; answered `JobLogs`.
    JobLogs { id: String, offset: u64 },
    /// A state API query the head answers from its tables (tasks, actors, placement groups,
    /// jobs, nodes); answered `State`.
    State(crate::StateQuery),
    /// A chunk of a job's zipped working directory (`hash` names it, `total` is its size),
    /// sent before the `JobSubmit` that names it; answered `JobUploaded` with the bytes the
    /// head has of it (where to go on from; `total` once it is stored), or `JobRefused`.
    JobUpload {
        hash: String,
        total: u64,
        offset: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Relay a question to one node of the cluster (`volley logs --node N` from outside it);
    /// answered `Node` with that node's answer (or its `Error` when it cannot be reached).
    NodeAsk(crate::NodeAsk),
    /// Node `node` of the actor just created this named actor: the head lists it at once, so
    /// `get_actor` from any node finds it as soon as its creation returned (the node's next
    /// heartbeat would list it a beat later); answered `Stored` (false: another node's actor
    /// holds the name).
    NameCreated(NamedActor),
    /// Adds `delta` to the integer under `key` (a missing key counts as 0), atomically at the
    /// head; answered `Counter` with the new value, or `KvRefused` when the value there is not
    /// an integer's decimal text or the sum overflows an i64. Integers are kept as decimal
    /// text so that a plain `KvPut` of "5" can be counted on, and read back by anyone.
    KvIncr {
        namespace: String,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        delta: i64,
    },
    /// Replaces the value under `key` with `new` (`None`: deletes it) only if it is now
    /// `expected` (`None`: absent), atomically; answered `Stored` (whether it swapped).
    KvCompareAndSet {
        namespace: String,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        expected: Option<serde_bytes::ByteBuf>,
        new: Option<serde_bytes::ByteBuf>,
    },
    /// Stores `value` under `key` unless a value is there; answered `Value` with the value
    /// there afterwards (the existing one or `value`), so of racing callers all see one value.
    KvSetDefault {
        namespace: String,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Waits at most `wait_ms` (capped at [`MAX_KV_WATCH_MS`]) until `key` is written after
    /// its version `seen` (`None`: the version now; 0: not written since the head started);
    /// answered `KvWatched`. A watcher loops with the version it was answered, so no write
    /// between two waits is missed, even one undone meanwhile.
    KvWatch {
        namespace: String,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        seen: Option<u64>,
        wait_ms: u32,
    },
    /// Stores every pair of `items` in `namespace` at once (one lock of the table: nobody
    /// sees some of them stored and not the others); answered `Stored(true)`.
    KvPutMany { namespace: String, items: Vec<(serde_bytes::ByteBuf, serde_bytes::ByteBuf)> },
    /// The pairs of `namespace` whose keys start with `prefix`, in key order, as one snapshot;
    /// answered `Items`.
    KvItems {
        namespace: String,
        #[serde(with = "serde_bytes")]
        prefix: Vec<u8>,
    },
    /// Node `by` created this named actor and placed it on node `actor.node`: the head lists
    /// it there at once (`by`'s claim on the name passes to it), as `NameCreated` does for an
    /// actor its creator hosts; answered `Stored` (false: another node holds the name).
    NamePlaced { actor: NamedActor, by: NodeId },
    // New variants go last: postcard names a variant by its index.
}

/// The most bytes one `KvPutMany` carries (its keys and values together).
pub const MAX_KV_MANY: usize = 16 << 20;

/// The longest one `KvWatch` waits at the head: well under a member's 30 s wait for the
/// head's answer, so a watch that sees no change is an answer, not a timeout.
pub const MAX_KV_WATCH_MS: u32 = 10_000;

/// A value's digest (FNV-1a, never 0), 0 for no value. `KvWatch` compared these before it
/// compared versions; kept for callers that want a short stand-in for a value.
pub fn kv_digest(value: Option<&[u8]>) -> u64 {
    let Some(v) = value else { return 0 };
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in v {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.max(1)
}

/// The head's answer to a [`HeadRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum HeadAnswer {
    /// Whether the value was stored (false: a value existed and `overwrite` was false).
    Stored(bool),
    Value(Option<serde_bytes::ByteBuf>),
    /// Whether there was a value to delete.
    Deleted(bool),
    Keys(Vec<serde_bytes::ByteBuf>),
    Directory(Directory),
    /// The request could not be served (too large a key or value, no head reachable).
    Error(String),
    Named(Option<NamedActor>),
    Reservation(Reservation),
    Job(JobRow),
    Jobs(Vec<JobRow>),
    /// A chunk of a job's output, the offset to ask from next, and whether the job is over and
    /// this chunk reached the end of its output.
    JobLogs {
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        next: u64,
        done: bool,
    },
    /// A job request the head turned down (an unknown id, a bad submission): what to fix.
    JobRefused(String),
    State(crate::StateAnswer),
    /// The bytes of an uploaded working directory the head has (see `JobUpload`).
    JobUploaded(u64),
    Node(crate::NodeAnswer),
    /// The value of a counter after `KvIncr`.
    Counter(i64),
    /// A key-value operation the head turned down because of what is stored (an increment of
    /// a value that is not an integer): what is wrong, for the caller (not a connection fault).
    KvRefused(String),
    /// The answer to `KvWatch`: the key's version now (in the `digest` field, its name from
    /// when values were compared), whether it differs from the
    /// one watched, and the value when it does.
    KvWatched {
        digest: u64,
        changed: bool,
        value: Option<serde_bytes::ByteBuf>,
    },
    /// The answer to `KvItems`: (key, value) pairs in key order.
    Items(Vec<(serde_bytes::ByteBuf, serde_bytes::ByteBuf)>),
    // New variants go last: postcard names a variant by its index.
}

impl HeadRequest {
    /// A key-value operation that the head answers at once under its lock (every one but
    /// `KvWatch`, which waits): a node that is its own head may answer it on the thread that
    /// read it.
    pub fn is_quick_kv(&self) -> bool {
        matches!(
            self,
            HeadRequest::KvPut { .. }
                | HeadRequest::KvGet { .. }
                | HeadRequest::KvDelete { .. }
                | HeadRequest::KvKeys { .. }
                | HeadRequest::KvIncr { .. }
                | HeadRequest::KvCompareAndSet { .. }
                | HeadRequest::KvSetDefault { .. }
                | HeadRequest::KvPutMany { .. }
                | HeadRequest::KvItems { .. }
        )
    }

    /// Checks the sizes a head accepts (the node checks before sending, the head again on
    /// receipt): an error message, or `None`.
    pub fn check(&self) -> Option<String> {
        let (key, value) = match self {
            HeadRequest::KvPut { key, value, .. } => (key.len(), value.len()),
            HeadRequest::KvGet { key, .. } | HeadRequest::KvDelete { key, .. } => (key.len(), 0),
            HeadRequest::KvKeys { prefix, .. } => (prefix.len(), 0),
            HeadRequest::KvIncr { key, .. } | HeadRequest::KvWatch { key, .. } => (key.len(), 0),
            HeadRequest::KvCompareAndSet { key, expected, new, .. } => {
                let len = |v: &Option<serde_bytes::ByteBuf>| v.as_ref().map_or(0, |v| v.len());
                (key.len(), len(expected).max(len(new)))
            }
            HeadRequest::KvSetDefault { key, value, .. } => (key.len(), value.len()),
            HeadRequest::KvItems { prefix, .. } => (prefix.len(), 0),
            HeadRequest::KvPutMany { items, .. } => {
                let total: usize = items.iter().map(|(k, v)| k.len() + v.len()).sum();
                if total > MAX_KV_MANY {
                    return Some(format!(
                        "one update carries at most {MAX_KV_MANY} bytes of keys and values, \
                         not {total}: split it"
                    ));
                }
                let key = items.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
                (key, items.iter().map(|(_, v)| v.len()).max().unwrap_or(0))
            }
            HeadRequest::Directory
            | HeadRequest::LookupName { .. }
            | HeadRequest::ReserveName { .. }
            | HeadRequest::ReleaseName { .. }
            | HeadRequest::NameCreated(_)
            | HeadRequest::NamePlaced { .. }
            | HeadRequest::JobStatus { .. }
            | HeadRequest::JobStop { .. }
            | HeadRequest::JobList
            | HeadRequest::JobLogs { .. }
            | HeadRequest::State(_)
            | HeadRequest::NodeAsk(_) => (0, 0),
            HeadRequest::JobSubmit(spec) => return spec.check(),
            HeadRequest::JobUpload { hash, total, offset, data } => {
                return crate::jobs::check_upload(hash, *total, *offset, data.len())
            }
        };
        if key > MAX_KV_KEY {
            return Some(format!("a key-value key is at most {MAX_KV_KEY} bytes, not {key}"));
        }
        if value > MAX_KV_VALUE {
            return Some(format!(
                "a key-value value is at most {MAX_KV_VALUE} bytes, not {value}; put large \
                 data in the object store (volley.put) and keep its ref or a path here"
            ));
        }
        None
    }
}
