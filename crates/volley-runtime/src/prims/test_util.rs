//! What the service's unit tests share: a worker by number, and the answers for workers.

use volley_proto::{PrimResult, WorkerId};

use super::{Delivery, Who};

pub(crate) fn w(n: u32) -> Who {
    Who::Worker(WorkerId(n))
}

/// The answers in `out`, as (worker, req, result); an answer for anyone else fails the test.
pub(crate) fn answers(out: Vec<Delivery>) -> Vec<(u32, u64, PrimResult)> {
    out.into_iter()
        .map(|d| match d.to {
            Who::Worker(w) => (w.0, d.req, d.result),
            other => panic!("an answer for {other:?}"),
        })
        .collect()
}
