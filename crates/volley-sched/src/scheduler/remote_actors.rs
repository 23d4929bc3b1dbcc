//! Actors on other nodes.
//!
//! A driver's node (one that prefers its peers, see `Scheduler::set_prefer_peers`) places each
//! actor on a peer: the one hosting the fewest of its actors among those that could ever hold
//! it. Any other node (an actor created inside a task or an actor) keeps an actor that fits
//! here now and sends the others to a peer (see `overflow_peer`); SPREAD, node affinity and
//! placement groups are honoured from every node. The creation travels like a task (`Action::Spill`); the peer creates the actor there, held
//! by `Holder::Peer`, and reports once `__init__` ended. Calls then go to the peer in each
//! caller's order, on one connection, so they arrive in that order; the peer queues and runs them
//! like local ones and sends each result back. When the last handle here is gone the peer is told
//! to drop its reference (`PeerRelease`), and `volley.kill` is forwarded (`PeerKill`).
//!
//! If the peer dies, the actor is started again elsewhere while `max_restarts` allows; calls it
//! had been sent are sent again within `max_task_retries`, or fail with `ActorDied`. A peer that
//! loses the node that created an actor drops that node's references (a detached or named actor
//! keeps living).

use super::actors::Life;
use std::collections::HashSet;
use volley_proto::Strategy;

/// How long no node may list an actor a route names before it is dead here (see
/// `reroute_proxies`).
const UNLISTED_MS: u64 = 5_000;

/// How an actor is, as the node hosting it reports it to the node that created it.
#[derive(Debug, Clone)]
pub struct ActorReport {
    pub pid: u32,
    /// Restarts on the hosting node.
    pub restarts: u32,
    pub death: Option<ErrorPayload>,
    /// A line for the creator's log (a restart, a death).
    pub log: Option<String>,
}
use super::*;

/// Where node affinity puts an actor (see `actor_affinity`).
pub(super) enum Affinity {
    /// No affinity (or a soft one that cannot be met): the usual placement.
    Any,
    Here,
    Peer(NodeId),
    Impossible(String),
}

impl Scheduler {
    /// A driver's node places actors (and nothing runs here unless no peer can).
    pub fn set_prefer_peers(&mut self, yes: bool) {
        self.peers.set_prefer_peers(yes);
    }

    /// Where node affinity puts an actor: on the node it names if that node can host it; else
    /// anywhere (soft) or nowhere (hard, a clear error).
    pub(super) fn actor_affinity(&self, spec: &TaskSpec) -> Affinity {
        let Strategy::Node { id, soft } = spec.options.strategy else { return Affinity::Any };
        let target = NodeId(id);
        if target == self.peers.here() {
            return Affinity::Here;
        }
        match self.peers.get(&target) {
            Some(p) if peers::could_host(&p.view, spec) => Affinity::Peer(target),
            _ if soft => Affinity::Any,
            Some(_) => Affinity::Impossible(format!(
                "actor '{}' must run on node {id}, which cannot host it (a driver, or without the \
                 resources it asks for)",
                spec.name
            )),
            None => Affinity::Impossible(format!(
                "actor '{}' must run on node {id}, which is not in the cluster",
                spec.name
            )),
        }
    }

    /// The peer an actor should start on, if it should start on one.
    pub(super) fn actor_peer(&mut self, aid: ActorId) -> Option<NodeId> {
        let spec = &self.actors.get(&aid)?.create;
        // In a placement group's bundle on another node: it goes there.
        let elsewhere = super::placement::pg_of(spec).is_some() && !self.holds_pg_resources(spec);
        if self.peers.is_empty() {
            return None;
        }
        if matches!(spec.options.strategy, Strategy::Spread) && !elsewhere {
            return self.spread_actor(aid);
        }
        if !self.peers.prefer_peers() && !elsewhere {
            return self.overflow_peer(spec);
        }
        self.peers
            .iter()
            .filter(|(_, p)| peers::could_host(&p.view, spec))
            .map(|(id, p)| (self.hosted_by(*id), std::cmp::Reverse(p.view.cpu_free_milli), *id))
            .min()
            .map(|(_, _, id)| id)
    }

