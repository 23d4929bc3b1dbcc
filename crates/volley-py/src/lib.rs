//! `volley._core`: the bridge between the Python API and the Rust engine.
//!
//! This crate only converts and delegates: the engine's side of each call (the client, its
//! reference table, the store's write protocol, the worker's task loop) is
//! `volley_runtime::client`. Every call that may wait goes through [`errors::enter`], which
//! releases the GIL and wakes every few milliseconds to let Python raise a pending
//! `KeyboardInterrupt`; no Python object is touched while the engine works. Engine errors become
//! Python exceptions in one place, [`errors`].

mod async_prims;
mod buffer;
mod channel;
mod cluster;
mod dashboard;
mod errors;
mod jobs;
mod logs;
mod node_logs;
mod object_ref;
mod options;
mod prims;
mod state;
mod store;
mod sync;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};
use pyo3::IntoPyObjectExt;
use serde_bytes::ByteBuf;
use volley_proto::{
    ActorAnswer, ActorCall, ActorId, ActorPart, ActorRequest, ErrorKind, ErrorPayload, FunctionId,
    ObjectData, ObjectId, PgSpec, PgStrategy, TaskId, TaskOptions as EngineOptions, TaskResult,
    TaskSpec, WorkerId,
};
use volley_runtime::client::worker::{RunError, TaskRunner};
use volley_runtime::client::{self, Backend, Client, Loaded, Mapped};
use volley_runtime::{ExecuteMsg, Node, NodeConfig};
use volley_sched::StreamStep;

use errors::{check_signals, enter, is_store_full, store_full};
use object_ref::{id_from_bytes, ObjectRef};
use options::{milli_resources, ActorCallOptions, ActorCreateOptions, TaskOptions};
use store::{object_data, value_to_py};

fn client() -> PyResult<Arc<Client>> {
    client::current()
        .ok_or_else(|| PyRuntimeError::new_err("volley is not initialised; call volley.init()"))
}

fn function_id(b: &[u8]) -> PyResult<FunctionId> {
    let arr: [u8; 16] =
        b.try_into().map_err(|_| PyValueError::new_err("a function id is 16 bytes"))?;
    Ok(FunctionId(arr))
}

fn ids_from(contained: Vec<Vec<u8>>) -> PyResult<Vec<ObjectId>> {
    contained.iter().map(|c| id_from_bytes(c)).collect()
}

/// A value as `(data, buffers)`, an error as a [`Failure`].
fn result_to_py<'py>(py: Python<'py>, r: &Loaded) -> PyResult<Bound<'py, PyAny>> {
    match r {
        Ok((v, mapped)) => {
            let (data, bufs) = value_to_py(py, v, mapped.as_ref())?;
            Ok(PyTuple::new(py, [data, bufs.into_any()])?.into_any())
        }
        Err(e) => Ok(Bound::new(py, Failure::from_payload(py, e))?.into_any()),
    }
}

fn ids_of(refs: &[PyRef<'_, ObjectRef>]) -> PyResult<Vec<ObjectId>> {
    refs.iter().map(|r| r.check_not_inherited().map(|()| r.id)).collect()
}

/// Starts the embedded node with its workers.
#[pyfunction]
#[pyo3(signature = (num_cpus, python, worker_args, env, log_to_driver, pipeline_depth, idle_worker_timeout_ms, object_store_memory, spill_dir, inline_threshold, resources = Vec::new(), max_workers = 1024, wait_notice_ms = 10_000, template = None))]
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
    resources: Vec<(String, f64)>,
    max_workers: usize,
    wait_notice_ms: u64,
    template: Option<(u32, i32)>,
) -> PyResult<()> {
    // Taken first: on any error below it is closed, and the template, seeing its socket close,
    // exits (the caller reaps it).
    let template = template.map(adopted_template).transpose()?;
    let resources = milli_resources(resources)?;
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
        resources,
        max_workers,
        wait_notice_ms,
        template,
    };
    let node = enter(py, || Node::start(cfg))?;
    client::install(Backend::Node(node), inline_threshold);
    Ok(())
}

