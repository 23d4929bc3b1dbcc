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

/// The request id of a node's recall (`NodeToWorker::PrimRecall`) inside the service: no
/// worker request has it (theirs count up from 1).
pub const PRIM_RECALL: u64 = u64::MAX - 1;

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
    // channels (volley.channel; the rest of this block, in this order)
    /// Make a CSP channel: `capacity` 0 is a rendezvous (a send completes when a receiver takes
    /// the item), n > 0 buffers n items; `broadcast` gives every registered reader end its own
    /// buffer of `max(capacity, 1)` and each message; `name` (may be empty) is used in error
    /// messages. Answered `Created`.
    ChanCreate { capacity: u64, broadcast: bool, name: String },
    /// Hand `item` to a receiver (parked FIFO until one takes it or there is buffer room).
    /// Answered `Done`, `Full` (cancelled while parked), `Poisoned`, `Retired` or `Closed`.
    ChanSend {
        chan: u64,
        #[serde(with = "serde_bytes")]
        item: Vec<u8>,
    },
    /// Take an item (parked FIFO until one comes); `reg` names the reader end of a broadcast
    /// channel (0 otherwise). Answered `Item`, `Empty` (cancelled), `Poisoned`, `Retired`, `Closed`.
    ChanRecv { chan: u64, reg: u64 },
    /// Alternation: commit exactly one ready guard, fairly (rotating start) or, with
    /// `priority`, the first ready one in order; with `skip`, answer `Empty` at once if none is
    /// ready, else park on every guarded channel until one fires. Answered `Selected`, `Empty`
    /// (skipped, or cancelled), `Poisoned`/`Retired` (a guard's channel) or `Closed`.
    ChanSelect { guards: Vec<Guard>, skip: bool, priority: bool },
    /// Poison the channel: every parked and later op on it fails `Poisoned`. Answered `Done`.
    ChanPoison { chan: u64 },
    /// Register a reader (or writer) end held by the asker; answered `Created(reg)`. With
    /// `travelling`, the end is being pickled: the process that unpickles it claims it.
    ChanJoin { chan: u64, reader: bool, travelling: bool },
    /// The asker unpickled an end registered as `reg` by the process that pickled it: it holds
    /// it now (and it leaves when the asker dies). If `reg` was claimed already, a new end is
    /// registered. Answered `Created(reg)` (the end's registration from now on).
    ChanClaim { chan: u64, reg: u64, reader: bool },
    /// The end `reg` leaves; with `retire` it counts as retired: once all readers (writers)
    /// of a channel retired, its writers (readers) fail `Retired`. Answered `Done`.
    ChanLeave { reg: u64, retire: bool },
    /// Hold (`hold`) or let go of the object-store objects a large channel message refers to:
    /// the node holds them while the message travels, so the sender may drop its own refs
    /// at once; the receiver lets go once it holds its own. Answered `Done`.
    ChanHold { ids: Vec<crate::ObjectId>, hold: bool },
    // sync: locks, semaphores, events, barriers and conditions (see `SyncOp`).
    /// Make a synchronisation primitive; answered `Created`.
    SyncCreate { kind: SyncKind },
    /// An op on synchronisation primitive `prim`.
    Sync { prim: u64, op: SyncOp },
    // batches (a worker streaming from a same-node queue; see `volley_runtime::prims`)
    /// A worker's `Get` that may take up to `max` items at once when the queue holds several:
    /// answered `Items` (the first is the caller's, the rest wait in the worker's connection
    /// for its next gets), or as a `Get` is. The node keeps every item un-acknowledged until the
    /// worker hands it out (one `Ack` per item), so a consumer killed with items in its buffer
    /// loses none; they count in `Size` until then. A forwarded one is served as a `Get`.
    GetMany { queue: u64, block: bool, max: u32 },
    /// The worker gives back the items of the batches `reqs` it has not handed out (its task
    /// ended, its node recalled them for another getter, or it shut the queue): they go back to
    /// the head of their queue, in order. `queue`: the queue whose recall this answers (every
    /// recall is answered once, even with no items), or 0. Not answered.
    GiveBack { reqs: Vec<u64>, queue: u64 },
    // channel batches and credits (a worker streaming through a same-node buffered channel)
    /// A worker's recv from a buffered channel (not broadcast) that may take up to `max` items
    /// at once, as [`PrimOp::GetMany`] does from a queue: answered `Items` or as a `ChanRecv`.
    /// The extra items wait in the worker's connection, still taking room in the channel's
    /// buffer until each is handed out (`Ack`), so senders feel the same backpressure; a
    /// receiver that parks meanwhile has them recalled (`PrimRecall`, `GiveBack`) first.
    ChanRecvMany { chan: u64, max: u32 },
    /// A send into one of the slots the node reserved for this worker (see
    /// [`PrimResult::Granted`]): it never parks, and is answered only if it failed (poisoned,
    /// retired, gone), which the worker raises at its next op.
    ChanPost {
        chan: u64,
        #[serde(with = "serde_bytes")]
        item: Vec<u8>,
    },
    /// The worker gives back `n` reserved slots it will not use (its task ended, a recall, a
    /// select). Not answered.
    ChanReturn { chan: u64, n: u64 },
    /// Answered `Done` at once, in order with the answers to the asker's earlier ops: a worker
    /// sends one as a task that sent ops without waiting (`PRIM_NO_REPLY`) ends, so that the
    /// failure of such an op is told to that task's log, not raised in the next task.
    Fence,
}

