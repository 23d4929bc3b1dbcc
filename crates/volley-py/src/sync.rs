//! Bindings for the locks, semaphores, events, barriers and conditions of the node's primitive
//! service (`volley.sync`): conversion only; the service is `volley_runtime::prims::sync`.
//! Every wait goes through [`enter`], so Ctrl-C interrupts it (and cancels the parked op).

use std::time::Duration;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyType;
use volley_proto::{PrimOp, PrimResult, SyncKind, SyncOp};

use crate::client;
use crate::errors::{check_signals, enter};
use crate::prims::{closed, timeout_of};

/// `threading.BrokenBarrierError(msg)`.
fn broken(py: Python<'_>, msg: String) -> PyErr {
    let cls = py
        .import("threading")
        .and_then(|m| m.getattr("BrokenBarrierError"))
        .and_then(|c| c.cast_into::<PyType>().map_err(PyErr::from));
    match cls {
        Ok(c) => PyErr::from_type(c, msg),
        Err(e) => e,
    }
}

/// Runs op `op` on `prim` with the GIL released; `Closed`, `Error` and `Broken` answers
/// become exceptions (misuse is `RuntimeError`, as in `threading`).
fn run(py: Python<'_>, op: PrimOp, timeout: Option<Duration>) -> PyResult<PrimResult> {
    let c = client()?;
    match enter(py, || c.prim(op, timeout, check_signals))? {
        PrimResult::Closed(m) => Err(closed(py, m)),
        PrimResult::Error(m) => Err(PyRuntimeError::new_err(m)),
        PrimResult::Broken(m) => Err(broken(py, m)),
        r => Ok(r),
    }
}

fn on(py: Python<'_>, prim: u64, op: SyncOp, timeout: Option<Duration>) -> PyResult<PrimResult> {
    run(py, PrimOp::Sync { prim, op }, timeout)
}

fn unexpected(r: PrimResult) -> PyErr {
    PyRuntimeError::new_err(format!("the synchronisation service answered {r:?}"))
}

/// Makes a primitive on this process's node: `kind` is one of lock, rlock, semaphore,
/// bounded_semaphore, event, barrier (`value` parties), condition (over lock `lock`); its id.
#[pyfunction]
#[pyo3(signature = (kind, value = 0, lock = 0))]
fn sync_create(py: Python<'_>, kind: &str, value: u64, lock: u64) -> PyResult<u64> {
    let kind = match kind {
        "lock" => SyncKind::Lock,
        "rlock" => SyncKind::RLock,
        "semaphore" => SyncKind::Semaphore { value, bounded: false },
        "bounded_semaphore" => SyncKind::Semaphore { value, bounded: true },
        "event" => SyncKind::Event,
        "barrier" => SyncKind::Barrier { parties: value },
        "condition" => SyncKind::Condition { lock },
        other => return Err(PyValueError::new_err(format!("no primitive kind {other:?}"))),
    };
    let c = client()?;
    match enter(py, || c.prim(PrimOp::SyncCreate { kind }, None, check_signals))? {
        PrimResult::Created(id) => Ok(id),
        // Refused input (parties 0, a condition over a non-lock) is the caller's value.
        PrimResult::Error(m) => Err(PyValueError::new_err(m)),
        r => Err(unexpected(r)),
    }
}

/// Takes a unit of lock/rlock/semaphore `prim` for thread `holder` of this process, waiting
/// up to `timeout` (None: for ever; not at all unless `block`). (acquired, a holder died).
#[pyfunction]
#[pyo3(signature = (prim, holder, block = true, timeout = None))]
fn sync_acquire(
    py: Python<'_>,
    prim: u64,
    holder: u64,
    block: bool,
    timeout: Option<f64>,
) -> PyResult<(bool, bool)> {
    let timeout = timeout_of(timeout)?;
    match on(py, prim, SyncOp::Acquire { holder, block }, timeout)? {
        PrimResult::Acquired { died, .. } => Ok((true, died)),
        PrimResult::Empty => Ok((false, false)),
        r => Err(unexpected(r)),
    }
}

/// Gives back a unit `holder` holds. With `no_reply` (the caller knows it holds it) a worker
/// does not wait for the answer: a failure is raised by its next op on the service.
#[pyfunction]
#[pyo3(signature = (prim, holder, no_reply = false))]
fn sync_release(py: Python<'_>, prim: u64, holder: u64, no_reply: bool) -> PyResult<()> {
    let op = PrimOp::Sync { prim, op: SyncOp::Release { holder } };
    let result = if no_reply {
        let c = client()?;
        enter(py, || c.prim_no_reply(op))?
    } else {
        run(py, op, None)?
    };
    match result {
        PrimResult::Done => Ok(()),
        PrimResult::Closed(m) => Err(closed(py, m)),
        PrimResult::Error(m) => Err(PyRuntimeError::new_err(m)),
        r => Err(unexpected(r)),
    }
}

