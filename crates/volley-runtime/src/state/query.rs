//! Filters: typed predicates over the task table (a scan of 1,000,000 rows compares integers,
//! not strings) and the actor table (only the page returned is rendered), and a plain
//! comparison of rendered fields for the smaller kinds.

use volley_proto::{
    ActorId, ActorRow, FilterOp, NodeId, StateAnswer, StateQuery, TaskId, TaskStateCode,
};

use super::{actor_hex, actor_json, Names, Row};

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
        "submitted_ms",
        "started_ms",
        "ended_ms",
        "duration_ms",
        "changed_ms",
    ]
}

/// The task keys the ordering operators take (numbers; times in ms since the epoch).
const TASK_NUMERIC: &[&str] = &[
    "worker_pid",
    "pid",
    "attempt",
    "submitted_ms",
    "started_ms",
    "ended_ms",
    "duration_ms",
    "changed_ms",
];

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

/// The actor keys the ordering operators take.
const ACTOR_NUMERIC: &[&str] = &["restarts", "pid", "node_id"];

/// One task filter, with its value parsed once.
pub(crate) struct TaskPred {
    op: FilterOp,
    test: Test,
}

/// A task's time field: `changed_ms` is the latest of the three (what the dashboard's stream
/// page asks for, to fetch only the rows that changed since its last look).
#[derive(Clone, Copy)]
enum Time {
    Submitted,
    Started,
    Ended,
    Duration,
    Changed,
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
    Time(Time, Option<u64>),
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

/// An ordering operator on a field that is no number: refused at the call site.
fn not_numeric(kind: &str, key: &str, op: FilterOp, numeric: &[&str]) -> String {
    format!(
        "filter {key}{}: '{}' compares numbers, and {kind}' {key} is not one (use = or !=; \
         the numeric fields are {})",
        op.symbol(),
        op.symbol(),
        numeric.join(", ")
    )
}

/// A time in a row: 0 is "not yet" (null).
fn time(ms: u64) -> Option<u64> {
    (ms != 0).then_some(ms)
}

impl TaskPred {
    pub(crate) fn parse(key: &str, op: FilterOp, v: &str) -> Result<TaskPred, String> {
        if op.is_range() && !TASK_NUMERIC.contains(&key) {
            if !task_filter_keys().contains(&key) && key != "func_name" {
                return Err(format!(
                    "tasks have no field '{key}' to filter on (one of {})",
                    task_filter_keys().join(", ")
                ));
            }
            return Err(not_numeric("tasks", key, op, TASK_NUMERIC));
        }
        if op.is_range() && null(v) {
            return Err(format!("filter {key}{}: needs a number, not '{v}'", op.symbol()));
        }
        let ms = |t: Time| -> Result<Test, String> {
            Ok(Test::Time(t, if null(v) { None } else { Some(number(key, v)?) }))
        };
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
            "submitted_ms" => ms(Time::Submitted)?,
            "started_ms" => ms(Time::Started)?,
            "ended_ms" => ms(Time::Ended)?,
            "duration_ms" => ms(Time::Duration)?,
            "changed_ms" => ms(Time::Changed)?,
            other => {
                return Err(format!(
                    "tasks have no field '{other}' to filter on (one of {})",
                    task_filter_keys().join(", ")
                ))
            }
        };
        Ok(TaskPred { op, test })
    }

    pub(crate) fn matches(&self, id: &TaskId, r: &Row, names: &Names) -> bool {
        let hit = match &self.test {
            Test::Task(t) => id == t,
            Test::Name(n) => names.get(r.name) == n,
            Test::State(s) => r.state == *s,
            Test::Job(j) => r.job == *j,
            Test::Actor(a) => names.actor(r.actor) == *a,
            Test::Node(n) => r.node == *n,
            Test::Pid(p) if self.op.is_range() => {
                return r.pid != 0 && self.op.holds(r.pid, *p);
            }
            Test::Pid(p) => r.pid == *p,
            Test::Attempt(a) => return self.op.holds(r.attempt, *a),
            Test::ErrorKind(k) => r.error.as_ref().map(|e| e.kind.name()) == k.as_deref(),
            Test::Time(t, v) => {
                let field = match t {
                    Time::Submitted => time(r.submitted_ms),
                    Time::Started => time(r.started_ms),
                    Time::Ended => time(r.ended_ms),
                    Time::Duration => (r.started_ms != 0 && r.ended_ms != 0)
                        .then(|| r.ended_ms.saturating_sub(r.started_ms)),
                    Time::Changed => time(r.submitted_ms.max(r.started_ms).max(r.ended_ms)),
                };
                return match (field, v) {
                    (Some(f), Some(v)) => self.op.holds(f, *v),
                    // Null equals null, and is ordered with nothing.
                    (f, v) => !self.op.is_range() && (f == *v) == (self.op == FilterOp::Eq),
                };
            }
        };
        hit == (self.op == FilterOp::Eq)
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

/// A filter of a kind without typed predicates, checked once: its key is a field of the kind,
/// and an ordering operator has a number to compare with.
struct Plain<'a> {
    key: &'a str,
    op: FilterOp,
    value: &'a str,
    number: f64,
}

/// `numeric`: the keys an ordering operator may name, where the kind knows them (`None`: any
/// key; a field that is no number then meets no ordering filter).
fn plain_filters<'a>(
    q: &'a StateQuery,
    keys: &[&str],
    numeric: Option<&[&str]>,
) -> Result<Vec<Plain<'a>>, String> {
    q.filters
        .iter()
        .map(|f| {
            if !keys.contains(&f.key.as_str()) {
                return Err(format!(
                    "{} have no field '{}' to filter on (one of {})",
                    q.kind,
                    f.key,
                    keys.join(", ")
                ));
            }
            if let Some(numeric) =
                numeric.filter(|n| f.op.is_range() && !n.contains(&f.key.as_str()))
            {
                return Err(not_numeric(&q.kind, &f.key, f.op, numeric));
            }
            let number = if f.op.is_range() {
                f.value.trim().parse::<f64>().ok().filter(|n| n.is_finite()).ok_or_else(|| {
                    format!(
                        "filter {}{}: '{}' is not a number ('{}' compares numbers)",
                        f.key,
                        f.op.symbol(),
                        f.value,
                        f.op.symbol()
                    )
                })?
            } else {
                0.0
            };
            Ok(Plain { key: &f.key, op: f.op, value: &f.value, number })
        })
        .collect()
}

