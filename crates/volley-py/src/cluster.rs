//! Bindings for clusters: joining one, and looking at it.

use std::time::Duration;

use pyo3::exceptions::{PyConnectionError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use volley_proto::{ActorAnswer, ActorRequest, HeadAnswer, HeadRequest, NodeSnapshot};
use volley_runtime::{ClusterConfig, RuntimeError, TlsConfig};

use crate::client::{self, Backend};
use crate::errors::enter;

fn conn_err(e: RuntimeError) -> PyErr {
    PyConnectionError::new_err(e.to_string())
}

/// A dict of `key => value` pairs (each value converted to Python).
macro_rules! dict {
    ($py:expr, { $($key:literal => $value:expr),* $(,)? }) => {{
        let d = PyDict::new($py);
        $(d.set_item($key, $value)?;)*
        d
    }};
}

/// A node's snapshot as `volley.nodes()` and `volley status` give it: the one conversion of
/// [`NodeSnapshot`] to Python (the keys are the public interface; `scheduler` and `store` hold
/// the counters behind the top-level figures, by the names their `fields()` give).
fn snapshot_dict<'py>(py: Python<'py>, n: &NodeSnapshot) -> PyResult<Bound<'py, PyDict>> {
    let milli = |m: u64| m as f64 / 1000.0;
    let resources = PyDict::new(py);
    for (r, total, free) in &n.resources {
        resources.set_item(r, (milli(*total), milli(*free)))?;
    }
    let counters = |fields: &[(&str, u64)]| -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (k, v) in fields {
            d.set_item(*k, *v)?;
        }
        Ok(d)
    };
    // Its named and detached actors (the head's directory lists the named ones).
    let actors = pyo3::types::PyList::empty(py);
    for a in &n.named {
        actors.append(dict!(py, {
            "name" => &a.name,
            "namespace" => &a.namespace,
            "class_name" => &a.class,
            "actor_id" => format!("{:032x}", { a.actor.0 .0 }),
        }))?;
    }
    let scheduler = counters(&n.sched.fields())?;
    let store = counters(&n.store.fields())?;
    store.set_item("used", n.store_used)?;
    store.set_item("capacity", n.store_capacity)?;
    Ok(dict!(py, {
        "node_id" => n.id.0,
        "address" => &n.addr,
        "num_cpus" => milli(u64::from(n.cpu_total_milli)),
        "cpus_free" => milli(u64::from(n.cpu_free_milli)),
        "resources" => resources,
        "workers" => n.workers,
        "store_used" => n.store_used,
        "store_capacity" => n.store_capacity,
        "tasks_waiting" => n.tasks_waiting,
        "waiting" => &n.waiting,
        "bytes_received" => n.bytes_received,
        "bytes_served" => n.bytes_served,
        "driver" => n.driver,
        "pid" => n.pid,
        "scheduler" => scheduler,
        "store" => store,
        "named_actors" => actors,
        "mem_total" => n.mem_total,
        "mem_used" => n.mem_used,
        "heartbeat_rtt_ms" => n.heartbeat_rtt_us as f64 / 1000.0,
    }))
}

/// The TLS settings from a certificate and (to accept connections) key, PEM files.
pub(crate) fn load_tls(
    cert: Option<String>,
    key: Option<String>,
) -> PyResult<Option<std::sync::Arc<TlsConfig>>> {
    match (cert, key) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(PyValueError::new_err("a TLS key needs its certificate")),
        (Some(c), k) => {
            let key = k.as_deref().map(std::path::Path::new);
            TlsConfig::load(std::path::Path::new(&c), key)
                .map(|t| Some(std::sync::Arc::new(t)))
                .map_err(|e| PyValueError::new_err(e.to_string()))
        }
    }
}

