//! One node's state and counters at one moment: the one type every reader of metrics takes.
//!
//! A node builds its [`NodeSnapshot`] in one place (from its scheduler's and its store's
//! counters) and it travels as is: in each heartbeat to the head, in the head's view back to
//! every node, to `volley status` (from the head, or from a lone driver's node over its Unix
//! socket), and to `volley.nodes()`. The dashboard and `/metrics` of later issues read the same
//! type, so a new metric is a field here and its line where the snapshot is built
//! (`volley-runtime`'s `Shared::snapshot`), nothing else.

use serde::{Deserialize, Serialize};

use crate::{NamedActor, NodeId, PgInfo};

/// A node as it is now: what the head shows the others, and what `volley status` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeSnapshot {
    pub id: NodeId,
    /// Where the node accepts connections from other nodes (`host:port`).
    pub addr: String,
    pub cpu_total_milli: u32,
    pub cpu_free_milli: u32,
    /// Other resources (`GPU`, custom), in thousandths: total, free.
    pub resources: Vec<(String, u64, u64)>,
    pub workers: u32,
    pub store_used: u64,
    pub store_capacity: u64,
    /// Tasks queued on it that no node can run now.
    pub tasks_waiting: u32,
    /// What waits there and why, a line each (the most common first, a few at most).
    pub waiting: Vec<String>,
    /// Named actors it hosts: the cluster's directory of names is every node's list.
    pub named: Vec<NamedActor>,
    /// Bytes of stored values it has received from other nodes, in all.
    pub bytes_received: u64,
    /// Bytes of stored values it has served to other nodes pulling them, in all.
    pub bytes_served: u64,
    /// A driver's node: it joins to send work, and runs none of the cluster's.
    pub driver: bool,
    pub pid: u32,
    /// The placement groups its driver made (the head's directory lists them cluster-wide).
    pub groups: Vec<PgInfo>,
    /// The scheduler's counters.
    pub sched: SchedCounters,
    /// The object store's counters.
    pub store: StoreCounters,
    /// The host's memory in bytes, from `/proc/meminfo` (`MemTotal`; used is `MemTotal -
    /// MemAvailable`, what the kernel could not hand out without swapping); 0 where it cannot
    /// be read.
    #[serde(default)]
    pub mem_total: u64,
    #[serde(default)]
    pub mem_used: u64,
    /// The round trip of this member's last heartbeat to the head, in microseconds (0: none
    /// yet, or the head itself). A round trip, not lateness at the head: it needs no clock
    /// shared between machines, and it holds what delays the head's answers (the network and
    /// the head's own load); a member too slow to send at all shows in the head's warnings.
    #[serde(default)]
    pub heartbeat_rtt_us: u64,
}

/// The scheduler's counters, as its `stats()` gives them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedCounters {
    pub workers_alive: u32,
    pub workers_starting: u32,
    /// Workers whose task waits in a `get` (their CPU is lent meanwhile).
    pub workers_blocked: u32,
    /// Tasks waiting for their arguments.
    pub tasks_waiting_deps: u32,
    /// Tasks ready to run, waiting for a worker or resources.
    pub tasks_queued: u32,
    /// Tasks sent to a worker (running, or pipelined behind the one running).
    pub tasks_assigned: u32,
    /// Tasks queued on a worker behind the one it runs (also in `tasks_assigned`).
    pub tasks_pipelined: u32,
    /// Tasks sent to other nodes, still running there.
    pub tasks_remote: u32,
    pub objects: u32,
    pub actors: u32,
    pub cpu_used_milli: u32,
    /// Actors restarted after their process died, in all (counters from here on only grow).
    #[serde(default)]
    pub actor_restarts: u64,
    /// Worker processes that died without being told to (a signal from outside, a crash, an
    /// exit in user code, a failed start), in all; retirements and kills the node asked for
    /// (`volley.kill`, a forced cancel) are not counted.
    #[serde(default)]
    pub worker_crashes: u64,
}

impl SchedCounters {
    /// Every counter by name, for readers that list them (a dict, `/metrics`).
    pub fn fields(&self) -> [(&'static str, u64); 13] {
        [
            ("workers_alive", self.workers_alive.into()),
            ("workers_starting", self.workers_starting.into()),
            ("workers_blocked", self.workers_blocked.into()),
            ("tasks_waiting_deps", self.tasks_waiting_deps.into()),
            ("tasks_queued", self.tasks_queued.into()),
            ("tasks_assigned", self.tasks_assigned.into()),
            ("tasks_pipelined", self.tasks_pipelined.into()),
            ("tasks_remote", self.tasks_remote.into()),
            ("objects", self.objects.into()),
            ("actors", self.actors.into()),
            ("cpu_used_milli", self.cpu_used_milli.into()),
            ("actor_restarts", self.actor_restarts),
            ("worker_crashes", self.worker_crashes),
        ]
    }
}

/// The object store's counters, as its `stats()` gives them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreCounters {
    /// Bytes that cannot be spilled now (being written, leased, or freed and still viewed).
    pub pinned: u64,
    /// Values in the store, in memory or on disk.
    pub objects: u64,
    pub objects_in_memory: u64,
    pub objects_spilled: u64,
    pub spilled_bytes: u64,
    pub spill_count: u64,
    pub spill_bytes_total: u64,
    pub restore_count: u64,
    pub restore_bytes_total: u64,
}

impl StoreCounters {
    /// Every counter by name, for readers that list them (a dict, `/metrics`).
    pub fn fields(&self) -> [(&'static str, u64); 9] {
        [
            ("pinned", self.pinned),
            ("objects", self.objects),
            ("objects_in_memory", self.objects_in_memory),
            ("objects_spilled", self.objects_spilled),
            ("spilled_bytes", self.spilled_bytes),
            ("spill_count", self.spill_count),
            ("spill_bytes_total", self.spill_bytes_total),
            ("restore_count", self.restore_count),
            ("restore_bytes_total", self.restore_bytes_total),
        ]
    }
}
