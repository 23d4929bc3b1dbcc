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

mod scheduler;

pub use scheduler::{
    Action, ActorError, ActorReport, Config, Holder, ObjectState, PeerView, Scheduler, Stats,
    StreamStep, WaitOwner, WaiterId, WorkerExit,
};
