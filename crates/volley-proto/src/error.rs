use thiserror::Error;

/// Everything that can go wrong reading or writing the wire protocol.
#[derive(Debug, Error)]
pub enum ProtoError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {size} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge { size: usize, max: usize },
    #[error("malformed message: {0}")]
    Decode(#[from] postcard::Error),
    #[error("peer speaks protocol version {theirs}, this process speaks {ours}")]
    VersionMismatch { ours: u32, theirs: u32 },
    #[error("unexpected message during handshake: {0}")]
    Handshake(String),
    #[error("{0}")]
    Auth(String),
    #[error("connection closed")]
    Closed,
}
