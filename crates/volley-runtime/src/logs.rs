//! Forwarding of worker output to the driver.
//!
//! Workers write to pipes; one thread polls them all and copies whole lines to this process's
//! own stdout and stderr (file descriptors 1 and 2, whatever they point to *now*, so a later
//! redirection in the driver, such as pytest's capture, is honoured). Workers prefix each line
//! with their task's name and pid themselves. Each worker's lines also go to its log file
//! (`log_files`), written by this same thread, with a timestamp and a level (INFO for stdout,
//! WARN for stderr).

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::log_files::SharedLog;

/// Where worker output also goes (to drivers on other nodes of a cluster), besides this
/// process's stdout and stderr: called with the target descriptor and whole lines.
pub(crate) type Forward = Arc<dyn Fn(RawFd, &[u8]) + Send + Sync>;

static FORWARD: volley_store::sync::Mutex<Option<Forward>> = volley_store::sync::Mutex::new(None);

/// In a child just forked: forgets (without running it) the parent's forwarding, which writes
/// to the parent's cluster links.
pub(crate) fn after_fork_in_child() {
    // SAFETY: only the forking thread exists in the child, and it holds no guard of it (a
    // thread that held it is gone).
    unsafe { FORWARD.reset_after_fork() };
    std::mem::forget(FORWARD.lock().take());
}

/// Sends worker output to `f` too (`None`: stop).
pub(crate) fn set_forward(f: Option<Forward>) {
    *FORWARD.lock() = f;
}

/// Copies lines to `fd` of this process (the driver's side of `Forward`).
pub(crate) fn write_lines(fd: RawFd, lines: &[u8]) {
    if fd == 1 || fd == 2 {
        write_all(fd, lines);
    }
}

fn emit(src: &Source, lines: &[u8]) {
    if let Some(log) = &src.log {
        log.lock().write(if src.target == 2 { "WARN" } else { "INFO" }, lines);
    }
    if !src.to_driver {
        return;
    }
    write_all(src.target, lines);
    let f = FORWARD.lock().clone();
    if let Some(f) = f {
        f(src.target, lines);
    }
}

/// A worker's pipe to read, as the supervisor hands it over.
pub(crate) struct Pipe {
    pub fd: OwnedFd,
    /// File descriptor 1 or 2: the worker's stdout or stderr.
    pub target: RawFd,
    /// The worker's log file, if one is kept.
    pub log: Option<SharedLog>,
    /// Forward the lines to the driver (and its peers), besides the log file.
    pub to_driver: bool,
}

pub(crate) enum LogCmd {
    /// Forward everything read from this pipe.
    Add(Pipe),
    /// Finish: forward what is still coming for up to this long, then stop.
    Stop(Duration),
}

/// The sending side: a channel plus a pipe that wakes the poll loop.
pub(crate) struct LogSender {
    tx: Sender<LogCmd>,
    wake: OwnedFd,
}

