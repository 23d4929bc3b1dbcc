//! Questions for one node about what only it has (see `volley_proto::NodeRequest`): its own
//! workers and objects, and the log files of its session directory.
//!
//! The state API's workers and objects are asked on demand: when a query for them reaches the
//! head, it asks every live node at once, each on an authenticated connection of its own with
//! one deadline for all ([`NODE_ANSWER_TIMEOUT`]), and merges the answers. They change with
//! every task, so sending them with each heartbeat would cost every node on every beat for a
//! question that is rare; asked on demand they cost nothing until someone asks. A node that
//! does not answer in time (stopped, wedged, gone since the last view) never holds the query up:
//! the answer names it in `missing`. Each node applies the filters and the limit itself, so a
//! node with a million objects sends at most `limit` rows and its count.
//!
//! Logs: a client outside the cluster asks the head to relay (`HeadRequest::NodeAsk`), and the
//! node answers from its own session's `logs/` directory only (`log_files::read_log` checks
//! the name and opens it without following links).
//!
//! A driver's node takes no connections, so the head asks it over the link the driver keeps to
//! the head for its heartbeats ([`OverBeat`]): the question waits for the driver's next
//! heartbeat, goes out before the view that answers it, and the driver's node answers on the
//! same link. The link passed the handshake, so the question is as authenticated as any other
//! peer message; the deadline and the `missing` entry are the same as for the other nodes.

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use volley_proto::{
    FrameReader, HeadAnswer, HeadRequest, NodeAnswer, NodeAsk, NodeId, NodeRequest, NodeSnapshot,
    PeerMsg, StateAnswer, StateQuery, MAX_LOG_CHUNK,
};

use super::{handshake::connect, proto, recv, send, wire::msg_name, Cluster};
use crate::head::HEAD_ID;
use crate::shared::Shared;
use crate::tls::TlsConfig;
use crate::RuntimeError;
use volley_store::sync::Mutex;

/// How long the head waits for the nodes' answers to one question (all asked at once).
pub(crate) const NODE_ANSWER_TIMEOUT: Duration = Duration::from_secs(3);

/// The most rows one node sends for a query without a limit (counted in `total` past that).
const MAX_NODE_ROWS: u64 = 100_000;

/// Asks the node at `addr` one question, on a connection of its own, waiting until `deadline`
/// at most.
pub(crate) fn ask_node(
    addr: &str,
    token: &[u8],
    tls: Option<&TlsConfig>,
    req: NodeRequest,
    deadline: Instant,
) -> Result<NodeAnswer, RuntimeError> {
    let mut s = connect(addr, token, tls)?;
    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    s.set_read_timeout(Some(left))?;
    send(&mut s, &PeerMsg::Node(req))?;
    let mut r = FrameReader::new(&s);
    match recv(&mut r).map_err(proto)? {
        PeerMsg::NodeReply(answer) => Ok(answer),
        PeerMsg::Refused { reason } => Err(RuntimeError::Refused(reason)),
        other => Err(RuntimeError::Refused(format!("unexpected answer {}", msg_name(&other)))),
    }
}

/// The most questions waiting for one member's heartbeat (more are refused, not queued).
const MAX_WAITING: usize = 64;

/// (On the head) questions for members that take no connections (drivers' nodes), carried on
/// their heartbeat links: each waits for the member's next heartbeat, goes out before the view
/// that answers it, and the member answers each on the same link, in order.
#[derive(Default)]
pub(super) struct OverBeat {
    members: Mutex<HashMap<NodeId, Queue>>,
}

/// One member's questions: not yet sent, and sent and not yet answered (oldest first).
#[derive(Default)]
struct Queue {
    unsent: VecDeque<(NodeRequest, Instant, mpsc::Sender<NodeAnswer>)>,
    sent: VecDeque<mpsc::Sender<NodeAnswer>>,
}

impl OverBeat {
    /// Member `id` joined: questions for it can wait for its heartbeats.
    pub(crate) fn open(&self, id: NodeId) {
        self.members.lock().insert(id, Queue::default());
    }

    /// Member `id` left: whoever waits for its answers is told (their channels close).
    pub(crate) fn close(&self, id: NodeId) {
        self.members.lock().remove(&id);
    }

