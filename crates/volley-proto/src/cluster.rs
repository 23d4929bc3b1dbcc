//! Messages between nodes of a cluster, and the authentication every TCP connection starts with.
//!
//! A connection opens with a challenge-response over the cluster token, both ways, before any
//! other frame is read (see [`authenticate_client`] and [`authenticate_server`]): each side sends a
//! fresh random nonce and proves it holds the token with an HMAC-SHA256 over both nonces and its
//! role. The token itself never crosses the wire, a recorded exchange cannot be replayed (the
//! other side's nonce is new each time), and nothing from an unauthenticated peer is decoded
//! beyond these small fixed-size frames.

use std::io::{Read, Write};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::{
    decode, encode, read_frame, write_frame, NodeSnapshot, ObjectData, ProtoError, TaskId,
    TaskResult, TaskSpec, MAX_HANDSHAKE_FRAME, PROTOCOL_VERSION,
};

/// The most bytes one `PeerMsg::Chunk` carries: a large value goes out in pieces, so other
/// messages on the same connection (tasks, results, other values) pass between them.
pub const MAX_CHUNK: u64 = 8 << 20;

/// A node of the cluster, numbered by the head in joining order (a node that comes back gets a
/// new number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(pub u32);

/// Connections the head refused at the handshake (a wrong token, another protocol version),
/// grouped by peer address and reason, so `volley status` can show a node or driver locked out
/// of the cluster (e.g. after the head was restarted with another token). The head cannot tell
/// which node it was: nothing an unauthenticated peer says is read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refusal {
    /// The peer's IP address.
    pub peer: String,
    pub reason: String,
    /// Connections refused so far.
    pub count: u32,
    /// How long ago the last one was, in milliseconds.
    pub last_ms_ago: u64,
}

/// A named actor as the cluster's directory lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedActor {
    pub namespace: String,
    pub name: String,
    pub actor: crate::ActorId,
    /// The node it runs on.
    pub node: NodeId,
    pub class: String,
    /// Its handles' metadata (methods, how many values each returns).
    #[serde(with = "serde_bytes")]
    pub meta: Vec<u8>,
}

