//! Other nodes of a cluster: spilling tasks to them, and running tasks they sent.
//!
//! A node runs a task itself while it has the resources free; otherwise it sends it to a peer
//! with room (as the cluster view from the head reports it, less what this node has sent there
//! since). The task travels with the small values of its arguments and of the refs pickled
//! inside them (`Action::Spill`); the peer pulls the large ones it has no copy of (see "pulling
//! large values" below). Its results come back with `peer_done`.
//! A task sent by a peer runs here like any other, held by `Holder::Peer`; when it ends, its
//! results go back (`Action::PeerDone`) and everything it held here is released. Tasks a peer
//! sent are never passed on again, so work cannot bounce between nodes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use volley_proto::{
    ActorPart, ErrorKind, ErrorPayload, FunctionId, NodeId, ObjectData, ObjectId, TaskId,
    TaskResult, TaskSpec,
};

use super::actors::Life;
use super::{
    error, retries_left, Action, ActorId, Holder, ObjectState, Scheduler, TaskState, WorkerId,
};

/// A peer as the cluster view describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerView {
    pub id: NodeId,
    pub cpu_total_milli: u32,
    pub cpu_free_milli: u32,
    /// Other resources: name, total, free (thousandths).
    pub resources: Vec<(String, u64, u64)>,
    /// A driver's node: it runs nobody else's tasks.
    pub driver: bool,
    /// Named actors it hosts.
    pub named: Vec<volley_proto::NamedActor>,
}

pub(super) struct PeerEntry {
    pub(super) view: PeerView,
    /// Tasks this node sent there and still waits for, with the CPU each needs and whether
    /// the peer said it started it (`PeerMsg::Started`).
    inflight: HashMap<TaskId, (u32, bool)>,
    /// The sum of `inflight`'s CPUs, kept as it changes (it is read for every spilled task).
    inflight_cpu: u32,
    known_functions: HashSet<FunctionId>,
    known_packages: HashSet<String>,
    /// A `PeerSteal` to it is unanswered.
    stealing: bool,
    /// Large values (in shared memory) it has a copy of from us: later tasks that need them
    /// go without them. It keeps each until we free ours (`PeerRelease`), so a value used by
    /// many tasks there crosses the network once.
    copies: HashSet<ObjectId>,
}

impl PeerEntry {
    fn inflight_cpu(&self) -> u32 {
        self.inflight_cpu
    }

    /// Counts a task sent there (`cpu` it needs).
    pub(super) fn sent(&mut self, tid: TaskId, cpu: u32) {
        if let Some((old, _)) = self.inflight.insert(tid, (cpu, false)) {
            self.inflight_cpu -= old;
        }
        self.inflight_cpu += cpu;
    }

    /// The peer started running a task we sent it.
    fn started(&mut self, tid: &TaskId) {
        if let Some((_, started)) = self.inflight.get_mut(tid) {
            *started = true;
        }
    }

    /// A task sent there is back (done, or given back); false if it was not in flight.
    pub(super) fn back(&mut self, tid: &TaskId) -> bool {
        match self.inflight.remove(tid) {
            Some((cpu, _)) => {
                self.inflight_cpu -= cpu;
                true
            }
            None => false,
        }
    }

    /// Whether it takes work and has room for `spec` now (counting what we sent there).
    fn has_room(&self, spec: &TaskSpec) -> bool {
        !self.view.driver
            && fits_total(&self.view, spec)
            && self.inflight_cpu() + spec.options.cpu_milli
                <= self.view.cpu_total_milli * PEER_DEPTH
    }
}

/// The parts of a task a peer sent, kept until it can be accepted (`Scheduler::reruns`).
pub(super) struct PeerTask {
    pub(super) peer: NodeId,
    pub(super) spec: TaskSpec,
    pub(super) function: Option<Arc<[u8]>>,
    pub(super) objects: Vec<(ObjectId, ObjectData)>,
    pub(super) routes: Vec<(ActorId, NodeId, String)>,
    pub(super) errors: Vec<(ObjectId, ErrorPayload)>,
    pub(super) cached: Vec<ObjectId>,
    pub(super) fetch: Vec<(ObjectId, ObjectData, Option<NodeId>)>,
}

/// What a task sent by a peer holds here until it ends.
pub(super) struct FromPeer {
    pub(super) peer: NodeId,
    /// Values the peer sent with it.
    objects: Vec<ObjectId>,
}

/// Tasks in flight to a peer, at most, per CPU it has: one running and the rest queued there, so
/// the peer never waits for the next task's round trip (a TCP round trip and two schedulers:
/// short tasks need a deep pipeline, and deeper ones batch more per wake-up; on a 2-CPU node, 4
/// gave 10,000 no-op tasks 0.44 s, 16 gave 0.32-0.36 s, 64 gave 0.19-0.26 s, 256 gave 0.17-0.20
/// s). Short tasks queued behind a long one there come back by stealing (`steal_from_peers`).
pub(super) const PEER_DEPTH: u32 = 64;

/// How many pulls of one value a node holding it serves before the next holder takes over (see
/// `pick_relay`).
const FANOUT: u32 = 2;

/// Where a spilled task's values are gathered: at most this many nested refs deep.
const MAX_SHIP_DEPTH: usize = 16;

/// The cluster as a part of the scheduler: the other nodes (`PeerEntry`), this node's id and
/// role, the tasks peers sent here, copies of values kept for peers, and the pulls this node
/// serves. Its fields are this module's; the other parts ask through the methods below.
#[derive(Default)]
pub(super) struct Peers {
    /// The other nodes of the cluster (empty on a lone node).
    nodes: BTreeMap<NodeId, PeerEntry>,
    /// Tasks other nodes sent here.
    from_peer: HashMap<TaskId, FromPeer>,
    /// Tasks a peer sent again while their earlier attempt, orphaned when that peer was
    /// thought gone, still runs here: accepted once it has ended (`ended_reruns`).
    reruns: HashMap<TaskId, Box<PeerTask>>,
    ended_reruns: Vec<TaskId>,
    /// A driver's node: actors go to peers.
    prefer_peers: bool,
    /// This node's id in its cluster.
    node_id: Option<NodeId>,
    /// References peers hold on actors they had created here.
    actor_refs: HashMap<NodeId, Vec<ObjectId>>,
    /// Tasks of peers this node asked its workers to give back, to return them to those peers
    /// (see `peer_steal`).
    revoked_for_peer: HashSet<TaskId>,
    /// Copies of large values peers sent with tasks, kept here until the peer lets them go
    /// (see `PeerEntry::copies`).
    copies: HashMap<NodeId, HashSet<ObjectId>>,
    /// Large values peers are pulling from this node, by the node serving each pull (`None`:
    /// this one), to spread the pulls of one value over the nodes holding it.
    fanout: HashMap<ObjectId, HashMap<Option<NodeId>, u32>>,
    /// Peers that asked for a value this node is still pulling itself: served once it is here.
    serve_waits: HashMap<ObjectId, Vec<(NodeId, bool)>>,
    /// The node the last `SPREAD` task went to (this one included): the next goes to the one
    /// after it; and the node each queued `SPREAD` task's turn went to (see `spread_target`).
    pub(super) spread_last: Option<NodeId>,
    pub(super) spread_turns: HashMap<TaskId, NodeId>,
}

