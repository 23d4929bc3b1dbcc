//! The object store's write protocol as a client follows it: allocate a segment (from the node's
//! store in a driver, by asking the node in a worker), copy the value in once, and seal it (the
//! driver) or hand the segment over with the message that names it (a worker). A segment that is
//! never handed over is given back, so a failed write leaks nothing.

use volley_proto::{shm_layout, Keep, ObjectData, ObjectId, ShmLoc};

use super::{Backend, Client, ClientError};
use crate::Owner;

/// A value ready to hand to the engine, with the store segment it was written into (if any) that
/// a worker must release should the value never be sent.
pub struct Written {
    pub data: ObjectData,
    pub pending_seg: Option<u64>,
}

/// Buffers at least this large are copied into the store by several threads.
const PARALLEL_COPY: usize = 32 << 20;

/// Copies `src` into `dst`; a large buffer in parallel pieces, one per core (up to 4). Fresh store
/// pages are zeroed by the kernel on first touch, which costs more than the copy itself; the page
/// faults of several threads are served at once.
///
/// # Safety
/// `dst` must be valid for writes of `src.len()` bytes and must not overlap `src`.
unsafe fn copy_large(src: &[u8], dst: usize) {
    let len = src.len();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(4);
    if len < PARALLEL_COPY || threads < 2 {
        // SAFETY: the caller's guarantee.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, len) };
        return;
    }
    // Pieces on page boundaries.
    let piece = (len / threads).div_ceil(4096) * 4096;
    std::thread::scope(|s| {
        for start in (0..len).step_by(piece) {
            let part = &src[start..(start + piece).min(len)];
            s.spawn(move || {
                // SAFETY: disjoint ranges inside the caller's buffers.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        part.as_ptr(),
                        (dst + start) as *mut u8,
                        part.len(),
                    )
                };
            });
        }
    });
}

impl Client {
    /// Whether a value of `bytes` (pickle stream and buffers together) goes to the store rather
    /// than inline.
    pub fn goes_to_store(&self, bytes: usize) -> bool {
        bytes as u64 >= self.inline_threshold && self.has_store()
    }

    /// Writes a value (its pickle stream and out-of-band buffers) into a fresh store segment,
    /// copying each byte once. `object` names it in the store's listing. Blocks (a worker asks
    /// its node for the segment): call it without holding an interpreter lock.
    pub fn write_to_store(
        &self,
        data: &[u8],
        buffers: &[&[u8]],
        contained: Vec<ObjectId>,
        object: Option<ObjectId>,
    ) -> Result<Written, ClientError> {
        let buffer_lens: Vec<u64> = buffers.iter().map(|b| b.len() as u64).collect();
        let (offsets, size) = shm_layout(data.len() as u64, &buffer_lens);
        let copy = |dst: usize| {
            // SAFETY: `dst` is a fresh segment of `size` bytes in our mapping, laid out by
            // `shm_layout` so that the stream and every buffer fit without overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(data.as_ptr(), dst as *mut u8, data.len());
                for (b, off) in buffers.iter().zip(&offsets) {
                    copy_large(b, dst + *off as usize);
                }
            }
        };
        let (seg, offset, pending_seg, keep) = match &self.backend {
            Backend::Node(n) => {
                let store = n.store();
                let (seg, offset) = store
                    .alloc(Owner::Local, size)
                    .map_err(|e| ClientError::StoreFull(e.to_string()))?;
                let Some(dst) = store.arena().ptr(offset, size) else {
                    store.release(seg, Owner::Local);
                    return Err(ClientError::StoreFull("segment out of range".into()));
                };
                copy(dst as usize);
                let sealed = store.seal(Owner::Local, seg, size, object).map_err(|e| {
                    store.release(seg, Owner::Local);
                    ClientError::Runtime(e.into())
                })?;
                (seg, offset, None, Keep::new(sealed))
            }
            Backend::Worker(w) => {
                let (seg, offset) = w.alloc(size).map_err(ClientError::StoreFull)?;
                let Some(arena) = w.arena() else {
                    w.release_segments(vec![seg]);
                    return Err(ClientError::StoreFull("no object store".into()));
                };
                let Some(dst) = arena.ptr(offset, size) else {
                    w.release_segments(vec![seg]);
                    return Err(ClientError::StoreFull(
                        "the node gave a segment outside the store".into(),
                    ));
                };
                copy(dst as usize);
                (seg, offset, Some(seg), Keep::default())
            }
        };
        let mut d = ObjectData::inline(Vec::new(), Vec::new(), contained);
        d.shm =
            Some(Box::new(ShmLoc { seg, offset, size, data_len: data.len() as u64, buffer_lens }));
        d.keep = keep;
        Ok(Written { data: d, pending_seg })
    }

    /// Gives back segments a worker wrote values into that will never be sent.
    pub fn release_written(&self, segs: Vec<u64>) {
        if let Backend::Worker(w) = &self.backend {
            if !segs.is_empty() {
                w.release_segments(segs);
            }
        }
    }
}
