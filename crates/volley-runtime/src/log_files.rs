//! Log files kept in the session directory's `logs/`: a file per worker process (what it wrote
//! to stdout and stderr, a timestamp and a level on each line), bounded in size, and the reading
//! side that `volley logs` and the dashboard use ([`list_logs`], [`read_log`]).
//!
//! The directory is the one the node's diagnostics use (`<session dir>/logs`, private to this
//! user: checked, never followed through a link); files are created exclusively with mode 0600.
//! A worker's file is `worker-<node pid>-<worker pid>.log`; when it passes [`max_bytes`] it is
//! renamed to `....log.1` (replacing the previous one) and a new one is started, so a worker keeps
//! at most twice that. At most [`MAX_WORKER_FILES`] worker files, of [`max_total_bytes`] together,
//! are kept: the oldest go first when a new one starts.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use volley_store::sync::Mutex;

use crate::RuntimeError;

/// Where worker logs go (`<session dir>/logs`); `None`: none are kept.
static DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

/// In a child just forked: frees [`DIR`] if a parent's thread held it at the fork (the
/// child keeps the directory: its workers' logs go to the same place).
pub(crate) fn after_fork_in_child() {
    // SAFETY: only the forking thread exists in the child, and it holds no guard of it.
    unsafe { DIR.reset_after_fork() };
}

/// Worker log files kept in the directory at most (older ones are removed as new ones start).
pub const MAX_WORKER_FILES: usize = 1000;

/// The size at which a worker's log is rotated: `VOLLEY_LOG_MAX_BYTES`, default 16 MiB.
pub fn max_bytes() -> u64 {
    std::env::var("VOLLEY_LOG_MAX_BYTES")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&n| n >= 1024)
        .unwrap_or(16 << 20)
}

/// Keeps worker logs in `dir` (the binding sets it when volley starts), or none (`None`).
pub fn set_log_dir(dir: Option<PathBuf>) {
    *DIR.lock() = dir;
}

pub(crate) fn log_dir() -> Option<PathBuf> {
    DIR.lock().clone()
}

/// `dir` opened as a directory (not through a link) after checking that it is ours and
/// private; created 0700 (with the session directory above it) if missing.
fn open_dir(dir: &Path, create: bool) -> std::io::Result<File> {
    crate::rundir::open_private_dir(dir, create)
}

