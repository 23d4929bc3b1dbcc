//! The dashboard's [`Source`] for this process's node.

use volley_proto::{
    Filter, FilterOp, HeadAnswer, HeadRequest, NodeAnswer, NodeAsk, NodeId, NodeRequest,
    NodeSnapshot, StateQuery,
};

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

    /// The clock this node's task rows are stamped with (it never moves back).
    fn now_ms(&self) -> u64 {
        Self::with_node(|n| Ok(n.rows_clock_ms())).unwrap_or_else(|_| crate::state::now_ms())
    }

    /// Every kind through the state API (`Node::state_query`), as `volley list` asks it.
    fn query(&self, q: &Query) -> Result<serde_json::Value, ApiError> {
        Self::with_node(|n| state_json(n, q))
    }

    /// A log's lines from `offset` on (its last 256 KiB without one): a job's output
    /// (`job=ID`, kept by the head), the log of the worker that ran `task=ID` or hosts
    /// `actor=ID` (read on the node that ran it, through the head), node N's own log
    /// (`node=N`) or a worker's of it (`node=N&worker=PID`), or this machine's log of a worker
    /// (`worker=PID` alone).
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
            if let Some((node, pid)) = on_node(n, params)? {
                return node_log(n, node, pid, offset);
            }
            let dir = crate::log_files::log_dir().ok_or_else(|| {
                ApiError::unavailable("this process keeps no log files (VOLLEY_WORKER_LOGS=0?)")
            })?;
            let files = crate::log_files::list_logs(&dir)
                .map_err(|e| ApiError::unavailable(format!("cannot list the logs: {e}")))?;
            let name = pick_log(&files, params)?;
            file_log(&name, offset, |at, max| {
                crate::log_files::read_log(&dir, &name, at, max)
                    .map_err(|e| ApiError::bad_request(e.to_string()))
            })
        })
    }

    fn extra_metrics(&self) -> String {
        Self::with_node(|n| Ok(n.task_metrics() + &n.serve_metrics())).unwrap_or_default()
    }

    fn serve(&self) -> Result<serde_json::Value, ApiError> {
        Self::with_node(|n| Ok(n.serve_view()))
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

/// The log file of this machine's worker `worker=PID`, among `files` (its logs directory).
fn pick_log(
    files: &[crate::log_files::LogFile],
    params: &[(String, String)],
) -> Result<String, ApiError> {
    let Some(w) = param(params, "worker") else {
        return Err(ApiError::bad_request(
            "say whose log: worker=PID, task=ID, actor=ID, node=N (with worker=PID) or job=ID",
        ));
    };
    let pid = w
        .parse::<u32>()
        .map_err(|_| ApiError::bad_request(format!("worker must be a pid, not {w:?}")))?;
    worker_file(files.iter().map(|f| (&f.name, f.kind.as_str(), f.pid, f.node_pid)), pid, None)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "no log of worker {pid} on this machine: it printed nothing, or it runs on \
                 another node (add node=N)"
            ))
        })
}

/// The newest log of worker `pid` (of the node whose process is `node_pid`, if given) among
/// `(name, kind, pid, node_pid)` entries.
fn worker_file<'a>(
    files: impl Iterator<Item = (&'a String, &'a str, Option<u32>, Option<u32>)>,
    pid: u32,
    node_pid: Option<u32>,
) -> Option<String> {
    files
        .filter(|(name, kind, p, np)| {
            *kind == "worker"
                && *p == Some(pid)
                && !name.ends_with(".1")
                && node_pid.is_none_or(|n| *np == Some(n))
        })
        .map(|(name, ..)| name.clone())
        .max()
}

