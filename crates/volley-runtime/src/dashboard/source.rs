//! The dashboard's [`Source`] for this process's node.

use volley_proto::{Filter, FilterOp, HeadAnswer, HeadRequest, NodeSnapshot, StateQuery};

use super::{ApiError, Query, Source};
use crate::client::{self, Backend};
use crate::{Node, RuntimeError};

/// The most bytes of log one request answers (the page asks again from `offset`).
const LOG_CHUNK: usize = 256 << 10;

/// This process's node, looked up at each request: the dashboard outlives no node (it stops
/// with `volley.shutdown()`), and a request that comes meanwhile gets a clear 503.
pub struct NodeSource;

impl NodeSource {
    fn with_node<T>(f: impl FnOnce(&Node) -> Result<T, ApiError>) -> Result<T, ApiError> {
        let c = client::current()
            .ok_or_else(|| ApiError::unavailable("volley has shut down in this process"))?;
        match &c.backend {
            Backend::Node(n) if !n.is_closed() => f(n),
            Backend::Node(_) => Err(ApiError::unavailable("this process's node has shut down")),
            Backend::Worker(_) => Err(ApiError::unavailable("a worker process has no node")),
        }
    }
}

/// The cluster's nodes as `node` sees them: the head's view (with its own entry fresh) on the
/// head, the last view a member heard otherwise, and the node alone outside a cluster.
pub fn nodes_of(node: &Node) -> Vec<NodeSnapshot> {
    let view = node.cluster_view();
    if view.is_empty() {
        return vec![node.snapshot()];
    }
    match node.head() {
        Some(h) => h.view(),
        None => view,
    }
}

impl Source for NodeSource {
    fn nodes(&self) -> Result<Vec<NodeSnapshot>, ApiError> {
        Self::with_node(|n| Ok(nodes_of(n)))
    }

    /// Every kind through the state API (`Node::state_query`), as `volley list` asks it.
    fn query(&self, q: &Query) -> Result<serde_json::Value, ApiError> {
        Self::with_node(|n| state_json(n, q))
    }

    /// A log's lines from `offset` on (its last 256 KiB without one): a job's output
    /// (`job=ID`, kept by the head), or this machine's log file of a worker (`worker=PID`,
    /// or the worker that ran `task=ID` or hosts `actor=ID`) or of a node daemon (`node=N`).
    fn logs(&self, params: &[(String, String)]) -> Result<serde_json::Value, ApiError> {
        let offset = match param(params, "offset") {
            Some(v) => Some(v.parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!("offset must be a whole number, not {v:?}"))
            })?),
            None => None,
        };
        Self::with_node(|n| {
            if let Some(job) = param(params, "job") {
                return job_log(n, job, offset);
            }
            let dir = crate::log_files::log_dir().ok_or_else(|| {
                ApiError::unavailable("this process keeps no log files (VOLLEY_WORKER_LOGS=0?)")
            })?;
            let files = crate::log_files::list_logs(&dir)
                .map_err(|e| ApiError::unavailable(format!("cannot list the logs: {e}")))?;
            let name = pick_log(n, &files, params)?;
            file_log(&dir, &name, offset)
        })
    }

    fn extra_metrics(&self) -> String {
        Self::with_node(|n| Ok(n.task_metrics())).unwrap_or_default()
    }
}

/// `q` answered by `node`'s state API as the contract's JSON object.
fn state_json(node: &Node, q: &Query) -> Result<serde_json::Value, ApiError> {
    let sq = StateQuery {
        kind: q.kind.clone(),
        filters: q
            .filters
            .iter()
            .map(|f| Filter { key: f.key.clone(), op: f.op, value: f.value.clone() })
            .collect(),
        limit: q.limit,
        detail: q.detail,
    };
    let a = node.state_query(&sq).map_err(|e| match e {
        RuntimeError::Refused(why) => ApiError::bad_request(why),
        other => ApiError::unavailable(other.to_string()),
    })?;
    serde_json::from_str(&crate::state::answer_json(&a))
        .map_err(|e| ApiError::unavailable(format!("the state API's answer did not parse: {e}")))
}

/// The query parameter `key`, trimmed, if given and not empty.
fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params.iter().find(|(p, _)| p == key).map(|(_, v)| v.trim()).filter(|v| !v.is_empty())
}

