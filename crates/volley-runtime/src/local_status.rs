//! `volley status` on one machine: a node running inside a driver (no TCP address, no cluster)
//! answers a status query on the abstract Unix socket its workers connect to.
//!
//! A query is one frame, [`REQUEST`], in place of a worker's handshake; the node answers with
//! its `NodeSnapshot` (postcard) and closes the connection. An abstract socket has no file
//! permissions, so both ends check the other's user with `SO_PEERCRED`: only a process of the
//! node's own user may ask, and the asker trusts only a node of its own user. Nodes are found by
//! their socket names in `/proc/net/unix` (`volley-<pid>-<16 hex digits>`), so nothing is
//! written to disk and nothing is left behind when a driver is killed.

use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use volley_proto::{decode, encode, read_frame, write_frame, NodeSnapshot};

use crate::shared::Shared;
use crate::RuntimeError;

/// The first frame of a status query. A worker's first frame is a postcard `(Hello, token)`,
/// which never equals these bytes (its token alone is longer).
pub(crate) const REQUEST: &[u8] = b"\xffvolley-status\xff";

/// The first frame of a query for the cluster's nodes as this node knows them (the answer is
/// a postcard `Vec<NodeSnapshot>`): what `volley.nodes()` and `cluster_resources()` ask in a
/// worker, which has no cluster view of its own.
pub(crate) const VIEW_REQUEST: &[u8] = b"\xffvolley-view\xff";

/// The first bytes of a question for the node's head, the postcard `HeadRequest` after them
/// (the answer is a postcard `HeadAnswer`): `volley list` and `volley logs` from another
/// process asking a driver's embedded node, which has no TCP address. Only the state API's
/// reads (`HeadRequest::State`, `HeadRequest::NodeAsk`) are answered here.
pub(crate) const ASK_PREFIX: &[u8] = b"\xffvolley-ask\xff";

/// The address form (`local:<socket name>`) that `cluster::ask_head_at` sends to a node on
/// this machine over its Unix socket instead of TCP.
pub const LOCAL_ADDRESS_PREFIX: &str = "local:";

/// Whether a node's first frame on its socket is a question from `volley status`, `volley
/// list` or `volley logs` rather than a worker's handshake.
pub(crate) fn is_query(frame: &[u8]) -> bool {
    frame == REQUEST || frame == VIEW_REQUEST || frame.starts_with(ASK_PREFIX)
}

/// The largest answer read (a `NodeSnapshot` is a few KiB at most).
const MAX_ANSWER: usize = 1 << 20;

/// How long either end waits for the other.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The user id of the process at the other end of `s`.
fn peer_uid(s: &UnixStream) -> std::io::Result<u32> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given, and the fd is open for
    // the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// The uid of the process at the other end of `s` when it is not this user (`u32::MAX` when it
/// cannot be told): `None` for one of ours.
pub(crate) fn foreign_uid(s: &UnixStream) -> Option<u32> {
    match peer_uid(s) {
        Ok(uid) if uid == my_uid() => None,
        Ok(uid) => Some(uid),
        Err(_) => Some(u32::MAX),
    }
}

