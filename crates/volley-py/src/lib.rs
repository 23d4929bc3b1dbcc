//! `volley._core`: the bridge between the Python API and the Rust engine.
//!
//! This crate only converts and delegates. Every call that may wait releases the GIL and wakes
//! every few milliseconds to let Python raise a pending `KeyboardInterrupt`; no Python object is
//! touched while the engine works.

mod client;
mod object_ref;
mod store;

use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::{PyRuntimeError, PyTimeoutError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use serde_bytes::ByteBuf;
use volley_proto::{
    ErrorKind, ErrorPayload, FunctionId, ObjectId, TaskOptions, TaskResult, TaskSpec, WorkerId,
};
use volley_runtime::{Node, NodeConfig, WaitError, WorkerConn};

use client::{Backend, Client, Loaded};
use object_ref::{id_from_bytes, ObjectRef};
use store::{is_store_full, object_data, store_full, value_to_py};

fn client() -> PyResult<Arc<Client>> {
    client::current()
        .ok_or_else(|| PyRuntimeError::new_err("volley is not initialised; call volley.init()"))
}

fn to_err<E: std::fmt::Display>(e: E) -> PyErr {
    PyRuntimeError::new_err(e.to_string())
}

fn function_id(b: &[u8]) -> PyResult<FunctionId> {
    let arr: [u8; 16] =
        b.try_into().map_err(|_| PyValueError::new_err("a function id is 16 bytes"))?;
    Ok(FunctionId(arr))
}

fn ids_from(contained: Vec<Vec<u8>>) -> PyResult<Vec<ObjectId>> {
    contained.iter().map(|c| id_from_bytes(c)).collect()
}

fn kind_code(k: ErrorKind) -> u8 {
    match k {
        ErrorKind::TaskException => 0,
        ErrorKind::WorkerCrashed => 1,
        ErrorKind::Cancelled => 2,
        ErrorKind::Serialization => 3,
        ErrorKind::Unschedulable => 5,
        ErrorKind::ObjectLost => 6,
        ErrorKind::WorkerStartFailed => 7,
        ErrorKind::ObjectStoreFull => 8,
    }
}

fn kind_from_code(c: u8) -> ErrorKind {
    match c {
        1 => ErrorKind::WorkerCrashed,
        2 => ErrorKind::Cancelled,
        3 => ErrorKind::Serialization,
        8 => ErrorKind::ObjectStoreFull,
        _ => ErrorKind::TaskException,
    }
}

/// `(True, data, buffers)` for a value, `(False, kind, task, message, traceback, exc, pid)` for an
/// error.
fn result_to_py<'py>(py: Python<'py>, r: &Loaded) -> PyResult<Bound<'py, PyAny>> {
    match r {
        Ok((v, mapped)) => {
            let (data, bufs) = value_to_py(py, v, mapped.as_ref())?;
            Ok((true, data, bufs).into_pyobject(py)?.into_any())
        }
        Err(e) => error_to_py(py, e),
    }
}

fn error_to_py<'py>(py: Python<'py>, e: &ErrorPayload) -> PyResult<Bound<'py, PyAny>> {
    let exc = e.exception.as_ref().map(|b| PyBytes::new(py, b));
    Ok((false, kind_code(e.kind), &e.task_name, &e.message, &e.traceback, exc, e.pid)
        .into_pyobject(py)?
        .into_any())
}

fn wait_err(e: WaitError<PyErr>) -> PyErr {
    match e {
        WaitError::Timeout => PyTimeoutError::new_err("timed out"),
        WaitError::Interrupted(e) => e,
        WaitError::Closed => PyRuntimeError::new_err("volley has shut down"),
    }
}

