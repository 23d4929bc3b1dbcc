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
}
