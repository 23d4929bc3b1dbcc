//! The dashboard's bindings: start and stop this process's dashboard over its node.

use std::sync::Arc;

use pyo3::exceptions::{PyOSError, PyRuntimeError};
use pyo3::prelude::*;
use volley_runtime::client::{self, Backend};
use volley_runtime::dashboard;

/// Starts the dashboard over this process's node (a driver's or a daemon's); gives its URL
/// without the token. With the cluster's TLS certificate and key it serves HTTPS only.
#[pyfunction]
#[pyo3(signature = (host, port, port_given, token, tls_cert=None, tls_key=None))]
pub fn start_dashboard(
    py: Python<'_>,
    host: String,
    port: u16,
    port_given: bool,
    token: String,
    tls_cert: Option<String>,
    tls_key: Option<String>,
) -> PyResult<String> {
    if tls_cert.is_some() && tls_key.is_none() {
        return Err(pyo3::exceptions::PyValueError::new_err(
            "the dashboard's HTTPS needs the certificate's key too",
        ));
    }
    let tls = crate::cluster::load_tls(tls_cert, tls_key)?;
    let c =
        client::current().ok_or_else(|| PyRuntimeError::new_err("volley is not initialised"))?;
    if !matches!(c.backend, Backend::Node(_)) {
        return Err(PyRuntimeError::new_err("a worker process serves no dashboard"));
    }
    let cfg = dashboard::Config {
        host,
        port,
        port_given,
        token,
        source: Arc::new(dashboard::NodeSource),
        tls,
    };
    py.detach(|| dashboard::start(cfg)).map_err(|e| PyOSError::new_err(e.to_string()))
}

/// Stops this process's dashboard, if one runs.
#[pyfunction]
pub fn stop_dashboard(py: Python<'_>) {
    py.detach(dashboard::stop)
}

/// The running dashboard's URL (without the token) and its token, or None.
#[pyfunction]
pub fn dashboard_info() -> Option<(String, String)> {
    dashboard::running()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(start_dashboard, m)?)?;
    m.add_function(wrap_pyfunction!(stop_dashboard, m)?)?;
    m.add_function(wrap_pyfunction!(dashboard_info, m)?)?;
    Ok(())
}