impl Plain<'_> {
    /// Whether the field (as rendered; `None`: absent) meets this filter. An ordering operator
    /// compares numbers only: a string, a boolean or null meets none.
    fn meets(&self, field: Option<&serde_json::Value>) -> bool {
        if self.op.is_range() {
            return field
                .and_then(serde_json::Value::as_f64)
                .is_some_and(|f| self.op.holds(f, self.number));
        }
        let text = field.map(field_text).unwrap_or_else(|| "null".into());
        let same =
            text.eq_ignore_ascii_case(self.value.trim()) || (text == "null" && null(self.value));
        same == (self.op == FilterOp::Eq)
    }
}

fn answer(
    q: &StateQuery,
    total: usize,
    shown: &[serde_json::Value],
) -> Result<StateAnswer, String> {
    let limit = page_size(q);
    Ok(StateAnswer {
        kind: q.kind.clone(),
        rows: serde_json::to_string(shown).map_err(|e| e.to_string())?,
        total: total as u64,
        truncated: total > limit,
        dropped: 0,
        missing: Vec::new(),
    })
}

fn page_size(q: &StateQuery) -> usize {
    q.limit.filter(|l| *l > 0).map_or(usize::MAX, |l| l as usize)
}

/// Filters, counts and limits already rendered rows (the kinds with few rows: nodes, workers,
/// objects, placement groups, jobs). `keys` are the fields a filter may name.
pub(crate) fn generic_answer(
    q: &StateQuery,
    rows: Vec<serde_json::Value>,
    keys: &[&str],
) -> Result<StateAnswer, String> {
    let filters = plain_filters(q, keys, None)?;
    let hits: Vec<serde_json::Value> =
        rows.into_iter().filter(|row| filters.iter().all(|f| f.meets(row.get(f.key)))).collect();
    let total = hits.len();
    let shown: Vec<serde_json::Value> = hits.into_iter().take(page_size(q)).collect();
    answer(q, total, &shown)
}

/// One field of an actor's row, as `actor_json` renders it, without rendering the others.
fn actor_field(a: &ActorRow, key: &str, job: &dyn Fn(NodeId) -> String) -> serde_json::Value {
    use serde_json::Value;
    match key {
        "actor_id" => actor_hex(a.actor).into(),
        "class_name" => a.class_name.as_str().into(),
        "name" if a.name.is_empty() => Value::Null,
        "name" => a.name.as_str().into(),
        "namespace" => a.namespace.as_str().into(),
        "state" => a.state.as_str().into(),
        "restarts" => a.restarts.into(),
        "pid" if a.pid == 0 => Value::Null,
        "pid" => a.pid.into(),
        "node_id" => a.node.map_or(Value::Null, |n| n.0.into()),
        "job_id" => a.job.map_or(Value::Null, |j| job(j).into()),
        "detached" => a.detached.into(),
        "death_cause" => a.death_cause.as_deref().map_or(Value::Null, Value::from),
        _ => Value::Null,
    }
}

/// Actors: filtered on the typed rows, sorted by id, and only the page returned rendered (a
/// query for one actor among 10,000 renders one row). `job` names a driver's job as rows show
/// it (a submitted job's id).
pub(crate) fn actor_answer<'a>(
    q: &StateQuery,
    actors: impl Iterator<Item = &'a ActorRow>,
    job: &dyn Fn(NodeId) -> String,
) -> Result<StateAnswer, String> {
    let filters = plain_filters(q, ACTOR_KEYS, Some(ACTOR_NUMERIC))?;
    let mut hits: Vec<&ActorRow> = actors
        .filter(|a| filters.iter().all(|f| f.meets(Some(&actor_field(a, f.key, job)))))
        .collect();
    let total = hits.len();
    let limit = page_size(q);
    // The living first (a page of a long session's actors is not all dead ones), then by id.
    let order = |a: &&ActorRow| (a.state == "DEAD", a.actor);
    if limit < hits.len() {
        hits.select_nth_unstable_by_key(limit, order);
        hits.truncate(limit);
    }
    hits.sort_by_key(order);
    let shown: Vec<serde_json::Value> = hits
        .into_iter()
        .map(|a| {
            let mut row = actor_json(a);
            if let (Some(j), Some(o)) = (a.job, row.as_object_mut()) {
                o.insert("job_id".into(), job(j).into());
            }
            row
        })
        .collect();
    answer(q, total, &shown)
}