    /// Asks member `id` `req`; the answer comes on the channel (closed if the member leaves).
    fn ask(
        &self,
        id: NodeId,
        req: NodeRequest,
        deadline: Instant,
    ) -> Result<mpsc::Receiver<NodeAnswer>, String> {
        let mut members = self.members.lock();
        let q = members.get_mut(&id).ok_or("it has no link to the head (left?)")?;
        if q.unsent.len() + q.sent.len() >= MAX_WAITING {
            return Err(format!("{MAX_WAITING} questions already wait for its answer"));
        }
        let (tx, rx) = mpsc::channel();
        q.unsent.push_back((req, deadline, tx));
        Ok(rx)
    }

    /// The questions to send member `id` now (with the view that answers its heartbeat); those
    /// whose asker stopped waiting are dropped unsent.
    pub(crate) fn due(&self, id: NodeId) -> Vec<NodeRequest> {
        let mut members = self.members.lock();
        let Some(q) = members.get_mut(&id) else { return Vec::new() };
        let now = Instant::now();
        let mut due = Vec::new();
        while let Some((req, deadline, tx)) = q.unsent.pop_front() {
            if deadline > now {
                due.push(req);
                q.sent.push_back(tx);
            }
        }
        due
    }

    /// Member `id` answered its oldest question sent; false if none was waiting (a member that
    /// answers what it was not asked is dropped).
    pub(crate) fn answered(&self, id: NodeId, answer: NodeAnswer) -> bool {
        let tx = self.members.lock().get_mut(&id).and_then(|q| q.sent.pop_front());
        match tx {
            Some(tx) => {
                let _ = tx.send(answer); // The asker may have stopped waiting.
                true
            }
            None => false,
        }
    }
}

/// How a node is named in an error or a `missing` entry.
fn label(n: &NodeSnapshot) -> String {
    if n.addr.is_empty() {
        format!("node {} (driver pid {})", n.id.0, n.pid)
    } else {
        format!("node {} ({})", n.id.0, n.addr)
    }
}

/// This node's answer to a question about itself.
pub(crate) fn answer_here(shared: &Shared, req: NodeRequest) -> NodeAnswer {
    match req {
        NodeRequest::State(q) => match shared.state_local(&q) {
            Ok(a) => NodeAnswer::State(a),
            Err(why) => NodeAnswer::Error(why),
        },
        NodeRequest::ListLogs => {
            let Some(dir) = crate::log_files::log_dir() else {
                return NodeAnswer::Error(no_logs());
            };
            match crate::log_files::list_logs(&dir) {
                Ok(files) => {
                    NodeAnswer::Logs { files, node_pid: std::process::id(), own_log: own_log(&dir) }
                }
                Err(e) => NodeAnswer::Error(format!("cannot list the logs: {e}")),
            }
        }
        NodeRequest::ReadLog { name, offset, max } => {
            let Some(dir) = crate::log_files::log_dir() else {
                return NodeAnswer::Error(no_logs());
            };
            let max = max.clamp(1, MAX_LOG_CHUNK) as usize;
            match crate::log_files::read_log(&dir, &name, offset, max) {
                Ok(c) => NodeAnswer::Log {
                    data: c.data,
                    offset: c.offset,
                    next_offset: c.next_offset,
                    size: c.size,
                },
                Err(e) => NodeAnswer::Error(e.to_string()),
            }
        }
    }
}

/// The name of this node's own log in `dir`, if it keeps one there: where its stderr goes (a
/// `volley start` daemon's log), or a driver's `driver-<pid>.log` (made at its first
/// diagnostic).
fn own_log(dir: &std::path::Path) -> Option<String> {
    let dir = std::fs::canonicalize(dir).ok()?;
    let in_dir = |target: std::path::PathBuf| {
        let target = std::fs::canonicalize(target).ok()?;
        (target.parent()? == dir).then(|| target.file_name()?.to_str().map(str::to_string))?
    };
    std::fs::read_link("/proc/self/fd/2")
        .ok()
        .and_then(in_dir)
        .or_else(|| crate::diag::log_file().and_then(in_dir))
}

fn no_logs() -> String {
    "this node keeps no log files (VOLLEY_WORKER_LOGS=0, or no session directory)".into()
}

/// Whether a state query is one each node answers for itself (and the head fans out).
pub(crate) fn per_node_kind(q: &StateQuery) -> bool {
    matches!(q.kind.as_str(), "workers" | "objects")
}

/// The nodes a query's `node_id=N` filters leave (all of `view` without one).
fn asked_nodes(q: &StateQuery, view: Vec<NodeSnapshot>) -> Vec<NodeSnapshot> {
    view.into_iter()
        .filter(|n| {
            q.filters.iter().all(|f| {
                f.key != "node_id"
                    || f.op != volley_proto::FilterOp::Eq
                    || f.value.trim() == n.id.0.to_string()
            })
        })
        .collect()
}

