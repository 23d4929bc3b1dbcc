//! The driver's awaited primitive ops on its embedded node (see `client::async_prims`).

use std::time::Duration;

use volley_proto::{PrimOp, PrimResult};

use super::Node;
use crate::prims::async_local;

impl Node {
    /// A fresh request id for an awaited primitive op.
    pub fn async_req(&self) -> u64 {
        self.shared.prims.async_req()
    }

    /// Runs op `req` without waiting; false if the node is shut down.
    pub fn async_send(&self, req: u64, op: PrimOp) -> bool {
        async_local::async_send(&self.shared, req, op)
    }

    /// The answer to op `req` if it came as the op ran (it did not park).
    pub fn async_take_now(&self, req: u64) -> Option<PrimResult> {
        self.shared.prims.take_now(req)
    }

    /// Stops op `req` waiting; its answer still comes.
    pub fn async_cancel(&self, req: u64) {
        async_local::async_cancel(&self.shared, req)
    }

    /// Sends an undo nobody waits for.
    pub fn async_undo(&self, op: PrimOp) {
        async_local::async_undo(&self.shared, op)
    }

    /// Waits up to `timeout` for answers to awaited ops; `None` once the node is shut down.
    pub fn take_async(&self, timeout: Duration) -> Option<Vec<(u64, PrimResult)>> {
        let got = self.shared.prims.take_async(timeout);
        if got.is_empty() && self.shared.closed.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        Some(got)
    }
}
