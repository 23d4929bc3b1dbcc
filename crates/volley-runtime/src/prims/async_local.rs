//! The driver's side of the primitive ops an event loop awaits (`client::async_prims`): the op
//! runs on the embedded node without waiting, and its answer stays in `local` under its
//! [`ASYNC_REQ`]-marked id until the process's answer collector takes it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use volley_proto::{PrimOp, PrimResult};

use super::{deliver, hold_refs, Prims, Who};
use crate::client::ASYNC_REQ;
use crate::shared::Shared;

impl Prims {
    /// A fresh request id for an awaited op of the driver.
    pub(crate) fn async_req(&self) -> u64 {
        self.next_local() | ASYNC_REQ
    }

    /// The answer to the driver's awaited op `req` if it is here already (an op that did not
    /// park is answered as it runs).
    pub(crate) fn take_now(&self, req: u64) -> Option<PrimResult> {
        self.inner.lock().local.remove(&req)
    }

    /// Waits up to `timeout` for answers to the driver's awaited ops and takes them.
    pub(crate) fn take_async(&self, timeout: Duration) -> Vec<(u64, PrimResult)> {
        let mut inner = self.inner.lock();
        for round in 0..2 {
            let keys: Vec<u64> =
                inner.local.keys().filter(|k| *k & ASYNC_REQ != 0).copied().collect();
            if !keys.is_empty() {
                return keys
                    .into_iter()
                    .filter_map(|k| inner.local.remove(&k).map(|r| (k, r)))
                    .collect();
            }
            if round == 0 {
                inner = self.local_cv.wait_for(inner, timeout);
            }
        }
        Vec::new()
    }
}

/// Runs the driver's op `req` without waiting for its answer; false if the node is shut down.
pub(crate) fn async_send(shared: &Shared, req: u64, op: PrimOp) -> bool {
    if shared.closed.load(Ordering::Acquire) {
        return false;
    }
    hold_refs(shared, &op);
    deliver(shared, shared.prims.op(Who::Local, req, op));
    true
}

/// Stops the driver's awaited op `req` waiting (its answer, `Empty`/`Full` or what it got
/// meanwhile, still comes).
pub(crate) fn async_cancel(shared: &Shared, req: u64) {
    deliver(shared, shared.prims.op(Who::Local, req, PrimOp::Cancel));
}

/// Sends an undo nobody waits for (see `call_local`).
pub(crate) fn async_undo(shared: &Shared, op: PrimOp) {
    deliver(shared, shared.prims.op(Who::Local, u64::MAX, op));
}