    /// Where a `SPREAD` actor goes: the nodes that could ever host it take turns with the
    /// node's `SPREAD` tasks (`take_spread_turn`), as Ray spreads actors; a turn goes to the
    /// first that has room for it now (a peer: as its last heartbeat said). This node is one of
    /// them unless it is a driver's. So replicas created one after the other land on different
    /// nodes whatever else those nodes host. `None`: here (it starts here, or waits here for
    /// room, keeping its turn).
    fn spread_actor(&mut self, aid: ActorId) -> Option<NodeId> {
        let spec = &self.actors.get(&aid)?.create;
        let o = &spec.options;
        let mut nodes: Vec<(NodeId, bool)> = self
            .peers
            .iter()
            .filter(|(_, p)| peers::could_host(&p.view, spec))
            .map(|(id, p)| (*id, peers::fits_free(&p.view, spec)))
            .collect();
        let here = self.peers.here();
        if !self.peers.prefer_peers() && self.res.fits_total(o.cpu_milli, &o.resources) {
            nodes.push((here, self.res.fits(o.cpu_milli, &o.resources)));
        }
        match self.take_spread_turn(aid.0, nodes) {
            Some(node) if node != here => {
                self.spread_done(aid.0);
                Some(node)
            }
            _ => None,
        }
    }

    /// Where an actor created on a node that runs actors itself (not a driver's) goes without a
    /// strategy that says otherwise: it stays here if it fits here now (the local node first, as
    /// Ray's default does). One this node can never hold goes to the peer that can and hosts
    /// the fewest of this node's actors; one that fits here but not now goes to such a peer with
    /// room for it now (as its last heartbeat said), else waits here. `None`: here.
    fn overflow_peer(&self, spec: &TaskSpec) -> Option<NodeId> {
        if super::placement::pg_of(spec).is_some() {
            return None; // Its group's bundle says where.
        }
        let o = &spec.options;
        let ever_here = self.res.fits_total(o.cpu_milli, &o.resources);
        if ever_here && self.res.fits(o.cpu_milli, &o.resources) {
            return None;
        }
        self.peers
            .iter()
            .filter(|(_, p)| peers::could_host(&p.view, spec))
            .filter(|(_, p)| !ever_here || peers::fits_free(&p.view, spec))
            .map(|(id, p)| (self.hosted_by(*id), std::cmp::Reverse(p.view.cpu_free_milli), *id))
            .min()
            .map(|(_, _, id)| id)
    }

    /// How many of this node's actors (placed from here, not dead) `peer` hosts. A dead one
    /// whose handle is still held stays in the table: it must not count (SPREAD went past the
    /// node of an actor just killed).
    fn hosted_by(&self, peer: NodeId) -> usize {
        self.actors.values().filter(|a| a.remote == Some(peer) && a.life != Life::Dead).count()
    }

    pub(super) fn start_remote_actor(&mut self, aid: ActorId, peer: NodeId, out: &mut Vec<Action>) {
        let Some(a) = self.actors.get(&aid) else { return };
        let spec = a.create.clone();
        let Some(objects) = self.gather(&spec) else {
            self.actors.push_pending(aid);
            return;
        };
        if let Some(a) = self.actors.get_mut(&aid) {
            a.life = Life::Starting;
            a.remote = Some(peer);
        }
        note!(self, TaskEvent::Actor { actor: aid });
        self.spill_to(peer, spec, objects, out);
    }

    /// Sends the runnable heads of the callers' queues to the peer that hosts the actor.
    pub(super) fn dispatch_remote(&mut self, aid: ActorId, peer: NodeId, out: &mut Vec<Action>) {
        let mut todo = Vec::new();
        let Some(mut callers) = self.actors.get_mut(&aid).map(|a| std::mem::take(&mut a.callers))
        else {
            return;
        };
        for q in callers.values_mut() {
            while let Some(t) = q.front().copied() {
                match self.tasks.get(&t).map(|t| (t.state, t.spec.clone())) {
                    Some((TaskState::Queued, spec)) => {
                        let skip = |id: &ObjectId| self.located_actor(id);
                        match peers::gather_objects(&self.objects, &spec, &skip) {
                            Ok(objects) => {
                                q.pop_front();
                                todo.push((t, spec, objects));
                            }
                            Err(pending) => {
                                // A ref inside its arguments is still being made: try again
                                // when it is ready.
                                self.actors.wait_gather(pending, aid);
                                break;
                            }
                        }
                    }
                    None => {
                        q.pop_front();
                    }
                    Some(_) => break,
                }
            }
        }
        if let Some(a) = self.actors.get_mut(&aid) {
            a.callers = callers;
        }
        for (t, spec, objects) in todo {
            if let Some(task) = self.tasks.get_mut(&t) {
                task.state = TaskState::Remote(peer);
                let seq = task.seq;
                note!(self, TaskEvent::Forwarded { seq, peer });
            }
            if let Some(p) = self.peers.get_mut(&peer) {
                p.sent(t, 0);
            }
            self.spill_to(peer, spec, objects, out);
        }
    }