impl LogSender {
    pub fn send(&self, cmd: LogCmd) {
        if self.tx.send(cmd).is_ok() {
            // SAFETY: writing one byte from a valid buffer to a pipe we own.
            unsafe { libc::write(self.wake.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
        }
    }
}

pub(crate) fn channel() -> std::io::Result<(LogSender, Receiver<LogCmd>, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 fills both descriptors on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let (tx, rx) = std::sync::mpsc::channel();
    Ok((LogSender { tx, wake: write }, rx, read))
}

struct Source {
    fd: OwnedFd,
    target: RawFd,
    partial: Vec<u8>,
    log: Option<SharedLog>,
    to_driver: bool,
}

/// Writes whole lines in pieces of at most `PIPE_BUF` bytes where the lines allow: a write that
/// small is atomic on a pipe, so the driver's own prints (and other processes writing to the
/// same pipe) land between lines, never inside one.
fn write_all(fd: RawFd, mut buf: &[u8]) {
    const PIPE_BUF: usize = 4096;
    while buf.len() > PIPE_BUF {
        let cut = buf[..PIPE_BUF].iter().rposition(|&b| b == b'\n').map_or_else(
            // A line longer than PIPE_BUF goes whole (to its end) in one piece.
            || buf.iter().position(|&b| b == b'\n').map_or(buf.len(), |i| i + 1),
            |i| i + 1,
        );
        write_piece(fd, &buf[..cut]);
        buf = &buf[cut..];
    }
    write_piece(fd, buf);
}

fn write_piece(fd: RawFd, mut buf: &[u8]) {
    while !buf.is_empty() {
        // SAFETY: `buf` is a valid slice for the duration of the call.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n > 0 {
            buf = &buf[n as usize..];
        } else if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
        {
            continue;
        } else {
            return; // The driver's stdout is gone; drop the output rather than block.
        }
    }
}

/// Reads what is available; returns false at end of file.
fn pump(src: &mut Source, buf: &mut [u8]) -> bool {
    // SAFETY: reading into a valid buffer from a descriptor we own.
    let n = unsafe { libc::read(src.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        let e = std::io::Error::last_os_error().kind();
        return matches!(e, std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock);
    }
    if n == 0 {
        if !src.partial.is_empty() {
            src.partial.push(b'\n');
            let partial = std::mem::take(&mut src.partial);
            emit(src, &partial);
        }
        return false;
    }
    let data = &buf[..n as usize];
    match data.iter().rposition(|&b| b == b'\n') {
        Some(last) => {
            src.partial.extend_from_slice(&data[..=last]);
            let mut whole = std::mem::take(&mut src.partial);
            emit(src, &whole);
            whole.clear();
            whole.extend_from_slice(&data[last + 1..]);
            src.partial = whole;
        }
        None => src.partial.extend_from_slice(data),
    }
    true
}

/// The epoll key of the wake pipe; a source's key is its file descriptor.
const WAKE_KEY: u64 = u64::MAX;

/// Watches `fd` for input under `key`.
fn watch(ep: &OwnedFd, fd: RawFd, key: u64) -> std::io::Result<()> {
    let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: key };
    // SAFETY: `ep` is an epoll instance we own; `ev` is valid for the call.
    if unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Copies the workers' output until told to stop. With epoll, a wake-up costs the pipes that
/// have something to read, not all of them: a node with thousands of actors adds a pipe per
/// actor, and `poll` over every pipe on each of those additions made starting them quadratic.
pub(crate) fn run(rx: Receiver<LogCmd>, wake: OwnedFd) {
    // SAFETY: epoll_create1 has no pointer arguments; a non-negative result is a new fd.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        crate::diag::warn!(
            "the output of workers is not forwarded: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    // SAFETY: just created, owned by nobody else.
    let ep = unsafe { OwnedFd::from_raw_fd(ep) };
    if let Err(e) = watch(&ep, wake.as_raw_fd(), WAKE_KEY) {
        crate::diag::warn!("the output of workers is not forwarded: {e}");
        return;
    }
    let mut sources: HashMap<RawFd, Source> = HashMap::new();
    let mut stop_at: Option<Instant> = None;
    let mut buf = vec![0u8; 64 * 1024];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut woken = true; // the commands sent before this thread started
    loop {
        while woken {
            match rx.try_recv() {
                Ok(LogCmd::Add(p)) => {
                    let fd = p.fd.as_raw_fd();
                    let src = Source {
                        fd: p.fd,
                        target: p.target,
                        partial: Vec::new(),
                        log: p.log,
                        to_driver: p.to_driver,
                    };
                    match watch(&ep, fd, fd as u64) {
                        Ok(()) => {
                            sources.insert(fd, src);
                        }
                        Err(e) => crate::diag::warn!("a worker's output is not forwarded: {e}"),
                    }
                }
                Ok(LogCmd::Stop(grace)) => stop_at = Some(Instant::now() + grace),
                Err(std::sync::mpsc::TryRecvError::Empty) => woken = false,
                // The supervisor is gone (its closed wake pipe woke us): finish up.
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    stop_at.get_or_insert_with(|| Instant::now() + Duration::from_millis(500));
                    woken = false;
                }
            }
        }
        if let Some(t) = stop_at {
            if sources.is_empty() || Instant::now() >= t {
                return;
            }
        }
        let timeout = if stop_at.is_some() { 20 } else { -1 };
        // SAFETY: `events` is a valid, writable array of `events.len()` entries.
        let n = unsafe {
            libc::epoll_wait(ep.as_raw_fd(), events.as_mut_ptr(), events.len() as i32, timeout)
        };
        for ev in events.iter().take(n.max(0) as usize) {
            let key = ev.u64;
            if key == WAKE_KEY {
                let mut sink = [0u8; 64];
                // SAFETY: draining the non-blocking wake pipe into a local buffer.
                while unsafe { libc::read(wake.as_raw_fd(), sink.as_mut_ptr().cast(), sink.len()) }
                    > 0
                {}
                woken = true;
                continue;
            }
            let fd = key as RawFd;
            let Some(src) = sources.get_mut(&fd) else { continue };
            if !pump(src, &mut buf) {
                // Closing the descriptor (dropping the source) takes it out of the epoll set.
                sources.remove(&fd);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    #[test]
    fn forwarded_lines_stay_whole_beside_another_writer_of_the_same_pipe() {
        let mut fds = [0; 2];
        // SAFETY: a valid array of two descriptors for pipe(2) to fill.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: pipe(2) just opened both; each is owned once.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let reader = std::thread::spawn(move || {
            // A slow reader: the pipe fills, so a large write waits part-way, as it does
            // when a driver's stdout is read slowly.
            let mut f = std::fs::File::from(read);
            let mut all = Vec::new();
            let mut buf = [0u8; 1000];
            loop {
                let n = f.read(&mut buf).expect("read");
                if n == 0 {
                    break;
                }
                all.extend_from_slice(&buf[..n]);
                std::thread::sleep(std::time::Duration::from_micros(20));
            }
            String::from_utf8(all).expect("utf-8 lines")
        });
        let big: String = (0..20_000).map(|i| format!("out line {i}\n")).collect();
        let w = write.as_raw_fd();
        std::thread::scope(|s| {
            s.spawn(|| {
                for _ in 0..4 {
                    super::write_all(w, big.as_bytes());
                }
            });
            s.spawn(|| {
                for _ in 0..2000 {
                    super::write_piece(w, b"MARK\n");
                    std::thread::sleep(std::time::Duration::from_micros(50));
                }
            });
        });
        drop(write);
        let text = reader.join().expect("reader");
        let mut marks = 0;
        let mut outs = 0;
        for line in text.lines() {
            if line == "MARK" {
                marks += 1;
            } else {
                assert!(
                    line.starts_with("out line ") && line[9..].parse::<u32>().is_ok(),
                    "{line:?}"
                );
                outs += 1;
            }
        }
        assert_eq!((marks, outs), (2000, 80_000));
    }
}