table_access!(Peers.nodes: NodeId => PeerEntry);

impl Peers {
    /// This node's id in its cluster, once it has one.
    pub(super) fn node_id(&self) -> Option<NodeId> {
        self.node_id
    }

    /// This node as node affinity names it: its id in the cluster, or 0 alone (as
    /// `volley.nodes()` shows a node that is in no cluster).
    pub(super) fn here(&self) -> NodeId {
        self.node_id.unwrap_or(NodeId(0))
    }

    /// Whether calls can be sent to `node`: it is in the view and not a driver's node (which
    /// takes no connections).
    pub(super) fn takes_calls(&self, node: NodeId) -> bool {
        self.nodes.get(&node).is_some_and(|p| !p.view.driver)
    }

    /// A driver's node: its actors go to peers.
    pub(super) fn prefer_peers(&self) -> bool {
        self.prefer_peers
    }

    pub(super) fn set_prefer_peers(&mut self, yes: bool) {
        self.prefer_peers = yes;
    }

    /// Whether a task a peer sent is here (always false on a lone node: checked per task).
    pub(super) fn has_tasks_from_peers(&self) -> bool {
        !self.from_peer.is_empty()
    }

    /// The peer that sent task `tid`, if one did.
    pub(super) fn sender_of(&self, tid: &TaskId) -> Option<NodeId> {
        self.from_peer.get(tid).map(|f| f.peer)
    }

    pub(super) fn is_from_peer(&self, tid: &TaskId) -> bool {
        self.from_peer.contains_key(tid)
    }

    /// Forgets that a peer sent `tid`; what it held here.
    pub(super) fn take_from_peer(&mut self, tid: &TaskId) -> Option<FromPeer> {
        self.from_peer.remove(tid)
    }

    /// Task `tid` ended: a rerun of it a peer sent meanwhile may be accepted now.
    pub(super) fn task_ended(&mut self, tid: TaskId) {
        if self.reruns.contains_key(&tid) {
            self.ended_reruns.push(tid); // Accepted by the next `schedule`.
        }
    }

    /// The next rerun whose earlier attempt has ended, to accept now.
    pub(super) fn next_ended_rerun(&mut self) -> Option<PeerTask> {
        while let Some(tid) = self.ended_reruns.pop() {
            if let Some(t) = self.reruns.remove(&tid) {
                return Some(*t);
            }
        }
        None
    }

    /// Whether tasks were revoked from workers to give back to peers.
    pub(super) fn has_revoked(&self) -> bool {
        !self.revoked_for_peer.is_empty()
    }

    /// Whether a peer waits for a value this node is still pulling.
    pub(super) fn has_serve_waits(&self) -> bool {
        !self.serve_waits.is_empty()
    }

    /// `peer` holds a reference to an actor it had created here (its object `obj`).
    pub(super) fn hold_actor_ref(&mut self, peer: NodeId, obj: ObjectId) {
        self.actor_refs.entry(peer).or_default().push(obj);
    }

    /// The references `peer` holds on actors here.
    pub(super) fn actor_refs_mut(&mut self, peer: &NodeId) -> Option<&mut Vec<ObjectId>> {
        self.actor_refs.get_mut(peer)
    }

    /// Takes every reference `peer` holds on actors here (it is gone).
    pub(super) fn take_actor_refs(&mut self, peer: &NodeId) -> Vec<ObjectId> {
        self.actor_refs.remove(peer).unwrap_or_default()
    }
}

impl Scheduler {
    /// Replaces the view of the other nodes. Peers missing from it are gone: their tasks are
    /// retried elsewhere or fail.
    pub fn set_peers(&mut self, view: Vec<PeerView>, out: &mut Vec<Action>) {
        let listed: HashSet<NodeId> = view.iter().map(|p| p.id).collect();
        let gone: Vec<NodeId> =
            self.peers.keys().filter(|id| !listed.contains(id)).copied().collect();
        for v in view {
            match self.peers.get_mut(&v.id) {
                Some(p) => p.view = v,
                None => {
                    let entry = PeerEntry {
                        view: v.clone(),
                        inflight: HashMap::new(),
                        inflight_cpu: 0,
                        known_functions: HashSet::new(),
                        known_packages: HashSet::new(),
                        stealing: false,
                        copies: HashSet::new(),
                    };
                    self.peers.nodes.insert(v.id, entry);
                }
            }
        }
        // Routes move to the nodes the new view lists before the peers that left are dropped:
        // an actor its creator (a driver's node that is leaving) had placed lives on.
        self.reroute_proxies(&gone, out);
        for id in gone {
            self.peer_gone(id, "it left the cluster view (no heartbeat)", out);
        }
        if !self.placement.is_empty() {
            self.pgs_after_view(out);
        }
        self.schedule(out);
    }

    /// A peer died (its connection broke, or the head declared it dead): the tasks it was running
    /// for us are retried (here or on another peer) if their retries allow, else they fail.
    pub fn peer_gone(&mut self, id: NodeId, why: &str, out: &mut Vec<Action>) {
        self.peer_lost(id, why, true, out);
    }

    /// This node's cluster started over (its head restarted): every peer is forgotten, and
    /// the tasks they ran for us are sent again without using up their retries (no task
    /// failed).
    pub fn peers_reset(&mut self, ids: &[NodeId], why: &str, out: &mut Vec<Action>) {
        for id in ids {
            self.peer_lost(*id, why, false, out);
        }
    }

    fn peer_lost(&mut self, id: NodeId, why: &str, counted: bool, out: &mut Vec<Action>) {
        // What it holds here is dropped even if it never made it into our view (a short-lived
        // driver can come and go between two views).
        if let Some(p) = self.peers.nodes.remove(&id) {
            self.peer_tasks_lost(id, p, why, counted, out);
        }
        self.drop_peer_actor_refs(id, out);
        self.notices.forget(Holder::Peer(id));
        self.release_copies(id, None, out);
        self.pgs_peer_gone(id, out);
        self.peers.reruns.retain(|_, t| t.peer != id);
        // Tasks it sent us: nobody waits for their results any more.
        let theirs: Vec<TaskId> =
            self.peers.from_peer.iter().filter(|(_, f)| f.peer == id).map(|(t, _)| *t).collect();
        for tid in theirs {
            if let Some(f) = self.peers.from_peer.remove(&tid) {
                self.release_from_peer(f, out);
            }
            self.cancel(volley_proto::ObjectId::for_return(tid, 1), false, out);
        }
        self.schedule(out);
    }

