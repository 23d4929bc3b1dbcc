//! Bytes from a socket into the store's memfd, through a pipe (`splice`), for
//! [`Arena::fill_from`](crate::Arena::fill_from).
//!
//! `splice` from a socket into a pipe moves references to the kernel's buffers, no bytes; the
//! one copy happens from the pipe into the memfd, and it creates the pages it covers whole
//! without zeroing them first.
//!
//! Sharing that copy among threads (this thread filling a ring of pipes, a helper per further
//! core copying every other piece) was measured and dropped: on 2 cores, with the sender on the
//! same machine, a 1-GiB pull took a median 0.59 s against 0.52 s for one thread (10 runs each,
//! alternated).

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

/// A pipe that bytes go through on their way from a socket into the store (`splice` needs one
/// end of each call to be a pipe).
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes it holds at most.
    capacity: usize,
}

thread_local! {
    /// Each thread's empty pipe, reused from one fill to the next.
    static POOL: RefCell<Option<Pipe>> = const { RefCell::new(None) };
}

/// Drops this thread's pipe (see `after_fork_in_child`).
pub(crate) fn forget_thread_pipe() {
    let _ = POOL.try_with(|p| p.borrow_mut().take());
}

/// Retries `f` while it is interrupted by a signal.
fn retry(mut f: impl FnMut() -> rustix::io::Result<usize>) -> io::Result<usize> {
    loop {
        match f() {
            Err(rustix::io::Errno::INTR) => continue,
            r => return r.map_err(io::Error::from),
        }
    }
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        use rustix::pipe::{fcntl_getpipe_size, fcntl_setpipe_size, pipe_with, PipeFlags};
        let (read, write) = pipe_with(PipeFlags::CLOEXEC)?;
        // Larger than the default 64 KiB means fewer calls; the limit for users without
        // privileges is 1 MiB unless the system says otherwise.
        let capacity =
            fcntl_setpipe_size(&write, 1 << 20).or_else(|_| fcntl_getpipe_size(&write))?;
        Ok(Pipe { read, write, capacity: capacity.max(4096) })
    }

    /// Takes exactly `n` bytes (at most its capacity) off `src` into the pipe.
    fn fill(&self, src: BorrowedFd<'_>, n: usize) -> io::Result<()> {
        use rustix::pipe::{splice, SpliceFlags};
        let mut got = 0;
        while got < n {
            let flags = SpliceFlags::MOVE | SpliceFlags::MORE;
            let k = retry(|| splice(src, None, &self.write, None, n - got, flags))?;
            if k == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed in the middle of a value",
                ));
            }
            got += k;
        }
        Ok(())
    }

    /// Moves exactly `n` bytes from the pipe into `file` at `at`.
    fn drain(&self, file: &File, at: u64, n: usize) -> io::Result<()> {
        use rustix::pipe::{splice, SpliceFlags};
        let mut moved = 0;
        while moved < n {
            let mut pos = at + moved as u64;
            let k = retry(|| {
                splice(&self.read, None, file, Some(&mut pos), n - moved, SpliceFlags::MOVE)
            })?;
            if k == 0 {
                return Err(io::Error::other("the store's memory took no bytes"));
            }
            moved += k;
        }
        Ok(())
    }
}

/// Moves `len` bytes from `src` into `file` at `offset`, a pipe-full at a time.
pub(crate) fn fill(file: &File, src: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    let pipe = match POOL.with(RefCell::take) {
        Some(p) => p,
        None => Pipe::new()?,
    };
    let mut done = 0;
    while done < len {
        let n = (pipe.capacity as u64).min(len - done) as usize;
        pipe.fill(src, n)?;
        pipe.drain(file, offset + done, n)?;
        done += n as u64;
    }
    // Back in the pool only now that it is empty: after an error it may still hold bytes.
    POOL.with(|p| *p.borrow_mut() = Some(pipe));
    Ok(())
}