/// The log file the parameters name, among `files` (this machine's logs directory).
fn pick_log(
    node: &Node,
    files: &[crate::log_files::LogFile],
    params: &[(String, String)],
) -> Result<String, ApiError> {
    let one = |kind: &str, key: &str, pid: u32| -> Result<String, ApiError> {
        files
            .iter()
            .filter(|f| f.kind == kind && f.pid == Some(pid) && !f.name.ends_with(".1"))
            .max_by_key(|f| f.modified_ms)
            .map(|f| f.name.clone())
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "no log of {key} on this machine (pid {pid}): it printed nothing, or it \
                     ran on another machine, whose logs `volley logs` there shows"
                ))
            })
    };
    let pid_of = |kind: &str, key: &str, id: &str, field: &str| -> Result<u32, ApiError> {
        let q = StateQuery {
            kind: kind.into(),
            filters: vec![Filter { key: key.into(), op: FilterOp::Eq, value: id.into() }],
            limit: Some(1),
            detail: false,
        };
        let a = state_json(node, &q)?;
        let row = a["rows"].get(0).ok_or_else(|| {
            ApiError::bad_request(format!("no {} with id {id}", &kind[..kind.len() - 1]))
        })?;
        row[field].as_u64().filter(|&p| p != 0).map(|p| p as u32).ok_or_else(|| {
            ApiError::bad_request(format!(
                "{} {id} has no worker (it has not run)",
                &kind[..kind.len() - 1]
            ))
        })
    };
    if let Some(w) = param(params, "worker") {
        let pid = w
            .parse::<u32>()
            .map_err(|_| ApiError::bad_request(format!("worker must be a pid, not {w:?}")))?;
        return one("worker", &format!("worker {pid}"), pid);
    }
    if let Some(t) = param(params, "task") {
        let pid = pid_of("tasks", "task_id", t, "worker_pid")?;
        return one("worker", &format!("task {t}"), pid);
    }
    if let Some(a) = param(params, "actor") {
        let pid = pid_of("actors", "actor_id", a, "pid")?;
        return one("worker", &format!("actor {a}"), pid);
    }
    if let Some(id) = param(params, "node") {
        let num = id
            .parse::<u32>()
            .map_err(|_| ApiError::bad_request(format!("node must be a node id, not {id:?}")))?;
        let snap = nodes_of(node)
            .into_iter()
            .find(|s| s.id.0 == num)
            .ok_or_else(|| ApiError::bad_request(format!("no node {num} in the cluster")))?;
        return one("node", &format!("node {num}"), snap.pid);
    }
    Err(ApiError::bad_request("say whose log: worker=PID, task=ID, actor=ID, node=N or job=ID"))
}

/// Whole lines of log `name` from `offset` (a partial last line waits for the next call).
fn file_log(
    dir: &std::path::Path,
    name: &str,
    offset: Option<u64>,
) -> Result<serde_json::Value, ApiError> {
    let mut chunk = crate::log_files::read_log(dir, name, offset, LOG_CHUNK)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    if offset.is_some_and(|o| chunk.size < o) {
        // Rotated since the last read: from the start of the new file.
        chunk = crate::log_files::read_log(dir, name, Some(0), LOG_CHUNK)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
    }
    let mut data = &chunk.data[..];
    // A tail starts mid-line: drop the piece.
    if offset.is_none() && chunk.offset > 0 {
        if let Some(i) = data.iter().position(|&b| b == b'\n') {
            data = &data[i + 1..];
        }
    }
    let skipped = chunk.data.len() - data.len();
    let whole = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let text = String::from_utf8_lossy(&data[..whole]);
    let lines: Vec<&str> = text.lines().collect();
    Ok(serde_json::json!({
        "file": name,
        "lines": lines,
        "offset": chunk.offset + (skipped + whole) as u64,
    }))
}

/// A submitted job's output from the head.
fn job_log(node: &Node, id: &str, offset: Option<u64>) -> Result<serde_json::Value, ApiError> {
    match node.ask_head(HeadRequest::JobLogs { id: id.to_string(), offset: offset.unwrap_or(0) }) {
        HeadAnswer::JobLogs { data, next, done } => {
            let whole = if done {
                data.len()
            } else {
                data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)
            };
            let text = String::from_utf8_lossy(&data[..whole]);
            let lines: Vec<&str> = text.lines().collect();
            let consumed = (data.len() - whole) as u64;
            Ok(
                serde_json::json!({ "job": id, "lines": lines, "offset": next - consumed, "done": done }),
            )
        }
        HeadAnswer::JobRefused(why) | HeadAnswer::Error(why) => Err(ApiError::bad_request(why)),
        other => Err(ApiError::unavailable(format!("unexpected answer from the head: {other:?}"))),
    }
}
