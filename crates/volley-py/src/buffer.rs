//! Python buffers in and out of the store under the stable ABI (abi3, Python 3.9 and newer).
//!
//! The extension is built once for every Python from 3.9 on, against the limited API. Before
//! 3.11 that API has neither the buffer protocol's C structure (`Py_buffer`, needed to read a
//! user's buffer without copying it) nor buffer slots on a class (needed to export shared memory
//! without copying it), so PyO3 offers neither `PyBuffer` nor `__getbuffer__` there. The two
//! directions are solved differently:
//!
//! - Reading (the put path): [`HeldBuffer`] declares `PyObject_GetBuffer`, `PyBuffer_Release`
//!   and `Py_buffer` itself. Their ABI has not changed since Python 3.3, and 3.11 added them to
//!   the stable ABI as they were, so the declaration holds for every Python we load into. The
//!   alternative, a Python-level copy of each buffer, would double the cost of a large put.
//! - Writing (the get path): [`shared_view`] makes a `ctypes` array over the mapping with
//!   `from_address` (no copy), attaches the Rust owner of the mapping to it as an attribute, and
//!   hands out read-only `memoryview`s of it. A memoryview (and every slice of it, and every numpy
//!   array built on one) references the array, the array references the owner, so the mapping
//!   stays as long as any view does: the same lifetime the old `__getbuffer__` class gave. One
//!   large array type, sliced, avoids making a ctypes type per size (type creation is slow).
//!   The cost is about a microsecond per value taken out of the store.

use std::ffi::{c_char, c_int, c_void};

use pyo3::exceptions::{PyBufferError, PyValueError};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyMemoryView, PySlice};

/// `Py_buffer`, as laid out since Python 3.3 (Include/pybuffer.h).
#[repr(C)]
struct RawBuffer {
    buf: *mut c_void,
    obj: *mut ffi::PyObject,
    len: ffi::Py_ssize_t,
    itemsize: ffi::Py_ssize_t,
    readonly: c_int,
    ndim: c_int,
    format: *mut c_char,
    shape: *mut ffi::Py_ssize_t,
    strides: *mut ffi::Py_ssize_t,
    suboffsets: *mut ffi::Py_ssize_t,
    internal: *mut c_void,
}

/// `PyBUF_SIMPLE`: one contiguous run of bytes, read-only is fine; an exporter that cannot give
/// that (a strided view) raises `BufferError`.
const PYBUF_SIMPLE: c_int = 0;

extern "C" {
    fn PyObject_GetBuffer(obj: *mut ffi::PyObject, view: *mut RawBuffer, flags: c_int) -> c_int;
    fn PyBuffer_Release(view: *mut RawBuffer);
}

/// A Python object's buffer, held exported (so its memory stays put) until dropped.
pub struct HeldBuffer {
    // Boxed: an exporter may keep the address of the view it filled in.
    view: Box<RawBuffer>,
}

