//! Bindings of the state API (`volley.state`, `volley list`): a query in, the answer's JSON
//! text out (`{"kind", "rows", "total", "truncated", "dropped"}`); `volley/state.py` parses it.

use pyo3::exceptions::{PyConnectionError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use volley_proto::{ActorAnswer, ActorRequest, Filter, HeadAnswer, HeadRequest, StateQuery};
use volley_runtime::RuntimeError;

use crate::client::{self, Backend};
use crate::errors::enter;

type Filters = Vec<(String, String, String)>;

fn query(kind: String, filters: Filters, limit: Option<u64>, detail: bool) -> PyResult<StateQuery> {
    volley_runtime::state::kinds::check_kind(&kind).map_err(PyValueError::new_err)?;
    let filters = filters
        .into_iter()
        .map(|(key, op, value)| {
            let op = volley_runtime::state::parse_op(&op).ok_or_else(|| {
                PyValueError::new_err(format!("filter {key}: operator '{op}' is not = or !="))
            })?;
            Ok(Filter { key, op, value })
        })
        .collect::<PyResult<Vec<_>>>()?;
    Ok(StateQuery { kind, filters, limit, detail })
}

fn answer(r: Result<volley_proto::StateAnswer, RuntimeError>) -> PyResult<String> {
    match r {
        Ok(a) => Ok(volley_runtime::state::answer_json(&a)),
        Err(RuntimeError::Refused(why)) => Err(PyValueError::new_err(why)),
        Err(e) => Err(PyConnectionError::new_err(e.to_string())),
    }
}

/// Asks this process's cluster a state query (a driver's node, or a worker's node over its
/// socket); the answer as JSON text.
#[pyfunction]
#[pyo3(signature = (kind, filters, limit = None, detail = false))]
pub fn state_query(
    py: Python<'_>,
    kind: String,
    filters: Filters,
    limit: Option<u64>,
    detail: bool,
) -> PyResult<String> {
    let q = query(kind, filters, limit, detail)?;
    let c =
        client::current().ok_or_else(|| PyRuntimeError::new_err("volley is not initialised"))?;
    match &c.backend {
        Backend::Node(n) => answer(py.detach(|| n.state_query(&q))),
        Backend::Worker(_) => {
            match enter(py, || c.actor(ActorRequest::Head(HeadRequest::State(q))))? {
                ActorAnswer::Head(HeadAnswer::State(a)) => answer(Ok(a)),
                ActorAnswer::Head(HeadAnswer::Error(why)) => Err(PyValueError::new_err(why)),
                other => Err(PyRuntimeError::new_err(format!("unexpected answer: {other:?}"))),
            }
        }
    }
}

/// Asks the head at `address` a state query (`volley list --address`), authenticated with
/// `token`; the answer as JSON text. An unreachable head is a `ConnectionError` naming it.
#[pyfunction]
#[pyo3(signature = (address, token, kind, filters, limit = None, detail = false, tls_cert = None))]
#[allow(clippy::too_many_arguments)]
pub fn query_state(
    py: Python<'_>,
    address: String,
    token: String,
    kind: String,
    filters: Filters,
    limit: Option<u64>,
    detail: bool,
    tls_cert: Option<String>,
) -> PyResult<String> {
    let q = query(kind, filters, limit, detail)?;
    let tls = crate::cluster::load_tls(tls_cert, None)?;
    let r = py.detach(|| {
        volley_runtime::state::query_head(&address, token.as_bytes(), tls.as_deref(), q)
    });
    match r {
        Err(RuntimeError::Refused(why)) => Err(PyValueError::new_err(why)),
        Err(e) => Err(PyConnectionError::new_err(format!("the head at {address}: {e}"))),
        ok => answer(ok),
    }
}

/// Writes this process's node's task and actor rows under `path` as they change (a cluster's
/// head does, in its session directory: `volley list --session DIR`).
#[pyfunction]
pub fn record_history(path: String) -> PyResult<()> {
    let c =
        client::current().ok_or_else(|| PyRuntimeError::new_err("volley is not initialised"))?;
    match &c.backend {
        Backend::Node(n) => n
            .record_history(std::path::Path::new(&path))
            .map_err(|e| PyRuntimeError::new_err(format!("state history in {path}: {e}"))),
        Backend::Worker(_) => Err(PyRuntimeError::new_err("a worker has no node of its own")),
    }
}

/// (Benchmarks only: `benchmarks/dashboard_scale.py`) puts `n` actor rows into this driver's
/// node's tables through the path a member's heartbeat batch takes; see
/// `Tables::fill_actors_for_benchmark`. Refused on a worker or a member of another head's
/// cluster, whose tables are not the ones the dashboard reads.
#[doc(hidden)]
#[pyfunction]
#[pyo3(signature = (n, classes = 20))]
pub fn _fill_actors_for_benchmark(py: Python<'_>, n: usize, classes: usize) -> PyResult<()> {
    let c =
        client::current().ok_or_else(|| PyRuntimeError::new_err("volley is not initialised"))?;
    let Backend::Node(node) = &c.backend else {
        return Err(PyRuntimeError::new_err("a worker has no node of its own"));
    };
    let head = node.head().ok_or_else(|| {
        PyRuntimeError::new_err("this node is a member of another head's cluster")
    })?;
    let me = node.snapshot().id;
    py.detach(|| head.tables.fill_actors_for_benchmark(n, classes, me));
    Ok(())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(record_history, m)?)?;
    m.add_function(wrap_pyfunction!(state_query, m)?)?;
    m.add_function(wrap_pyfunction!(query_state, m)?)?;
    m.add_function(wrap_pyfunction!(_fill_actors_for_benchmark, m)?)?;
    Ok(())
}