/// Makes this process's node part of a cluster: the head (`head=None`) or a member joining the
/// head at `head`. Returns (node id, address it accepts peers on).
#[pyfunction]
#[pyo3(signature = (listen, head, token, driver, heartbeat_ms = 500, dead_after_ms = 10_000, logs = true, tls_cert = None, tls_key = None))]
#[allow(clippy::too_many_arguments)]
pub fn join_cluster(
    py: Python<'_>,
    listen: Option<String>,
    head: Option<String>,
    token: String,
    driver: bool,
    heartbeat_ms: u64,
    dead_after_ms: u64,
    logs: bool,
    tls_cert: Option<String>,
    tls_key: Option<String>,
) -> PyResult<(u32, String)> {
    let tls = load_tls(tls_cert, tls_key)?;
    let c =
        client::current().ok_or_else(|| PyRuntimeError::new_err("volley is not initialised"))?;
    let Backend::Node(n) = &c.backend else {
        return Err(PyRuntimeError::new_err("only a driver or a node daemon joins a cluster"));
    };
    let cfg = ClusterConfig {
        listen,
        head,
        token: token.into_bytes(),
        driver,
        heartbeat: Duration::from_millis(heartbeat_ms.max(10)),
        dead_after: Duration::from_millis(dead_after_ms.max(100)),
        logs,
        tls,
    };
    py.detach(|| n.join_cluster(cfg)).map_err(conn_err)
}

/// The cluster as this process's node last heard it, a dict per node. In a worker, with
/// `socket` its node's socket name: as that node heard it (the node alone outside a cluster).
#[pyfunction]
#[pyo3(signature = (socket = None))]
pub fn cluster_nodes(py: Python<'_>, socket: Option<String>) -> PyResult<Vec<Bound<'_, PyDict>>> {
    if let Some(name) = socket {
        let view = py.detach(|| volley_runtime::query_local_view(&name)).map_err(conn_err)?;
        return view.iter().map(|i| snapshot_dict(py, i)).collect();
    }
    let Some(c) = client::current() else { return Ok(Vec::new()) };
    let Backend::Node(n) = &c.backend else { return Ok(Vec::new()) };
    n.cluster_view().iter().map(|i| snapshot_dict(py, i)).collect()
}

/// This process's node, described as `local_nodes` does: a driver's own node, or (in a
/// worker, with `socket` its node's socket name) the node the worker belongs to.
#[pyfunction]
#[pyo3(signature = (socket = None))]
pub fn node_info(py: Python<'_>, socket: Option<String>) -> PyResult<Bound<'_, PyDict>> {
    let info = match socket {
        Some(name) => py.detach(|| volley_runtime::query_local(&name)).map_err(conn_err)?,
        None => {
            let c = client::current()
                .ok_or_else(|| PyRuntimeError::new_err("volley is not initialised"))?;
            match &c.backend {
                Backend::Node(n) => n.snapshot(),
                Backend::Worker(_) => {
                    return Err(PyValueError::new_err("in a worker, name its node's socket"));
                }
            }
        }
    };
    snapshot_dict(py, &info)
}

/// Asks the head at `address` for the cluster's nodes (for `volley status`).
#[pyfunction]
#[pyo3(signature = (address, token, tls_cert = None))]
pub fn query_cluster<'py>(
    py: Python<'py>,
    address: String,
    token: String,
    tls_cert: Option<String>,
) -> PyResult<Vec<Bound<'py, PyDict>>> {
    let tls = load_tls(tls_cert, None)?;
    let nodes = py
        .detach(|| volley_runtime::cluster_view(&address, token.as_bytes(), tls.as_deref()))
        .map_err(conn_err)?;
    nodes.iter().map(|i| snapshot_dict(py, i)).collect()
}

/// A new self-signed certificate and key for the cluster, `(cert_pem, key_pem)` (for
/// `volley start --head --tls`, which writes them into the session directory).
#[pyfunction]
pub fn self_signed_cert() -> PyResult<(String, String)> {
    volley_runtime::self_signed_cert().map_err(|e| PyRuntimeError::new_err(e.to_string()))
}

type Dicts<'py> = Vec<Bound<'py, PyDict>>;