impl HeldBuffer {
    /// The buffer of `obj` as one contiguous run of bytes, or `None` (error cleared) when the
    /// object has a buffer that is not contiguous. An object without a buffer is an error.
    fn get(obj: &Bound<'_, PyAny>) -> PyResult<Option<Self>> {
        let mut view = Box::new(RawBuffer {
            buf: std::ptr::null_mut(),
            obj: std::ptr::null_mut(),
            len: 0,
            itemsize: 0,
            readonly: 0,
            ndim: 0,
            format: std::ptr::null_mut(),
            shape: std::ptr::null_mut(),
            strides: std::ptr::null_mut(),
            suboffsets: std::ptr::null_mut(),
            internal: std::ptr::null_mut(),
        });
        // SAFETY: `obj` is a live object (we hold the GIL) and `view` a writable Py_buffer.
        let rc = unsafe { PyObject_GetBuffer(obj.as_ptr(), &mut *view, PYBUF_SIMPLE) };
        if rc == 0 {
            if view.len < 0 || (view.buf.is_null() && view.len > 0) {
                // SAFETY: acquired just above, released once.
                unsafe { PyBuffer_Release(&mut *view) };
                return Err(PyValueError::new_err("a buffer reported a negative length"));
            }
            return Ok(Some(HeldBuffer { view }));
        }
        let err = PyErr::fetch(obj.py());
        if err.is_instance_of::<PyBufferError>(obj.py()) {
            Ok(None)
        } else {
            Err(err)
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        // Checked non-negative in `get`.
        self.view.len as usize
    }

    /// The bytes, borrowed while the buffer is held.
    pub fn as_slice(&self) -> &[u8] {
        if self.len() == 0 {
            return &[];
        }
        // SAFETY: the exporter guarantees `len` readable bytes at `buf` while the view is held,
        // and `self` holds it.
        unsafe { std::slice::from_raw_parts(self.view.buf as *const u8, self.len()) }
    }
}

impl Drop for HeldBuffer {
    fn drop(&mut self) {
        // SAFETY: acquired in `get`, released once; the GIL is taken for it.
        Python::attach(|_| unsafe { PyBuffer_Release(&mut *self.view) });
    }
}

/// The bytes of one out-of-band buffer of a value being stored.
pub enum SourceBytes {
    /// Held in place: copied straight into the store (the GIL released).
    Held(HeldBuffer),
    /// A strided buffer, gathered into one run with a copy; such a value is stored inline.
    Gathered(Vec<u8>),
}

impl SourceBytes {
    /// The bytes of `obj`'s buffer, in place if it is contiguous.
    pub fn of(obj: &Bound<'_, PyAny>) -> PyResult<Self> {
        if let Some(held) = HeldBuffer::get(obj)? {
            return Ok(SourceBytes::Held(held));
        }
        let py = obj.py();
        let gathered = PyMemoryView::from(obj)?.call_method0(intern!(py, "tobytes"))?;
        Ok(SourceBytes::Gathered(gathered.extract::<Vec<u8>>()?))
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        match self {
            SourceBytes::Held(h) => h.len(),
            SourceBytes::Gathered(v) => v.len(),
        }
    }

    /// The held buffer, if the bytes are in place.
    pub fn held(&self) -> Option<&HeldBuffer> {
        match self {
            SourceBytes::Held(h) => Some(h),
            SourceBytes::Gathered(_) => None,
        }
    }

    /// The bytes as an owned vector (a copy for a held buffer).
    pub fn into_vec(self) -> Vec<u8> {
        match self {
            SourceBytes::Held(h) => h.as_slice().to_vec(),
            SourceBytes::Gathered(v) => v,
        }
    }
}

/// The largest mapping [`shared_view`] can expose: the length of the one ctypes array type.
const MAX_VIEW: usize = 1 << 40;

/// `(ctypes.c_char * MAX_VIEW).from_address`, looked up once per process.
static FROM_ADDRESS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// A read-only `memoryview` (format `B`) of `len` bytes at `ptr`, without a copy, that keeps
/// `owner` alive as long as it or any view taken from it lives (see the module docs).
///
/// The caller guarantees that `len` bytes at `ptr` stay mapped and unchanged while `owner` lives.
pub fn shared_view<'py>(
    owner: &Bound<'py, PyAny>,
    ptr: usize,
    len: usize,
) -> PyResult<Bound<'py, PyAny>> {
    let py = owner.py();
    if len > MAX_VIEW {
        return Err(PyValueError::new_err(format!(
            "a stored value of {len} bytes is larger than the {MAX_VIEW} bytes a view can show"
        )));
    }
    let from_address = FROM_ADDRESS.get_or_try_init(py, || -> PyResult<Py<PyAny>> {
        let c_char = py.import("ctypes")?.getattr("c_char")?;
        Ok(c_char.mul(MAX_VIEW)?.getattr("from_address")?.unbind())
    })?;
    let array = from_address.bind(py).call1((ptr,))?;
    array.setattr(intern!(py, "owner"), owner)?;
    let whole = PyMemoryView::from(&array)?;
    whole
        .get_item(PySlice::new(py, 0, len as isize, 1))?
        .call_method1(intern!(py, "cast"), (intern!(py, "B"),))?
        .call_method0(intern!(py, "toreadonly"))
}