/// Merges per-node answers (in node order) into one: every node's total counted, the first
/// `limit` rows shown.
pub(crate) fn merge(
    q: &StateQuery,
    answers: Vec<StateAnswer>,
    missing: Vec<String>,
) -> Result<StateAnswer, String> {
    let limit = q.limit.filter(|l| *l > 0).map_or(usize::MAX, |l| l as usize);
    let mut rows: Vec<serde_json::Value> = Vec::new();
    let mut total = 0u64;
    let mut truncated = false;
    for a in answers {
        total += a.total;
        truncated |= a.truncated;
        if rows.len() < limit {
            let mut part: Vec<serde_json::Value> =
                serde_json::from_str(&a.rows).map_err(|e| format!("a node's rows: {e}"))?;
            part.truncate(limit - rows.len());
            rows.extend(part);
        }
    }
    Ok(StateAnswer {
        kind: q.kind.clone(),
        rows: serde_json::to_string(&rows).map_err(|e| e.to_string())?,
        total,
        truncated: truncated || total > rows.len() as u64,
        dropped: 0,
        missing,
    })
}

impl Cluster {
    /// The head's answer to a [`HeadRequest`] from anyone (this node's driver, a member, a
    /// client): workers and objects fanned out to every live node, a `NodeAsk` relayed, the
    /// rest served by the head's own tables.
    pub(crate) fn answer_head(&self, req: HeadRequest) -> HeadAnswer {
        let Some(head) = &self.head else {
            return HeadAnswer::Error("this node is not the cluster's head".into());
        };
        match req {
            HeadRequest::State(q) if per_node_kind(&q) => match self.fan_out(&q) {
                Ok(a) => HeadAnswer::State(a),
                Err(why) => HeadAnswer::Error(why),
            },
            HeadRequest::NodeAsk(NodeAsk { node, req }) => HeadAnswer::Node(self.relay(node, req)),
            other => head.serve(other),
        }
    }

    /// A workers or objects query asked of every live node (its `node_id` filter's only).
    fn fan_out(&self, q: &StateQuery) -> Result<StateAnswer, String> {
        // A bad key is refused before any node is asked.
        match q.kind.as_str() {
            "workers" => crate::state::kinds::workers(q, NodeId(0), Vec::new())?,
            _ => crate::state::kinds::objects(q, NodeId(0), Vec::new(), |_| false)?,
        };
        let per_node = StateQuery {
            limit: Some(q.limit.filter(|l| *l > 0).unwrap_or(MAX_NODE_ROWS).min(MAX_NODE_ROWS)),
            ..q.clone()
        };
        let deadline = Instant::now() + NODE_ANSWER_TIMEOUT;
        let (tx, rx) = mpsc::channel();
        let mut waiting = Vec::new();
        let mut missing = Vec::new();
        let mut answers: Vec<(NodeId, StateAnswer)> = Vec::new();
        for n in asked_nodes(q, Links::view(self)) {
            if n.id == HEAD_ID {
                answers.push((n.id, self.shared.state_local(&per_node)?));
                continue;
            }
            let (tx, token, tls) = (tx.clone(), self.cfg.token.clone(), self.cfg.tls.clone());
            let over_beat = self.over_beat.clone();
            let req = NodeRequest::State(per_node.clone());
            let who = label(&n);
            waiting.push((n.id, who.clone()));
            let spawned =
                std::thread::Builder::new().name("volley-ask-node".into()).spawn(move || {
                    let r = ask_member(&token, tls.as_deref(), &over_beat, &n, req, deadline);
                    let _ = tx.send((n.id, r));
                });
            if let Err(e) = spawned {
                waiting.pop();
                missing.push(format!("{who}: no thread to ask it ({e})"));
            }
        }
        drop(tx);
        while !waiting.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok((id, r)) = rx.recv_timeout(left) else { break };
            let Some(i) = waiting.iter().position(|(w, _)| *w == id) else { continue };
            let (_, who) = waiting.swap_remove(i);
            match r {
                Ok(NodeAnswer::State(a)) => answers.push((id, a)),
                Ok(NodeAnswer::Error(why)) => missing.push(format!("{who}: {why}")),
                Ok(_) => missing.push(format!("{who}: an unexpected answer")),
                Err(e) => missing.push(format!("{who}: {e}")),
            }
        }
        for (_, who) in waiting {
            missing.push(format!("{who}: no answer within {} s", NODE_ANSWER_TIMEOUT.as_secs()));
        }
        answers.sort_by_key(|(id, _)| *id);
        missing.sort();
        merge(q, answers.into_iter().map(|(_, a)| a).collect(), missing)
    }

    /// Asks node `node` of the view `req` (the head answers its own).
    fn relay(&self, node: NodeId, req: NodeRequest) -> NodeAnswer {
        if node == HEAD_ID {
            return answer_here(&self.shared, req);
        }
        let Some(n) = Links::view(self).into_iter().find(|n| n.id == node) else {
            return NodeAnswer::Error(format!(
                "no node {} in the cluster (see `volley status`)",
                node.0
            ));
        };
        let deadline = Instant::now() + NODE_ANSWER_TIMEOUT;
        let (token, tls) = (&self.cfg.token, self.cfg.tls.as_deref());
        ask_member(token, tls, &self.over_beat, &n, req, deadline)
            .unwrap_or_else(|e| NodeAnswer::Error(format!("{} did not answer: {e}", label(&n))))
    }
}

