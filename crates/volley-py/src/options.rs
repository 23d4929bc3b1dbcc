//! Typed, immutable options of a remote function and of an actor method.
//!
//! They are checked and converted to the engine's types once, when the Python layer makes them
//! (once per remote function, `.options(...)` copy or actor method), so that a submit only
//! clones what the engine keeps instead of parsing a dozen positional arguments each call.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use volley_proto::{ActorOptions, Strategy, TaskOptions as EngineOptions};

/// Resource amounts in thousandths, checked; zero amounts are dropped.
pub fn milli_resources(res: Vec<(String, f64)>) -> PyResult<Vec<(String, u64)>> {
    let mut out = Vec::new();
    for (k, v) in res {
        if !(0.0..=1e12).contains(&v) {
            return Err(PyValueError::new_err(format!(
                "resource '{k}' must be a number between 0 and 1e12, not {v}"
            )));
        }
        let m = (v * 1000.0).round() as u64;
        if m > 0 {
            out.push((k, m));
        }
    }
    Ok(out)
}

/// CPUs in thousandths, checked.
pub fn cpu_milli(num_cpus: f64) -> PyResult<u32> {
    if !(0.0..=1e6).contains(&num_cpus) {
        return Err(PyValueError::new_err("num_cpus must be between 0 and 1e6"));
    }
    Ok((num_cpus * 1000.0).round() as u32)
}

/// A scheduling strategy as the Python layer passes it: (kind, node, soft), or `None`.
pub fn strategy_of(s: Option<(String, u32, bool)>) -> PyResult<Strategy> {
    Ok(match s {
        None => Strategy::Default,
        Some((kind, id, soft)) => match kind.as_str() {
            "DEFAULT" => Strategy::Default,
            "SPREAD" => Strategy::Spread,
            "NODE" => Strategy::Node { id, soft },
            other => return Err(PyValueError::new_err(format!("unknown strategy {other:?}"))),
        },
    })
}

fn check_returns(num_returns: u32, streaming: bool) -> PyResult<()> {
    if num_returns == 0 || (streaming && num_returns != 1) {
        return Err(PyValueError::new_err(format!(
            "num_returns must be >= 1 (and 1 for a streaming task), not {num_returns}"
        )));
    }
    Ok(())
}

/// What stays the same for every call of a remote function (or of its `.options(...)`): the
/// task's name, its number of returns and the engine's `TaskOptions`, checked once.
#[pyclass(module = "volley._core", frozen)]
pub struct TaskOptions {
    /// One string for every task submitted with these options (each `TaskSpec` holds a
    /// pointer to it, not a copy).
    pub name: std::sync::Arc<str>,
    #[pyo3(get)]
    pub num_returns: u32,
    /// The engine's options without the runtime environment, which is the submitting
    /// process's at the time of each call; shared by the tasks submitted with them.
    pub engine: std::sync::Arc<EngineOptions>,
}

#[pymethods]
impl TaskOptions {
    #[new]
    #[pyo3(signature = (name, num_returns = 1, num_cpus = 1.0, max_retries = 3, retry_exceptions = false, streaming = false, resources = Vec::new(), strategy = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        name: String,
        num_returns: u32,
        num_cpus: f64,
        max_retries: i32,
        retry_exceptions: bool,
        streaming: bool,
        resources: Vec<(String, f64)>,
        strategy: Option<(String, u32, bool)>,
    ) -> PyResult<TaskOptions> {
        check_returns(num_returns, streaming)?;
        if max_retries < -1 {
            return Err(PyValueError::new_err(format!(
                "max_retries must be >= -1 (-1: unlimited), not {max_retries}"
            )));
        }
        let engine = EngineOptions {
            cpu_milli: cpu_milli(num_cpus)?,
            max_retries,
            retry_exceptions,
            streaming,
            resources: milli_resources(resources)?,
            runtime_env: None,
            strategy: strategy_of(strategy)?,
        };
        Ok(TaskOptions { name: name.into(), num_returns, engine: engine.into() })
    }

    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    #[getter]
    fn num_cpus(&self) -> f64 {
        f64::from(self.engine.cpu_milli) / 1000.0
    }

    #[getter]
    fn max_retries(&self) -> i32 {
        self.engine.max_retries
    }

    #[getter]
    fn retry_exceptions(&self) -> bool {
        self.engine.retry_exceptions
    }

    #[getter]
    fn streaming(&self) -> bool {
        self.engine.streaming
    }

    /// Resources other than CPUs, as (name, amount).
    #[getter]
    fn resources(&self) -> Vec<(String, f64)> {
        self.engine.resources.iter().map(|(k, m)| (k.clone(), *m as f64 / 1000.0)).collect()
    }

    fn __repr__(&self) -> String {
        format!(
            "TaskOptions({:?}, num_returns={}, num_cpus={}, max_retries={}, streaming={}, \
             strategy={:?})",
            self.name,
            self.num_returns,
            self.num_cpus(),
            self.engine.max_retries,
            self.engine.streaming,
            self.engine.strategy
        )
    }
}

