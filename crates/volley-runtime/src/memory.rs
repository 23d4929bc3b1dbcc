//! Giving memory back to the OS when the work shrinks (issue 19).
//!
//! A million queued tasks cost the driver a few hundred MB of small allocations. Freed, they go
//! back to glibc's arenas, not to the OS: the process's RSS stays at its peak. The node's
//! periodic tick (`Shared::tick`, every 100 ms on the supervisor thread, never on the task
//! path) shrinks the tables that grew and then asks [`Trimmer::after_tick`] whether to call
//! `malloc_trim(0)`, which returns the free pages of every arena. It is called only when the
//! node's tasks and objects fell to half of their peak since the last trim (a burst is over)
//! and at most once a second, so a steady load never pays for it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Below this many tasks and objects at the peak, a burst is too small to be worth a trim.
pub(crate) const TRIM_MIN_PEAK: usize = 10_000;

/// The least time between two trims.
pub(crate) const TRIM_MIN_INTERVAL_MS: u64 = 1_000;

/// When to trim: the peak of live entries since the last trim, and when that was. Atomics,
/// not a lock, so that a fork never inherits it held.
pub(crate) struct Trimmer {
    peak: AtomicUsize,
    last_ms: AtomicU64,
    trims: AtomicU64,
}

impl Trimmer {
    pub(crate) const fn new() -> Self {
        Trimmer { peak: AtomicUsize::new(0), last_ms: AtomicU64::new(0), trims: AtomicU64::new(0) }
    }

    /// Whether a trim is due now: `live` tasks and objects are known at `now_ms`, and
    /// `shrank` says whether a table just gave back its room. Records the trim if so.
    pub(crate) fn due(&self, live: usize, shrank: bool, now_ms: u64) -> bool {
        let peak = self.peak.fetch_max(live, Ordering::Relaxed).max(live);
        let fell = peak >= TRIM_MIN_PEAK && live <= peak / 2;
        if !(fell || shrank) {
            return false;
        }
        let last = self.last_ms.load(Ordering::Relaxed);
        if self.trims.load(Ordering::Relaxed) > 0
            && now_ms.saturating_sub(last) < TRIM_MIN_INTERVAL_MS
        {
            return false;
        }
        self.last_ms.store(now_ms, Ordering::Relaxed);
        self.peak.store(live, Ordering::Relaxed);
        self.trims.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Asks [`Trimmer::due`] and trims if it says so; says whether it did.
    pub(crate) fn after_tick(&self, live: usize, shrank: bool, now_ms: u64) -> bool {
        if !self.due(live, shrank, now_ms) {
            return false;
        }
        trim();
        true
    }

    /// How many trims ran.
    #[allow(dead_code)] // read by tests
    pub(crate) fn trims(&self) -> u64 {
        self.trims.load(Ordering::Relaxed)
    }
}

/// The process's trimmer: glibc's arenas are the process's, whatever node runs in it.
pub(crate) static TRIMMER: Trimmer = Trimmer::new();

/// Returns the free memory of glibc's arenas to the OS (a no-op with another C library);
/// says whether any was returned.
pub(crate) fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists under its own locks.
    unsafe {
        libc::malloc_trim(0) == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_or_steady_load_never_trims() {
        let t = Trimmer::new();
        for ms in 0..1000 {
            assert!(!t.due(5_000, false, ms * 100), "small");
        }
        let t = Trimmer::new();
        for ms in 0..1000 {
            assert!(!t.due(50_000 + (ms as usize % 7) * 1000, false, ms * 100), "steady");
        }
        assert_eq!(t.trims(), 0);
    }

    #[test]
    fn a_burst_that_ends_trims_once_per_halving_and_at_most_once_a_second() {
        let t = Trimmer::new();
        assert!(!t.due(1_000_000, false, 0));
        assert!(!t.due(600_000, false, 100));
        assert!(t.due(500_000, false, 200), "half of the peak");
        assert!(!t.due(100_000, false, 300), "within a second of the last");
        assert!(t.due(100_000, false, 1_300), "a second later, below half again");
        assert!(!t.due(90_000, false, 2_400), "not half of the new peak");
        assert!(t.due(0, false, 3_500));
        assert!(!t.due(0, false, 10_000), "nothing left to fall");
        assert_eq!(t.trims(), 3);
    }

    #[test]
    fn a_table_that_shrank_trims_rate_limited() {
        let t = Trimmer::new();
        assert!(t.due(10, true, 0));
        assert!(!t.due(10, true, 500));
        assert!(t.due(10, true, 1_500));
    }

    /// Measures what a trim costs after a burst of small allocations was freed, and that it
    /// gives memory back. Printed, not asserted on time: the machine is shared.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn trim_returns_freed_small_allocations() {
        fn rss() -> u64 {
            let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
            let pages: u64 = s.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
            pages * 4096
        }
        // Allocated on a thread of its own: its arena is not the main thread's, as a node's
        // threads are not the driver's.
        std::thread::spawn(|| {
            let v: Vec<Box<[u8; 200]>> = (0..500_000).map(|_| Box::new([1u8; 200])).collect();
            let keep: Vec<Box<[u8; 200]>> = v.into_iter().step_by(1000).collect();
            let before = rss();
            let t0 = std::time::Instant::now();
            let returned = trim();
            let took = t0.elapsed();
            let after = rss();
            println!(
                "malloc_trim: {:.1} ms, RSS {} MB -> {} MB",
                took.as_secs_f64() * 1e3,
                before >> 20,
                after >> 20
            );
            // The process's RSS is printed, not asserted on: other tests run alongside.
            assert!(returned, "malloc_trim returned nothing after 100 MB were freed");
            drop(keep);
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
    }
}
