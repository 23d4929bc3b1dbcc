//! A node's part in a cluster: TCP to the head and to the other nodes.
//!
//! - Every TCP connection authenticates first ([`volley_proto::authenticate_server`]); a peer that
//!   fails is logged and dropped, and nothing it sent is decoded beyond the handshake.
//! - The head keeps the membership: nodes `Join`, then send a `Heartbeat` with their load every
//!   `heartbeat` and get the cluster `View` back. A node not heard from for `dead_after` (or whose
//!   connection to the head breaks) leaves the view; the others then retry or fail the tasks it
//!   ran for them. The head is a node like the others and takes work too.
//! - The scheduler decides what to send where (`Action::Spill`); a link per peer carries those
//!   tasks, with their values, on a connection this node opens, and the results come back on it.
//!   Values are copied out of the store by the link's writer thread, so a large argument never
//!   holds up the caller or the scheduler.
//! - A malformed or oversized frame ends that connection only.
//! - A connection that has not authenticated is bounded in time and number: its whole handshake
//!   (TLS, token, first message) must end within [`HANDSHAKE_DEADLINE`], at most [`MAX_PENDING`]
//!   are in their handshake at once (a new one drops the oldest), and out of descriptors the
//!   accept loop backs off instead of spinning. Slow or idle peers that never authenticate thus
//!   cost a bounded number of threads and descriptors, and nodes and `volley status` still get
//!   in.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use volley_proto::{
    authenticate_client, authenticate_server, decode, encode, shm_layout, write_frame, FrameReader,
    Keep, NodeId, NodeInfo, ObjectData, ObjectId, PeerMsg, ProtoError, Refusal, ShmLoc, TaskResult,
    TaskSpec,
};
use volley_sched::{Action, ActorReport, PeerView};
use volley_store::{Arena, Lease, Owner};

mod pull;

use crate::shared::{Links, Shared};
use crate::tls::{Conn, TlsConfig};
use crate::RuntimeError;

/// How this node takes part in a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Where to accept other nodes (`host:port`; port 0 picks one). `None` for a driver's node,
    /// which only sends work.
    pub listen: Option<String>,
    /// The head's address; `None` if this node is the head.
    pub head: Option<String>,
    pub token: Vec<u8>,
    /// A driver's node: it runs none of the cluster's tasks.
    pub driver: bool,
    pub heartbeat: Duration,
    /// A node not heard from for this long is dead.
    pub dead_after: Duration,
    /// A driver's node: print the output of the workers of every node here.
    pub logs: bool,
    /// TLS on every connection (nodes need the key to accept; see `tls`).
    pub tls: Option<Arc<TlsConfig>>,
}

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
/// A heartbeat (or its thread's wake-up) this late is reported on stderr.
const SLOW_BEAT: Duration = Duration::from_millis(500);

pub(crate) struct Cluster {
    shared: Arc<Shared>,
    cfg: ClusterConfig,
    /// Where this node accepts peers, as bound.
    addr: String,
    me: Mutex<NodeId>,
    view: Mutex<Vec<NodeInfo>>,
    /// Connections this node opened to send tasks, by peer.
    links: Mutex<HashMap<NodeId, (u64, Sender<Action>)>>,
    /// One lock per peer while a link to it is being opened (so two threads never open two).
    opening: Mutex<HashMap<NodeId, Arc<Mutex<()>>>>,
    /// Connections peers opened to send tasks here: results go back on them.
    /// (Both maps: the connection's number, to tell a connection from the one replacing it.)
    incoming: Mutex<HashMap<NodeId, (u64, Sender<Action>)>>,
    next_conn: std::sync::atomic::AtomicU64,
    /// The head's table of members (on the head only).
    members: Option<Mutex<Members>>,
    closed: AtomicBool,
    /// Drivers' nodes that asked for this node's worker output.
    log_subscribers: Mutex<std::collections::HashSet<NodeId>>,
    /// (A driver's node) nodes asked for their worker output.
    log_sources: Mutex<std::collections::HashSet<NodeId>>,
    /// Every open connection to a peer, to shut down on `close` (their reader threads end then).
    sockets: Mutex<HashMap<u64, Conn>>,
    next_socket: std::sync::atomic::AtomicU64,
    /// Bytes of stored values received from peers.
    bytes_received: std::sync::atomic::AtomicU64,
    /// Bytes of stored values served to peers pulling them.
    bytes_served: std::sync::atomic::AtomicU64,
    /// The head's epoch (see `PeerMsg::Welcome`); the head's own on the head.
    epoch: std::sync::atomic::AtomicU64,
    /// Large values being pulled here (see `pull`).
    pulls: Mutex<HashMap<ObjectId, pull::Pulling>>,
    /// Connections accepted and still in their handshake, oldest first.
    pending: Mutex<Pending>,
    /// How many of those at most (see `pending_cap`).
    pending_cap: usize,
    /// Handshakes refused lately (a wrong token, another version), for `volley status`.
    refused: Mutex<VecDeque<(Refusal, Instant)>>,
    /// Dropped handshakes (too slow, evicted) not yet reported, and when that was last done.
    dropped: Mutex<(u64, Option<Instant>)>,
}