    /// Retries (or fails) the tasks and actor calls a dead peer was running for us.
    fn peer_tasks_lost(
        &mut self,
        id: NodeId,
        p: PeerEntry,
        why: &str,
        counted: bool,
        out: &mut Vec<Action>,
    ) {
        let mut sent: Vec<(TaskId, bool)> =
            p.inflight.iter().map(|(tid, (_, started))| (*tid, *started)).collect();
        sent.sort();
        let is_call = |t: &TaskId| {
            self.tasks.get(t).is_some_and(|t| matches!(t.spec.actor, ActorPart::Call(_)))
        };
        let calls: Vec<TaskId> = sent.iter().map(|(t, _)| *t).filter(is_call).collect();
        sent.retain(|(t, _)| !is_call(t));
        let tasks = sent;
        self.remote_actors_lost(id, calls, why, out);
        // Up to PEER_DEPTH tasks per CPU wait there behind the running ones: only those the
        // peer said it started use a retry. The rest never ran, and go again as they are.
        for (tid, started) in tasks {
            let Some(task) = self.tasks.get_mut(&tid) else { continue };
            let charged = counted && started;
            if task.cancel.is_none() && (!charged || retries_left(task)) {
                if charged {
                    task.attempts += 1;
                }
                task.state = TaskState::Queued;
                self.enqueue(tid, true);
                self.note_queued(tid);
            } else {
                let name = task.spec.name.clone();
                let msg = format!("node {} died while running task '{name}': {why}", id.0);
                self.fail_task(tid, error(ErrorKind::WorkerCrashed, &name, msg), out);
            }
        }
    }

    // ------------------------------------------------------------ work stealing across nodes
    //
    // A node sends each peer up to `PEER_DEPTH` tasks per CPU, so a peer whose CPU is taken by a
    // long task may hold short ones queued behind it while other nodes are idle. When this node
    // has nothing left to send and some node has room, it asks the peer holding the most of its
    // tasks beyond that peer's CPUs to give half of them back (`PeerSteal`); the peer returns
    // those not started (from its queue at once, those pipelined to a busy worker once the
    // worker gives them up) and they are scheduled again here.

    /// Asks a peer to give back queued tasks, if another node has room for them.
    pub(super) fn steal_from_peers(&mut self, out: &mut Vec<Action>) {
        let local_room = self.idle_worker().is_some() && !self.res.cpu_short(1000);
        let peer_room = self.peers.values().any(|p| {
            !p.view.driver && !p.stealing && p.inflight_cpu() + 1000 <= p.view.cpu_total_milli
        });
        if !local_room && !peer_room {
            return;
        }
        let victim = self
            .peers
            .iter()
            .filter(|(_, p)| !p.stealing && !p.view.driver)
            .filter_map(|(id, p)| {
                let excess = p.inflight_cpu().saturating_sub(p.view.cpu_total_milli.max(1000));
                (excess >= 1000).then_some((excess, *id))
            })
            .max();
        let Some((excess, id)) = victim else { return };
        if let Some(p) = self.peers.get_mut(&id) {
            p.stealing = true;
        }
        let max = (excess / 1000).div_ceil(2).max(1);
        out.push(Action::PeerSteal { peer: id, max });
    }

    /// `origin` asks for up to `max` of its tasks back (see `steal_from_peers`).
    pub fn peer_steal(&mut self, origin: NodeId, max: u32, out: &mut Vec<Action>) {
        let max = max as usize;
        let tasks = &self.tasks;
        let theirs = |t: &TaskId| {
            tasks.get(t).is_some_and(|t| {
                t.caller == Holder::Peer(origin)
                    && t.cancel.is_none()
                    && matches!(t.spec.actor, ActorPart::None)
                    && !t.spec.options.streaming
            })
        };
        // The newest queued ones first.
        let mut back: Vec<TaskId> = Vec::new();
        for q in self.tasks.queues() {
            back.extend(q.iter().rev().filter(|t| theirs(t)).take(max - back.len()));
        }
        // Then those pipelined behind a running task on a worker.
        let mut revokes = Vec::new();
        let mut wanted = max - back.len();
        let mut wids: Vec<WorkerId> = self.workers.keys().copied().collect();
        wids.sort();
        for wid in wids {
            if wanted == 0 {
                break;
            }
            let Some(w) = self.workers.get(&wid) else { continue };
            if w.actor.is_some() || w.revoke_outstanding || w.queue.len() < 2 {
                continue;
            }
            let take: Vec<TaskId> =
                w.queue.iter().skip(1).rev().filter(|t| theirs(t)).take(wanted).copied().collect();
            if !take.is_empty() {
                wanted -= take.len();
                revokes.push((wid, take));
            }
        }
        let gone: HashSet<TaskId> = back.iter().copied().collect();
        self.tasks.retain_queued(|t| !gone.contains(t));
        for (wid, tasks) in revokes {
            if let Some(w) = self.workers.get_mut(&wid) {
                w.revoke_outstanding = true;
            }
            self.peers.revoked_for_peer.extend(tasks.iter().copied());
            out.push(Action::Send {
                worker: wid,
                msg: volley_proto::NodeToWorker::Revoke { tasks },
            });
        }
        for t in &back {
            self.forget_peer_task(*t, out);
        }
        out.push(Action::PeerReturned { peer: origin, tasks: back });
    }

    /// Of tasks a worker gave back, those taken back for their peers go to them; the rest are
    /// returned.
    pub(super) fn return_revoked_to_peers(
        &mut self,
        back: Vec<TaskId>,
        out: &mut Vec<Action>,
    ) -> Vec<TaskId> {
        let mut keep = Vec::new();
        let mut by_peer: std::collections::BTreeMap<NodeId, Vec<TaskId>> = Default::default();
        for t in back {
            if self.peers.revoked_for_peer.remove(&t) {
                if let Some(Holder::Peer(p)) = self.tasks.get(&t).map(|t| t.caller) {
                    by_peer.entry(p).or_default().push(t);
                    continue;
                }
            }
            keep.push(t);
        }
        for (peer, tasks) in by_peer {
            for t in &tasks {
                self.forget_peer_task(*t, out);
            }
            out.push(Action::PeerReturned { peer, tasks });
        }
        let tasks = &self.tasks;
        self.peers.revoked_for_peer.retain(|t| tasks.contains_key(t));
        keep
    }

