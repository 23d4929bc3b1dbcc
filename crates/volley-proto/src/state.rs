//! The state API's wire types: a query (`volley list`, `volley.state`, the dashboard) and its
//! answer, and the rows a node sends its head so that the head keeps the cluster's task and
//! actor tables.
//!
//! Rows travel as compact structs (ids as integers, states as codes); the answer carries its rows
//! already rendered as JSON text, so the head renders once and neither the member that relays it
//! nor the binding has to know every kind's fields.

use serde::{Deserialize, Serialize};

use crate::{ActorId, ErrorKind, NodeId, TaskId};

/// The kinds of rows a query can ask for, by their names in the CLI and the HTTP API.
pub const STATE_KINDS: [&str; 7] =
    ["tasks", "actors", "nodes", "workers", "objects", "placement_groups", "jobs"];

/// How a filter compares a row's field with its value. The ordering ones (`>`, `>=`, `<`,
/// `<=`) take numeric fields only (times such as `started_ms`, counts, pids): a row whose
/// field is null (a task not started yet has no `started_ms`) matches none of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FilterOp {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

impl FilterOp {
    /// Every operator as written in the CLI, the Python API and the HTTP API.
    pub const SYMBOLS: [&'static str; 6] = ["=", "!=", ">", ">=", "<", "<="];

    /// The operator written `op` (`==` is `=`).
    pub fn parse(op: &str) -> Option<FilterOp> {
        Some(match op {
            "=" | "==" => FilterOp::Eq,
            "!=" => FilterOp::Ne,
            ">" => FilterOp::Gt,
            ">=" => FilterOp::Ge,
            "<" => FilterOp::Lt,
            "<=" => FilterOp::Le,
            _ => return None,
        })
    }

    pub fn symbol(self) -> &'static str {
        match self {
            FilterOp::Eq => "=",
            FilterOp::Ne => "!=",
            FilterOp::Gt => ">",
            FilterOp::Ge => ">=",
            FilterOp::Lt => "<",
            FilterOp::Le => "<=",
        }
    }

    /// Whether it orders numbers rather than tests equality.
    pub fn is_range(self) -> bool {
        !matches!(self, FilterOp::Eq | FilterOp::Ne)
    }

    /// Whether `field op value` holds, for numbers.
    pub fn holds<T: PartialOrd>(self, field: T, value: T) -> bool {
        match self {
            FilterOp::Eq => field == value,
            FilterOp::Ne => field != value,
            FilterOp::Gt => field > value,
            FilterOp::Ge => field >= value,
            FilterOp::Lt => field < value,
            FilterOp::Le => field <= value,
        }
    }

    /// Splits `key<op>value` (the CLI's `--filter` and the HTTP API's `filter=`): the first
    /// operator in the text, the two-character ones before their one-character prefixes.
    pub fn split(text: &str) -> Option<(&str, FilterOp, &str)> {
        let at = text.find(['=', '!', '<', '>'])?;
        let rest = &text[at..];
        let op =
            ["!=", ">=", "<=", "==", "=", ">", "<"].into_iter().find(|o| rest.starts_with(o))?;
        Some((&text[..at], FilterOp::parse(op)?, &rest[op.len()..]))
    }
}

/// One `key op value` condition; a row matches a query when it meets every one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    pub key: String,
    pub op: FilterOp,
    pub value: String,
}

/// A question to the state API: rows of `kind` matching every filter, at most `limit` of them
/// (`None`: all), with the long fields (tracebacks) when `detail`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateQuery {
    pub kind: String,
    pub filters: Vec<Filter>,
    pub limit: Option<u64>,
    pub detail: bool,
}

/// The answer: `rows` is a JSON array of objects (see contract of each kind in docs/state.md),
/// `total` counts the matching rows before the limit, `dropped` the finished rows the bounded
/// table forgot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateAnswer {
    pub kind: String,
    pub rows: String,
    pub total: u64,
    pub truncated: bool,
    pub dropped: u64,
    /// Nodes whose rows are not in the answer (workers and objects are asked of every live
    /// node; one that did not answer in time is named here with the reason, never waited on).
    pub missing: Vec<String>,
}

