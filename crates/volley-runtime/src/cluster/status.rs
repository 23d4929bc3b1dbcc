//! One question to a head on a connection of its own: `volley status` from outside the
//! cluster, and a member's [`HeadRequest`] (the key-value table, the directory).

use std::time::Duration;

use volley_proto::{
    FrameReader, HeadAnswer, HeadRequest, NodeSnapshot, PeerMsg, ProtoError, Refusal,
};

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
const HEAD_ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// [`HEAD_ANSWER_TIMEOUT`], or `VOLLEY_HEAD_TIMEOUT_S` seconds if set: a cluster whose head
/// answers slowly on purpose (huge state queries) can wait longer, a test shorter. A value that
/// is no positive number is an error (each question to the head says so), not a silent 30 s.
fn head_answer_timeout() -> Result<Duration, RuntimeError> {
    let Some(v) = std::env::var_os("VOLLEY_HEAD_TIMEOUT_S") else {
        return Ok(HEAD_ANSWER_TIMEOUT);
    };
    let v = v.to_string_lossy();
    v.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0 && *s < 1e9)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| {
            RuntimeError::Connect(format!(
                "VOLLEY_HEAD_TIMEOUT_S must be a positive number of seconds, not {v:?}"
            ))
        })
}

/// Asks the head at `addr` one [`HeadRequest`] (a member's node does, for its driver and tasks).
/// A connection each time: these questions are rare next to tasks, and a connection of their
/// own keeps them off the heartbeat's, which must never wait behind a large answer.
pub fn ask_head(
    addr: &str,
    token: &[u8],
    tls: Option<&TlsConfig>,
    req: HeadRequest,
) -> Result<HeadAnswer, RuntimeError> {
    let timeout = head_answer_timeout()?;
    let mut s = connect(addr, token, tls)?;
    // A head that took the connection but never answers (stopped, wedged) is an error here,
    // not a driver hung in `kv_get`.
    s.set_read_timeout(Some(timeout))?;
    send(&mut s, &PeerMsg::Head(req))?;
    let mut r = FrameReader::new(&s);
    let answer = match recv(&mut r) {
        Ok(answer) => answer,
        Err(ProtoError::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            return Err(RuntimeError::Connect(format!(
                "no answer within {:.1} s (is it stopped or overloaded? VOLLEY_HEAD_TIMEOUT_S \
                 sets how long to wait)",
                timeout.as_secs_f64()
            )));
        }
        Err(e) => return Err(proto(e)),
    };
    match answer {
        PeerMsg::HeadReply(answer) => Ok(answer),
        PeerMsg::Refused { reason } => Err(RuntimeError::Refused(reason)),
        other => Err(RuntimeError::Refused(format!("unexpected answer {}", msg_name(&other)))),
    }
}
