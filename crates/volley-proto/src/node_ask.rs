//! Questions for one node about what only it has: its own workers and objects (the state API
//! fans these out from the head to every live node) and the log files of its session's
//! `logs/` directory (`volley logs --node N`, the dashboard's logs page).
//!
//! A node asks another with `PeerMsg::Node` as the first message of an authenticated
//! connection of its own, answered with one `PeerMsg::NodeReply`. A client outside the cluster
//! asks the head to relay with `HeadRequest::NodeAsk`, so it needs the head's address only.

use serde::{Deserialize, Serialize};

use crate::{NodeId, StateAnswer, StateQuery};

/// The most bytes of log one answer carries (a follower asks again from `next_offset`).
pub const MAX_LOG_CHUNK: u64 = 1 << 20;

/// A question for one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeRequest {
    /// This node's own rows of `workers` or `objects` (filters and limit applied there, so a
    /// node with many objects sends at most `limit` of them and counts the rest in `total`);
    /// answered `State`.
    State(StateQuery),
    /// The log files of this node's session `logs/` directory; answered `Logs`.
    ListLogs,
    /// At most `max` bytes (capped at [`MAX_LOG_CHUNK`]) of log file `name` of that directory
    /// from `offset` (`None`: its last `max` bytes); answered `Log`.
    ReadLog { name: String, offset: Option<u64>, max: u64 },
    // New variants go last: postcard names a variant by its index.
}

/// A log file of a node's session directory, as `NodeRequest::ListLogs` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Its name in the directory (what `ReadLog` takes).
    pub name: String,
    /// `worker`, `node` (a `volley start` daemon's log), `driver` (a driver's diagnostics),
    /// `job` (a submitted job's output) or `other`.
    pub kind: String,
    /// The worker's (or driver's) pid, where the name says.
    pub pid: Option<u32>,
    /// The pid of the node process a worker belongs to.
    pub node_pid: Option<u32>,
    pub size: u64,
    /// Last written, milliseconds since the Unix epoch.
    pub modified_ms: u64,
}

/// A node's answer to a [`NodeRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeAnswer {
    State(StateAnswer),
    /// The node's log files, the pid of its process (its workers' files name it) and, when
    /// its own output goes to one of these files (`volley start`), that file's name.
    Logs {
        files: Vec<LogEntry>,
        node_pid: u32,
        own_log: Option<String>,
    },
    /// A piece of a log file: where it starts, where the next read goes on, the file's size now
    /// (less than an offset read before: it was rotated).
    Log {
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        offset: u64,
        next_offset: u64,
        size: u64,
    },
    /// The question could not be answered (a bad name, no logs kept, an unreachable node).
    Error(String),
    // New variants go last: postcard names a variant by its index.
}

/// A relayed question: `req` for node `node` of the cluster (the head answers its own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAsk {
    pub node: NodeId,
    pub req: NodeRequest,
}