/// One guard of a [`PrimOp::ChanSelect`]: a recv on `chan` (`send` None), or a send of `send`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Guard {
    pub chan: u64,
    /// The reader end's registration, for a recv on a broadcast channel; 0 otherwise.
    pub reg: u64,
    pub send: Option<serde_bytes::ByteBuf>,
}

impl PrimOp {
    /// The primitive an `Item` answering this op was taken from: where it goes back
    /// (`Unget`) if its taker was interrupted before it could use it.
    pub fn takes_from(&self) -> Option<u64> {
        match self {
            PrimOp::Get { queue, .. } | PrimOp::GetMany { queue, .. } => Some(*queue),
            PrimOp::ChanRecvMany { chan, .. } => Some(*chan),
            PrimOp::ChanRecv { reg, .. } if *reg != 0 => Some(*reg),
            PrimOp::ChanRecv { chan, .. } => Some(*chan),
            _ => None,
        }
    }
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
        PrimOp::Sync { prim, op: SyncOp::Acquire { holder, .. } } => {
            Undo::Release { prim: *prim, holder: *holder }
        }
        // A select's item names the channel it came from in its answer.
        _ => op.takes_from().map_or(Undo::Nothing, Undo::Unget),
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
            (Undo::Release { prim, holder }, PrimResult::Acquired { .. }) => {
                Some(PrimOp::Sync { prim, op: SyncOp::Release { holder } })
            }
            (Undo::Unget(from), result) => {
                result.into_taken(Some(from)).map(|(queue, item)| PrimOp::Unget { queue, item })
            }
            (Undo::Nothing, result @ PrimResult::Selected { .. }) => {
                result.into_taken(None).map(|(queue, item)| PrimOp::Unget { queue, item })
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
            PrimOp::QueueCreate { .. } | PrimOp::Cancel | PrimOp::Ack | PrimOp::Fence => None,
            // Served where the worker is: its node keeps the batches' items.
            PrimOp::GiveBack { .. } => None,
            PrimOp::SyncCreate { .. } => None,
            PrimOp::Sync { prim, .. } => Some(*prim),
            PrimOp::Put { queue, .. }
            | PrimOp::Get { queue, .. }
            | PrimOp::GetMany { queue, .. }
            | PrimOp::Size { queue }
            | PrimOp::Close { queue }
            | PrimOp::Unget { queue, .. }
            | PrimOp::TaskDone { queue }
            | PrimOp::Join { queue } => Some(*queue),
            // channels
            PrimOp::ChanCreate { .. } | PrimOp::ChanHold { .. } => None,
            PrimOp::ChanSend { chan, .. }
            | PrimOp::ChanRecv { chan, .. }
            | PrimOp::ChanPoison { chan }
            | PrimOp::ChanJoin { chan, .. }
            | PrimOp::ChanClaim { chan, .. } => Some(*chan),
            // A select's guards all live on one node (refused otherwise, there).
            PrimOp::ChanSelect { guards, .. } => guards.first().map(|g| g.chan),
            // An end's registration lives with its channel.
            PrimOp::ChanLeave { reg, .. } => Some(*reg),
            PrimOp::ChanRecvMany { chan, .. }
            | PrimOp::ChanPost { chan, .. }
            | PrimOp::ChanReturn { chan, .. } => Some(*chan),
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
    // channels
    /// A select committed guard `index`: `item` is what a recv guard got (None for a send
    /// guard), taken from `chan` (the broadcast reader's registration for a broadcast channel).
    Selected {
        index: u32,
        chan: u64,
        item: Option<serde_bytes::ByteBuf>,
    },
    /// The channel was poisoned; says which.
    Poisoned(String),
    /// The other side of the channel retired; says which.
    Retired(String),
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
    /// Answers `GetMany`: two or more items, oldest first.
    Items(Vec<serde_bytes::ByteBuf>),
    /// Answers a worker's `ChanSend` on a buffered channel of its own node that it sends to
    /// alone (as `Done`), and reserves `n` more slots of the buffer for it: its next `n` sends
    /// there go as `ChanPost`, without waiting. The worker gives back the ones it does not use
    /// (`ChanReturn`). Never seen by the caller of `send`.
    Granted(u64),
}

impl PrimResult {
    /// Whether this answer hands an item over (which its taker acknowledges).
    pub fn hands_item(&self) -> bool {
        matches!(self, PrimResult::Item(_) | PrimResult::Selected { item: Some(_), .. })
    }

    /// The item this answer hands over with where it came from (`from`: the op's
    /// [`PrimOp::takes_from`]), to give it back when its taker cannot use it.
    pub fn into_taken(self, from: Option<u64>) -> Option<(u64, Vec<u8>)> {
        match self {
            PrimResult::Item(item) => from.map(|f| (f, item)),
            PrimResult::Selected { chan, item: Some(item), .. } => Some((chan, item.into_vec())),
            _ => None,
        }
    }
}
