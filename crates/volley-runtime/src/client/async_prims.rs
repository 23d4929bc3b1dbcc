//! Primitive ops that an asyncio event loop awaits (`volley._async_prims`): started without
//! waiting, their answers collected by one thread of the process for every loop, and
//! cancellable at any point without losing what they got.
//!
//! An op that a cancelled awaiter will never see is undone with the same rule as an
//! interrupted blocking call ([`volley_proto::undo_of`]): while it is still parked, a `Cancel`
//! goes to the node and the answer, when it comes, is undone here (an item back to its queue,
//! a lock unit released); once answered, the answer's undo is kept until the awaiter says it
//! has the value ([`Client::prim_done`]), so a cancellation that lands between the answer and
//! the awaiter's wake-up gives it back too.

use std::collections::HashMap;
use std::time::Duration;

use volley_proto::{undo_of, PrimOp, PrimResult, Undo};
use volley_store::sync::Mutex;

use super::{Backend, Client, ClientError};

/// Marks the request id of an awaited op, in the driver's and in a worker's id space alike:
/// its answer is taken by [`Client::prim_answers`], never by a blocking call's wait.
pub const ASYNC_REQ: u64 = 1 << 62;

enum Pending {
    /// Sent, not answered; `give_back`: its awaiter is gone, so the answer is undone.
    Waiting { undo: Undo, give_back: bool },
    /// Answered, and handed to the awaiter: the op that undoes the answer, should the
    /// awaiter be cancelled before it takes the value.
    Delivered(PrimOp),
}

/// The awaited ops of this process.
#[derive(Default)]
pub(crate) struct AsyncPrims {
    pending: Mutex<HashMap<u64, Pending>>,
}

impl Client {
    /// Starts `op` without waiting: its request id, whose answer [`Client::prim_answers`]
    /// returns, or the answer itself when it came at once (a driver's op that did not park:
    /// no thread hand-off then).
    pub fn prim_start(&self, op: PrimOp) -> Result<(u64, Option<PrimResult>), ClientError> {
        let undo = undo_of(&op);
        let req = match &self.backend {
            Backend::Node(n) => n.async_req(),
            Backend::Worker(w) => w.async_req(),
        };
        // Known before it is sent, so that its answer is never taken unknown.
        let waiting = Pending::Waiting { undo, give_back: false };
        self.async_prims.pending.lock().insert(req, waiting);
        let sent = match &self.backend {
            Backend::Node(n) => n.async_send(req, op).then_some(()).ok_or(ClientError::Closed),
            Backend::Worker(w) => w.async_send(req, op).map_err(ClientError::from),
        };
        if let Err(e) = sent {
            self.async_prims.pending.lock().remove(&req);
            return Err(e);
        }
        if let Backend::Node(n) = &self.backend {
            if let Some(answer) = n.async_take_now(req) {
                // Handed over in the caller's own step: nothing is left to undo.
                self.async_prims.pending.lock().remove(&req);
                return Ok((req, Some(answer)));
            }
        }
        Ok((req, None))
    }

    /// The awaiter of op `req` stops waiting. With `give_back` (it was cancelled) whatever the
    /// op got or gets is undone and its answer is never returned; without (a timeout) the node
    /// stops waiting and the answer (`Empty`/`Full`, or what it got meanwhile) still comes.
    pub fn prim_cancel(&self, req: u64, give_back: bool) {
        let undo = {
            let mut pending = self.async_prims.pending.lock();
            match pending.get_mut(&req) {
                Some(Pending::Waiting { give_back: g, .. }) => {
                    *g |= give_back;
                    None
                }
                Some(Pending::Delivered(_)) if give_back => match pending.remove(&req) {
                    Some(Pending::Delivered(op)) => Some(op),
                    _ => None,
                },
                _ => return,
            }
        };
        match (undo, &self.backend) {
            (Some(op), Backend::Node(n)) => n.async_undo(op),
            (Some(op), Backend::Worker(w)) => w.async_undo(op),
            (None, Backend::Node(n)) => n.async_cancel(req),
            (None, Backend::Worker(w)) => w.async_cancel(req),
        }
    }

    /// The awaiter of op `req` has its answer: nothing is left to undo.
    pub fn prim_done(&self, req: u64) {
        self.async_prims.pending.lock().remove(&req);
    }

    /// Waits up to `timeout` for answers to started ops: `(request, answer)` for each whose
    /// awaiter still waits. `Closed` once this process's node is gone.
    pub fn prim_answers(&self, timeout: Duration) -> Result<Vec<(u64, PrimResult)>, ClientError> {
        let got = match &self.backend {
            Backend::Node(n) => n.take_async(timeout),
            Backend::Worker(w) => w.take_async(timeout),
        };
        let got = got.ok_or(ClientError::Closed)?;
        let mut answers = Vec::with_capacity(got.len());
        let mut undos = Vec::new();
        {
            let mut pending = self.async_prims.pending.lock();
            for (req, result) in got {
                match pending.remove(&req) {
                    Some(Pending::Waiting { undo, give_back: false }) => {
                        if let Some(op) = undo.op(result.clone()) {
                            pending.insert(req, Pending::Delivered(op));
                        }
                        answers.push((req, result));
                    }
                    Some(Pending::Waiting { undo, give_back: true }) => {
                        undos.extend(undo.op(result));
                    }
                    // Not awaited (any more): nothing to give it to.
                    Some(Pending::Delivered(op)) => {
                        pending.insert(req, Pending::Delivered(op));
                    }
                    None => {}
                }
            }
        }
        for op in undos {
            match &self.backend {
                Backend::Node(n) => n.async_undo(op),
                Backend::Worker(w) => w.async_undo(op),
            }
        }
        Ok(answers)
    }

    /// How many awaited ops are started and not yet finished (tests, diagnostics).
    pub fn prims_awaited(&self) -> usize {
        self.async_prims.pending.lock().len()
    }
}