/// Frames between nodes (after authentication). `Task` is the common one; boxing it would cost
/// an allocation per task for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PeerMsg {
    /// To the head: a node joins (or a driver's node, which takes no work) and says where others
    /// reach it. Answered with `Welcome`.
    Join {
        info: NodeSnapshot,
    },
    Welcome {
        id: NodeId,
        /// Chosen at random when the head starts: a node that joins a head with another epoch
        /// (it restarted) forgets every peer, since node ids start over.
        epoch: u64,
    },
    /// To the head, periodically: this node's load. Answered with `View`.
    Heartbeat {
        info: NodeSnapshot,
    },
    /// The cluster as the head sees it: every live node, and (for `Status`; empty in the
    /// answers to members' heartbeats) the connections it recently refused.
    View {
        nodes: Vec<NodeSnapshot>,
        refused: Vec<Refusal>,
    },
    /// Run this task for the sender. `objects` are the values of its arguments (and of the refs
    /// pickled inside them), so the receiver needs nothing else; `function` is the function's
    /// bytes, the first time the receiver needs it.
    Task {
        spec: TaskSpec,
        function: Option<serde_bytes::ByteBuf>,
        objects: Vec<(crate::ObjectId, ObjectData)>,
        /// Runtime-environment packages (hash, zip) the receiver has not had yet.
        packages: Vec<(String, serde_bytes::ByteBuf)>,
        /// Where the actors whose handles it carries live: (actor, node, class name).
        routes: Vec<(crate::ActorId, NodeId, String)>,
        /// Refs inside its arguments whose tasks failed: the errors they hold.
        errors: Vec<(crate::ObjectId, crate::ErrorPayload)>,
        /// Values it needs that the receiver keeps a copy of from an earlier `Task` (kept until
        /// the sender's `Release` names them).
        cached: Vec<crate::ObjectId>,
        /// Large values it needs that the receiver pulls (`Fetch`): their layout (`shm`, with no
        /// bytes) and a node that may serve them besides the sender (a relay holding a copy, so
        /// a value sent to many nodes does not leave the sender once per node). The receiver
        /// keeps what it pulls as a copy, like the values in `objects`.
        fetch: Vec<(crate::ObjectId, ObjectData, Option<NodeId>)>,
    },
    /// A task sent with `Task` ended; `objects` are values the results refer to.
    Done {
        task: TaskId,
        result: TaskResult,
        objects: Vec<(crate::ObjectId, ObjectData)>,
        /// Large results the sender keeps a copy of for the receiver, as it keeps the values a
        /// `Task` brings (until the receiver's `Release`): later tasks that need them can run
        /// there without a transfer, or pull them from there.
        kept: Vec<crate::ObjectId>,
        /// Where the actors live whose handles the results carry (as `Task::routes`): calls
        /// the receiver makes through them go there.
        routes: Vec<(crate::ActorId, NodeId, String)>,
    },
    /// An object a `Done` (or an earlier `Object`) named that was still being made then.
    Object {
        id: crate::ObjectId,
        result: Result<ObjectData, crate::ErrorPayload>,
        objects: Vec<(crate::ObjectId, ObjectData)>,
    },
    /// How an actor the receiver had created here is now: its pid, restarts here, its death.
    ActorState {
        actor: crate::ActorId,
        pid: u32,
        restarts: u32,
        death: Option<crate::ErrorPayload>,
        log: Option<String>,
    },
    /// Cancel a task sent with `Task`.
    Cancel {
        task: TaskId,
        force: bool,
    },
    /// First frame on a connection a node opens to send tasks: who it is.
    Hello {
        id: NodeId,
    },
    /// The sender dropped its references to these (actors the receiver hosts for it).
    Release {
        ids: Vec<crate::ObjectId>,
    },
    /// `volley.kill` of an actor the receiver hosts for the sender.
    Kill {
        actor: crate::ActorId,
        no_restart: bool,
    },
    /// Reserve bundles (index, resources in thousandths) of the sender's placement group `pg`.
    /// Answered `Reserved` on the same connection.
    Reserve {
        pg: String,
        bundles: Vec<(u32, Vec<(String, u64)>)>,
    },
    /// Whether every bundle of a `Reserve` is now held (all or none).
    Reserved {
        pg: String,
        bundles: Vec<u32>,
        ok: bool,
    },
    /// Release the bundles of `pg` reserved for the sender; with `remove`, the group is gone:
    /// what runs in it is stopped and what waits for it fails.
    PgRelease {
        pg: String,
        remove: bool,
    },
    /// Give back up to `max` of the sender's tasks that have not started here (other nodes have
    /// room for them). Answered `Returned` on the same connection.
    Steal {
        max: u32,
    },
    /// Tasks given back (they will not run here), possibly none.
    Returned {
        tasks: Vec<TaskId>,
    },
    /// From a driver's node: send this node's worker output here (as `Log`).
    SubscribeLogs,
    /// Worker output: whole lines, for file descriptor `fd` (1 or 2) of the driver.
    Log {
        fd: u8,
        lines: serde_bytes::ByteBuf,
    },
    /// Send the stored value `id` on this connection, in `Chunk`s (the sender pulls it for a
    /// task; see `Task::fetch`). Answered by `Chunk`s, or `NoObject`.
    Fetch {
        id: crate::ObjectId,
    },
    /// `len` bytes (at most [`MAX_CHUNK`]) of the value `id`, from `offset`, follow this frame.
    Chunk {
        id: crate::ObjectId,
        offset: u64,
        len: u64,
    },
    /// A `Fetch` this node cannot serve (it does not hold the value): try another node.
    NoObject {
        id: crate::ObjectId,
        reason: String,
    },
    /// Sent instead of an answer when a request cannot be served.
    Refused {
        reason: String,
    },
    // New variants go last: postcard names a variant by its index.
    /// A task sent with `Task` started running here (it was queued until now). If this node
    /// dies, only the tasks it started use a retry; the others go elsewhere as they are.
    Started {
        task: TaskId,
    },
    /// `volley status` (first message on a connection to the head): answered with `View`, with
    /// the connections the head refused lately.
    Status,
    /// A question for the head (first message on a connection to it): answered `HeadReply`.
    Head(crate::HeadRequest),
    HeadReply(crate::HeadAnswer),
    /// A member's task and actor rows changed since its last batch, sent to the head on the
    /// heartbeat's connection just before a heartbeat (no answer): the head keeps the
    /// cluster's tables for the state API.
    StateRows(crate::StateRows),
    /// A question for the receiving node about what only it has (its workers and objects, its
    /// log files; first message on a connection to it): answered `NodeReply`. A driver's node
    /// takes no connections: the head sends it these on its heartbeat link, before the `View`,
    /// and it answers each there, in order.
    Node(crate::NodeRequest),
    NodeReply(crate::NodeAnswer),
    /// An op on a primitive (queue, channel, lock) whose home is the receiving node, on behalf
    /// of a process of the sender: answered `PrimReply` with the same `fwd` (once, like a
    /// worker's op; see `PrimOp::Cancel`). Sent on whichever connection joins the two nodes (a
    /// driver's node takes none: it is reached on the one it opened).
    Prim {
        fwd: u64,
        op: crate::PrimOp,
    },
    PrimReply {
        fwd: u64,
        result: crate::PrimResult,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Challenge {
    version: u32,
    nonce: [u8; 32],
}

#[derive(Debug, Serialize, Deserialize)]
struct Response {
    version: u32,
    nonce: [u8; 32],
    mac: Vec<u8>,
}

#[derive(Debug, Serialize, Deserialize)]
enum Verdict {
    Accepted { mac: Vec<u8> },
    Rejected { reason: String },
}

fn mac(
    token: &[u8],
    role: &[u8],
    first: &[u8; 32],
    second: &[u8; 32],
) -> Result<Vec<u8>, ProtoError> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(token)
        .map_err(|_| ProtoError::Auth("the cluster token is empty".into()))?;
    m.update(role);
    m.update(first);
    m.update(second);
    Ok(m.finalize().into_bytes().to_vec())
}