/// `(pid, fd)` of a worker template the driver forked (`_template.fork_from_driver`): the fd,
/// the driver's end of its socket pair, is owned by the node from here on.
fn adopted_template((pid, fd): (u32, i32)) -> PyResult<volley_runtime::AdoptedTemplate> {
    use std::os::fd::FromRawFd;
    // SAFETY: F_GETFD only reads the descriptor's flags.
    if pid <= 1 || fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(PyValueError::new_err(format!(
            "template: ({pid}, {fd}) is not a child's pid and an open descriptor"
        )));
    }
    // SAFETY: the caller gives up the descriptor (checked open above): it is ours to close.
    let sock = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    Ok(volley_runtime::AdoptedTemplate { pid, sock: std::sync::Arc::new(sock) })
}

/// Connects this worker process to its node. Call it from the main thread: a cancelled task is
/// interrupted there.
#[pyfunction]
fn connect_worker(py: Python<'_>, socket: String, worker_id: u32, token: String) -> PyResult<()> {
    enter(py, || Client::connect_worker(&socket, WorkerId(worker_id), &token))?;
    Ok(())
}

/// Stops the embedded node and its workers (waiting up to `grace` seconds for them to exit).
#[pyfunction]
#[pyo3(signature = (grace = 1.0))]
fn shutdown(py: Python<'_>, grace: f64) -> PyResult<()> {
    if let Some(c) = client::take() {
        if let Backend::Node(n) = &c.backend {
            let grace = Duration::from_secs_f64(grace.max(0.0));
            enter(py, || {
                n.shutdown(grace);
                Ok::<_, Infallible>(())
            })?;
        }
    }
    Ok(())
}

/// Called by a task (not an actor's): this worker process exits cleanly once the task has
/// returned and its result is sent; the node takes back what was queued behind it and starts
/// a replacement (a pool's `maxtasksperchild`).
#[pyfunction]
fn retire_worker() -> PyResult<()> {
    match client::current() {
        Some(c) => c.retire().map_err(errors::IntoPyErr::into_py_err),
        None => Err(PyRuntimeError::new_err("retire_worker is for tasks running in a worker")),
    }
}

/// "driver", "worker", or None when not initialised.
#[pyfunction]
fn mode() -> Option<&'static str> {
    client::current().map(|c| c.mode())
}

#[pyfunction]
fn register_function(py: Python<'_>, fid: &[u8], data: &[u8]) -> PyResult<()> {
    let c = client()?;
    let id = function_id(fid)?;
    enter(py, || c.register_function(id, data))
}

/// Submits a task and returns refs to its results. `options` were checked and converted once,
/// when the remote function (or its `.options(...)`) made them.
#[pyfunction]
fn submit(
    py: Python<'_>,
    fid: &[u8],
    data: &[u8],
    buffers: &Bound<'_, PyList>,
    contained: Vec<Vec<u8>>,
    deps: Vec<PyRef<'_, ObjectRef>>,
    options: &Bound<'_, TaskOptions>,
) -> PyResult<Vec<ObjectRef>> {
    let c = client()?;
    let o = options.get();
    let engine = c.task_options(&o.engine);
    let spec = TaskSpec {
        task_id: c.next_task_id(),
        function: function_id(fid)?,
        name: o.name.clone(),
        args: ObjectData::inline(Vec::new(), Vec::new(), Vec::new()),
        deps: Box::default(),
        num_returns: o.num_returns,
        options: engine,
        actor: ActorPart::None,
    };
    submit_spec(py, &c, spec, data, buffers, contained, &deps)
}

