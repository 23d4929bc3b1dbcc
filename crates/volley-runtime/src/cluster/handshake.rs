//! Opening and accepting the cluster's TCP connections. Each authenticates first (TLS if
//! configured, then the token); while it does, it is bounded in time ([`HANDSHAKE_DEADLINE`])
//! and in number ([`MAX_PENDING`]), so peers that never authenticate cost a bounded number of
//! threads and descriptors. Its first message then says what the connection is for: a
//! member's connection to the head, a `volley status` request, or a peer's link.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use volley_proto::{
    authenticate_client, authenticate_server, FrameReader, PeerMsg, ProtoError, Refusal,
};

use super::{recv, send, wire::msg_name, Cluster};
use crate::tls::{Conn, TlsConfig};
use crate::RuntimeError;

/// How long the connecting side waits for each answer of the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The accepting side's limit for a connection's whole handshake (TLS, token, first message),
/// however slowly its bytes come: a peer that drips a byte at a time is dropped after it.
pub(crate) const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(5);

/// Connections in their handshake at once: one more drops the oldest of them, so peers that
/// never authenticate hold a bounded number of threads and descriptors.
pub(crate) const MAX_PENDING: usize = 32;

/// Refused handshakes the head remembers (by peer address and reason) for `volley status`.
const MAX_REFUSALS: usize = 16;

/// The longest the accept loop waits after a failed `accept` (out of descriptors), doubling from
/// a few milliseconds.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_millis(500);

/// Connections in their handshake: each entry shares its socket with the thread serving it, so
/// dropping the entry's connection (`shutdown`) ends that thread's blocking read at once.
#[derive(Default)]
pub(super) struct Pending {
    next: u64,
    pub(super) conns: VecDeque<(u64, Arc<TcpStream>)>,
}

/// A connection's socket during its handshake: each read and write waits only for what is left
/// of one deadline, so a peer sending a byte now and then cannot stretch the handshake.
struct Deadline<'a> {
    tcp: &'a TcpStream,
    until: Instant,
}

impl Deadline<'_> {
    fn left(&self) -> std::io::Result<Duration> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the handshake took too long",
            ));
        }
        Ok(left)
    }
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.tcp.set_read_timeout(Some(self.left()?))?;
        (&*self.tcp).read(buf)
    }
}

impl Write for Deadline<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tcp.set_write_timeout(Some(self.left()?))?;
        (&*self.tcp).write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub(super) fn connect(
    addr: &str,
    token: &[u8],
    tls: Option<&TlsConfig>,
) -> Result<Conn, RuntimeError> {
    let sa = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| RuntimeError::Refused(format!("cannot resolve {addr}")))?;
    let tcp = TcpStream::connect_timeout(&sa, HANDSHAKE_TIMEOUT)?;
    tcp.set_nodelay(true)?;
    let mut s = match tls {
        Some(t) => crate::tls::client(tcp, t)?,
        None => Conn::Tcp(tcp),
    };
    s.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    authenticate_client(&mut s, token).map_err(|e| match e {
        ProtoError::Auth(why) => RuntimeError::Rejected(format!("{addr}: {why}")),
        e @ ProtoError::VersionMismatch { .. } => RuntimeError::Rejected(format!("{addr}: {e}")),
        ProtoError::Io(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            let hint = if tls.is_some() {
                "is the cluster using TLS? start it with --tls-cert/--tls-key"
            } else {
                "if the cluster uses TLS, pass its certificate (tls_cert=, --tls-cert or \
                 VOLLEY_TLS_CERT)"
            };
            RuntimeError::Connect(format!(
                "{addr}: no answer to the handshake within {} s ({hint})",
                HANDSHAKE_TIMEOUT.as_secs()
            ))
        }
        e if tls.is_some() => RuntimeError::Connect(format!(
            "{addr}: the TLS handshake failed ({e}): is this the cluster's certificate, and \
             does the cluster use TLS?"
        )),
        // A TLS server answers a plaintext hello with a TLS record (an alert), which reads
        // as a huge length prefix: 0x14..=0x17 content type, then major version 3.
        ProtoError::FrameTooLarge { size, .. }
            if (0x14..=0x17).contains(&(size >> 24)) && (size >> 16) & 0xff == 3 =>
        {
            RuntimeError::Connect(format!(
                "{addr}: the cluster answered with TLS: pass its certificate (tls_cert=, \
                 --tls-cert or VOLLEY_TLS_CERT)"
            ))
        }
        // Closed or reset before the challenge: a TLS server drops a plaintext peer too.
        e => RuntimeError::Connect(format!(
            "{addr}: handshake failed: {e} (if the cluster uses TLS, pass its certificate: \
             tls_cert=, --tls-cert or VOLLEY_TLS_CERT)"
        )),
    })?;
    s.set_read_timeout(None)?;
    Ok(s)
}

