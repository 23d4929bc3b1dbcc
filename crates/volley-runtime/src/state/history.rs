//! History: the head writes the rows its tables change to the session directory as they
//! change, so that `volley list --session DIR` (and a dashboard) can still show a cluster after
//! it stopped or crashed.
//!
//! A thread takes the changed rows every half second (never under the scheduler's lock) and
//! appends them as JSON lines, the same objects a query answers with `detail`, to
//! `tasks.jsonl`, `actors.jsonl` and `jobs.jsonl` (a job's row when it is submitted, starts and
//! ends); a reader folds them by id, the last line of an id wins. Rows name a submitted job by
//! its submission id, as the live state API does (`Tables::name_job`). `logs.jsonl` indexes the
//! log files: which file (relative to the session directory) holds the output of which job,
//! actor or worker, on which node.
//! Bounded: a file that grows past half of `VOLLEY_HISTORY_MAX_BYTES` (default 64 MiB) becomes
//! `<name>.1.jsonl` (replacing the one before) and a new file starts, so the two hold at most
//! that much and the newest rows. Files are created 0600 without following links, in a
//! directory that must be private (`rundir::ensure_private_dir`).

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use volley_proto::JobRow;

use super::Tables;

/// Log files the index remembers having written (each once); past it, new ones go unindexed.
const MAX_INDEXED: usize = 100_000;

/// The default bound on the history files of one kind, together.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;

/// How often the writer takes the changed rows.
const PERIOD: Duration = Duration::from_millis(500);

struct Log {
    path: PathBuf,
    file: Option<File>,
    written: u64,
    max: u64,
}

impl Log {
    fn new(dir: &Path, name: &str, max: u64) -> Log {
        Log { path: dir.join(format!("{name}.jsonl")), file: None, written: 0, max }
    }

    fn open(&mut self) -> std::io::Result<&mut File> {
        if self.file.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&self.path)?;
            self.written = f.metadata()?.len();
            self.file = Some(f);
        }
        self.file.as_mut().ok_or_else(|| std::io::Error::other("history file not open"))
    }

    fn append(&mut self, rows: &[serde_json::Value]) -> std::io::Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut text = String::new();
        for r in rows {
            text.push_str(&r.to_string());
            text.push('\n');
        }
        if self.written + text.len() as u64 > self.max / 2 && self.written > 0 {
            self.file = None;
            std::fs::rename(&self.path, self.path.with_extension("1.jsonl"))?;
        }
        let f = self.open()?;
        f.write_all(text.as_bytes())?;
        self.written += text.len() as u64;
        Ok(())
    }
}

