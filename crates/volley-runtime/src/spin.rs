//! Spinning before parking, only while it pays.
//!
//! A driver thread about to wait for a result spins for up to [`spin_time`] first: a short
//! result usually arrives within a few tens of microseconds, and the wake-up of a parked thread
//! costs as much again on a small VM. But the result is delivered by other threads (the node's
//! reader of the worker's connection, the worker itself), and when every core is busy (other
//! work on the machine, more workers than cores) they wait for the CPU the spinner holds: each
//! spin then runs to its limit and delays the very result it waits for (on a 2-core VM with two
//! busy processes beside it, 1,000 round trips took 2.4x as long). So [`Gate`] turns
//! spinning off after [`MISSES_TO_STOP`] spins in a row that ended without the result, and tries
//! one spin in every [`PROBE_EVERY`] waits meanwhile to notice when it pays again.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Spins in a row that ended without the result before spinning stops.
pub(crate) const MISSES_TO_STOP: u32 = 3;
/// While spinning is off, one wait in this many spins (a probe).
pub(crate) const PROBE_EVERY: u32 = 32;

/// How long a driver thread about to wait for a result spins at most (`VOLLEY_SPIN_US`,
/// default 150 µs; 0 turns spinning off).
pub(crate) fn spin_time() -> Duration {
    static SPIN: OnceLock<Duration> = OnceLock::new();
    *SPIN.get_or_init(|| {
        let us = std::env::var("VOLLEY_SPIN_US").ok().and_then(|v| v.parse().ok()).unwrap_or(150);
        Duration::from_micros(us)
    })
}

/// Whether spinning pays lately: counts of the latest spins' outcomes, shared by the process's
/// waiting threads (relaxed atomics: a stale count costs one spin more or less, nothing else).
pub(crate) struct Gate {
    /// Spins in a row that ended without the result.
    misses: AtomicU32,
    /// Waits that did not spin while spinning was off.
    skipped: AtomicU32,
}

impl Gate {
    pub(crate) const fn new() -> Gate {
        Gate { misses: AtomicU32::new(0), skipped: AtomicU32::new(0) }
    }

    /// Whether this wait should spin.
    pub(crate) fn should_spin(&self) -> bool {
        if self.misses.load(Ordering::Relaxed) < MISSES_TO_STOP {
            return true;
        }
        self.skipped.fetch_add(1, Ordering::Relaxed) % PROBE_EVERY == PROBE_EVERY - 1
    }

    /// Records how a spin ended: with the result (`true`) or at its limit.
    pub(crate) fn record(&self, got_it: bool) {
        if got_it {
            self.misses.store(0, Ordering::Relaxed);
        } else {
            let m = self.misses.load(Ordering::Relaxed);
            self.misses.store(m.saturating_add(1), Ordering::Relaxed);
        }
    }
}

static GATE: Gate = Gate::new();

/// Spins until `ready()` for up to [`spin_time`] when spinning pays lately (see [`Gate`]);
/// otherwise checks `ready()` once. True if it is ready.
pub(crate) fn spin_wait(mut ready: impl FnMut() -> bool) -> bool {
    let limit = spin_time();
    if limit.is_zero() || !GATE.should_spin() {
        return ready();
    }
    let got_it = spin_until(limit, &mut ready);
    GATE.record(got_it);
    got_it
}

/// Spins until `ready()` or `limit` passes; true if it became ready.
pub(crate) fn spin_until(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if ready() {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        for _ in 0..64 {
            std::hint::spin_loop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spins that keep missing turn spinning off, but for one probe in PROBE_EVERY waits; a
    /// probe that gets its result turns it back on.
    #[test]
    fn spinning_stops_after_misses_and_a_probe_turns_it_back_on() {
        let g = Gate::new();
        for _ in 0..MISSES_TO_STOP {
            assert!(g.should_spin());
            g.record(false);
        }
        let spins = (0..PROBE_EVERY * 4).filter(|_| g.should_spin()).count();
        assert_eq!(spins, 4, "one probe per {PROBE_EVERY} waits while off");
        g.record(false); // a probe that missed: still off
        assert_eq!((0..PROBE_EVERY).filter(|_| g.should_spin()).count(), 1);
        g.record(true); // a probe that got its result: on again
        assert!((0..10).all(|_| g.should_spin()));
    }

    /// A hit resets the count: misses that are not in a row never turn spinning off.
    #[test]
    fn misses_must_be_in_a_row() {
        let g = Gate::new();
        for _ in 0..10 {
            for _ in 0..MISSES_TO_STOP - 1 {
                g.record(false);
            }
            g.record(true);
        }
        assert!(g.should_spin());
    }

    #[test]
    fn spin_until_sees_ready_and_gives_up_at_its_limit() {
        assert!(spin_until(Duration::from_millis(100), || true));
        let t = Instant::now();
        assert!(!spin_until(Duration::from_micros(200), || false));
        assert!(t.elapsed() >= Duration::from_micros(200));
    }
}