fn verify(token: &[u8], role: &[u8], first: &[u8; 32], second: &[u8; 32], tag: &[u8]) -> bool {
    let Ok(mut m) = <Hmac<Sha256> as Mac>::new_from_slice(token) else { return false };
    m.update(role);
    m.update(first);
    m.update(second);
    m.verify_slice(tag).is_ok()
}

fn nonce() -> Result<[u8; 32], ProtoError> {
    let mut n = [0u8; 32];
    getrandom::fill(&mut n).map_err(|e| ProtoError::Auth(format!("no randomness: {e}")))?;
    Ok(n)
}

fn read_small<T: for<'de> Deserialize<'de>>(s: &mut impl Read) -> Result<T, ProtoError> {
    let frame = read_frame(s, MAX_HANDSHAKE_FRAME)?;
    decode(&frame)
}

/// The connecting side: proves it holds `token`, and checks that the server does too.
pub fn authenticate_client<S: Read + Write>(s: &mut S, token: &[u8]) -> Result<(), ProtoError> {
    let ch: Challenge = read_small(s)?;
    if ch.version != PROTOCOL_VERSION {
        return Err(ProtoError::VersionMismatch { ours: PROTOCOL_VERSION, theirs: ch.version });
    }
    let ours = nonce()?;
    let tag = mac(token, b"volley-client", &ch.nonce, &ours)?;
    write_frame(s, &encode(&Response { version: PROTOCOL_VERSION, nonce: ours, mac: tag })?)?;
    match read_small::<Verdict>(s)? {
        Verdict::Accepted { mac } if verify(token, b"volley-server", &ours, &ch.nonce, &mac) => {
            Ok(())
        }
        Verdict::Accepted { .. } => {
            Err(ProtoError::Auth("the server does not hold this cluster's token".into()))
        }
        Verdict::Rejected { reason } => Err(ProtoError::Auth(reason)),
    }
}

/// The accepting side: challenges the peer; `Err` (after telling the peer why) unless it proves
/// it holds `token`.
pub fn authenticate_server<S: Read + Write>(s: &mut S, token: &[u8]) -> Result<(), ProtoError> {
    let ours = nonce()?;
    write_frame(s, &encode(&Challenge { version: PROTOCOL_VERSION, nonce: ours })?)?;
    let resp: Response = read_small(s)?;
    if resp.version != PROTOCOL_VERSION {
        let reason = format!(
            "protocol version {} is not this node's {PROTOCOL_VERSION}; run the same volley \
             version everywhere",
            resp.version
        );
        let _ = write_frame(s, &encode(&Verdict::Rejected { reason })?);
        return Err(ProtoError::VersionMismatch { ours: PROTOCOL_VERSION, theirs: resp.version });
    }
    if !verify(token, b"volley-client", &ours, &resp.nonce, &resp.mac) {
        let reason = "authentication failed: wrong cluster token (see VOLLEY_TOKEN or the \
                      token file `volley start --head` wrote)"
            .to_string();
        let _ = write_frame(s, &encode(&Verdict::Rejected { reason })?);
        return Err(ProtoError::Auth("the peer gave a wrong cluster token".into()));
    }
    let tag = mac(token, b"volley-server", &resp.nonce, &ours)?;
    write_frame(s, &encode(&Verdict::Accepted { mac: tag })?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn run(
        client_token: &'static [u8],
        server_token: &'static [u8],
    ) -> (Result<(), ProtoError>, Result<(), ProtoError>) {
        let (mut a, mut b) = UnixStream::pair().expect("pair");
        let server = std::thread::spawn(move || authenticate_server(&mut b, server_token));
        let c = authenticate_client(&mut a, client_token);
        (c, server.join().expect("server"))
    }

    #[test]
    fn same_token_is_accepted_both_ways() {
        let (c, s) = run(b"secret", b"secret");
        assert!(c.is_ok() && s.is_ok(), "{c:?} {s:?}");
    }

    #[test]
    fn wrong_token_is_refused_with_a_reason() {
        let (c, s) = run(b"guess", b"secret");
        let msg = c.expect_err("client must fail").to_string();
        assert!(msg.contains("wrong cluster token"), "{msg}");
        assert!(matches!(s, Err(ProtoError::Auth(_))));
    }

    #[test]
    fn garbage_instead_of_a_response_is_an_error() {
        let (mut a, mut b) = UnixStream::pair().expect("pair");
        let server = std::thread::spawn(move || authenticate_server(&mut b, b"secret"));
        let _ = read_frame(&mut a, MAX_HANDSHAKE_FRAME).expect("challenge");
        a.write_all(&[0xff; 64]).expect("write");
        drop(a);
        assert!(server.join().expect("server").is_err());
    }
}
