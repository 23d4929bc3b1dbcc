//! `/metrics`: the nodes' snapshots in Prometheus' text format (0.0.4).
//!
//! Every value comes from a [`NodeSnapshot`] (the head's view of every node; a lone node's
//! own), labelled with `node` (its number). Gauges are what is true now; counters (`_total`)
//! only grow over a node's life. Histograms of task durations and scheduling latency need the
//! state API's events: a [`super::Source`] appends them with `extra_metrics`.

use std::fmt::Write;

use volley_proto::NodeSnapshot;

/// The text format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Escapes a label value (backslash, quote, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Builds the text one family at a time.
struct Out(String);

impl Out {
    fn family<I>(&mut self, name: &str, kind: &str, help: &str, samples: I)
    where
        I: IntoIterator<Item = (String, f64)>,
    {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            if labels.is_empty() {
                let _ = writeln!(self.0, "{name} {value}");
            } else {
                let _ = writeln!(self.0, "{name}{{{labels}}} {value}");
            }
        }
    }

    /// A family with one sample per node.
    fn per_node(
        &mut self,
        nodes: &[NodeSnapshot],
        name: &str,
        kind: &str,
        help: &str,
        f: impl Fn(&NodeSnapshot) -> f64,
    ) {
        self.family(name, kind, help, nodes.iter().map(|n| (node(n), f(n))));
    }
}

fn node(n: &NodeSnapshot) -> String {
    format!("node=\"{}\"", n.id.0)
}

