//! Filters: typed predicates over the task table (a scan of 1,000,000 rows compares integers,
//! not strings), and a plain comparison of rendered fields for the smaller kinds.

use volley_proto::{ActorId, FilterOp, NodeId, StateAnswer, StateQuery, TaskId, TaskStateCode};

use super::{Names, Row};

/// The keys a task filter may name.
pub fn task_filter_keys() -> &'static [&'static str] {
    &[
        "task_id",
        "name",
        "state",
        "job_id",
        "actor_id",
        "node_id",
        "worker_pid",
        "attempt",
        "error_kind",
    ]
}

pub(crate) const ACTOR_KEYS: &[&str] = &[
    "actor_id",
    "class_name",
    "name",
    "namespace",
    "state",
    "restarts",
    "pid",
    "node_id",
    "job_id",
    "detached",
    "death_cause",
];

/// One task filter, with its value parsed once.
pub(crate) struct TaskPred {
    eq: bool,
    test: Test,
}

enum Test {
    Task(TaskId),
    Name(String),
    State(TaskStateCode),
    Job(Option<NodeId>),
    Actor(Option<ActorId>),
    Node(Option<NodeId>),
    Pid(u32),
    Attempt(u32),
    ErrorKind(Option<String>),
}

fn null(v: &str) -> bool {
    v.is_empty() || v.eq_ignore_ascii_case("null") || v.eq_ignore_ascii_case("none")
}

fn number<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, String> {
    v.trim().parse().map_err(|_| format!("filter {key}: '{v}' is not a number"))
}

fn node(key: &str, v: &str) -> Result<Option<NodeId>, String> {
    if null(v) {
        return Ok(None);
    }
    number(key, v).map(|n| Some(NodeId(n)))
}

fn hex_id(key: &str, v: &str) -> Result<u128, String> {
    let v = v.trim();
    let digits = if v.len() >= 32 { &v[..32] } else { v };
    if digits.len() != 32 {
        return Err(format!("filter {key}: '{v}' is not an id (32 or 40 hex digits)"));
    }
    u128::from_str_radix(digits, 16).map_err(|_| format!("filter {key}: '{v}' is not hex"))
}

impl TaskPred {
    pub(crate) fn parse(key: &str, op: FilterOp, v: &str) -> Result<TaskPred, String> {
        let test = match key {
            "task_id" => Test::Task(TaskId(hex_id(key, v)?)),
            "name" | "func_name" => Test::Name(v.to_string()),
            "state" => Test::State(TaskStateCode::parse(v).ok_or_else(|| {
                let all: Vec<&str> = TaskStateCode::ALL.iter().map(|c| c.name()).collect();
                format!("filter state: '{v}' is not a task state (one of {})", all.join(", "))
            })?),
            "job_id" => Test::Job(node(key, v)?),
            "actor_id" => {
                Test::Actor(if null(v) { None } else { Some(ActorId(TaskId(hex_id(key, v)?))) })
            }
            "node_id" => Test::Node(node(key, v)?),
            "worker_pid" | "pid" => Test::Pid(if null(v) { 0 } else { number(key, v)? }),
            "attempt" => Test::Attempt(number(key, v)?),
            "error_kind" => Test::ErrorKind((!null(v)).then(|| v.to_ascii_uppercase())),
            other => {
                return Err(format!(
                    "tasks have no field '{other}' to filter on (one of {})",
                    task_filter_keys().join(", ")
                ))
            }
        };
        Ok(TaskPred { eq: op == FilterOp::Eq, test })
    }

    pub(crate) fn matches(&self, id: &TaskId, r: &Row, names: &Names) -> bool {
        let hit = match &self.test {
            Test::Task(t) => id == t,
            Test::Name(n) => names.get(r.name) == n,
            Test::State(s) => r.state == *s,
            Test::Job(j) => r.job == *j,
            Test::Actor(a) => r.actor == *a,
            Test::Node(n) => r.node == *n,
            Test::Pid(p) => r.pid == *p,
            Test::Attempt(a) => r.attempt == *a,
            Test::ErrorKind(k) => r.error.as_ref().map(|e| e.kind.name()) == k.as_deref(),
        };
        hit == self.eq
    }
}

/// A field of a rendered row as a filter compares it (strings as they are, numbers and
/// booleans as written in JSON, null as "null").
fn field_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "null".into(),
        other => other.to_string(),
    }
}

/// Filters, counts and limits already rendered rows (the kinds with few rows: actors, nodes,
/// workers, objects, placement groups, jobs). `keys` are the fields a filter may name.
pub(crate) fn generic_answer(
    q: &StateQuery,
    rows: Vec<serde_json::Value>,
    keys: &[&str],
) -> Result<StateAnswer, String> {
    for f in &q.filters {
        if !keys.contains(&f.key.as_str()) {
            return Err(format!(
                "{} have no field '{}' to filter on (one of {})",
                q.kind,
                f.key,
                keys.join(", ")
            ));
        }
    }
    let hits: Vec<serde_json::Value> = rows
        .into_iter()
        .filter(|row| {
            q.filters.iter().all(|f| {
                let text = row.get(&f.key).map(field_text).unwrap_or_else(|| "null".into());
                let same =
                    text.eq_ignore_ascii_case(f.value.trim()) || (text == "null" && null(&f.value));
                same == (f.op == FilterOp::Eq)
            })
        })
        .collect();
    let total = hits.len();
    let limit = q.limit.filter(|l| *l > 0).map_or(usize::MAX, |l| l as usize);
    let shown: Vec<serde_json::Value> = hits.into_iter().take(limit).collect();
    Ok(StateAnswer {
        kind: q.kind.clone(),
        rows: serde_json::to_string(&shown).map_err(|e| e.to_string())?,
        total: total as u64,
        truncated: total > limit,
        dropped: 0,
        missing: Vec::new(),
    })
}
