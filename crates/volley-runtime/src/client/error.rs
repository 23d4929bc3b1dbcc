//! What a client call can fail with. The binding maps each variant to one Python exception class
//! (`crates/volley-py/src/errors.rs`), so a new failure needs a variant here and a line there.

use thiserror::Error;

use crate::RuntimeError;

#[derive(Debug, Error)]
pub enum ClientError {
    /// The link to the node failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The node has shut down.
    #[error("volley has shut down")]
    Closed,
    /// The object store had no room for a value, even after spilling.
    #[error("{0}")]
    StoreFull(String),
    /// The call is made in the wrong kind of process (a worker-only call in a driver, ...).
    #[error("{0}")]
    WrongProcess(&'static str),
    /// The node answered something other than what was asked.
    #[error("unexpected answer: {0}")]
    Unexpected(String),
}