/// Asks node `n` of the view `req`, waiting until `deadline` at most: on a connection of its
/// own, or over its heartbeat link if it takes none (a driver's node).
fn ask_member(
    token: &[u8],
    tls: Option<&TlsConfig>,
    over_beat: &OverBeat,
    n: &NodeSnapshot,
    req: NodeRequest,
    deadline: Instant,
) -> Result<NodeAnswer, String> {
    if !n.addr.is_empty() {
        return ask_node(&n.addr, token, tls, req, deadline).map_err(|e| e.to_string());
    }
    let rx = over_beat.ask(n.id, req, deadline)?;
    let left = deadline.saturating_duration_since(Instant::now());
    rx.recv_timeout(left).map_err(|e| match e {
        mpsc::RecvTimeoutError::Timeout => {
            format!("no answer within {} s", NODE_ANSWER_TIMEOUT.as_secs())
        }
        mpsc::RecvTimeoutError::Disconnected => "its link to the head closed".to_string(),
    })
}

/// What `Shared::ask_head` answers without the head's tables, if `req` is such a question:
/// workers and objects alone (this node's), or through the head's fan-out plus this node's own
/// rows when the head did not get them in time (a driver's node answers the head a heartbeat
/// later, so a busy one may miss the deadline); a `NodeAsk` for this node itself.
pub(crate) fn ask_head_here(shared: &Shared, req: &HeadRequest) -> Option<HeadAnswer> {
    let state = |r: Result<StateAnswer, String>| match r {
        Ok(a) => HeadAnswer::State(a),
        Err(why) => HeadAnswer::Error(why),
    };
    match req {
        HeadRequest::State(q) if per_node_kind(q) => {
            let Some(links) = shared.links.get() else {
                return Some(state(shared.state_local(q)));
            };
            let answer = links.ask_head(req.clone());
            let me = links.local_snapshot();
            let HeadAnswer::State(mut a) = answer else { return Some(answer) };
            let mine = format!("node {} (", me.id.0);
            if !me.addr.is_empty() || !a.missing.iter().any(|m| m.starts_with(&mine)) {
                return Some(HeadAnswer::State(a));
            }
            a.missing.retain(|m| !m.starts_with(&mine));
            let missing = std::mem::take(&mut a.missing);
            Some(state(shared.state_local(q).and_then(|own| merge(q, vec![a, own], missing))))
        }
        HeadRequest::NodeAsk(NodeAsk { node, req }) => {
            let me = shared.local_snapshot().id;
            if *node == me {
                return Some(HeadAnswer::Node(answer_here(shared, req.clone())));
            }
            if shared.links.get().is_none() {
                return Some(HeadAnswer::Node(NodeAnswer::Error(format!(
                    "no node {}: this node runs alone (it is node {})",
                    node.0, me.0
                ))));
            }
            None
        }
        _ => None,
    }
}

use crate::shared::Links;

#[cfg(test)]
mod tests {
    use super::*;

    fn part(node: u32, shown: usize, total: u64) -> StateAnswer {
        let rows: Vec<serde_json::Value> =
            (0..shown).map(|i| serde_json::json!({ "node_id": node, "pid": i })).collect();
        StateAnswer {
            kind: "workers".into(),
            rows: serde_json::to_string(&rows).expect("rows"),
            total,
            truncated: total > shown as u64,
            dropped: 0,
            missing: Vec::new(),
        }
    }