    /// A peer says how the creation of an actor it hosts for us ended.
    pub(super) fn remote_actor_created(
        &mut self,
        aid: ActorId,
        peer: NodeId,
        result: TaskResult,
        out: &mut Vec<Action>,
    ) {
        let Some(a) = self.actors.get_mut(&aid) else {
            // Dropped meanwhile: the peer may let it go.
            out.push(Action::PeerRelease { peer, ids: vec![aid.object()] });
            return;
        };
        if a.remote != Some(peer) || a.life == Life::Dead {
            return;
        }
        match result {
            TaskResult::Ok(mut values) if values.len() == 1 => {
                a.life = Life::Alive;
                note!(self, TaskEvent::Actor { actor: aid });
                if a.restarts > 0 {
                    let msg = format!(
                        "volley: actor '{}' was restarted on node {} (restart {} of {})",
                        a.class(),
                        peer.0,
                        a.restarts,
                        actors::limit(a.opts().max_restarts)
                    );
                    out.push(Action::Log(msg));
                }
                let obj = aid.object();
                if matches!(self.objects.get(&obj).map(|o| &o.state), Some(ObjectState::Pending)) {
                    let v = values.pop().unwrap_or_default();
                    self.object_ready(obj, Arc::new(v), out);
                }
                if a_unreferenced(self, aid) {
                    self.actor_unreferenced(aid, out);
                }
                self.dispatch_actor(aid, out);
            }
            TaskResult::Ok(_) => {
                let class =
                    self.actors.get(&aid).map(|a| a.class().to_string()).unwrap_or_default();
                let msg = format!("actor '{class}': __init__ returned a malformed result");
                self.actor_dead(aid, error(ErrorKind::ActorCreation, &class, msg), out);
            }
            TaskResult::Err { error: e, .. } => self.actor_dead(aid, Arc::new(e), out),
        }
    }

    /// The peer hosting some of our actors died: start them elsewhere if their restarts allow,
    /// and send their calls again if theirs do.
    pub(super) fn remote_actors_lost(
        &mut self,
        peer: NodeId,
        calls: Vec<TaskId>,
        why: &str,
        out: &mut Vec<Action>,
    ) {
        let mut lost: Vec<ActorId> =
            self.actors.iter().filter(|(_, a)| a.remote == Some(peer)).map(|(id, _)| *id).collect();
        lost.sort();
        for aid in lost {
            let Some(a) = self.actors.get_mut(&aid) else { continue };
            if a.proxy {
                // Its creator restarts it, if anyone; this node cannot know where.
                let class = a.class().to_string();
                let msg = format!("actor '{class}' died: node {} died ({why})", peer.0);
                self.actor_dead(aid, error(ErrorKind::ActorDied, &class, msg), out);
                continue;
            }
            a.remote = None;
            if a.life == Life::Dead {
                continue;
            }
            if a.stopping {
                self.actors.remove(&aid);
                continue;
            }
            let o = a.opts();
            let class = a.class().to_string();
            let max_restarts = o.max_restarts;
            if max_restarts >= 0 && a.restarts >= max_restarts as u32 {
                let msg = format!(
                    "actor '{class}' died: node {} died ({why}); max_restarts={} allows no \
                     more restarts (it was restarted {} time(s))",
                    peer.0,
                    actors::limit(max_restarts),
                    a.restarts
                );
                out.push(Action::Log(format!("volley: {msg}")));
                self.actor_dead(aid, error(ErrorKind::ActorDied, &class, msg), out);
                continue;
            }
            a.restarts += 1;
            a.life = Life::Pending;
            note!(self, TaskEvent::Actor { actor: aid });
            out.push(Action::Log(format!(
                "volley: actor '{class}' died with node {} ({why}); restarting it (restart {} of {})",
                peer.0,
                a.restarts,
                actors::limit(max_restarts)
            )));
            self.actors.push_pending(aid);
        }
        // Calls that were on their way or running there.
        let mut again: Vec<(ActorId, TaskId, Holder)> = Vec::new();
        for t in calls {
            let Some(task) = self.tasks.get_mut(&t) else { continue };
            let ActorPart::Call(call) = &task.spec.actor else { continue };
            let actor = call.actor;
            let retries = self.actors.get(&actor).map(|a| a.opts().max_task_retries);
            let alive = self.actors.get(&actor).is_some_and(|a| a.life != Life::Dead);
            match retries {
                Some(r)
                    if alive && task.cancel.is_none() && (r < 0 || task.attempts < r as u32) =>
                {
                    task.attempts += 1;
                    task.state = TaskState::Queued;
                    again.push((actor, t, task.caller));
                }
                _ => {
                    let name = task.spec.name.clone();
                    let msg = format!(
                        "actor call '{name}' failed: node {} died ({why}) while running it; \
                         max_task_retries allows no retry of it",
                        peer.0
                    );
                    self.fail_call(t, error(ErrorKind::ActorDied, &name, msg), out);
                }
            }
        }
        for (aid, t, caller) in again.into_iter().rev() {
            if let Some(a) = self.actors.get_mut(&aid) {
                a.requeue_call(caller, t);
            }
        }
        self.start_actors(out);
    }

