//! Ordered, batched writes to one connection.
//!
//! Messages are appended (already framed) to the outbox while the node's state lock is held, so
//! their order on the wire is the order the scheduler decided them in; they are written after the
//! lock is released, so a slow reader never stalls the scheduler. Whoever writes takes everything
//! pending, so frames that pile up go out in one system call.
//!
//! [`Outbox::flush_soon`] adapts to the traffic. A frame on a quiet connection is written at once,
//! so a lone call or a round trip pays nothing extra. During a burst (frames less than [`BURST`]
//! apart) frames are left pending and written [`BATCH_FRAMES`] at a time; whatever is left when
//! the burst stops is written by whoever is about to wait ([`flush_queued`]: a `get`, a worker
//! out of tasks, a reader about to block), or else by this process's flusher thread at most
//! [`FLUSH_DELAY`] later. A burst of 10,000 calls thus costs a few hundred writes and as many
//! wake-ups of the peer instead of 10,000 of each.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use volley_proto::ProtoError;
use volley_store::sync::{Condvar, Mutex};

/// Frames closer together than this are a burst.
pub const BURST: Duration = Duration::from_micros(15);
/// During a burst, pending frames are written once there are this many...
pub const BATCH_FRAMES: usize = 32;
/// ...or this many bytes.
pub const BATCH_BYTES: usize = 64 << 10;
/// How long the flusher thread lets frames of a burst gather before it writes them.
pub const FLUSH_DELAY: Duration = Duration::from_micros(100);

struct Pending {
    buf: Vec<u8>,
    frames: usize,
    /// Handed to the flusher thread, which will write `buf` if nobody does first.
    queued: bool,
    /// When the previous frame was pushed.
    last_push: Instant,
    /// Whether the latest frame came within [`BURST`] of the one before.
    burst: bool,
}

pub struct Outbox {
    pending: Mutex<Pending>,
    /// Held while writing: frames written from different threads never interleave.
    writing: Mutex<()>,
    /// The connection, shared with its reader (`&UnixStream` reads and writes): one file
    /// descriptor per connection, not three, which matters to a node with thousands of actors.
    /// `shutdown` uses it without `writing`, so it never waits behind a blocked writer.
    stream: Arc<UnixStream>,
}

impl Outbox {
    pub fn new(stream: Arc<UnixStream>) -> Self {
        let pending = Pending {
            buf: Vec::new(),
            frames: 0,
            queued: false,
            // Long ago: the first frame is never taken for part of a burst.
            last_push: Instant::now()
                .checked_sub(Duration::from_secs(1))
                .unwrap_or_else(Instant::now),
            burst: false,
        };
        Outbox { pending: Mutex::new(pending), writing: Mutex::new(()), stream }
    }

    /// Appends one frame; call [`Outbox::flush`] or [`Outbox::flush_soon`] afterwards (outside
    /// any big lock).
    pub fn push(&self, payload: &[u8]) {
        let now = Instant::now();
        let mut p = self.pending.lock();
        p.buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        p.buf.extend_from_slice(payload);
        p.frames += 1;
        p.burst = now.saturating_duration_since(p.last_push) < burst();
        p.last_push = now;
    }

    /// Writes everything pending now.
    pub fn flush(&self) -> Result<(), ProtoError> {
        let _writing = self.writing.lock();
        let bytes = {
            let mut p = self.pending.lock();
            p.queued = false;
            p.frames = 0;
            std::mem::take(&mut p.buf)
        };
        if bytes.is_empty() {
            return Ok(());
        }
        Ok((&*self.stream).write_all(&bytes)?)
    }

    /// Writes what is pending now, unless a burst is under way and the batch is still small:
    /// then it stays pending (see the module's documentation).
    pub fn flush_soon(self: &Arc<Self>) -> Result<(), ProtoError> {
        {
            let mut p = self.pending.lock();
            if p.buf.is_empty() {
                return Ok(());
            }
            let small = p.frames < BATCH_FRAMES && p.buf.len() < BATCH_BYTES;
            if p.burst && small {
                if p.queued {
                    return Ok(());
                }
                if let Some(f) = flusher() {
                    p.queued = true;
                    drop(p);
                    f.enqueue(self.clone());
                    return Ok(());
                }
            }
        }
        self.flush()
    }