/// At most [`MAX_PENDING`] connections in their handshake, and at most a quarter of the
/// descriptors this process may open: a flood of them leaves room for the node's own work.
pub(super) fn pending_cap() -> usize {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes the struct it is given.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0;
    if !ok || r.rlim_cur == libc::RLIM_INFINITY {
        return MAX_PENDING;
    }
    usize::try_from(r.rlim_cur / 4).unwrap_or(MAX_PENDING).clamp(4, MAX_PENDING)
}

/// An `accept` (or thread start) that failed for want of descriptors, threads or memory: it
/// fails again until something is freed.
fn is_exhausted(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EAGAIN)
    )
}

impl Cluster {
    /// Accepts peers, each served on a thread of its own (see [`MAX_PENDING`] for the bound on
    /// those still in their handshake).
    pub(super) fn accept_loop(self: Arc<Self>, l: Arc<TcpListener>) {
        let mut backoff = Duration::ZERO;
        let mut said: (u64, Option<Instant>) = (0, None); // failures not reported, when last
        loop {
            let accepted = l.accept();
            if self.closed.load(Ordering::Acquire) {
                break;
            }
            let failed = match accepted {
                Ok((tcp, _)) => {
                    let tcp = Arc::new(tcp);
                    let id = self.admit(tcp.clone());
                    let c = self.clone();
                    let spawned = std::thread::Builder::new()
                        .name("volley-tcp-peer".into())
                        .spawn(move || c.serve(tcp, id));
                    match spawned {
                        Ok(_) => None,
                        Err(e) => {
                            self.finish_pending(id);
                            Some(e)
                        }
                    }
                }
                Err(e) => Some(e),
            };
            let Some(e) = failed else {
                backoff = Duration::ZERO;
                continue;
            };
            // Out of descriptors (or threads, or memory), accepting again at once fails again
            // with a core spinning: free the oldest handshake's, and wait, longer each time.
            if is_exhausted(&e) {
                self.drop_oldest_pending();
            }
            said.0 += 1;
            if said.1.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                crate::diag::event!(
                    Warn,
                    "volley: accepting a connection failed {} time(s) ({e}); backing off",
                    said.0
                );
                said = (0, Some(Instant::now()));
            }
            backoff = (backoff * 2).clamp(Duration::from_millis(5), ACCEPT_BACKOFF_MAX);
            std::thread::sleep(backoff);
        }
    }

    /// Registers a connection in its handshake, dropping the oldest ones beyond the cap.
    fn admit(&self, tcp: Arc<TcpStream>) -> u64 {
        let mut dropped = 0;
        let id = {
            let mut p = self.pending.lock();
            while p.conns.len() >= self.pending_cap {
                if let Some((_, old)) = p.conns.pop_front() {
                    let _ = old.shutdown(std::net::Shutdown::Both);
                    dropped += 1;
                }
            }
            let id = p.next;
            p.next += 1;
            p.conns.push_back((id, tcp));
            id
        };
        self.note_dropped(dropped);
        id
    }

    /// Runs `f`, which needs descriptors, again while there are none: an authenticated peer goes
    /// before connections still in their handshake, the oldest of which is dropped each time to
    /// make room (its thread closes it at once).
    fn with_room<T>(&self, mut f: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
        let mut tries = 0;
        loop {
            match f() {
                Err(e) if is_exhausted(&e) && tries < 20 => {
                    self.drop_oldest_pending();
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                done => return done,
            }
        }
    }

    /// Ends the oldest connection in its handshake (its thread sees it closed).
    fn drop_oldest_pending(&self) {
        let old = self.pending.lock().conns.pop_front();
        if let Some((_, old)) = old {
            let _ = old.shutdown(std::net::Shutdown::Both);
            self.note_dropped(1);
        }
    }

    /// The handshake of connection `id` ended; false if it had been dropped meanwhile.
    fn finish_pending(&self, id: u64) -> bool {
        let mut p = self.pending.lock();
        let Some(at) = p.conns.iter().position(|(k, _)| *k == id) else { return false };
        p.conns.remove(at);
        true
    }

    /// Counts handshakes dropped (too slow, or pushed out by newer ones) and says so on stderr
    /// at most every few seconds: a flood of them must not flood the log too.
    fn note_dropped(&self, n: u64) {
        if n == 0 {
            return;
        }
        let mut d = self.dropped.lock();
        d.0 += n;
        if d.1.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            crate::diag::event!(
                Warn,
                "volley: dropped {} connection(s) that did not authenticate (closed, too slow, \
                 or pushed out by newer ones: at most {} wait at once, {} s each)",
                d.0,
                self.pending_cap,
                HANDSHAKE_DEADLINE.as_secs()
            );
            *d = (0, Some(Instant::now()));
        }
    }

    /// Remembers a refused handshake for `volley status`, by peer address and reason; returns
    /// how many of those there were.
    fn note_refused(&self, who: &std::net::SocketAddr, reason: String) -> u32 {
        let peer = who.ip().to_string();
        let mut r = self.refused.lock();
        if let Some(at) = r.iter().position(|(x, _)| x.peer == peer && x.reason == reason) {
            if let Some((mut x, _)) = r.remove(at) {
                x.count = x.count.saturating_add(1);
                let count = x.count;
                r.push_back((x, Instant::now()));
                return count;
            }
        }
        if r.len() >= MAX_REFUSALS {
            r.pop_front();
        }
        r.push_back((Refusal { peer, reason, count: 1, last_ms_ago: 0 }, Instant::now()));
        1
    }

    /// The refused handshakes remembered, the latest first.
    fn refusals(&self) -> Vec<Refusal> {
        let r = self.refused.lock();
        r.iter()
            .rev()
            .map(|(x, at)| Refusal { last_ms_ago: at.elapsed().as_millis() as u64, ..x.clone() })
            .collect()
    }

    /// The accepting side's handshake, within `deadline`: TLS (if the cluster uses it), then
    /// the token. Returns the TLS session, if any, to carry the connection from then on.
    pub(super) fn handshake(
        &self,
        tcp: &TcpStream,
        deadline: Instant,
    ) -> Result<Option<crate::tls::Accepted>, ProtoError> {
        let mut io = Deadline { tcp, until: deadline };
        match self.cfg.tls.as_deref() {
            Some(t) => {
                let mut session = crate::tls::accept(&mut io, t).map_err(|e| match e.kind() {
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                        ProtoError::Io(e)
                    }
                    std::io::ErrorKind::UnexpectedEof => ProtoError::Closed,
                    _ => ProtoError::Handshake(format!("no TLS for the connection: {e}")),
                })?;
                authenticate_server(&mut session.stream(&mut io), &self.cfg.token)?;
                Ok(Some(session))
            }
            None => {
                authenticate_server(&mut io, &self.cfg.token)?;
                Ok(None)
            }
        }
    }

    pub(super) fn serve(self: Arc<Self>, tcp: Arc<TcpStream>, pending: u64) {
        let peer = tcp.peer_addr();
        let who = peer.as_ref().map(|a| a.to_string()).unwrap_or_else(|_| "?".into());
        let _ = tcp.set_nodelay(true);
        let deadline = Instant::now() + HANDSHAKE_DEADLINE;
        let shaken = if self.closed.load(Ordering::Acquire) {
            Err(ProtoError::Closed)
        } else {
            self.handshake(&tcp, deadline)
        };
        // Dropped meanwhile (pushed out by newer connections): its socket is shut down.
        let kept = self.finish_pending(pending);
        let session = match shaken {
            Ok(session) if kept => session,
            Ok(_) | Err(ProtoError::Closed) => return,
            Err(e) => {
                use std::io::ErrorKind as K;
                // Too slow, or gone: counted, and reported now and then.
                let quiet = matches!(&e, ProtoError::Io(io) if matches!(
                    io.kind(),
                    K::WouldBlock | K::TimedOut | K::ConnectionReset | K::ConnectionAborted
                        | K::BrokenPipe | K::UnexpectedEof
                ));
                if quiet || !kept {
                    self.note_dropped(u64::from(kept));
                    return;
                }
                let Ok(a) = &peer else {
                    self.note_dropped(1);
                    return;
                };
                // Counted per address and reason, and said only for the first few and then
                // every hundredth: a refused node retries twice a second, and whoever can
                // connect must not be able to fill the log.
                let reason = match &e {
                    ProtoError::Auth(_) | ProtoError::VersionMismatch { .. } => e.to_string(),
                    _ => "did not complete the handshake (garbage, another protocol, or TLS on \
                          one side only)"
                        .to_string(),
                };
                let count = self.note_refused(a, reason);
                if count <= 3 || count.is_multiple_of(100) {
                    crate::diag::event!(
                        Warn,
                        "volley: refused a connection from {who}: {e} ({count} from {} so far)",
                        a.ip()
                    );
                }
                return;
            }
        };
        // The only other holder of the socket, the pending entry, is gone.
        let Ok(tcp) = Arc::try_unwrap(tcp) else { return };
        let _ = tcp.set_read_timeout(None);
        let _ = tcp.set_write_timeout(None);
        let mut s = match session {
            Some(t) => match t.into_conn(tcp) {
                Ok(s) => s,
                Err(e) => {
                    crate::diag::event!(Warn, "volley: no TLS for the connection from {who}: {e}");
                    return;
                }
            },
            None => Conn::Tcp(tcp),
        };
        // The first message, within what is left of the deadline (it comes at once).
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = s.set_read_timeout(Some(left.max(Duration::from_millis(1))));
        let Ok(rs) = self.with_room(|| s.try_clone()) else { return };
        let mut r = FrameReader::new(&rs);
        let first = match recv(&mut r) {
            Ok(m) => m,
            Err(ProtoError::Closed) => return,
            Err(e) => {
                crate::diag::event!(Warn, "volley: dropping the connection from {who}: {e}");
                return;
            }
        };
        let _ = s.set_read_timeout(None);
        match first {
            PeerMsg::Join { info } if self.head.is_some() => {
                if let Some(head) = self.head.clone() {
                    self.serve_member(&head, info, s, r);
                }
            }
            PeerMsg::Status if self.head.is_some() => {
                // `volley status`: one look at the view.
                let nodes = self.head.as_ref().map(|h| h.view()).unwrap_or_default();
                let _ = send(&mut s, &PeerMsg::View { nodes, refused: self.refusals() });
            }
            PeerMsg::Head(req) if self.head.is_some() => {
                // A question for the head: one answer (workers and objects asked of every
                // node, see `node_ask`), then more questions on this connection while the
                // asker keeps it (`status::ask_head` pools them: a `SharedDict` operation is
                // not a handshake each), until it has been idle for `HEAD_CONN_IDLE`.
                let mut req = req;
                loop {
                    stall_for_tests();
                    let answer = self.answer_head(req);
                    if send(&mut s, &PeerMsg::HeadReply(answer)).is_err() {
                        return;
                    }
                    let _ = s.set_read_timeout(Some(HEAD_CONN_IDLE));
                    req = match recv(&mut r) {
                        Ok(PeerMsg::Head(next)) => next,
                        _ => return,
                    };
                    if self.closed.load(Ordering::Acquire) {
                        // A stopped head answers nothing more: the asker sees the connection
                        // close and tries a fresh one, which is refused.
                        return;
                    }
                    let _ = s.set_read_timeout(None);
                }
            }
            PeerMsg::Node(req) => {
                // A question about this node's own workers, objects or log files.
                let answer = super::node_ask::answer_here(&self.shared, req);
                let _ = send(&mut s, &PeerMsg::NodeReply(answer));
            }
            PeerMsg::Hello { id } => self.serve_tasks(id, s, r, &who),
            other => {
                let reason = format!("unexpected first message {}", msg_name(&other));
                crate::diag::event!(Warn, "volley: dropping the connection from {who}: {reason}");
                let _ = send(&mut s, &PeerMsg::Refused { reason });
            }
        }
    }
}