/// Packs a call's arguments and dependencies into `spec` (made without them) and submits it;
/// returns refs to its results.
fn submit_spec(
    py: Python<'_>,
    c: &Client,
    mut spec: TaskSpec,
    data: &[u8],
    buffers: &Bound<'_, PyList>,
    contained: Vec<Vec<u8>>,
    deps: &[PyRef<'_, ObjectRef>],
) -> PyResult<Vec<ObjectRef>> {
    spec.args = object_data(py, c, data, buffers, ids_from(contained)?, None)?.data;
    spec.deps = ids_of(deps)?.into();
    let returns: Vec<ObjectRef> = spec.return_ids().map(|id| ObjectRef::new(id, true)).collect();
    enter(py, || c.submit(spec))?;
    Ok(returns)
}

fn actor_of(r: &ObjectRef) -> ActorId {
    ActorId(r.id.task)
}

fn actor_answer(py: Python<'_>, c: &Client, request: ActorRequest) -> PyResult<ActorAnswer> {
    enter(py, || c.actor(request))
}

/// Creates an actor (or, with `get_if_exists`, finds the one of that name). Returns the
/// actor's ref (held by the new handle), its handle metadata, and whether it was created.
#[pyfunction]
fn create_actor<'py>(
    py: Python<'py>,
    fid: &[u8],
    data: &[u8],
    buffers: &Bound<'py, PyList>,
    contained: Vec<Vec<u8>>,
    deps: Vec<PyRef<'py, ObjectRef>>,
    options: &Bound<'py, ActorCreateOptions>,
) -> PyResult<(ObjectRef, Bound<'py, PyBytes>, bool)> {
    let c = client()?;
    let o = options.get();
    let function = function_id(fid)?;
    let args = object_data(py, &c, data, buffers, ids_from(contained)?, None)?;
    let spec = TaskSpec {
        task_id: c.next_task_id(),
        function,
        name: o.actor.class_name.as_str().into(),
        args: args.data,
        deps: ids_of(&deps)?.into(),
        num_returns: 1,
        options: std::sync::Arc::new(EngineOptions {
            cpu_milli: o.cpu_milli,
            max_retries: 0,
            retry_exceptions: false,
            streaming: false,
            resources: o.resources.clone(),
            runtime_env: c.runtime_env(),
            strategy: o.strategy,
        }),
        actor: ActorPart::Create(Box::new(o.actor.clone())),
    };
    match actor_answer(py, &c, ActorRequest::Create(Box::new(spec)))? {
        ActorAnswer::Found { actor, meta, created } => {
            Ok((ObjectRef::new(actor.object(), true), PyBytes::new(py, &meta), created))
        }
        ActorAnswer::Error(e) => Err(PyValueError::new_err(e)),
        other => Err(PyRuntimeError::new_err(format!("unexpected answer {other:?}"))),
    }
}

/// Submits a call of an actor's method (named, with its number of returns, by `options`, made
/// once per method of a handle); returns refs to its results.
#[pyfunction]
fn submit_actor_call(
    py: Python<'_>,
    actor: PyRef<'_, ObjectRef>,
    data: &[u8],
    buffers: &Bound<'_, PyList>,
    contained: Vec<Vec<u8>>,
    deps: Vec<PyRef<'_, ObjectRef>>,
    options: &Bound<'_, ActorCallOptions>,
) -> PyResult<Vec<ObjectRef>> {
    let c = client()?;
    let o = options.get();
    let spec = TaskSpec {
        task_id: c.next_task_id(),
        function: FunctionId([0; 16]),
        name: o.name.clone(),
        args: ObjectData::inline(Vec::new(), Vec::new(), Vec::new()),
        deps: Box::default(),
        num_returns: o.num_returns,
        // The actor runs in the environment it was created in: no runtime_env.
        options: o.engine.clone(),
        actor: ActorPart::Call(Box::new(ActorCall {
            actor: actor_of(&actor),
            method: o.method.clone(),
        })),
    };
    submit_spec(py, &c, spec, data, buffers, contained, &deps)
}

/// A named actor's ref (held by the new handle) and handle metadata, or None.
#[pyfunction]
fn get_actor<'py>(
    py: Python<'py>,
    name: String,
    namespace: String,
) -> PyResult<Option<(ObjectRef, Bound<'py, PyBytes>)>> {
    let c = client()?;
    match actor_answer(py, &c, ActorRequest::Lookup { name, namespace })? {
        ActorAnswer::Found { actor, meta, .. } => {
            Ok(Some((ObjectRef::new(actor.object(), true), PyBytes::new(py, &meta))))
        }
        _ => Ok(None),
    }
}

/// Kills an actor's process.
#[pyfunction]
fn kill_actor(py: Python<'_>, actor: PyRef<'_, ObjectRef>, no_restart: bool) -> PyResult<()> {
    let c = client()?;
    let request = ActorRequest::Kill { actor: actor_of(&actor), no_restart };
    actor_answer(py, &c, request).map(|_| ())
}

