//! The one place engine errors become Python exceptions, and the one way into a blocking engine
//! call ([`enter`]), so that every call releases the GIL and turns Ctrl-C into
//! `KeyboardInterrupt` the same way.

use std::convert::Infallible;

use pyo3::exceptions::{PyRuntimeError, PyTimeoutError};
use pyo3::prelude::*;
use pyo3::types::PyType;
use volley_runtime::client::ClientError;
use volley_runtime::{RuntimeError, WaitError};

/// An engine error as the Python exception the caller sees.
pub trait IntoPyErr {
    fn into_py_err(self) -> PyErr;
}

impl IntoPyErr for ClientError {
    fn into_py_err(self) -> PyErr {
        match self {
            ClientError::StoreFull(m) => Python::attach(|py| store_full(py, m)),
            e @ (ClientError::Runtime(_)
            | ClientError::Closed
            | ClientError::WrongProcess(_)
            | ClientError::Unexpected(_)) => PyRuntimeError::new_err(e.to_string()),
        }
    }
}

impl IntoPyErr for RuntimeError {
    fn into_py_err(self) -> PyErr {
        PyRuntimeError::new_err(self.to_string())
    }
}

/// A wait that gave up: `TimeoutError`, the interrupt its check raised, or `RuntimeError`.
impl IntoPyErr for WaitError<PyErr> {
    fn into_py_err(self) -> PyErr {
        match self {
            WaitError::Timeout => PyTimeoutError::new_err("timed out"),
            WaitError::Interrupted(e) => e,
            WaitError::Closed => PyRuntimeError::new_err("volley has shut down"),
        }
    }
}

impl IntoPyErr for Infallible {
    fn into_py_err(self) -> PyErr {
        match self {}
    }
}

/// Runs a blocking engine call with the GIL released and maps its error. A call that waits
/// passes [`check_signals`] as its `check`, so Ctrl-C raises `KeyboardInterrupt` in it.
pub fn enter<T, E>(py: Python<'_>, f: impl FnOnce() -> Result<T, E> + Send) -> PyResult<T>
where
    T: Send,
    E: IntoPyErr + Send,
{
    py.detach(f).map_err(IntoPyErr::into_py_err)
}

/// The `check` of a blocking wait: a pending signal's exception (`KeyboardInterrupt`).
pub fn check_signals() -> PyResult<()> {
    Python::attach(|py| py.check_signals())
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
