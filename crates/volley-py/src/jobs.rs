//! Bindings for submitted jobs (`volley.job`, `volley job ...`): one request to the cluster's
//! head at an address, from any process (no volley session needed), answered with job rows as
//! dicts. The head does the work (`volley_runtime::head::jobs`).

use pyo3::exceptions::{PyConnectionError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use volley_proto::{HeadAnswer, HeadRequest, JobRow, JobSpec};

use crate::cluster::load_tls;

/// Sends `req` to the head at `address` with the GIL released. The head's refusal is a
/// `ValueError`; a head that cannot be reached, a `ConnectionError` naming the address.
fn ask(
    py: Python<'_>,
    address: &str,
    token: &str,
    tls_cert: Option<String>,
    req: HeadRequest,
) -> PyResult<HeadAnswer> {
    if let Some(why) = req.check() {
        return Err(PyValueError::new_err(why));
    }
    let tls = load_tls(tls_cert, None)?;
    let answer = py
        .detach(|| volley_runtime::ask_head_at(address, token.as_bytes(), tls.as_deref(), req))
        .map_err(|e| {
            PyConnectionError::new_err(format!("could not reach the head at {address}: {e}"))
        })?;
    match answer {
        HeadAnswer::JobRefused(why) => Err(PyValueError::new_err(why)),
        HeadAnswer::Error(why) => {
            Err(PyConnectionError::new_err(format!("the head at {address}: {why}")))
        }
        other => Ok(other),
    }
}

fn unexpected(answer: HeadAnswer) -> PyErr {
    PyRuntimeError::new_err(format!("unexpected answer from the head: {answer:?}"))
}

/// A job row as a dict (the state API's `job` row).
fn row_dict<'py>(py: Python<'py>, r: &JobRow) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("job_id", &r.job_id)?;
    d.set_item("status", r.status.as_str())?;
    d.set_item("entrypoint", &r.entrypoint)?;
    d.set_item("driver_pid", r.driver_pid)?;
    d.set_item("start_ms", r.start_ms)?;
    d.set_item("end_ms", r.end_ms)?;
    d.set_item("exit_code", r.exit_code)?;
    d.set_item("message", &r.message)?;
    d.set_item("driver_node", r.driver_node)?;
    Ok(d)
}

fn one_row(py: Python<'_>, answer: HeadAnswer) -> PyResult<Bound<'_, PyDict>> {
    match answer {
        HeadAnswer::Job(row) => row_dict(py, &row),
        other => Err(unexpected(other)),
    }
}

/// Submits a job to the head at `address`: its row. `working_dir` is the hash of a package
/// uploaded with `job_upload`; `resources` are in thousandths; `pip` is `pip install`'s
/// arguments.
#[pyfunction]
#[pyo3(signature = (address, token, tls_cert, argv, entrypoint, submission_id, working_dir, env_vars, resources=Vec::new(), pip=Vec::new()))]
#[allow(clippy::too_many_arguments)]
fn job_submit<'py>(
    py: Python<'py>,
    address: &str,
    token: &str,
    tls_cert: Option<String>,
    argv: Vec<String>,
    entrypoint: String,
    submission_id: Option<String>,
    working_dir: Option<String>,
    env_vars: Vec<(String, String)>,
    resources: Vec<(String, u64)>,
    pip: Vec<String>,
) -> PyResult<Bound<'py, PyDict>> {
    let spec = JobSpec { submission_id, argv, entrypoint, working_dir, env_vars, resources, pip };
    let answer = ask(py, address, token, tls_cert, HeadRequest::JobSubmit(spec))?;
    one_row(py, answer)
}

/// Job `job_id`'s row.
#[pyfunction]
fn job_status<'py>(
    py: Python<'py>,
    address: &str,
    token: &str,
    tls_cert: Option<String>,
    job_id: String,
) -> PyResult<Bound<'py, PyDict>> {
    let answer = ask(py, address, token, tls_cert, HeadRequest::JobStatus { id: job_id })?;
    one_row(py, answer)
}

/// Stops job `job_id`: its row as it is now.
#[pyfunction]
fn job_stop<'py>(
    py: Python<'py>,
    address: &str,
    token: &str,
    tls_cert: Option<String>,
    job_id: String,
) -> PyResult<Bound<'py, PyDict>> {
    let answer = ask(py, address, token, tls_cert, HeadRequest::JobStop { id: job_id })?;
    one_row(py, answer)
}

/// Every job the head knows, oldest first.
#[pyfunction]
fn job_list<'py>(
    py: Python<'py>,
    address: &str,
    token: &str,
    tls_cert: Option<String>,
) -> PyResult<Vec<Bound<'py, PyDict>>> {
    match ask(py, address, token, tls_cert, HeadRequest::JobList)? {
        HeadAnswer::Jobs(rows) => rows.iter().map(|r| row_dict(py, r)).collect(),
        other => Err(unexpected(other)),
    }
}

/// Job `job_id`'s output from byte `offset`: `(chunk, next_offset, done)`.
#[pyfunction]
fn job_logs<'py>(
    py: Python<'py>,
    address: &str,
    token: &str,
    tls_cert: Option<String>,
    job_id: String,
    offset: u64,
) -> PyResult<(Bound<'py, PyBytes>, u64, bool)> {
    match ask(py, address, token, tls_cert, HeadRequest::JobLogs { id: job_id, offset })? {
        HeadAnswer::JobLogs { data, next, done } => Ok((PyBytes::new(py, &data), next, done)),
        other => Err(unexpected(other)),
    }
}

/// Sends a chunk of a job's zipped working directory (`hash`, `total` bytes in all) at
/// `offset`: the bytes of it the head has now (`total` once it is stored).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn job_upload(
    py: Python<'_>,
    address: &str,
    token: &str,
    tls_cert: Option<String>,
    hash: String,
    total: u64,
    offset: u64,
    data: Vec<u8>,
) -> PyResult<u64> {
    let req = HeadRequest::JobUpload { hash, total, offset, data };
    match ask(py, address, token, tls_cert, req)? {
        HeadAnswer::JobUploaded(have) => Ok(have),
        other => Err(unexpected(other)),
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(job_upload, m)?)?;
    m.add_function(wrap_pyfunction!(job_submit, m)?)?;
    m.add_function(wrap_pyfunction!(job_status, m)?)?;
    m.add_function(wrap_pyfunction!(job_stop, m)?)?;
    m.add_function(wrap_pyfunction!(job_list, m)?)?;
    m.add_function(wrap_pyfunction!(job_logs, m)?)?;
    Ok(())
}