/// Creates a placement group: `bundles` are lists of (resource, amount) with `CPU` among the
/// names; `strategy` is PACK, SPREAD, STRICT_PACK or STRICT_SPREAD; `value` (pickled) is what
/// the returned ref holds once every bundle is reserved.
#[pyfunction]
fn pg_create(
    py: Python<'_>,
    id: String,
    name: String,
    bundles: Vec<Vec<(String, f64)>>,
    strategy: &str,
    value: Vec<u8>,
) -> PyResult<ObjectRef> {
    let strategy = match strategy {
        "PACK" => PgStrategy::Pack,
        "SPREAD" => PgStrategy::Spread,
        "STRICT_PACK" => PgStrategy::StrictPack,
        "STRICT_SPREAD" => PgStrategy::StrictSpread,
        other => {
            return Err(PyValueError::new_err(format!(
                "strategy must be PACK, SPREAD, STRICT_PACK or STRICT_SPREAD, not {other:?}"
            )))
        }
    };
    let bundles = bundles.into_iter().map(milli_resources).collect::<PyResult<Vec<_>>>()?;
    let c = client()?;
    let ready = ObjectId::for_return(c.next_task_id(), 0);
    let value = ObjectData::inline(value, Vec::new(), Vec::new());
    let spec = PgSpec { id, name, bundles, strategy, ready, value };
    match actor_answer(py, &c, ActorRequest::PgCreate(Box::new(spec)))? {
        ActorAnswer::Done => Ok(ObjectRef::new(ready, true)),
        ActorAnswer::Error(e) => Err(PyValueError::new_err(e)),
        other => Err(PyRuntimeError::new_err(format!("unexpected answer {other:?}"))),
    }
}

/// Removes a placement group (releases its bundles everywhere).
#[pyfunction]
fn pg_remove(py: Python<'_>, id: String) -> PyResult<()> {
    let c = client()?;
    actor_answer(py, &c, ActorRequest::PgRemove { pg: id }).map(|_| ())
}

/// The placement groups this process's node created, a dict each.
#[pyfunction]
fn pg_table(py: Python<'_>) -> PyResult<Vec<Bound<'_, pyo3::types::PyDict>>> {
    let c = client()?;
    let ActorAnswer::Pgs(pgs) = actor_answer(py, &c, ActorRequest::PgTable)? else {
        return Ok(Vec::new());
    };
    pgs.into_iter()
        .map(|p| {
            let d = pyo3::types::PyDict::new(py);
            d.set_item("placement_group_id", p.id)?;
            d.set_item("name", p.name)?;
            d.set_item("state", p.state)?;
            let strategy = match p.strategy {
                PgStrategy::Pack => "PACK",
                PgStrategy::Spread => "SPREAD",
                PgStrategy::StrictPack => "STRICT_PACK",
                PgStrategy::StrictSpread => "STRICT_SPREAD",
            };
            d.set_item("strategy", strategy)?;
            let bundles: Vec<Vec<(String, f64)>> = p
                .bundles
                .into_iter()
                .map(|b| b.into_iter().map(|(r, a)| (r, a as f64 / 1000.0)).collect())
                .collect();
            d.set_item("bundles", bundles)?;
            d.set_item("bundles_to_node_id", p.nodes)?;
            d.set_item("reason", p.reason)?;
            Ok(d)
        })
        .collect()
}

/// An actor's state as a dict, or None if it is gone.
#[pyfunction]
fn actor_state<'py>(
    py: Python<'py>,
    actor: PyRef<'py, ObjectRef>,
) -> PyResult<Option<Bound<'py, pyo3::types::PyDict>>> {
    let c = client()?;
    let ActorAnswer::State(info) =
        actor_answer(py, &c, ActorRequest::State { actor: actor_of(&actor) })?
    else {
        return Ok(None);
    };
    let d = pyo3::types::PyDict::new(py);
    d.set_item("state", info.state)?;
    d.set_item("restarts", info.restarts)?;
    d.set_item("pid", if info.pid == 0 { None } else { Some(info.pid) })?;
    d.set_item("class_name", info.class_name)?;
    d.set_item("name", info.name)?;
    d.set_item("namespace", info.namespace)?;
    d.set_item("death_cause", info.death)?;
    d.set_item("pending_calls", info.pending_calls)?;
    Ok(Some(d))
}

/// The next item of a stream (`end` is the stream's end ref), or None when it has ended.
#[pyfunction]
fn stream_next(
    py: Python<'_>,
    end: PyRef<'_, ObjectRef>,
    index: u32,
) -> PyResult<Option<ObjectRef>> {
    let c = client()?;
    let item = ObjectId::for_return(end.id.task, index);
    let step = enter(py, || c.stream_next(item, check_signals))?;
    Ok(match step {
        StreamStep::Item { .. } => Some(ObjectRef::new(item, true)),
        StreamStep::End => None,
    })
}

/// Gives back the items of a stream from `from` on (the caller will not take them).
#[pyfunction]
fn stream_release(py: Python<'_>, end: PyRef<'_, ObjectRef>, from: u32) -> PyResult<()> {
    if let Some(c) = client::current() {
        let task = end.id.task;
        enter(py, || {
            c.stream_release(task, from);
            Ok::<_, Infallible>(())
        })?;
    }
    Ok(())
}

