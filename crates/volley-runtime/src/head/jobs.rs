//! Submitted jobs: driver programs the head runs for clients (`volley job submit`), under its
//! supervision.
//!
//! A job's driver is a child of the head's process in a process group of its own (so `stop`
//! reaches whatever it started), run through `python -m volley._job_driver`, which unpacks the
//! job's working directory with the runtime_env helpers (the zip is written to the packages
//! directory by [`crate::rundir`], checked against its hash) and then executes the entrypoint
//! there. It gets `VOLLEY_ADDRESS` (the head's address) and `VOLLEY_JOB_ID`; its stdout and
//! stderr go to `jobs/<id>.log` in the session directory (created exclusively, mode 0600), and
//! its row to `jobs/<id>.json` at each change of status, so the job's status and output
//! outlive the job and a head restarted in the same session lists it again.
//!
//! A submitted job and the driver session it opens when it joins the cluster are kept side by
//! side (the directory's `JobInfo`, by node) and linked when listed: the session whose driver
//! process is the job's `driver_pid` is that job's (`JobRow::driver_node`), and is not listed
//! as a job of its own (see `Head::job_rows`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Duration, Instant};

use volley_proto::{check_job_id, JobRow, JobSpec, JobStatus, MAX_JOB_LOG_CHUNK};
use volley_store::sync::Mutex;

use super::now_ms;
use crate::rundir;

/// How long a stopped job's driver has after SIGTERM before its process group gets SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Working directories arriving at once (each up to `MAX_JOB_PACKAGE`, in memory until
/// whole); one more pushes out the one idle longest if it was idle for [`UPLOAD_IDLE`].
const MAX_UPLOADS: usize = 4;

/// How long an upload may wait for its next chunk before another may take its place.
const UPLOAD_IDLE: Duration = Duration::from_secs(60);

/// What a restarted head says of the jobs that ran when the head before it died.
pub(crate) const HEAD_DIED: &str = "the head stopped while the job ran: it died (killed or \
     crashed) before it could record how the job ended, and its driver was ended with it";

/// The head's jobs. Inert (every request refused) until [`Jobs::enable`]: only a cluster's head
/// runs jobs, not a driver's own node.
#[derive(Default)]
pub struct Jobs {
    /// The Python that runs `volley._job_driver` (the one the node's workers use).
    python: OnceLock<String>,
    cfg: OnceLock<Config>,
    table: Mutex<Table>,
    /// Working directories arriving in chunks, by hash.
    uploads: Mutex<HashMap<String, Upload>>,
    /// The thread that forks every driver (see [`spawner`]).
    spawner: OnceLock<Mutex<mpsc::Sender<SpawnOrder>>>,
    /// Where a running job's entrypoint resources are held: the head's node's scheduler (see
    /// [`Jobs::set_holder`]).
    holder: OnceLock<Arc<dyn EntrypointHolder>>,
    /// Every change of a job's row since the history writer last took them (bounded: see
    /// [`Jobs::take_changes`]), so that a job that starts and ends between two of its rounds
    /// is still written as it went.
    changes: Mutex<VecDeque<JobRow>>,
}

/// The most job changes kept for the history writer (the oldest go first).
const MAX_CHANGES: usize = 10_000;

/// Holds a job's entrypoint resources on the head's node while its driver runs, taken from
/// the pool tasks use (so tasks wait while a job holds the CPU), as Ray reserves them.
pub trait EntrypointHolder: Send + Sync {
    /// Takes `cpu_milli` and `res` for `key` ("job 'id'"), or says what is short and who holds
    /// it. Gives the indices of the GPUs picked for a `GPU` amount, which the driver is shown.
    fn hold(&self, key: &str, cpu_milli: u32, res: &[(String, u64)]) -> Result<Vec<u32>, String>;
    /// Gives back what `key` holds (nothing if nothing), starting the tasks that waited.
    fn release(&self, key: &str);
}

/// The head's node's scheduler as the holder (weakly: the node owns its head).
pub(crate) struct NodeHolder(pub(crate) std::sync::Weak<crate::shared::Shared>);

impl EntrypointHolder for NodeHolder {
    fn hold(&self, key: &str, cpu_milli: u32, res: &[(String, u64)]) -> Result<Vec<u32>, String> {
        match self.0.upgrade() {
            Some(shared) => shared.with(|st, _| st.sched.hold_resources(key, cpu_milli, res)),
            None => Err("the head's node is stopping".into()),
        }
    }

    fn release(&self, key: &str) {
        if let Some(shared) = self.0.upgrade() {
            shared.with(|st, out| st.sched.release_resources(key, out));
        }
    }
}

/// How often jobs waiting for resources that tasks (not other jobs) hold look again.
const PENDING_RETRY: Duration = Duration::from_millis(200);

/// The key a job's held resources go by, as the scheduler's wait notices name the holder.
fn hold_key(id: &str) -> String {
    format!("job '{id}'")
}

