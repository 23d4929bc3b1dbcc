//! Questions to a head on connections of their own: `volley status` from outside the
//! cluster, and a member's [`HeadRequest`] (the key-value table, the directory), whose
//! connections are kept in a small pool for the next question.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use volley_store::sync::Mutex;

use volley_proto::{
    FrameReader, HeadAnswer, HeadRequest, NodeSnapshot, PeerMsg, ProtoError, Refusal,
};

use super::{handshake::connect, proto, recv, send, wire::msg_name};
use crate::tls::{Conn, TlsConfig};

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
    let key = pool_key(addr, token, tls.is_some());
    // A pooled connection first (the head keeps it for more questions); one that the head
    // closed meanwhile (idle, restarted) fails before the head read the question, and the
    // question goes again on a fresh connection.
    if let Some(s) = take_pooled(&key) {
        if let Ok(answer) = ask_on(s, &key, timeout, req.clone()) {
            return Ok(answer);
        }
    }
    let s = connect(addr, token, tls)?;
    ask_on(s, &key, timeout, req)
}

/// Asks `req` on `s` and, when answered, gives `s` back to the pool for the next question.
fn ask_on(
    mut s: Conn,
    key: &str,
    timeout: Duration,
    req: HeadRequest,
) -> Result<HeadAnswer, RuntimeError> {
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
    drop(r);
    match answer {
        PeerMsg::HeadReply(answer) => {
            give_back(key, s);
            Ok(answer)
        }
        PeerMsg::Refused { reason } => Err(RuntimeError::Refused(reason)),
        other => Err(RuntimeError::Refused(format!("unexpected answer {}", msg_name(&other)))),
    }
}

/// How long a pooled connection to a head may sit unused before it is dropped rather than
/// reused (under the head's `HEAD_CONN_IDLE`, so a reused one is rarely already closed).
const POOL_IDLE: Duration = Duration::from_secs(5);
/// The most idle connections kept per head.
const POOL_MAX: usize = 8;

/// Idle connections to heads, by address and credentials, with when each was last used; the
/// process that made them (a forked child must not share its parent's sockets).
struct Pool {
    pid: u32,
    idle: HashMap<String, Vec<(Conn, Instant)>>,
}

static POOL: Mutex<Option<Pool>> = Mutex::new(None);

fn pool_key(addr: &str, token: &[u8], tls: bool) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(token, &mut h);
    format!("{addr}|{tls}|{:x}", std::hash::Hasher::finish(&h))
}

fn take_pooled(key: &str) -> Option<Conn> {
    let mut pool = POOL.lock();
    let p = pool.as_mut().filter(|p| p.pid == std::process::id())?;
    let idle = p.idle.get_mut(key)?;
    while let Some((s, since)) = idle.pop() {
        if since.elapsed() < POOL_IDLE {
            return Some(s);
        }
    }
    None
}

fn give_back(key: &str, s: Conn) {
    let mut pool = POOL.lock();
    let me = std::process::id();
    let p = match pool.as_mut() {
        Some(p) if p.pid == me => p,
        _ => pool.insert(Pool { pid: me, idle: HashMap::new() }),
    };
    let idle = p.idle.entry(key.to_string()).or_default();
    idle.retain(|(_, since)| since.elapsed() < POOL_IDLE);
    if idle.len() < POOL_MAX {
        idle.push((s, Instant::now()));
    }
}