/// Asks the head at `address` for the cluster's nodes and the handshakes it refused lately (a
/// wrong token, another version: nodes or drivers locked out, e.g. after the head was restarted
/// with another token), for `volley status`.
#[pyfunction]
#[pyo3(signature = (address, token, tls_cert = None))]
pub fn query_cluster_status<'py>(
    py: Python<'py>,
    address: String,
    token: String,
    tls_cert: Option<String>,
) -> PyResult<(Dicts<'py>, Dicts<'py>)> {
    let tls = load_tls(tls_cert, None)?;
    let (nodes, refused) = py
        .detach(|| volley_runtime::cluster_status(&address, token.as_bytes(), tls.as_deref()))
        .map_err(conn_err)?;
    let nodes = nodes.iter().map(|i| snapshot_dict(py, i)).collect::<PyResult<_>>()?;
    let refused = refused
        .iter()
        .map(|r| {
            let d = PyDict::new(py);
            d.set_item("peer", &r.peer)?;
            d.set_item("reason", &r.reason)?;
            d.set_item("count", r.count)?;
            d.set_item("last_seconds_ago", r.last_ms_ago as f64 / 1000.0)?;
            Ok(d)
        })
        .collect::<PyResult<_>>()?;
    Ok((nodes, refused))
}

/// The volley nodes of this user running on this machine, each as `query_cluster` describes a
/// node plus its `socket`; asked over their Unix sockets (see `volley_runtime::query_local`).
/// A node that does not answer (it is stopping, or another user's) is left out.
#[pyfunction]
pub fn local_nodes(py: Python<'_>) -> PyResult<Vec<Bound<'_, PyDict>>> {
    let found = py.detach(|| {
        volley_runtime::local_nodes()
            .into_iter()
            .filter_map(|(_, name)| volley_runtime::query_local(&name).ok().map(|i| (name, i)))
            .collect::<Vec<_>>()
    });
    found
        .iter()
        .map(|(name, i)| {
            let d = snapshot_dict(py, i)?;
            d.set_item("socket", name)?;
            Ok(d)
        })
        .collect()
}

// ---------------------------------------------------------------------- the head's tables

/// Asks the cluster's head (through this process's client: a driver's node, or a worker's node
/// over its socket), with the GIL released. A key or value over the limits is a `ValueError`;
/// a head that cannot be reached, a `ConnectionError`.
fn ask_head(py: Python<'_>, req: HeadRequest) -> PyResult<HeadAnswer> {
    if let Some(why) = req.check() {
        return Err(PyValueError::new_err(why));
    }
    let c =
        client::current().ok_or_else(|| PyRuntimeError::new_err("volley is not initialised"))?;
    match enter(py, || c.actor(ActorRequest::Head(req)))? {
        ActorAnswer::Head(HeadAnswer::Error(why)) => Err(PyConnectionError::new_err(why)),
        ActorAnswer::Head(answer) => Ok(answer),
        other => {
            Err(PyRuntimeError::new_err(format!("unexpected answer from the node: {other:?}")))
        }
    }
}

fn unexpected(answer: HeadAnswer) -> PyErr {
    PyRuntimeError::new_err(format!("unexpected answer from the head: {answer:?}"))
}

/// Stores `value` under `key` in the head's key-value table; False if a value was there and
/// `overwrite` is false.
#[pyfunction]
pub fn kv_put(
    py: Python<'_>,
    namespace: String,
    key: &[u8],
    value: &[u8],
    overwrite: bool,
) -> PyResult<bool> {
    let req = HeadRequest::KvPut { namespace, key: key.to_vec(), value: value.to_vec(), overwrite };
    match ask_head(py, req)? {
        HeadAnswer::Stored(b) => Ok(b),
        other => Err(unexpected(other)),
    }
}

/// The value under `key`, or None.
#[pyfunction]
pub fn kv_get<'py>(
    py: Python<'py>,
    namespace: String,
    key: &[u8],
) -> PyResult<Option<Bound<'py, PyBytes>>> {
    match ask_head(py, HeadRequest::KvGet { namespace, key: key.to_vec() })? {
        HeadAnswer::Value(v) => Ok(v.map(|v| PyBytes::new(py, &v))),
        other => Err(unexpected(other)),
    }
}

