//! Links between nodes: a connection per peer and direction (the one this node opened carries
//! its tasks out and their results back; the one the peer opened carries the peer's), each
//! with a writer thread that copies values out of the store, so a large argument never holds up
//! the caller or the scheduler, and a reader that hands what comes in to the scheduler, a batch
//! per read under one lock of the state.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;

use volley_proto::{encode, write_frame, FrameReader, NodeId, ObjectId, PeerMsg, ProtoError};
use volley_sched::{Action, ActorReport};
use volley_store::Lease;

use super::{
    handshake::connect, pull, recv, send, wire::lease_bytes, wire::msg_name, wire::Outgoing,
    Cluster,
};
use crate::tls::Conn;

/// The scheduler's part of a message from a peer: on a connection the peer opened (`mine`
/// false) it sends tasks and requests; on one this node opened (`mine` true) it sends back the
/// outcome of the tasks and pulls this node sent it. Each reader lets through only its side's
/// kinds; `Object` and `Fetch` come on both.
fn apply_peer_msg(
    s: &mut volley_sched::Scheduler,
    (peer, mine): (NodeId, bool),
    m: PeerMsg,
    out: &mut Vec<Action>,
) {
    match m {
        PeerMsg::Task { spec, function, objects, routes, errors, cached, fetch, .. } => {
            let function = function.map(|f| Arc::from(f.into_vec()));
            s.accept_peer_task(peer, spec, function, objects, routes, errors, cached, fetch, out);
        }
        PeerMsg::Fetch { id } => s.peer_fetch(peer, id, mine, out),
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
        PeerMsg::Done { task, result, objects, kept, routes } => {
            for (actor, node, class) in routes {
                s.route_to_actor(actor, node, &class);
            }
            s.peer_done(peer, task, result, objects, out);
            s.peer_kept(peer, kept, out);
        }
        PeerMsg::Returned { tasks } => s.peer_returned(peer, &tasks, out),
        PeerMsg::Started { task } => s.peer_started(peer, task),
        PeerMsg::Reserved { pg, bundles, ok } => s.pg_reserved(peer, &pg, &bundles, ok, out),
        PeerMsg::ActorState { actor, pid, restarts, death, log } => {
            let report = ActorReport { pid, restarts, death, log };
            s.peer_actor_state(peer, actor, report, out)
        }
        _ => {}
    }
}

impl Cluster {
    /// Hands the messages one read brought in to the scheduler under one lock of the state: when
    /// the connection ends (`last`), 256 are waiting, or no whole frame is left in the reader.
    /// One policy for both directions of a link (`side`: the peer, and whether this node opened
    /// the connection).
    fn apply_batch(
        &self,
        side: (NodeId, bool),
        batch: &mut Vec<PeerMsg>,
        last: bool,
        r: &FrameReader<&Conn>,
    ) {
        if last || batch.len() >= 256 || !r.has_buffered_frame() {
            self.shared.with(|st, out| {
                for m in batch.drain(..) {
                    apply_peer_msg(&mut st.sched, side, m, out);
                }
            });
        }
    }

