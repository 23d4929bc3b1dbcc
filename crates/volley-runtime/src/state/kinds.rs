//! The kinds the task tables do not hold, rendered as rows: nodes (the head's view), placement
//! groups and jobs (the head's directory), and a node's own workers and objects.
//!
//! Workers and objects are each node's own: they change with every task, so carrying them in
//! heartbeats would cost every node on every beat for a rare question. In a cluster the head
//! asks every live node for them when a query comes (`cluster::node_ask`) and merges the
//! answers; the renderers here make one node's rows.

use volley_proto::{JobRow, NodeId, NodeSnapshot, PgInfo, StateAnswer, StateQuery};
use volley_sched::{ObjectRecord, WorkerRecord};

use super::{actor_hex, generic_answer, task_hex};

const NODE_KEYS: &[&str] = &["id", "node_id", "addr", "alive", "driver", "pid", "workers"];
const WORKER_KEYS: &[&str] = &["pid", "node_id", "state", "actor_id", "task_id"];
const OBJECT_KEYS: &[&str] = &["object_id", "size", "node_id", "state", "pins", "spilled"];
const PG_KEYS: &[&str] = &["pg_id", "name", "state", "strategy", "node_id"];
const JOB_KEYS: &[&str] =
    &["job_id", "status", "entrypoint", "driver_pid", "start_ms", "end_ms", "exit_code"];

/// The kinds a query may name (`volley_proto::STATE_KINDS`), checked at the call site.
pub fn check_kind(kind: &str) -> Result<(), String> {
    if volley_proto::STATE_KINDS.contains(&kind) {
        Ok(())
    } else {
        Err(format!(
            "unknown state kind '{kind}' (one of {})",
            volley_proto::STATE_KINDS.join(", ")
        ))
    }
}

/// Nodes: each snapshot's fields (as `volley.nodes()` has them), `node_id` and `alive`.
pub(crate) fn nodes(q: &StateQuery, view: Vec<NodeSnapshot>) -> Result<StateAnswer, String> {
    let rows = view
        .into_iter()
        .map(|mut n| {
            // Actor ids are 128-bit (no JSON number holds them) and handles' metadata is bytes
            // for the engine: the named actors are listed by hand.
            let named: Vec<serde_json::Value> = std::mem::take(&mut n.named)
                .into_iter()
                .map(|a| {
                    serde_json::json!({
                        "namespace": a.namespace,
                        "name": a.name,
                        "actor_id": actor_hex(a.actor),
                        "class_name": a.class,
                    })
                })
                .collect();
            let mut v = serde_json::to_value(&n).unwrap_or(serde_json::Value::Null);
            if let Some(o) = v.as_object_mut() {
                o.insert("named".into(), named.into());
                o.insert("node_id".into(), n.id.0.into());
                o.insert("alive".into(), true.into());
            }
            v
        })
        .collect();
    generic_answer(q, rows, NODE_KEYS)
}

/// Placement groups from the head's directory, with the node whose driver made each.
pub(crate) fn groups(q: &StateQuery, groups: Vec<(NodeId, PgInfo)>) -> Result<StateAnswer, String> {
    let rows = groups
        .into_iter()
        .map(|(owner, g)| {
            serde_json::json!({
                "pg_id": g.id,
                "name": (!g.name.is_empty()).then_some(g.name.as_str()),
                "state": g.state,
                "strategy": format!("{:?}", g.strategy).to_uppercase(),
                "bundles": g.bundles.iter().map(|b| {
                    b.iter().map(|(r, milli)| (r.clone(), (*milli as f64 / 1000.0).into()))
                        .collect::<serde_json::Map<String, serde_json::Value>>()
                }).collect::<Vec<_>>(),
                "bundle_nodes": g.nodes,
                "node_id": owner.0,
                "reason": (!g.reason.is_empty()).then_some(g.reason.as_str()),
            })
        })
        .collect();
    generic_answer(q, rows, PG_KEYS)
}

/// Jobs: the submitted jobs (`volley job submit`) and the driver sessions that are none of
/// theirs (id: the driver's node number, no entrypoint), as `Head::job_rows` lists them.
pub(crate) fn jobs(q: &StateQuery, jobs: Vec<JobRow>) -> Result<StateAnswer, String> {
    let rows = jobs
        .into_iter()
        .map(|j| serde_json::to_value(j).unwrap_or(serde_json::Value::Null))
        .collect();
    generic_answer(q, rows, JOB_KEYS)
}

pub(crate) fn workers(
    q: &StateQuery,
    me: NodeId,
    workers: Vec<WorkerRecord>,
) -> Result<StateAnswer, String> {
    let rows = workers
        .into_iter()
        .map(|w| {
            serde_json::json!({
                "pid": w.pid,
                "node_id": me.0,
                "state": w.state,
                "actor_id": w.actor.map(actor_hex),
                "task_id": w.task.map(task_hex),
            })
        })
        .collect();
    generic_answer(q, rows, WORKER_KEYS)
}

/// Objects this node's scheduler knows: `pins` counts its references, `spilled` whether the
/// store moved its value to disk.
pub(crate) fn objects(
    q: &StateQuery,
    me: NodeId,
    objects: Vec<ObjectRecord>,
    spilled: impl Fn(&ObjectRecord) -> bool,
) -> Result<StateAnswer, String> {
    let rows = objects
        .iter()
        .map(|o| {
            serde_json::json!({
                "object_id": o.id.hex(),
                "size": o.size,
                "node_id": me.0,
                "state": o.state,
                "pins": o.refs,
                "spilled": spilled(o),
                "in_store": o.in_store,
            })
        })
        .collect();
    generic_answer(q, rows, OBJECT_KEYS)
}
