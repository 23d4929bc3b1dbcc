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
    // sync: locks, semaphores, events, barriers and conditions (see `SyncOp`).
    /// Make a synchronisation primitive; answered `Created`.
    SyncCreate { kind: SyncKind },
    /// An op on synchronisation primitive `prim`.
    Sync { prim: u64, op: SyncOp },
}

/// The kinds of synchronisation primitive, with what each is made with.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum SyncKind {
    /// Non-reentrant: any holder may release it, as `threading.Lock`.
    Lock,
    /// Reentrant: its owner (a process and a thread in it) may acquire it again.
    RLock,
    /// `value` units; `bounded`: a release past `value` is refused (`BoundedSemaphore`).
    Semaphore {
        value: u64,
        bounded: bool,
    },
    Event,
    /// Releases its parked waiters once `parties` of them wait.
    Barrier {
        parties: u64,
    },
    /// A condition variable over the lock or rlock `lock` (made on the same node before).
    Condition {
        lock: u64,
    },
}

/// One op on a synchronisation primitive. `holder` names the caller's thread within its
/// process (the process itself is known from the connection): a lease is held by the pair.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum SyncOp {
    /// Take one unit of a lock, rlock or semaphore, parking (FIFO) while there is none if
    /// `block`. Answered `Acquired` (with `died` when the unit was freed by a dead holder),
    /// `Empty` (not `block`, or cancelled while parked) or `Closed`.
    Acquire { holder: u64, block: bool },
    /// Give back one unit; answered `Done`, or `Error` (not held; a bounded semaphore full).
    Release { holder: u64 },
    /// Answered `State`: a lock's or rlock's holds, a semaphore's free units, an event's
    /// flag (0 or 1), a barrier's parked parties (`broken` for a broken barrier).
    State,
    /// Set an event, waking every waiter; answered `Done`.
    Set,
    /// Clear an event; answered `Done`.
    Clear,
    /// Wait for an event to be set; answered `Done`, or `Empty` when cancelled.
    Wait,
    /// Wait at a barrier; answered `Arrived(index)` once all parties wait, or `Broken`. A
    /// cancelled (timed out) wait breaks the barrier, as `threading.Barrier` does.
    BarrierWait,
    /// Break a barrier: every parked and later wait is answered `Broken`; answered `Done`.
    Abort,
    /// Break the parked waits of a barrier and make it whole again; answered `Done`.
    Reset,
    /// Release the condition's lock (all of an rlock's holds) and park until notified; the
    /// lock is taken again (holds restored) before the answer, `Acquired { notified }`. A
    /// cancelled wait still takes the lock again first, answered `notified: false`.
    CondWait { holder: u64 },
    /// Wake the first `n` waiters of a condition (each then queues for the lock); `Done`, or
    /// `Error` if `holder` does not hold the condition's lock.
    Notify { holder: u64, n: u64 },
    /// Drop the primitive: every parked and later op gets `Closed`; answered `Done`.
    Close,
    /// The process of the asking node that used `holder` died: the units it holds are freed
    /// (the next acquirer told), as for a worker of the home node. Answered `Done`.
    HolderGone { holder: u64 },
}

/// What to send to undo an answer that arrived after its caller was interrupted: an item got
/// goes back to its queue, a unit acquired is released, so neither is leaked.
pub fn undo_of(op: &PrimOp) -> Undo {
    match op {
        PrimOp::Get { queue, .. } => Undo::Unget(*queue),
        PrimOp::Sync { prim, op: SyncOp::Acquire { holder, .. } } => {
            Undo::Release { prim: *prim, holder: *holder }
        }
        _ => Undo::Nothing,
    }
}

/// See [`undo_of`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undo {
    Nothing,
    Unget(u64),
    Release { prim: u64, holder: u64 },
}

impl Undo {
    /// The op that gives back what `result` handed over, if anything.
    pub fn op(self, result: PrimResult) -> Option<PrimOp> {
        match (self, result) {
            (Undo::Unget(queue), PrimResult::Item(item)) => Some(PrimOp::Unget { queue, item }),
            (Undo::Release { prim, holder }, PrimResult::Acquired { .. }) => {
                Some(PrimOp::Sync { prim, op: SyncOp::Release { holder } })
            }
            _ => None,
        }
    }
}

impl PrimOp {
    /// The primitive this op is on (where it must be carried out); `None` for ops that name
    /// none (`Cancel` and `Ack` follow the op they refer to; a create is made where it is asked).
    pub fn target(&self) -> Option<u64> {
        match self {
            PrimOp::QueueCreate { .. } | PrimOp::Cancel | PrimOp::Ack => None,
            PrimOp::SyncCreate { .. } => None,
            PrimOp::Sync { prim, .. } => Some(*prim),
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
    // sync
    /// A unit of a lock or semaphore is the asker's now. `died`: it was freed because its
    /// holder's process died (what it guarded may be half-updated). `notified`: a condition
    /// wait ended by a notify rather than a cancel (timeout).
    Acquired {
        died: bool,
        notified: bool,
    },
    /// Passed a barrier, with this arrival index (0 for the first of the round).
    Arrived(u64),
    /// The barrier is broken; says why.
    Broken(String),
    /// A primitive's state (see `SyncOp::State`).
    State {
        value: u64,
        broken: bool,
    },
}
