//! Ordered, batched writes to one connection.
//!
//! Messages are appended (already framed) to the outbox while the node's state lock is held, so
//! their order on the wire is the order the scheduler decided them in; they are written after the
//! lock is released, so a slow reader never stalls the scheduler. Whoever flushes writes everything
//! pending in one system call, which batches pipelined tasks for free.

use std::io::Write;
use std::os::unix::net::UnixStream;

use parking_lot::Mutex;
use volley_proto::ProtoError;

pub struct Outbox {
    pending: Mutex<Vec<u8>>,
    stream: Mutex<UnixStream>,
    /// A second handle, so `shutdown` never waits behind a blocked writer.
    raw: UnixStream,
}

impl Outbox {
    pub fn new(stream: UnixStream) -> std::io::Result<Self> {
        let raw = stream.try_clone()?;
        Ok(Outbox { pending: Mutex::new(Vec::new()), stream: Mutex::new(stream), raw })
    }

    /// Appends one frame; call [`Outbox::flush`] afterwards (outside any big lock).
    pub fn push(&self, payload: &[u8]) {
        let mut p = self.pending.lock();
        p.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        p.extend_from_slice(payload);
    }

    pub fn flush(&self) -> Result<(), ProtoError> {
        let mut stream = self.stream.lock();
        let bytes = std::mem::take(&mut *self.pending.lock());
        if bytes.is_empty() {
            return Ok(());
        }
        stream.write_all(&bytes)?;
        Ok(())
    }

    pub fn send(&self, payload: &[u8]) -> Result<(), ProtoError> {
        if payload.len() > volley_proto::MAX_FRAME_SIZE {
            return Err(ProtoError::FrameTooLarge {
                size: payload.len(),
                max: volley_proto::MAX_FRAME_SIZE,
            });
        }
        self.push(payload);
        self.flush()
    }

    pub fn shutdown(&self) {
        let _ = self.raw.shutdown(std::net::Shutdown::Both);
    }
}