    /// A peer sends tasks on this connection; their results go back on it.
    pub(super) fn serve_tasks(
        self: &Arc<Self>,
        peer: NodeId,
        s: Conn,
        mut r: FrameReader<&Conn>,
        who: &str,
    ) {
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
                                crate::diag::event!(Warn, "volley: node {}: {e}", peer.0);
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
                Ok(Some(m @ (PeerMsg::Prim { .. } | PeerMsg::PrimReply { .. }))) => {
                    self.prim_msg(peer, m);
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
                    crate::diag::event!(
                        Warn,
                        "volley: node {} ({who}) sent {}; connection dropped",
                        peer.0,
                        msg_name(&other)
                    );
                    true
                }
                Err(ProtoError::Closed) => true,
                Err(ProtoError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => true,
                Err(e) => {
                    crate::diag::event!(
                        Warn,
                        "volley: dropping node {}'s connection ({who}): {e}",
                        peer.0
                    );
                    true
                }
            };
            self.apply_batch((peer, false), &mut batch, stop, &r);
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
            crate::prims::peer_gone(&self.shared, peer, "its connection closed");
        }
    }

    /// A primitive service message from `peer`: served (or handed to its asker) on the
    /// reader's thread, under the service's own lock, never the state's.
    fn prim_msg(&self, peer: NodeId, m: PeerMsg) {
        match m {
            PeerMsg::Prim { fwd, op } => crate::prims::serve_peer(&self.shared, peer, fwd, op),
            PeerMsg::PrimReply { fwd, result } => {
                crate::prims::peer_reply(&self.shared, peer, fwd, result)
            }
            _ => {}
        }
    }

    /// Sends a primitive service message to `peer`, always on the same connection, so that
    /// one asker's ops arrive in the order it made them: the one this node opened to it
    /// (opened now if need be), or, for a driver's node (which takes no connections), the one
    /// it opened here.
    pub(super) fn send_prim_msg(
        self: &Arc<Self>,
        peer: NodeId,
        msg: PeerMsg,
    ) -> Result<(), String> {
        let what = Outgoing::Msg(Box::new(msg));
        // Members see drivers' nodes in their view only as far as the head shows them.
        let listens = self.view.lock().iter().any(|n| n.id == peer && !n.driver);
        let tx = if listens {
            self.link_to(peer).ok_or_else(|| "could not be reached".to_string())?
        } else {
            self.incoming_from(peer).ok_or_else(|| {
                "is not a node this one can reach (a driver's node takes no connections: it \
                 is reached only once it has sent this node work)"
                    .to_string()
            })?
        };
        tx.1.send(what).map_err(|_| "closed its connection".to_string())
    }

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
            Action::PeerServe { peer, link, .. } => (*peer, *link),
            Action::PeerNotice { peer, .. }
            | Action::PeerDone { peer, .. }
            | Action::PeerStarted { peer, .. }
            | Action::PeerReserved { peer, .. }
            | Action::PeerReturned { peer, .. }
            | Action::PeerObject { peer, .. }
            | Action::PeerActorState { peer, .. } => (*peer, false),
            _ => return,
        };
        self.send_to(peer, outgoing, Outgoing::Action(a));
    }

    /// Sends on the link this node opened to `peer` (`outgoing`, opened now if need be; if that
    /// fails the peer is gone) or on the one `peer` opened here.
    pub(super) fn send_to(self: &Arc<Self>, peer: NodeId, outgoing: bool, what: Outgoing) {
        let tx = if outgoing { self.link_to(peer) } else { self.incoming_from(peer) };
        // Without a connection to the peer that sent a task, nobody wants its result.
        let sent = tx.map(|(conn, tx)| (conn, tx.send(what).is_ok()));
        if outgoing {
            match sent {
                None => self.link_broke(peer, "it could not be reached", None),
                Some((conn, false)) => self.link_broke(peer, "its connection closed", Some(conn)),
                Some((_, true)) => {}
            }
        }
    }

    /// The connection this node opened to `peer`, opened now if there is none.
    pub(super) fn link_to(self: &Arc<Self>, peer: NodeId) -> Option<(u64, Sender<Outgoing>)> {
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
    pub(super) fn incoming_from(&self, peer: NodeId) -> Option<(u64, Sender<Outgoing>)> {
        self.incoming.lock().get(&peer).cloned()
    }

    fn open_link(self: &Arc<Self>, peer: NodeId) -> Option<(u64, Sender<Outgoing>)> {
        if self.closed.load(Ordering::Acquire) {
            return None;
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let addr = self.view.lock().iter().find(|n| n.id == peer).map(|n| n.addr.clone())?;
        let mut s = match connect(&addr, &self.cfg.token, self.cfg.tls.as_deref()) {
            Ok(s) => s,
            Err(e) => {
                crate::diag::event!(Warn, "volley: cannot reach node {} at {addr}: {e}", peer.0);
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
                    Ok(Some(m @ (PeerMsg::Prim { .. } | PeerMsg::PrimReply { .. }))) => {
                        c.prim_msg(peer, m);
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
                c.apply_batch((peer, true), &mut batch, why.is_some(), &r);
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
            crate::prims::peer_gone(&self.shared, peer, why);
        }
    }

    /// A writer thread for one connection: values are copied out of the store there.
    pub(super) fn writer(
        self: &Arc<Self>,
        peer: NodeId,
        mut s: Conn,
        outgoing: bool,
        conn: u64,
    ) -> Sender<Outgoing> {
        let (tx, rx): (Sender<Outgoing>, Receiver<Outgoing>) = mpsc::channel();
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
                    Some(Outgoing::Msg(msg)) => c.write_msg(&mut w, peer, *msg, &[]),
                    Some(Outgoing::Action(Action::PeerServe { id, value, .. })) => {
                        match c.serve_start(id, value) {
                            Ok(v) => {
                                serving.push_back(v);
                                true
                            }
                            Err(reason) => {
                                c.write_msg(&mut w, peer, PeerMsg::NoObject { id, reason }, &[])
                            }
                        }
                    }
                    Some(Outgoing::Action(a)) => match c.to_msg(a) {
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
                crate::diag::event!(
                    Error,
                    "volley: could not encode a message for node {}: {e}",
                    peer.0
                );
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
}
