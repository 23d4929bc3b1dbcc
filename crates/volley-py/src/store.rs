//! Values in and out of the shared-memory store, as Python sees them.
//!
//! Writing: a value's pickle stream and out-of-band buffers are copied once, straight from the
//! Python buffers into a store segment (the GIL released during the copy). Reading: the segment
//! is exposed as a read-only `memoryview` owned by a [`ShmBuffer`] (see [`crate::buffer`] for how,
//! under the stable ABI); the pickle stream and each buffer are slices of it, so numpy arrays
//! rebuilt from them are views of shared memory. The `ShmBuffer` holds the lease that keeps the
//! segment in place; the lease goes when the last view does.

use std::any::Any;
use std::sync::Arc;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PySlice, PyType};
use serde_bytes::ByteBuf;
use volley_proto::{shm_layout, Keep, ObjectData, ObjectId, ShmLoc};
use volley_runtime::Owner;

use crate::buffer::{shared_view, SourceBytes};
use crate::client::{Backend, Client};

/// Bytes of a stored value mapped into this process, and what keeps them there.
#[derive(Clone)]
pub struct Mapped {
    pub ptr: usize,
    pub len: usize,
    pub guard: Arc<dyn Any + Send + Sync>,
}

/// The owner of one stored value's mapping: the memoryviews of it keep it alive (see the module
/// docs).
#[pyclass(module = "volley._core", frozen)]
pub struct ShmBuffer {
    len: usize,
    guard: std::mem::ManuallyDrop<Arc<dyn Any + Send + Sync>>,
    /// The fork generation it was made in (see `client::fork_generation`).
    generation: u64,
}

impl Drop for ShmBuffer {
    fn drop(&mut self) {
        // In a forked child the guard is the parent's pin on the segment: releasing it would
        // write to the parent's node. The child's copy of the mapping goes with the process.
        if self.generation == crate::client::fork_generation() {
            // SAFETY: dropped once, here, and never used again.
            unsafe { std::mem::ManuallyDrop::drop(&mut self.guard) };
        }
    }
}

#[pymethods]
impl ShmBuffer {
    fn __len__(&self) -> usize {
        self.len
    }
}

/// `ObjectStoreFullError(msg)`.
pub fn store_full(py: Python<'_>, msg: String) -> PyErr {
    let cls = py
        .import("volley.exceptions")
        .and_then(|m| m.getattr("ObjectStoreFullError"))
        .and_then(|c| c.cast_into::<PyType>().map_err(PyErr::from));
    match cls {
        Ok(c) => PyErr::from_type(c, msg),
        Err(e) => e,
    }
}

/// True if `e` is an `ObjectStoreFullError`.
pub fn is_store_full(py: Python<'_>, e: &PyErr) -> bool {
    e.get_type(py).name().map(|n| n == "ObjectStoreFullError").unwrap_or(false)
}

/// A pickled value ready to hand to the engine, with the store segment it was written into (if
/// any) that a worker must release should the value never be sent.
pub struct Written {
    pub data: ObjectData,
    pub pending_seg: Option<u64>,
}

struct Src {
    ptr: usize,
    len: usize,
}

/// Buffers at least this large are copied into the store by several threads.
const PARALLEL_COPY: usize = 32 << 20;

/// Copies `len` bytes from `src` to `dst`; a large buffer in parallel pieces, one per core (up
/// to 4). Fresh store pages are zeroed by the kernel on first touch, which costs more than the
/// copy itself; the page faults of several threads are served at once.
///
/// # Safety
/// `src` and `dst` must be valid for `len` bytes and must not overlap.
unsafe fn copy_large(src: usize, dst: usize, len: usize) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(4);
    if len < PARALLEL_COPY || threads < 2 {
        // SAFETY: the caller's guarantee.
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst as *mut u8, len) };
        return;
    }
    // Pieces on page boundaries.
    let piece = (len / threads).div_ceil(4096) * 4096;
    std::thread::scope(|s| {
        for start in (0..len).step_by(piece) {
            let n = piece.min(len - start);
            s.spawn(move || {
                // SAFETY: disjoint ranges inside the caller's buffers.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        (src + start) as *const u8,
                        (dst + start) as *mut u8,
                        n,
                    )
                };
            });
        }
    });
}