/// A task's state as the state API names it; the order is the order of a task's life, so a
/// merge keeps the furthest (a terminal state never goes back to running).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum TaskStateCode {
    WaitingArgs = 0,
    Queued = 1,
    Running = 2,
    Finished = 3,
    Failed = 4,
    Cancelled = 5,
}

impl TaskStateCode {
    pub const ALL: [TaskStateCode; 6] = [
        TaskStateCode::WaitingArgs,
        TaskStateCode::Queued,
        TaskStateCode::Running,
        TaskStateCode::Finished,
        TaskStateCode::Failed,
        TaskStateCode::Cancelled,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TaskStateCode::WaitingArgs => "WAITING_ARGS",
            TaskStateCode::Queued => "QUEUED",
            TaskStateCode::Running => "RUNNING",
            TaskStateCode::Finished => "FINISHED",
            TaskStateCode::Failed => "FAILED",
            TaskStateCode::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(s: &str) -> Option<TaskStateCode> {
        TaskStateCode::ALL.into_iter().find(|c| c.name().eq_ignore_ascii_case(s))
    }

    pub fn is_terminal(self) -> bool {
        self >= TaskStateCode::Finished
    }
}

/// A task's error as its row keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskError {
    pub kind: ErrorKind,
    pub message: String,
    pub traceback: String,
}

/// One task as a node saw it, sent to the head (`PeerMsg::StateRows`). Times are milliseconds
/// since the Unix epoch; `node` is where it runs (or was sent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRow {
    pub task: TaskId,
    pub name: String,
    pub state: TaskStateCode,
    pub job: Option<NodeId>,
    pub actor: Option<ActorId>,
    pub node: Option<NodeId>,
    pub pid: Option<u32>,
    pub attempt: u32,
    pub submitted_ms: Option<u64>,
    pub started_ms: Option<u64>,
    pub ended_ms: Option<u64>,
    pub error: Option<TaskError>,
}

/// One actor as a node saw it (state: `PENDING`, `ALIVE`, `RESTARTING`, `DEAD`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorRow {
    pub actor: ActorId,
    pub class_name: String,
    pub name: String,
    pub namespace: String,
    pub state: String,
    pub restarts: u32,
    pub pid: u32,
    pub node: Option<NodeId>,
    pub job: Option<NodeId>,
    pub detached: bool,
    pub death_cause: Option<String>,
    /// Whether the sending node hosts it (a driver's route to a remote actor does not): the
    /// host's word wins at the head.
    pub hosted: bool,
}

/// The rows a member changed since its last batch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateRows {
    pub tasks: Vec<TaskRow>,
    pub actors: Vec<ActorRow>,
}

impl StateRows {
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty() && self.actors.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::FilterOp;

    #[test]
    fn filters_split_at_their_first_operator() {
        let split = FilterOp::split;
        assert_eq!(split("state=FAILED"), Some(("state", FilterOp::Eq, "FAILED")));
        assert_eq!(split("name!=f"), Some(("name", FilterOp::Ne, "f")));
        assert_eq!(split("started_ms>=17"), Some(("started_ms", FilterOp::Ge, "17")));
        assert_eq!(split("ended_ms<5"), Some(("ended_ms", FilterOp::Lt, "5")));
        assert_eq!(split("a<=b=c"), Some(("a", FilterOp::Le, "b=c")), "the value keeps the rest");
        assert_eq!(split("a==1"), Some(("a", FilterOp::Eq, "1")));
        assert_eq!(split("started_ms"), None);
        assert_eq!(split("a!b"), None, "'!' alone is no operator");
        for s in FilterOp::SYMBOLS {
            assert_eq!(FilterOp::parse(s).map(FilterOp::symbol), Some(s));
        }
        assert!(FilterOp::Gt.holds(2, 1) && !FilterOp::Le.holds(2, 1) && FilterOp::Ne.holds(1, 2));
    }
}
