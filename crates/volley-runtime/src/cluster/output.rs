//! Worker output across the cluster: a driver's node subscribes to every other node's worker
//! output (`SubscribeLogs` on its link), which comes back as `Log` lines on the same link.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use volley_proto::{NodeId, PeerMsg};

use super::{wire::Outgoing, Cluster};

impl Cluster {
    /// Sends worker output lines to the drivers' nodes that asked for them.
    pub(super) fn forward_log(&self, fd: std::os::fd::RawFd, lines: &[u8]) {
        let subscribers: Vec<NodeId> = self.log_subscribers.lock().iter().copied().collect();
        if subscribers.is_empty() || !(fd == 1 || fd == 2) {
            return;
        }
        let incoming = self.incoming.lock();
        for peer in subscribers {
            if let Some((_, tx)) = incoming.get(&peer) {
                let lines = serde_bytes::ByteBuf::from(lines.to_vec());
                let _ = tx.send(Outgoing::Msg(Box::new(PeerMsg::Log { fd: fd as u8, lines })));
            }
        }
    }

    /// (A driver's node) asks every other node for its workers' output, once per connection;
    /// `on_the_side`: from a thread of its own (the heartbeat thread must not wait on links).
    pub(super) fn subscribe_logs(self: &Arc<Self>, on_the_side: bool) {
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
                c.send_to(peer, true, Outgoing::Msg(Box::new(PeerMsg::SubscribeLogs)));
            }
        };
        if !on_the_side {
            return subscribe(); // When joining: `init` returns with every node's output on.
        }
        // Opening the links can wait for a slow peer's handshake: not on the heartbeat thread.
        let spawned = std::thread::Builder::new().name("volley-logsub".into()).spawn(subscribe);
        if let Err(e) = spawned {
            crate::diag::event!(Warn, "volley: could not subscribe to the new nodes' logs: {e}");
        }
    }
}
