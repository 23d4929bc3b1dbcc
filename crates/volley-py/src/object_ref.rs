//! `ObjectRef`, the future of a task's result or a stored value.

use std::cell::RefCell;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};
use volley_proto::ObjectId;

use crate::client::{self, Client};

/// A reference to an object that exists, or will once its task finishes.
///
/// Hashable and comparable by id; picklable (a ref pickled inside an argument or a result travels
/// as a ref and keeps its object alive); `await ref` works in asyncio and `ref.future()` gives a
/// `concurrent.futures.Future`. The object is freed once no ref to it remains in any process.
///
/// >>> ref = volley.put(41)
/// >>> volley.get(ref) + 1
/// 42
#[pyclass(module = "volley._core", frozen, weakref)]
pub struct ObjectRef {
    pub id: ObjectId,
    client: Option<Arc<Client>>,
}

thread_local! {
    /// Ids of refs pickled since `begin_capture` on this thread.
    static CAPTURE: RefCell<Option<Vec<ObjectId>>> = const { RefCell::new(None) };
}

impl ObjectRef {
    /// A new handle on `id`, counted in this process's reference table.
    pub fn new(id: ObjectId, counted_by_node: bool) -> ObjectRef {
        let client = client::current();
        if let Some(c) = &client {
            c.hold(id, counted_by_node);
        }
        ObjectRef { id, client }
    }

    /// An error if this ref was inherited from the process this one was forked from: its value
    /// lives in the parent's volley, which this process cannot reach.
    pub fn check_not_inherited(&self) -> PyResult<()> {
        match &self.client {
            Some(c) if c.is_foreign() => Err(pyo3::exceptions::PyRuntimeError::new_err(format!(
                "ObjectRef({}) belongs to the volley of the process this one was forked from; a \
                 forked child runs a volley of its own and cannot read its parent's objects \
                 (pass the value itself, or use volley's own Pool or the 'spawn' start method)",
                self.id.hex()
            ))),
            _ => Ok(()),
        }
    }
}

impl Drop for ObjectRef {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            if c.is_foreign() {
                // The parent's: its count is the parent's business, and its client is never
                // dropped here.
                std::mem::forget(c);
            } else {
                c.release(self.id);
            }
        }
    }
}

#[pymethods]
impl ObjectRef {
    fn __hash__(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.id.hash(&mut h);
        h.finish()
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other.cast::<ObjectRef>().is_ok_and(|o| o.get().id == self.id)
    }

    fn __repr__(&self) -> String {
        format!("ObjectRef({})", self.id.hex())
    }

    /// `ObjectRef[int]`: a ref to an `int`, for type hints (the same class at run time).
    #[classmethod]
    fn __class_getitem__<'py>(
        cls: &Bound<'py, pyo3::types::PyType>,
        item: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let generic_alias = cls.py().import("types")?.getattr("GenericAlias")?;
        generic_alias.call1((cls, item))
    }

    /// The id as a hex string.
    fn hex(&self) -> String {
        self.id.hex()
    }

    /// The id as bytes.
    fn binary<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.id.to_bytes())
    }

    /// Pickling keeps the ref a ref; `volley` records it so the enclosing value keeps it alive.
    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        CAPTURE.with(|c| {
            if let Some(v) = c.borrow_mut().as_mut() {
                v.push(self.id);
            }
        });
        let rebuild = py.import("volley._core")?.getattr("_rebuild_ref")?;
        let args = PyTuple::new(py, [PyBytes::new(py, &self.id.to_bytes())])?;
        PyTuple::new(py, [rebuild.into_any(), args.into_any()])
    }

    /// A `concurrent.futures.Future` completed with the value (or the error) of this ref.
    fn future<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        slf.py().import("volley._futures")?.getattr("future_of")?.call1((slf,))
    }

    fn __await__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        slf.py().import("volley._futures")?.getattr("await_ref")?.call1((slf,))
    }
}

pub fn id_from_bytes(b: &[u8]) -> PyResult<ObjectId> {
    ObjectId::from_bytes(b).ok_or_else(|| PyValueError::new_err("an object id is 20 bytes"))
}

/// Rebuilds a pickled ref in this process.
#[pyfunction]
pub fn _rebuild_ref(id: &[u8]) -> PyResult<ObjectRef> {
    Ok(ObjectRef::new(id_from_bytes(id)?, false))
}

/// Starts recording the refs pickled on this thread.
#[pyfunction]
pub fn begin_capture() {
    CAPTURE.with(|c| *c.borrow_mut() = Some(Vec::new()));
}

/// Stops recording and returns the ids recorded, as bytes.
#[pyfunction]
pub fn end_capture(py: Python<'_>) -> Vec<Bound<'_, PyBytes>> {
    let ids = CAPTURE.with(|c| c.borrow_mut().take()).unwrap_or_default();
    ids.iter().map(|id| PyBytes::new(py, &id.to_bytes())).collect()
}