    /// Drops a task a peer sent, which will not run here.
    fn forget_peer_task(&mut self, tid: TaskId, out: &mut Vec<Action>) {
        let Some(task) = self.tasks.get(&tid) else { return };
        let (spec, holder, seq) = (task.spec.clone(), task.caller, task.seq);
        note!(self, super::TaskEvent::Returned { seq });
        self.finish_task(tid, out);
        let returns: Vec<ObjectId> = spec.return_ids().collect();
        self.decref(holder, &returns, out);
        for r in returns {
            if self.objects.get(&r).is_some_and(|o| o.refs == 0) {
                self.objects.remove(&r);
            }
        }
        if let Some(f) = self.peers.from_peer.remove(&tid) {
            self.release_from_peer(f, out);
        }
    }

    /// `peer` gave back tasks this node sent it: they are scheduled again.
    pub fn peer_returned(&mut self, peer: NodeId, tasks: &[TaskId], out: &mut Vec<Action>) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.stealing = false;
            for t in tasks {
                p.back(t);
            }
        }
        for t in tasks.iter().rev() {
            let Some(task) = self.tasks.get_mut(t) else { continue };
            if task.state != TaskState::Remote(peer) {
                continue;
            }
            task.state = TaskState::Queued;
            if task.cancel.is_some() {
                let name = task.spec.name.clone();
                let msg = format!("task '{name}' was cancelled before it ran");
                self.fail_task(*t, error(ErrorKind::Cancelled, &name, msg), out);
            } else {
                self.enqueue(*t, true);
                self.note_queued(*t);
            }
        }
        self.schedule(out);
    }

    /// `peer` started running a task this node sent it (`PeerMsg::Started`).
    pub fn peer_started(&mut self, peer: NodeId, task: TaskId) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.started(&task);
        }
    }

    /// Tells the scheduler its node's id in the cluster (for node affinity).
    pub fn set_node_id(&mut self, id: NodeId) {
        self.peers.node_id = Some(id);
    }

    /// Where a `SPREAD` task goes, as Ray spreads: the nodes take turns. In node-id order,
    /// from the one after the node the last went to (this node among them if it could ever
    /// run the task), the first that can start it now (this node: its resources are free; a
    /// peer: what this node has sent there leaves a CPU for it), else the first with room to
    /// queue it; `None` if no node has room. So short tasks that would all fit on one node
    /// still go to every node in turn, and a busy node is passed over while another is free.
    ///
    /// A task keeps the node its turn went to while that node could still take it: one
    /// looked at again (it waits here for a worker, or for a CPU) takes no second turn.
    pub(super) fn spread_target(&mut self, tid: TaskId) -> Option<NodeId> {
        let spec = &self.tasks.get(&tid)?.spec;
        let cpu = spec.options.cpu_milli;
        let mut nodes: Vec<(NodeId, bool)> = self
            .peers
            .iter()
            .filter(|(_, p)| p.has_room(spec))
            .map(|(id, p)| (*id, p.inflight_cpu() + cpu <= p.view.cpu_total_milli))
            .collect();
        if self.res.cpu_total() > 0 && self.res.fits_total(cpu, &spec.options.resources) {
            nodes.push((self.peers.here(), self.res.fits(cpu, &spec.options.resources)));
        }
        self.take_spread_turn(tid, nodes)
    }

    /// The turn-taking behind `SPREAD`, for tasks and actors alike (one turn order per node, as
    /// Ray keeps one): of `nodes` (each with whether it can start the work now), in node-id
    /// order from the one after the node the last turn went to, the first that can start it
    /// now, else the first. `key` (the task, or the actor's creation) keeps its turn while its
    /// node is still among `nodes`.
    pub(super) fn take_spread_turn(
        &mut self,
        key: TaskId,
        mut nodes: Vec<(NodeId, bool)>,
    ) -> Option<NodeId> {
        nodes.sort_unstable_by_key(|(id, _)| *id);
        let kept = self.peers.spread_turns.get(&key).copied();
        if let Some(node) = kept.filter(|k| nodes.iter().any(|(id, _)| id == k)) {
            return Some(node);
        }
        let start = match self.peers.spread_last {
            Some(last) => nodes.iter().position(|(id, _)| *id > last).unwrap_or(0),
            None => 0,
        };
        let turn = || nodes[start..].iter().chain(&nodes[..start]);
        let (pick, _) = *turn().find(|(_, now)| *now).or_else(|| turn().next())?;
        self.peers.spread_last = Some(pick);
        if self.peers.spread_turns.len() >= 4096 {
            // Turns of work that left without being sent or started (cancelled, failed, an
            // actor killed while it waited): dropped now and then.
            let (tasks, actors) = (&self.tasks, &self.actors);
            self.peers.spread_turns.retain(|t, _| {
                tasks.get(t).is_some_and(|t| matches!(t.state, TaskState::Queued))
                    || actors.get(&ActorId(*t)).is_some_and(|a| a.life == Life::Pending)
            });
        }
        self.peers.spread_turns.insert(key, pick);
        Some(pick)
    }

    /// Task `tid` left the ready queue (sent to a peer, or given to a worker here): its SPREAD
    /// turn, if it had one, is over.
    pub(super) fn spread_done(&mut self, tid: TaskId) {
        if !self.peers.spread_turns.is_empty() {
            self.peers.spread_turns.remove(&tid);
        }
    }

    /// Sends the task to `peer` if it may go (a plain task, not one a peer sent us) and the peer
    /// has room; true if it went.
    pub(super) fn try_spill_to(
        &mut self,
        tid: TaskId,
        peer: NodeId,
        out: &mut Vec<Action>,
    ) -> bool {
        let Some(task) = self.tasks.get(&tid) else { return false };
        let spec = task.spec.clone();
        if matches!(task.caller, Holder::Peer(_))
            || !matches!(spec.actor, ActorPart::None)
            || !self.peers.get(&peer).is_some_and(|p| p.has_room(&spec))
        {
            return false;
        }
        let Some(objects) = self.gather(&spec) else { return false };
        if let Some(p) = self.peers.get_mut(&peer) {
            p.sent(tid, spec.options.cpu_milli);
        }
        if let Some(t) = self.tasks.get_mut(&tid) {
            t.state = TaskState::Remote(peer);
            let seq = t.seq;
            note!(self, super::TaskEvent::Forwarded { seq, peer });
        }
        self.spill_to(peer, spec, objects, out);
        self.spread_done(tid);
        true
    }

    /// Whether any peer could ever run `spec` (for `unschedulable`).
    pub(super) fn peer_could_run(&self, spec: &TaskSpec) -> bool {
        self.peers.values().any(|p| fits_total(&p.view, spec))
    }

    /// Sends the task at the front of the ready queue to a peer with room, if it may go and one
    /// has room; true if it went.
    pub(super) fn try_spill(&mut self, tid: TaskId, out: &mut Vec<Action>) -> bool {
        if self.peers.is_empty() {
            return false;
        }
        let Some(spec) = self.tasks.get(&tid).map(|t| t.spec.clone()) else { return false };
        // A peer already keeping copies of its large arguments, if it can start it now.
        if let Some(peer) = self.peer_with_args(&spec) {
            if self.try_spill_to(tid, peer, out) {
                return true;
            }
        }
        // The least loaded peer (by what this node has sent there) that has room for it.
        let target = self
            .peers
            .iter()
            .filter(|(_, p)| p.has_room(&spec))
            .map(|(id, p)| {
                let load =
                    u64::from(p.inflight_cpu()) * 1000 / u64::from(p.view.cpu_total_milli.max(1));
                (load, std::cmp::Reverse(p.view.cpu_free_milli), *id)
            })
            .min()
            .map(|(_, _, id)| id);
        target.is_some_and(|peer| self.try_spill_to(tid, peer, out))
    }

    /// The peer with a free CPU for `spec` that keeps copies of the most bytes of its large
    /// arguments (see `PeerEntry::copies`), if any keeps some.
    fn peer_with_args(&self, spec: &TaskSpec) -> Option<NodeId> {
        let large: Vec<(ObjectId, u64)> = spec
            .deps
            .iter()
            .chain(spec.args.contained.iter())
            .filter_map(|id| match self.objects.get(id).map(|o| &o.state) {
                Some(ObjectState::Ready(v)) => v.shm.as_ref().map(|s| (*id, s.size)),
                _ => None,
            })
            .collect();
        if large.is_empty() {
            return None;
        }
        self.peers
            .iter()
            .filter(|(_, p)| {
                p.has_room(spec)
                    && p.inflight_cpu() + spec.options.cpu_milli <= p.view.cpu_total_milli
            })
            .map(|(id, p)| {
                let held: u64 =
                    large.iter().filter(|(o, _)| p.copies.contains(o)).map(|(_, n)| n).sum();
                (held, std::cmp::Reverse(*id))
            })
            .filter(|(held, _)| *held > 0)
            .max()
            .map(|(_, std::cmp::Reverse(id))| id)
    }

    /// The values a spilled task needs: its dependencies and every ref pickled inside its
    /// arguments, transitively. `None` if one is not ready here yet.
    pub(super) fn gather(&self, spec: &TaskSpec) -> Option<Vec<(ObjectId, Arc<ObjectData>)>> {
        gather_objects(&self.objects, spec, &|id| self.located_actor(id)).ok()
    }

    /// Whether `id` is the object of an actor whose node is known (a handle to it can travel
    /// before the actor is ready: the route is what the receiver needs).
    pub(super) fn located_actor(&self, id: &ObjectId) -> bool {
        id.index == 1
            && self
                .actors
                .get(&ActorId(id.task))
                .is_some_and(|a| a.remote.is_some() || a.worker.is_some())
    }

    /// Sends `spec` to `peer` with `objects` (and the function's bytes the first time).
    pub(super) fn spill_to(
        &mut self,
        peer: NodeId,
        spec: Arc<TaskSpec>,
        objects: Vec<(ObjectId, Arc<ObjectData>)>,
        out: &mut Vec<Action>,
    ) {
        let calls = matches!(spec.actor, ActorPart::Call(_));
        let first = !calls
            && self.peers.get_mut(&peer).is_some_and(|p| p.known_functions.insert(spec.function));
        let function = if first { self.functions.get(&spec.function).cloned() } else { None };
        let mut packages = Vec::new();
        if let (Some(env), Some(p)) = (&spec.options.runtime_env, self.peers.get_mut(&peer)) {
            for h in &env.packages {
                if let Some(bytes) = self.packages.get(h) {
                    if p.known_packages.insert(h.clone()) {
                        packages.push((h.clone(), bytes.clone()));
                    }
                }
            }
        }
        let routes = self.routes_for(&spec, &objects);
        let errors = self.failed_refs(&spec, &objects);
        let mut cached = Vec::new();
        let mut fetch = Vec::new();
        // Small values travel inline each time; large ones are pulled by the peer, once.
        let (large, objects): (Vec<_>, Vec<_>) =
            objects.into_iter().partition(|(_, v)| v.shm.is_some());
        for (id, v) in large {
            let Some(p) = self.peers.get_mut(&peer) else { break };
            if !p.copies.insert(id) {
                cached.push(id);
                continue;
            }
            let relay = self.pick_relay(peer, id);
            fetch.push((id, v, relay));
        }
        out.push(Action::Spill {
            peer,
            spec,
            function,
            objects,
            packages,
            routes,
            errors,
            cached,
            fetch,
        });
    }

    // ------------------------------------------------------------ pulling large values
    //
    // A task's large arguments do not travel with it: the peer pulls each one it has no copy of
    // (`Action::Pull`) from this node, or from a relay, a peer this node sent it to before that
    // keeps a copy. Each node holding the value serves at most as many pulls as the others
    // (this node first among equals), so sending a value to n nodes takes it out of this node's
    // uplink about twice and spreads the rest over the nodes that got it: a tree of fan-out
    // two. A relay still pulling it itself serves once its copy is whole (`serve_waits`); one
    // that cannot serve it sends the puller back to this node. Concurrent pulls of one value on
    // a node are one pull: tasks that need it wait for the pending object.

    /// Which node serves `target`'s pull of `id`: `None` for this one, else a relay. The first
    /// holder (this node, then relays by node id) serving fewer than `FANOUT` pulls; once all
    /// serve that many, the one serving fewest.
    fn pick_relay(&mut self, target: NodeId, id: ObjectId) -> Option<NodeId> {
        let counts = self.peers.fanout.entry(id).or_default();
        let relays = self
            .peers
            .nodes
            .iter()
            .filter(|(n, p)| **n != target && !p.view.driver && p.copies.contains(&id))
            .map(|(n, _)| Some(*n));
        let candidates: Vec<(u32, Option<NodeId>)> = std::iter::once(None)
            .chain(relays)
            .map(|c| (counts.get(&c).copied().unwrap_or(0), c))
            .collect();
        let choice = match candidates.iter().find(|(c, _)| *c < FANOUT) {
            Some((_, choice)) => *choice,
            None => candidates.iter().min_by_key(|(c, _)| *c).and_then(|(_, n)| *n),
        };
        *counts.entry(choice).or_default() += 1;
        choice
    }

    /// `peer` asks for the value `id` (it is pulling it): served from the store if it is here,
    /// once it is if this node is still pulling it, else refused so the peer asks elsewhere.
    pub fn peer_fetch(&mut self, peer: NodeId, id: ObjectId, link: bool, out: &mut Vec<Action>) {
        let value = match self.objects.get(&id).map(|o| &o.state) {
            Some(ObjectState::Ready(v)) if v.shm.is_some() => Ok(v.clone()),
            Some(ObjectState::Pending) => {
                self.peers.serve_waits.entry(id).or_default().push((peer, link));
                return;
            }
            Some(ObjectState::Ready(_)) => Err("its copy here is not in the store".to_string()),
            Some(ObjectState::Failed(e)) => Err(format!("it failed here: {}", e.message)),
            None => Err("this node does not hold it".to_string()),
        };
        out.push(Action::PeerServe { peer, id, value, link });
    }

    /// The value peers wait for (`peer_fetch`) is here, failed or gone: they get an answer.
    pub(super) fn serve_waiting(&mut self, id: ObjectId, out: &mut Vec<Action>) {
        for (peer, link) in self.peers.serve_waits.remove(&id).unwrap_or_default() {
            self.peer_fetch(peer, id, link, out);
        }
    }

    /// A large value was freed here: the peers keeping a copy of it may let it go.
    pub(super) fn drop_copies(&mut self, id: ObjectId, out: &mut Vec<Action>) {
        self.peers.fanout.remove(&id);
        for (peer, p) in self.peers.nodes.iter_mut() {
            if p.copies.remove(&id) {
                out.push(Action::PeerRelease { peer: *peer, ids: vec![id] });
            }
        }
    }

    /// Values `peer` sent with a task that this node keeps a copy of (see `PeerEntry::copies`).
    fn keep_copies(&mut self, peer: NodeId, ids: &[ObjectId]) {
        let mut keep = Vec::new();
        for id in ids {
            let large = self
                .objects
                .get(id)
                .is_some_and(|o| matches!(&o.state, ObjectState::Ready(v) if v.shm.is_some()));
            if large && self.peers.copies.entry(peer).or_default().insert(*id) {
                keep.push(*id);
            }
        }
        self.incref(Holder::Peer(peer), &keep);
    }

    /// The peer's copies kept here go (it let them go, or it is gone).
    pub(super) fn release_copies(
        &mut self,
        peer: NodeId,
        ids: Option<&[ObjectId]>,
        out: &mut Vec<Action>,
    ) {
        let Some(set) = self.peers.copies.get_mut(&peer) else { return };
        let gone: Vec<ObjectId> = match ids {
            Some(ids) => ids.iter().filter(|id| set.remove(id)).copied().collect(),
            None => set.drain().collect(),
        };
        if set.is_empty() {
            self.peers.copies.remove(&peer);
        }
        self.decref(Holder::Peer(peer), &gone, out);
    }

    /// The refs inside a task's arguments (and inside the values going with it) that hold
    /// errors: they go along, so the task sees the error rather than a lost object.
    fn failed_refs(
        &self,
        spec: &TaskSpec,
        objects: &[(ObjectId, Arc<ObjectData>)],
    ) -> Vec<(ObjectId, Arc<ErrorPayload>)> {
        let nested = objects.iter().flat_map(|(_, v)| v.contained.iter());
        let mut seen = HashSet::new();
        spec.args
            .contained
            .iter()
            .chain(nested)
            .filter(|id| seen.insert(**id))
            .filter_map(|id| match self.objects.get(id).map(|o| &o.state) {
                Some(ObjectState::Failed(e)) => Some((*id, e.clone())),
                _ => None,
            })
            .collect()
    }

    /// A task this node sent to `peer` ended there.
    pub fn peer_done(
        &mut self,
        peer: NodeId,
        tid: TaskId,
        result: TaskResult,
        objects: Vec<(ObjectId, ObjectData)>,
        out: &mut Vec<Action>,
    ) {
        if self.actors.get(&ActorId(tid)).is_some_and(|a| a.remote == Some(peer)) {
            self.adopt(objects);
            self.remote_actor_created(ActorId(tid), peer, result, out);
            self.schedule(out);
            return;
        }
        let Some(p) = self.peers.get_mut(&peer) else { return };
        if !p.back(&tid) {
            return;
        }
        if !matches!(self.tasks.get(&tid).map(|t| t.state), Some(TaskState::Remote(_))) {
            return;
        }
        self.adopt(objects);
        if let TaskResult::Ok(values) = &result {
            let named: Vec<ObjectId> = values.iter().flat_map(|v| v.contained.clone()).collect();
            self.placeholders(&named);
        }
        self.task_result(tid, result, out);
        self.schedule(out);
    }

    /// `peer` keeps copies of these large results of a task it ran for this node
    /// (`PeerMsg::Done::kept`): later tasks that need them may go there (`peer_with_args`), and
    /// other nodes may pull them from there (`pick_relay`). Those this node does not hold (any
    /// more) are let go at once. Called after `peer_done` of the same message.
    pub fn peer_kept(&mut self, peer: NodeId, ids: Vec<ObjectId>, out: &mut Vec<Action>) {
        let mut release = Vec::new();
        for id in ids {
            let held = matches!(
                self.objects.get(&id).map(|o| &o.state),
                Some(ObjectState::Ready(v)) if v.shm.is_some()
            );
            match self.peers.get_mut(&peer) {
                Some(p) if held => {
                    p.copies.insert(id);
                }
                Some(_) => release.push(id),
                None => return, // Gone: its copies went with it.
            }
        }
        if !release.is_empty() {
            out.push(Action::PeerRelease { peer, ids: release });
        }
    }

    /// Values that arrived from a peer become objects here, unless they already are. They are
    /// held by whatever holds the value that names them (`object_ready` counts that).
    fn adopt(&mut self, objects: Vec<(ObjectId, ObjectData)>) {
        let mut named = Vec::new();
        for (id, data) in objects {
            named.extend(data.contained.iter().copied());
            self.objects.insert_ready_if_new(id, Arc::new(data));
        }
        self.placeholders(&named);
    }

    /// Runs a task `peer` sent; its results go back with `Action::PeerDone`. (The arguments are
    /// the parts of `PeerMsg::Task`.)
    #[allow(clippy::too_many_arguments)]
    pub fn accept_peer_task(
        &mut self,
        peer: NodeId,
        spec: TaskSpec,
        function: Option<Arc<[u8]>>,
        objects: Vec<(ObjectId, ObjectData)>,
        routes: Vec<(ActorId, NodeId, String)>,
        errors: Vec<(ObjectId, ErrorPayload)>,
        cached: Vec<ObjectId>,
        fetch: Vec<(ObjectId, ObjectData, Option<NodeId>)>,
        out: &mut Vec<Action>,
    ) {
        let tid = spec.task_id;
        if self.tasks.contains_key(&tid) && !self.peers.from_peer.contains_key(&tid) {
            // Sent again (the peer retried it after we dropped it, thinking the peer gone)
            // while the attempt we cancelled still runs: its outcome must not answer this one.
            let t = PeerTask { peer, spec, function, objects, routes, errors, cached, fetch };
            self.peers.reruns.insert(tid, Box::new(t));
            return;
        }
        self.add_routes(routes);
        if let Some(f) = function {
            self.register_function(spec.function, f);
        }
        let mut ids: Vec<ObjectId> = objects.iter().map(|(id, _)| *id).collect();
        let holder = Holder::Peer(peer);
        let fresh: Vec<ObjectId> = ids.clone();
        if let Some(id) = cached.iter().find(|id| !self.objects.contains_key(id)) {
            // The copy was let go before this task arrived: it cannot run here.
            let name = spec.name.clone();
            let msg = format!("a value task '{name}' needs ({id:?}) was no longer kept here");
            let err = error(ErrorKind::ObjectLost, &name, msg);
            out.push(Action::PeerDone {
                peer,
                task: spec.task_id,
                result: Err(err),
                objects: Vec::new(),
                kept: Vec::new(),
                routes: Vec::new(),
            });
            return;
        }
        self.incref(holder, &cached);
        ids.extend(cached.iter().copied());
        ids.extend(errors.iter().map(|(id, _)| *id));
        // Every object the task brings exists before any value is settled: a value that names
        // another (a ref nested in it) holds that one from the moment it is ready, and a hold on
        // an object not made yet would be lost. (A large value nested in a small one was freed
        // with the small one at the task's end, though kept as the peer's copy: its next task
        // naming it as cached failed with ObjectLost.)
        let mut pulls = Vec::new();
        for (id, layout, relay) in fetch {
            // Held for the task, and kept as a copy; pulled unless here or on its way already.
            ids.push(id);
            if !self.objects.contains_key(&id) {
                self.new_object(id);
                pulls.push(Action::Pull { origin: peer, id, value: Arc::new(layout), relay });
            }
            self.incref(holder, &[id]);
            if self.peers.copies.entry(peer).or_default().insert(id) {
                self.incref(holder, &[id]);
            }
        }
        let values = objects.into_iter().map(|(id, v)| (id, Ok(v)));
        let mut settle = Vec::new();
        for (id, value) in values.chain(errors.into_iter().map(|(id, e)| (id, Err(e)))) {
            // Held for the task; the value (or error) if this node has none yet.
            if !self.objects.contains_key(&id) {
                self.new_object(id);
                settle.push((id, value));
            }
            self.incref(holder, &[id]);
        }
        for (id, value) in settle {
            match value {
                Ok(v) => self.object_ready(id, Arc::new(v), out),
                Err(e) => self.object_failed(id, Arc::new(e), out),
            }
        }
        self.keep_copies(peer, &fresh);
        out.extend(pulls);
        self.peers.from_peer.insert(tid, FromPeer { peer, objects: ids });
        if matches!(spec.actor, ActorPart::Create(_)) {
            self.accept_peer_actor(peer, spec, out);
        } else {
            self.submit(holder, spec, out);
        }
    }

    /// Called when a task's outcome is known: if a peer sent it, its results go back and what it
    /// held here is released.
    pub(super) fn report_to_peer(
        &mut self,
        tid: TaskId,
        spec: &TaskSpec,
        result: Result<Vec<Arc<ObjectData>>, Arc<ErrorPayload>>,
        out: &mut Vec<Action>,
    ) {
        let Some(f) = self.peers.from_peer.remove(&tid) else { return };
        let mut failed = Vec::new();
        let objects = match &result {
            Ok(values) => {
                let contained = values.iter().flat_map(|v| v.contained.iter().copied()).collect();
                self.ship_contained(f.peer, contained, &mut failed)
            }
            Err(_) => Vec::new(),
        };
        // Large results stay here as copies kept for the peer (held as the peer's until its
        // `Release`, like the values its tasks bring): its later tasks that need them can run
        // here without a transfer (`peer_with_args` there), and other nodes can pull them from
        // here. The other results are let go.
        let returns: Vec<ObjectId> = spec.return_ids().collect();
        let values: &[Arc<ObjectData>] = result.as_deref().unwrap_or_default();
        let kept: Vec<ObjectId> = returns
            .iter()
            .zip(values)
            .filter(|(id, v)| v.shm.is_some() && self.objects.contains_key(id))
            .map(|(id, _)| *id)
            .filter(|id| self.peers.copies.entry(f.peer).or_default().insert(*id))
            .collect();
        let released: Vec<ObjectId> = returns.into_iter().filter(|id| !kept.contains(id)).collect();
        // Actor handles among the results (and the values they name): where those actors
        // live, so that the peer's calls through them go there.
        let routes = match &result {
            Ok(values) if values.iter().any(|v| !v.contained.is_empty()) => {
                let named = values.iter().flat_map(|v| v.contained.iter());
                self.routes_of(named.chain(objects.iter().flat_map(|(_, v)| v.contained.iter())))
            }
            _ => Vec::new(),
        };
        out.push(Action::PeerDone { peer: f.peer, task: tid, result, objects, kept, routes });
        out.extend(failed);
        self.decref(Holder::Peer(f.peer), &released, out);
        self.release_from_peer(f, out);
    }

    /// The objects (transitively) named by `ids` for a peer that gets a value containing them:
    /// the ready ones to send along; each pending one is watched for `peer` and sent when it is
    /// ready (`forward_object`), held here until then.
    /// Failed or unknown ones go to `failed`, to send (after the value naming them) as errors.
    pub(super) fn ship_contained(
        &mut self,
        peer: NodeId,
        ids: Vec<ObjectId>,
        failed: &mut Vec<Action>,
    ) -> Vec<(ObjectId, Arc<ObjectData>)> {
        let mut objects = Vec::new();
        let mut seen = HashSet::new();
        let mut todo = ids;
        while let Some(id) = todo.pop() {
            if !seen.insert(id) || seen.len() > 4096 {
                continue;
            }
            let pending = match self.objects.get_mut(&id) {
                Some(o) => match &o.state {
                    ObjectState::Ready(v) => {
                        todo.extend(v.contained.iter().copied());
                        objects.push((id, v.clone()));
                        false
                    }
                    ObjectState::Pending => {
                        o.waiting().watchers.push(Holder::Peer(peer));
                        true
                    }
                    ObjectState::Failed(e) => {
                        let result = Err(e.clone());
                        failed.push(Action::PeerObject { peer, id, result, objects: Vec::new() });
                        false
                    }
                },
                None => {
                    let msg = format!("object {id:?} no longer exists on the node it came from");
                    let result = Err(error(ErrorKind::ObjectLost, "", msg));
                    failed.push(Action::PeerObject { peer, id, result, objects: Vec::new() });
                    false
                }
            };
            if pending {
                self.incref(Holder::Peer(peer), &[id]);
            }
        }
        objects
    }

    /// A pending object a peer was sent a reference to is ready (or failed): send it on.
    pub(super) fn forward_object(&mut self, peer: NodeId, id: ObjectId, out: &mut Vec<Action>) {
        let result = match self.objects.get(&id).map(|o| &o.state) {
            Some(ObjectState::Ready(v)) => Ok(v.clone()),
            Some(ObjectState::Failed(e)) => Err(e.clone()),
            _ => return,
        };
        let contained = result.as_ref().map(|v| v.contained.clone()).unwrap_or_default();
        let mut failed = Vec::new();
        let objects = self.ship_contained(peer, contained, &mut failed);
        out.push(Action::PeerObject { peer, id, result, objects });
        out.extend(failed);
        self.decref(Holder::Peer(peer), &[id], out);
    }

    /// An object this node holds a placeholder for arrived from `peer` (see `forward_object`).
    pub fn peer_object(
        &mut self,
        id: ObjectId,
        result: Result<ObjectData, ErrorPayload>,
        objects: Vec<(ObjectId, ObjectData)>,
        out: &mut Vec<Action>,
    ) {
        self.adopt(objects);
        if id.index >= 2 && self.streams.contains(&{ id.task }) {
            if let Ok(v) = result {
                self.peer_stream_item(id, v, out);
            }
            return;
        }
        if !matches!(self.objects.get(&id).map(|o| &o.state), Some(ObjectState::Pending)) {
            return;
        }
        match result {
            Ok(v) => {
                self.placeholders(&v.contained);
                self.object_ready(id, Arc::new(v), out);
            }
            Err(e) => self.object_failed(id, Arc::new(e), out),
        }
        self.schedule(out);
    }

    /// Pending entries for refs named in a value from a peer that this node has not got: the
    /// peer sends each once it is ready.
    pub(super) fn placeholders(&mut self, ids: &[ObjectId]) {
        for id in ids {
            if !self.objects.contains_key(id) {
                self.new_object(*id);
            }
        }
    }

    pub(super) fn release_from_peer(&mut self, f: FromPeer, out: &mut Vec<Action>) {
        self.decref(Holder::Peer(f.peer), &f.objects, out);
    }
}