fn ids_of(refs: &[PyRef<'_, ObjectRef>]) -> Vec<ObjectId> {
    refs.iter().map(|r| r.id).collect()
}

fn check_signals() -> PyResult<()> {
    Python::attach(|py| py.check_signals())
}

/// Starts the embedded node with its workers.
#[pyfunction]
#[pyo3(signature = (num_cpus, python, worker_args, env, log_to_driver, pipeline_depth, idle_worker_timeout_ms, object_store_memory, spill_dir, inline_threshold))]
#[allow(clippy::too_many_arguments)]
fn start_node(
    py: Python<'_>,
    num_cpus: f64,
    python: String,
    worker_args: Vec<String>,
    env: Vec<(String, String)>,
    log_to_driver: bool,
    pipeline_depth: usize,
    idle_worker_timeout_ms: u64,
    object_store_memory: u64,
    spill_dir: std::path::PathBuf,
    inline_threshold: u64,
) -> PyResult<()> {
    if client::current().is_some() {
        return Err(PyRuntimeError::new_err("volley is already initialised"));
    }
    let cfg = NodeConfig {
        num_cpus,
        python,
        worker_args,
        env,
        log_to_driver,
        pipeline_depth,
        idle_worker_timeout_ms,
        object_store_memory,
        spill_dir,
        inline_threshold,
    };
    let node = py.detach(|| Node::start(cfg)).map_err(to_err)?;
    client::install(Backend::Node(node), inline_threshold);
    Ok(())
}

static MAIN_THREAD: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Connects this worker process to its node. Call it from the main thread: a cancelled task is
/// interrupted there.
#[pyfunction]
fn connect_worker(py: Python<'_>, socket: String, worker_id: u32, token: String) -> PyResult<()> {
    // A real SIGINT to the main thread: it both wakes a blocking system call (a `sleep`, a
    // socket read) and makes Python raise KeyboardInterrupt there.
    MAIN_THREAD.store(unsafe { libc::pthread_self() } as u64, std::sync::atomic::Ordering::Release);
    fn interrupt() {
        let main = MAIN_THREAD.load(std::sync::atomic::Ordering::Acquire);
        // SAFETY: `main` is this process's main thread, which lives as long as the process.
        unsafe { libc::pthread_kill(main as libc::pthread_t, libc::SIGINT) };
    }
    let store = std::env::var("VOLLEY_STORE").ok().filter(|s| !s.is_empty());
    let conn = py
        .detach(|| {
            WorkerConn::connect(&socket, WorkerId(worker_id), &token, store.as_deref(), interrupt)
        })
        .map_err(to_err)?;
    let threshold = conn.inline_threshold;
    client::install(Backend::Worker(conn), threshold);
    Ok(())
}

/// Stops the embedded node and its workers (waiting up to `grace` seconds for them to exit).
#[pyfunction]
#[pyo3(signature = (grace = 1.0))]
fn shutdown(py: Python<'_>, grace: f64) {
    if let Some(c) = client::take() {
        if let Backend::Node(n) = &c.backend {
            py.detach(|| n.shutdown(Duration::from_secs_f64(grace.max(0.0))));
        }
    }
}

/// "driver", "worker", or None when not initialised.
#[pyfunction]
fn mode() -> Option<&'static str> {
    client::current().map(|c| match c.backend {
        Backend::Node(_) => "driver",
        Backend::Worker(_) => "worker",
    })
}

#[pyfunction]
fn register_function(py: Python<'_>, fid: &[u8], data: &[u8]) -> PyResult<()> {
    let c = client()?;
    let id = function_id(fid)?;
    py.detach(|| c.register_function(id, data)).map_err(to_err)
}

/// Submits a task and returns refs to its results.
#[pyfunction]
#[pyo3(signature = (fid, name, data, buffers, contained, deps, num_returns, num_cpus, max_retries, retry_exceptions))]
#[allow(clippy::too_many_arguments)]
fn submit(
    py: Python<'_>,
    fid: &[u8],
    name: String,
    data: &[u8],
    buffers: &Bound<'_, PyList>,
    contained: Vec<Vec<u8>>,
    deps: Vec<PyRef<'_, ObjectRef>>,
    num_returns: u32,
    num_cpus: f64,
    max_retries: i32,
    retry_exceptions: bool,
) -> PyResult<Vec<ObjectRef>> {
    let c = client()?;
    if !(0.0..=1e6).contains(&num_cpus) {
        return Err(PyValueError::new_err("num_cpus must be between 0 and 1e6"));
    }
    let function = function_id(fid)?;
    let contained = ids_from(contained)?;
    let task_id = c.next_task_id();
    let args = object_data(py, &c, data, buffers, contained, None)?;
    let spec = TaskSpec {
        task_id,
        function,
        name,
        args: args.data,
        deps: ids_of(&deps),
        num_returns,
        options: TaskOptions {
            cpu_milli: (num_cpus * 1000.0).round() as u32,
            max_retries,
            retry_exceptions,
        },
    };
    let returns: Vec<ObjectRef> = spec.return_ids().map(|id| ObjectRef::new(id, true)).collect();
    py.detach(|| c.submit(spec)).map_err(to_err)?;
    Ok(returns)
}