/// What stays the same for every call of one actor method through one handle: the method, the
/// name its tasks show, and how many values it returns.
#[pyclass(module = "volley._core", frozen)]
pub struct ActorCallOptions {
    #[pyo3(get)]
    pub method: String,
    /// Shared by the calls made with these options (see `TaskOptions::name`).
    pub name: std::sync::Arc<str>,
    #[pyo3(get)]
    pub num_returns: u32,
    /// A call's engine options: none of a task's (the actor holds its resources), only
    /// whether it streams; shared by the calls made with them.
    pub engine: std::sync::Arc<EngineOptions>,
}

#[pymethods]
impl ActorCallOptions {
    #[new]
    #[pyo3(signature = (method, name, num_returns = 1, streaming = false))]
    fn new(
        method: String,
        name: String,
        num_returns: u32,
        streaming: bool,
    ) -> PyResult<ActorCallOptions> {
        check_returns(num_returns, streaming)?;
        let engine = EngineOptions {
            cpu_milli: 0,
            max_retries: 0,
            retry_exceptions: false,
            streaming,
            resources: Vec::new(),
            runtime_env: None,
            strategy: Strategy::Default,
        };
        Ok(ActorCallOptions { method, name: name.into(), num_returns, engine: engine.into() })
    }

    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    #[getter]
    fn streaming(&self) -> bool {
        self.engine.streaming
    }

    fn __repr__(&self) -> String {
        format!(
            "ActorCallOptions({:?}, {:?}, num_returns={}, streaming={})",
            self.method, self.name, self.num_returns, self.engine.streaming
        )
    }
}

/// How an actor is created (`@volley.remote class` with its `.options(...)`): checked and
/// converted where it is made, so that `create_actor` takes one typed object instead of a dozen
/// positional arguments.
#[pyclass(module = "volley._core", frozen)]
pub struct ActorCreateOptions {
    /// The engine's actor options, with the handle's `meta` (the class's method table, ...).
    pub actor: ActorOptions,
    pub cpu_milli: u32,
    pub resources: Vec<(String, u64)>,
    pub strategy: Strategy,
}

#[pymethods]
impl ActorCreateOptions {
    #[new]
    #[pyo3(signature = (class_name, *, num_cpus = 0.0, resources = Vec::new(), max_restarts = 0, max_task_retries = 0, max_concurrency = 1, is_async = false, name = None, namespace = String::from("default"), detached = false, get_if_exists = false, strategy = None, meta = Vec::new()))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        class_name: String,
        num_cpus: f64,
        resources: Vec<(String, f64)>,
        max_restarts: i32,
        max_task_retries: i32,
        max_concurrency: u32,
        is_async: bool,
        name: Option<String>,
        namespace: String,
        detached: bool,
        get_if_exists: bool,
        strategy: Option<(String, u32, bool)>,
        meta: Vec<u8>,
    ) -> PyResult<ActorCreateOptions> {
        if max_concurrency == 0 {
            return Err(PyValueError::new_err("max_concurrency must be >= 1"));
        }
        Ok(ActorCreateOptions {
            cpu_milli: cpu_milli(num_cpus)?,
            resources: milli_resources(resources)?,
            strategy: strategy_of(strategy)?,
            actor: ActorOptions {
                class_name,
                max_restarts,
                max_task_retries,
                max_concurrency,
                is_async,
                name,
                namespace,
                detached,
                get_if_exists,
                meta,
            },
        })
    }

    #[getter]
    fn class_name(&self) -> &str {
        &self.actor.class_name
    }

    #[getter]
    fn name(&self) -> Option<&str> {
        self.actor.name.as_deref()
    }

    #[getter]
    fn namespace(&self) -> &str {
        &self.actor.namespace
    }

    #[getter]
    fn num_cpus(&self) -> f64 {
        f64::from(self.cpu_milli) / 1000.0
    }

    fn __repr__(&self) -> String {
        let name = self.actor.name.as_ref().map_or("None".to_string(), |n| format!("{n:?}"));
        let detached = if self.actor.detached { "True" } else { "False" };
        format!(
            "ActorCreateOptions({:?}, name={name}, namespace={:?}, num_cpus={}, max_restarts={}, \
             max_concurrency={}, detached={detached})",
            self.actor.class_name,
            self.actor.namespace,
            self.num_cpus(),
            self.actor.max_restarts,
            self.actor.max_concurrency,
        )
    }
}
