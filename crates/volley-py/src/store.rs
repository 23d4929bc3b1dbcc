//! Values in and out of the shared-memory store, as Python sees them.
//!
//! Writing: a value's pickle stream and out-of-band buffers are copied once, straight from the
//! Python buffers into a store segment (the GIL released during the copy). Reading: the segment
//! is exposed through a read-only [`ShmBuffer`]; the pickle stream and each buffer are
//! `memoryview` slices of it, so numpy arrays rebuilt from them are views of shared memory. The
//! buffer holds the lease that keeps the segment in place; the lease goes when the last view
//! does.

use std::any::Any;
use std::os::raw::c_int;
use std::sync::Arc;

use pyo3::exceptions::{PyBufferError, PyRuntimeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyMemoryView, PySlice};
use serde_bytes::ByteBuf;
use volley_proto::{shm_layout, ObjectData, ObjectId};
use volley_runtime::client::store::Written;
use volley_runtime::client::{Client, Mapped};

use crate::errors::enter;

/// Read-only memory of one stored value (see the module docs).
#[pyclass(module = "volley._core", frozen)]
pub struct ShmBuffer {
    ptr: usize,
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
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let me = slf.get();
        // SAFETY: `view` comes from Python's buffer machinery; the memory stays mapped while
        // this object (which the view references) lives. Read-only: a writable request fails.
        let rc = unsafe {
            ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                me.ptr as *mut std::ffi::c_void,
                me.len as ffi::Py_ssize_t,
                1,
                flags,
            )
        };
        if rc == -1 {
            return Err(PyErr::take(slf.py())
                .unwrap_or_else(|| PyBufferError::new_err("shared memory is read-only")));
        }
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {}

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
        views.push(pyo3::buffer::PyBuffer::<u8>::get(&b)?);
    }
    let total: usize = data.len() + views.iter().map(|v| v.len_bytes()).sum::<usize>();
    let contiguous = views.iter().all(|v| v.is_c_contiguous());
    if !contiguous || !c.goes_to_store(total) {
        let mut bufs = Vec::with_capacity(views.len());
        for v in &views {
            bufs.push(ByteBuf::from(v.to_vec(py)?));
        }
        return Ok(Written {
            data: ObjectData::inline(data.to_vec(), bufs, contained),
            pending_seg: None,
        });
    }
    let slices: Vec<&[u8]> = views
        .iter()
        // SAFETY: each buffer is C-contiguous (checked above) and stays exported, so alive and
        // in place, while `views` lives, which is past the copy below.
        .map(|v| match v.len_bytes() {
            0 => &[][..],
            n => unsafe { std::slice::from_raw_parts(v.buf_ptr() as *const u8, n) },
        })
        .collect();
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
            ptr: m.ptr,
            len: m.len,
            guard: std::mem::ManuallyDrop::new(m.guard.clone()),
            generation: crate::client::fork_generation(),
        },
    )?;
    let whole = PyMemoryView::from(owner.as_any())?;
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