/// Whether the peer has, in total, what the task asks for.
pub(super) fn fits_total(v: &PeerView, spec: &TaskSpec) -> bool {
    spec.options.cpu_milli <= v.cpu_total_milli
        && spec
            .options
            .resources
            .iter()
            .all(|(r, a)| v.resources.iter().any(|(name, total, _)| name == r && total >= a))
}

/// Whether the peer could ever host `spec` (an actor): it runs work (not a driver's node) and
/// has what it asks for.
pub(super) fn could_host(v: &PeerView, spec: &TaskSpec) -> bool {
    !v.driver && fits_total(v, spec)
}

/// Whether the peer had, at its last heartbeat, what the task asks for free.
pub(super) fn fits_free(v: &PeerView, spec: &TaskSpec) -> bool {
    spec.options.cpu_milli <= v.cpu_free_milli
        && spec
            .options
            .resources
            .iter()
            .all(|(r, a)| v.resources.iter().any(|(name, _, free)| name == r && free >= a))
}

/// The values a task needs (see `Scheduler::gather`), or the first one still being made.
/// `skip` says which pending ones may stay behind.
pub(super) fn gather_objects(
    table: &super::objects::Objects,
    spec: &TaskSpec,
    skip: &dyn Fn(&ObjectId) -> bool,
) -> Result<Vec<(ObjectId, Arc<ObjectData>)>, ObjectId> {
    let mut seen = HashSet::new();
    let mut todo: Vec<(ObjectId, usize)> =
        spec.deps.iter().chain(spec.args.contained.iter()).map(|id| (*id, 0)).collect();
    let mut objects = Vec::new();
    while let Some((id, depth)) = todo.pop() {
        if !seen.insert(id) || depth > MAX_SHIP_DEPTH {
            continue;
        }
        match table.get(&id).map(|o| &o.state) {
            Some(ObjectState::Ready(v)) => {
                todo.extend(v.contained.iter().map(|c| (*c, depth + 1)));
                objects.push((id, v.clone()));
            }
            // A failed dependency fails the task before it is runnable; a failed or unknown
            // nested ref is the task's to find out.
            Some(ObjectState::Failed(_)) | None => {}
            Some(ObjectState::Pending) if skip(&id) => {}
            Some(ObjectState::Pending) => return Err(id),
        }
    }
    Ok(objects)
}

