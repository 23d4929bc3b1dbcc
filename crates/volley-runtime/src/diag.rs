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
use std::fs::{DirBuilder, File};
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
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
    // SAFETY: only the forking thread exists in the child, and it holds no guard of it (a
    // thread that held it is gone).
    unsafe { SINK.reset_after_fork() };
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

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
        })
    }
}

/// Writes an event line (`msg` is the whole line, `volley: ...`) to stderr: for a daemon (no
/// log directory set) with a timestamp and the level, for a driver as it is.
pub(crate) fn event(level: Level, msg: fmt::Arguments<'_>) {
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
    // An existing directory is fine here: it is checked below.
    // The session directory above it is ours and private too (made so if missing): in a
    // shared /tmp, someone else could have made it first, and then swap what is inside.
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        crate::rundir::ensure_private_dir(parent)?;
    }
    let _ = DirBuilder::new().mode(0o700).create(dir);
    let cdir = CString::new(dir.as_os_str().as_bytes())?;
    // SAFETY: a valid NUL-terminated path; the descriptor is owned by `d` below.
    let fd = unsafe {
        libc::open(
            cdir.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and nothing else owns it.
    let d = unsafe { File::from_raw_fd(fd) };
    if let Some(why) = crate::rundir::not_private(&d.metadata()?) {
        return Err(std::io::Error::other(format!("{} {why}", dir.display())));
    }
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
fn timestamp(t: SystemTime) -> String {
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
