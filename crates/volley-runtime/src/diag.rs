//! The runtime's log lines, with a level.
//!
//! - Events ([`event!`]: a node joined, a connection was refused, a task waits): lines for
//!   whoever runs the process. A daemon's go to its stderr, which is its log file, with a
//!   timestamp and the level (`[2026-12-04 21:00:00.123 INFO] volley: node 2 joined ...`); a
//!   driver's go to its stderr as they are (`volley: ...`), the user's terminal.
//! - Developer diagnostics ([`warn!`]: a state lock held long, a late heartbeat): always with a
//!   timestamp and a level, written to a log file and never to the user's terminal.
//!
//! A daemon (`volley start`) writes them to its stderr, which is its log file. A node inside a
//! driver writes them to `<dir>/driver-<pid>.log` once [`set_log_dir`] names the directory; the
//! file is created on the first diagnostic only (most drivers never write one), exclusively,
//! without following links, mode 0600, in a directory that must be ours and private.

use std::ffi::CString;
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use volley_store::sync::Mutex;

enum Sink {
    Stderr,
    /// Not opened yet: the directory the file is to be created in.
    Dir(PathBuf),
    File(File, PathBuf),
}

static SINK: Mutex<Sink> = Mutex::new(Sink::Stderr);

/// In a child just forked: frees the sink's lock if a thread that did not survive the fork
/// held it.
pub(crate) fn after_fork_in_child() {
    // SAFETY: only the forking thread exists in the child, and it holds no guard of them (a
    // thread that held one is gone).
    unsafe {
        SINK.reset_after_fork();
        EVENTS.reset_after_fork();
    }
    // The parent's Python thread that read the queue is not in the child: forget the queue,
    // and close the child's copy of the pipe's write end.
    *EVENTS.lock() = None;
}

/// How serious a line is.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Level {
    /// Something the user may want to know (a node joined or left).
    Info,
    /// Something went wrong that the runtime works around (a connection dropped).
    Warn,
    /// Something that needs the user (the head refuses this node, a message cannot be sent).
    Error,
}

impl Level {
    /// The level's number in Python's `logging`.
    fn python(self) -> u8 {
        match self {
            Level::Info => 20,
            Level::Warn => 30,
            Level::Error => 40,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
        })
    }
}

/// Event lines waiting for the driver's Python side (see [`route_events`]): `None` while they
/// go to stderr.
static EVENTS: Mutex<Option<Events>> = Mutex::new(None);

/// The most event lines kept for the Python side: past it the oldest are dropped (and counted
/// in a line of their own), so a stalled reader cannot grow the queue without end.
const MAX_QUEUED_EVENTS: usize = 10_000;

struct Events {
    lines: std::collections::VecDeque<(Level, String)>,
    dropped: u64,
    /// The pipe's write end: a byte per line wakes the reader. `None` once routing stops: the
    /// reader sees the end of the pipe, takes the last lines, and events go to stderr again.
    wake: Option<std::os::fd::OwnedFd>,
}

/// Routes event lines to a queue for the driver's Python side, which passes them to
/// `logging.getLogger("volley")` (where users silence or redirect them): returns the read end
/// of a pipe that gets a byte per queued line, for a Python thread to wait on (in `os.read`,
/// without the GIL) before it calls [`take_events`]. A pipe, not a condition variable: no
/// thread of the engine parks for it, so a fork cannot leave a parked waiter behind.
pub fn route_events() -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills both descriptors on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    let (read, write) = unsafe {
        (std::os::fd::OwnedFd::from_raw_fd(fds[0]), std::os::fd::OwnedFd::from_raw_fd(fds[1]))
    };
    // The writer never blocks: a full pipe already wakes the reader, which takes every line.
    // SAFETY: fcntl on a descriptor we own.
    unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    let mut q = EVENTS.lock();
    // Lines a stopped reader did not take yet are kept for the new one.
    let lines = q.take().map(|old| old.lines).unwrap_or_default();
    *q = Some(Events { lines, dropped: 0, wake: Some(write) });
    Ok(read)
}