/// The metrics of `nodes`, then `extra` (more families, as is).
pub fn render(nodes: &[NodeSnapshot], extra: &str) -> String {
    let mut o = Out(String::with_capacity(4096));
    o.family(
        "volley_nodes",
        "gauge",
        "Nodes alive in the cluster (drivers' nodes included).",
        [(String::new(), nodes.len() as f64)],
    );
    o.family(
        "volley_node_info",
        "gauge",
        "One per node: its address, process and whether it is a driver's node.",
        nodes.iter().map(|n| {
            (
                format!(
                    "{},addr=\"{}\",pid=\"{}\",driver=\"{}\"",
                    node(n),
                    label(&n.addr),
                    n.pid,
                    n.driver
                ),
                1.0,
            )
        }),
    );
    o.family(
        "volley_tasks",
        "gauge",
        "Tasks on each node by state: WAITING_ARGS (for their arguments), QUEUED (ready, \
         waiting for a worker or resources), RUNNING (on a worker), PIPELINED (sent to a \
         worker, behind its running task), REMOTE (sent to another node, not finished).",
        nodes.iter().flat_map(|n| {
            let s = &n.sched;
            [
                ("WAITING_ARGS", s.tasks_waiting_deps),
                ("QUEUED", s.tasks_queued),
                ("RUNNING", s.tasks_assigned.saturating_sub(s.tasks_pipelined)),
                ("PIPELINED", s.tasks_pipelined),
                ("REMOTE", s.tasks_remote),
            ]
            .map(|(st, v)| (format!("{},state=\"{st}\"", node(n)), f64::from(v)))
        }),
    );
    o.per_node(
        nodes,
        "volley_tasks_waiting",
        "gauge",
        "Tasks not started yet on the node: waiting for arguments, resources or a worker (what \
         `volley status` explains).",
        |n| f64::from(n.tasks_waiting),
    );
    o.family(
        "volley_workers",
        "gauge",
        "Worker processes by state: alive (connected), starting, blocked (in a get, their CPU \
         lent).",
        nodes.iter().flat_map(|n| {
            let s = &n.sched;
            [
                ("alive", s.workers_alive),
                ("starting", s.workers_starting),
                ("blocked", s.workers_blocked),
            ]
            .map(|(st, v)| (format!("{},state=\"{st}\"", node(n)), f64::from(v)))
        }),
    );
    o.per_node(nodes, "volley_actors", "gauge", "Actors hosted by the node.", |n| {
        f64::from(n.sched.actors)
    });
    o.per_node(nodes, "volley_objects", "gauge", "Objects the node's scheduler tracks.", |n| {
        f64::from(n.sched.objects)
    });
    o.per_node(nodes, "volley_cpus", "gauge", "CPUs the node schedules.", |n| {
        f64::from(n.cpu_total_milli) / 1000.0
    });
    o.per_node(nodes, "volley_cpus_used", "gauge", "CPUs held by tasks and actors.", |n| {
        f64::from(n.cpu_total_milli.saturating_sub(n.cpu_free_milli)) / 1000.0
    });
    let resources = |used: bool| {
        nodes.iter().flat_map(move |n| {
            n.resources.iter().filter(|(name, _, _)| !name.starts_with("pg:")).map(
                move |(name, total, free)| {
                    let v = if used { total.saturating_sub(*free) } else { *total };
                    (format!("{},resource=\"{}\"", node(n), label(name)), v as f64 / 1000.0)
                },
            )
        })
    };
    o.family(
        "volley_resource",
        "gauge",
        "Other resources the node schedules (GPU, custom), by name.",
        resources(false),
    );
    o.family(
        "volley_resource_used",
        "gauge",
        "Other resources held by tasks and actors, by name.",
        resources(true),
    );
    o.per_node(
        nodes,
        "volley_object_store_used_bytes",
        "gauge",
        "Bytes of the node's shared-memory object store in use.",
        |n| n.store_used as f64,
    );
    o.per_node(
        nodes,
        "volley_object_store_capacity_bytes",
        "gauge",
        "Size of the node's shared-memory object store.",
        |n| n.store_capacity as f64,
    );
    o.per_node(
        nodes,
        "volley_object_store_pinned_bytes",
        "gauge",
        "Bytes that cannot be spilled now (being written, read, or freed and still viewed).",
        |n| n.store.pinned as f64,
    );
    o.family(
        "volley_object_store_objects",
        "gauge",
        "Values in the object store, by where they are (memory or spilled to disk).",
        nodes.iter().flat_map(|n| {
            [("memory", n.store.objects_in_memory), ("spilled", n.store.objects_spilled)]
                .map(|(w, v)| (format!("{},location=\"{w}\"", node(n)), v as f64))
        }),
    );
    o.per_node(
        nodes,
        "volley_object_store_spilled_bytes",
        "gauge",
        "Bytes of values now spilled to disk.",
        |n| n.store.spilled_bytes as f64,
    );
    o.per_node(nodes, "volley_object_spills_total", "counter", "Values spilled to disk.", |n| {
        n.store.spill_count as f64
    });
    o.per_node(
        nodes,
        "volley_object_spilled_bytes_total",
        "counter",
        "Bytes spilled to disk.",
        |n| n.store.spill_bytes_total as f64,
    );
    o.per_node(
        nodes,
        "volley_object_restores_total",
        "counter",
        "Spilled values read back.",
        |n| n.store.restore_count as f64,
    );
    o.per_node(
        nodes,
        "volley_object_restored_bytes_total",
        "counter",
        "Bytes read back from disk.",
        |n| n.store.restore_bytes_total as f64,
    );
    o.per_node(
        nodes,
        "volley_transfer_received_bytes_total",
        "counter",
        "Bytes of stored values the node pulled from other nodes.",
        |n| n.bytes_received as f64,
    );
    o.per_node(
        nodes,
        "volley_transfer_served_bytes_total",
        "counter",
        "Bytes of stored values the node served to other nodes.",
        |n| n.bytes_served as f64,
    );
    o.per_node(
        nodes,
        "volley_actor_restarts_total",
        "counter",
        "Actors the node restarted after their process died (volley.kill with a restart \
         allowed included).",
        |n| n.sched.actor_restarts as f64,
    );
    o.per_node(
        nodes,
        "volley_worker_crashes_total",
        "counter",
        "Worker processes (pool or actor) that died without the node asking: killed from \
         outside, crashed, exited in user code, or failed to start.",
        |n| n.sched.worker_crashes as f64,
    );
    o.family(
        "volley_node_memory_bytes",
        "gauge",
        "The host's memory: total, and used (total minus MemAvailable, from /proc/meminfo).",
        nodes.iter().filter(|n| n.mem_total > 0).flat_map(|n| {
            [("total", n.mem_total), ("used", n.mem_used)]
                .map(|(k, v)| (format!("{},kind=\"{k}\"", node(n)), v as f64))
        }),
    );
    o.family(
        "volley_heartbeat_latency_seconds",
        "gauge",
        "Round trip of the member's last heartbeat to the head (sent to answered; none for \
         the head itself).",
        nodes
            .iter()
            .filter(|n| n.heartbeat_rtt_us > 0)
            .map(|n| (node(n), n.heartbeat_rtt_us as f64 / 1e6)),
    );
    o.0.push_str(extra);
    o.0
}