/// Opens `name` in the directory `d`: a new file (exclusively, 0600) or an existing one to
/// read; never through a link.
fn open_at(d: &File, name: &str, create: bool) -> std::io::Result<File> {
    let cname = CString::new(name)?;
    let flags = if create {
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_APPEND
    } else {
        libc::O_RDONLY | libc::O_NONBLOCK
    };
    // SAFETY: a valid directory descriptor and NUL-terminated name.
    let fd = unsafe {
        libc::openat(
            d.as_raw_fd(),
            cname.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o600 as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and nothing else owns it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// A worker's log file, written by the log thread only (the lock is never contended: it lets
/// the worker's stdout and stderr share the file). The file is made at the first line the
/// worker writes: most workers write none, and leave no empty file behind.
pub(crate) struct WorkerLog {
    path: PathBuf,
    pid: u32,
    /// The directory and the file's name in it, once made; `None` before, and after a failure.
    open: Option<(File, String)>,
    failed: bool,
    file: Option<File>,
    written: u64,
    max: u64,
}

pub(crate) type SharedLog = Arc<Mutex<WorkerLog>>;

/// The log file worker `pid` will have (None when no log directory is set).
pub(crate) fn open_worker_log(pid: u32) -> Option<SharedLog> {
    let path = log_dir()?;
    Some(Arc::new(Mutex::new(WorkerLog {
        path,
        pid,
        open: None,
        failed: false,
        file: None,
        written: 0,
        max: max_bytes(),
    })))
}

/// Makes `worker-<node pid>-<pid>.log` (with `-<n>` if a process of the same pid left one) in
/// `dir`: (the directory, the file's name, the file).
fn create_worker_log(dir: &Path, pid: u32) -> std::io::Result<(File, String, File)> {
    let d = open_dir(dir, true)?;
    prune(dir, MAX_WORKER_FILES.saturating_sub(1));
    let node = std::process::id();
    for n in 0..100 {
        let name = if n == 0 {
            format!("worker-{node}-{pid}.log")
        } else {
            format!("worker-{node}-{pid}-{n}.log")
        };
        match open_at(&d, &name, true) {
            Ok(f) => return Ok((d, name, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("too many log files of this pid"))
}

/// The bytes all worker logs of the directory may hold together: `VOLLEY_LOG_MAX_TOTAL_BYTES`,
/// default 1 GiB (the oldest files go first when a new one starts).
pub fn max_total_bytes() -> u64 {
    std::env::var("VOLLEY_LOG_MAX_TOTAL_BYTES")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(1 << 30)
}

/// Removes the oldest worker logs (with their rotated parts) of `dir` until at most `keep`
/// are left and they hold at most [`max_total_bytes`] together.
fn prune(dir: &Path, keep: usize) {
    prune_to(dir, keep, max_total_bytes());
}

fn prune_to(dir: &Path, keep: usize, budget: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    // (last written, path, bytes with its rotated part)
    let mut workers: Vec<(SystemTime, PathBuf, u64)> = entries
        .filter_map(Result::ok)
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.starts_with("worker-") && n.ends_with(".log")
        })
        .filter_map(|e| {
            let md = e.metadata().ok()?;
            let p = e.path();
            let rotated = std::fs::metadata(p.with_extension("log.1")).map_or(0, |m| m.len());
            Some((md.modified().ok()?, p, md.len() + rotated))
        })
        .collect();
    workers.sort();
    let mut total: u64 = workers.iter().map(|w| w.2).sum();
    let mut count = workers.len();
    for (_, p, bytes) in workers {
        if count <= keep && total <= budget {
            break;
        }
        let _ = std::fs::remove_file(p.with_extension("log.1"));
        let _ = std::fs::remove_file(&p);
        count -= 1;
        total = total.saturating_sub(bytes);
    }
}

impl WorkerLog {
    /// Appends whole `lines` (each ending in a newline), each prefixed with the time and
    /// `level`; rotates the file first when it would pass its bound. A failed write is dropped:
    /// a full disk must not stop the output going to the driver.
    pub(crate) fn write(&mut self, level: &str, lines: &[u8]) {
        let stamp = crate::diag::timestamp(SystemTime::now());
        let mut buf = Vec::with_capacity(lines.len() + 40);
        for line in lines.split_inclusive(|&b| b == b'\n') {
            buf.extend_from_slice(b"[");
            buf.extend_from_slice(stamp.as_bytes());
            buf.extend_from_slice(b" ");
            buf.extend_from_slice(level.as_bytes());
            buf.extend_from_slice(b"] ");
            buf.extend_from_slice(line);
        }
        if self.open.is_none() && !self.failed {
            match create_worker_log(&self.path, self.pid) {
                Ok((d, name, f)) => {
                    self.open = Some((d, name));
                    self.file = Some(f);
                }
                Err(e) => {
                    // Said once; the output still goes to the driver.
                    self.failed = true;
                    let (pid, dir) = (self.pid, self.path.display());
                    crate::diag::warn!("cannot keep the log of worker {pid} in {dir}: {e}");
                }
            }
        }
        if self.written > 0 && self.written + buf.len() as u64 > self.max {
            self.rotate();
        }
        if let Some(f) = &mut self.file {
            if f.write_all(&buf).is_ok() {
                self.written += buf.len() as u64;
            }
        }
    }

    /// `name` becomes `name.1` (replacing the last one) and a new `name` is started.
    fn rotate(&mut self) {
        self.file = None;
        self.written = 0;
        let Some((dir, name)) = &self.open else { return };
        let (Ok(from), Ok(to)) = (CString::new(name.clone()), CString::new(format!("{name}.1")))
        else {
            return;
        };
        let fd = dir.as_raw_fd();
        // SAFETY: valid directory descriptor and NUL-terminated names.
        if unsafe { libc::renameat(fd, from.as_ptr(), fd, to.as_ptr()) } != 0 {
            return;
        }
        self.file = open_at(dir, name, true).ok();
    }
}

/// A log file in the logs directory, as [`list_logs`] describes it: the wire's `LogEntry`,
/// so that a node answers another's `ListLogs` with the list as it is.
pub use volley_proto::LogEntry as LogFile;

/// Whether `name` is a plain file name (no path, no dot file) ending in `.log` or `.log.1`.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name.len() < 256
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && (name.ends_with(".log") || name.ends_with(".log.1"))
}

/// What a log's name says of it: (kind, pid, node pid).
fn describe(name: &str) -> (String, Option<u32>, Option<u32>) {
    let stem = name.trim_end_matches(".1").trim_end_matches(".log");
    let nums = |rest: &str| -> Vec<u32> { rest.split('-').map_while(|p| p.parse().ok()).collect() };
    if let Some(rest) = stem.strip_prefix("worker-") {
        let n = nums(rest);
        return ("worker".into(), n.get(1).copied(), n.first().copied());
    }
    if let Some(rest) = stem.strip_prefix("driver-") {
        return ("driver".into(), nums(rest).first().copied(), None);
    }
    if let Some(rest) = stem.strip_prefix("node-") {
        // node-<date>-<time>-<pid of `volley start`>
        return ("node".into(), rest.rsplit('-').next().and_then(|p| p.parse().ok()), None);
    }
    if stem.starts_with("job-") {
        return ("job".into(), None, None);
    }
    ("other".into(), None, None)
}

/// The log files of `dir` (a missing directory has none), by name.
pub fn list_logs(dir: &Path) -> Result<Vec<LogFile>, RuntimeError> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let _checked = open_dir(dir, false)?;
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(md) = e.metadata() else { continue };
        if !valid_name(&name) || !md.file_type().is_file() {
            continue;
        }
        let (kind, pid, node_pid) = describe(&name);
        let modified_ms = md
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as u64);
        out.push(LogFile { name, kind, pid, node_pid, size: md.len(), modified_ms });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// A piece of a log file, as [`read_log`] returns it.
#[derive(Debug, Clone)]
pub struct LogChunk {
    pub data: Vec<u8>,
    /// Where `data` starts in the file.
    pub offset: u64,
    /// Where the next read goes on (`offset + data.len()`).
    pub next_offset: u64,
    /// The file's size now: less than an offset read before means it was rotated (start again
    /// at 0).
    pub size: u64,
}

/// Reads at most `max` bytes of log `name` of `dir` from `offset`, or (`None`) its last `max`
/// bytes; what the dashboard's log view and `volley logs --follow` call, again from
/// `next_offset`, to tail it. `name` must be a file [`list_logs`] lists: a plain name, read
/// without following links in the checked private directory.
pub fn read_log(
    dir: &Path,
    name: &str,
    offset: Option<u64>,
    max: usize,
) -> Result<LogChunk, RuntimeError> {
    if !valid_name(name) {
        return Err(RuntimeError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{name:?} is not the name of a volley log file (see `volley logs`)"),
        )));
    }
    let d = open_dir(dir, false)?;
    let mut f = open_at(&d, name, false)?;
    let md = f.metadata()?;
    if !md.file_type().is_file() {
        return Err(RuntimeError::Io(std::io::Error::other(format!("{name} is not a file"))));
    }
    let size = md.size();
    let start = match offset {
        Some(o) => o.min(size),
        None => size.saturating_sub(max as u64),
    };
    f.seek(SeekFrom::Start(start))?;
    let mut data = Vec::with_capacity(max.min((size - start) as usize));
    f.take(max as u64).read_to_end(&mut data)?;
    let next_offset = start + data.len() as u64;
    Ok(LogChunk { data, offset: start, next_offset, size })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn temp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("volley-logfiles-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_worker_log_is_private_timestamped_rotated_and_read_back() {
        let base = temp("rotate");
        let logs = base.join("logs");
        set_log_dir(Some(logs.clone()));
        let shared = open_worker_log(4242).expect("a log dir");
        set_log_dir(None);
        let mut log = shared.lock();
        log.max = 150; // the first three lines (137 bytes) fit, a fourth does not
        log.write("INFO", b"(f pid=4242) hello\n");
        log.write("WARN", b"(f pid=4242) oops\nsecond\n");
        let name = format!("worker-{}-4242.log", std::process::id());
        let path = logs.join(&name);
        let md = std::fs::metadata(&path).expect("stat");
        assert_eq!(md.permissions().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with('[') && lines[0].ends_with(" INFO] (f pid=4242) hello"));
        assert!(lines[2].ends_with(" WARN] second"), "{text}");
        // Past its bound the file is rotated: the old part is name.1, the new one starts empty.
        log.write("INFO", b"more\n");
        assert!(logs.join(format!("{name}.1")).exists());
        let new = std::fs::read_to_string(&path).expect("read");
        assert!(new.ends_with(" INFO] more\n") && new.lines().count() == 1, "{new}");

        let listed = list_logs(&logs).expect("list");
        let w = listed.iter().find(|l| l.name == name).expect("listed");
        assert_eq!(
            (w.kind.as_str(), w.pid, w.node_pid),
            ("worker", Some(4242), Some(std::process::id()))
        );
        let tail = read_log(&logs, &name, None, 5).expect("tail");
        assert_eq!(tail.data, b"more\n");
        assert_eq!(tail.next_offset, tail.size);
        let head = read_log(&logs, &name, Some(0), 1).expect("head");
        assert_eq!((head.data.as_slice(), head.next_offset), (&b"["[..], 1));
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn reading_refuses_paths_links_and_open_directories() {
        let base = temp("refuse");
        let logs = base.join("logs");
        crate::rundir::ensure_private_dir(&base).expect("base");
        crate::rundir::ensure_private_dir(&logs).expect("logs");
        std::fs::write(base.join("secret.log"), b"x").expect("write");
        for bad in ["../secret.log", "/etc/passwd", ".hidden.log", "token", ""] {
            let e = read_log(&logs, bad, None, 10).expect_err(bad);
            assert!(e.to_string().contains("not the name of a volley log"), "{e}");
        }
        std::os::unix::fs::symlink(base.join("secret.log"), logs.join("link.log")).expect("ln");
        assert!(read_log(&logs, "link.log", None, 10).is_err(), "a link is not followed");
        assert!(list_logs(&logs).expect("list").is_empty(), "a link is not listed");
        std::fs::set_permissions(&logs, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        assert!(list_logs(&logs).is_err(), "a directory others can read is refused");
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn the_oldest_worker_logs_go_first() {
        let base = temp("prune");
        let logs = base.join("logs");
        crate::rundir::ensure_private_dir(&base).expect("base");
        crate::rundir::ensure_private_dir(&logs).expect("logs");
        for i in 0..5u64 {
            let p = logs.join(format!("worker-1-{i}.log"));
            std::fs::write(&p, b"x").expect("write");
            let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000 + i);
            File::options().write(true).open(&p).expect("open").set_modified(t).expect("mtime");
        }
        std::fs::write(logs.join("driver-9.log"), b"x").expect("write");
        let names = || -> Vec<String> {
            list_logs(&logs).expect("list").into_iter().map(|l| l.name).collect()
        };
        prune_to(&logs, 5, 1 << 20);
        assert_eq!(names().len(), 6, "within both bounds: nothing removed");
        // The bytes bound: 3 bytes for files of one byte keeps the newest three.
        prune_to(&logs, 100, 3);
        assert_eq!(names(), ["driver-9.log", "worker-1-2.log", "worker-1-3.log", "worker-1-4.log"]);
        // The count bound.
        prune_to(&logs, 2, 1 << 20);
        assert_eq!(names(), ["driver-9.log", "worker-1-3.log", "worker-1-4.log"]);
        let _ = std::fs::remove_dir_all(&base);
    }
}
