//! volley's scheduler, as a state machine with no I/O.
//!
//! [`Scheduler`] is driven by events (a task submitted, a worker connected, a task finished, a
//! worker died, a process dropped a reference, ...) and answers each with [`Action`]s for the
//! caller to carry out (send this message to that worker, spawn a worker, wake that waiter). It owns
//! no sockets, threads or clocks, so tests feed it events one by one and check every decision.
//!
//! What it decides:
//! - **Dependencies**: a task waits here, not in a worker, until every object it depends on exists;
//!   if one of them failed, the task fails with the same error without running.
//! - **CPU slots**: a task holds `cpu_milli` thousandths of a CPU while it runs. Tasks go to idle
//!   workers first; only when every CPU is busy are small tasks *pipelined* behind running ones (a
//!   bounded number per worker), and an idle worker steals pipelined tasks back from busy ones, so a
//!   long task never holds short ones hostage.
//! - **Lending**: a worker blocked in `get`/`wait` lends its CPU out; the scheduler starts another
//!   worker to use it, so nested task graphs cannot deadlock however deep they go.
//! - **Faults**: a task whose worker dies is retried up to `max_retries`; tasks queued behind it are
//!   requeued without using a retry.
//! - **Lifetimes**: objects are reference counted (references held by processes, by pending tasks'
//!   arguments and by other objects' contents) and freed at zero.
//!
//! How it is built: the state is split into typed parts, each a struct in its own module whose
//! fields are private to that module and whose methods keep its invariants:
//!
//! | part | module | holds |
//! |---|---|---|
//! | `Objects`, `Waiters` | `scheduler/objects.rs` | object states, reference counts, who waits on each; `get`/`wait` calls in progress |
//! | `Tasks` | `scheduler/tasks.rs` | every task (spec, state, attempts, caller) and the two ready queues |
//! | `Workers` | `scheduler/workers.rs` | worker processes, their ids, the spawn back-off; which is idle, which to pipeline behind or steal from |
//! | `Resources` | `scheduler/resources.rs` | CPUs, custom resources and GPU indices: totals and use |
//! | `Actors` | `scheduler/actors.rs` | actors, their names, the start queue, calls held back for an argument |
//! | `Peers` | `scheduler/peers.rs` | the other nodes, this node's id and role, tasks peers sent, copies kept and pulls served for them |
//! | `Placement` | `scheduler/placement.rs` | placement groups made here, bundles held here, pending and removed groups |
//! | `Streams` | `scheduler/streams.rs` | per streaming task, what was made and what was asked for |
//! | `Registry` | `scheduler/code.rs` | functions and runtime-environment packages (one registry each) |
//!
//! `Scheduler` (`scheduler.rs`) is the coordinator: it owns the parts, takes each event, and holds
//! the logic that spans parts, by topic: `dispatch.rs` (where a runnable task goes),
//! `completion.rs` (what a task's end or failure changes), `waits.rs` (`get`/`wait` and
//! watches), and in `scheduler.rs` itself the worker, submission, cancellation and reference
//! events. The logic of actors, peers, remote actors, placement and streams that spans parts lives
//! in an `impl Scheduler` block in that part's module, and `explain.rs` only reads them all. A part
//! never reaches into another's fields. The records a part hands out (`WorkerEntry`,
//! `TaskEntry`, `ObjectEntry`, `ActorEntry`) are plain data the coordinator updates in place.
//! Tests drive the whole `Scheduler` event by event through one harness
//! (`scheduler/harness.rs`); each part also has unit tests of its own.

mod scheduler;
pub mod shrink;

pub use scheduler::{
    Action, ActorError, ActorRecord, ActorReport, Config, Holder, ObjectRecord, ObjectState,
    Parent, PeerView, Scheduler, Stats, StreamStep, TaskEvent, WaitOwner, WaiterId, WorkerExit,
    WorkerRecord,
};
