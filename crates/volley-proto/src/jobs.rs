//! Submitted jobs (`volley job submit`): what a client sends the head, and the row the head
//! keeps for each job (the `job` row of the state API).
//!
//! A job is a driver program the head runs for a client, under its supervision (see
//! `volley_runtime::head::jobs`). Its rows travel in `HeadAnswer::Job`/`Jobs`; its output in
//! `HeadAnswer::JobLogs`, a chunk at a time from an offset, so a client that follows the log
//! polls without reading it again.

use serde::{Deserialize, Serialize};

/// The most bytes of a job's zipped working directory: the head keeps it on disk (and in
/// memory while it arrives); larger data belongs in the object store or on shared storage.
pub const MAX_JOB_PACKAGE: usize = 64 << 20;

/// The most bytes of a working directory one `JobUpload` request carries. A working directory
/// travels in chunks after the handshake, each on a connection of its own, so the handshake's
/// deadline bounds a chunk's time on the wire, not the whole directory's; the client sizes its
/// chunks to the link (smaller on a slow one), up to this.
pub const MAX_JOB_UPLOAD_CHUNK: usize = 4 << 20;

/// The most bytes one `JobLogs` answer carries.
pub const MAX_JOB_LOG_CHUNK: usize = 1 << 20;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobStatus {
    /// Accepted, its driver not started yet.
    Pending,
    /// Its driver runs.
    Running,
    /// Its driver exited with status 0.
    Succeeded,
    /// Its driver exited with another status, died of a signal, or could not start.
    Failed,
    /// Stopped on request (`volley job stop`).
    Stopped,
}

impl JobStatus {
    /// Whether the job is over (its status no longer changes).
    pub fn is_terminal(self) -> bool {
        matches!(self, JobStatus::Succeeded | JobStatus::Failed | JobStatus::Stopped)
    }

    /// The name the state API and the CLI show.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "PENDING",
            JobStatus::Running => "RUNNING",
            JobStatus::Succeeded => "SUCCEEDED",
            JobStatus::Failed => "FAILED",
            JobStatus::Stopped => "STOPPED",
        }
    }
}

/// One job, as the head keeps it (and writes it to `jobs/<id>.json` in its session directory).
/// Times are milliseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRow {
    pub job_id: String,
    pub status: JobStatus,
    /// The command line as the client gave it (`None` for a driver that joined by itself).
    pub entrypoint: Option<String>,
    /// The driver's process on the head's machine (`None` before it started).
    pub driver_pid: Option<u32>,
    pub start_ms: u64,
    pub end_ms: Option<u64>,
    /// The driver's exit status; minus the signal's number when a signal ended it.
    pub exit_code: Option<i32>,
    /// Why it failed or stopped, in a sentence (the last line of its output for a failure).
    pub message: Option<String>,
    /// The cluster node the job's driver joined as, once it has (a submitted job's driver
    /// session is linked to its submission by its process id).
    pub driver_node: Option<u32>,
}

/// What `volley job submit` sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The job's id if the client chose one (letters, digits, `-`, `_`; at most 64).
    pub submission_id: Option<String>,
    /// The command to run: the program and its arguments (`python` means the head's Python).
    pub argv: Vec<String>,
    /// The command line as the user wrote it, for display.
    pub entrypoint: String,
    /// The hash of the working directory's zip (the package's name), uploaded before with
    /// `JobUpload` requests.
    pub working_dir: Option<String>,
    /// Environment variables set for the driver (the runtime env's `env_vars`).
    pub env_vars: Vec<(String, String)>,
    /// Resources the driver holds on the head's node while it runs, in thousandths (`CPU`,
    /// `GPU` and custom ones: `--entrypoint-num-cpus` and the like); it waits PENDING until
    /// the jobs running there leave it them.
    pub resources: Vec<(String, u64)>,
    /// `pip install` arguments (requirements, or options such as `--no-index`): the head runs
    /// the driver in a virtual environment made for this list (the runtime env's `pip`).
    pub pip: Vec<String>,
}

