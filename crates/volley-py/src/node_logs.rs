//! Bindings for another node's log files (`volley logs --node N`): one request to the
//! cluster's head at an address (or `local:<socket>` for a driver's embedded node), which
//! relays it to node N (`volley_runtime`'s `cluster::node_ask`); conversion only.

use pyo3::exceptions::{PyConnectionError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use volley_proto::{HeadAnswer, HeadRequest, NodeAnswer, NodeAsk, NodeId, NodeRequest};

use crate::cluster::load_tls;

/// Asks node `node` through the head at `address`, with the GIL released. The node's refusal
/// (a bad name, no such node, a node that did not answer) is a `ValueError`; a head that
/// cannot be reached, a `ConnectionError` naming the address.
fn ask(
    py: Python<'_>,
    address: &str,
    token: &str,
    tls_cert: Option<String>,
    node: u32,
    req: NodeRequest,
) -> PyResult<NodeAnswer> {
    let tls = load_tls(tls_cert, None)?;
    let req = HeadRequest::NodeAsk(NodeAsk { node: NodeId(node), req });
    let answer = py
        .detach(|| volley_runtime::ask_head_at(address, token.as_bytes(), tls.as_deref(), req))
        .map_err(|e| {
            PyConnectionError::new_err(format!("could not reach the head at {address}: {e}"))
        })?;
    match answer {
        HeadAnswer::Node(NodeAnswer::Error(why)) | HeadAnswer::Error(why) => {
            Err(PyValueError::new_err(why))
        }
        HeadAnswer::Node(a) => Ok(a),
        other => Err(PyValueError::new_err(format!("unexpected answer from the head: {other:?}"))),
    }
}

/// The log files of node `node`'s session directory, as `list_logs` describes them, the pid
/// of that node's process, and the name of its own log among them (None if elsewhere):
/// `(files, node_pid, own_log)`.
#[pyfunction]
#[pyo3(signature = (address, token, node, tls_cert = None))]
fn node_logs<'py>(
    py: Python<'py>,
    address: &str,
    token: &str,
    node: u32,
    tls_cert: Option<String>,
) -> PyResult<(Vec<Bound<'py, PyDict>>, u32, Option<String>)> {
    match ask(py, address, token, tls_cert, node, NodeRequest::ListLogs)? {
        NodeAnswer::Logs { files, node_pid, own_log } => {
            Ok((crate::logs::log_dicts(py, files)?, node_pid, own_log))
        }
        other => Err(PyValueError::new_err(format!("unexpected answer: {other:?}"))),
    }
}

/// At most `max` bytes (1 MiB at most per answer) of log `name` of node `node` from `offset`
/// (None: its last `max` bytes), as `read_log` gives them: `(data, offset, next_offset, size)`.
#[pyfunction]
#[pyo3(signature = (address, token, node, name, offset = None, max = 65536, tls_cert = None))]
#[allow(clippy::too_many_arguments)]
fn node_read_log<'py>(
    py: Python<'py>,
    address: &str,
    token: &str,
    node: u32,
    name: String,
    offset: Option<u64>,
    max: u64,
    tls_cert: Option<String>,
) -> PyResult<(Bound<'py, PyBytes>, u64, u64, u64)> {
    match ask(py, address, token, tls_cert, node, NodeRequest::ReadLog { name, offset, max })? {
        NodeAnswer::Log { data, offset, next_offset, size } => {
            Ok((PyBytes::new(py, &data), offset, next_offset, size))
        }
        other => Err(PyValueError::new_err(format!("unexpected answer: {other:?}"))),
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(node_logs, m)?)?;
    m.add_function(wrap_pyfunction!(node_read_log, m)?)?;
    Ok(())
}
