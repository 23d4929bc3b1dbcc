use thiserror::Error;

#[derive(Debug, Error)]
pub enum RuntimeError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Proto(#[from] volley_proto::ProtoError),
    #[error("the node refused this worker: {0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] volley_store::StoreError),
    #[error("the node has shut down")]
    Closed,
    #[error("TLS: {0}")]
    Tls(String),
    /// The other side refused this process's token or protocol version (the message says why):
    /// trying again does not help, unlike a `Connect` error.
    #[error("{0}")]
    Rejected(String),
    /// Connecting to another node failed (the message says why).
    #[error("{0}")]
    Connect(String),
}