/// A driver's command, and where to send the child (or why there is none).
type SpawnOrder = (Command, mpsc::SyncSender<io::Result<Child>>);

struct Upload {
    data: Vec<u8>,
    total: u64,
    touched: Instant,
}

struct Config {
    /// The head's address, given to drivers as `VOLLEY_ADDRESS`.
    address: String,
    python: String,
    /// `<session dir>/jobs`.
    dir: PathBuf,
}

#[derive(Default)]
struct Table {
    jobs: HashMap<String, Job>,
    /// The head's node's resources in all, in thousandths (`CPU`, `GPU`, custom), as of the
    /// last submission: what the entrypoints of running jobs share.
    capacity: BTreeMap<String, u64>,
    /// Jobs waiting for resources, oldest first.
    pending: Vec<String>,
    /// Whether a thread retries the pending jobs (see [`PENDING_RETRY`]).
    retrying: bool,
}

struct Job {
    row: JobRow,
    /// Whether `stop` was asked (the exit then reads STOPPED whatever its status).
    stopping: bool,
    /// Its submission, kept while it waits PENDING (then it holds what it asks for).
    spec: Option<JobSpec>,
}

impl Job {
    fn new(row: JobRow) -> Job {
        Job { row, stopping: false, spec: None }
    }
}

impl Jobs {
    /// The Python to run drivers with (the node's workers' one; set when the node starts).
    pub fn set_python(&self, python: &str) {
        let _ = self.python.set(python.to_string());
    }

    /// Where running jobs' entrypoint resources are held (the head's node's scheduler; set
    /// when the node joins a cluster as its head). Without one they are counted against the
    /// other jobs only.
    pub fn set_holder(&self, holder: Arc<dyn EntrypointHolder>) {
        let _ = self.holder.set(holder);
    }

