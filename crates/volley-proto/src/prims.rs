//! The wire types of the primitive service (issue 20): queues today, channels and locks later.
//!
//! A worker sends `WorkerToNode::Prim { req, op }` and its node answers
//! `NodeToWorker::PrimReply { req, result }`, at once or when a parked op completes; a driver
//! with an embedded node calls the service directly with the same types.

use serde::{Deserialize, Serialize};

/// The largest item one queue op carries (inline, in the node's memory). Larger values belong
/// in the object store: put an `ObjectRef` in the queue instead.
pub const MAX_PRIM_ITEM: usize = 64 << 20;

/// The request id of an op whose sender does not wait for its answer (a `put` on an unbounded
/// queue, which always succeeds): the node answers it only if it failed (`Closed`, `Error`),
/// and the sender reports that failure at its next op.
pub const PRIM_NO_REPLY: u64 = 0;

/// A primitive's id names its home node in its top 24 bits (the rest is that node's counter),
/// so an end passed to a process on another node finds its way home without a lookup.
pub const PRIM_HOME_SHIFT: u32 = 40;

/// The node a primitive with this id lives in.
pub fn prim_home(id: u64) -> crate::NodeId {
    crate::NodeId((id >> PRIM_HOME_SHIFT) as u32)
}

/// The id of the `counter`th primitive made on node `home`.
pub fn prim_id(home: crate::NodeId, counter: u64) -> u64 {
    (u64::from(home.0) << PRIM_HOME_SHIFT) | (counter & ((1 << PRIM_HOME_SHIFT) - 1))
}

/// One operation on the node's primitive service.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum PrimOp {
    /// Make a queue holding at most `maxsize` items (0: unbounded); answered `Created`.
    QueueCreate { maxsize: u64 },
    /// Append `item`; with `block`, a full queue parks the op until there is room. Answered
    /// `Done`, `Full` (not `block`, or cancelled while parked) or `Closed`.
    Put {
        queue: u64,
        #[serde(with = "serde_bytes")]
        item: Vec<u8>,
        block: bool,
    },
    /// Take the first item; with `block`, an empty queue parks the op until one comes.
    /// Answered `Item`, `Empty` (not `block`, or cancelled while parked) or `Closed`.
    Get { queue: u64, block: bool },
    /// Answered `Size` (items held now).
    Size { queue: u64 },
    /// Shut the queue: every parked and later op on it gets `Closed`. Answered `Done`.
    Close { queue: u64 },
    /// Stop waiting on the op with this request id (a timeout, an interrupt). If it is still
    /// parked, it is answered `Empty`/`Full` now; otherwise its answer was already sent, and this
    /// op gets none of its own. Either way exactly one answer reaches the waiter.
    Cancel,
    /// Put `item` back at the head of the queue: an item got by a caller that was interrupted
    /// before it could use it. Answered nothing.
    Unget {
        queue: u64,
        #[serde(with = "serde_bytes")]
        item: Vec<u8>,
    },
    /// One item got earlier is processed (`JoinableQueue.task_done`); answered `Done`, or
    /// `Error` if more were marked done than were put.
    TaskDone { queue: u64 },
    /// Wait until every item put has been marked done; answered `Done` or `Closed`.
    Join { queue: u64 },
    /// A worker received the `Item` answering its request `req` (queued by its connection's
    /// reader as the answer arrives, written with the worker's next message: its next request
    /// or its task's result): until then the node keeps a copy, which goes back to the queue if
    /// the worker dies. Answered nothing.
    Ack,
}

impl PrimOp {
    /// The primitive this op is on (where it must be carried out); `None` for ops that name
    /// none (`Cancel` and `Ack` follow the op they refer to; a create is made where it is asked).
    pub fn target(&self) -> Option<u64> {
        match self {
            PrimOp::QueueCreate { .. } | PrimOp::Cancel | PrimOp::Ack => None,
            PrimOp::Put { queue, .. }
            | PrimOp::Get { queue, .. }
            | PrimOp::Size { queue }
            | PrimOp::Close { queue }
            | PrimOp::Unget { queue, .. }
            | PrimOp::TaskDone { queue }
            | PrimOp::Join { queue } => Some(*queue),
        }
    }
}

/// The answer to a [`PrimOp`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum PrimResult {
    Created(u64),
    Done,
    Item(#[serde(with = "serde_bytes")] Vec<u8>),
    Size(u64),
    Full,
    Empty,
    /// The primitive is gone (shut down, or never made on this node); says which.
    Closed(String),
    /// The op was refused (bad input); why.
    Error(String),
}