/// `VOLLEY_TEST_HEAD_STALL_MS`: a head that takes a member's question and then says nothing for
/// that long, as a stopped or wedged one does (tests of the member's answer timeout).
/// How long the head keeps a member's connection for questions that has none in flight (the
/// member's pool drops it sooner, see `status::POOL_IDLE`).
const HEAD_CONN_IDLE: Duration = Duration::from_secs(10);

fn stall_for_tests() {
    static STALL: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    let stall = STALL.get_or_init(|| {
        std::env::var("VOLLEY_TEST_HEAD_STALL_MS").ok()?.parse().ok().map(Duration::from_millis)
    });
    if let Some(d) = stall {
        std::thread::sleep(*d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer that sends a byte every 100 ms never runs out a per-read timeout; the handshake's
    /// one deadline ends it all the same.
    #[test]
    fn a_dripping_peer_cannot_stretch_the_handshake() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let client = std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).expect("connect");
            // A frame's length, then its bytes one at a time (until the server hangs up).
            let _ = s.write_all(&[0, 0, 0, 64]);
            for _ in 0..64 {
                std::thread::sleep(Duration::from_millis(100));
                if s.write_all(&[0]).is_err() {
                    break;
                }
            }
        });
        let (tcp, _) = l.accept().expect("accept");
        let start = Instant::now();
        let mut io = Deadline { tcp: &tcp, until: start + Duration::from_millis(500) };
        let r = authenticate_server(&mut io, b"token");
        let took = start.elapsed();
        assert!(r.is_err(), "{r:?}");
        assert!(took < Duration::from_secs(2), "the handshake took {took:?}");
        drop(tcp);
        client.join().expect("client");
    }
}
