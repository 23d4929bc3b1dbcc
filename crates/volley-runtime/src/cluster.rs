//! A node's part in a cluster: TCP to the head and to the other nodes.
//!
//! - Every TCP connection authenticates first ([`volley_proto::authenticate_server`]); a peer that
//!   fails is logged and dropped, and nothing it sent is decoded beyond the handshake.
//! - The head keeps the membership (in its [`Head`]): nodes `Join`, then send a `Heartbeat` with
//!   their snapshot every `heartbeat` and get the cluster `View` back. A node not heard from for
//!   `dead_after` (or whose connection to the head breaks) leaves the view; the others then retry
//!   or fail the tasks it ran for them. The head is a node like the others and takes work too.
//! - The scheduler decides what to send where (`Action::Spill`); a link per peer carries those
//!   tasks, with their values, on a connection this node opens, and the results come back on it.
//!   Values are copied out of the store by the link's writer thread, so a large argument never
//!   holds up the caller or the scheduler.
//! - A malformed or oversized frame ends that connection only.
//! - A connection that has not authenticated is bounded in time and number: its whole handshake
//!   (TLS, token, first message) must end within [`handshake::HANDSHAKE_DEADLINE`], at most
//!   [`handshake::MAX_PENDING`] are in their handshake at once (a new one drops the oldest), and
//!   out of descriptors the accept loop backs off instead of spinning. Slow or idle peers that
//!   never authenticate thus cost a bounded number of threads and descriptors, and nodes and
//!   `volley status` still get in.
//!
//! This file holds the [`Cluster`] (its state, start and close); its work is in the modules
//! below, one concern each: `handshake` (opening and accepting connections, the first message),
//! `membership` (joining, heartbeats, the view; the head's side of it), `links` (a connection
//! per peer and direction, their writer and reader threads), `wire` (scheduler actions to peer
//! messages and back, values' bytes into the store), `pull` (large values pulled in chunks),
//! `output` (worker output to the drivers) and `status` (`volley status` asking the head).

use std::collections::{HashMap, VecDeque};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use volley_proto::{
    decode, encode, write_frame, FrameReader, NodeId, NodeSnapshot, ObjectId, PeerMsg, ProtoError,
    Refusal,
};
use volley_sched::Action;
use volley_store::sync::Mutex;

mod handshake;
mod links;
mod membership;
mod node_ask;
mod output;
mod pull;
mod status;
mod wire;

use handshake::{pending_cap, Pending};
pub(crate) use node_ask::ask_head_here;
pub use status::{ask_head_at, cluster_status, cluster_view};
use wire::Outgoing;

use crate::head::{Head, HEAD_ID};
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

pub(crate) struct Cluster {
    shared: Arc<Shared>,
    cfg: ClusterConfig,
    /// Where this node accepts peers, as bound.
    addr: String,
    me: Mutex<NodeId>,
    view: Mutex<Vec<NodeSnapshot>>,
    /// Connections this node opened to send tasks, by peer.
    links: Mutex<HashMap<NodeId, (u64, Sender<Outgoing>)>>,
    /// One lock per peer while a link to it is being opened (so two threads never open two).
    opening: Mutex<HashMap<NodeId, Arc<Mutex<()>>>>,
    /// Connections peers opened to send tasks here: results go back on them.
    /// (Both maps: the connection's number, to tell a connection from the one replacing it.)
    incoming: Mutex<HashMap<NodeId, (u64, Sender<Outgoing>)>>,
    next_conn: std::sync::atomic::AtomicU64,
    /// The cluster's membership and directory (on the head only).
    head: Option<Arc<Head>>,
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
    /// The round trip of this member's last heartbeat, in microseconds (see
    /// `NodeSnapshot::heartbeat_rtt_us`).
    pub(crate) beat_rtt_us: std::sync::atomic::AtomicU64,
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
    /// (On the head) questions for drivers' nodes, sent with their heartbeats' answers.
    over_beat: Arc<node_ask::OverBeat>,
    /// (A member) since when its heartbeats have not reached the head (it keeps trying to join
    /// again); `None` while they do.
    head_lost: Mutex<Option<Instant>>,
    /// Where peers connect (the accept thread holds it too; see `node::stop_accepting`).
    listener: Mutex<Option<Arc<TcpListener>>>,
}

fn proto(e: ProtoError) -> RuntimeError {
    RuntimeError::Proto(e)
}

