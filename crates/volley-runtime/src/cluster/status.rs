//! One question to a head on a connection of its own: `volley status` from outside the
//! cluster, and a member's [`HeadRequest`] (the key-value table, the directory).

use volley_proto::{FrameReader, HeadAnswer, HeadRequest, NodeSnapshot, PeerMsg, Refusal};

use super::{handshake::connect, proto, recv, send, wire::msg_name};
use crate::tls::TlsConfig;
use crate::RuntimeError;

/// Asks the head at `addr` for the cluster's view (`volley status`).
pub fn cluster_view(
    addr: &str,
    token: &[u8],
    tls: Option<&TlsConfig>,
) -> Result<Vec<NodeSnapshot>, RuntimeError> {
    cluster_status(addr, token, tls).map(|(nodes, _)| nodes)
}

/// Asks the head at `addr` for the cluster's view and the handshakes it refused lately (`volley
/// status`).
pub fn cluster_status(
    addr: &str,
    token: &[u8],
    tls: Option<&TlsConfig>,
) -> Result<(Vec<NodeSnapshot>, Vec<Refusal>), RuntimeError> {
    let mut s = connect(addr, token, tls)?;
    send(&mut s, &PeerMsg::Status)?;
    let mut r = FrameReader::new(&s);
    match recv(&mut r).map_err(proto)? {
        PeerMsg::View { nodes, refused } => Ok((nodes, refused)),
        other => Err(RuntimeError::Refused(format!("unexpected answer {}", msg_name(&other)))),
    }
}

/// Asks the head at `addr` one [`HeadRequest`] from outside the cluster (`volley list`,
/// `volley logs --node`, `volley job`): over TCP, or, for `local:<socket name>`, a driver's
/// embedded node on this machine over its Unix socket (this user's only; see `local_status`).
pub fn ask_head_at(
    addr: &str,
    token: &[u8],
    tls: Option<&TlsConfig>,
    req: HeadRequest,
) -> Result<HeadAnswer, RuntimeError> {
    match addr.strip_prefix(crate::local_status::LOCAL_ADDRESS_PREFIX) {
        Some(name) => crate::local_status::ask_head_local(name, &req),
        None => ask_head(addr, token, tls, req),
    }
}

/// How long a member waits for the head's answer to a [`HeadRequest`].
const HEAD_ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Asks the head at `addr` one [`HeadRequest`] (a member's node does, for its driver and tasks).
/// A connection each time: these questions are rare next to tasks, and a connection of their
/// own keeps them off the heartbeat's, which must never wait behind a large answer.
pub fn ask_head(
    addr: &str,
    token: &[u8],
    tls: Option<&TlsConfig>,
    req: HeadRequest,
) -> Result<HeadAnswer, RuntimeError> {
    let mut s = connect(addr, token, tls)?;
    // A head that took the connection but never answers (stopped, wedged) is an error here,
    // not a driver hung in `kv_get`.
    s.set_read_timeout(Some(HEAD_ANSWER_TIMEOUT))?;
    send(&mut s, &PeerMsg::Head(req))?;
    let mut r = FrameReader::new(&s);
    match recv(&mut r).map_err(proto)? {
        PeerMsg::HeadReply(answer) => Ok(answer),
        PeerMsg::Refused { reason } => Err(RuntimeError::Refused(reason)),
        other => Err(RuntimeError::Refused(format!("unexpected answer {}", msg_name(&other)))),
    }
}
