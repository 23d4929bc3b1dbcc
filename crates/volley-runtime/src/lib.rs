//! volley's node runtime: the glue between the sans-IO scheduler and the operating system.
//!
//! - [`Node`] runs inside the driver by default: it owns the scheduler, listens on a Unix socket
//!   for its worker processes, spawns and supervises them, and serves the driver's calls directly
//!   (no socket between the driver and its own node).
//! - [`WorkerConn`] is the other end: a worker process's connection to its node, with a reader
//!   thread that queues tasks, answers revocations and routes replies, so the worker's main thread
//!   only ever runs user code or waits with the GIL released.
//! - [`head::Head`] keeps what the cluster holds in one place (membership; named actors,
//!   placement groups, jobs, a key-value table) behind [`head::HeadStore`]; a lone node is its
//!   own head. Every reader of metrics takes a [`volley_proto::NodeSnapshot`] (`Node::snapshot`,
//!   `Node::cluster_view`, `volley status`).
//!
//! Blocking calls take a `check` callback, run every few milliseconds while waiting, so the
//! binding layer can turn a pending Ctrl-C into `KeyboardInterrupt` without this crate knowing
//! anything of Python.

pub mod client;
mod cluster;
pub mod dashboard;
mod diag;
mod error;
pub mod head;
mod host;
mod local_status;
mod log_files;
mod logs;
mod memory;
mod node;
mod outbox;
pub mod prims;
mod rundir;
pub mod serve;
mod shared;
mod spin;
pub mod state;
mod supervisor;
mod template;
#[cfg(test)]
mod testing;
mod tls;
mod worker_conn;

pub use cluster::{ask_head_at, cluster_status, cluster_view, ClusterConfig};
pub use diag::{
    log_file as diagnostics_file, route_events, set_log_dir as set_diagnostics_dir,
    stop_routing_events, take_events,
};
pub use error::RuntimeError;
pub use local_status::{local_nodes, query_local, query_local_view};
pub use log_files::{list_logs, read_log, set_log_dir as set_worker_log_dir, LogChunk, LogFile};
pub use node::{Node, NodeConfig};
pub use template::AdoptedTemplate;
pub use tls::{self_signed_cert, TlsConfig};
pub use volley_store::{Arena, Lease, Owner, Store, StoreError};
pub use worker_conn::{CurrentTask, ExecuteMsg, Received, Reply, ShmLease, View, WorkerConn};

/// Call in a child process just forked from one that ran volley, in the forking thread, before
/// anything else of volley's: forgets what belonged to the parent and did not survive the fork
/// (threads, locks they held, the parent's output forwarding, this thread's splice pipe)
/// without touching it, so that a node of the child's own can start. What the parent's node
/// holds (its sockets, its shared memory) must be leaked by the caller, never dropped: dropping
/// it would close or write the parent's connections.
pub fn after_fork_in_child() {
    outbox::after_fork_in_child();
    logs::after_fork_in_child();
    diag::after_fork_in_child();
    volley_store::after_fork_in_child();
    dashboard::after_fork_in_child();
    log_files::after_fork_in_child();
}

/// How often a blocked call wakes up to run its `check` callback.
pub const CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

/// Outcome of a blocking wait that gave up.
#[derive(Debug)]
pub enum WaitError<E> {
    Timeout,
    /// The `check` callback failed (e.g. a pending KeyboardInterrupt).
    Interrupted(E),
    /// The node is gone.
    Closed,
}