    /// Makes this node run jobs (it is a cluster's head listening on `address`), and loads the
    /// jobs an earlier head of this session recorded. An error if the session directory is not
    /// usable (the head then refuses job requests, saying why).
    pub fn enable(&self, address: &str) -> io::Result<()> {
        let dir = rundir::runtime_dir().join("jobs");
        rundir::ensure_private_dir(&rundir::runtime_dir())?;
        rundir::ensure_private_dir(&dir)?;
        let mut loaded = Vec::new();
        for entry in fs::read_dir(&dir)?.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let Ok(text) = read_private(&path) else { continue };
            let Ok(mut row) = serde_json::from_slice::<JobRow>(&text) else { continue };
            if check_job_id(&row.job_id).is_some() {
                continue; // its id names files: only what a head could have written
            }
            if !row.status.is_terminal() {
                // Its supervisor was the head that stopped; nobody can tell how it ended.
                row.message = Some(if row.status == JobStatus::Pending {
                    "the head stopped before the job started: it died (killed or crashed)".into()
                } else {
                    HEAD_DIED.into()
                });
                row.status = JobStatus::Failed;
                row.end_ms = Some(row.end_ms.unwrap_or_else(now_ms));
                let _ = write_row(&dir, &row);
            }
            loaded.push(row);
        }
        let python = self.python.get().cloned().unwrap_or_else(|| "python3".to_string());
        if self.spawner.get().is_none() {
            let _ = self.spawner.set(Mutex::new(spawner()?));
        }
        let cfg = Config { address: address.to_string(), python, dir };
        if self.cfg.set(cfg).is_ok() {
            let mut t = self.table.lock();
            for row in loaded {
                t.jobs.entry(row.job_id.clone()).or_insert(Job::new(row));
            }
        }
        Ok(())
    }

    fn config(&self) -> Result<&Config, String> {
        self.cfg.get().ok_or_else(|| {
            "this node does not run jobs: submit them to a cluster's head (`volley start \
             --head`)"
                .to_string()
        })
    }

    /// Every job, oldest first.
    pub fn rows(&self) -> Vec<JobRow> {
        let mut v: Vec<JobRow> = self.table.lock().jobs.values().map(|j| j.row.clone()).collect();
        v.sort_by(|a, b| (a.start_ms, &a.job_id).cmp(&(b.start_ms, &b.job_id)));
        v
    }

    /// The row of job `id`.
    pub fn status(&self, id: &str) -> Result<JobRow, String> {
        self.config()?;
        self.table.lock().jobs.get(id).map(|j| j.row.clone()).ok_or_else(|| unknown(id))
    }

    /// Starts a job's driver: its row (RUNNING, or FAILED when it could not start; PENDING,
    /// saying what it waits for, when the jobs running on the head's node hold the resources
    /// it asks for). `capacity` is the head's node's resources in all, in thousandths.
    pub fn submit(
        self: &Arc<Self>,
        spec: JobSpec,
        capacity: Vec<(String, u64)>,
    ) -> Result<JobRow, String> {
        self.config()?;
        if let Some(why) = spec.check() {
            return Err(why);
        }
        let id = match &spec.submission_id {
            Some(id) => id.clone(),
            None => new_id(),
        };
        if let Some(why) = check_job_id(&id) {
            return Err(why);
        }
        if let Some(hash) = &spec.working_dir {
            if fs::symlink_metadata(package_path(hash)).is_err() {
                return Err(format!(
                    "the head has no working directory {hash}: upload it first (JobUpload; \
                     volley.job.submit does)"
                ));
            }
        }
        let capacity: BTreeMap<String, u64> = capacity.into_iter().collect();
        for (name, want) in &spec.resources {
            let all = capacity.get(name).copied().unwrap_or(0);
            if *want > all {
                return Err(format!(
                    "the job's entrypoint asks for {} {name}, and the head's node, where it runs, \
                     has {} in all",
                    milli(*want),
                    milli(all)
                ));
            }
        }
        let row = JobRow {
            job_id: id.clone(),
            status: JobStatus::Pending,
            entrypoint: Some(spec.entrypoint.clone()),
            driver_pid: None,
            start_ms: now_ms(),
            end_ms: None,
            exit_code: None,
            message: None,
            driver_node: None,
        };
        {
            let mut t = self.table.lock();
            if t.jobs.contains_key(&id) {
                return Err(format!(
                    "a job with id {id:?} exists already; choose another --submission-id"
                ));
            }
            t.capacity = capacity;
            t.jobs.insert(id.clone(), Job { row, stopping: false, spec: Some(spec) });
            t.pending.push(id.clone());
        }
        self.start_pending();
        self.status(&id)
    }

    /// Starts the pending jobs whose resources are free now (oldest first; one that must wait
    /// does not hold back a smaller one behind it), and says of the others what they wait for.
    fn start_pending(self: &Arc<Self>) {
        let Ok(cfg) = self.config() else { return };
        let mut t = self.table.lock();
        let mut held: BTreeMap<String, u64> = BTreeMap::new();
        for j in t.jobs.values().filter(|j| j.row.status == JobStatus::Running) {
            for (name, n) in j.spec.as_ref().map(|s| s.resources.as_slice()).unwrap_or(&[]) {
                *held.entry(name.clone()).or_default() += n;
            }
        }
        let waiting = std::mem::take(&mut t.pending);
        let mut still = Vec::new();
        let mut changed = Vec::new();
        for id in waiting {
            let Some(spec) = t.jobs.get(&id).and_then(|j| j.spec.clone()) else { continue };
            let short = spec.resources.iter().find(|(name, want)| {
                let all = t.capacity.get(name).copied().unwrap_or(0);
                held.get(name).copied().unwrap_or(0) + want > all
            });
            if let Some((name, want)) = short {
                let all = t.capacity.get(name).copied().unwrap_or(0);
                let free = all.saturating_sub(held.get(name).copied().unwrap_or(0));
                let why = format!(
                    "waiting for {} {name} on the head's node: {} of {} free (the other jobs' \
                     entrypoints hold the rest)",
                    milli(*want),
                    milli(free),
                    milli(all)
                );
                if let Some(j) = t.jobs.get_mut(&id) {
                    if j.row.message.as_deref() != Some(why.as_str()) {
                        j.row.message = Some(why);
                        changed.push(j.row.clone());
                    }
                }
                still.push(id);
                continue;
            }
            let mut gpus = Vec::new();
            if let Some(holder) = self.holder.get() {
                let cpu = spec.resources.iter().filter(|(n, _)| n == "CPU").map(|(_, a)| *a);
                let cpu = u32::try_from(cpu.sum::<u64>()).unwrap_or(u32::MAX);
                let other: Vec<(String, u64)> =
                    spec.resources.iter().filter(|(n, _)| n != "CPU").cloned().collect();
                let held = holder.hold(&hold_key(&id), cpu, &other);
                if let Ok(picked) = &held {
                    gpus.clone_from(picked);
                }
                if let Err(short) = held {
                    let want: Vec<String> =
                        spec.resources.iter().map(|(n, a)| format!("{} {n}", milli(*a))).collect();
                    let why =
                        format!("waiting for {} on the head's node: {short}", want.join(", "));
                    if let Some(j) = t.jobs.get_mut(&id) {
                        if j.row.message.as_deref() != Some(why.as_str()) {
                            j.row.message = Some(why);
                            changed.push(j.row.clone());
                        }
                    }
                    still.push(id);
                    continue;
                }
            }
            for (name, n) in &spec.resources {
                *held.entry(name.clone()).or_default() += n;
            }
            let mut row = match t.jobs.get_mut(&id) {
                Some(j) => {
                    j.row.message = None;
                    j.row.clone()
                }
                None => continue,
            };
            match self.spawn(cfg, &id, &spec, &gpus) {
                Ok(child) => {
                    row.status = JobStatus::Running;
                    row.driver_pid = Some(child.id());
                    let jobs = self.clone();
                    let id2 = id.clone();
                    let spawned = std::thread::Builder::new()
                        .name("volley-job".into())
                        .spawn(move || jobs.supervise(&id2, child));
                    if let Err(e) = spawned {
                        crate::diag::event!(Warn, "volley: no thread to supervise job {id}: {e}");
                    }
                }
                Err(why) => {
                    self.release(&id);
                    row.status = JobStatus::Failed;
                    row.end_ms = Some(now_ms());
                    row.message = Some(why);
                }
            }
            if let Some(j) = t.jobs.get_mut(&id) {
                // (Its supervisor waits for this lock to record its end.)
                j.row = row;
                changed.push(j.row.clone());
            }
        }
        t.pending.extend(still);
        // Tasks free resources without telling the jobs: look again while some wait.
        let retry = !t.pending.is_empty() && !t.retrying && self.holder.get().is_some();
        if retry {
            t.retrying = true;
        }
        drop(t);
        for row in changed {
            self.persist(&row);
        }
        if retry {
            let jobs = self.clone();
            let spawned =
                std::thread::Builder::new().name("volley-job-wait".into()).spawn(move || loop {
                    std::thread::sleep(PENDING_RETRY);
                    {
                        let mut t = jobs.table.lock();
                        if t.pending.is_empty() {
                            t.retrying = false;
                            return;
                        }
                    }
                    jobs.start_pending();
                });
            if let Err(e) = spawned {
                self.table.lock().retrying = false;
                crate::diag::event!(Warn, "volley: no thread to retry the pending jobs: {e}");
            }
        }
    }

    /// Gives back what job `id` held on the head's node.
    fn release(&self, id: &str) {
        if let Some(holder) = self.holder.get() {
            holder.release(&hold_key(id));
        }
    }

    /// Starts the driver's process (see the module documentation). `gpus`: the head's node's
    /// GPUs (indices) held for it, given as `VOLLEY_JOB_GPUS`; `volley._job_driver` turns them
    /// into the entrypoint's `CUDA_VISIBLE_DEVICES` (the node's index `i` is the `i`-th device
    /// of the head's own `CUDA_VISIBLE_DEVICES`, which Python reads as the workers do).
    fn spawn(&self, cfg: &Config, id: &str, spec: &JobSpec, gpus: &[u32]) -> Result<Child, String> {
        let log_path = cfg.dir.join(format!("{id}.log"));
        let log = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&log_path)
            .map_err(|e| format!("could not create the job's log {}: {e}", log_path.display()))?;
        let err = log.try_clone().map_err(|e| format!("could not open the job's log: {e}"))?;
        let mut cmd = Command::new(&cfg.python);
        cmd.arg("-m").arg("volley._job_driver");
        if let Some(hash) = &spec.working_dir {
            cmd.arg("--working-dir").arg(hash);
        }
        if !spec.pip.is_empty() {
            let list = serde_json::to_string(&spec.pip).map_err(|e| e.to_string())?;
            cmd.arg("--pip").arg(list).arg("--venvs").arg(cfg.dir.join("venvs"));
        }
        cmd.arg("--").args(&spec.argv);
        cmd.current_dir(&cfg.dir)
            .env("VOLLEY_ADDRESS", &cfg.address)
            .env("VOLLEY_JOB_ID", id)
            .envs(spec.env_vars.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .process_group(0);
        // After the job's env vars: what was held decides, not a variable of the same name.
        cmd.env_remove("VOLLEY_JOB_GPUS");
        if !gpus.is_empty() {
            let ids: Vec<String> = gpus.iter().map(u32::to_string).collect();
            cmd.env("VOLLEY_JOB_GPUS", ids.join(","));
        }
        let head = std::process::id();
        // SAFETY: runs in the forked child before exec and calls only async-signal-safe
        // functions (prctl, getppid), allocating nothing.
        unsafe {
            cmd.pre_exec(move || {
                // The driver dies with the head (the spawner thread, which lives as long as the
                // head's process: the signal follows the thread that forked); `_job_driver`'s
                // watchdog then ends the rest of its process group.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                if libc::getppid() as u32 != head {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        let spawner = self.spawner.get().ok_or("this head cannot start jobs")?;
        let (tx, rx) = mpsc::sync_channel(1);
        let sent = spawner.lock().send((cmd, tx));
        let child = match sent {
            Ok(()) => rx.recv().map_err(|_| io::Error::other("the spawner thread is gone")),
            Err(_) => Err(io::Error::other("the spawner thread is gone")),
        };
        let child = child.and_then(|r| r);
        child.map_err(|e| format!("could not start `{}`: {e}", cfg.python))
    }

    /// Takes a chunk of a job's working directory (see `HeadRequest::JobUpload`): the bytes of
    /// it the head has now (all of them once it is checked against its hash and stored), so a
    /// client that sent a chunk twice, or lost one, goes on from there.
    pub fn upload(&self, hash: &str, total: u64, offset: u64, data: &[u8]) -> Result<u64, String> {
        self.config()?;
        if let Some(why) = volley_proto::check_upload(hash, total, offset, data.len()) {
            return Err(why);
        }
        if fs::symlink_metadata(package_path(hash)).is_ok() {
            return Ok(total);
        }
        let mut ups = self.uploads.lock();
        if !ups.contains_key(hash) && ups.len() >= MAX_UPLOADS {
            let idle = ups
                .iter()
                .filter(|(_, u)| u.touched.elapsed() >= UPLOAD_IDLE)
                .min_by_key(|(_, u)| u.touched)
                .map(|(h, _)| h.clone());
            match idle {
                Some(h) => {
                    ups.remove(&h);
                }
                None => {
                    return Err(format!(
                        "the head takes {MAX_UPLOADS} working directories at once; try again \
                         when one of the others is done"
                    ))
                }
            }
        }
        let up = ups.entry(hash.to_string()).or_insert_with(|| Upload {
            data: Vec::new(),
            total,
            touched: Instant::now(),
        });
        if up.total != total {
            *up = Upload { data: Vec::new(), total, touched: Instant::now() };
        }
        up.touched = Instant::now();
        if offset != up.data.len() as u64 {
            return Ok(up.data.len() as u64);
        }
        up.data.extend_from_slice(data);
        if (up.data.len() as u64) < total {
            return Ok(up.data.len() as u64);
        }
        let Some(whole) = ups.remove(hash) else { return Ok(0) };
        drop(ups);
        if !rundir::package_matches(hash, &whole.data) {
            return Err(
                "the uploaded working directory does not match its hash; submit again".into()
            );
        }
        rundir::write_package(hash, &whole.data)
            .map_err(|e| format!("could not keep the job's working directory: {e}"))?;
        Ok(total)
    }

    /// Waits for a job's driver to exit, records how it ended, and starts the jobs that wait
    /// for the resources it held.
    fn supervise(self: &Arc<Self>, id: &str, child: Child) {
        self.record_exit(id, child);
        self.release(id);
        self.start_pending();
    }

    fn record_exit(&self, id: &str, mut child: Child) {
        let status = child.wait();
        let mut t = self.table.lock();
        let Some(job) = t.jobs.get_mut(id) else { return };
        let row = &mut job.row;
        row.end_ms = Some(now_ms());
        match status {
            Ok(s) => {
                let code = s.code().or_else(|| s.signal().map(|n| -n));
                row.exit_code = code;
                if job.stopping {
                    row.status = JobStatus::Stopped;
                    if row.message.is_none() {
                        row.message = Some("stopped on request".into());
                    }
                } else if s.success() {
                    row.status = JobStatus::Succeeded;
                } else {
                    row.status = JobStatus::Failed;
                    let how = match (s.code(), s.signal()) {
                        (Some(c), _) => format!("the driver exited with status {c}"),
                        (None, Some(n)) => format!("the driver was killed by signal {n}"),
                        _ => "the driver failed".to_string(),
                    };
                    let last = self.cfg.get().and_then(|c| last_line(&c.dir, id));
                    row.message = Some(match last {
                        Some(line) => format!("{how}: {line}"),
                        None => how,
                    });
                }
            }
            Err(e) => {
                row.status = JobStatus::Failed;
                row.message = Some(format!("could not wait for the driver: {e}"));
            }
        }
        let row = row.clone();
        drop(t);
        self.persist(&row);
    }

    /// Stops job `id`: SIGTERM to its driver's process group now, SIGKILL after
    /// [`STOP_GRACE`] if it still runs. Its row as it is now (a job already over is left as it
    /// ended).
    pub fn stop(self: &Arc<Self>, id: &str) -> Result<JobRow, String> {
        self.config()?;
        let pid = {
            let mut t = self.table.lock();
            let job = t.jobs.get_mut(id).ok_or_else(|| unknown(id))?;
            if job.row.status.is_terminal() {
                return Ok(job.row.clone());
            }
            job.stopping = true;
            if job.row.status == JobStatus::Pending {
                // It never started: nothing to signal.
                job.row.status = JobStatus::Stopped;
                job.row.end_ms = Some(now_ms());
                job.row.message = Some("stopped on request before it started".into());
                let row = job.row.clone();
                t.pending.retain(|p| p != id);
                drop(t);
                self.persist(&row);
                return Ok(row);
            }
            job.row.driver_pid
        };
        if let Some(pid) = pid {
            // SAFETY: signals a process group this head made for the job (its leader is our
            // child, not yet reaped while the job runs, so the id is not reused).
            unsafe { libc::killpg(pid as libc::pid_t, libc::SIGTERM) };
            let jobs = self.clone();
            let id2 = id.to_string();
            let _ = std::thread::Builder::new().name("volley-job-stop".into()).spawn(move || {
                let deadline = Instant::now() + STOP_GRACE;
                while Instant::now() < deadline {
                    if jobs.is_over(&id2) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                // Checked under the lock: a job whose driver was reaped meanwhile is over, and
                // its group id may be another's now.
                let t = jobs.table.lock();
                if t.jobs.get(&id2).is_some_and(|j| !j.row.status.is_terminal()) {
                    // SAFETY: as above; the leader is not reaped (the job is not over).
                    unsafe { libc::killpg(pid as libc::pid_t, libc::SIGKILL) };
                }
            });
        }
        self.status(id)
    }

    /// The head is stopping: every running job is stopped (SIGTERM to its process group,
    /// SIGKILL after `grace`), so no driver outlives the head that supervises it. Waits until
    /// their supervisors recorded them (STOPPED, saying the head stopped), `grace` and a
    /// second at most.
    pub fn shutdown(&self, grace: Duration) {
        let running: Vec<(String, u32)> = {
            let mut t = self.table.lock();
            let pending = std::mem::take(&mut t.pending);
            for id in pending {
                if let Some(j) = t.jobs.get_mut(&id) {
                    j.row.status = JobStatus::Stopped;
                    j.row.end_ms = Some(now_ms());
                    j.row.message = Some("stopped: the head shut down before it started".into());
                    let row = j.row.clone();
                    self.persist(&row);
                }
            }
            t.jobs
                .values_mut()
                .filter(|j| !j.row.status.is_terminal())
                .filter_map(|j| {
                    j.stopping = true;
                    j.row.message = Some("stopped: the head shut down".into());
                    Some((j.row.job_id.clone(), j.row.driver_pid?))
                })
                .collect()
        };
        if running.is_empty() {
            return;
        }
        for (_, pid) in &running {
            // SAFETY: as in `stop` (our unreaped child leads the group).
            unsafe { libc::killpg(*pid as libc::pid_t, libc::SIGTERM) };
        }
        let deadline = Instant::now() + grace;
        let mut killed = false;
        while running.iter().any(|(id, _)| !self.is_over(id)) {
            if Instant::now() >= deadline && !killed {
                let t = self.table.lock();
                for (id, pid) in &running {
                    if t.jobs.get(id).is_some_and(|j| !j.row.status.is_terminal()) {
                        // SAFETY: as above, checked under the lock.
                        unsafe { libc::killpg(*pid as libc::pid_t, libc::SIGKILL) };
                    }
                }
                killed = true;
            }
            if Instant::now() >= deadline + Duration::from_secs(1) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn is_over(&self, id: &str) -> bool {
        self.table.lock().jobs.get(id).is_none_or(|j| j.row.status.is_terminal())
    }

    /// Job `id`'s output from byte `offset`: (a chunk, the next offset, whether the job is over
    /// and this is the end of its output).
    pub fn logs(&self, id: &str, offset: u64) -> Result<(Vec<u8>, u64, bool), String> {
        let cfg = self.config()?;
        let over = {
            let t = self.table.lock();
            t.jobs.get(id).ok_or_else(|| unknown(id))?.row.status.is_terminal()
        };
        let path = cfg.dir.join(format!("{id}.log"));
        let mut f = match open_private(&path) {
            Ok(f) => f,
            // A job that failed before its log was made has no output.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), offset, over)),
            Err(e) => return Err(format!("could not read the job's log {}: {e}", path.display())),
        };
        let len = f.metadata().map_err(|e| e.to_string())?.len();
        let start = offset.min(len);
        f.seek(SeekFrom::Start(start)).map_err(|e| e.to_string())?;
        let mut data = Vec::new();
        f.take(MAX_JOB_LOG_CHUNK as u64).read_to_end(&mut data).map_err(|e| e.to_string())?;
        let next = start + data.len() as u64;
        Ok((data, next, over && next >= len))
    }

    /// Links a submitted job to the driver session its driver opened (see the module
    /// documentation): the job with that driver process, if any.
    pub fn link_session(&self, pid: u32, node: u32, started_ms: u64) -> Option<String> {
        let mut t = self.table.lock();
        let job = t.jobs.values_mut().find(|j| {
            j.row.driver_pid == Some(pid) && j.row.start_ms <= started_ms && j.row.end_ms.is_none()
        })?;
        job.row.driver_node = Some(node);
        Some(job.row.job_id.clone())
    }

    /// The changes of jobs' rows since the last call, oldest first (see `changes`).
    pub fn take_changes(&self) -> Vec<JobRow> {
        self.changes.lock().drain(..).collect()
    }

    fn persist(&self, row: &JobRow) {
        {
            let mut changes = self.changes.lock();
            if changes.len() >= MAX_CHANGES {
                changes.pop_front();
            }
            changes.push_back(row.clone());
        }
        if let Some(cfg) = self.cfg.get() {
            if let Err(e) = write_row(&cfg.dir, row) {
                crate::diag::event!(Warn, "volley: could not record job {}: {e}", row.job_id);
            }
        }
    }
}

/// `<packages dir>/<hash>.zip`, where an uploaded working directory is kept.
fn package_path(hash: &str) -> PathBuf {
    rundir::packages_dir().join(format!("{hash}.zip"))
}

/// Thousandths as a number to show: `1500` is `1.5`.
fn milli(n: u64) -> String {
    if n.is_multiple_of(1000) {
        (n / 1000).to_string()
    } else {
        format!("{}", n as f64 / 1000.0)
    }
}

/// Starts the thread that forks every job's driver. A driver's parent-death signal follows the
/// *thread* that forked it, not the process: drivers forked on a request's thread would be
/// killed when that thread ends, so they are forked here, on a thread that lives as long as
/// the head.
fn spawner() -> io::Result<mpsc::Sender<SpawnOrder>> {
    let (tx, rx) = mpsc::channel::<SpawnOrder>();
    std::thread::Builder::new().name("volley-job-spawn".into()).spawn(move || {
        for (mut cmd, reply) in rx {
            let _ = reply.send(cmd.spawn());
        }
    })?;
    Ok(tx)
}

fn unknown(id: &str) -> String {
    format!("no job {id:?} on this cluster (`volley job list` lists them)")
}

/// A fresh job id: `job-` and 12 random hex digits.
fn new_id() -> String {
    let mut b = [0u8; 6];
    if getrandom::fill(&mut b).is_err() {
        b = now_ms().to_le_bytes()[..6].try_into().unwrap_or_default();
    }
    format!("job-{}", b.iter().map(|x| format!("{x:02x}")).collect::<String>())
}

fn open_private(path: &std::path::Path) -> io::Result<File> {
    OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC).open(path)
}

fn read_private(path: &std::path::Path) -> io::Result<Vec<u8>> {
    let mut data = Vec::new();
    open_private(path)?.take(1 << 20).read_to_end(&mut data)?;
    Ok(data)
}

/// The last non-empty line of job `id`'s output (at most 300 characters), for its message.
fn last_line(dir: &std::path::Path, id: &str) -> Option<String> {
    let mut f = open_private(&dir.join(format!("{id}.log"))).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(4096))).ok()?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).ok()?;
    let text = String::from_utf8_lossy(&tail);
    let line = text.lines().rev().map(str::trim).find(|l| !l.is_empty())?;
    Some(line.chars().take(300).collect())
}

/// Writes `<dir>/<id>.json` under a fresh exclusive name, then renames it into place.
fn write_row(dir: &std::path::Path, row: &JobRow) -> io::Result<()> {
    let text = serde_json::to_vec_pretty(row).map_err(io::Error::other)?;
    crate::rundir::write_new(dir, &format!("{}.json", row.job_id), &text)
}

#[cfg(test)]
mod tests {
    use volley_proto::{HeadAnswer, HeadRequest, NodeSnapshot};

    use super::*;
    use crate::head::{Head, MemoryStore};

    fn driver(pid: u32) -> NodeSnapshot {
        NodeSnapshot { pid, ..crate::head::tests::info("", true) }
    }

    #[test]
    fn a_node_that_is_no_head_refuses_jobs_saying_where_to_send_them() {
        let h = Head::new(Box::new(MemoryStore::default()));
        for req in [
            HeadRequest::JobStatus { id: "x".into() },
            HeadRequest::JobStop { id: "x".into() },
            HeadRequest::JobLogs { id: "x".into(), offset: 0 },
        ] {
            match h.serve(req) {
                HeadAnswer::JobRefused(why) => {
                    assert!(why.contains("volley start --head"), "{why}")
                }
                other => panic!("{other:?}"),
            }
        }
        let spec = JobSpec {
            submission_id: Some("../x".into()),
            argv: vec!["python".into()],
            entrypoint: "python".into(),
            working_dir: None,
            env_vars: Vec::new(),
            resources: Vec::new(),
            pip: Vec::new(),
        };
        match h.serve(HeadRequest::JobSubmit(spec)) {
            HeadAnswer::JobRefused(why) => assert!(why.contains("is not valid"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    /// A head configured to keep its job records in a fresh directory of its own (it starts
    /// no drivers).
    fn configured(name: &str) -> Arc<Jobs> {
        let jobs = Arc::new(Jobs::default());
        let dir = std::env::temp_dir().join(format!("volley-jobs-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        rundir::ensure_private_dir(&dir).expect("a private test directory");
        let cfg = Config { address: "127.0.0.1:1".into(), python: "python3".into(), dir };
        assert!(jobs.cfg.set(cfg).is_ok());
        jobs
    }

    #[test]
    fn uploads_go_on_from_what_the_head_has_and_only_a_few_arrive_at_once() {
        let jobs = configured("uploads");
        let hash = |i: usize| format!("{i:032x}");
        // A chunk sent twice, or one from the wrong offset: the answer says where to go on.
        assert_eq!(jobs.upload(&hash(0), 30, 0, &[1; 10]), Ok(10));
        assert_eq!(jobs.upload(&hash(0), 30, 0, &[1; 10]), Ok(10));
        assert_eq!(jobs.upload(&hash(0), 30, 20, &[1; 10]), Ok(10));
        assert_eq!(jobs.upload(&hash(0), 30, 10, &[1; 10]), Ok(20));
        for i in 1..MAX_UPLOADS {
            assert_eq!(jobs.upload(&hash(i), 30, 0, &[1; 10]), Ok(10));
        }
        let busy = jobs.upload(&hash(99), 30, 0, &[1; 10]);
        assert!(
            busy.as_ref().is_err_and(|w| w.contains("4 working directories at once")),
            "{busy:?}"
        );
        // One idle for long gives way; then the other goes on from nothing.
        jobs.uploads.lock().get_mut(&hash(1)).expect("upload").touched -= UPLOAD_IDLE;
        assert_eq!(jobs.upload(&hash(99), 30, 0, &[1; 10]), Ok(10));
        assert!(!jobs.uploads.lock().contains_key(&hash(1)));
        // The whole not matching its hash: refused, and forgotten.
        let bad = jobs.upload(&hash(0), 30, 20, &[1; 10]);
        assert!(bad.as_ref().is_err_and(|w| w.contains("does not match its hash")), "{bad:?}");
        assert!(!jobs.uploads.lock().contains_key(&hash(0)));
    }

    #[test]
    fn a_pending_job_is_stopped_with_the_head_and_its_resources_say_what_it_waits_for() {
        let jobs = configured("pending");
        let mut t = jobs.table.lock();
        t.capacity = [("CPU".to_string(), 2000)].into_iter().collect();
        let spec = |cpus: u64| JobSpec {
            submission_id: None,
            argv: vec!["python".into()],
            entrypoint: "python".into(),
            working_dir: None,
            env_vars: Vec::new(),
            resources: vec![("CPU".into(), cpus)],
            pip: Vec::new(),
        };
        let row = |id: &str, status| JobRow {
            job_id: id.into(),
            status,
            entrypoint: Some("python".into()),
            driver_pid: None,
            start_ms: 1,
            end_ms: None,
            exit_code: None,
            message: None,
            driver_node: None,
        };
        let running = Job { spec: Some(spec(1500)), ..Job::new(row("a", JobStatus::Running)) };
        t.jobs.insert("a".into(), running);
        let waiting = Job { spec: Some(spec(1000)), ..Job::new(row("b", JobStatus::Pending)) };
        t.jobs.insert("b".into(), waiting);
        t.pending.push("b".into());
        drop(t);
        jobs.start_pending();
        let b = jobs.status("b").expect("b");
        assert_eq!(b.status, JobStatus::Pending);
        assert_eq!(
            b.message.as_deref(),
            Some(
                "waiting for 1 CPU on the head's node: 0.5 of 2 free (the other jobs' \
                 entrypoints hold the rest)"
            )
        );
        jobs.table.lock().jobs.remove("a");
        jobs.shutdown(Duration::from_millis(10));
        let b = jobs.status("b").expect("b");
        assert_eq!(b.status, JobStatus::Stopped);
        assert!(b.message.is_some_and(|m| m.contains("before it started")));
        let kept = fs::read(jobs.config().expect("cfg").dir.join("b.json")).expect("its record");
        let kept: JobRow = serde_json::from_slice(&kept).expect("a row");
        assert_eq!(kept.status, JobStatus::Stopped);
        let _ = fs::remove_dir_all(&jobs.config().expect("cfg").dir);
    }

    #[test]
    fn a_submitted_jobs_driver_session_is_listed_as_that_job_not_as_another() {
        let h = Head::new(Box::new(MemoryStore::default()));
        let row = JobRow {
            job_id: "mine".into(),
            status: JobStatus::Running,
            entrypoint: Some("python s.py".into()),
            driver_pid: Some(5151),
            start_ms: 1,
            end_ms: None,
            exit_code: None,
            message: None,
            driver_node: None,
        };
        h.job_table().table.lock().jobs.insert("mine".into(), Job::new(row));
        let linked = h.join(driver(5151));
        let other = h.join(driver(6262));
        let rows = h.job_rows();
        assert_eq!(rows.len(), 2, "{rows:?}");
        let mine = rows.iter().find(|r| r.job_id == "mine").expect("the submitted job");
        assert_eq!(mine.driver_node, Some(linked.0));
        let plain = rows.iter().find(|r| r.job_id != "mine").expect("the plain driver");
        assert_eq!(plain.job_id, other.0.to_string());
        assert_eq!((plain.entrypoint.as_deref(), plain.status), (None, JobStatus::Running));
        h.leave(other);
        let rows = h.job_rows();
        let plain = rows.iter().find(|r| r.job_id != "mine").expect("still listed");
        assert_eq!(plain.status, JobStatus::Succeeded);
        assert!(plain.end_ms.is_some());
    }
}