    /// Every node's count goes into `total`; the rows shown stop at the limit, and an answer
    /// that a node itself cut short makes the merged one truncated too.
    #[test]
    fn merged_answers_count_every_node_and_show_the_limit() {
        let q = |limit| StateQuery {
            kind: "workers".into(),
            filters: Vec::new(),
            limit,
            detail: false,
        };
        let all = merge(&q(None), vec![part(1, 2, 2), part(2, 3, 3)], vec!["node 3: x".into()])
            .expect("merge");
        assert_eq!((all.total, all.truncated), (5, false));
        assert_eq!(all.missing, vec!["node 3: x".to_string()]);
        let rows: Vec<serde_json::Value> = serde_json::from_str(&all.rows).expect("json");
        assert_eq!(rows.len(), 5);
        let three = merge(&q(Some(3)), vec![part(1, 2, 2), part(2, 3, 3)], Vec::new()).expect("m");
        let rows: Vec<serde_json::Value> = serde_json::from_str(&three.rows).expect("json");
        assert_eq!((rows.len(), three.total, three.truncated), (3, 5, true));
        assert_eq!(rows[2]["node_id"], 2);
        // A node that had more rows than it sent (its own cap).
        let capped = merge(&q(None), vec![part(1, 2, 9)], Vec::new()).expect("merge");
        assert_eq!((capped.total, capped.truncated), (9, true));
    }

    /// Questions for a driver's node go out with its next heartbeat's answer and their answers
    /// come back in order; one whose asker gave up is not sent; a member that leaves closes
    /// the askers' channels; a member with too many questions waiting refuses more.
    #[test]
    fn questions_wait_for_a_heartbeat_and_are_answered_in_order() {
        let ob = OverBeat::default();
        let id = NodeId(4);
        let later = Instant::now() + Duration::from_secs(60);
        assert!(ob.ask(id, NodeRequest::ListLogs, later).is_err(), "not joined");
        ob.open(id);
        let first = ob.ask(id, NodeRequest::ListLogs, later).expect("ask");
        let _gone = ob.ask(id, NodeRequest::ListLogs, Instant::now()).expect("ask");
        let second = ob.ask(id, NodeRequest::ListLogs, later).expect("ask");
        assert_eq!(ob.due(id).len(), 2, "the expired question is not sent");
        assert!(ob.due(id).is_empty());
        assert!(ob.answered(id, NodeAnswer::Error("one".into())));
        assert!(ob.answered(id, NodeAnswer::Error("two".into())));
        assert!(!ob.answered(id, NodeAnswer::Error("three".into())), "not asked");
        for (rx, want) in [(first, "one"), (second, "two")] {
            match rx.try_recv() {
                Ok(NodeAnswer::Error(got)) => assert_eq!(got, want),
                other => panic!("{other:?}"),
            }
        }
        let waiting: Vec<_> =
            (0..MAX_WAITING).map(|_| ob.ask(id, NodeRequest::ListLogs, later)).collect();
        assert!(waiting.iter().all(Result::is_ok));
        assert!(ob.ask(id, NodeRequest::ListLogs, later).is_err(), "too many waiting");
        ob.close(id);
        let rx = waiting.into_iter().next().expect("one").expect("ok");
        assert!(matches!(rx.try_recv(), Err(mpsc::TryRecvError::Disconnected)));
    }

    /// `node_id=N` asks node N only; `node_id!=N` and other keys ask every node.
    #[test]
    fn a_node_filter_picks_the_nodes_asked() {
        let view: Vec<NodeSnapshot> = (1..=3)
            .map(|i| NodeSnapshot { id: NodeId(i), ..crate::head::tests::info("x", false) })
            .collect();
        let q = |key: &str, op, value: &str| StateQuery {
            kind: "objects".into(),
            filters: vec![volley_proto::Filter { key: key.into(), op, value: value.into() }],
            limit: None,
            detail: false,
        };
        let ids = |q: StateQuery| -> Vec<u32> {
            asked_nodes(&q, view.clone()).into_iter().map(|n| n.id.0).collect()
        };
        assert_eq!(ids(q("node_id", volley_proto::FilterOp::Eq, " 2 ")), vec![2]);
        assert_eq!(ids(q("node_id", volley_proto::FilterOp::Ne, "2")), vec![1, 2, 3]);
        assert_eq!(ids(q("state", volley_proto::FilterOp::Eq, "2")), vec![1, 2, 3]);
    }
}