/// In a worker running a streaming task: sends item `index` (2, 3, ...) of task `task_id`.
#[pyfunction]
fn stream_yield(
    py: Python<'_>,
    task_id: u128,
    index: u32,
    data: &[u8],
    buffers: &Bound<'_, PyList>,
    contained: Vec<Vec<u8>>,
) -> PyResult<()> {
    let c = client()?;
    if !matches!(c.backend, Backend::Worker(_)) {
        return Err(PyRuntimeError::new_err("stream_yield runs in worker processes only"));
    }
    let id = ObjectId::for_return(TaskId(task_id), index);
    let written = object_data(py, &c, data, buffers, ids_from(contained)?, Some(id))?;
    enter(py, || c.stream_yield(TaskId(task_id), index, written))
}

/// In a worker: reports the result of a task whose handler returned None (it ran on another
/// thread, or as a coroutine). `ans` is what the handler would have returned.
#[pyfunction]
fn complete_task(
    py: Python<'_>,
    task_id: u128,
    name: String,
    ans: Bound<'_, PyAny>,
) -> PyResult<()> {
    let c = client()?;
    if !matches!(c.backend, Backend::Worker(_)) {
        return Err(PyRuntimeError::new_err("complete_task runs in worker processes only"));
    }
    let result = parse_result(py, &c, &ans, false).map_err(|e| run_error(py, e));
    enter(py, || c.complete_task(TaskId(task_id), &name, result))
}

/// Sets the runtime environment of the tasks and actors this process submits from now on:
/// `json` for the workers, `packages` the hashes of the packages it names (registered first with
/// `register_package`). `None` clears it.
#[pyfunction]
#[pyo3(signature = (json, packages = Vec::new()))]
fn set_runtime_env(json: Option<String>, packages: Vec<String>) -> PyResult<()> {
    let c = client()?;
    c.set_runtime_env(json.map(|json| volley_proto::RuntimeEnv { json, packages }));
    Ok(())
}

/// In a child just forked: forgets the parent's volley (its node, connection, threads) without
/// touching it; returns what the parent was ("driver", "worker") or None.
#[pyfunction]
fn after_fork_in_child() -> Option<&'static str> {
    client::after_fork_in_child()
}

/// Where the node's developer diagnostics go: a file of this driver's own in `path`, created
/// when the first is written; None: stderr (a daemon's stderr is its log file).
#[pyfunction]
#[pyo3(signature = (path = None))]
fn set_diagnostics_dir(path: Option<String>) {
    volley_runtime::set_diagnostics_dir(path.map(std::path::PathBuf::from));
}

/// The file the node's diagnostics went to, once one was written there.
#[pyfunction]
fn diagnostics_file() -> Option<String> {
    volley_runtime::diagnostics_file().map(|p| p.to_string_lossy().into_owned())
}

/// Hands a runtime-environment package (a zip, named by its content hash) to this process's
/// node, which passes it on to the nodes that run tasks needing it.
#[pyfunction]
fn register_package(py: Python<'_>, hash: String, data: &[u8]) -> PyResult<()> {
    let c = client()?;
    let Backend::Node(n) = &c.backend else {
        return Err(PyRuntimeError::new_err("runtime_env packages are registered by the driver"));
    };
    let data = data.to_vec();
    enter(py, || n.register_package(hash, data))
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
    enter(py, || c.put(id, obj))?;
    Ok(r)
}

/// Waits for every ref and returns one result per ref: `(data, buffers)` for a value, a
/// [`Failure`] for an error.
#[pyfunction]
#[pyo3(signature = (refs, timeout = None))]
fn get<'py>(
    py: Python<'py>,
    refs: Vec<PyRef<'py, ObjectRef>>,
    timeout: Option<f64>,
) -> PyResult<Vec<Bound<'py, PyAny>>> {
    let c = client()?;
    let ids = ids_of(&refs)?;
    let timeout = timeout.map(|t| Duration::from_secs_f64(t.max(0.0)));
    let results = enter(py, || c.get(&ids, timeout, check_signals))?;
    results.iter().map(|r| result_to_py(py, r)).collect()
}