/// Stores a value and returns a ref to it.
#[pyfunction]
fn put(
    py: Python<'_>,
    data: &[u8],
    buffers: &Bound<'_, PyList>,
    contained: Vec<Vec<u8>>,
) -> PyResult<ObjectRef> {
    let c = client()?;
    let id = ObjectId::for_return(c.next_task_id(), 0);
    let obj = object_data(py, &c, data, buffers, ids_from(contained)?, Some(id))?.data;
    let r = ObjectRef::new(id, true);
    py.detach(|| c.put(id, obj)).map_err(to_err)?;
    Ok(r)
}

/// Waits for every ref and returns one result tuple per ref (see `result_to_py`).
#[pyfunction]
#[pyo3(signature = (refs, timeout = None))]
fn get<'py>(
    py: Python<'py>,
    refs: Vec<PyRef<'py, ObjectRef>>,
    timeout: Option<f64>,
) -> PyResult<Vec<Bound<'py, PyAny>>> {
    let c = client()?;
    let ids = ids_of(&refs);
    let timeout = timeout.map(|t| Duration::from_secs_f64(t.max(0.0)));
    let results = py.detach(|| c.get(&ids, timeout, check_signals)).map_err(wait_err)?;
    results.iter().map(|r| result_to_py(py, r)).collect()
}

/// Waits until `num_returns` refs are ready or the timeout passes; readiness per ref.
#[pyfunction]
#[pyo3(signature = (refs, num_returns, timeout = None))]
fn wait(
    py: Python<'_>,
    refs: Vec<PyRef<'_, ObjectRef>>,
    num_returns: usize,
    timeout: Option<f64>,
) -> PyResult<Vec<bool>> {
    let c = client()?;
    let ids = ids_of(&refs);
    let timeout = timeout.map(|t| Duration::from_secs_f64(t.max(0.0)));
    py.detach(|| c.wait(&ids, num_returns, timeout, check_signals)).map_err(wait_err)
}

#[pyfunction]
#[pyo3(signature = (r, force = false))]
fn cancel(py: Python<'_>, r: PyRef<'_, ObjectRef>, force: bool) -> PyResult<()> {
    let c = client()?;
    let id = r.id;
    py.detach(|| c.cancel(id, force)).map_err(to_err)
}

/// Asks `next_ready` to report these refs once they are ready.
#[pyfunction]
fn watch(py: Python<'_>, refs: Vec<PyRef<'_, ObjectRef>>) -> PyResult<()> {
    let c = client()?;
    let ids = ids_of(&refs);
    py.detach(|| c.watch(&ids)).map_err(to_err)
}