/// Starts writing `tables`' changes under `dir` until `closed` is set (one last write then).
pub(crate) fn start(
    shared: Arc<crate::shared::Shared>,
    dir: &Path,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    crate::rundir::ensure_private_dir(dir)?;
    let max = std::env::var("VOLLEY_HISTORY_MAX_BYTES")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(DEFAULT_MAX_BYTES)
        .max(4096);
    let mut tasks = Log::new(dir, "tasks", max);
    let mut actors = Log::new(dir, "actors", max);
    let mut jobs = Log::new(dir, "jobs", max);
    let mut logs = Log::new(dir, "logs", max);
    let mut written: HashMap<String, JobRow> = HashMap::new();
    let mut index = LogIndex::default();
    shared.head.tables.set_history(true);
    if shared.links.get().is_none() {
        // A driver's node alone (`init(history=True)`): its session is its one job, listed
        // from the start (a query would list it the same way).
        let started = super::now_ms().saturating_sub(shared.started.elapsed().as_millis() as u64);
        shared.head.local_job(std::process::id(), started);
    }
    std::thread::Builder::new().name("volley-history".into()).spawn(move || {
        let mut warned = false;
        loop {
            let last = shared.closed.load(Ordering::Acquire);
            let (mut t, mut a) = shared.head.tables.take_history();
            shared.head.tables.name_jobs_in(&mut t);
            shared.head.tables.name_jobs_in(&mut a);
            // Each change since the last round, then the rows as they are now.
            let mut rows = shared.head.take_job_changes();
            rows.extend(shared.head.job_rows());
            if last && shared.links.get().is_none() {
                // A lone driver shutting down: its session ends here (as a head sees a
                // driver leave, SUCCEEDED); one that was killed stays RUNNING in the files.
                lone_driver_ended(&mut rows);
            }
            let j = job_changes(rows, &mut written);
            // (The view is copied only when there are rows to index.)
            let node_pids = if t.is_empty() && a.is_empty() {
                HashMap::new()
            } else if shared.links.get().is_none() {
                // A lone driver's node (node 0) is this process; its view may not list it.
                [(0, std::process::id())].into_iter().collect()
            } else {
                shared.head.view().iter().map(|n| (n.id.0.into(), n.pid)).collect()
            };
            let l = index.entries(&j, &t, &a, &node_pids);
            let j: Vec<Value> = j.iter().filter_map(|r| serde_json::to_value(r).ok()).collect();
            let wrote = tasks
                .append(&t)
                .and_then(|_| actors.append(&a))
                .and_then(|_| jobs.append(&j))
                .and_then(|_| logs.append(&l));
            if let Err(e) = wrote {
                if !warned {
                    crate::diag::warn!("could not write the state history: {e}");
                    warned = true;
                }
            }
            if last {
                return;
            }
            std::thread::sleep(PERIOD);
        }
    })
}

impl Tables {
    /// Whether changed rows are kept for the history writer.
    pub(crate) fn set_history(&self, on: bool) {
        self.history.store(on, Ordering::Release);
    }

    /// Rows of a submitted job's driver node name the job by its submission id, as the live
    /// state API does (`name_job`), not by the node's number.
    fn name_jobs_in(&self, rows: &mut [Value]) {
        let names: HashMap<String, String> = self
            .job_names
            .lock()
            .iter()
            .map(|(node, name)| (super::job_str(*node), name.clone()))
            .collect();
        if names.is_empty() {
            return;
        }
        for row in rows {
            let Some(o) = row.as_object_mut() else { continue };
            if let Some(name) = o.get("job_id").and_then(Value::as_str).and_then(|j| names.get(j)) {
                o.insert("job_id".into(), name.clone().into());
            }
        }
    }
}

/// Marks a lone driver's own session (job "0", no entrypoint) as ended now.
fn lone_driver_ended(rows: &mut [JobRow]) {
    for r in rows.iter_mut().filter(|r| r.entrypoint.is_none() && r.end_ms.is_none()) {
        r.status = volley_proto::JobStatus::Succeeded;
        r.end_ms = Some(super::now_ms());
    }
}

/// The job rows that changed since they were last written (all of them the first time).
fn job_changes(rows: Vec<JobRow>, written: &mut HashMap<String, JobRow>) -> Vec<JobRow> {
    let mut out = Vec::new();
    for row in rows {
        if written.get(&row.job_id) != Some(&row) {
            written.insert(row.job_id.clone(), row.clone());
            out.push(row);
        }
    }
    out
}

/// Which log file holds whose output (`logs.jsonl`): a line per file and owner, written once.
#[derive(Default)]
struct LogIndex {
    seen: HashSet<String>,
}