/// The node and worker whose log the parameters name when it is read on a node (`task=ID`,
/// `actor=ID`: where the state API says it ran; `node=N`, with `worker=PID` or alone for the
/// node's own log); `None` for this machine's `worker=PID`.
fn on_node(
    node: &Node,
    params: &[(String, String)],
) -> Result<Option<(NodeId, Option<u32>)>, ApiError> {
    let row_of = |kind: &str, key: &str, id: &str, field: &str| {
        let q = StateQuery {
            kind: kind.into(),
            filters: vec![Filter { key: key.into(), op: FilterOp::Eq, value: id.into() }],
            limit: Some(1),
            detail: false,
        };
        let a = state_json(node, &q)?;
        let one = &kind[..kind.len() - 1];
        let row = a["rows"]
            .get(0)
            .ok_or_else(|| ApiError::bad_request(format!("no {one} with id {id}")))?;
        let pid = row[field].as_u64().filter(|&p| p != 0).ok_or_else(|| {
            ApiError::bad_request(format!("{one} {id} has no worker (it has not run)"))
        })?;
        let at = row["node_id"].as_u64().unwrap_or(0);
        Ok::<_, ApiError>(Some((NodeId(at as u32), Some(pid as u32))))
    };
    if let Some(t) = param(params, "task") {
        return row_of("tasks", "task_id", t, "worker_pid");
    }
    if let Some(a) = param(params, "actor") {
        return row_of("actors", "actor_id", a, "pid");
    }
    let Some(id) = param(params, "node") else { return Ok(None) };
    let num = id
        .parse::<u32>()
        .map_err(|_| ApiError::bad_request(format!("node must be a node id, not {id:?}")))?;
    let pid = match param(params, "worker") {
        Some(w) => Some(
            w.parse::<u32>()
                .map_err(|_| ApiError::bad_request(format!("worker must be a pid, not {w:?}")))?,
        ),
        None => None,
    };
    Ok(Some((NodeId(num), pid)))
}

/// Asks node `node` (through the head; this node answers its own) a question about its logs.
fn ask_node(node: &Node, at: NodeId, req: NodeRequest) -> Result<NodeAnswer, ApiError> {
    match node.ask_head(HeadRequest::NodeAsk(NodeAsk { node: at, req })) {
        HeadAnswer::Node(NodeAnswer::Error(why)) | HeadAnswer::Error(why) => {
            Err(ApiError::bad_request(why))
        }
        HeadAnswer::Node(a) => Ok(a),
        other => Err(ApiError::unavailable(format!("unexpected answer from the head: {other:?}"))),
    }
}

/// The log of worker `pid` of node `at` (its own log without one), read on that node.
fn node_log(
    node: &Node,
    at: NodeId,
    pid: Option<u32>,
    offset: Option<u64>,
) -> Result<serde_json::Value, ApiError> {
    let NodeAnswer::Logs { files, node_pid, own_log } = ask_node(node, at, NodeRequest::ListLogs)?
    else {
        return Err(ApiError::unavailable("unexpected answer to a list of logs"));
    };
    let name = match pid {
        Some(pid) => worker_file(
            files.iter().map(|f| (&f.name, f.kind.as_str(), f.pid, f.node_pid)),
            pid,
            Some(node_pid),
        )
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "no log of worker {pid} on node {}: it printed nothing (yet)",
                at.0
            ))
        })?,
        None => own_log.ok_or_else(|| {
            ApiError::bad_request(format!(
                "node {} keeps its own output outside its session's logs/",
                at.0
            ))
        })?,
    };
    file_log(&name, offset, |from, max| {
        let req = NodeRequest::ReadLog { name: name.clone(), offset: from, max: max as u64 };
        match ask_node(node, at, req)? {
            NodeAnswer::Log { data, offset, next_offset, size } => {
                Ok(crate::log_files::LogChunk { data, offset, next_offset, size })
            }
            _ => Err(ApiError::unavailable("unexpected answer to a log read")),
        }
    })
}

/// Whole lines of log `name` from `offset` (a partial last line waits for the next call),
/// read with `read(offset, max)` (this machine's file, or a node's through the head).
fn file_log(
    name: &str,
    offset: Option<u64>,
    read: impl Fn(Option<u64>, usize) -> Result<crate::log_files::LogChunk, ApiError>,
) -> Result<serde_json::Value, ApiError> {
    let mut chunk = read(offset, LOG_CHUNK)?;
    if offset.is_some_and(|o| chunk.size < o) {
        // Rotated since the last read: from the start of the new file.
        chunk = read(Some(0), LOG_CHUNK)?;
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