/// Stops routing: closes the pipe (its reader sees the end, takes the last lines with
/// [`take_events`], after which events go to stderr again).
pub fn stop_routing_events() {
    if let Some(e) = EVENTS.lock().as_mut() {
        e.wake = None;
    }
}

/// The event lines queued since the last call, as (level: 20 info, 30 warning, 40 error,
/// Python's numbers; the line). After [`stop_routing_events`] this is the last take: the next
/// events go to stderr.
pub fn take_events() -> Vec<(u8, String)> {
    let mut q = EVENTS.lock();
    let Some(e) = q.as_mut() else { return Vec::new() };
    let mut out: Vec<(u8, String)> = Vec::with_capacity(e.lines.len() + 1);
    if e.dropped > 0 {
        let n = std::mem::take(&mut e.dropped);
        out.push((30, format!("volley: {n} event line(s) dropped (too many queued)")));
    }
    out.extend(e.lines.drain(..).map(|(l, s)| (l.python(), s)));
    if e.wake.is_none() {
        *q = None;
    }
    out
}

/// Writes an event line (`msg` is the whole line, `volley: ...`): to the Python side's queue
/// when a driver routes them there, else to stderr: for a daemon (no log directory set) with a
/// timestamp and the level, for a driver as it is.
pub(crate) fn event(level: Level, msg: fmt::Arguments<'_>) {
    {
        let mut q = EVENTS.lock();
        if let Some(e) = q.as_mut() {
            if e.lines.len() >= MAX_QUEUED_EVENTS {
                e.lines.pop_front();
                e.dropped += 1;
            }
            e.lines.push_back((level, msg.to_string()));
            if let Some(w) = &e.wake {
                // SAFETY: writing one byte from a valid buffer to a pipe we own.
                unsafe { libc::write(w.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
            }
            return;
        }
    }
    let daemon = matches!(*SINK.lock(), Sink::Stderr);
    let line = event_line(daemon, level, msg, SystemTime::now());
    // A line that cannot be written (stderr closed) is dropped: it must not fail the node.
    let _ = std::io::stderr().write_all(line.as_bytes());
}

fn event_line(daemon: bool, level: Level, msg: fmt::Arguments<'_>, now: SystemTime) -> String {
    if daemon {
        format!("[{} {level}] {msg}\n", timestamp(now))
    } else {
        format!("{msg}\n")
    }
}

/// `event!(Info, "volley: ...", ...)`: an event line, formatted like `format!`.
macro_rules! diag_event {
    ($level:ident, $($arg:tt)*) => {
        $crate::diag::event($crate::diag::Level::$level, format_args!($($arg)*))
    };
}
pub(crate) use diag_event as event;

/// Where diagnostics go: `Some(dir)` for a driver (a file of its own in `dir`, created when
/// the first one is written), `None` for a daemon (stderr, its log file).
pub fn set_log_dir(dir: Option<PathBuf>) {
    *SINK.lock() = match dir {
        Some(d) => Sink::Dir(d),
        None => Sink::Stderr,
    };
}

/// The file diagnostics are written to, once one has been (None: stderr, or none written yet).
pub fn log_file() -> Option<PathBuf> {
    match &*SINK.lock() {
        Sink::File(_, p) => Some(p.clone()),
        _ => None,
    }
}

/// Writes a diagnostic line: `[2026-12-04 21:00:00.123 WARN] volley: ...`.
pub(crate) fn log(level: Level, msg: fmt::Arguments<'_>) {
    let line = format!("[{} {level}] volley: {msg}\n", timestamp(SystemTime::now()));
    let mut sink = SINK.lock();
    if let Sink::Dir(dir) = &*sink {
        let dir = dir.clone();
        *sink = match open_log(&dir) {
            Ok((f, path)) => Sink::File(f, path),
            Err(e) => {
                // Said once; the diagnostics themselves must not be lost.
                let _ = writeln!(
                    std::io::stderr(),
                    "[{} {}] volley: cannot write diagnostics to {}: {e}; writing them here",
                    timestamp(SystemTime::now()),
                    Level::Error,
                    dir.display()
                );
                Sink::Stderr
            }
        };
    }
    // A diagnostic that cannot be written (a full disk) is dropped: it must not fail the node.
    let _ = match &mut *sink {
        Sink::File(f, _) => f.write_all(line.as_bytes()),
        _ => std::io::stderr().write_all(line.as_bytes()),
    };
}

/// `warn!(...)`: a [`Level::Warn`] diagnostic, formatted like `format!`.
macro_rules! diag_warn {
    ($($arg:tt)*) => {
        $crate::diag::log($crate::diag::Level::Warn, format_args!($($arg)*))
    };
}
pub(crate) use diag_warn as warn;

/// Creates `dir/driver-<pid>.log` (or `driver-<pid>-<n>.log` if an earlier process of that pid
/// left one): `dir` is created 0700 if missing and must be a directory of ours that nobody else
/// can enter; the file is created exclusively (O_EXCL, O_NOFOLLOW) relative to the directory
/// we checked, so a link or a file planted by someone else is never written through.
fn open_log(dir: &Path) -> std::io::Result<(File, PathBuf)> {
    let d = crate::rundir::open_private_dir(dir, true)?;
    let pid = std::process::id();
    for n in 0..100 {
        let name =
            if n == 0 { format!("driver-{pid}.log") } else { format!("driver-{pid}-{n}.log") };
        let cname = CString::new(name.clone())?;
        // SAFETY: a valid directory descriptor and NUL-terminated name.
        let f = unsafe {
            libc::openat(
                d.as_raw_fd(),
                cname.as_ptr(),
                libc::O_WRONLY
                    | libc::O_CREAT
                    | libc::O_EXCL
                    | libc::O_NOFOLLOW
                    | libc::O_APPEND
                    | libc::O_CLOEXEC,
                0o600 as libc::c_uint,
            )
        };
        if f >= 0 {
            // SAFETY: `f` was just opened and nothing else owns it.
            return Ok((unsafe { File::from_raw_fd(f) }, dir.join(name)));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            return Err(e);
        }
    }
    Err(std::io::Error::other("too many log files of this pid"))
}

/// `2026-12-04 21:00:00.123` (UTC).
pub(crate) fn timestamp(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03}",
        s / 3600,
        s / 60 % 60,
        s % 60,
        since.subsec_millis()
    )
}

