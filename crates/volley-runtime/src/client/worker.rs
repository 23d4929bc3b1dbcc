//! A worker process's task loop: take a task from the node, run it through the binding's
//! [`TaskRunner`], report the result. The loop owns what is engine policy (when results go at
//! once or in batches, when deferred releases go, clearing a cancel's pending interrupt,
//! retiring), the runner only what needs the language the task is written in.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use volley_proto::{
    ActorPart, ErrorKind, ErrorPayload, TaskId, TaskResult, WorkerId, WorkerToNode,
};

use super::{Backend, Client, ClientError};
use crate::{ExecuteMsg, WorkerConn};

/// Why a task could not be run to a result of its own (its code raising is a result, not this).
#[derive(Debug)]
pub enum RunError {
    /// A value (an argument, a result) did not fit in the object store.
    StoreFull(String),
    /// Anything else that went wrong on the way: the message says what.
    Failed(String),
}

/// What the binding provides to run tasks in its language.
pub trait TaskRunner {
    /// Runs `f`, which may block for long, letting other threads of the language run meanwhile
    /// (for Python: with the GIL released).
    fn blocking<T: Send>(&mut self, f: impl FnOnce() -> T + Send) -> T;

    /// Runs one task. `function` is the function's bytes the first time this worker runs it
    /// (the runner caches what it loads), else None; the runner may take `task.deps`.
    /// `Ok(None)`: the call goes on elsewhere (a threaded or async actor) and is reported later
    /// through [`Client::complete_task`].
    fn run(
        &mut self,
        client: &Client,
        task: &mut ExecuteMsg,
        function: Option<Arc<[u8]>>,
    ) -> Result<Option<TaskResult>, RunError>;

    /// The task that just ended was interrupted by a cancel whose interrupt may still be pending:
    /// it must be consumed here so that it does not hit the next task.
    fn clear_interrupt(&mut self);
}

impl Client {
    /// Connects this worker process to its node and installs the client. Call it from the
    /// thread that runs tasks: a cancelled task is interrupted there with a real SIGINT, which
    /// both wakes a blocking system call and lets the language raise its interrupt.
    pub fn connect_worker(
        socket: &str,
        worker_id: WorkerId,
        token: &str,
    ) -> Result<Arc<Client>, ClientError> {
        TASK_THREAD.store(
            // SAFETY: pthread_self has no preconditions.
            unsafe { libc::pthread_self() } as u64,
            Ordering::Release,
        );
        fn interrupt() {
            let thread = TASK_THREAD.load(Ordering::Acquire);
            // SAFETY: `thread` ran `connect_worker` and is the process's task thread, which
            // lives as long as the process.
            unsafe { libc::pthread_kill(thread as libc::pthread_t, libc::SIGINT) };
        }
        let store = std::env::var("VOLLEY_STORE").ok().filter(|s| !s.is_empty());
        let conn = WorkerConn::connect(socket, worker_id, token, store.as_deref(), interrupt)?;
        let threshold = conn.inline_threshold;
        Ok(super::install(Backend::Worker(conn), threshold))
    }

    /// Called by a task (not an actor's): this worker exits cleanly once the task has returned
    /// and its result is sent; the node takes back what was queued behind it and starts a
    /// replacement (a pool's `maxtasksperchild`).
    pub fn retire(&self) -> Result<(), ClientError> {
        match self.backend {
            Backend::Worker(_) => {
                self.retire.store(true, Ordering::SeqCst);
                Ok(())
            }
            Backend::Node(_) => {
                Err(ClientError::WrongProcess("retire_worker is for tasks running in a worker"))
            }
        }
    }