fn my_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Answers a status query on `stream` (its first frame, `REQUEST` or `VIEW_REQUEST`, read
/// already), if it comes from a process of this user.
pub(crate) fn answer(shared: &Shared, stream: &mut UnixStream, frame: &[u8]) -> Result<(), String> {
    let uid = peer_uid(stream).map_err(|e| e.to_string())?;
    if uid != my_uid() {
        return Err(format!("a status query came from another user (uid {uid})"));
    }
    stream.set_write_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
    let bytes = if let Some(req) = frame.strip_prefix(ASK_PREFIX) {
        let answer = match decode::<volley_proto::HeadRequest>(req) {
            Ok(
                req @ (volley_proto::HeadRequest::State(_) | volley_proto::HeadRequest::NodeAsk(_)),
            ) => match req.check() {
                Some(why) => volley_proto::HeadAnswer::Error(why),
                None => shared.ask_head(req),
            },
            Ok(_) => volley_proto::HeadAnswer::Error(
                "a node's socket answers the state API's questions only".into(),
            ),
            Err(e) => volley_proto::HeadAnswer::Error(format!("a malformed question: {e}")),
        };
        encode(&answer)
    } else if frame == VIEW_REQUEST {
        encode(&shared.nodes_view())
    } else {
        encode(&shared.local_snapshot())
    };
    let bytes = bytes.map_err(|e| e.to_string())?;
    write_frame(stream, &bytes).map_err(|e| e.to_string())
}

/// Asks the node listening on the abstract socket `name` (see [`local_nodes`]) how it is.
pub fn query_local(name: &str) -> Result<NodeSnapshot, RuntimeError> {
    ask_local(name, REQUEST, MAX_ANSWER)
}

/// Asks the node listening on the abstract socket `name` for the cluster's nodes as it knows
/// them (itself alone outside a cluster).
pub fn query_local_view(name: &str) -> Result<Vec<NodeSnapshot>, RuntimeError> {
    ask_local(name, VIEW_REQUEST, MAX_ANSWER * 16)
}

/// Asks this user's node on the abstract socket `name` a question for its head (the state
/// API's: a query, or a node's log files); see [`ASK_PREFIX`].
pub fn ask_head_local(
    name: &str,
    req: &volley_proto::HeadRequest,
) -> Result<volley_proto::HeadAnswer, RuntimeError> {
    let mut frame = ASK_PREFIX.to_vec();
    frame.extend(encode(req)?);
    if frame.len() > volley_proto::MAX_HANDSHAKE_FRAME {
        return Err(RuntimeError::Refused(format!(
            "the question is {} bytes; a node's socket takes {} at most (fewer filters)",
            frame.len(),
            volley_proto::MAX_HANDSHAKE_FRAME
        )));
    }
    ask_local(name, &frame, volley_proto::MAX_FRAME_SIZE)
}

/// Sends `request` to this user's node on the abstract socket `name` (another user's is
/// refused before anything is read) and decodes its answer of at most `max` bytes.
fn ask_local<T: serde::de::DeserializeOwned>(
    name: &str,
    request: &[u8],
    max: usize,
) -> Result<T, RuntimeError> {
    let mut s = connect_now(name)?;
    let uid = peer_uid(&s)?;
    if uid != my_uid() {
        return Err(RuntimeError::Refused(format!("socket {name} belongs to another user")));
    }
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    write_frame(&mut s, request)?;
    let frame = read_frame(&mut s, max)?;
    Ok(decode(&frame)?)
}

/// Connects to the abstract socket `name` without waiting: anyone may create a socket of that
/// name and let its backlog fill, and a blocking connect would then wait forever.
fn connect_now(name: &str) -> std::io::Result<UnixStream> {
    // SAFETY: sockaddr_un is plain data; zeroed is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = name.as_bytes();
    if bytes.len() + 1 > addr.sun_path.len() {
        return Err(std::io::Error::other("socket name too long"));
    }
    // An abstract name: a NUL, then the name (not NUL-terminated).
    for (dst, src) in addr.sun_path[1..].iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = (std::mem::size_of::<libc::sa_family_t>() + 1 + bytes.len()) as libc::socklen_t;
    // SAFETY: plain system calls on a descriptor owned by `s` as soon as it exists; `addr` is
    // valid for `len` bytes.
    unsafe {
        let fd = libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        );
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let s = UnixStream::from_raw_fd(fd);
        let rc = libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len);
        if rc != 0 {
            // EAGAIN: its backlog is full (a Unix socket never answers EINPROGRESS).
            return Err(std::io::Error::last_os_error());
        }
        s.set_nonblocking(false)?;
        Ok(s)
    }
}

/// The volley nodes listening on this machine, any user's: (pid, socket name), by pid.
pub fn local_nodes() -> Vec<(u32, String)> {
    let Ok(text) = std::fs::read_to_string("/proc/net/unix") else { return Vec::new() };
    let mut out: Vec<(u32, String)> = Vec::new();
    for line in text.lines().skip(1) {
        // Num RefCount Protocol Flags Type St Inode Path; abstract names start with '@'.
        let Some(name) = line.split_whitespace().nth(7).and_then(|p| p.strip_prefix('@')) else {
            continue;
        };
        let Some((pid, hex)) = name.strip_prefix("volley-").and_then(|r| r.split_once('-')) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        if hex.len() != 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        // The listening socket and each accepted connection all show the name.
        if !out.iter().any(|(_, n)| n == name) {
            out.push((pid, name.to_string()));
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::node;

    /// `volley status` on this machine asks a lone node over its Unix socket and gets the same
    /// snapshot the node gives `volley.nodes()`: the scheduler's and the store's counters with it.
    #[test]
    fn a_lone_node_answers_with_its_snapshot() {
        let dir = std::env::temp_dir().join(format!("volley-status-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a spill dir");
        let capacity = 24 << 20; // Tells this test's node from others of the same process.
        let n = node(&dir, capacity);
        let mine = n.snapshot();
        assert_eq!((mine.id.0, mine.driver, mine.store_capacity), (0, true, capacity));
        assert_eq!(mine.cpu_total_milli, 1000);
        assert_eq!(mine.workers, mine.sched.workers_alive + mine.sched.workers_starting);
        assert_eq!(mine.store.objects, 0);

        let asked: Vec<NodeSnapshot> = local_nodes()
            .into_iter()
            .filter(|(pid, _)| *pid == std::process::id())
            .filter_map(|(_, name)| query_local(&name).ok())
            .filter(|s| s.store_capacity == capacity)
            .collect();
        assert_eq!(asked.len(), 1, "{asked:?}");
        let s = &asked[0];
        assert_eq!((s.id, s.pid, s.cpu_total_milli), (mine.id, mine.pid, mine.cpu_total_milli));
        assert_eq!(s.sched.workers_alive + s.sched.workers_starting, s.workers);
        n.shutdown(Duration::from_millis(200));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