/// Deletes `key`; True if there was a value.
#[pyfunction]
pub fn kv_delete(py: Python<'_>, namespace: String, key: &[u8]) -> PyResult<bool> {
    match ask_head(py, HeadRequest::KvDelete { namespace, key: key.to_vec() })? {
        HeadAnswer::Deleted(b) => Ok(b),
        other => Err(unexpected(other)),
    }
}

/// The keys of `namespace` starting with `prefix`, in order.
#[pyfunction]
pub fn kv_keys<'py>(
    py: Python<'py>,
    namespace: String,
    prefix: &[u8],
) -> PyResult<Vec<Bound<'py, PyBytes>>> {
    match ask_head(py, HeadRequest::KvKeys { namespace, prefix: prefix.to_vec() })? {
        HeadAnswer::Keys(keys) => Ok(keys.iter().map(|k| PyBytes::new(py, k)).collect()),
        other => Err(unexpected(other)),
    }
}

/// Stores every (key, value) pair of `items` at once: no reader sees some stored and not the
/// others.
#[pyfunction]
pub fn kv_put_many(
    py: Python<'_>,
    namespace: String,
    items: Vec<(Vec<u8>, Vec<u8>)>,
) -> PyResult<()> {
    let items = items
        .into_iter()
        .map(|(k, v)| (serde_bytes::ByteBuf::from(k), serde_bytes::ByteBuf::from(v)))
        .collect();
    match ask_head(py, HeadRequest::KvPutMany { namespace, items })? {
        HeadAnswer::Stored(_) => Ok(()),
        HeadAnswer::KvRefused(why) => Err(PyValueError::new_err(why)),
        other => Err(unexpected(other)),
    }
}

/// The (key, value) pairs of `namespace` whose keys start with `prefix`, in key order, as one
/// snapshot.
#[pyfunction]
pub fn kv_items<'py>(
    py: Python<'py>,
    namespace: String,
    prefix: &[u8],
) -> PyResult<Vec<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)>> {
    match ask_head(py, HeadRequest::KvItems { namespace, prefix: prefix.to_vec() })? {
        HeadAnswer::Items(items) => {
            Ok(items.iter().map(|(k, v)| (PyBytes::new(py, k), PyBytes::new(py, v))).collect())
        }
        other => Err(unexpected(other)),
    }
}

/// Adds `delta` to the integer under `key` atomically at the head (a missing key counts as 0);
/// the new value. A value that is not an integer's decimal text is a `ValueError`.
#[pyfunction]
pub fn kv_incr(py: Python<'_>, namespace: String, key: &[u8], delta: i64) -> PyResult<i64> {
    match ask_head(py, HeadRequest::KvIncr { namespace, key: key.to_vec(), delta })? {
        HeadAnswer::Counter(n) => Ok(n),
        HeadAnswer::KvRefused(why) => Err(PyValueError::new_err(why)),
        other => Err(unexpected(other)),
    }
}

/// Stores `new` under `key` (None: deletes it) only if the value there is `expected` (None:
/// absent), atomically at the head; True if it swapped.
#[pyfunction]
#[pyo3(signature = (namespace, key, expected, new))]
pub fn kv_compare_and_set(
    py: Python<'_>,
    namespace: String,
    key: &[u8],
    expected: Option<&[u8]>,
    new: Option<&[u8]>,
) -> PyResult<bool> {
    let b = |v: Option<&[u8]>| v.map(|v| serde_bytes::ByteBuf::from(v.to_vec()));
    let req = HeadRequest::KvCompareAndSet {
        namespace,
        key: key.to_vec(),
        expected: b(expected),
        new: b(new),
    };
    match ask_head(py, req)? {
        HeadAnswer::Stored(b) => Ok(b),
        other => Err(unexpected(other)),
    }
}