    /// The worker's main loop: takes tasks (through `runner.blocking` while waiting), runs each
    /// through `runner`, and reports the result. Returns when the node says to stop.
    pub fn run_worker<R: TaskRunner>(&self, runner: &mut R) -> Result<(), ClientError> {
        let Backend::Worker(conn) = &self.backend else {
            return Err(ClientError::WrongProcess("worker_main runs in worker processes only"));
        };
        let conn = conn.clone();
        let mut loaded = HashSet::new();
        while let Some(mut task) = runner.blocking(|| conn.next_task()) {
            // The runner caches loaded functions: it needs the bytes only the first time.
            let function = if loaded.insert(task.spec.function) {
                conn.function(&task.spec.function)
            } else {
                None
            };
            // Tasks this one submits run in its environment; an actor's method calls carry
            // none, and run in (and submit tasks in) the one the actor was created in.
            if !matches!(task.spec.actor, ActorPart::Call(_)) {
                self.set_runtime_env(task.spec.options.runtime_env.clone());
            }
            let outcome = runner.run(self, &mut task, function);
            let spec = &task.spec;
            // A cancel's interrupt may land before the runner loaded the function (while it
            // read the arguments, or on entering Python): then the next task of that function
            // brings the bytes again (a runner that did load it ignores them).
            let failed = outcome.is_err();
            let mut after = |conn: &WorkerConn, runner: &mut R| {
                if conn.finish_task().interrupted {
                    // The interrupt may still be pending; it must not hit the next task.
                    runner.clear_interrupt();
                    loaded.remove(&spec.function);
                } else if failed {
                    loaded.remove(&spec.function);
                }
            };
            let result = match outcome {
                Ok(None) => {
                    after(&conn, runner);
                    continue;
                }
                Ok(Some(r)) => Ok(r),
                Err(e) => Err(e),
            };
            let result = finish_result(&spec.name, result);
            after(&conn, runner);
            let done = WorkerToNode::Done { task: spec.task_id, result };
            // A pool task's completion is what lets the node feed this worker's pipeline: it
            // goes at once. An actor's calls queue here without limit, so their results may go
            // in batches.
            let sent = if matches!(spec.actor, ActorPart::Call(_)) {
                conn.send_soon(&done)
            } else {
                conn.send(&done)
            };
            if sent.is_err() {
                break;
            }
            self.flush_decrefs();
            if self.retire.swap(false, Ordering::SeqCst) && matches!(spec.actor, ActorPart::None) {
                // An actor's process is the actor: only a plain task's worker retires.
                let _ = conn.send(&WorkerToNode::Retire);
                break;
            }
        }
        let _ = conn.flush();
        Ok(())
    }

    /// Reports the result of a task whose runner returned `Ok(None)` (it ran on another thread,
    /// or as a coroutine).
    pub fn complete_task(
        &self,
        task: TaskId,
        name: &str,
        result: Result<TaskResult, RunError>,
    ) -> Result<(), ClientError> {
        let Backend::Worker(conn) = &self.backend else {
            return Err(ClientError::WrongProcess("complete_task runs in worker processes only"));
        };
        let done = WorkerToNode::Done { task, result: finish_result(name, result) };
        conn.send_soon(&done)?;
        self.flush_decrefs();
        Ok(())
    }

    /// In a worker running a streaming task: sends item `index` (2, 3, ...) of `task`; its
    /// segment is given back if it cannot be sent.
    pub fn stream_yield(
        &self,
        task: TaskId,
        index: u32,
        written: super::store::Written,
    ) -> Result<(), ClientError> {
        let Backend::Worker(w) = &self.backend else {
            return Err(ClientError::WrongProcess("stream_yield runs in worker processes only"));
        };
        let msg = WorkerToNode::Yield { task, index, data: written.data };
        if let Err(e) = w.send_soon(&msg) {
            w.release_segments(written.pending_seg.into_iter().collect());
            return Err(e.into());
        }
        Ok(())
    }
}

/// The thread `connect_worker` ran on (a `pthread_t`), which a cancel interrupts.
static TASK_THREAD: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A task's outcome, with a failure to run it (a result too large for the store, ...) turned
/// into the task's error, named after the task.
pub fn finish_result(name: &str, result: Result<TaskResult, RunError>) -> TaskResult {
    let result = result.unwrap_or_else(|e| {
        let (kind, message) = match e {
            RunError::StoreFull(m) => (ErrorKind::ObjectStoreFull, m),
            RunError::Failed(m) => (
                ErrorKind::TaskException,
                format!("volley's worker failed to run task '{name}': {m}"),
            ),
        };
        TaskResult::Err {
            error: ErrorPayload {
                kind,
                task_name: name.to_string(),
                message,
                traceback: String::new(),
                exception: None,
                pid: std::process::id(),
            },
            retryable: false,
        }
    });
    match result {
        TaskResult::Err { mut error, retryable } => {
            error.task_name = name.to_string();
            TaskResult::Err { error, retryable }
        }
        ok => ok,
    }
}
