//! Membership over the network. A member joins the head, sends one heartbeat (load out, view
//! back) every `heartbeat`, rejoins a head that restarted, and takes each new view in (peers that
//! left are cut off). The head serves each member's connection and ticks on its own, keeping
//! the membership itself in its `Head` (see the `head` module, which holds no sockets).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use volley_proto::{FrameReader, NodeId, NodeSnapshot, PeerMsg, ProtoError};
use volley_sched::PeerView;

use super::{handshake::connect, proto, recv, send, wire::msg_name, Cluster};
use crate::head::{Head, HEAD_ID};
use crate::tls::Conn;
use crate::RuntimeError;

/// A heartbeat (or its thread's wake-up) this late is reported on stderr.
const SLOW_BEAT: Duration = Duration::from_millis(500);

impl Cluster {
    pub(super) fn join(self: &Arc<Self>) -> Result<(Conn, NodeId), RuntimeError> {
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
        self.shared.prims.set_node(id);
        // From now on this node's task and actor rows go to the head with its heartbeats.
        self.shared.head.tables.set_member(true);
        self.beat(&mut s, &mut r)?;
        drop(r);
        Ok((s, id))
    }

    /// The head restarted and node ids start over: every peer this node knew is gone (its
    /// tasks are retried, its connections closed) before the new view comes in.
    pub(super) fn forget_peers(&self) {
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
        for peer in known {
            crate::prims::peer_gone(&self.shared, peer, "the cluster's head restarted");
        }
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
        let rows = self.shared.head.tables.take_batch();
        let built = start.elapsed();
        if !rows.is_empty() {
            send(s, &PeerMsg::StateRows(rows))?;
        }
        let sent = Instant::now();
        send(s, &PeerMsg::Heartbeat { info })?;
        // Questions the head relays to this node (a driver's, which takes no connections) come
        // before the view, and are answered on this link (see `node_ask::OverBeat`).
        let mut answering = Duration::ZERO;
        let answer = loop {
            match recv(r).map_err(proto)? {
                PeerMsg::Node(req) => {
                    let t = Instant::now();
                    let reply = super::node_ask::answer_here(&self.shared, req);
                    send(s, &PeerMsg::NodeReply(reply))?;
                    answering += t.elapsed();
                }
                other => break other,
            }
        };
        let answered = start.elapsed();
        let rtt = sent.elapsed().saturating_sub(answering).as_micros().max(1);
        self.beat_rtt_us.store(u64::try_from(rtt).unwrap_or(u64::MAX), Ordering::Relaxed);
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

    pub(super) fn heartbeat_loop(self: Arc<Self>, mut s: Conn) {
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
            self.head_lost.lock().get_or_insert_with(Instant::now);
            let mut refused: Option<String> = None;
            loop {
                std::thread::sleep(Duration::from_millis(500));
                if self.closed.load(Ordering::Acquire) {
                    return;
                }
                match self.join() {
                    Ok((s2, _)) => {
                        *self.head_lost.lock() = None;
                        if refused.is_some() {
                            crate::diag::event!(Info, "volley: rejoined the cluster's head");
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
        crate::diag::event!(
            Error,
            "volley: the cluster's head at {head} refused to take back {what} ({why}). Was the \
             head restarted with another token? Restart it with the cluster's token (the \
             session directory's token file, --token or VOLLEY_TOKEN); this keeps trying."
        );
    }

    /// The head's periodic work: refresh its own entry, drop members not heard from, and tell
    /// its scheduler.
    pub(super) fn head_tick(self: &Arc<Self>) {
        let Some(head) = &self.head else { return };
        head.update_self(self.info(HEAD_ID));
        let dead_after = self.cfg.dead_after;
        for info in head.expire(dead_after) {
            crate::diag::event!(
                Warn,
                "volley: node {} ({}) missed its heartbeats for {:?}: declared dead",
                info.id.0,
                info.addr,
                dead_after
            );
        }
        self.set_view(head.view());
    }

    fn set_view(self: &Arc<Self>, nodes: Vec<NodeSnapshot>) {
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

    /// (The head) serves a member's connection: it joined with `info`; it beats until the
    /// connection closes, and then it has left.
    pub(super) fn serve_member(
        self: &Arc<Self>,
        head: &Head,
        info: NodeSnapshot,
        mut s: Conn,
        mut r: FrameReader<&Conn>,
    ) {
        // Shut down with the rest when this node closes: a member whose head stopped must see
        // its connection end, not a head that answers on.
        let key = self.next_socket.fetch_add(1, Ordering::Relaxed);
        if let Ok(k) = s.try_clone() {
            self.sockets.lock().insert(key, k);
        }
        if self.closed.load(Ordering::Acquire) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        let id = head.join(info.clone());
        crate::diag::event!(
            Info,
            "volley: node {} joined from {}{}",
            id.0,
            info.addr,
            if info.driver { " (driver)" } else { "" }
        );
        if send(&mut s, &PeerMsg::Welcome { id, epoch: head.epoch() }).is_err() {
            self.sockets.lock().remove(&key);
            return self.member_left(head, id);
        }
        self.over_beat.open(id);
        // The head's own view (where its links look peers up) knows the new node at once, not
        // a heartbeat later, as a node's leaving is applied at once (`member_left`).
        self.head_tick();
        'serve: loop {
            match recv(&mut r) {
                Ok(PeerMsg::Heartbeat { info }) => {
                    let addr = info.addr.clone();
                    let (gap, nodes) = head.beat(id, info);
                    if let Some(gap) = gap.filter(|g| *g >= self.cfg.dead_after / 2) {
                        crate::diag::warn!(
                            "node {} ({addr}) was silent for {gap:?} (declared dead after {:?})",
                            id.0,
                            self.cfg.dead_after
                        );
                    }
                    for req in self.over_beat.due(id) {
                        if send(&mut s, &PeerMsg::Node(req)).is_err() {
                            break 'serve;
                        }
                    }
                    let view = PeerMsg::View { nodes, refused: Vec::new() };
                    if send(&mut s, &view).is_err() {
                        break;
                    }
                }
                Ok(PeerMsg::StateRows(rows)) => head.tables.merge(rows, id),
                Ok(PeerMsg::NodeReply(answer)) => {
                    if !self.over_beat.answered(id, answer) {
                        crate::diag::event!(
                            Warn,
                            "volley: node {} answered a question it was not asked; dropped",
                            id.0
                        );
                        break;
                    }
                }
                Ok(other) => {
                    crate::diag::event!(
                        Warn,
                        "volley: node {} sent {} on its head connection; dropped",
                        id.0,
                        msg_name(&other)
                    );
                    break;
                }
                Err(ProtoError::Closed) => break,
                Err(e) => {
                    crate::diag::event!(
                        Warn,
                        "volley: dropping node {}'s head connection: {e}",
                        id.0
                    );
                    break;
                }
            }
        }
        self.sockets.lock().remove(&key);
        self.member_left(head, id);
    }

    fn member_left(self: &Arc<Self>, head: &Head, id: NodeId) {
        self.over_beat.close(id);
        if let Some(info) = head.leave(id) {
            crate::diag::event!(Info, "volley: node {} ({}) disconnected", id.0, info.addr);
        }
        self.head_tick();
    }
}