/// The date of a day counted from 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::time::Duration;

    #[test]
    fn timestamps_are_utc_dates() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01 00:00:00.000");
        let t = UNIX_EPOCH + Duration::from_millis(1_796_418_000_123);
        assert_eq!(timestamp(t), "2026-12-04 21:00:00.123");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(timestamp(leap), "2000-02-29 00:00:00.000");
    }

    #[test]
    fn a_daemon_logs_events_with_time_and_level_and_a_driver_as_they_are() {
        let t = UNIX_EPOCH + Duration::from_millis(1_796_418_000_123);
        let msg = "node 2 joined";
        assert_eq!(
            event_line(true, Level::Info, format_args!("volley: {msg}"), t),
            "[2026-12-04 21:00:00.123 INFO] volley: node 2 joined\n"
        );
        assert_eq!(
            event_line(false, Level::Error, format_args!("volley: {msg}"), t),
            "volley: node 2 joined\n"
        );
    }

    #[test]
    fn log_file_is_created_private_and_never_through_a_link() {
        let base = std::env::temp_dir().join(format!("volley-diag-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let logs = base.join("logs");
        let (mut f, path) = open_log(&logs).expect("open");
        f.write_all(b"x\n").expect("write");
        let meta = std::fs::symlink_metadata(&path).expect("stat");
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(std::fs::symlink_metadata(&logs).expect("stat").mode() & 0o777, 0o700);
        // A second open (same pid) does not reuse the file.
        let (_, second) = open_log(&logs).expect("open again");
        assert_ne!(second, path);
        // A directory others can enter is refused.
        std::fs::set_permissions(&logs, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .expect("chmod");
        assert!(open_log(&logs).is_err());
        // So is a link in place of the directory.
        let link = base.join("link");
        std::fs::set_permissions(&logs, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .expect("chmod");
        std::os::unix::fs::symlink(&logs, &link).expect("symlink");
        assert!(open_log(&link).is_err());
        let _ = std::fs::remove_dir_all(&base);
    }
}
