//! The engine's locks: std's, without poisoning, and with a way to forget the holders a fork
//! left behind.
//!
//! Why not parking_lot: it keeps one process-wide table of waiting threads, with a lock per
//! bucket. A thread of the parent that was waiting on (or waking) any parking_lot lock at the
//! moment of an `os.fork` is copied into the child's table as a queue entry pointing into its
//! own thread-local memory, and may hold its bucket's lock. The child has no such thread: its
//! next wait that lands in that bucket hangs, or walks the dead entry, whose memory glibc frees
//! and hands out again when the child starts threads of its own (a SIGSEGV: seen in
//! `parking_lot_core::ThreadData::new`, which regrows the table, in the first wait of a forked
//! child's new node thread; the hangs were in its `lock_bucket` and `grow_hashtable`). std's
//! locks keep all their state in the lock itself (a futex word on Linux), so a fork leaves
//! behind only the state of the locks the parent's threads held; [`Mutex::reset_after_fork`] and
//! [`RwLock::reset_after_fork`] forget that for the process-wide ones.
//!
//! Poisoning is ignored: a panic while a lock is held is a bug that is reported where it
//! happens; the engine's state under these locks stays usable, as it did with parking_lot.

use std::cell::UnsafeCell;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::PoisonError;
use std::time::Duration;

pub use std::sync::{MutexGuard, RwLockReadGuard, RwLockWriteGuard};

/// A mutual-exclusion lock (see the module's documentation).
pub struct Mutex<T>(UnsafeCell<std::sync::Mutex<T>>);

// SAFETY: the cell is only written by `reset_after_fork`, whose caller guarantees that no other
// thread exists; otherwise it is only read, and `std::sync::Mutex<T>` is Sync for `T: Send`.
unsafe impl<T: Send> Sync for Mutex<T> {}

impl<T> Mutex<T> {
    pub const fn new(value: T) -> Mutex<T> {
        Mutex(UnsafeCell::new(std::sync::Mutex::new(value)))
    }

    fn inner(&self) -> &std::sync::Mutex<T> {
        // SAFETY: see the `Sync` impl: nothing writes the cell while other threads exist.
        unsafe { &*self.0.get() }
    }

    /// Waits for the lock (a panicked holder's data is used as it is).
    pub fn lock(&self) -> MutexGuard<'_, T> {
        self.inner().lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The lock if no one holds it.
    pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        match self.inner().try_lock() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    pub fn into_inner(self) -> T {
        self.0.into_inner().into_inner().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn get_mut(&mut self) -> &mut T {
        self.0.get_mut().get_mut().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes the lock free again, keeping its value: in a child just forked, a thread of the
    /// parent may have held it, and that thread does not exist here to let go.
    ///
    /// # Safety
    /// Only in a child process just forked, by its only thread, while it holds no guard of
    /// this lock.
    pub unsafe fn reset_after_fork(&self) {
        let cell = self.0.get();
        // SAFETY: the caller guarantees that nothing else uses the lock now; the value is moved
        // out and straight back in a new lock (neither step can panic), so it is dropped once.
        unsafe {
            let value = std::ptr::read(cell).into_inner().unwrap_or_else(PoisonError::into_inner);
            std::ptr::write(cell, std::sync::Mutex::new(value));
        }
    }
}

impl<T: Default> Default for Mutex<T> {
    fn default() -> Mutex<T> {
        Mutex::new(T::default())
    }
}

impl<T: fmt::Debug> fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner().fmt(f)
    }
}

/// A reader-writer lock (see the module's documentation).
pub struct RwLock<T>(UnsafeCell<std::sync::RwLock<T>>);

// SAFETY: as for `Mutex`; `std::sync::RwLock<T>` is Sync for `T: Send + Sync`.
unsafe impl<T: Send + Sync> Sync for RwLock<T> {}

impl<T> RwLock<T> {
    pub const fn new(value: T) -> RwLock<T> {
        RwLock(UnsafeCell::new(std::sync::RwLock::new(value)))
    }

    fn inner(&self) -> &std::sync::RwLock<T> {
        // SAFETY: see the `Sync` impl.
        unsafe { &*self.0.get() }
    }

    pub fn read(&self) -> RwLockReadGuard<'_, T> {
        self.inner().read().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, T> {
        self.inner().write().unwrap_or_else(PoisonError::into_inner)
    }

    /// As [`Mutex::reset_after_fork`]: frees the lock of the parent's readers and writer.
    ///
    /// # Safety
    /// As [`Mutex::reset_after_fork`].
    pub unsafe fn reset_after_fork(&self) {
        let cell = self.0.get();
        // SAFETY: as in `Mutex::reset_after_fork`.
        unsafe {
            let value = std::ptr::read(cell).into_inner().unwrap_or_else(PoisonError::into_inner);
            std::ptr::write(cell, std::sync::RwLock::new(value));
        }
    }
}

