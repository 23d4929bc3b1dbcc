//! Giving back the memory of tables that grew for a burst of work.
//!
//! A `HashMap` or `VecDeque` that held a million tasks keeps room for a million after they are
//! gone: Rust's collections never shrink on their own. [`Shrink::shrink_if_sparse`] shrinks one
//! when it is large and mostly empty, to twice what it holds, so that a table that grows
//! again pays one reallocation per doubling (amortised O(1) per entry, like its growth).
//! Called off the hot path (the node's periodic tick) or where a release already took a lock.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, Hash};

/// Capacities below this are left alone: shrinking them would give back little and cost a
/// reallocation each time a small table breathes.
pub const MIN_SHRINK_CAPACITY: usize = 4096;

/// Whether a table of `len` items in room for `capacity` should shrink: it is large, and less
/// than a quarter full (the gap to the doubling on growth keeps a table that hovers around
/// one size from shrinking and growing in turn).
pub fn is_sparse(len: usize, capacity: usize) -> bool {
    capacity >= MIN_SHRINK_CAPACITY && len < capacity / 4
}

/// The capacity a sparse table shrinks to: twice what it holds, not below the floor.
pub fn target(len: usize) -> usize {
    (len * 2).max(MIN_SHRINK_CAPACITY / 4)
}

/// A collection that can give back room it no longer needs.
pub trait Shrink {
    /// Shrinks the collection if it is large and less than a quarter full; says whether it did.
    fn shrink_if_sparse(&mut self) -> bool;
}

impl<K: Eq + Hash, V, S: BuildHasher> Shrink for HashMap<K, V, S> {
    fn shrink_if_sparse(&mut self) -> bool {
        if !is_sparse(self.len(), self.capacity()) {
            return false;
        }
        self.shrink_to(target(self.len()));
        true
    }
}

impl<K: Eq + Hash, S: BuildHasher> Shrink for HashSet<K, S> {
    fn shrink_if_sparse(&mut self) -> bool {
        if !is_sparse(self.len(), self.capacity()) {
            return false;
        }
        self.shrink_to(target(self.len()));
        true
    }
}

impl<T> Shrink for VecDeque<T> {
    fn shrink_if_sparse(&mut self) -> bool {
        if !is_sparse(self.len(), self.capacity()) {
            return false;
        }
        self.shrink_to(target(self.len()));
        true
    }
}

impl<T> Shrink for Vec<T> {
    fn shrink_if_sparse(&mut self) -> bool {
        if !is_sparse(self.len(), self.capacity()) {
            return false;
        }
        self.shrink_to(target(self.len()));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_tables_are_left_alone() {
        let mut m: HashMap<u64, u64> = HashMap::with_capacity(100);
        m.insert(1, 1);
        let cap = m.capacity();
        assert!(!m.shrink_if_sparse());
        assert_eq!(m.capacity(), cap);
    }

    #[test]
    fn a_table_that_emptied_shrinks_and_keeps_its_items() {
        let mut m: HashMap<u64, u64> = (0..1_000_000).map(|i| (i, i)).collect();
        let big = m.capacity();
        m.retain(|k, _| *k < 1000);
        assert!(m.shrink_if_sparse());
        assert!(m.capacity() < big / 100, "{} of {big}", m.capacity());
        assert!(m.capacity() >= 2000);
        assert_eq!(m.len(), 1000);
        assert!((0..1000).all(|k| m.get(&k) == Some(&k)));
        // Shrunk to twice its size: not sparse any more, nothing to do until it empties again.
        assert!(!m.shrink_if_sparse());
    }

    #[test]
    fn a_quarter_full_table_is_kept() {
        let mut q: VecDeque<u32> = (0..100_000).collect();
        let cap = q.capacity();
        q.truncate(cap / 4 + 1);
        assert!(!q.shrink_if_sparse());
        assert_eq!(q.capacity(), cap);
        q.truncate(cap / 4 - 1);
        assert!(q.shrink_if_sparse());
        assert!(q.capacity() < cap);
        assert_eq!(
            q.iter().copied().collect::<Vec<_>>(),
            (0..(cap / 4 - 1) as u32).collect::<Vec<_>>()
        );
    }

    #[test]
    fn vecs_and_sets_shrink_too() {
        let mut v: Vec<u64> = (0..100_000).collect();
        v.truncate(10);
        assert!(v.shrink_if_sparse());
        assert!(v.capacity() <= MIN_SHRINK_CAPACITY);
        assert_eq!(v, (0..10).collect::<Vec<_>>());
        let mut s: HashSet<u64> = (0..100_000).collect();
        s.retain(|k| *k < 5);
        assert!(s.shrink_if_sparse());
        assert_eq!(s.len(), 5);
        assert!(s.capacity() <= MIN_SHRINK_CAPACITY);
    }

    /// Growing by one and shrinking when sparse never reallocates more than a few times per
    /// doubling: a table that breathes between 0 and N costs O(N) in moves, not O(N) per breath.
    #[test]
    fn shrinking_is_amortised() {
        let mut m: HashMap<u64, u64> = HashMap::new();
        let mut shrinks = 0;
        for round in 0..3 {
            for i in 0..200_000u64 {
                m.insert(i, i);
            }
            for i in 0..200_000u64 {
                m.remove(&i);
                if m.shrink_if_sparse() {
                    shrinks += 1;
                }
            }
            assert!(m.capacity() <= MIN_SHRINK_CAPACITY, "round {round}: {}", m.capacity());
        }
        // About log2(200,000 / 4096) * 2 shrinks per round (each halves twice), not thousands.
        assert!(shrinks < 3 * 12, "{shrinks} shrinks");
    }
}
