//! `volley status`: one question to a head, from outside the cluster.

use volley_proto::{FrameReader, NodeSnapshot, PeerMsg, Refusal};

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