/// Stores `value` under `key` unless a value is there; the value there afterwards.
#[pyfunction]
pub fn kv_setdefault<'py>(
    py: Python<'py>,
    namespace: String,
    key: &[u8],
    value: &[u8],
) -> PyResult<Bound<'py, PyBytes>> {
    let req = HeadRequest::KvSetDefault { namespace, key: key.to_vec(), value: value.to_vec() };
    match ask_head(py, req)? {
        HeadAnswer::Value(Some(v)) => Ok(PyBytes::new(py, &v)),
        other => Err(unexpected(other)),
    }
}

/// Waits at most `wait_ms` at the head until the value under `key` differs from the one whose
/// digest is `seen` (None: the value there now): `(digest, changed, value)`, the value only
/// when changed. A watcher passes the digest back in its next call.
#[pyfunction]
#[pyo3(signature = (namespace, key, seen, wait_ms))]
pub fn kv_watch<'py>(
    py: Python<'py>,
    namespace: String,
    key: &[u8],
    seen: Option<u64>,
    wait_ms: u32,
) -> PyResult<(u64, bool, Option<Bound<'py, PyBytes>>)> {
    match ask_head(py, HeadRequest::KvWatch { namespace, key: key.to_vec(), seen, wait_ms })? {
        HeadAnswer::KvWatched { digest, changed, value } => {
            Ok((digest, changed, value.map(|v| PyBytes::new(py, &v))))
        }
        other => Err(unexpected(other)),
    }
}

/// The head's directory for the whole cluster: `{"actors": [...], "placement_groups": [...],
/// "jobs": [...]}`, a dict per entry (see `volley.library.directory`).
#[pyfunction]
pub fn directory(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let d = match ask_head(py, HeadRequest::Directory)? {
        HeadAnswer::Directory(d) => d,
        other => return Err(unexpected(other)),
    };
    let actors = d
        .actors
        .iter()
        .map(|a| {
            Ok(dict!(py, {
                "name" => &a.name,
                "namespace" => &a.namespace,
                "class_name" => &a.class,
                "actor_id" => a.actor.object().hex(),
                "node_id" => a.node.0,
            }))
        })
        .collect::<PyResult<Dicts<'_>>>()?;
    let groups = d
        .groups
        .iter()
        .map(|(owner, g)| {
            Ok(dict!(py, {
                "placement_group_id" => &g.id,
                "name" => &g.name,
                "state" => &g.state,
                "bundles_to_node_id" => g.nodes.clone(),
                "owner_node_id" => owner.0,
            }))
        })
        .collect::<PyResult<Dicts<'_>>>()?;
    let jobs = d
        .jobs
        .iter()
        .map(|j| {
            Ok(dict!(py, {
                "node_id" => j.node.0,
                "driver_pid" => j.pid,
                "start_time" => j.started_ms as f64 / 1000.0,
                "end_time" => j.ended_ms.map(|t| t as f64 / 1000.0),
            }))
        })
        .collect::<PyResult<Dicts<'_>>>()?;
    Ok(dict!(py, { "actors" => actors, "placement_groups" => groups, "jobs" => jobs }))
}

/// Adds the head's functions to `_core` (kept here so `lib.rs` changes by one line).
pub fn register_head(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(kv_put, m)?)?;
    m.add_function(wrap_pyfunction!(kv_get, m)?)?;
    m.add_function(wrap_pyfunction!(kv_delete, m)?)?;
    m.add_function(wrap_pyfunction!(kv_keys, m)?)?;
    m.add_function(wrap_pyfunction!(kv_put_many, m)?)?;
    m.add_function(wrap_pyfunction!(kv_items, m)?)?;
    m.add_function(wrap_pyfunction!(kv_incr, m)?)?;
    m.add_function(wrap_pyfunction!(kv_compare_and_set, m)?)?;
    m.add_function(wrap_pyfunction!(kv_setdefault, m)?)?;
    m.add_function(wrap_pyfunction!(kv_watch, m)?)?;
    m.add_function(wrap_pyfunction!(directory, m)?)?;
    Ok(())
}