impl JobSpec {
    /// Checks what a head checks again on receipt: an error message, or `None`.
    pub fn check(&self) -> Option<String> {
        if self.argv.is_empty() || self.argv[0].is_empty() {
            return Some("a job needs an entrypoint: the command after `--`".into());
        }
        if self.argv.iter().any(|a| a.contains('\0')) {
            return Some("a job's command line cannot hold a NUL byte".into());
        }
        for (k, v) in &self.env_vars {
            if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
                return Some(format!(
                    "env_vars: {k:?} cannot be an environment variable's name (empty, or with \
                     '=' or a NUL byte), or its value holds a NUL byte"
                ));
            }
        }
        if let Some(id) = &self.submission_id {
            if let Some(why) = check_job_id(id) {
                return Some(why);
            }
        }
        if let Some(hash) = &self.working_dir {
            if let Some(why) = check_package_hash(hash) {
                return Some(why);
            }
        }
        for (name, amount) in &self.resources {
            if name.is_empty() || name.len() > 64 || name.contains('\0') {
                return Some(format!("entrypoint resources: {name:?} cannot name a resource"));
            }
            if *amount == 0 {
                return Some(format!(
                    "entrypoint resources: {name} must be more than 0 (leave it out for none)"
                ));
            }
        }
        if self.pip.iter().any(|a| a.is_empty() || a.contains('\0')) {
            return Some("runtime_env pip: an empty argument, or one with a NUL byte".into());
        }
        None
    }
}

/// Whether `hash` can name an uploaded package (it names a file in the head's packages
/// directory): 32 to 64 lowercase hex digits. An error message, or `None`.
pub fn check_package_hash(hash: &str) -> Option<String> {
    let ok = (32..=64).contains(&hash.len())
        && hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    (!ok).then(|| format!("{hash:?} is not a working directory's hash (32 to 64 hex digits)"))
}

/// Checks a `JobUpload` request (the client before sending, the head again on receipt): an
/// error message, or `None`.
pub fn check_upload(hash: &str, total: u64, offset: u64, chunk: usize) -> Option<String> {
    if let Some(why) = check_package_hash(hash) {
        return Some(why);
    }
    if total > MAX_JOB_PACKAGE as u64 {
        return Some(format!(
            "the working directory packs to {} MiB, over the {} MiB a job can ship; leave large \
             data out of it (volley.put, shared storage)",
            total >> 20,
            MAX_JOB_PACKAGE >> 20
        ));
    }
    if chunk > MAX_JOB_UPLOAD_CHUNK {
        return Some(format!(
            "an upload chunk is at most {MAX_JOB_UPLOAD_CHUNK} bytes, not {chunk}"
        ));
    }
    if offset.saturating_add(chunk as u64) > total {
        return Some(format!(
            "an upload chunk of {chunk} bytes at offset {offset} goes past its total, {total}"
        ));
    }
    None
}

/// Whether `id` can name a job (it names files in the head's session directory): an error
/// message, or `None`.
pub fn check_job_id(id: &str) -> Option<String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    (!ok).then(|| {
        format!(
            "job id {id:?} is not valid: use 1 to 64 letters, digits, '-', '_' or '.', not \
             starting with '.'"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: Option<&str>, argv: &[&str], hash: Option<&str>) -> JobSpec {
        JobSpec {
            submission_id: id.map(str::to_string),
            argv: argv.iter().map(|a| a.to_string()).collect(),
            entrypoint: argv.join(" "),
            working_dir: hash.map(str::to_string),
            env_vars: Vec::new(),
            resources: Vec::new(),
            pip: Vec::new(),
        }
    }

    #[test]
    fn job_ids_cannot_leave_the_jobs_directory() {
        for ok in ["job-1a2b", "nightly_2026.12.05", "A"] {
            assert_eq!(check_job_id(ok), None, "{ok}");
        }
        let long = "x".repeat(65);
        for bad in ["", "../x", "a/b", ".hidden", "sp ace", long.as_str(), "é"] {
            assert!(check_job_id(bad).is_some(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_submission_is_checked_before_it_is_sent_and_on_receipt() {
        let hash = "0123456789abcdef0123456789abcdef";
        assert_eq!(spec(None, &["python", "s.py"], Some(hash)).check(), None);
        assert!(spec(None, &[], None).check().is_some_and(|w| w.contains("entrypoint")));
        assert!(spec(Some("../x"), &["p"], None).check().is_some_and(|w| w.contains("not valid")));
        assert!(spec(None, &["p", "a\0b"], None).check().is_some_and(|w| w.contains("NUL")));
        assert!(spec(None, &["p"], Some("../../x")).check().is_some_and(|w| w.contains("hash")));
        let mut env = spec(None, &["p"], None);
        env.env_vars = vec![("A=B".into(), "v".into())];
        assert!(env.check().is_some_and(|w| w.contains("\"A=B\" cannot be")));
        let mut res = spec(None, &["p"], None);
        res.resources = vec![("GPU".into(), 0)];
        assert!(res.check().is_some_and(|w| w.contains("more than 0")));
        let big = check_upload(hash, MAX_JOB_PACKAGE as u64 + 1, 0, 10);
        assert!(big.is_some_and(|w| w.contains("over the 64 MiB")));
        assert!(check_upload(hash, 100, 95, 10).is_some_and(|w| w.contains("past its total")));
        assert_eq!(check_upload(hash, 100, 90, 10), None);
    }
}
