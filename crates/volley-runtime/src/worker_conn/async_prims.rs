//! A worker's side of the primitive ops an event loop awaits (`client::async_prims`): the op is
//! sent without waiting, and one thread of the process collects the answers of all of them.

use std::sync::atomic::Ordering;
use std::time::Duration;

use volley_proto::{PrimOp, PrimResult, WorkerToNode, PRIM_NO_REPLY};

use super::{Reply, WorkerConn};
use crate::client::ASYNC_REQ;
use crate::RuntimeError;

impl WorkerConn {
    /// A fresh request id for an awaited op (marked [`ASYNC_REQ`], so the answer collector
    /// takes its answer and a blocking call's wait does not).
    pub fn async_req(&self) -> u64 {
        self.next_req.fetch_add(1, Ordering::Relaxed) | ASYNC_REQ
    }

    /// Sends op `req` (from [`WorkerConn::async_req`]) without waiting. The failure of an
    /// earlier unanswered op is its answer instead, as for a blocking call.
    pub fn async_send(&self, req: u64, op: PrimOp) -> Result<(), RuntimeError> {
        {
            let mut inner = self.inner.lock();
            let now = match (inner.prim_failed.take(), &op) {
                (Some(failed), _) => Some(failed),
                // A get takes the next item of this process's batch of that queue first, as a
                // blocking get does: the node would hand out a newer one.
                (None, PrimOp::Get { queue, .. }) => {
                    inner.buffered(*queue, &self.out).map(PrimResult::Item)
                }
                (None, PrimOp::ChanRecv { chan, reg: 0 }) => {
                    inner.buffered(*chan, &self.out).map(PrimResult::Item)
                }
                (None, PrimOp::ChanSend { chan, .. }) => {
                    // Its answer may reserve slots (see `WorkerConn::prim`); awaited sends
                    // do not use them, but a recall or the task's end gives them back.
                    inner.send_reqs.insert(req, *chan);
                    None
                }
                (None, _) => None,
            };
            if let Some(result) = now {
                inner.replies.insert(req, Reply::Prim(result));
                drop(inner);
                self.cv.notify_all();
                return Ok(());
            }
        }
        self.send(&WorkerToNode::Prim { req, op })
    }

    /// Asks the node to stop waiting on op `req` (answered `Empty`/`Full` if it was still
    /// parked; else its answer is on its way).
    pub fn async_cancel(&self, req: u64) {
        let _ = self.send(&WorkerToNode::Prim { req, op: PrimOp::Cancel });
    }

    /// Sends an undo (an item back to its queue, a unit released) nobody waits for.
    pub fn async_undo(&self, op: PrimOp) {
        if let PrimOp::Unget { queue, .. } = &op {
            // The rest of this process's batch of that queue goes back first, so that the
            // item lands ahead of them at the head of the queue.
            self.inner.lock().give_back(Some(*queue), false, &self.out);
        }
        let _ = self.send(&WorkerToNode::Prim { req: PRIM_NO_REPLY, op });
    }

    /// Waits up to `timeout` for answers to awaited ops and takes them; `None` once the
    /// connection to the node is closed.
    pub fn take_async(&self, timeout: Duration) -> Option<Vec<(u64, PrimResult)>> {
        let mut inner = self.inner.lock();
        for round in 0..2 {
            if inner.closed {
                return None;
            }
            let keys: Vec<u64> = inner
                .replies
                .iter()
                .filter(|(k, r)| *k & ASYNC_REQ != 0 && matches!(r, Reply::Prim(_)))
                .map(|(k, _)| *k)
                .collect();
            if !keys.is_empty() {
                let mut got = Vec::with_capacity(keys.len());
                for k in keys {
                    if let Some(Reply::Prim(r)) = inner.replies.remove(&k) {
                        got.push((k, r));
                    }
                }
                return Some(got);
            }
            if round == 0 {
                inner = self.cv.wait_for(inner, timeout);
            }
        }
        Some(Vec::new())
    }
}
