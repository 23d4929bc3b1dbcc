//! Bindings for logs: the worker log files kept in the session directory (`volley logs`) and the
//! node's event lines, which a driver passes to Python's `logging`.

use std::convert::Infallible;
use std::path::PathBuf;
use std::time::Duration;

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use volley_runtime::RuntimeError;

use crate::errors::enter;

fn log_err(e: RuntimeError) -> PyErr {
    match e {
        RuntimeError::Io(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
            PyValueError::new_err(e.to_string())
        }
        RuntimeError::Io(e) => PyOSError::new_err(e.to_string()),
        other => PyOSError::new_err(other.to_string()),
    }
}

/// Keeps each worker's output in a log file in `path` (the session directory's `logs/`);
/// None: keeps none.
#[pyfunction]
#[pyo3(signature = (path = None))]
fn set_worker_log_dir(path: Option<String>) {
    volley_runtime::set_worker_log_dir(path.map(PathBuf::from));
}

/// The log files of directory `path`: a dict each (`name`, `kind`, `pid`, `node_pid`, `size`,
/// `modified_ms`).
#[pyfunction]
fn list_logs(py: Python<'_>, path: String) -> PyResult<Vec<Bound<'_, PyDict>>> {
    let files = volley_runtime::list_logs(std::path::Path::new(&path)).map_err(log_err)?;
    files
        .into_iter()
        .map(|f| {
            let d = PyDict::new(py);
            d.set_item("name", f.name)?;
            d.set_item("kind", f.kind)?;
            d.set_item("pid", f.pid)?;
            d.set_item("node_pid", f.node_pid)?;
            d.set_item("size", f.size)?;
            d.set_item("modified_ms", f.modified_ms)?;
            Ok(d)
        })
        .collect()
}

/// At most `max` bytes of log `name` in directory `path` from `offset` (None: its last `max`
/// bytes): `(data, offset, next_offset, size)`.
#[pyfunction]
#[pyo3(signature = (path, name, offset = None, max = 65536))]
fn read_log<'py>(
    py: Python<'py>,
    path: String,
    name: String,
    offset: Option<u64>,
    max: usize,
) -> PyResult<(Bound<'py, PyBytes>, u64, u64, u64)> {
    let dir = PathBuf::from(path);
    let chunk = py
        .detach(|| volley_runtime::read_log(&dir, &name, offset, max.min(64 << 20)))
        .map_err(log_err)?;
    Ok((PyBytes::new(py, &chunk.data), chunk.offset, chunk.next_offset, chunk.size))
}

/// Sends the node's event lines to a queue that `next_events` reads (True), or back to stderr.
#[pyfunction]
fn route_events(on: bool) {
    volley_runtime::route_events(on);
}

/// The event lines queued since the last call, `(level, line)` with Python's level numbers;
/// waits up to `timeout` seconds for one (GIL released).
#[pyfunction]
fn next_events(py: Python<'_>, timeout: f64) -> PyResult<Vec<(u8, String)>> {
    let timeout = Duration::from_secs_f64(timeout.clamp(0.0, 3600.0));
    enter(py, || Ok::<_, Infallible>(volley_runtime::next_events(timeout)))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(set_worker_log_dir, m)?)?;
    m.add_function(wrap_pyfunction!(list_logs, m)?)?;
    m.add_function(wrap_pyfunction!(read_log, m)?)?;
    m.add_function(wrap_pyfunction!(route_events, m)?)?;
    m.add_function(wrap_pyfunction!(next_events, m)?)?;
    Ok(())
}
