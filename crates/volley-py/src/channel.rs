//! Bindings for CSP channels (`volley.channel`) on the node's primitive service: conversion
//! only; the service is `volley_runtime::prims::channel`. Every wait goes through [`enter`]
//! and the client's `prim`, so Ctrl-C interrupts it and cancels the parked op.

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple, PyType};
use serde_bytes::ByteBuf;
use volley_proto::{Guard, PrimOp, PrimResult};

use crate::client;
use crate::errors::{check_signals, enter};
use crate::object_ref::id_from_bytes;
use crate::prims::{closed, timeout_of};

/// `name(msg)` from `volley.channel` (`ChannelPoisoned`, `ChannelRetired`).
fn channel_error(py: Python<'_>, name: &str, msg: String) -> PyErr {
    let cls = py
        .import("volley.channel")
        .and_then(|m| m.getattr(name))
        .and_then(|c| c.cast_into::<PyType>().map_err(PyErr::from));
    match cls {
        Ok(c) => PyErr::from_type(c, msg),
        Err(e) => e,
    }
}

/// Runs `op` with the GIL released; failures become exceptions.
fn run(py: Python<'_>, op: PrimOp, timeout: Option<f64>) -> PyResult<PrimResult> {
    let timeout = timeout_of(timeout)?;
    let c = client()?;
    match enter(py, || c.prim(op, timeout, check_signals))? {
        PrimResult::Closed(m) => Err(closed(py, m)),
        PrimResult::Error(m) => Err(PyValueError::new_err(m)),
        PrimResult::Poisoned(m) => Err(channel_error(py, "ChannelPoisoned", m)),
        PrimResult::Retired(m) => Err(channel_error(py, "ChannelRetired", m)),
        r => Ok(r),
    }
}

fn unexpected(r: PrimResult) -> PyErr {
    PyRuntimeError::new_err(format!("the channel service answered {r:?}"))
}

fn created(r: PrimResult) -> PyResult<u64> {
    match r {
        PrimResult::Created(id) => Ok(id),
        r => Err(unexpected(r)),
    }
}

/// Makes a channel on this process's node; its id.
#[pyfunction]
fn chan_create(py: Python<'_>, capacity: u64, broadcast: bool, name: String) -> PyResult<u64> {
    created(run(py, PrimOp::ChanCreate { capacity, broadcast, name }, None)?)
}

/// Sends `item`; False if no receiver (or buffer room) came within `timeout`.
#[pyfunction]
#[pyo3(signature = (chan, item, timeout = None))]
fn chan_send(
    py: Python<'_>,
    chan: u64,
    item: &Bound<'_, PyBytes>,
    timeout: Option<f64>,
) -> PyResult<bool> {
    match run(py, PrimOp::ChanSend { chan, item: item.as_bytes().to_vec() }, timeout)? {
        PrimResult::Done => Ok(true),
        PrimResult::Full => Ok(false),
        r => Err(unexpected(r)),
    }
}

/// Receives an item (`reg`: the reader end, on a broadcast channel); None if none came
/// within `timeout`.
#[pyfunction]
#[pyo3(signature = (chan, reg = 0, timeout = None))]
fn chan_recv<'py>(
    py: Python<'py>,
    chan: u64,
    reg: u64,
    timeout: Option<f64>,
) -> PyResult<Option<Bound<'py, PyBytes>>> {
    match run(py, PrimOp::ChanRecv { chan, reg }, timeout)? {
        PrimResult::Item(b) => Ok(Some(PyBytes::new(py, &b))),
        PrimResult::Empty => Ok(None),
        r => Err(unexpected(r)),
    }
}

/// Commits one ready guard of `guards` (each `(chan, reg, item or None)`): `(index, item or
/// None)`, or None if none was ready (`skip`) or became ready within `timeout`.
#[pyfunction]
#[pyo3(signature = (guards, timeout = None, skip = false, priority = false))]
fn chan_select<'py>(
    py: Python<'py>,
    guards: Vec<(u64, u64, Option<Vec<u8>>)>,
    timeout: Option<f64>,
    skip: bool,
    priority: bool,
) -> PyResult<Option<Bound<'py, PyTuple>>> {
    let guards = guards
        .into_iter()
        .map(|(chan, reg, send)| Guard { chan, reg, send: send.map(ByteBuf::from) })
        .collect();
    match run(py, PrimOp::ChanSelect { guards, skip, priority }, timeout)? {
        PrimResult::Selected { index, item, .. } => {
            let item = item.map(|b| PyBytes::new(py, &b));
            Ok(Some((index, item).into_pyobject(py)?))
        }
        PrimResult::Empty => Ok(None),
        r => Err(unexpected(r)),
    }
}

/// Poisons the channel: every waiting and later op on it raises `ChannelPoisoned`.
#[pyfunction]
fn chan_poison(py: Python<'_>, chan: u64) -> PyResult<()> {
    run(py, PrimOp::ChanPoison { chan }, None).map(|_| ())
}

/// Registers a reader (or writer) end held by this process (`travelling`: being pickled, for
/// the process that unpickles it to claim); its registration.
#[pyfunction]
#[pyo3(signature = (chan, reader, travelling = false))]
fn chan_join(py: Python<'_>, chan: u64, reader: bool, travelling: bool) -> PyResult<u64> {
    created(run(py, PrimOp::ChanJoin { chan, reader, travelling }, None)?)
}

/// This process unpickled the end registered as `reg`: it holds it now; its registration.
#[pyfunction]
fn chan_claim(py: Python<'_>, chan: u64, reg: u64, reader: bool) -> PyResult<u64> {
    created(run(py, PrimOp::ChanClaim { chan, reg, reader }, None)?)
}

/// End `reg` leaves (counting as retired with `retire`). Without `retire` (an end dropped) it
/// does not wait for the node's answer.
#[pyfunction]
fn chan_leave(py: Python<'_>, reg: u64, retire: bool) -> PyResult<()> {
    let op = PrimOp::ChanLeave { reg, retire };
    if retire {
        return run(py, op, None).map(|_| ());
    }
    let c = client()?;
    enter(py, || c.prim_no_reply(op)).map(|_| ())
}

/// Holds (`hold`) or lets go of the objects `ids` (20-byte ids) for the node, while a large
/// channel message that refers to them travels.
#[pyfunction]
fn chan_hold(py: Python<'_>, ids: Vec<Vec<u8>>, hold: bool) -> PyResult<()> {
    let ids = ids.iter().map(|b| id_from_bytes(b)).collect::<PyResult<Vec<_>>>()?;
    run(py, PrimOp::ChanHold { ids, hold }, None).map(|_| ())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(chan_create, m)?)?;
    m.add_function(wrap_pyfunction!(chan_send, m)?)?;
    m.add_function(wrap_pyfunction!(chan_recv, m)?)?;
    m.add_function(wrap_pyfunction!(chan_select, m)?)?;
    m.add_function(wrap_pyfunction!(chan_poison, m)?)?;
    m.add_function(wrap_pyfunction!(chan_join, m)?)?;
    m.add_function(wrap_pyfunction!(chan_claim, m)?)?;
    m.add_function(wrap_pyfunction!(chan_leave, m)?)?;
    m.add_function(wrap_pyfunction!(chan_hold, m)?)?;
    Ok(())
}