/// A condition variable for [`Mutex`]'s guards (see the module's documentation).
///
/// It counts its waiters so that a notify with none is an atomic load: std's own always makes
/// a system call, and the engine notifies on every message and every finished object.
#[derive(Debug, Default)]
pub struct Condvar {
    cv: std::sync::Condvar,
    /// Threads in `wait`/`wait_for`. Changed while the waiter holds the mutex, so a notifier
    /// that changed the waited-for state under the same mutex (as it must for any condition
    /// variable) sees every waiter that did not see the change.
    waiters: AtomicUsize,
}

impl Condvar {
    pub const fn new() -> Condvar {
        Condvar { cv: std::sync::Condvar::new(), waiters: AtomicUsize::new(0) }
    }

    /// Releases `guard`'s lock until notified (or woken spuriously), then takes it again.
    pub fn wait<'a, T>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let g = self.cv.wait(guard).unwrap_or_else(PoisonError::into_inner);
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        g
    }

    /// As [`Condvar::wait`], for at most `timeout`.
    pub fn wait_for<'a, T>(
        &self,
        guard: MutexGuard<'a, T>,
        timeout: Duration,
    ) -> MutexGuard<'a, T> {
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let g = match self.cv.wait_timeout(guard, timeout) {
            Ok((g, _)) => g,
            Err(p) => p.into_inner().0,
        };
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        g
    }

    pub fn notify_one(&self) {
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.cv.notify_one();
        }
    }

    pub fn notify_all(&self) {
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.cv.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_lock_held_by_a_thread_that_is_gone_is_free_after_a_reset() {
        static M: Mutex<u32> = Mutex::new(7);
        static R: RwLock<u32> = RwLock::new(8);
        // A holder that never lets go: what a fork leaves of a thread that held the lock.
        std::mem::forget(M.lock());
        std::mem::forget(R.read());
        assert!(M.try_lock().is_none());
        // SAFETY: no other thread uses these locks (they are this test's own).
        unsafe {
            M.reset_after_fork();
            R.reset_after_fork();
        }
        assert_eq!(*M.lock(), 7);
        *R.write() += 1;
        assert_eq!(*R.read(), 9);
    }

    #[test]
    fn a_poisoned_lock_is_still_usable() {
        let m = Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock();
            panic!("poisons the lock");
        })
        .join();
        *m.lock() += 1;
        assert_eq!(*m.lock(), 2);
    }

    #[test]
    fn wait_for_returns_after_the_timeout_or_a_notify() {
        let pair = Arc::new((Mutex::new(false), Condvar::new()));
        let g = pair.0.lock();
        let g = pair.1.wait_for(g, Duration::from_millis(10));
        assert!(!*g);
        drop(g);
        let p2 = pair.clone();
        let t = std::thread::spawn(move || {
            *p2.0.lock() = true;
            p2.1.notify_all();
        });
        let mut g = pair.0.lock();
        while !*g {
            g = pair.1.wait(g);
        }
        t.join().expect("notifier");
    }

    /// Threads that keep waking each other up on a lock and a condition variable.
    fn ping_pong(pair: &(Mutex<u64>, Condvar), rounds: u32) {
        for _ in 0..rounds {
            let mut g = pair.0.lock();
            *g += 1;
            pair.1.notify_all();
            drop(pair.1.wait_for(g, Duration::from_micros(200)));
        }
    }

    #[test]
    fn a_child_forked_while_threads_wait_on_locks_can_wait_on_locks_of_its_own() {
        // With parking_lot, 1 to 3 of 20 such children hung (its table of waiting threads held
        // the parent's waiters, and their bucket locks); the engine's node threads do this.
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let pair = Arc::new((Mutex::new(0u64), Condvar::new()));
        let busy: Vec<_> = (0..8)
            .map(|_| {
                let (stop, pair) = (stop.clone(), pair.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        ping_pong(&pair, 10);
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(20));
        let mut failed = Vec::new();
        for _ in 0..20 {
            // SAFETY: the child only runs the code below and ends with `_exit`.
            let child = unsafe { libc::fork() };
            assert!(child >= 0, "fork failed");
            if child == 0 {
                // SAFETY: a watchdog: a hang ends in SIGALRM.
                unsafe { libc::alarm(10) };
                let pairs: Vec<_> =
                    (0..8).map(|_| Arc::new((Mutex::new(0), Condvar::new()))).collect();
                let threads: Vec<_> = pairs
                    .iter()
                    .map(|p| {
                        let p = p.clone();
                        std::thread::spawn(move || ping_pong(&p, 100))
                    })
                    .collect();
                for p in &pairs {
                    ping_pong(p, 100);
                }
                let ok = threads.into_iter().all(|t| t.join().is_ok());
                // SAFETY: ends the child at once.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) };
            }
            let mut status = 0;
            // SAFETY: `child` is our child; `status` is a valid pointer.
            let waited = unsafe { libc::waitpid(child, &mut status, 0) };
            assert_eq!(waited, child);
            if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
                failed.push(status);
            }
        }
        stop.store(true, Ordering::Relaxed);
        for t in busy {
            t.join().expect("busy thread");
        }
        assert!(failed.is_empty(), "children that hung or crashed (wait statuses): {failed:?}");
    }
}