/// Connections in their handshake: each entry shares its socket with the thread serving it, so
/// dropping the entry's connection (`shutdown`) ends that thread's blocking read at once.
#[derive(Default)]
struct Pending {
    next: u64,
    conns: VecDeque<(u64, Arc<TcpStream>)>,
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

struct Members {
    next: u32,
    nodes: HashMap<NodeId, (NodeInfo, Instant)>,
}

fn proto(e: ProtoError) -> RuntimeError {
    RuntimeError::Proto(e)
}

fn connect(addr: &str, token: &[u8], tls: Option<&TlsConfig>) -> Result<Conn, RuntimeError> {
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

fn send(s: &mut Conn, msg: &PeerMsg) -> Result<(), RuntimeError> {
    write_frame(s, &encode(msg).map_err(proto)?).map_err(proto)
}

fn recv(r: &mut FrameReader<&Conn>) -> Result<PeerMsg, ProtoError> {
    decode(r.next_frame()?)
}

impl Cluster {
    /// Joins (or, without a head address, starts) the cluster. Returns once this node knows the
    /// cluster's view.
    pub(crate) fn start(
        shared: Arc<Shared>,
        cfg: ClusterConfig,
    ) -> Result<Arc<Cluster>, RuntimeError> {
        let listener = match &cfg.listen {
            Some(a) => Some(TcpListener::bind(a)?),
            None => None,
        };
        let addr = match &listener {
            Some(l) => l.local_addr()?.to_string(),
            None => String::new(),
        };
        let head = cfg.head.is_none();
        if cfg.driver {
            shared.state.lock().sched.set_prefer_peers(true);
        }
        let c = Arc::new(Cluster {
            shared,
            addr,
            me: Mutex::new(NodeId(1)),
            view: Mutex::new(Vec::new()),
            links: Mutex::new(HashMap::new()),
            opening: Mutex::new(HashMap::new()),
            incoming: Mutex::new(HashMap::new()),
            next_conn: std::sync::atomic::AtomicU64::new(1),
            members: head.then(|| Mutex::new(Members { next: 2, nodes: HashMap::new() })),
            closed: AtomicBool::new(false),
            log_subscribers: Mutex::new(Default::default()),
            log_sources: Mutex::new(Default::default()),
            sockets: Mutex::new(HashMap::new()),
            next_socket: std::sync::atomic::AtomicU64::new(0),
            bytes_received: std::sync::atomic::AtomicU64::new(0),
            bytes_served: std::sync::atomic::AtomicU64::new(0),
            epoch: std::sync::atomic::AtomicU64::new(if head { new_epoch() } else { 0 }),
            pulls: Mutex::new(HashMap::new()),
            pending: Mutex::new(Pending::default()),
            pending_cap: pending_cap(),
            refused: Mutex::new(VecDeque::new()),
            dropped: Mutex::new((0, None)),
            cfg,
        });
        if !c.cfg.driver {
            // Worker output also goes to the drivers that asked for it.
            let weak = Arc::downgrade(&c);
            crate::logs::set_forward(Some(Arc::new(move |fd, lines: &[u8]| {
                if let Some(c) = weak.upgrade() {
                    c.forward_log(fd, lines);
                }
            })));
        }
        if let Some(l) = listener {
            let c2 = c.clone();
            std::thread::Builder::new()
                .name("volley-tcp-accept".into())
                .spawn(move || c2.accept_loop(l))?;
        }
        if head {
            c.shared.state.lock().sched.set_node_id(NodeId(1));
            let me = c.info(NodeId(1));
            if let Some(m) = &c.members {
                m.lock().nodes.insert(NodeId(1), (me, Instant::now()));
            }
            c.head_tick();
            let c2 = c.clone();
            std::thread::Builder::new().name("volley-head".into()).spawn(move || {
                while !c2.closed.load(Ordering::Acquire) {
                    std::thread::sleep(c2.cfg.heartbeat);
                    c2.head_tick();
                }
            })?;
        } else {
            let (stream, id) = c.join()?;
            *c.me.lock() = id;
            c.shared.state.lock().sched.set_node_id(id);
            c.subscribe_logs(false);
            let c2 = c.clone();
            std::thread::Builder::new()
                .name("volley-heartbeat".into())
                .spawn(move || c2.heartbeat_loop(stream))?;
        }
        Ok(c)
    }

    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    pub(crate) fn node_id(&self) -> NodeId {
        *self.me.lock()
    }

    pub(crate) fn view(&self) -> Vec<NodeInfo> {
        self.view.lock().clone()
    }

    /// Sends worker output lines to the drivers' nodes that asked for them.
    fn forward_log(&self, fd: std::os::fd::RawFd, lines: &[u8]) {
        let subscribers: Vec<NodeId> = self.log_subscribers.lock().iter().copied().collect();
        if subscribers.is_empty() || !(fd == 1 || fd == 2) {
            return;
        }
        let incoming = self.incoming.lock();
        for peer in subscribers {
            if let Some((_, tx)) = incoming.get(&peer) {
                let _ = tx.send(Action::PeerLog { peer, fd: fd as u8, lines: lines.to_vec() });
            }
        }
    }

    /// (A driver's node) asks every other node for its workers' output, once per connection;
    /// `on_the_side`: from a thread of its own (the heartbeat thread must not wait on links).
    fn subscribe_logs(self: &Arc<Self>, on_the_side: bool) {
        if !self.cfg.driver || !self.cfg.logs || self.closed.load(Ordering::Acquire) {
            return;
        }
        let me = self.node_id();
        let new: Vec<NodeId> = {
            let view: Vec<NodeId> =
                self.view.lock().iter().filter(|n| n.id != me && !n.driver).map(|n| n.id).collect();
            let mut sources = self.log_sources.lock();
            view.into_iter().filter(|id| sources.insert(*id)).collect()
        };
        if new.is_empty() {
            return;
        }
        let c = self.clone();
        let subscribe = move || {
            for peer in new {
                if c.closed.load(Ordering::Acquire) {
                    return;
                }
                c.dispatch(Action::PeerLog { peer, fd: 0, lines: Vec::new() });
            }
        };
        if !on_the_side {
            return subscribe(); // When joining: `init` returns with every node's output on.
        }
        // Opening the links can wait for a slow peer's handshake: not on the heartbeat thread.
        let spawned = std::thread::Builder::new().name("volley-logsub".into()).spawn(subscribe);
        if let Err(e) = spawned {
            eprintln!("volley: could not subscribe to the new nodes' logs: {e}");
        }
    }

    pub(crate) fn close(&self) {
        if !self.cfg.driver {
            crate::logs::set_forward(None);
        }
        self.closed.store(true, Ordering::Release);
        for (_, s) in self.sockets.lock().drain() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        for (_, s) in self.pending.lock().conns.drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        self.links.lock().clear();
        self.incoming.lock().clear();
        if self.cfg.listen.is_some() {
            // Wake the accept loop so it sees `closed`.
            if let Some(a) = self.addr.to_socket_addrs().ok().and_then(|mut a| a.next()) {
                let _ = TcpStream::connect_timeout(&a, Duration::from_millis(200));
            }
        }
    }

    /// This node's description, for the head.
    pub(crate) fn info(&self, id: NodeId) -> NodeInfo {
        NodeInfo {
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
            bytes_served: self.bytes_served.load(Ordering::Relaxed),
            ..self.shared.node_info(id, self.addr.clone(), self.cfg.driver)
        }
    }

    // ------------------------------------------------------------------ membership

    fn join(self: &Arc<Self>) -> Result<(Conn, NodeId), RuntimeError> {
        let head = self.cfg.head.clone().unwrap_or_default();
        let mut s = connect(&head, &self.cfg.token, self.cfg.tls.as_deref())?;
        send(&mut s, &PeerMsg::Join { info: self.info(NodeId(0)) })?;
        let rs = s.try_clone()?;
        let mut r = FrameReader::new(&rs);
        let id = match recv(&mut r).map_err(proto)? {
            PeerMsg::Welcome { id, epoch } => {
                let before = self.epoch.swap(epoch, Ordering::AcqRel);
                if before != 0 && before != epoch {
                    self.forget_peers();
                }
                id
            }
            PeerMsg::Refused { reason } => return Err(RuntimeError::Refused(reason)),
            other => {
                return Err(RuntimeError::Refused(format!(
                    "unexpected answer {}",
                    msg_name(&other)
                )))
            }
        };
        *self.me.lock() = id;
        self.shared.state.lock().sched.set_node_id(id);
        self.beat(&mut s, &mut r)?;
        drop(r);
        Ok((s, id))
    }

    /// The head restarted and node ids start over: every peer this node knew is gone (its
    /// tasks are retried, its connections closed) before the new view comes in.
    fn forget_peers(&self) {
        let me = self.node_id();
        let known: Vec<NodeId> =
            self.view.lock().drain(..).map(|n| n.id).filter(|id| *id != me).collect();
        for (_, s) in self.sockets.lock().drain() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        self.links.lock().clear();
        self.incoming.lock().clear();
        self.log_sources.lock().clear();
        self.log_subscribers.lock().clear();
        self.shared
            .with(|st, out| st.sched.peers_reset(&known, "the cluster's head restarted", out));
    }

    /// One heartbeat: our load out, the view back.
    fn beat(
        self: &Arc<Self>,
        s: &mut Conn,
        r: &mut FrameReader<&Conn>,
    ) -> Result<(), RuntimeError> {
        let me = self.node_id();
        let start = Instant::now();
        let info = self.info(me);
        let built = start.elapsed();
        send(s, &PeerMsg::Heartbeat { info })?;
        let answer = recv(r).map_err(proto)?;
        let answered = start.elapsed();
        let PeerMsg::View { nodes, .. } = answer else {
            return Err(RuntimeError::Refused(format!("unexpected answer {}", msg_name(&answer))));
        };
        self.set_view(nodes);
        // A late heartbeat can get a live node declared dead: say where the time went.
        let took = start.elapsed();
        if took >= SLOW_BEAT.max(self.cfg.heartbeat * 5) {
            crate::diag::warn!(
                "a heartbeat took {took:?}: {built:?} to read this node's load, {:?} \
                 for the head's answer, {:?} to take in the view",
                answered - built,
                took - answered
            );
        }
        Ok(())
    }

    fn heartbeat_loop(self: Arc<Self>, mut s: Conn) {
        while !self.closed.load(Ordering::Acquire) {
            let asleep = Instant::now();
            std::thread::sleep(self.cfg.heartbeat);
            let overslept = asleep.elapsed().saturating_sub(self.cfg.heartbeat);
            if overslept >= SLOW_BEAT {
                crate::diag::warn!("the heartbeat thread woke {overslept:?} late (CPU starved?)");
            }
            let alive = {
                let s2 = match s.try_clone() {
                    Ok(x) => x,
                    Err(_) => break,
                };
                let mut r = FrameReader::new(&s2);
                self.beat(&mut s, &mut r).is_ok()
            };
            self.subscribe_logs(true);
            if alive || self.closed.load(Ordering::Acquire) {
                continue;
            }
            // The head is gone: keep the last view, and join again when it is back.
            let mut refused: Option<String> = None;
            loop {
                std::thread::sleep(Duration::from_millis(500));
                if self.closed.load(Ordering::Acquire) {
                    return;
                }
                match self.join() {
                    Ok((s2, _)) => {
                        if refused.is_some() {
                            eprintln!("volley: rejoined the cluster's head");
                        }
                        s = s2;
                        break;
                    }
                    // Refused, not unreachable: say so once (per reason), where the user of
                    // this node or driver looks, instead of retrying in silence.
                    Err(RuntimeError::Rejected(why) | RuntimeError::Refused(why)) => {
                        if refused.as_deref() != Some(why.as_str()) {
                            self.report_refused(&why);
                            refused = Some(why);
                        }
                    }
                    Err(_) => {}
                }
            }
        }
    }

    /// The head refused this node's re-join (it was restarted with another token, or runs
    /// another version): this node works with the peers it still reaches, and nothing new.
    fn report_refused(&self, why: &str) {
        let head = self.cfg.head.as_deref().unwrap_or("?");
        let what = if self.cfg.driver {
            "this driver: its tasks run only on the nodes it still reaches, and no node \
             that joins from now on"
        } else {
            "this node: it takes no work from the rest of the cluster"
        };
        eprintln!(
            "volley: the cluster's head at {head} refused to take back {what} ({why}). Was the \
             head restarted with another token? Restart it with the cluster's token (the \
             session directory's token file, --token or VOLLEY_TOKEN); this keeps trying."
        );
    }

    /// The head's periodic work: refresh its own entry, drop members not heard from, and tell
    /// its scheduler.
    fn head_tick(self: &Arc<Self>) {
        let Some(m) = &self.members else { return };
        let me = self.info(NodeId(1));
        let nodes = {
            let mut m = m.lock();
            m.nodes.insert(NodeId(1), (me, Instant::now()));
            let dead_after = self.cfg.dead_after;
            let dead: Vec<NodeId> = m
                .nodes
                .iter()
                .filter(|(_, (_, seen))| seen.elapsed() > dead_after)
                .map(|(id, _)| *id)
                .collect();
            for id in dead {
                if let Some((info, _)) = m.nodes.remove(&id) {
                    eprintln!(
                        "volley: node {} ({}) missed its heartbeats for {:?}: declared dead",
                        id.0, info.addr, dead_after
                    );
                }
            }
            let mut v: Vec<NodeInfo> = m.nodes.values().map(|(i, _)| i.clone()).collect();
            v.sort_by_key(|i| i.id);
            v
        };
        self.set_view(nodes);
    }

    fn set_view(self: &Arc<Self>, nodes: Vec<NodeInfo>) {
        let me = self.node_id();
        let peers: Vec<PeerView> = nodes
            .iter()
            .filter(|n| n.id != me)
            .map(|n| PeerView {
                id: n.id,
                cpu_total_milli: n.cpu_total_milli,
                cpu_free_milli: n.cpu_free_milli,
                resources: n.resources.clone(),
                driver: n.driver,
                named: n.named.clone(),
            })
            .collect();
        let live: std::collections::HashSet<NodeId> = nodes.iter().map(|n| n.id).collect();
        let left: Vec<NodeId> = {
            let mut view = self.view.lock();
            let left = view.iter().map(|n| n.id).filter(|id| !live.contains(id)).collect();
            *view = nodes;
            left
        };
        self.shared.with(|st, out| st.sched.set_peers(peers, out));
        for peer in left {
            self.cut_off(peer);
        }
        if !self.pulls.lock().is_empty() {
            self.sources_left(&live);
        }
    }

    /// A peer left the cluster's view (the head declared it dead): its tasks here were dropped
    /// and ours there retried, so its connections are closed. If it is alive after all (a
    /// heartbeat late under load), it sees them close and retries what it had sent here,
    /// instead of waiting forever for results this node no longer owes it.
    fn cut_off(&self, peer: NodeId) {
        let link = self.links.lock().remove(&peer);
        let incoming = self.incoming.lock().remove(&peer);
        // Their writers end with their last sender, and shut their sockets down.
        drop((link, incoming));
    }

    fn member_joined(&self, mut info: NodeInfo) -> NodeId {
        let Some(m) = &self.members else { return NodeId(0) };
        let mut m = m.lock();
        let id = NodeId(m.next);
        m.next += 1;
        info.id = id;
        eprintln!(
            "volley: node {} joined from {}{}",
            id.0,
            info.addr,
            if info.driver { " (driver)" } else { "" }
        );
        m.nodes.insert(id, (info, Instant::now()));
        id
    }

    fn member_view(&self, id: NodeId, info: Option<NodeInfo>) -> Vec<NodeInfo> {
        let Some(m) = &self.members else { return Vec::new() };
        let mut m = m.lock();
        if let Some(mut info) = info {
            info.id = id;
            let gap = m.nodes.get(&id).map(|(_, seen)| seen.elapsed());
            if let Some(gap) = gap.filter(|g| *g >= self.cfg.dead_after / 2) {
                crate::diag::warn!(
                    "node {} ({}) was silent for {gap:?} (declared dead after {:?})",
                    id.0,
                    info.addr,
                    self.cfg.dead_after
                );
            }
            m.nodes.insert(id, (info, Instant::now()));
        }
        let mut v: Vec<NodeInfo> = m.nodes.values().map(|(i, _)| i.clone()).collect();
        v.sort_by_key(|i| i.id);
        v
    }

    fn member_left(self: &Arc<Self>, id: NodeId) {
        if let Some(m) = &self.members {
            if let Some((info, _)) = m.lock().nodes.remove(&id) {
                eprintln!("volley: node {} ({}) disconnected", id.0, info.addr);
            }
        }
        self.head_tick();
    }

    // ------------------------------------------------------------------ serving peers

    /// Accepts peers, each served on a thread of its own (see [`MAX_PENDING`] for the bound on
    /// those still in their handshake).
    fn accept_loop(self: Arc<Self>, l: TcpListener) {
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
                eprintln!(
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
            eprintln!(
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
    fn handshake(
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

    fn serve(self: Arc<Self>, tcp: Arc<TcpStream>, pending: u64) {
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
                    eprintln!(
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
                    eprintln!("volley: no TLS for the connection from {who}: {e}");
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
                eprintln!("volley: dropping the connection from {who}: {e}");
                return;
            }
        };
        let _ = s.set_read_timeout(None);
        match first {
            PeerMsg::Join { info } if self.members.is_some() => {
                let id = self.member_joined(info);
                let epoch = self.epoch.load(Ordering::Acquire);
                if send(&mut s, &PeerMsg::Welcome { id, epoch }).is_err() {
                    return self.member_left(id);
                }
                loop {
                    match recv(&mut r) {
                        Ok(PeerMsg::Heartbeat { info }) => {
                            let nodes = self.member_view(id, Some(info));
                            let view = PeerMsg::View { nodes, refused: Vec::new() };
                            if send(&mut s, &view).is_err() {
                                break;
                            }
                        }
                        Ok(other) => {
                            eprintln!(
                                "volley: node {} sent {} on its head connection; dropped",
                                id.0,
                                msg_name(&other)
                            );
                            break;
                        }
                        Err(ProtoError::Closed) => break,
                        Err(e) => {
                            eprintln!("volley: dropping node {}'s head connection: {e}", id.0);
                            break;
                        }
                    }
                }
                self.member_left(id);
            }
            PeerMsg::Heartbeat { .. } if self.members.is_some() => {
                // `volley status`: one look at the view.
                let nodes = self.member_view(NodeId(0), None);
                let _ = send(&mut s, &PeerMsg::View { nodes, refused: self.refusals() });
            }
            PeerMsg::Hello { id } => self.serve_tasks(id, s, r, &who),
            other => {
                let reason = format!("unexpected first message {}", msg_name(&other));
                eprintln!("volley: dropping the connection from {who}: {reason}");
                let _ = send(&mut s, &PeerMsg::Refused { reason });
            }
        }
    }

    /// A peer sends tasks on this connection; their results go back on it.
    fn serve_tasks(self: &Arc<Self>, peer: NodeId, s: Conn, mut r: FrameReader<&Conn>, who: &str) {
        let epoch = self.epoch.load(Ordering::Acquire);
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let tx = self.writer(peer, s, false, conn);
        self.incoming.lock().insert(peer, (conn, tx));
        // Every message one read brought in is handled under one lock of the state.
        let mut batch = Vec::new();
        loop {
            let msg = self.receive(&mut r, (peer, false));
            let stop = match msg {
                Ok(None) => false,
                Ok(Some(mut m @ PeerMsg::Task { .. })) => {
                    if let PeerMsg::Task { packages, .. } = &mut m {
                        for (hash, bytes) in packages.drain(..) {
                            if let Err(e) = self.shared.register_package(hash, bytes.into_vec()) {
                                eprintln!("volley: node {}: {e}", peer.0);
                            }
                        }
                    }
                    batch.push(m);
                    false
                }
                Ok(Some(PeerMsg::SubscribeLogs)) => {
                    self.log_subscribers.lock().insert(peer);
                    false
                }
                Ok(Some(
                    m @ (PeerMsg::Cancel { .. }
                    | PeerMsg::Release { .. }
                    | PeerMsg::Kill { .. }
                    | PeerMsg::Reserve { .. }
                    | PeerMsg::PgRelease { .. }
                    | PeerMsg::Steal { .. }
                    | PeerMsg::Fetch { .. }
                    | PeerMsg::Object { .. }),
                )) => {
                    batch.push(m);
                    false
                }
                Ok(Some(other)) => {
                    eprintln!(
                        "volley: node {} ({who}) sent {}; connection dropped",
                        peer.0,
                        msg_name(&other)
                    );
                    true
                }
                Err(ProtoError::Closed) => true,
                Err(ProtoError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => true,
                Err(e) => {
                    eprintln!("volley: dropping node {}'s connection ({who}): {e}", peer.0);
                    true
                }
            };
            if stop || batch.len() >= 256 || !r.has_buffered_frame() {
                self.shared.with(|st, out| {
                    for m in batch.drain(..) {
                        apply_peer_msg(&mut st.sched, peer, m, out);
                    }
                });
            }
            if stop {
                break;
            }
        }
        {
            let mut incoming = self.incoming.lock();
            if incoming.get(&peer).is_some_and(|(c, _)| *c != conn) {
                return; // The peer opened another connection since: it is not gone.
            }
            incoming.remove(&peer);
        }
        self.side_closed((peer, false));
        if self.epoch.load(Ordering::Acquire) != epoch {
            return; // The head restarted meanwhile: `forget_peers` did the rest.
        }
        self.log_subscribers.lock().remove(&peer);
        if !self.closed.load(Ordering::Acquire) {
            self.shared.with(|st, out| st.sched.peer_gone(peer, "its connection closed", out));
        }
    }

    // ------------------------------------------------------------------ sending

    /// Carries out a scheduler action meant for a peer (called outside the state lock).
    pub(crate) fn dispatch(self: &Arc<Self>, a: Action) {
        if let Action::Pull { origin, id, value, relay } = &a {
            return self.start_pull(*origin, *id, value, *relay);
        }
        let (peer, outgoing) = match &a {
            Action::Spill { peer, .. }
            | Action::PeerCancel { peer, .. }
            | Action::PeerRelease { peer, .. }
            | Action::PeerKill { peer, .. }
            | Action::PeerReserve { peer, .. }
            | Action::PeerPgRelease { peer, .. }
            | Action::PeerSteal { peer, .. } => (*peer, true),
            Action::PeerLog { peer, fd, .. } => (*peer, *fd == 0),
            Action::PeerServe { peer, link, .. } | Action::PeerFetch { peer, link, .. } => {
                (*peer, *link)
            }
            Action::PeerDone { peer, .. }
            | Action::PeerStarted { peer, .. }
            | Action::PeerReserved { peer, .. }
            | Action::PeerReturned { peer, .. }
            | Action::PeerObject { peer, .. }
            | Action::PeerActorState { peer, .. } => (*peer, false),
            _ => return,
        };
        let tx = if outgoing { self.link_to(peer) } else { self.incoming_from(peer) };
        // Without a connection to the peer that sent a task, nobody wants its result.
        let sent = tx.map(|(conn, tx)| (conn, tx.send(a).is_ok()));
        if outgoing {
            match sent {
                None => self.link_broke(peer, "it could not be reached", None),
                Some((conn, false)) => self.link_broke(peer, "its connection closed", Some(conn)),
                Some((_, true)) => {}
            }
        }
    }

    /// The connection this node opened to `peer`, opened now if there is none.
    fn link_to(self: &Arc<Self>, peer: NodeId) -> Option<(u64, Sender<Action>)> {
        if let Some(l) = self.links.lock().get(&peer).cloned() {
            return Some(l);
        }
        let gate = self.opening.lock().entry(peer).or_default().clone();
        let _opening = gate.lock();
        if let Some(l) = self.links.lock().get(&peer).cloned() {
            return Some(l); // Another thread opened it meanwhile.
        }
        self.open_link(peer)
    }

    /// The connection `peer` opened to this node, if any.
    fn incoming_from(&self, peer: NodeId) -> Option<(u64, Sender<Action>)> {
        self.incoming.lock().get(&peer).cloned()
    }

    fn open_link(self: &Arc<Self>, peer: NodeId) -> Option<(u64, Sender<Action>)> {
        if self.closed.load(Ordering::Acquire) {
            return None;
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let addr = self.view.lock().iter().find(|n| n.id == peer).map(|n| n.addr.clone())?;
        let mut s = match connect(&addr, &self.cfg.token, self.cfg.tls.as_deref()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("volley: cannot reach node {} at {addr}: {e}", peer.0);
                return None;
            }
        };
        if send(&mut s, &PeerMsg::Hello { id: self.node_id() }).is_err() {
            return None;
        }
        let rs = s.try_clone().ok()?;
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let tx = self.writer(peer, s, true, conn);
        {
            // `close` sets `closed`, then shuts every socket and clears the links: a link
            // opened meanwhile (by a thread that started before) must not outlive it.
            let mut links = self.links.lock();
            if self.closed.load(Ordering::Acquire) {
                let _ = rs.shutdown(std::net::Shutdown::Both);
                return None;
            }
            links.insert(peer, (conn, tx.clone()));
        }
        let c = self.clone();
        let _ = std::thread::Builder::new().name("volley-tcp-link".into()).spawn(move || {
            let mut r = FrameReader::new(&rs);
            let mut batch = Vec::new();
            let why = loop {
                let why = match c.receive(&mut r, (peer, true)) {
                    Ok(None) => None,
                    Ok(Some(PeerMsg::Log { fd, lines })) => {
                        crate::logs::write_lines(i32::from(fd), &lines);
                        None
                    }
                    Ok(Some(
                        m @ (PeerMsg::Done { .. }
                        | PeerMsg::Object { .. }
                        | PeerMsg::ActorState { .. }
                        | PeerMsg::Reserved { .. }
                        | PeerMsg::Returned { .. }
                        | PeerMsg::Started { .. }
                        | PeerMsg::Fetch { .. }),
                    )) => {
                        batch.push(m);
                        None
                    }
                    Ok(Some(other)) => Some(format!("it sent {}", msg_name(&other))),
                    Err(ProtoError::Closed) => Some("its connection closed".to_string()),
                    Err(e) => Some(format!("its connection failed: {e}")),
                };
                // Every result one read brought in is handled under one lock of the state.
                if why.is_some() || batch.len() >= 256 || !r.has_buffered_frame() {
                    c.shared.with(|st, out| {
                        for m in batch.drain(..) {
                            match m {
                                PeerMsg::Done { task, result, objects, kept } => {
                                    st.sched.peer_done(peer, task, result, objects, out);
                                    st.sched.peer_kept(peer, kept, out);
                                }
                                PeerMsg::Object { id, result, objects } => {
                                    st.sched.peer_object(id, result, objects, out)
                                }
                                PeerMsg::Returned { tasks } => {
                                    st.sched.peer_returned(peer, &tasks, out)
                                }
                                PeerMsg::Started { task } => st.sched.peer_started(peer, task),
                                PeerMsg::Fetch { id } => st.sched.peer_fetch(peer, id, true, out),
                                PeerMsg::Reserved { pg, bundles, ok } => {
                                    st.sched.pg_reserved(peer, &pg, &bundles, ok, out)
                                }
                                PeerMsg::ActorState { actor, pid, restarts, death, log } => {
                                    let report = ActorReport { pid, restarts, death, log };
                                    st.sched.peer_actor_state(peer, actor, report, out)
                                }
                                _ => {}
                            }
                        }
                    });
                }
                if let Some(why) = why {
                    break why;
                }
            };
            let current = c.links.lock().get(&peer).map(|(k, _)| *k);
            if current.is_none_or(|k| k == conn) {
                c.side_closed((peer, true));
            }
            if c.epoch.load(Ordering::Acquire) == epoch {
                c.link_broke(peer, &why, Some(conn));
            }
        });
        Some((conn, tx))
    }

    /// The link to `peer` (connection `conn`, or whichever it has) broke: the peer is gone,
    /// unless that link was replaced by a newer one.
    fn link_broke(&self, peer: NodeId, why: &str, conn: Option<u64>) {
        {
            let mut links = self.links.lock();
            if let (Some(conn), Some((current, _))) = (conn, links.get(&peer)) {
                if *current != conn {
                    return;
                }
            }
            links.remove(&peer);
        }
        self.log_sources.lock().remove(&peer);
        if !self.closed.load(Ordering::Acquire) {
            self.shared.with(|st, out| st.sched.peer_gone(peer, why, out));
        }
    }

    /// A writer thread for one connection: values are copied out of the store there.
    fn writer(
        self: &Arc<Self>,
        peer: NodeId,
        mut s: Conn,
        outgoing: bool,
        conn: u64,
    ) -> Sender<Action> {
        let (tx, rx): (Sender<Action>, Receiver<Action>) = mpsc::channel();
        let c = self.clone();
        let key = self.next_socket.fetch_add(1, Ordering::Relaxed);
        if let Ok(k) = s.try_clone() {
            self.sockets.lock().insert(key, k);
        }
        let _ = std::thread::Builder::new().name("volley-tcp-write".into()).spawn(move || {
            let raw = s.try_clone();
            let mut w = std::io::BufWriter::with_capacity(256 << 10, &mut s);
            // Values peers pull from here, a chunk each in turn between the other messages.
            let mut serving = std::collections::VecDeque::new();
            loop {
                // Messages queued meanwhile go out in the same write; with nothing queued and
                // nothing to serve, what is written is flushed and the thread waits.
                let next = match rx.try_recv() {
                    Ok(a) => Some(a),
                    Err(mpsc::TryRecvError::Disconnected) => break,
                    Err(mpsc::TryRecvError::Empty) if serving.is_empty() => {
                        if w.flush().is_err() {
                            c.writer_failed(peer, outgoing, conn, &raw);
                            break;
                        }
                        match rx.recv() {
                            Ok(a) => Some(a),
                            Err(_) => break,
                        }
                    }
                    Err(mpsc::TryRecvError::Empty) => None,
                };
                let ok = match next {
                    Some(Action::PeerServe { id, value, .. }) => match c.serve_start(id, value) {
                        Ok(v) => {
                            serving.push_back(v);
                            true
                        }
                        Err(reason) => {
                            c.write_msg(&mut w, peer, PeerMsg::NoObject { id, reason }, &[])
                        }
                    },
                    Some(a) => match c.to_msg(a) {
                        Some((msg, leases)) => c.write_msg(&mut w, peer, msg, &leases),
                        None => true,
                    },
                    None => match pull::write_chunk(&mut w, &mut serving) {
                        Ok(n) => {
                            c.bytes_served.fetch_add(n, Ordering::Relaxed);
                            true
                        }
                        Err(_) => false,
                    },
                };
                if !ok {
                    c.writer_failed(peer, outgoing, conn, &raw);
                    break;
                }
            }
            // Nothing more goes out on it: the reader ends too.
            if let Some(s) = c.sockets.lock().remove(&key) {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        });
        tx
    }

    /// Writes a message and then the stored values' bytes straight from the store; false if
    /// the connection failed.
    fn write_msg(&self, w: &mut impl Write, peer: NodeId, msg: PeerMsg, leases: &[Lease]) -> bool {
        match encode(&msg) {
            Ok(b) => {
                write_frame(w, &b).is_ok()
                    && leases.iter().all(|l| w.write_all(lease_bytes(l)).is_ok())
            }
            Err(e) => {
                eprintln!("volley: could not encode a message for node {}: {e}", peer.0);
                true
            }
        }
    }

    fn writer_failed(&self, peer: NodeId, outgoing: bool, conn: u64, raw: &std::io::Result<Conn>) {
        if let Ok(r) = raw {
            let _ = r.shutdown(std::net::Shutdown::Both);
        }
        if outgoing {
            self.link_broke(peer, "writing to it failed", Some(conn));
        }
    }

    /// The next message from a peer on `side`, with the bytes of stored values that follow it
    /// read into the store; `None` if it was handled here (a chunk of a value being pulled, a
    /// refusal to serve one), or a pulled value complete (as an `Object`).
    fn receive(
        self: &Arc<Self>,
        r: &mut FrameReader<&Conn>,
        side: pull::Side,
    ) -> Result<Option<PeerMsg>, ProtoError> {
        let mut m = recv(r)?;
        match m {
            PeerMsg::Chunk { id, offset, len } => self.receive_chunk(r, side, id, offset, len),
            PeerMsg::NoObject { id, reason } => {
                self.pull_refused(side, id, &reason);
                Ok(None)
            }
            _ => {
                self.receive_bulk(r, &mut m)?;
                Ok(Some(m))
            }
        }
    }

    /// The message for an action, and the leases on the stored values whose bytes follow it (in
    /// the order [`bulk_values`] lists them).
    fn to_msg(&self, a: Action) -> Option<(PeerMsg, Vec<Lease>)> {
        let mut leases = Vec::new();
        match a {
            Action::Spill {
                peer,
                spec,
                function,
                objects,
                packages,
                routes,
                errors,
                cached,
                fetch,
            } => {
                let mut spec: TaskSpec = (*spec).clone();
                let prepared = self.prepare(&spec.args, &mut leases).and_then(|args| {
                    spec.args = args;
                    self.prepare_all(&objects, &mut leases)
                });
                let objects = match prepared {
                    Ok(o) => o,
                    Err(e) => {
                        let message = format!(
                            "an argument could not be read to send it to node {}: {e}",
                            peer.0
                        );
                        let result =
                            TaskResult::Err { error: lost(&spec.name, message), retryable: false };
                        let tid = spec.task_id;
                        self.shared
                            .with(|st, out| st.sched.peer_done(peer, tid, result, Vec::new(), out));
                        return None;
                    }
                };
                let function = function.map(|f| serde_bytes::ByteBuf::from(f.to_vec()));
                let packages = packages
                    .into_iter()
                    .map(|(h, b)| (h, serde_bytes::ByteBuf::from(b.to_vec())))
                    .collect();
                let errors = errors.into_iter().map(|(id, e)| (id, (*e).clone())).collect();
                // Pulled by the peer: the layout goes, not the bytes.
                let fetch = fetch
                    .into_iter()
                    .map(|(id, v, relay)| {
                        let mut layout =
                            ObjectData::inline(Vec::new(), Vec::new(), v.contained.clone());
                        layout.shm = v.shm.clone();
                        (id, layout, relay)
                    })
                    .collect();
                let msg = PeerMsg::Task {
                    spec,
                    function,
                    objects,
                    packages,
                    routes,
                    errors,
                    cached,
                    fetch,
                };
                Some((msg, leases))
            }
            Action::PeerDone { peer, task, result, objects, mut kept } => {
                // Copies of large results are kept while the store has room to spare: past half
                // of it they would only be spilled to disk for tasks that may never come.
                let store = &self.shared.store;
                if !kept.is_empty() && store.used() > store.capacity() / 2 {
                    let ids = std::mem::take(&mut kept);
                    self.shared.with(|st, out| st.sched.peer_release(peer, &ids, out));
                }
                let prepared = result.map_err(|e| (*e).clone()).and_then(|vs| {
                    let vs: Result<Vec<_>, String> =
                        vs.iter().map(|v| self.prepare(v, &mut leases)).collect();
                    vs.map_err(|why| {
                        lost("", format!("the result could not be read to send it back: {why}"))
                    })
                });
                let result = match prepared {
                    Ok(vs) => TaskResult::Ok(vs),
                    Err(error) => {
                        leases.clear();
                        TaskResult::Err { error, retryable: false }
                    }
                };
                let mut extra = Vec::new();
                let objects = match self.prepare_all(&objects, &mut extra) {
                    Ok(o) => {
                        leases.extend(extra);
                        o
                    }
                    Err(_) => Vec::new(),
                };
                Some((PeerMsg::Done { task, result, objects, kept }, leases))
            }
            Action::PeerCancel { task, force, .. } => {
                Some((PeerMsg::Cancel { task, force }, leases))
            }
            Action::PeerRelease { ids, .. } => Some((PeerMsg::Release { ids }, leases)),
            Action::PeerKill { actor, no_restart, .. } => {
                Some((PeerMsg::Kill { actor, no_restart }, leases))
            }
            Action::PeerReserve { pg, bundles, .. } => {
                Some((PeerMsg::Reserve { pg, bundles }, leases))
            }
            Action::PeerReserved { pg, bundles, ok, .. } => {
                Some((PeerMsg::Reserved { pg, bundles, ok }, leases))
            }
            Action::PeerPgRelease { pg, remove, .. } => {
                Some((PeerMsg::PgRelease { pg, remove }, leases))
            }
            Action::PeerSteal { max, .. } => Some((PeerMsg::Steal { max }, leases)),
            Action::PeerFetch { id, .. } => Some((PeerMsg::Fetch { id }, leases)),
            Action::PeerReturned { tasks, .. } => Some((PeerMsg::Returned { tasks }, leases)),
            Action::PeerStarted { task, .. } => Some((PeerMsg::Started { task }, leases)),
            Action::PeerLog { fd: 0, .. } => Some((PeerMsg::SubscribeLogs, leases)),
            Action::PeerLog { fd, lines, .. } => {
                Some((PeerMsg::Log { fd, lines: serde_bytes::ByteBuf::from(lines) }, leases))
            }
            Action::PeerObject { id, result, objects, .. } => {
                let result = match result {
                    Ok(v) => self.prepare(&v, &mut leases).map_err(|why| {
                        lost("", format!("the object could not be read to send it on: {why}"))
                    }),
                    Err(e) => Err((*e).clone()),
                };
                if result.is_err() {
                    leases.clear();
                }
                let mut extra = Vec::new();
                let objects = match self.prepare_all(&objects, &mut extra) {
                    Ok(o) => {
                        leases.extend(extra);
                        o
                    }
                    Err(_) => Vec::new(),
                };
                Some((PeerMsg::Object { id, result, objects }, leases))
            }
            Action::PeerActorState { actor, pid, restarts, death, log, .. } => {
                let death = death.map(|e| (*e).clone());
                Some((PeerMsg::ActorState { actor, pid, restarts, death, log }, leases))
            }
            // Not for peers (`dispatch` only passes the ones above).
            Action::Execute { .. }
            | Action::Send { .. }
            | Action::GetReply { .. }
            | Action::WakeLocal { .. }
            | Action::LocalReady { .. }
            | Action::Spawn { .. }
            | Action::Kill { .. }
            | Action::Pull { .. }
            | Action::PeerServe { .. }
            | Action::Log(_) => None,
        }
    }

    fn prepare_all(
        &self,
        objects: &[(ObjectId, Arc<ObjectData>)],
        leases: &mut Vec<Lease>,
    ) -> Result<Vec<(ObjectId, ObjectData)>, String> {
        objects.iter().map(|(id, v)| Ok((*id, self.prepare(v, leases)?))).collect()
    }

    /// The value as sent: a small one inline; a stored one as its layout, its bytes to follow
    /// the frame (pinned by a lease until written).
    fn prepare(&self, v: &ObjectData, leases: &mut Vec<Lease>) -> Result<ObjectData, String> {
        let Some(loc) = &v.shm else {
            return Ok(ObjectData::inline(v.data.clone(), v.buffers.clone(), v.contained.clone()));
        };
        let lease = self.shared.store.lease_local(loc.seg).map_err(|e| e.to_string())?;
        if lease.len() as u64 != loc.size || lease.ptr().is_null() {
            return Err(format!("segment {} is not the size its layout says", loc.seg));
        }
        leases.push(lease);
        let mut sent = ObjectData::inline(Vec::new(), Vec::new(), v.contained.clone());
        sent.shm = Some(loc.clone());
        Ok(sent)
    }

    /// Reads the bytes that follow a message for its stored values, straight into this node's
    /// store (or inline if the store has no room).
    fn receive_bulk(
        &self,
        r: &mut FrameReader<&Conn>,
        msg: &mut PeerMsg,
    ) -> Result<(), ProtoError> {
        let store = &self.shared.store;
        for v in bulk_values(msg) {
            let Some(loc) = v.shm.clone() else { continue };
            let (_, total) = shm_layout(loc.data_len, &loc.buffer_lens);
            self.bytes_received.fetch_add(loc.size, Ordering::Relaxed);
            if total != loc.size || loc.size == 0 {
                return Err(ProtoError::Handshake(format!(
                    "a value of {} bytes with a layout of {total}",
                    loc.size
                )));
            }
            match store.alloc(Owner::Local, loc.size) {
                Ok((seg, offset)) => {
                    let Some(ptr) = store.arena().ptr(offset, loc.size) else {
                        store.release(seg, Owner::Local);
                        return Err(ProtoError::Handshake("allocation outside the store".into()));
                    };
                    // SAFETY: the segment was just allocated for us alone and lies inside the
                    // mapping; nothing reads it before it is sealed below.
                    let dst = unsafe { std::slice::from_raw_parts_mut(ptr, loc.size as usize) };
                    let read = read_into_store(r, store.arena(), offset, dst, true);
                    if let Err(e) = read {
                        store.release(seg, Owner::Local);
                        return Err(e);
                    }
                    let sealed = store
                        .seal(Owner::Local, seg, loc.size, None)
                        .map_err(|e| ProtoError::Handshake(e.to_string()))?;
                    v.shm = Some(ShmLoc { seg, offset, ..loc });
                    v.keep = Keep(Some(sealed));
                }
                Err(_) if loc.size as usize <= volley_proto::MAX_FRAME_SIZE => {
                    let mut buf = vec![0u8; loc.size as usize];
                    r.read_raw(&mut buf)?;
                    *v = ObjectData::from_segment(&loc, &buf, v.contained.clone()).ok_or_else(
                        || ProtoError::Handshake("value shorter than its layout".into()),
                    )?;
                }
                Err(e) => return Err(ProtoError::Handshake(format!("no room for a value: {e}"))),
            }
        }
        Ok(())
    }
}

/// Reads the raw bytes that follow the last frame into the store at `at`, `dst` being that range
/// of the mapping. Without TLS they are spliced from the socket into the store's memfd, which
/// creates fresh pages filled instead of zeroed first (`Arena::fill_from`); through TLS they are
/// read into the mapping, its pages backed first if `populate` says so.
fn read_into_store(
    r: &mut FrameReader<&Conn>,
    arena: &Arena,
    at: u64,
    dst: &mut [u8],
    populate: bool,
) -> Result<(), ProtoError> {
    let conn: &Conn = r.get_ref();
    match conn.tcp_fd() {
        Some(fd) => {
            let n = r.take_buffered(dst) as u64;
            arena.fill_from(fd, at + n, dst.len() as u64 - n).map_err(ProtoError::from)
        }
        None => {
            if populate {
                arena.populate(at, dst.len() as u64);
            }
            r.read_raw(dst)
        }
    }
}

/// The values of a message whose bytes follow it, in order.
fn bulk_values(msg: &mut PeerMsg) -> Vec<&mut ObjectData> {
    let mut v: Vec<&mut ObjectData> = Vec::new();
    match msg {
        PeerMsg::Task { spec, objects, .. } => {
            v.push(&mut spec.args);
            v.extend(objects.iter_mut().map(|(_, o)| o));
        }
        PeerMsg::Done { result, objects, .. } => {
            if let TaskResult::Ok(vs) = result {
                v.extend(vs.iter_mut());
            }
            v.extend(objects.iter_mut().map(|(_, o)| o));
        }
        PeerMsg::Object { result, objects, .. } => {
            if let Ok(o) = result {
                v.push(o);
            }
            v.extend(objects.iter_mut().map(|(_, o)| o));
        }
        _ => {}
    }
    v.retain(|o| o.shm.is_some());
    v
}

fn lease_bytes(l: &Lease) -> &[u8] {
    // SAFETY: the lease pins the segment in memory, read-only, for as long as it lives.
    unsafe { std::slice::from_raw_parts(l.ptr(), l.len()) }
}

fn lost(task: &str, message: String) -> volley_proto::ErrorPayload {
    volley_proto::ErrorPayload {
        kind: volley_proto::ErrorKind::ObjectLost,
        task_name: task.to_string(),
        message,
        traceback: String::new(),
        exception: None,
        pid: std::process::id(),
    }
}

/// The scheduler's part of a message a peer sent on a task connection.
fn apply_peer_msg(
    s: &mut volley_sched::Scheduler,
    peer: NodeId,
    m: PeerMsg,
    out: &mut Vec<Action>,
) {
    match m {
        PeerMsg::Task { spec, function, objects, routes, errors, cached, fetch, .. } => {
            let function = function.map(|f| Arc::from(f.into_vec()));
            s.accept_peer_task(peer, spec, function, objects, routes, errors, cached, fetch, out);
        }
        PeerMsg::Fetch { id } => s.peer_fetch(peer, id, false, out),
        PeerMsg::Object { id, result, objects } => s.peer_object(id, result, objects, out),
        PeerMsg::Cancel { task, force } => s.cancel(ObjectId::for_return(task, 1), force, out),
        PeerMsg::Release { ids } => s.peer_release(peer, &ids, out),
        PeerMsg::Kill { actor, no_restart } => s.kill_actor(actor, no_restart, out),
        PeerMsg::Reserve { pg, bundles } => {
            let ok = s.reserve_here(Some(peer), &pg, &bundles);
            let bundles = bundles.iter().map(|(i, _)| *i).collect();
            out.push(Action::PeerReserved { peer, pg, bundles, ok });
        }
        PeerMsg::PgRelease { pg, remove } => s.release_pg(&pg, remove, out),
        PeerMsg::Steal { max } => s.peer_steal(peer, max, out),
        _ => {}
    }
}

fn msg_name(m: &PeerMsg) -> &'static str {
    match m {
        PeerMsg::Join { .. } => "Join",
        PeerMsg::Welcome { .. } => "Welcome",
        PeerMsg::Heartbeat { .. } => "Heartbeat",
        PeerMsg::View { .. } => "View",
        PeerMsg::Hello { .. } => "Hello",
        PeerMsg::Task { .. } => "Task",
        PeerMsg::Done { .. } => "Done",
        PeerMsg::Cancel { .. } => "Cancel",
        PeerMsg::Refused { .. } => "Refused",
        PeerMsg::Release { .. } => "Release",
        PeerMsg::Object { .. } => "Object",
        PeerMsg::ActorState { .. } => "ActorState",
        PeerMsg::Kill { .. } => "Kill",
        PeerMsg::Reserve { .. } => "Reserve",
        PeerMsg::Reserved { .. } => "Reserved",
        PeerMsg::PgRelease { .. } => "PgRelease",
        PeerMsg::Steal { .. } => "Steal",
        PeerMsg::Returned { .. } => "Returned",
        PeerMsg::Started { .. } => "Started",
        PeerMsg::SubscribeLogs => "SubscribeLogs",
        PeerMsg::Log { .. } => "Log",
        PeerMsg::Fetch { .. } => "Fetch",
        PeerMsg::Chunk { .. } => "Chunk",
        PeerMsg::NoObject { .. } => "NoObject",
    }
}

/// Asks the head at `addr` for the cluster's view (`volley status`).
pub fn cluster_view(
    addr: &str,
    token: &[u8],
    tls: Option<&TlsConfig>,
) -> Result<Vec<NodeInfo>, RuntimeError> {
    cluster_status(addr, token, tls).map(|(nodes, _)| nodes)
}

/// Asks the head at `addr` for the cluster's view and the handshakes it refused lately (`volley
/// status`).
pub fn cluster_status(
    addr: &str,
    token: &[u8],
    tls: Option<&TlsConfig>,
) -> Result<(Vec<NodeInfo>, Vec<Refusal>), RuntimeError> {
    let mut s = connect(addr, token, tls)?;
    let dummy = NodeInfo {
        id: NodeId(0),
        addr: String::new(),
        cpu_total_milli: 0,
        cpu_free_milli: 0,
        resources: Vec::new(),
        workers: 0,
        store_used: 0,
        store_capacity: 0,
        tasks_waiting: 0,
        waiting: Vec::new(),
        named: Vec::new(),
        bytes_received: 0,
        bytes_served: 0,
        driver: true,
        pid: std::process::id(),
    };
    send(&mut s, &PeerMsg::Heartbeat { info: dummy })?;
    let mut r = FrameReader::new(&s);
    match recv(&mut r).map_err(proto)? {
        PeerMsg::View { nodes, refused } => Ok((nodes, refused)),
        other => Err(RuntimeError::Refused(format!("unexpected answer {}", msg_name(&other)))),
    }
}

/// At most [`MAX_PENDING`] connections in their handshake, and at most a quarter of the
/// descriptors this process may open: a flood of them leaves room for the node's own work.
fn pending_cap() -> usize {
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

/// A random epoch for a head (see `PeerMsg::Welcome`), never 0.
fn new_epoch() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        return t.map(|d| d.as_nanos() as u64).unwrap_or(1) | 1;
    }
    u64::from_le_bytes(b).max(1)
}

impl Links for Cluster {
    fn dispatch_all(self: Arc<Self>, actions: Vec<Action>) {
        for a in actions {
            self.dispatch(a);
        }
    }

    fn local_info(&self) -> NodeInfo {
        self.info(self.node_id())
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
