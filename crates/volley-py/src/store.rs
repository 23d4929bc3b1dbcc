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
use pyo3::types::{PyBytes, PyList, PySlice};
use serde_bytes::ByteBuf;
use volley_proto::{shm_layout, ObjectData, ObjectId};
use volley_runtime::client::store::Written;
use volley_runtime::client::{Client, Mapped};

use crate::buffer::{shared_view, SourceBytes};
use crate::errors::enter;

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

/// Builds an `ObjectData` from a pickle stream and its out-of-band buffers: inline if small,
/// else copied once into the store (see `volley_runtime::client::store`). `object` names it in
/// the store's listing.
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
    let total: usize = data.len() + views.iter().map(|v| v.len()).sum::<usize>();
    let contiguous = views.iter().all(|v| v.held().is_some());
    if !contiguous || !c.goes_to_store(total) {
        let bufs = views.into_iter().map(|v| ByteBuf::from(v.into_vec())).collect();
        return Ok(Written {
            data: ObjectData::inline(data.to_vec(), bufs, contained),
            pending_seg: None,
        });
    }
    // Borrowed from buffers held exported (so alive and in place) by `views` past the copy.
    let slices: Vec<&[u8]> =
        views.iter().filter_map(SourceBytes::held).map(|h| h.as_slice()).collect();
    enter(py, || c.write_to_store(data, &slices, contained, object))
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