fn send(s: &mut Conn, msg: &PeerMsg) -> Result<(), RuntimeError> {
    write_frame(s, &encode(msg).map_err(proto)?).map_err(proto)
}

fn recv(r: &mut FrameReader<&Conn>) -> Result<PeerMsg, ProtoError> {
    decode(r.next_frame()?)
}

impl Cluster {
    /// Joins (or, without a head address, starts) the cluster; as its head, this node's `head`
    /// keeps the membership and directory. Returns once this node knows the cluster's view.
    pub(crate) fn start(
        shared: Arc<Shared>,
        cfg: ClusterConfig,
        head: Arc<Head>,
    ) -> Result<Arc<Cluster>, RuntimeError> {
        let listener = match &cfg.listen {
            Some(a) => Some(Arc::new(TcpListener::bind(a)?)),
            None => None,
        };
        let addr = match &listener {
            Some(l) => l.local_addr()?.to_string(),
            None => String::new(),
        };
        let head = cfg.head.is_none().then_some(head);
        let epoch = head.as_ref().map_or(0, |h| h.epoch());
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
            head,
            closed: AtomicBool::new(false),
            log_subscribers: Mutex::new(Default::default()),
            log_sources: Mutex::new(Default::default()),
            sockets: Mutex::new(HashMap::new()),
            next_socket: std::sync::atomic::AtomicU64::new(0),
            bytes_received: std::sync::atomic::AtomicU64::new(0),
            beat_rtt_us: std::sync::atomic::AtomicU64::new(0),
            bytes_served: std::sync::atomic::AtomicU64::new(0),
            epoch: std::sync::atomic::AtomicU64::new(epoch),
            pulls: Mutex::new(HashMap::new()),
            pending: Mutex::new(Pending::default()),
            pending_cap: pending_cap(),
            refused: Mutex::new(VecDeque::new()),
            dropped: Mutex::new((0, None)),
            over_beat: Arc::default(),
            head_lost: Mutex::new(None),
            listener: Mutex::new(listener.clone()),
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
        if c.head.is_some() {
            c.shared.state.lock().sched.set_node_id(HEAD_ID);
            c.shared.prims.set_node(HEAD_ID);
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

    /// Whether this node is the cluster's head.
    /// (A member) the head's address and how long this node has not reached it, while its
    /// heartbeats fail: a wait explains itself with it (what this node knows of the cluster
    /// is what it had heard before).
    pub(crate) fn head_unreached(&self) -> Option<(&str, Duration)> {
        let since = (*self.head_lost.lock())?;
        Some((self.cfg.head.as_deref().unwrap_or("?"), since.elapsed()))
    }

    pub(crate) fn is_head(&self) -> bool {
        self.head.is_some()
    }

    pub(crate) fn view(&self) -> Vec<NodeSnapshot> {
        self.view.lock().clone()
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
        crate::node::stop_accepting(&self.listener);
    }

    /// This node's description, for the head.
    pub(crate) fn info(&self, id: NodeId) -> NodeSnapshot {
        NodeSnapshot {
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
            bytes_served: self.bytes_served.load(Ordering::Relaxed),
            heartbeat_rtt_us: self.beat_rtt_us.load(Ordering::Relaxed),
            ..self.shared.snapshot(id, self.addr.clone(), self.cfg.driver)
        }
    }
}

impl Links for Cluster {
    fn dispatch_all(self: Arc<Self>, actions: Vec<Action>) {
        for a in actions {
            self.dispatch(a);
        }
    }

    fn local_snapshot(&self) -> NodeSnapshot {
        self.info(self.node_id())
    }

    fn node_id(&self) -> NodeId {
        Cluster::node_id(self)
    }

    fn send_prim(self: Arc<Self>, peer: NodeId, msg: PeerMsg) -> Result<(), String> {
        self.send_prim_msg(peer, msg)
    }

    fn view(&self) -> Vec<NodeSnapshot> {
        // The head keeps the view it hands out; its own copy is for members.
        match &self.head {
            Some(head) => head.view(),
            None => Cluster::view(self),
        }
    }

    fn ask_head(&self, req: volley_proto::HeadRequest) -> volley_proto::HeadAnswer {
        if self.head.is_some() {
            return self.answer_head(req);
        }
        let addr = self.cfg.head.as_deref().unwrap_or_default();
        status::ask_head(addr, &self.cfg.token, self.cfg.tls.as_deref(), req)
            .unwrap_or_else(|e| volley_proto::HeadAnswer::Error(format!("the head at {addr}: {e}")))
    }
}
