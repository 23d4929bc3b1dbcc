//! Bindings for the primitive ops an asyncio event loop awaits (`volley._async_prims`):
//! conversion only; the engine's side is `volley_runtime::client::async_prims`. Starting and
//! cancelling never wait; `prim_answers` waits (GIL released) for the answers of all of them.

use std::convert::Infallible;
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};
use pyo3::IntoPyObjectExt;
use serde_bytes::ByteBuf;
use volley_proto::{Guard, PrimOp, PrimResult, SyncOp};

use crate::client;
use crate::errors::enter;

/// Starts op `op` on primitive `target` without waiting: `(request id, the answer as (kind,
/// value) if it came at once, else None)`. `op` is one of put
/// and get (a queue), join (a queue), send and recv (a channel; `arg` is a broadcast reader's
/// end), acquire (a lock or semaphore; `arg` is the holder), wait (an event), barrier_wait
/// and cond_wait (a condition; `arg` is the holder of its lock).
#[pyfunction]
#[pyo3(signature = (op, target, arg = 0, item = None))]
fn prim_start<'py>(
    py: Python<'py>,
    op: &str,
    target: u64,
    arg: u64,
    item: Option<&Bound<'_, PyBytes>>,
) -> PyResult<Bound<'py, PyTuple>> {
    let item = || -> PyResult<Vec<u8>> {
        item.map(|b| b.as_bytes().to_vec())
            .ok_or_else(|| PyValueError::new_err(format!("the {op} op needs an item")))
    };
    let op = match op {
        "put" => PrimOp::Put { queue: target, item: item()?, block: true },
        "get" => PrimOp::Get { queue: target, block: true },
        "join" => PrimOp::Join { queue: target },
        "send" => PrimOp::ChanSend { chan: target, item: item()? },
        "recv" => PrimOp::ChanRecv { chan: target, reg: arg },
        "acquire" => {
            PrimOp::Sync { prim: target, op: SyncOp::Acquire { holder: arg, block: true } }
        }
        "wait" => PrimOp::Sync { prim: target, op: SyncOp::Wait },
        "barrier_wait" => PrimOp::Sync { prim: target, op: SyncOp::BarrierWait },
        "cond_wait" => PrimOp::Sync { prim: target, op: SyncOp::CondWait { holder: arg } },
        other => return Err(PyValueError::new_err(format!("no awaitable primitive op {other:?}"))),
    };
    let c = client()?;
    let got = enter(py, || c.prim_start(op))?;
    started(py, got)
}

/// Starts a channel select over `guards` (each `(chan, reg, item or None)`) without waiting;
/// as [`prim_start`].
#[pyfunction]
#[pyo3(signature = (guards, priority = false))]
fn prim_start_select(
    py: Python<'_>,
    guards: Vec<(u64, u64, Option<Vec<u8>>)>,
    priority: bool,
) -> PyResult<Bound<'_, PyTuple>> {
    let guards = guards
        .into_iter()
        .map(|(chan, reg, send)| Guard { chan, reg, send: send.map(ByteBuf::from) })
        .collect();
    let c = client()?;
    let got = enter(py, || c.prim_start(PrimOp::ChanSelect { guards, skip: false, priority }))?;
    started(py, got)
}

/// The awaiter of op `req` stops waiting: with `give_back` (cancelled) what the op got is
/// undone and its answer never comes; without (a timeout) its answer still comes.
#[pyfunction]
fn prim_cancel(py: Python<'_>, req: u64, give_back: bool) -> PyResult<()> {
    let c = client()?;
    enter(py, || {
        c.prim_cancel(req, give_back);
        Ok::<_, Infallible>(())
    })
}

/// The awaiter of op `req` took its answer.
#[pyfunction]
fn prim_done(req: u64) -> PyResult<()> {
    client()?.prim_done(req);
    Ok(())
}

/// Waits up to `timeout` seconds for answers to started ops: `(request, kind, value)` each,
/// `kind` naming the answer (item, empty, full, done, acquired, arrived, selected, closed,
/// error, poisoned, retired, broken). `ChannelClosed` once this process's node is gone.
#[pyfunction]
fn prim_answers(py: Python<'_>, timeout: f64) -> PyResult<Vec<Bound<'_, PyTuple>>> {
    let c = client()?;
    let timeout = Duration::from_secs_f64(timeout.clamp(0.0, 1e6));
    let got = match py.detach(|| c.prim_answers(timeout)) {
        Ok(got) => got,
        Err(e) => return Err(crate::prims::closed(py, e.to_string())),
    };
    got.into_iter()
        .map(|(req, r)| {
            let (kind, value) = answer(py, r)?;
            PyTuple::new(py, [req.into_bound_py_any(py)?, kind.into_bound_py_any(py)?, value])
        })
        .collect()
}

/// An answer as `(kind, value)` (see [`prim_answers`]).
fn answer(py: Python<'_>, r: PrimResult) -> PyResult<(&'static str, Bound<'_, PyAny>)> {
    Ok(match r {
        PrimResult::Item(b) => ("item", PyBytes::new(py, &b).into_any()),
        PrimResult::Empty => ("empty", py.None().into_bound(py)),
        PrimResult::Full => ("full", py.None().into_bound(py)),
        PrimResult::Done => ("done", py.None().into_bound(py)),
        PrimResult::Acquired { died, notified } => {
            ("acquired", (died, notified).into_bound_py_any(py)?)
        }
        PrimResult::Arrived(i) => ("arrived", i.into_bound_py_any(py)?),
        PrimResult::Selected { index, item, .. } => {
            let item = item.map(|b| PyBytes::new(py, &b));
            ("selected", (index, item).into_bound_py_any(py)?)
        }
        PrimResult::Closed(m) => ("closed", m.into_bound_py_any(py)?),
        PrimResult::Error(m) => ("error", m.into_bound_py_any(py)?),
        PrimResult::Poisoned(m) => ("poisoned", m.into_bound_py_any(py)?),
        PrimResult::Retired(m) => ("retired", m.into_bound_py_any(py)?),
        PrimResult::Broken(m) => ("broken", m.into_bound_py_any(py)?),
        other => ("error", format!("unexpected answer {other:?}").into_bound_py_any(py)?),
    })
}

/// `(request, the answer as (kind, value) if it came at once, else None)`.
fn started(py: Python<'_>, (req, now): (u64, Option<PrimResult>)) -> PyResult<Bound<'_, PyTuple>> {
    let now = match now {
        Some(r) => answer(py, r)?.into_bound_py_any(py)?,
        None => py.None().into_bound(py),
    };
    PyTuple::new(py, [req.into_bound_py_any(py)?, now])
}

/// How many awaited ops this process has started and not finished (tests).
#[pyfunction]
fn prims_awaited() -> PyResult<usize> {
    Ok(client()?.prims_awaited())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(prim_start, m)?)?;
    m.add_function(wrap_pyfunction!(prim_start_select, m)?)?;
    m.add_function(wrap_pyfunction!(prim_cancel, m)?)?;
    m.add_function(wrap_pyfunction!(prim_done, m)?)?;
    m.add_function(wrap_pyfunction!(prim_answers, m)?)?;
    m.add_function(wrap_pyfunction!(prims_awaited, m)?)?;
    Ok(())
}
