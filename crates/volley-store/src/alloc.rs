//! A best-fit allocator over `[0, capacity)` with coalescing of free neighbours.
//!
//! Best fit, lowest offset first among equal sizes: memory the store has touched before (low
//! offsets) is reused before fresh pages, and a fresh shared-memory page costs far more to write
//! the first time than a reused one.

use std::collections::{BTreeMap, BTreeSet};

/// Every allocation starts on, and is rounded up to, a page.
pub const PAGE: u64 = 4096;

/// `n` rounded up to whole pages (at least one); saturates instead of overflowing.
pub fn round_up(n: u64) -> u64 {
    n.div_ceil(PAGE).max(1).saturating_mul(PAGE)
}

#[derive(Debug)]
pub struct Allocator {
    capacity: u64,
    by_offset: BTreeMap<u64, u64>,
    by_size: BTreeSet<(u64, u64)>,
    free: u64,
}

impl Allocator {
    pub fn new(capacity: u64) -> Self {
        let capacity = capacity / PAGE * PAGE;
        let mut a =
            Allocator { capacity, by_offset: BTreeMap::new(), by_size: BTreeSet::new(), free: 0 };
        if capacity > 0 {
            a.insert(0, capacity);
        }
        a
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn free_bytes(&self) -> u64 {
        self.free
    }

    /// The largest block that could be allocated now.
    pub fn largest_free(&self) -> u64 {
        self.by_size.iter().next_back().map(|(len, _)| *len).unwrap_or(0)
    }

    fn insert(&mut self, off: u64, len: u64) {
        self.by_offset.insert(off, len);
        self.by_size.insert((len, off));
        self.free += len;
    }

    fn remove(&mut self, off: u64, len: u64) {
        self.by_offset.remove(&off);
        self.by_size.remove(&(len, off));
        self.free -= len;
    }

    /// Reserves `len` bytes (already rounded with [`round_up`]); `None` if no free block is
    /// large enough.
    pub fn alloc(&mut self, len: u64) -> Option<u64> {
        let &(blen, boff) = self.by_size.range((len, 0)..).next()?;
        self.remove(boff, blen);
        if blen > len {
            self.insert(boff + len, blen - len);
        }
        Some(boff)
    }

    /// Returns a block obtained from [`Allocator::alloc`].
    pub fn free(&mut self, mut off: u64, mut len: u64) {
        if let Some((&poff, &plen)) = self.by_offset.range(..off).next_back() {
            if poff + plen == off {
                self.remove(poff, plen);
                off = poff;
                len += plen;
            }
        }
        if let Some(&nlen) = self.by_offset.get(&(off + len)) {
            self.remove(off + len, nlen);
            len += nlen;
        }
        self.insert(off, len);
    }

    #[cfg(test)]
    fn blocks(&self) -> Vec<(u64, u64)> {
        self.by_offset.iter().map(|(o, l)| (*o, *l)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn best_fit_and_coalescing() {
        let mut a = Allocator::new(10 * PAGE);
        let x = a.alloc(2 * PAGE).expect("x");
        let y = a.alloc(PAGE).expect("y");
        let z = a.alloc(3 * PAGE).expect("z");
        assert_eq!((x, y, z), (0, 2 * PAGE, 3 * PAGE));
        a.free(x, 2 * PAGE);
        // A one-page request takes the smaller hole (2 pages), not the tail (4 pages).
        assert_eq!(a.alloc(PAGE), Some(0));
        assert_eq!(a.alloc(5 * PAGE), None);
        a.free(0, PAGE);
        a.free(y, PAGE);
        a.free(z, 3 * PAGE);
        assert_eq!(a.blocks(), vec![(0, 10 * PAGE)]);
        assert_eq!(a.free_bytes(), 10 * PAGE);
    }

    proptest! {
        #[test]
        fn never_overlaps_and_always_coalesces(ops in proptest::collection::vec((0u8..3, 1u64..6), 1..200)) {
            let cap = 64 * PAGE;
            let mut a = Allocator::new(cap);
            let mut live: Vec<(u64, u64)> = Vec::new();
            for (op, pages) in ops {
                if op < 2 {
                    let len = pages * PAGE;
                    if let Some(off) = a.alloc(len) {
                        prop_assert!(off + len <= cap);
                        for &(o, l) in &live {
                            prop_assert!(off + len <= o || o + l <= off, "overlap");
                        }
                        live.push((off, len));
                    } else {
                        prop_assert!(a.largest_free() < len);
                    }
                } else if !live.is_empty() {
                    let (o, l) = live.swap_remove(pages as usize % live.len());
                    a.free(o, l);
                }
                let used: u64 = live.iter().map(|(_, l)| l).sum();
                prop_assert_eq!(a.free_bytes() + used, cap);
                let blocks = a.blocks();
                for w in blocks.windows(2) {
                    prop_assert!(w[0].0 + w[0].1 < w[1].0, "adjacent free blocks not merged");
                }
            }
            for (o, l) in live {
                a.free(o, l);
            }
            prop_assert_eq!(a.blocks(), vec![(0, cap)]);
        }
    }
}