/// Why the tasks behind `refs` have not started, a line each for those still waiting on this
/// node (at most 3); empty in a worker.
#[pyfunction]
fn explain_wait(refs: Vec<PyRef<'_, ObjectRef>>) -> PyResult<Vec<String>> {
    match &client()?.backend {
        Backend::Node(n) => Ok(n.explain_wait(&ids_of(&refs)?, 3)),
        Backend::Worker(_) => Ok(Vec::new()),
    }
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
    let ids = ids_of(&refs)?;
    let timeout = timeout.map(|t| Duration::from_secs_f64(t.max(0.0)));
    enter(py, || c.wait(&ids, num_returns, timeout, check_signals))
}

#[pyfunction]
#[pyo3(signature = (r, force = false))]
fn cancel(py: Python<'_>, r: PyRef<'_, ObjectRef>, force: bool) -> PyResult<bool> {
    let c = client()?;
    r.check_not_inherited()?;
    let id = r.id;
    enter(py, || c.cancel(id, force))
}

/// Asks `next_ready` to report these refs once they are ready.
#[pyfunction]
fn watch(py: Python<'_>, refs: Vec<PyRef<'_, ObjectRef>>) -> PyResult<()> {
    let c = client()?;
    let ids = ids_of(&refs)?;
    enter(py, || c.watch(&ids))
}

