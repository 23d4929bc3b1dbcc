//! Bindings for the node's primitive service (`volley.util.queue`): conversion only; the
//! service is `volley_runtime::prims`. Every wait goes through [`enter`], so Ctrl-C interrupts
//! it (and cancels the parked op).

use std::time::Duration;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyType};
use volley_proto::{PrimOp, PrimResult};

use crate::client;
use crate::errors::{check_signals, enter};

/// `ChannelClosed(msg)` from `volley.exceptions`.
pub(crate) fn closed(py: Python<'_>, msg: String) -> PyErr {
    let cls = py
        .import("volley.exceptions")
        .and_then(|m| m.getattr("ChannelClosed"))
        .and_then(|c| c.cast_into::<PyType>().map_err(PyErr::from));
    match cls {
        Ok(c) => PyErr::from_type(c, msg),
        Err(e) => e,
    }
}

pub(crate) fn timeout_of(timeout: Option<f64>) -> PyResult<Option<Duration>> {
    match timeout {
        Some(t) if t.is_nan() || t < 0.0 => {
            Err(PyValueError::new_err(format!("timeout must be a non-negative number, not {t}")))
        }
        Some(t) => Ok(Some(Duration::from_secs_f64(t.min(1e9)))),
        None => Ok(None),
    }
}

/// Runs `op` with the GIL released; `Closed` and `Error` answers become exceptions.
fn run(py: Python<'_>, op: PrimOp, timeout: Option<Duration>) -> PyResult<PrimResult> {
    let c = client()?;
    match enter(py, || c.prim(op, timeout, check_signals))? {
        PrimResult::Closed(m) => Err(closed(py, m)),
        PrimResult::Error(m) => Err(PyValueError::new_err(m)),
        r => Ok(r),
    }
}

fn unexpected(r: PrimResult) -> PyErr {
    PyRuntimeError::new_err(format!("the queue service answered {r:?}"))
}

/// Makes a queue on this process's node holding at most `maxsize` items (0: unbounded); its id.
#[pyfunction]
fn queue_create(py: Python<'_>, maxsize: u64) -> PyResult<u64> {
    match run(py, PrimOp::QueueCreate { maxsize }, None)? {
        PrimResult::Created(id) => Ok(id),
        r => Err(unexpected(r)),
    }
}

/// Appends `item`; False if the queue stayed full (`block` false, or `timeout` passed). With
/// `no_reply` (an unbounded queue, where a put always succeeds) a worker does not wait for
/// the node's answer: a failure is raised by its next queue op.
#[pyfunction]
#[pyo3(signature = (queue, item, block = true, timeout = None, no_reply = false))]
fn queue_put(
    py: Python<'_>,
    queue: u64,
    item: &Bound<'_, PyBytes>,
    block: bool,
    timeout: Option<f64>,
    no_reply: bool,
) -> PyResult<bool> {
    let timeout = timeout_of(timeout)?;
    let op = PrimOp::Put { queue, item: item.as_bytes().to_vec(), block };
    let result = if no_reply {
        let c = client()?;
        enter(py, || c.prim_no_reply(op))?
    } else {
        run(py, op, timeout)?
    };
    match result {
        PrimResult::Closed(m) => Err(closed(py, m)),
        PrimResult::Error(m) => Err(PyValueError::new_err(m)),
        PrimResult::Done => Ok(true),
        PrimResult::Full => Ok(false),
        r => Err(unexpected(r)),
    }
}

/// Takes the first item; None if the queue stayed empty (`block` false, or `timeout` passed).
#[pyfunction]
#[pyo3(signature = (queue, block = true, timeout = None))]
fn queue_get<'py>(
    py: Python<'py>,
    queue: u64,
    block: bool,
    timeout: Option<f64>,
) -> PyResult<Option<Bound<'py, PyBytes>>> {
    let timeout = timeout_of(timeout)?;
    match run(py, PrimOp::Get { queue, block }, timeout)? {
        PrimResult::Item(b) => Ok(Some(PyBytes::new(py, &b))),
        PrimResult::Empty => Ok(None),
        r => Err(unexpected(r)),
    }
}

/// Items in the queue now.
#[pyfunction]
fn queue_size(py: Python<'_>, queue: u64) -> PyResult<u64> {
    match run(py, PrimOp::Size { queue }, None)? {
        PrimResult::Size(n) => Ok(n),
        r => Err(unexpected(r)),
    }
}

/// Shuts the queue: every parked and later op on it raises `ChannelClosed`.
#[pyfunction]
fn queue_close(py: Python<'_>, queue: u64) -> PyResult<()> {
    run(py, PrimOp::Close { queue }, None).map(|_| ())
}

/// Marks one item got from the queue as processed.
#[pyfunction]
fn queue_task_done(py: Python<'_>, queue: u64) -> PyResult<()> {
    run(py, PrimOp::TaskDone { queue }, None).map(|_| ())
}

/// Waits until every item put has been marked done; False if `timeout` passed first.
#[pyfunction]
#[pyo3(signature = (queue, timeout = None))]
fn queue_join(py: Python<'_>, queue: u64, timeout: Option<f64>) -> PyResult<bool> {
    let timeout = timeout_of(timeout)?;
    match run(py, PrimOp::Join { queue }, timeout)? {
        PrimResult::Done => Ok(true),
        PrimResult::Empty => Ok(false),
        r => Err(unexpected(r)),
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(queue_create, m)?)?;
    m.add_function(wrap_pyfunction!(queue_put, m)?)?;
    m.add_function(wrap_pyfunction!(queue_get, m)?)?;
    m.add_function(wrap_pyfunction!(queue_size, m)?)?;
    m.add_function(wrap_pyfunction!(queue_close, m)?)?;
    m.add_function(wrap_pyfunction!(queue_task_done, m)?)?;
    m.add_function(wrap_pyfunction!(queue_join, m)?)?;
    Ok(())
}