    /// Appends one frame and writes it now (with anything pending before it).
    pub fn send(&self, payload: &[u8]) -> Result<(), ProtoError> {
        check_size(payload)?;
        self.push(payload);
        self.flush()
    }

    /// Appends one frame and writes it now, or soon during a burst (see [`Outbox::flush_soon`]).
    pub fn send_soon(self: &Arc<Self>, payload: &[u8]) -> Result<(), ProtoError> {
        check_size(payload)?;
        self.push(payload);
        self.flush_soon()
    }

    pub fn shutdown(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

fn burst() -> Duration {
    static B: OnceLock<Duration> = OnceLock::new();
    *B.get_or_init(|| {
        std::env::var("VOLLEY_BURST_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_micros)
            .unwrap_or(BURST)
    })
}

fn check_size(payload: &[u8]) -> Result<(), ProtoError> {
    if payload.len() > volley_proto::MAX_FRAME_SIZE {
        return Err(ProtoError::FrameTooLarge {
            size: payload.len(),
            max: volley_proto::MAX_FRAME_SIZE,
        });
    }
    Ok(())
}

/// The process's flusher thread: writes the outboxes [`Outbox::flush_soon`] queued.
struct Flusher {
    queue: Mutex<Vec<Arc<Outbox>>>,
    cv: Condvar,
}

impl Flusher {
    fn enqueue(&self, o: Arc<Outbox>) {
        let mut q = self.queue.lock();
        let was_empty = q.is_empty();
        q.push(o);
        drop(q);
        if was_empty {
            self.cv.notify_one();
        }
    }

    fn run(&self) {
        loop {
            {
                let mut q = self.queue.lock();
                while q.is_empty() {
                    q = self.cv.wait(q);
                }
            }
            // Let the burst add to the batch (or someone about to wait write it).
            std::thread::sleep(FLUSH_DELAY);
            let batch = std::mem::take(&mut *self.queue.lock());
            for o in batch {
                // A failed write means the peer is gone; its reader notices and reports it.
                let _ = o.flush();
            }
        }
    }
}

/// The flusher (leaked: it lives as long as the process), or null before its first use.
static FLUSHER: AtomicPtr<Flusher> = AtomicPtr::new(std::ptr::null_mut());
/// Held while the flusher starts.
static FLUSHER_START: Mutex<()> = Mutex::new(());
/// No thread could be started: outboxes are then written at once.
static FLUSHER_FAILED: AtomicBool = AtomicBool::new(false);

/// The flusher, started on first use; `None` if no thread could be started.
fn flusher() -> Option<&'static Flusher> {
    let p = FLUSHER.load(Ordering::Acquire);
    if p.is_null() {
        return start_flusher();
    }
    // SAFETY: a non-null pointer is a leaked `Box<Flusher>`, never freed.
    Some(unsafe { &*p })
}

#[cold]
fn start_flusher() -> Option<&'static Flusher> {
    let _starting = FLUSHER_START.lock();
    let p = FLUSHER.load(Ordering::Acquire);
    if !p.is_null() {
        // SAFETY: as in `flusher`.
        return Some(unsafe { &*p });
    }
    if FLUSHER_FAILED.load(Ordering::Acquire) {
        return None;
    }
    let f: &'static Flusher =
        Box::leak(Box::new(Flusher { queue: Mutex::new(Vec::new()), cv: Condvar::new() }));
    match std::thread::Builder::new().name("volley-flush".into()).spawn(move || f.run()) {
        Ok(_) => {
            FLUSHER.store(f as *const Flusher as *mut Flusher, Ordering::Release);
            Some(f)
        }
        Err(_) => {
            FLUSHER_FAILED.store(true, Ordering::Release);
            None
        }
    }
}

/// In a child just forked: the flusher thread did not survive the fork, so the next burst
/// starts one of this process's own (the parent's flusher and its queue are left as they are).
pub(crate) fn after_fork_in_child() {
    // SAFETY: only the forking thread exists in the child, and it holds no guard of it (a
    // thread that held it is gone).
    unsafe { FLUSHER_START.reset_after_fork() };
    FLUSHER.store(std::ptr::null_mut(), Ordering::Release);
    FLUSHER_FAILED.store(false, Ordering::Release);
}

/// Writes, in the calling thread, every outbox queued for the flusher thread. Call it before
/// waiting for an answer to something just sent.
pub fn flush_queued() {
    // Nothing can be queued before the flusher exists: this must not start one (an idle
    // actor's process would keep a thread for nothing).
    let p = FLUSHER.load(Ordering::Acquire);
    if p.is_null() {
        return;
    }
    // SAFETY: as in `flusher`.
    let f: &Flusher = unsafe { &*p };
    let batch = std::mem::take(&mut *f.queue.lock());
    for o in batch {
        let _ = o.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use volley_proto::FrameReader;

    fn pair() -> (Arc<Outbox>, UnixStream) {
        let (a, b) = UnixStream::pair().expect("socketpair");
        (Arc::new(Outbox::new(Arc::new(a))), b)
    }

    /// A burst's tail, left to the flusher thread, arrives in a forked child too: the parent's
    /// flusher thread did not survive the fork, and the child starts its own.
    #[test]
    fn a_forked_child_gets_a_flusher_of_its_own() {
        let (warm, _peer) = pair();
        warm.send_soon(b"x").expect("send"); // the parent's flusher exists from here on
        for i in 0..64u32 {
            warm.send_soon(&i.to_be_bytes()).expect("send");
        }
        // SAFETY: the child only runs the code below and ends with `_exit`.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork failed");
        if child == 0 {
            // SAFETY: a watchdog, then this process's own state; nothing of the parent's is used.
            unsafe { libc::alarm(20) };
            crate::after_fork_in_child();
            let (out, peer) = pair();
            let reader = std::thread::spawn(move || {
                let mut r = FrameReader::new(&peer);
                (0..5000u32).all(|i| {
                    r.next_frame().ok().and_then(|f| f.try_into().ok()).map(u32::from_be_bytes)
                        == Some(i)
                })
            });
            for i in 0..5000u32 {
                if out.send_soon(&i.to_be_bytes()).is_err() {
                    // SAFETY: ends the child at once.
                    unsafe { libc::_exit(2) };
                }
            }
            let ok = reader.join().unwrap_or(false);
            // SAFETY: as above.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: `child` is our child; `status` is a valid pointer.
        let waited = unsafe { libc::waitpid(child, &mut status, 0) };
        assert_eq!(waited, child);
        assert!(libc::WIFEXITED(status), "the child was killed (hung?): status {status}");
        assert_eq!(libc::WEXITSTATUS(status), 0);
    }

    #[test]
    fn a_lone_frame_is_written_at_once() {
        let (out, mut peer) = pair();
        out.send_soon(b"hello").expect("send");
        peer.set_nonblocking(true).expect("nonblocking");
        let mut buf = [0u8; 16];
        let n = peer.read(&mut buf).expect("the frame is there without waiting");
        assert_eq!(&buf[..n], b"\0\0\0\x05hello");
    }

    #[test]
    fn a_burst_arrives_whole_and_in_order() {
        let (out, peer) = pair();
        let reader = std::thread::spawn(move || {
            let mut r = FrameReader::new(&peer);
            (0..5000u32)
                .map(|_| u32::from_be_bytes(r.next_frame().expect("frame").try_into().expect("4")))
                .collect::<Vec<_>>()
        });
        for i in 0..5000u32 {
            out.send_soon(&i.to_be_bytes()).expect("send");
        }
        // No flush: the tail of the burst is the flusher thread's to write.
        assert_eq!(reader.join().expect("reader"), (0..5000).collect::<Vec<_>>());
    }

    #[test]
    fn a_full_batch_goes_in_one_write() {
        let (out, mut peer) = pair();
        for i in 0..(BATCH_FRAMES as u32 - 1) {
            out.push(&i.to_be_bytes());
        }
        // The next frame comes right after the previous ones: pending, not written.
        out.send_soon(b"last").expect("send");
        peer.set_nonblocking(true).expect("nonblocking");
        let mut buf = vec![0u8; 4096];
        let n = peer.read(&mut buf).expect("a full batch is written at once");
        assert_eq!(n, (BATCH_FRAMES - 1) * 8 + 8);
    }
}