/// (value, broken): a lock's holds, a semaphore's free units, an event's flag, a barrier's
/// parked parties and whether it is broken.
#[pyfunction]
fn sync_state(py: Python<'_>, prim: u64) -> PyResult<(u64, bool)> {
    match on(py, prim, SyncOp::State, None)? {
        PrimResult::State { value, broken } => Ok((value, broken)),
        r => Err(unexpected(r)),
    }
}

/// Sets (`flag`) or clears event `prim`.
#[pyfunction]
fn event_set(py: Python<'_>, prim: u64, flag: bool) -> PyResult<()> {
    on(py, prim, if flag { SyncOp::Set } else { SyncOp::Clear }, None).map(|_| ())
}

/// Waits until event `prim` is set; False if `timeout` passed first.
#[pyfunction]
#[pyo3(signature = (prim, timeout = None))]
fn event_wait(py: Python<'_>, prim: u64, timeout: Option<f64>) -> PyResult<bool> {
    match on(py, prim, SyncOp::Wait, timeout_of(timeout)?)? {
        PrimResult::Done => Ok(true),
        PrimResult::Empty => Ok(false),
        r => Err(unexpected(r)),
    }
}

/// Waits at barrier `prim`; the arrival index. `BrokenBarrierError` if it is or gets broken
/// (a timeout breaks it).
#[pyfunction]
#[pyo3(signature = (prim, timeout = None))]
fn barrier_wait(py: Python<'_>, prim: u64, timeout: Option<f64>) -> PyResult<u64> {
    match on(py, prim, SyncOp::BarrierWait, timeout_of(timeout)?)? {
        PrimResult::Arrived(i) => Ok(i),
        r => Err(unexpected(r)),
    }
}

/// Breaks barrier `prim` (`abort`), or with `reset` breaks its parked waits and makes it whole.
#[pyfunction]
fn barrier_break(py: Python<'_>, prim: u64, reset: bool) -> PyResult<()> {
    on(py, prim, if reset { SyncOp::Reset } else { SyncOp::Abort }, None).map(|_| ())
}

/// Waits on condition `prim` (its lock released meanwhile, held again on return); (notified,
/// a holder of the lock died while this waited).
#[pyfunction]
#[pyo3(signature = (prim, holder, timeout = None))]
fn cond_wait(
    py: Python<'_>,
    prim: u64,
    holder: u64,
    timeout: Option<f64>,
) -> PyResult<(bool, bool)> {
    match on(py, prim, SyncOp::CondWait { holder }, timeout_of(timeout)?)? {
        PrimResult::Acquired { died, notified } => Ok((notified, died)),
        r => Err(unexpected(r)),
    }
}

/// Wakes up to `n` waiters of condition `prim`; `holder` must hold its lock.
#[pyfunction]
fn cond_notify(py: Python<'_>, prim: u64, holder: u64, n: u64) -> PyResult<()> {
    on(py, prim, SyncOp::Notify { holder, n }, None).map(|_| ())
}

/// Drops primitive `prim`: every waiting and later op on it raises `ChannelClosed`.
#[pyfunction]
fn sync_close(py: Python<'_>, prim: u64) -> PyResult<()> {
    on(py, prim, SyncOp::Close, None).map(|_| ())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(sync_create, m)?)?;
    m.add_function(wrap_pyfunction!(sync_acquire, m)?)?;
    m.add_function(wrap_pyfunction!(sync_release, m)?)?;
    m.add_function(wrap_pyfunction!(sync_state, m)?)?;
    m.add_function(wrap_pyfunction!(event_set, m)?)?;
    m.add_function(wrap_pyfunction!(event_wait, m)?)?;
    m.add_function(wrap_pyfunction!(barrier_wait, m)?)?;
    m.add_function(wrap_pyfunction!(barrier_break, m)?)?;
    m.add_function(wrap_pyfunction!(cond_wait, m)?)?;
    m.add_function(wrap_pyfunction!(cond_notify, m)?)?;
    m.add_function(wrap_pyfunction!(sync_close, m)?)?;
    Ok(())
}