/// Ids (bytes) of watched refs that became ready; waits up to `timeout` seconds for one.
#[pyfunction]
fn next_ready(py: Python<'_>, timeout: f64) -> PyResult<Vec<Bound<'_, PyBytes>>> {
    let Some(c) = client::current() else {
        return Ok(Vec::new());
    };
    let timeout = Duration::from_secs_f64(timeout.max(0.0));
    let ids = enter(py, || Ok::<_, Infallible>(c.next_ready(timeout)))?;
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
        d.set_item("cpu_total", s.cpu_total_milli as f64 / 1000.0)?;
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

/// A task's failure: as the worker's handler reports it (an error kind's code, see
/// `ERROR_KINDS`, a message, the remote traceback, and the pickled exception if it has one),
/// and as `get` returns it, with the task's name and the pid of the process it failed in.
#[pyclass(module = "volley._core", frozen, get_all)]
struct Failure {
    kind: u8,
    message: String,
    traceback: String,
    exception: Option<Py<PyBytes>>,
    task_name: String,
    pid: u32,
}

impl Failure {
    fn from_payload(py: Python<'_>, e: &ErrorPayload) -> Failure {
        Failure {
            kind: e.kind.code(),
            message: e.message.clone(),
            traceback: e.traceback.clone(),
            exception: e.exception.as_ref().map(|b| PyBytes::new(py, b).unbind()),
            task_name: e.task_name.clone(),
            pid: e.pid,
        }
    }
}

#[pymethods]
impl Failure {
    #[new]
    #[pyo3(signature = (kind, message, traceback = String::new(), exception = None, task_name = String::new(), pid = 0))]
    fn new(
        kind: u8,
        message: String,
        traceback: String,
        exception: Option<Py<PyBytes>>,
        task_name: String,
        pid: u32,
    ) -> PyResult<Failure> {
        if ErrorKind::from_code(kind).is_none() {
            return Err(PyValueError::new_err(format!(
                "no error kind has code {kind} (see volley._core.ERROR_KINDS)"
            )));
        }
        Ok(Failure { kind, message, traceback, exception, task_name, pid })
    }

    fn __repr__(&self) -> String {
        let kind = ErrorKind::from_code(self.kind).map_or("?", |k| k.name());
        format!("Failure({kind}, {:?})", self.message)
    }
}

/// Parses the handler's answer into a task result: a [`Failure`], or a list of
/// `(data, buffers, contained)`, one per return.
fn parse_result(
    py: Python<'_>,
    c: &Client,
    ans: &Bound<'_, PyAny>,
    retry_exceptions: bool,
) -> PyResult<TaskResult> {
    if let Ok(f) = ans.cast::<Failure>() {
        let f = f.get();
        // Checked when it was made.
        let kind = ErrorKind::from_code(f.kind).unwrap_or(ErrorKind::TaskException);
        let error = ErrorPayload {
            kind,
            task_name: String::new(),
            message: f.message.clone(),
            traceback: f.traceback.clone(),
            exception: f.exception.as_ref().map(|b| ByteBuf::from(b.as_bytes(py).to_vec())),
            pid: std::process::id(),
        };
        return Ok(TaskResult::Err {
            error,
            retryable: retry_exceptions && kind == ErrorKind::TaskException,
        });
    }
    let mut values = Vec::new();
    let mut written = Vec::new();
    let mut all = || -> PyResult<()> {
        for item in ans.try_iter()? {
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
        c.release_written(written);
        return Err(e);
    }
    Ok(TaskResult::Ok(values))
}

/// A failure to run a task, from the Python error that caused it.
fn run_error(py: Python<'_>, e: PyErr) -> RunError {
    if is_store_full(py, &e) {
        RunError::StoreFull(e.value(py).to_string())
    } else {
        RunError::Failed(e.to_string())
    }
}

/// Runs tasks through the Python `handler` (`volley._worker.execute`) for the engine's loop.
struct PyRunner<'py> {
    py: Python<'py>,
    handler: Bound<'py, PyAny>,
}

impl PyRunner<'_> {
    /// Calls the handler with `task`: `volley._worker.execute(name, fid, function, data,
    /// buffers, deps, num_returns, task_id, actor, method, max_concurrency, is_async, streaming,
    /// gpus, cpu_milli, runtime_env)` (see its docstring).
    fn call(
        &self,
        c: &Client,
        task: &mut ExecuteMsg,
        function: Option<Arc<[u8]>>,
    ) -> PyResult<Option<TaskResult>> {
        let py = self.py;
        let deps = PyList::empty(py);
        for d in std::mem::take(&mut task.deps) {
            match enter(py, || Ok::<_, Infallible>(client::load_received(d)))? {
                Ok((v, mapped)) => deps.append(value_to_py(py, &v, mapped.as_ref())?)?,
                Err(e) => return Err(store_full(py, e.message.clone())),
            }
        }
        let spec = &task.spec;
        let args_view = match &task.args {
            volley_runtime::View::Inline => None,
            volley_runtime::View::Shm(l) => {
                Some(Mapped { ptr: l.ptr() as usize, len: l.len(), guard: l.clone() })
            }
            volley_runtime::View::Unavailable(why) => {
                return Err(store_full(
                    py,
                    format!("the task's arguments could not be read from the store: {why}"),
                ))
            }
        };
        let (args_data, args_bufs) = value_to_py(py, &spec.args, args_view.as_ref())?;
        let (actor, method, max_concurrency, is_async) = match &spec.actor {
            ActorPart::None => (None, None, 1, false),
            ActorPart::Create(o) => (Some("create"), None, o.max_concurrency, o.is_async),
            ActorPart::Call(call) => (Some("call"), Some(call.method.as_str()), 1, false),
        };
        // Positional, flat: a typed object costs a getter call per field on every task.
        let call = PyTuple::new(
            py,
            [
                PyString::new(py, &spec.name).into_any(),
                PyBytes::new(py, &spec.function.0).into_any(),
                function.as_ref().map(|f| PyBytes::new(py, f)).into_bound_py_any(py)?,
                args_data,
                args_bufs.into_any(),
                deps.into_any(),
                spec.num_returns.into_bound_py_any(py)?,
                spec.task_id.0.into_bound_py_any(py)?,
                actor.into_bound_py_any(py)?,
                method.into_bound_py_any(py)?,
                max_concurrency.into_bound_py_any(py)?,
                is_async.into_bound_py_any(py)?,
                spec.options.streaming.into_bound_py_any(py)?,
                task.gpus.as_slice().into_bound_py_any(py)?,
                spec.options.cpu_milli.into_bound_py_any(py)?,
                spec.options.runtime_env.as_ref().map(|e| e.json.as_str()).into_bound_py_any(py)?,
            ],
        )?;
        let ans = self.handler.call1(call)?;
        if ans.is_none() {
            return Ok(None); // Deferred: reported by `complete_task`.
        }
        parse_result(py, c, &ans, spec.options.retry_exceptions).map(Some)
    }
}

impl TaskRunner for PyRunner<'_> {
    fn blocking<T: Send>(&mut self, f: impl FnOnce() -> T + Send) -> T {
        self.py.detach(f)
    }

    fn run(
        &mut self,
        client: &Client,
        task: &mut ExecuteMsg,
        function: Option<Arc<[u8]>>,
    ) -> Result<Option<TaskResult>, RunError> {
        self.call(client, task, function).map_err(|e| run_error(self.py, e))
    }

    fn clear_interrupt(&mut self) {
        let _ = self.py.check_signals();
    }
}