#[cfg(test)]
mod tests {
    use super::super::harness::task_spec;
    use super::*;

    fn rerun(n: u128) -> Box<PeerTask> {
        let options = Default::default();
        let spec = task_spec(TaskId(n), FunctionId([1; 16]), "t", options, ActorPart::None);
        let (objects, routes, errors, cached, fetch) = (vec![], vec![], vec![], vec![], vec![]);
        let peer = NodeId(2);
        Box::new(PeerTask { peer, spec, function: None, objects, routes, errors, cached, fetch })
    }

    #[test]
    fn a_rerun_is_handed_back_once_the_attempt_before_it_ended() {
        let mut p = Peers::default();
        p.reruns.insert(TaskId(1), rerun(1));
        assert!(p.next_ended_rerun().is_none(), "the earlier attempt still runs");
        p.task_ended(TaskId(5)); // No rerun waits for it.
        p.task_ended(TaskId(1));
        assert_eq!(p.next_ended_rerun().map(|t| t.spec.task_id), Some(TaskId(1)));
        assert!(p.next_ended_rerun().is_none());
    }

    #[test]
    fn tasks_and_actor_references_of_peers_are_tracked_per_peer() {
        let mut p = Peers::default();
        assert!(!p.has_tasks_from_peers() && p.is_empty() && p.node_id().is_none());
        p.from_peer.insert(TaskId(1), FromPeer { peer: NodeId(3), objects: vec![] });
        assert!(p.has_tasks_from_peers() && p.is_from_peer(&TaskId(1)));
        assert_eq!(p.sender_of(&TaskId(1)), Some(NodeId(3)));
        assert_eq!(p.take_from_peer(&TaskId(1)).map(|f| f.peer), Some(NodeId(3)));
        assert!(!p.has_tasks_from_peers());
        let obj = ObjectId::for_return(TaskId(7), 1);
        p.hold_actor_ref(NodeId(3), obj);
        p.hold_actor_ref(NodeId(3), obj);
        assert_eq!(p.actor_refs_mut(&NodeId(3)).map(|v| v.len()), Some(2));
        assert_eq!(p.take_actor_refs(&NodeId(3)), vec![obj, obj]);
        assert!(p.take_actor_refs(&NodeId(3)).is_empty());
    }
}