    /// Where the actors named among `objects` (by their handles' refs) live, for a peer that
    /// will run a task holding those handles.
    pub(super) fn routes_for(
        &self,
        spec: &TaskSpec,
        objects: &[(ObjectId, Arc<ObjectData>)],
    ) -> Vec<(ActorId, NodeId, String)> {
        // Handles of actors not ready yet travel without their value (see `located_actor`).
        let ids = objects.iter().map(|(id, _)| id).chain(&spec.args.contained).chain(&spec.deps);
        self.routes_of(ids)
    }

    /// Where the actors named among `ids` (by their handles' refs) live, as `routes_for` says.
    pub(super) fn routes_of<'a>(
        &self,
        ids: impl Iterator<Item = &'a ObjectId>,
    ) -> Vec<(ActorId, NodeId, String)> {
        let mut routes = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for id in ids {
            if id.index != 1 || !seen.insert(*id) {
                continue;
            }
            let aid = ActorId(id.task);
            let Some(a) = self.actors.get(&aid) else { continue };
            let node = match (a.remote, self.peers.node_id()) {
                (Some(p), _) => p,
                (None, Some(me)) if a.worker.is_some() => me,
                _ => continue,
            };
            routes.push((aid, node, a.class().to_string()));
        }
        routes
    }

    /// Learns that `actor` runs on `node` (from elsewhere than a handle: serve's routing table
    /// names its replicas by id and node): calls made here go there. Nothing if this node hosts
    /// it, already knows it, or saw it die.
    pub fn route_to_actor(&mut self, actor: ActorId, node: NodeId, class: &str) {
        if !self.known_dead(actor) {
            self.add_routes(vec![(actor, node, class.to_string())]);
        }
    }

    /// Routes this node cannot send calls on, set right with each new view of the cluster
    /// (`dispatch_actor` holds their calls meanwhile; `leaving`: peers the view dropped, not
    /// yet forgotten). A route the directory gave names the node that holds the actor, and that
    /// can be a driver's node, which takes no connections: one that created a named actor
    /// still waiting for its arguments. Once a node lists the actor as its own (its next
    /// heartbeat after the actor is placed there), the route names that node and the calls go
    /// there. A route may also name a node not in this node's view yet (the directory answers
    /// before the next view): the calls go once it is. An actor that no node lists for
    /// `UNLISTED_MS` (its creation failed on the driver's node, or its node left) is dead
    /// here, and so are its calls. (A creator that leaves is seen by `peer_gone`.)
    pub(super) fn reroute_proxies(&mut self, leaving: &[NodeId], out: &mut Vec<Action>) {
        let cannot_send = |a: &actors::ActorEntry| {
            a.proxy && a.life != Life::Dead && a.remote.is_some_and(|n| !self.peers.takes_calls(n))
        };
        if !self.actors.values().any(|a| a.calls_held || cannot_send(a)) {
            return;
        }
        // Where the view lists each actor: the node hosting it, or a driver's node holding it.
        let mut hosts: HashMap<ActorId, NodeId> = HashMap::new();
        let mut held_by_drivers: HashSet<ActorId> = HashSet::new();
        for (id, p) in self.peers.iter().filter(|(id, _)| !leaving.contains(id)) {
            for n in &p.view.named {
                if p.view.driver {
                    held_by_drivers.insert(n.actor);
                } else {
                    hosts.entry(n.actor).or_insert(*id);
                }
            }
        }
        let now = self.now_ms;
        let mut moved = Vec::new();
        let mut lost = Vec::new();
        for (aid, a) in self.actors.iter_mut() {
            let Some(node) = a.remote.filter(|_| a.proxy && a.life != Life::Dead) else {
                continue;
            };
            let driver = self.peers.get(&node).map(|p| p.view.driver);
            if let (Some(&host), true) = (hosts.get(aid), driver != Some(false)) {
                moved.push((*aid, host));
            } else if leaving.contains(&node) {
                // Left: `peer_gone` sees to it.
            } else if driver == Some(false) {
                if a.calls_held || a.unlisted_since.is_some() {
                    moved.push((*aid, node));
                }
            } else if driver == Some(true) && held_by_drivers.contains(aid) {
                a.unlisted_since = None; // its creator still holds it
            } else if now.saturating_sub(*a.unlisted_since.get_or_insert(now)) >= UNLISTED_MS {
                lost.push((*aid, node));
            }
        }
        for (aid, host) in moved {
            if let Some(a) = self.actors.get_mut(&aid) {
                a.remote = Some(host);
                a.unlisted_since = None;
                a.calls_held = false;
            }
            self.dispatch_actor(aid, out);
        }
        for (aid, node) in lost {
            let class = self.actors.get(&aid).map(|a| a.class().to_string()).unwrap_or_default();
            let msg = format!(
                "actor '{class}' died: no node of the cluster has listed it for {} s (its route \
                 named node {}: its creation failed there, or that node left)",
                UNLISTED_MS / 1000,
                node.0
            );
            self.actor_dead(aid, error(ErrorKind::ActorDied, &class, msg), out);
        }
    }

    /// Learns where actors live whose handles a peer's task carries: calls made here go there.
    pub(super) fn add_routes(&mut self, routes: Vec<(ActorId, NodeId, String)>) {
        for (aid, node, class) in routes {
            if Some(node) == self.peers.node_id() || self.actors.contains_key(&aid) {
                continue;
            }
            let opts = volley_proto::ActorOptions {
                class_name: class.clone(),
                namespace: String::new(),
                ..Default::default()
            };
            let create = TaskSpec {
                task_id: aid.0,
                function: FunctionId([0; 16]),
                name: class.into(),
                args: ObjectData::default(),
                deps: Box::default(),
                num_returns: 1,
                options: std::sync::Arc::new(volley_proto::TaskOptions {
                    cpu_milli: 0,
                    ..Default::default()
                }),
                actor: ActorPart::Create(Box::new(opts)),
            };
            let mut entry = actors::ActorEntry::new(Arc::new(create), Holder::Local);
            entry.life = Life::Alive;
            entry.runnable = true;
            entry.args_released = true; // It has none here.
            entry.remote = Some(node);
            entry.proxy = true;
            self.actors.insert(aid, entry);
        }
    }

    // ------------------------------------------------------------ hosting for a peer

    /// Creates an actor a peer asked for; answered once `__init__` ends (`report_creation`).
    pub(super) fn accept_peer_actor(
        &mut self,
        peer: NodeId,
        spec: TaskSpec,
        out: &mut Vec<Action>,
    ) {
        let tid = spec.task_id;
        let name = spec.name.clone();
        match self.create_actor(Holder::Peer(peer), spec, out) {
            Ok((aid, _)) => {
                self.peers.hold_actor_ref(peer, aid.object());
            }
            Err(e) => {
                let err = error(ErrorKind::ActorCreation, &name, e.to_string());
                if let Some(f) = self.peers.take_from_peer(&tid) {
                    out.push(Action::PeerDone {
                        peer,
                        task: tid,
                        result: Err(err),
                        objects: Vec::new(),
                        kept: Vec::new(),
                        routes: Vec::new(),
                    });
                    self.release_from_peer(f, out);
                }
            }
        }
    }

    /// If a peer asked for this actor and has not heard how its creation went, tells it.
    pub(super) fn report_creation(&mut self, aid: ActorId, out: &mut Vec<Action>) {
        if !self.peers.is_from_peer(&aid.0) {
            return;
        }
        let result = match self.actors.get(&aid).map(|a| (a.life, a.death.clone())) {
            Some((Life::Alive, _)) => match self.objects.get(&aid.object()).map(|o| &o.state) {
                Some(ObjectState::Ready(v)) => Ok(vec![v.clone()]),
                _ => return,
            },
            Some((Life::Dead, Some(e))) => Err(e),
            None => Err(error(ErrorKind::ActorDied, "", "the actor no longer exists".into())),
            _ => return,
        };
        if let Some(f) = self.peers.take_from_peer(&aid.0) {
            out.push(Action::PeerDone {
                peer: f.peer,
                task: aid.0,
                result,
                objects: Vec::new(),
                kept: Vec::new(),
                routes: Vec::new(),
            });
            self.release_from_peer(f, out);
        }
    }

    /// Tells the node that had us create `aid` how it is now (pid, restarts, death), with a line
    /// for its log.
    pub(super) fn tell_creator(
        &mut self,
        aid: ActorId,
        log: Option<String>,
        out: &mut Vec<Action>,
    ) {
        let Some(a) = self.actors.get(&aid) else { return };
        let Holder::Peer(peer) = a.caller else { return };
        if a.proxy {
            return;
        }
        let death = if a.life == Life::Dead { a.death.clone() } else { None };
        let (pid, restarts) = (a.pid, a.restarts);
        out.push(Action::PeerActorState { peer, actor: aid, pid, restarts, death, log });
    }

    /// An actor hosted here died for good: every other node is told too (its creator heard it
    /// from `tell_creator`), so that one holding a route to it (a handle it was passed, a named
    /// actor it looked up) sees it dead at once: `volley.actor_state` there says DEAD with the
    /// cause, and calls fail with it without a round trip. Deaths are rare; a node without a
    /// route ignores the word.
    pub(super) fn tell_routes(&mut self, aid: ActorId, out: &mut Vec<Action>) {
        let Some(a) = self.actors.get(&aid) else { return };
        if a.proxy || a.remote.is_some() || a.life != Life::Dead {
            return;
        }
        let Some(death) = a.death.clone() else { return };
        let creator = match a.caller {
            Holder::Peer(p) => Some(p),
            _ => None,
        };
        let (pid, restarts) = (a.pid, a.restarts);
        for peer in self.peers.keys().copied().filter(|p| Some(*p) != creator) {
            let death = Some(death.clone());
            out.push(Action::PeerActorState { peer, actor: aid, pid, restarts, death, log: None });
        }
    }

    /// The node hosting an actor we created says how it is.
    pub fn peer_actor_state(
        &mut self,
        peer: NodeId,
        aid: ActorId,
        report: ActorReport,
        out: &mut Vec<Action>,
    ) {
        let ActorReport { pid, restarts, death, log } = report;
        let Some(a) = self.actors.get_mut(&aid) else { return };
        if a.remote != Some(peer) {
            return;
        }
        if a.proxy {
            // A route to an actor another node created: only its death is ours to know.
            if let Some(e) = death {
                self.actor_dead(aid, Arc::new(e), out);
            }
            return;
        }
        a.pid = pid;
        a.peer_restarts = restarts;
        note!(self, TaskEvent::Actor { actor: aid });
        if let Some(l) = log {
            out.push(Action::Log(format!("{l} [on node {}]", peer.0)));
        }
        if let Some(e) = death {
            self.actor_dead(aid, Arc::new(e), out);
        }
    }

    /// A peer dropped its handles on actors it had us create.
    pub fn peer_release(&mut self, peer: NodeId, ids: &[ObjectId], out: &mut Vec<Action>) {
        self.release_copies(peer, Some(ids), out);
        let mut released = Vec::new();
        if let Some(refs) = self.peers.actor_refs_mut(&peer) {
            for id in ids {
                if let Some(pos) = refs.iter().position(|r| r == id) {
                    refs.remove(pos);
                    released.push(*id);
                }
            }
        }
        self.decref(Holder::Peer(peer), &released, out);
    }

    /// The references a gone peer held on actors here.
    pub(super) fn drop_peer_actor_refs(&mut self, peer: NodeId, out: &mut Vec<Action>) {
        let refs = self.peers.take_actor_refs(&peer);
        self.decref(Holder::Peer(peer), &refs, out);
        // Named actors it created live on here only if detached (a name alone holds them).
        let mut doomed: Vec<ActorId> = self
            .actors
            .iter()
            .filter(|(_, a)| {
                a.caller == Holder::Peer(peer)
                    && !a.proxy
                    && a.life != Life::Dead
                    && a.opts().name.is_some()
                    && !a.opts().detached
            })
            .map(|(id, _)| *id)
            .collect();
        doomed.sort();
        for aid in doomed {
            self.kill_actor_for(aid, true, "the node that created it left the cluster", out);
        }
    }
}

fn a_unreferenced(s: &Scheduler, aid: ActorId) -> bool {
    s.actors.get(&aid).is_some_and(|a| a.unreferenced)
}