/// The worker's main loop (`volley_runtime::client::Client::run_worker`): takes tasks (with the
/// GIL released while waiting), runs each through `handler`, and reports the result. Returns
/// when the node says to stop.
#[pyfunction]
fn worker_main(py: Python<'_>, handler: Bound<'_, PyAny>) -> PyResult<()> {
    let c = client()?;
    c.run_worker(&mut PyRunner { py, handler }).map_err(errors::IntoPyErr::into_py_err)
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
    m.add_function(wrap_pyfunction!(retire_worker, m)?)?;
    m.add_function(wrap_pyfunction!(register_function, m)?)?;
    m.add_function(wrap_pyfunction!(submit, m)?)?;
    m.add_function(wrap_pyfunction!(put, m)?)?;
    m.add_function(wrap_pyfunction!(get, m)?)?;
    m.add_function(wrap_pyfunction!(wait, m)?)?;
    m.add_function(wrap_pyfunction!(explain_wait, m)?)?;
    m.add_function(wrap_pyfunction!(cancel, m)?)?;
    m.add_function(wrap_pyfunction!(watch, m)?)?;
    m.add_function(wrap_pyfunction!(next_ready, m)?)?;
    m.add_function(wrap_pyfunction!(worker_pids, m)?)?;
    m.add_function(wrap_pyfunction!(stats, m)?)?;
    m.add_function(wrap_pyfunction!(store_stats, m)?)?;
    m.add_class::<store::ShmBuffer>()?;
    m.add_class::<Failure>()?;
    m.add_class::<TaskOptions>()?;
    m.add_class::<ActorCallOptions>()?;
    m.add_class::<ActorCreateOptions>()?;
    m.add_function(wrap_pyfunction!(worker_main, m)?)?;
    m.add_function(wrap_pyfunction!(create_actor, m)?)?;
    m.add_function(wrap_pyfunction!(submit_actor_call, m)?)?;
    m.add_function(wrap_pyfunction!(get_actor, m)?)?;
    m.add_function(wrap_pyfunction!(kill_actor, m)?)?;
    m.add_function(wrap_pyfunction!(pg_create, m)?)?;
    m.add_function(wrap_pyfunction!(pg_remove, m)?)?;
    m.add_function(wrap_pyfunction!(pg_table, m)?)?;
    m.add_function(wrap_pyfunction!(actor_state, m)?)?;
    m.add_function(wrap_pyfunction!(stream_next, m)?)?;
    m.add_function(wrap_pyfunction!(stream_release, m)?)?;
    m.add_function(wrap_pyfunction!(stream_yield, m)?)?;
    m.add_function(wrap_pyfunction!(complete_task, m)?)?;
    m.add_function(wrap_pyfunction!(cluster::join_cluster, m)?)?;
    m.add_function(wrap_pyfunction!(set_runtime_env, m)?)?;
    m.add_function(wrap_pyfunction!(after_fork_in_child, m)?)?;
    m.add_function(wrap_pyfunction!(register_package, m)?)?;
    m.add_function(wrap_pyfunction!(set_diagnostics_dir, m)?)?;
    m.add_function(wrap_pyfunction!(diagnostics_file, m)?)?;
    m.add_function(wrap_pyfunction!(cluster::cluster_nodes, m)?)?;
    m.add_function(wrap_pyfunction!(cluster::query_cluster, m)?)?;
    m.add_function(wrap_pyfunction!(cluster::self_signed_cert, m)?)?;
    m.add_function(wrap_pyfunction!(cluster::query_cluster_status, m)?)?;
    m.add_function(wrap_pyfunction!(cluster::local_nodes, m)?)?;
    m.add_function(wrap_pyfunction!(cluster::node_info, m)?)?;
    dashboard::register(m)?;
    cluster::register_head(m)?;
    jobs::register(m)?;
    logs::register(m)?;
    node_logs::register(m)?;
    state::register(m)?;
    prims::register(m)?;
    channel::register(m)?;
    sync::register(m)?;
    async_prims::register(m)?;
    m.add("PROTOCOL_VERSION", volley_proto::PROTOCOL_VERSION)?;
    m.add("VERSION", env!("CARGO_PKG_VERSION"))?;
    // The engine's error kinds, defined once in `volley_proto::ErrorKind`: name -> code.
    let kinds = pyo3::types::PyDict::new(m.py());
    for k in ErrorKind::ALL {
        kinds.set_item(k.name(), k.code())?;
    }
    m.add("ERROR_KINDS", kinds)?;
    Ok(())
}