impl LogIndex {
    /// New index lines for the jobs, tasks and actors of this round (`node_pid`: each node's
    /// process, by node number, from the head's view). A worker's file is
    /// `logs/worker-<node's pid>-<pid>.log` on its node's machine (`.N` before `.log` once
    /// rotated); a submitted job's output is `jobs/<id>.log` on the head's.
    fn entries(
        &mut self,
        jobs: &[JobRow],
        tasks: &[Value],
        actors: &[Value],
        node_pid: &HashMap<u64, u32>,
    ) -> Vec<Value> {
        let mut out = Vec::new();
        for j in jobs.iter().filter(|j| j.entrypoint.is_some() && j.driver_pid.is_some()) {
            let file = format!("jobs/{}.log", j.job_id);
            self.add(
                &mut out,
                json!({"file": file, "kind": "job", "job_id": j.job_id,
                                      "node_id": 0, "pid": j.driver_pid}),
            );
        }
        let worker = |row: &Value, pid_key: &str| {
            let node = row.get("node_id")?.as_u64()?;
            let pid = row.get(pid_key)?.as_u64()?;
            let file = format!("logs/worker-{}-{pid}.log", node_pid.get(&node)?);
            Some((file, node, pid))
        };
        for t in tasks {
            if let Some((file, node, pid)) = worker(t, "worker_pid") {
                self.add(
                    &mut out,
                    json!({"file": file, "kind": "worker", "node_id": node,
                                          "pid": pid, "job_id": t.get("job_id")}),
                );
            }
        }
        for a in actors {
            if let Some((file, node, pid)) = worker(a, "pid") {
                self.add(
                    &mut out,
                    json!({"file": file, "kind": "actor", "node_id": node,
                                          "pid": pid, "job_id": a.get("job_id"),
                                          "actor_id": a.get("actor_id")}),
                );
            }
        }
        out
    }

    fn add(&mut self, out: &mut Vec<Value>, entry: Value) {
        if self.seen.len() >= MAX_INDEXED {
            return;
        }
        if self.seen.insert(entry.to_string()) {
            out.push(entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use volley_proto::{JobStatus, NodeId};

    use super::*;

    fn job(id: &str, status: JobStatus) -> JobRow {
        JobRow {
            job_id: id.into(),
            status,
            entrypoint: Some("python s.py".into()),
            driver_pid: Some(77),
            start_ms: 1,
            end_ms: None,
            exit_code: None,
            message: None,
            driver_node: Some(3),
        }
    }

    #[test]
    fn rows_name_a_submitted_job_by_its_submission_id_as_the_live_api_does() {
        let tables = Tables::default();
        tables.name_job(NodeId(3), "nightly".into());
        let mut rows =
            vec![json!({"job_id": "3"}), json!({"job_id": "4"}), json!({"job_id": null})];
        tables.name_jobs_in(&mut rows);
        assert_eq!(
            rows,
            [json!({"job_id": "nightly"}), json!({"job_id": "4"}), json!({"job_id": null})]
        );
    }

    #[test]
    fn a_job_is_written_when_it_changes_and_a_log_file_indexed_once() {
        let mut written = HashMap::new();
        let running = job("j", JobStatus::Running);
        assert_eq!(job_changes(vec![running.clone()], &mut written), vec![running.clone()]);
        assert!(job_changes(vec![running.clone()], &mut written).is_empty());
        let done = JobRow { status: JobStatus::Succeeded, ..running };
        assert_eq!(job_changes(vec![done.clone()], &mut written), vec![done.clone()]);

        let mut index = LogIndex::default();
        let nodes: HashMap<u64, u32> = [(2, 500)].into_iter().collect();
        let task = json!({"node_id": 2, "worker_pid": 9, "job_id": "j"});
        let actor = json!({"node_id": 2, "pid": 10, "job_id": "j", "actor_id": "ab"});
        let elsewhere = json!({"node_id": 8, "worker_pid": 9, "job_id": "j"});
        let tasks = [task.clone(), task.clone(), elsewhere];
        let first = index.entries(
            std::slice::from_ref(&done),
            &tasks,
            std::slice::from_ref(&actor),
            &nodes,
        );
        assert_eq!(
            first,
            [
                json!({"file": "jobs/j.log", "kind": "job", "job_id": "j", "node_id": 0, "pid": 77}),
                json!({"file": "logs/worker-500-9.log", "kind": "worker", "node_id": 2, "pid": 9,
                       "job_id": "j"}),
                json!({"file": "logs/worker-500-10.log", "kind": "actor", "node_id": 2, "pid": 10,
                       "job_id": "j", "actor_id": "ab"}),
            ]
        );
        assert!(index.entries(&[done], &[task], &[actor], &nodes).is_empty());
    }
}