/// Builds an `ObjectData` from a pickle stream and its out-of-band buffers: inline if small,
/// else copied once into the store. `object` names it in the store's listing.
pub fn object_data(
    py: Python<'_>,
    c: &Client,
    data: &[u8],
    buffers: &Bound<'_, PyList>,
    contained: Vec<ObjectId>,
    object: Option<ObjectId>,
) -> PyResult<Written> {
    let mut views = Vec::with_capacity(buffers.len());
    for b in buffers.iter() {
        views.push(SourceBytes::of(&b)?);
    }
    let total_inline: usize = data.len() + views.iter().map(|v| v.len()).sum::<usize>();
    let contiguous = views.iter().all(|v| v.held().is_some());
    if (total_inline as u64) < c.inline_threshold || !contiguous || !c.has_store() {
        let bufs = views.into_iter().map(|v| ByteBuf::from(v.into_vec())).collect();
        return Ok(Written {
            data: ObjectData::inline(data.to_vec(), bufs, contained),
            pending_seg: None,
        });
    }
    let buffer_lens: Vec<u64> = views.iter().map(|v| v.len() as u64).collect();
    let (offsets, size) = shm_layout(data.len() as u64, &buffer_lens);
    let srcs: Vec<Src> = views
        .iter()
        .filter_map(SourceBytes::held)
        .map(|h| Src { ptr: h.ptr(), len: h.len() })
        .collect();
    let data_src = Src { ptr: data.as_ptr() as usize, len: data.len() };
    let copy = |dst: usize| {
        // SAFETY: `dst` is a fresh segment of `size` bytes in our mapping; the sources are
        // Python buffers kept exported (and so alive) by `views` and `data` for this call.
        unsafe {
            std::ptr::copy_nonoverlapping(data_src.ptr as *const u8, dst as *mut u8, data_src.len);
            for (s, off) in srcs.iter().zip(&offsets) {
                copy_large(s.ptr, dst + *off as usize, s.len);
            }
        }
    };
    let loc = |seg, offset| ShmLoc {
        seg,
        offset,
        size,
        data_len: data.len() as u64,
        buffer_lens: buffer_lens.clone(),
    };
    match &c.backend {
        Backend::Node(n) => {
            let store = n.store().clone();
            let (seg, offset) = py
                .detach(|| -> Result<(u64, u64), String> {
                    let (seg, offset) =
                        store.alloc(Owner::Local, size).map_err(|e| e.to_string())?;
                    let Some(dst) = store.arena().ptr(offset, size) else {
                        store.release(seg, Owner::Local);
                        return Err("segment out of range".into());
                    };
                    copy(dst as usize);
                    Ok((seg, offset))
                })
                .map_err(|e| store_full(py, e))?;
            let sealed = store.seal(Owner::Local, seg, size, object).map_err(|e| {
                store.release(seg, Owner::Local);
                PyRuntimeError::new_err(e.to_string())
            })?;
            let mut d = ObjectData::inline(Vec::new(), Vec::new(), contained);
            d.shm = Some(loc(seg, offset));
            d.keep = Keep(Some(sealed));
            Ok(Written { data: d, pending_seg: None })
        }
        Backend::Worker(w) => {
            let (seg, offset) = py
                .detach(|| -> Result<(u64, u64), String> {
                    let (seg, offset) = w.alloc(size)?;
                    let arena = w.arena().ok_or("no object store")?;
                    let Some(dst) = arena.ptr(offset, size) else {
                        w.release_segments(vec![seg]);
                        return Err("the node gave a segment outside the store".into());
                    };
                    copy(dst as usize);
                    Ok((seg, offset))
                })
                .map_err(|e| store_full(py, e))?;
            let mut d = ObjectData::inline(Vec::new(), Vec::new(), contained);
            d.shm = Some(loc(seg, offset));
            Ok(Written { data: d, pending_seg: Some(seg) })
        }
    }
}

/// `(data, [buffers])` for a value: bytes objects when inline, read-only memoryviews into shared
/// memory when mapped.
pub fn value_to_py<'py>(
    py: Python<'py>,
    v: &ObjectData,
    mapped: Option<&Mapped>,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyList>)> {
    let (Some(loc), Some(m)) = (&v.shm, mapped) else {
        let bufs: Vec<Bound<'py, PyBytes>> =
            v.buffers.iter().map(|b| PyBytes::new(py, b)).collect();
        return Ok((PyBytes::new(py, &v.data).into_any(), PyList::new(py, bufs)?));
    };
    let (offsets, total) = shm_layout(loc.data_len, &loc.buffer_lens);
    if total as usize > m.len {
        return Err(PyRuntimeError::new_err("a stored value's layout exceeds its segment"));
    }
    let owner = Bound::new(
        py,
        ShmBuffer {
            len: m.len,
            guard: std::mem::ManuallyDrop::new(m.guard.clone()),
            generation: crate::client::fork_generation(),
        },
    )?;
    let whole = shared_view(owner.as_any(), m.ptr, m.len)?;
    let slice = |start: u64, len: u64| -> PyResult<Bound<'py, PyAny>> {
        let s = PySlice::new(py, start as isize, (start + len) as isize, 1);
        whole.get_item(s)
    };
    let data = slice(0, loc.data_len)?;
    let list = PyList::empty(py);
    for (off, len) in offsets.iter().zip(&loc.buffer_lens) {
        list.append(slice(*off, *len)?)?;
    }
    Ok((data, list))
}
