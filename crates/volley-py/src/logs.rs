//! Bindings for logs: the worker log files kept in the session directory (`volley logs`) and the
//! node's event lines, which a driver passes to Python's `logging`.

use std::os::fd::IntoRawFd;
use std::path::PathBuf;

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use volley_runtime::RuntimeError;

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
    log_dicts(py, files)
}

/// Log files as the Python side takes them: a dict each (`name`, `kind`, `pid`, `node_pid`,
/// `size`, `modified_ms`), for this machine's list and another node's alike.
pub(crate) fn log_dicts(
    py: Python<'_>,
    files: Vec<volley_runtime::LogFile>,
) -> PyResult<Vec<Bound<'_, PyDict>>> {
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

/// Sends the node's event lines to a queue (`take_events`) and returns the read end of a pipe
/// that gets a byte per line (its end: routing stopped); `on=False` stops (returns None).
#[pyfunction]
fn route_events(on: bool) -> PyResult<Option<i32>> {
    if !on {
        volley_runtime::stop_routing_events();
        return Ok(None);
    }
    let fd = volley_runtime::route_events().map_err(|e| PyOSError::new_err(e.to_string()))?;
    Ok(Some(fd.into_raw_fd()))
}

/// The event lines queued since the last call, `(level, line)` with Python's level numbers.
#[pyfunction]
fn take_events() -> Vec<(u8, String)> {
    volley_runtime::take_events()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(set_worker_log_dir, m)?)?;
    m.add_function(wrap_pyfunction!(list_logs, m)?)?;
    m.add_function(wrap_pyfunction!(read_log, m)?)?;
    m.add_function(wrap_pyfunction!(route_events, m)?)?;
    m.add_function(wrap_pyfunction!(take_events, m)?)?;
    Ok(())
}