/// Ids (bytes) of watched refs that became ready; waits up to `timeout` seconds for one.
#[pyfunction]
fn next_ready(py: Python<'_>, timeout: f64) -> PyResult<Vec<Bound<'_, PyBytes>>> {
    let Some(c) = client::current() else {
        return Ok(Vec::new());
    };
    let ids = py.detach(|| c.next_ready(Duration::from_secs_f64(timeout.max(0.0))));
    Ok(ids.iter().map(|id| PyBytes::new(py, &id.to_bytes())).collect())
}

/// Pids of this node's worker processes (driver only).
#[pyfunction]
fn worker_pids() -> PyResult<Vec<u32>> {
    match &client()?.backend {
        Backend::Node(n) => Ok(n.worker_pids()),
        Backend::Worker(_) => Ok(Vec::new()),
    }
}

/// Scheduler counters (driver only), as a dict.
#[pyfunction]
fn stats(py: Python<'_>) -> PyResult<Bound<'_, pyo3::types::PyDict>> {
    let d = pyo3::types::PyDict::new(py);
    if let Backend::Node(n) = &client()?.backend {
        let s = n.stats();
        d.set_item("workers_alive", s.workers_alive)?;
        d.set_item("workers_starting", s.workers_starting)?;
        d.set_item("workers_blocked", s.workers_blocked)?;
        d.set_item("tasks_waiting", s.tasks_waiting)?;
        d.set_item("tasks_queued", s.tasks_queued)?;
        d.set_item("tasks_assigned", s.tasks_assigned)?;
        d.set_item("objects", s.objects)?;
        d.set_item("cpu_used", s.cpu_used_milli as f64 / 1000.0)?;
    }
    Ok(d)
}

/// The object store's counters (driver only), and with `objects=True` one entry per stored value.
#[pyfunction]
#[pyo3(signature = (objects = false))]
fn store_stats(py: Python<'_>, objects: bool) -> PyResult<Bound<'_, pyo3::types::PyDict>> {
    let d = pyo3::types::PyDict::new(py);
    let Backend::Node(n) = &client()?.backend else {
        return Ok(d);
    };
    let s = n.store().stats();
    d.set_item("capacity", s.capacity)?;
    d.set_item("used", s.used)?;
    d.set_item("pinned", s.pinned)?;
    d.set_item("objects", s.objects)?;
    d.set_item("objects_in_memory", s.objects_in_memory)?;
    d.set_item("objects_spilled", s.objects_spilled)?;
    d.set_item("spilled_bytes", s.spilled_bytes)?;
    d.set_item("spill_count", s.spill_count)?;
    d.set_item("spill_bytes_total", s.spill_bytes_total)?;
    d.set_item("restore_count", s.restore_count)?;
    d.set_item("restore_bytes_total", s.restore_bytes_total)?;
    d.set_item("spill_dir", s.spill_dir)?;
    d.set_item("inline_threshold", client()?.inline_threshold)?;
    if objects {
        let list = PyList::empty(py);
        for o in n.store().objects() {
            let e = pyo3::types::PyDict::new(py);
            e.set_item("segment", o.seg)?;
            e.set_item("object", o.object.map(|id| id.hex()))?;
            e.set_item("size", o.size)?;
            e.set_item("spilled", o.spilled)?;
            e.set_item("leases", o.leases)?;
            e.set_item("writing", o.writing)?;
            e.set_item("freed", o.freed)?;
            list.append(e)?;
        }
        d.set_item("object_list", list)?;
    }
    Ok(d)
}

/// Parses the handler's answer into a task result.
fn parse_result(
    py: Python<'_>,
    c: &Client,
    ans: &Bound<'_, PyAny>,
    retry_exceptions: bool,
) -> PyResult<TaskResult> {
    let (ok, payload): (bool, Bound<'_, PyAny>) = ans.extract()?;
    if ok {
        let mut values = Vec::new();
        let mut written = Vec::new();
        let mut all = || -> PyResult<()> {
            for item in payload.try_iter()? {
                let (data, buffers, contained): (Vec<u8>, Bound<'_, PyList>, Vec<Vec<u8>>) =
                    item?.extract()?;
                let w = object_data(py, c, &data, &buffers, ids_from(contained)?, None)?;
                written.extend(w.pending_seg);
                values.push(w.data);
            }
            Ok(())
        };
        if let Err(e) = all() {
            // Segments already written for earlier returns are not sent: give them back.
            if let Backend::Worker(w) = &c.backend {
                w.release_segments(written);
            }
            return Err(e);
        }
        Ok(TaskResult::Ok(values))
    } else {
        let (code, message, traceback, exc): (u8, String, String, Option<Vec<u8>>) =
            payload.extract()?;
        let kind = kind_from_code(code);
        let error = ErrorPayload {
            kind,
            task_name: String::new(),
            message,
            traceback,
            exception: exc.map(ByteBuf::from),
            pid: std::process::id(),
        };
        Ok(TaskResult::Err {
            error,
            retryable: retry_exceptions && kind == ErrorKind::TaskException,
        })
    }
}

/// The worker's main loop: takes tasks (with the GIL released while waiting), runs each through
/// `handler`, and reports the result. Returns when the node says to stop.
#[pyfunction]
fn worker_main(py: Python<'_>, handler: Bound<'_, PyAny>) -> PyResult<()> {
    let c = client()?;
    let Backend::Worker(conn) = &c.backend else {
        return Err(PyRuntimeError::new_err("worker_main runs in worker processes only"));
    };
    let conn = conn.clone();
    let mut loaded = std::collections::HashSet::new();
    while let Some(task) = py.detach(|| conn.next_task()) {
        let spec = &task.spec;
        // The handler caches loaded functions: it needs the bytes only the first time.
        let function_bytes =
            if loaded.insert(spec.function) { conn.function(&spec.function) } else { None };
        let run = || -> PyResult<TaskResult> {
            let deps = PyList::empty(py);
            for d in task.deps {
                match py.detach(|| client::load_received(d)) {
                    Ok((v, mapped)) => deps.append(value_to_py(py, &v, mapped.as_ref())?)?,
                    Err(e) => return Err(store_full(py, e.message.clone())),
                }
            }
            let args_view = match &task.args {
                volley_runtime::View::Inline => None,
                volley_runtime::View::Shm(l) => {
                    Some(store::Mapped { ptr: l.ptr() as usize, len: l.len(), guard: l.clone() })
                }
                volley_runtime::View::Unavailable(why) => {
                    return Err(store_full(
                        py,
                        format!("the task's arguments could not be read from the store: {why}"),
                    ))
                }
            };
            let (args_data, args_bufs) = value_to_py(py, &spec.args, args_view.as_ref())?;
            let call = (
                &spec.name,
                PyBytes::new(py, &spec.function.0),
                function_bytes.as_ref().map(|f| PyBytes::new(py, f)),
                args_data,
                args_bufs,
                deps,
                spec.num_returns,
                spec.task_id.0.to_string(),
            );
            let ans = handler.call1(call)?;
            parse_result(py, &c, &ans, spec.options.retry_exceptions)
        };
        let result = run().unwrap_or_else(|e| {
            let (kind, message) = if is_store_full(py, &e) {
                (ErrorKind::ObjectStoreFull, e.value(py).to_string())
            } else {
                (
                    ErrorKind::TaskException,
                    format!("volley's worker failed to run task '{}': {e}", spec.name),
                )
            };
            TaskResult::Err {
                error: ErrorPayload {
                    kind,
                    task_name: spec.name.clone(),
                    message,
                    traceback: String::new(),
                    exception: None,
                    pid: std::process::id(),
                },
                retryable: false,
            }
        });
        let result = match result {
            TaskResult::Err { mut error, retryable } => {
                error.task_name = spec.name.clone();
                TaskResult::Err { error, retryable }
            }
            ok => ok,
        };
        if conn.finish_task().interrupted {
            // A cancel's interrupt may still be pending; it must not hit the next task.
            let _ = py.check_signals();
        }
        let done = volley_proto::WorkerToNode::Done { task: spec.task_id, result };
        if conn.send(&done).is_err() {
            break;
        }
        c.flush_decrefs();
    }
    Ok(())
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ObjectRef>()?;
    m.add_function(wrap_pyfunction!(object_ref::_rebuild_ref, m)?)?;
    m.add_function(wrap_pyfunction!(object_ref::begin_capture, m)?)?;
    m.add_function(wrap_pyfunction!(object_ref::end_capture, m)?)?;
    m.add_function(wrap_pyfunction!(start_node, m)?)?;
    m.add_function(wrap_pyfunction!(connect_worker, m)?)?;
    m.add_function(wrap_pyfunction!(shutdown, m)?)?;
    m.add_function(wrap_pyfunction!(mode, m)?)?;
    m.add_function(wrap_pyfunction!(register_function, m)?)?;
    m.add_function(wrap_pyfunction!(submit, m)?)?;
    m.add_function(wrap_pyfunction!(put, m)?)?;
    m.add_function(wrap_pyfunction!(get, m)?)?;
    m.add_function(wrap_pyfunction!(wait, m)?)?;
    m.add_function(wrap_pyfunction!(cancel, m)?)?;
    m.add_function(wrap_pyfunction!(watch, m)?)?;
    m.add_function(wrap_pyfunction!(next_ready, m)?)?;
    m.add_function(wrap_pyfunction!(worker_pids, m)?)?;
    m.add_function(wrap_pyfunction!(stats, m)?)?;
    m.add_function(wrap_pyfunction!(store_stats, m)?)?;
    m.add_class::<store::ShmBuffer>()?;
    m.add_function(wrap_pyfunction!(worker_main, m)?)?;
    m.add("PROTOCOL_VERSION", volley_proto::PROTOCOL_VERSION)?;
    Ok(())
}
