//! Actors: a class instance living in a dedicated worker process.
//!
//! An actor is created like a task whose function is the class. Once its dependencies are ready
//! and its resources free, it gets a worker of its own (never used for pool tasks) and holds its
//! resources until it dies for good. The creation's return object stands for the actor: every
//! handle holds a reference to it, so when the last handle (in any process) is gone and no call
//! is pending, the actor is stopped; a name or `detached` holds one more reference.
//!
//! Calls are queued per caller, in submission order; the head of a caller's queue goes to the
//! actor's process once its arguments are ready, so one caller's calls arrive in order while
//! different callers interleave. When the process dies, the actor is recreated (`__init__` again,
//! with the same arguments) up to `max_restarts` times and calls in flight are sent again up to
//! `max_task_retries` times; otherwise they fail with `ActorDied`.

use super::remote_actors::Affinity;
use super::workers::Workers;
use super::*;
use std::collections::HashSet;
use volley_proto::{ActorInfo, ActorOptions};

/// Why an actor could not be created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActorError {
    #[error("an actor named '{name}' already exists in namespace '{namespace}'")]
    NameTaken { name: String, namespace: String },
    #[error("{0}")]
    Unschedulable(String),
    #[error("actor class '{0}' was not registered with this node")]
    UnknownClass(String),
    #[error("not an actor creation")]
    NotACreation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Life {
    /// Waiting for its arguments or its resources.
    Pending,
    /// Its process is starting or running `__init__`.
    Starting,
    Alive,
    /// Its process died; a new one is starting.
    Restarting,
    Dead,
}

pub(super) struct ActorEntry {
    pub(super) create: Arc<TaskSpec>,
    pub(super) caller: Holder,
    pub(super) life: Life,
    /// Its arguments are ready (it is in `pending_actors` or started).
    pub(super) runnable: bool,
    pub(super) worker: Option<WorkerId>,
    pub(super) pid: u32,
    pub(super) holds_resources: bool,
    pub(super) restarts: u32,
    /// Calls not yet sent to the process, per caller, in submission order.
    pub(super) callers: HashMap<Holder, VecDeque<TaskId>>,
    pub(super) death: Option<Arc<ErrorPayload>>,
    /// `volley.kill` was called: `Some(no_restart)`.
    pub(super) kill_requested: Option<bool>,
    /// No handle is left anywhere.
    pub(super) unreferenced: bool,
    /// Being stopped because no handle is left; removed once its process is gone.
    pub(super) stopping: bool,
    pub(super) args_released: bool,
    /// The peer node it runs on, if not here (see `remote_actors`).
    pub(super) remote: Option<NodeId>,
    /// The GPUs (indices) it holds.
    pub(super) gpus: Vec<u32>,
    /// Only a route to an actor another node created (see `remote_actors`): calls go to
    /// `remote`, nothing else does.
    pub(super) proxy: bool,
    /// Restarts on the node that hosts it (reported by that node).
    pub(super) peer_restarts: u32,
    /// (A proxy) since when no node of the cluster lists it, and whether calls wait here
    /// because `remote` cannot take them (see `reroute_proxies`).
    pub(super) unlisted_since: Option<u64>,
    pub(super) calls_held: bool,
}

fn opts(spec: &TaskSpec) -> &ActorOptions {
    static DEFAULT: std::sync::OnceLock<ActorOptions> = std::sync::OnceLock::new();
    match &spec.actor {
        ActorPart::Create(o) => o,
        _ => DEFAULT.get_or_init(ActorOptions::default),
    }
}

pub(super) fn limit(n: i32) -> String {
    if n < 0 {
        "unlimited".into()
    } else {
        n.to_string()
    }
}

impl ActorEntry {
    /// A new actor from its creation spec, waiting for its arguments.
    pub(super) fn new(create: Arc<TaskSpec>, caller: Holder) -> Self {
        ActorEntry {
            create,
            caller,
            life: Life::Pending,
            runnable: false,
            worker: None,
            pid: 0,
            holds_resources: false,
            restarts: 0,
            callers: HashMap::new(),
            death: None,
            kill_requested: None,
            unreferenced: false,
            stopping: false,
            args_released: false,
            remote: None,
            gpus: Vec::new(),
            proxy: false,
            peer_restarts: 0,
            unlisted_since: None,
            calls_held: false,
        }
    }

    pub(super) fn opts(&self) -> &ActorOptions {
        opts(&self.create)
    }

    pub(super) fn class(&self) -> &str {
        &self.opts().class_name
    }

    /// `caller` made call `tid`: it goes after that caller's earlier calls.
    pub(super) fn queue_call(&mut self, caller: Holder, tid: TaskId) {
        self.callers.entry(caller).or_default().push_back(tid);
    }

    /// Call `tid` of `caller` goes back to the head of that caller's queue (it was given back
    /// unstarted, or is sent again).
    pub(super) fn requeue_call(&mut self, caller: Holder, tid: TaskId) {
        self.callers.entry(caller).or_default().push_front(tid);
    }

    /// Takes call `tid` of `caller` out of its queue (it failed before it was sent).
    pub(super) fn drop_call(&mut self, caller: Holder, tid: TaskId) {
        if let Some(q) = self.callers.get_mut(&caller) {
            if let Some(pos) = q.iter().position(|t| *t == tid) {
                q.remove(pos);
            }
        }
    }

    fn keeps_itself(&self) -> bool {
        self.opts().name.is_some() || self.opts().detached
    }

    fn idle(&self, workers: &Workers) -> bool {
        self.callers.values().all(|q| q.is_empty())
            && self.worker.and_then(|w| workers.get(&w)).is_none_or(|w| w.queue.is_empty())
    }
}

/// The actors this node knows (its own, those it hosts for peers, routes to others'), with
/// their names, those waiting to start, and calls held back for an argument being made.
#[derive(Default)]
pub(super) struct Actors {
    map: HashMap<ActorId, ActorEntry>,
    /// (namespace, name) of named actors.
    names: HashMap<(String, String), ActorId>,
    /// Actors ready to start, waiting for resources, in creation order.
    pending: VecDeque<ActorId>,
    /// Actors with a call held back for a ref in its arguments still being made (to go to a
    /// peer, a call carries the values of those refs): dispatched again once it is ready.
    gather_waits: HashMap<ObjectId, Vec<ActorId>>,
    /// Calls a peer sent for an actor this node has not heard of yet, with the time (ms) they
    /// give up: the node that placed the actor here sent its creation on another connection, and
    /// a call from a third node that got the handle meanwhile can arrive first. Queued when the
    /// creation comes (`create_actor`), failed at the deadline (`expire_early_calls`).
    early_calls: HashMap<ActorId, Vec<(Holder, TaskId, u64)>>,
    /// Actors this node forgot lately, oldest first (at most `FORGOTTEN`): a peer's call for
    /// one of them fails at once instead of waiting for a creation that came long ago.
    forgotten: VecDeque<ActorId>,
    forgotten_set: HashSet<ActorId>,
}

/// How long a peer's call for an actor not created here yet waits for the creation (ms).
pub(super) const EARLY_CALL_WAIT_MS: u64 = 10_000;
/// How many forgotten actors `Actors` remembers as gone.
const FORGOTTEN: usize = 4096;

// `remove` forgets an actor; its name and place in the start queue are dropped when it dies
// (`unname`, `unpend`).
table_access!(Actors.map: ActorId => ActorEntry);

impl Actors {
    /// How many calls actor `aid`'s process runs at once (1 if it is unknown): the calls in its
    /// worker's queue beyond that wait, and `stats` counts them as waiting.
    pub(super) fn concurrency(&self, aid: ActorId) -> usize {
        self.map.get(&aid).map_or(1, |a| a.opts().max_concurrency.max(1) as usize)
    }

    pub(super) fn insert(&mut self, aid: ActorId, a: ActorEntry) {
        self.map.insert(aid, a);
    }

    /// The actor of this node named `key` (namespace, name), if any.
    pub(super) fn named(&self, key: &(String, String)) -> Option<ActorId> {
        self.names.get(key).copied()
    }

    pub(super) fn name(&mut self, key: (String, String), aid: ActorId) {
        self.names.insert(key, aid);
    }

    /// Drops the name `key` if it still names `aid` (a new actor may have taken it since).
    pub(super) fn unname(&mut self, key: &(String, String), aid: ActorId) {
        if self.names.get(key) == Some(&aid) {
            self.names.remove(key);
        }
    }

    /// Queues an actor to start once its resources are free.
    pub(super) fn push_pending(&mut self, aid: ActorId) {
        self.pending.push_back(aid);
    }

    pub(super) fn pop_pending(&mut self) -> Option<ActorId> {
        self.pending.pop_front()
    }

    /// Replaces the start queue (with those still waiting after a pass over it).
    pub(super) fn set_pending(&mut self, waiting: VecDeque<ActorId>) {
        self.pending = waiting;
    }

    pub(super) fn no_pending(&self) -> bool {
        self.pending.is_empty()
    }

    pub(super) fn is_pending(&self, aid: &ActorId) -> bool {
        self.pending.contains(aid)
    }

    /// Actors waiting to start, in creation order.
    pub(super) fn pending(&self) -> impl Iterator<Item = &ActorId> {
        self.pending.iter()
    }

    pub(super) fn unpend(&mut self, aid: ActorId) {
        self.pending.retain(|x| *x != aid);
    }

    /// A peer's call `tid` for `aid`, which this node does not know yet: held until `deadline`.
    pub(super) fn hold_early_call(
        &mut self,
        aid: ActorId,
        caller: Holder,
        tid: TaskId,
        deadline: u64,
    ) {
        self.early_calls.entry(aid).or_default().push((caller, tid, deadline));
    }

    /// The calls held for `aid`, now that it is created here, in their order of arrival.
    pub(super) fn take_early_calls(&mut self, aid: ActorId) -> Vec<(Holder, TaskId, u64)> {
        if self.early_calls.is_empty() {
            return Vec::new();
        }
        self.early_calls.remove(&aid).unwrap_or_default()
    }

    /// The held calls whose wait ended by `now` (taken out), with their actors.
    pub(super) fn expired_early_calls(&mut self, now: u64) -> Vec<(ActorId, TaskId)> {
        let mut due = Vec::new();
        self.early_calls.retain(|aid, calls| {
            calls.retain(|&(_, tid, deadline)| {
                let over = deadline <= now;
                if over {
                    due.push((*aid, tid));
                }
                !over
            });
            !calls.is_empty()
        });
        due
    }

    /// Remembers that `aid` was forgotten (see `forgotten`).
    fn remember_forgotten(&mut self, aid: ActorId) {
        if self.forgotten_set.insert(aid) {
            self.forgotten.push_back(aid);
            if self.forgotten.len() > FORGOTTEN {
                if let Some(old) = self.forgotten.pop_front() {
                    self.forgotten_set.remove(&old);
                }
            }
        }
    }

    /// Whether this node knew `aid` once and forgot it lately.
    pub(super) fn was_forgotten(&self, aid: &ActorId) -> bool {
        self.forgotten_set.contains(aid)
    }

    /// `aid` holds a call back until `id` is made.
    pub(super) fn wait_gather(&mut self, id: ObjectId, aid: ActorId) {
        self.gather_waits.entry(id).or_default().push(aid);
    }

    /// The actors that held a call back for `id`, now that it is made.
    pub(super) fn take_gather(&mut self, id: &ObjectId) -> Option<Vec<ActorId>> {
        if self.gather_waits.is_empty() {
            return None;
        }
        self.gather_waits.remove(id)
    }
}

impl Scheduler {
    /// Creates an actor from `spec` (its `actor` is `Create`); `holder` gets a reference to the
    /// actor's object. With a name that is taken and `get_if_exists`, returns that actor
    /// (`false`: not created).
    pub fn create_actor(
        &mut self,
        holder: Holder,
        spec: TaskSpec,
        out: &mut Vec<Action>,
    ) -> Result<(ActorId, bool), ActorError> {
        let ActorPart::Create(o) = &spec.actor else {
            return Err(ActorError::NotACreation);
        };
        if let Some(name) = &o.name {
            let key = (o.namespace.clone(), name.clone());
            let local = self.actors.named(&key);
            // Another node's actor of that name (a creation a peer sent was checked there).
            let remote = match (local, holder) {
                (None, Holder::Local | Holder::Worker(_)) => self.cluster_named(&o.namespace, name),
                _ => None,
            };
            if let Some(existing) = local.or(remote.as_ref().map(|r| r.actor)) {
                if o.get_if_exists {
                    if let Some(r) = remote {
                        self.add_named_route(&r);
                    }
                    self.incref(holder, &[existing.object()]);
                    return Ok((existing, false));
                }
                return Err(ActorError::NameTaken {
                    name: name.clone(),
                    namespace: o.namespace.clone(),
                });
            }
        }
        // Placed across the cluster from any node; one a peer sent stays here.
        let placeable = !matches!(holder, Holder::Peer(_));
        if let Some(msg) = self.unschedulable_where(&spec, placeable) {
            return Err(ActorError::Unschedulable(msg));
        }
        if !self.functions.contains(&spec.function) {
            return Err(ActorError::UnknownClass(o.class_name.clone()));
        }
        let aid = ActorId(spec.task_id);
        let name = o.name.clone().map(|n| (o.namespace.clone(), n));
        let keep = name.is_some() || o.detached;
        let spec = self.insert_task(holder, spec);
        if keep {
            self.incref_one(aid.object());
        }
        if let Some(key) = name {
            self.actors.name(key, aid);
        }
        self.actors.insert(aid, ActorEntry::new(spec, holder));
        note!(self, TaskEvent::Actor { actor: aid });
        self.resolve_deps(aid.0, out);
        for (caller, tid, _) in self.actors.take_early_calls(aid) {
            // Not if it ended meanwhile (cancelled, or its peer gone).
            if self.tasks.contains_key(&tid) {
                self.queue_actor_call(aid, caller, tid, out);
            }
        }
        Ok((aid, true))
    }

    /// A call a peer sent for an actor this node does not know: held for the actor's creation,
    /// unless this node knew that actor once (it is gone) or it is not a peer's.
    pub(super) fn held_for_creation(&mut self, aid: ActorId, caller: Holder, tid: TaskId) -> bool {
        if !matches!(caller, Holder::Peer(_))
            || self.actors.contains_key(&aid)
            || self.actors.was_forgotten(&aid)
        {
            return false;
        }
        let deadline = self.now_ms + EARLY_CALL_WAIT_MS;
        self.actors.hold_early_call(aid, caller, tid, deadline);
        true
    }

    /// Fails the peers' calls that waited `EARLY_CALL_WAIT_MS` for an actor never created here.
    pub(super) fn expire_early_calls(&mut self, out: &mut Vec<Action>) {
        for (aid, tid) in self.actors.expired_early_calls(self.now_ms) {
            let Some(name) = self.tasks.get(&tid).map(|t| t.spec.name.to_string()) else {
                continue;
            };
            let msg = format!(
                "call '{name}' names actor {aid:?}, which this node never created: its creation \
                 did not arrive within {} s (it failed, or its handle was forged)",
                EARLY_CALL_WAIT_MS / 1000
            );
            self.fail_task(tid, error(ErrorKind::ActorDied, &name, msg), out);
        }
    }

    /// The handle metadata the actor was created with.
    pub fn actor_meta(&self, aid: ActorId) -> Option<Vec<u8>> {
        self.actors.get(&aid).map(|a| a.opts().meta.clone())
    }

    /// A live named actor and its handle metadata: one of this node's, else one another node
    /// of the cluster hosts (calls made here then go there).
    pub fn lookup_actor(&mut self, name: &str, namespace: &str) -> Option<(ActorId, Vec<u8>)> {
        let key = (namespace.to_string(), name.to_string());
        if let Some(aid) = self.actors.named(&key) {
            if let Some(a) = self.actors.get(&aid).filter(|a| a.life != Life::Dead) {
                return Some((aid, a.opts().meta.clone()));
            }
        }
        let n = self.cluster_named(namespace, name)?;
        if self.known_dead(n.actor) {
            return None;
        }
        self.add_named_route(&n);
        Some((n.actor, n.meta))
    }

    /// This node saw the actor die for good (killed, or out of restarts): a directory that
    /// still lists it (until its node's next heartbeat) must not hand out a new handle to it.
    pub(super) fn known_dead(&self, actor: ActorId) -> bool {
        self.actors.get(&actor).is_some_and(|a| a.life == Life::Dead)
    }

    /// A named actor the cluster's head lists on another node: a route to it, and a reference
    /// for `holder`'s new handle. `None` if the head lists it on this node (it died meanwhile:
    /// this node's own names are answered by `lookup_actor`) or this node saw it die for good.
    pub fn route_named(
        &mut self,
        holder: Holder,
        n: &volley_proto::NamedActor,
    ) -> Option<(ActorId, Vec<u8>)> {
        if Some(n.node) == self.peers.node_id() || self.known_dead(n.actor) {
            return None;
        }
        self.add_named_route(n);
        self.incref(holder, &[n.actor.object()]);
        Some((n.actor, n.meta.clone()))
    }

    /// A proxy entry for a named actor another node hosts (with its handles' metadata).
    fn add_named_route(&mut self, n: &volley_proto::NamedActor) {
        self.add_routes(vec![(n.actor, n.node, n.class.clone())]);
        if let Some(a) = self.actors.get_mut(&n.actor).filter(|a| a.proxy) {
            if let ActorPart::Create(o) = &mut Arc::make_mut(&mut a.create).actor {
                o.meta = n.meta.clone();
            }
        }
    }

    /// A named actor the cluster's directory lists (the earliest node's, if two claim a name).
    fn cluster_named(&self, namespace: &str, name: &str) -> Option<volley_proto::NamedActor> {
        self.peers
            .values()
            .flat_map(|p| p.view.named.iter())
            .find(|n| !n.name.is_empty() && n.name == name && n.namespace == namespace)
            .cloned()
    }

    /// Named actors this node hosts (for the cluster's directory).
    pub fn named_actors(&self) -> Vec<volley_proto::NamedActor> {
        let mut v: Vec<volley_proto::NamedActor> =
            self.actors.iter().filter_map(|(aid, a)| self.listing(*aid, a)).collect();
        v.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        v
    }

    /// Actor `aid`'s entry for the head if it has a name and this node created it: what this
    /// node reports as the creation returns, before a heartbeat lists it. Its `node` is where
    /// it runs: this node, or the peer it was placed on (whose heartbeats list it later).
    pub fn named_entry(&self, aid: ActorId) -> Option<volley_proto::NamedActor> {
        let a = self.actors.get(&aid)?;
        let entry = match a.remote {
            Some(peer) if !a.proxy && a.life != Life::Dead => Self::entry_at(aid, a, peer),
            _ => self.listing(aid, a),
        };
        entry.filter(|n| !n.name.is_empty())
    }

    /// The directory's entry for actor `aid` if this node hosts it and it has a name or is
    /// detached.
    fn listing(&self, aid: ActorId, a: &ActorEntry) -> Option<volley_proto::NamedActor> {
        if a.proxy || a.remote.is_some() || a.life == Life::Dead {
            return None;
        }
        Self::entry_at(aid, a, self.peers.node_id().unwrap_or(NodeId(0)))
    }

    /// Actor `aid`'s directory entry as running on `node`, if it has a name or is detached.
    fn entry_at(aid: ActorId, a: &ActorEntry, node: NodeId) -> Option<volley_proto::NamedActor> {
        let o = a.opts();
        // A detached actor without a name is listed too, with an empty name (the head keeps
        // named ones only): `volley status` showed it nowhere.
        let name = o.name.clone().or_else(|| o.detached.then(String::new))?;
        Some(volley_proto::NamedActor {
            namespace: o.namespace.clone(),
            name,
            actor: aid,
            node,
            class: o.class_name.clone(),
            meta: o.meta.clone(),
        })
    }

    /// State of an actor, for users.
    pub fn actor_info(&self, aid: ActorId) -> Option<ActorInfo> {
        let a = self.actors.get(&aid)?;
        let state = match a.life {
            Life::Pending => "PENDING",
            Life::Starting => "STARTING",
            Life::Alive => "ALIVE",
            Life::Restarting => "RESTARTING",
            Life::Dead => "DEAD",
        };
        let queued: usize = a.callers.values().map(|q| q.len()).sum();
        let running = a.worker.and_then(|w| self.workers.get(&w)).map_or(0, |w| w.queue.len());
        Some(ActorInfo {
            state: state.into(),
            restarts: a.restarts + a.peer_restarts,
            pid: if a.life == Life::Dead { 0 } else { a.pid },
            class_name: a.class().to_string(),
            name: a.opts().name.clone(),
            namespace: a.opts().namespace.clone(),
            death: a.death.as_ref().map(|e| e.message.clone()),
            pending_calls: (queued + running) as u32,
        })
    }

    /// Kills the actor's process (SIGKILL). With `no_restart` it dies for good; otherwise it is
    /// restarted if `max_restarts` allows.
    pub fn kill_actor(&mut self, aid: ActorId, no_restart: bool, out: &mut Vec<Action>) {
        self.kill_actor_for(aid, no_restart, "it was killed with volley.kill()", out);
    }

    /// Kills an actor's process; `why` tells callers why it is dead (with `no_restart`).
    pub(super) fn kill_actor_for(
        &mut self,
        aid: ActorId,
        no_restart: bool,
        why: &str,
        out: &mut Vec<Action>,
    ) {
        let Some(a) = self.actors.get_mut(&aid) else {
            return;
        };
        if a.life == Life::Dead {
            return;
        }
        a.kill_requested = Some(no_restart);
        if let Some(peer) = a.remote {
            out.push(Action::PeerKill { peer, actor: aid, no_restart });
            a.kill_requested = None; // The peer restarts it (or not); we hear only of its death.
        }
        if let Some(w) = a.worker {
            self.workers.doom(w);
            out.push(Action::Kill { worker: w });
            // Nothing more goes to the doomed process.
            if a.life == Life::Alive {
                a.life = Life::Restarting;
            }
            note!(self, TaskEvent::Actor { actor: aid });
        }
        if no_restart {
            // Dead from now on: later calls fail at once, calls in flight when it exits.
            let msg = format!("actor '{}' is dead: {why}", a.class());
            let err = error(ErrorKind::ActorDied, a.class(), msg);
            self.actor_dead(aid, err, out);
        }
    }

    /// Whether a call may be queued on `aid`: the error it fails with otherwise.
    pub(super) fn actor_accepts(&self, aid: ActorId, call: &str) -> Result<(), Arc<ErrorPayload>> {
        match self.actors.get(&aid) {
            None => Err(error(
                ErrorKind::ActorDied,
                call,
                format!(
                    "call '{call}' names an actor that no longer exists (it was killed, or every \
                     handle to it was dropped)"
                ),
            )),
            Some(a) => match &a.death {
                Some(e) if a.life == Life::Dead => {
                    let mut e = (**e).clone();
                    e.task_name = call.to_string();
                    Err(Arc::new(e))
                }
                _ => Ok(()),
            },
        }
    }

    /// Starts actors whose resources are free, in creation order.
    pub(super) fn start_actors(&mut self, out: &mut Vec<Action>) {
        let mut waiting = VecDeque::new();
        while let Some(aid) = self.actors.pop_pending() {
            let Some(a) = self.actors.get(&aid) else { continue };
            if a.life != Life::Pending || a.stopping {
                continue;
            }
            if let Some(why) = self.pg_removed(&a.create) {
                let err = error(ErrorKind::ActorCreation, a.class(), why);
                self.actor_dead(aid, err, out);
                continue;
            }
            // An actor a peer sent starts here: work never moves on from the node it was sent to.
            let placed = matches!(a.caller, Holder::Peer(_));
            let affinity = if placed { Affinity::Here } else { self.actor_affinity(&a.create) };
            match affinity {
                Affinity::Peer(peer) => {
                    self.start_remote_actor(aid, peer, out);
                    continue;
                }
                Affinity::Impossible(why) => {
                    let err = error(ErrorKind::ActorCreation, a.class(), why);
                    self.actor_dead(aid, err, out);
                    continue;
                }
                Affinity::Here => {}
                Affinity::Any => {
                    if let Some(peer) = self.actor_peer(aid) {
                        self.start_remote_actor(aid, peer, out);
                        continue;
                    }
                }
            }
            let Some(a) = self.actors.get(&aid) else { continue };
            let cpu = a.create.options.cpu_milli;
            let res = a.create.options.resources.clone();
            if !self.res.fits(cpu, &res) {
                waiting.push_back(aid);
                continue;
            }
            self.spread_done(aid.0);
            self.res.take_cpu(cpu);
            let gpus = self.acquire_res(&res);
            let w = self.spawn_for(Some(aid), out);
            if let Some(a) = self.actors.get_mut(&aid) {
                a.gpus = gpus;
                a.holds_resources = true;
                a.life = Life::Starting;
                a.worker = Some(w);
                note!(self, TaskEvent::Actor { actor: aid });
            }
        }
        self.actors.set_pending(waiting);
    }

    /// The actor's new process connected: run `__init__` there.
    pub(super) fn actor_worker_connected(
        &mut self,
        aid: ActorId,
        wid: WorkerId,
        pid: u32,
        out: &mut Vec<Action>,
    ) {
        let Some(a) = self.actors.get_mut(&aid) else {
            self.workers.doom(wid);
            out.push(Action::Kill { worker: wid });
            return;
        };
        if a.worker != Some(wid) || a.life == Life::Dead {
            self.workers.doom(wid);
            out.push(Action::Kill { worker: wid });
            return;
        }
        a.pid = pid;
        note!(self, TaskEvent::Actor { actor: aid });
        let entry = TaskEntry {
            spec: a.create.clone(),
            state: TaskState::Queued,
            attempts: a.restarts,
            cancel: None,
            caller: a.caller,
            queued_at: 0,
            seq: 0,
        };
        self.tasks.insert(aid.0, entry);
        self.assign(wid, aid.0, out);
    }

    /// Sends the runnable heads of the callers' queues to the actor's process.
    pub(super) fn dispatch_actor(&mut self, aid: ActorId, out: &mut Vec<Action>) {
        let tasks = &self.tasks;
        let Some(a) = self.actors.get_mut(&aid) else {
            return;
        };
        if let Some(peer) = a.remote.filter(|_| a.life == Life::Alive) {
            if a.proxy && !self.peers.takes_calls(peer) {
                // Its route names a node this one cannot send to: a driver's node (its
                // creator, where it waits for its arguments), or one not in this node's view
                // yet. The calls wait here for a node that can take them
                // (`reroute_proxies`).
                a.calls_held = true;
                return;
            }
            return self.dispatch_remote(aid, peer, out);
        }
        let Some(w) = a.worker.filter(|_| a.life == Life::Alive) else {
            return;
        };
        let mut todo = Vec::new();
        for q in a.callers.values_mut() {
            while let Some(t) = q.front() {
                match tasks.get(t).map(|t| t.state) {
                    Some(TaskState::Queued) => todo.push(q.pop_front()),
                    None => {
                        q.pop_front();
                    }
                    Some(_) => break,
                }
            }
        }
        for t in todo.into_iter().flatten() {
            self.assign(w, t, out);
        }
    }

    /// `__init__` finished (`Ok`) or raised.
    pub(super) fn actor_created(
        &mut self,
        aid: ActorId,
        wid: WorkerId,
        result: TaskResult,
        out: &mut Vec<Action>,
    ) {
        let Some(a) = self.actors.get_mut(&aid) else {
            return;
        };
        if a.worker != Some(wid) || a.stopping || a.life == Life::Dead {
            return;
        }
        match result {
            TaskResult::Ok(mut values) if values.len() == 1 => {
                a.life = Life::Alive;
                note!(self, TaskEvent::Actor { actor: aid });
                let restarted = a.restarts;
                if restarted > 0 {
                    let msg = format!(
                        "volley: actor '{}' was restarted (restart {} of {}, new pid {})",
                        a.class(),
                        restarted,
                        limit(a.opts().max_restarts),
                        a.pid
                    );
                    out.push(Action::Log(msg));
                }
                self.tell_creator(aid, None, out);
                let obj = aid.object();
                if matches!(self.objects.get(&obj).map(|o| &o.state), Some(ObjectState::Pending)) {
                    let v = values.pop().unwrap_or_default();
                    self.object_ready(obj, Arc::new(v), out);
                }
                self.dispatch_actor(aid, out);
            }
            TaskResult::Ok(_) => {
                let msg = format!("actor '{}': __init__ returned a malformed result", a.class());
                let err = error(ErrorKind::ActorCreation, a.class(), msg);
                self.actor_dead(aid, err, out);
            }
            TaskResult::Err { mut error, .. } => {
                if error.kind == ErrorKind::TaskException {
                    error.kind = ErrorKind::ActorCreation;
                }
                error.task_name = format!("{}.__init__", a.class());
                self.actor_dead(aid, Arc::new(error), out);
            }
        }
        self.report_creation(aid, out);
    }

    /// A call of `aid` finished: an actor nobody can call any more stops once idle.
    pub(super) fn actor_call_finished(&mut self, aid: ActorId, out: &mut Vec<Action>) {
        let Some(a) = self.actors.get(&aid) else {
            return;
        };
        if a.unreferenced && !a.keeps_itself() && a.idle(&self.workers) {
            self.stop_actor(aid, out);
        }
    }

    /// The last handle to the actor is gone.
    pub(super) fn actor_unreferenced(&mut self, aid: ActorId, out: &mut Vec<Action>) {
        let Some(a) = self.actors.get_mut(&aid) else {
            return;
        };
        a.unreferenced = true;
        if a.life == Life::Dead {
            if a.worker.is_none() {
                self.actors.remove(&aid);
            }
            return;
        }
        if a.idle(&self.workers) {
            self.stop_actor(aid, out);
        }
    }

    /// Stops an actor nobody can call: politely if its process is up, at once otherwise.
    fn stop_actor(&mut self, aid: ActorId, out: &mut Vec<Action>) {
        let Some(a) = self.actors.get_mut(&aid) else {
            return;
        };
        if a.stopping {
            return;
        }
        a.stopping = true;
        match a.worker {
            Some(w) => {
                let up = self.workers.get(&w).is_some_and(|w| w.state == WorkerState::Alive);
                if up && a.life == Life::Alive {
                    self.workers.doom(w);
                    out.push(Action::Send { worker: w, msg: NodeToWorker::Shutdown });
                } else {
                    self.workers.doom(w);
                    out.push(Action::Kill { worker: w });
                }
            }
            None => {
                if let Some(peer) = a.remote.filter(|_| !a.proxy) {
                    out.push(Action::PeerRelease { peer, ids: vec![aid.object()] });
                }
                self.remove_actor(aid, out)
            }
        }
    }

    /// Forgets an actor for good: its resources, arguments and name.
    fn remove_actor(&mut self, aid: ActorId, out: &mut Vec<Action>) {
        let Some(a) = self.actors.remove(&aid) else {
            return;
        };
        self.actors.remember_forgotten(aid);
        self.actors.unpend(aid);
        if a.holds_resources {
            self.res.give_cpu(a.create.options.cpu_milli);
            self.release_res(&a.create.options.resources, &a.gpus);
        }
        if !a.args_released {
            self.release_args(&a.create, out);
        }
        self.tasks.remove(&aid.0);
    }

    /// The actor's process is gone (`queue`: the calls it had been sent).
    pub(super) fn actor_worker_died(
        &mut self,
        aid: ActorId,
        wid: WorkerId,
        pid: u32,
        queue: VecDeque<TaskId>,
        exit: WorkerExit,
        out: &mut Vec<Action>,
    ) {
        if self.tasks.get(&aid.0).is_some_and(|t| t.state == TaskState::Assigned(wid)) {
            self.tasks.remove(&aid.0);
        }
        let calls: Vec<TaskId> = queue.into_iter().filter(|t| *t != aid.0).collect();
        let spawn_allowed = !self.starts_failing();
        let Some(a) = self.actors.get_mut(&aid) else {
            let err = error(ErrorKind::ActorDied, "", "the actor no longer exists".into());
            for t in calls {
                self.fail_call(t, err.clone(), out);
            }
            return;
        };
        if a.worker != Some(wid) || a.life == Life::Dead {
            let err = a.death.clone().unwrap_or_else(|| {
                error(ErrorKind::ActorDied, "", "the actor's process died".into())
            });
            if a.worker == Some(wid) {
                a.worker = None;
                if a.unreferenced {
                    self.actors.remove(&aid);
                }
            }
            for t in calls {
                self.fail_call(t, err.clone(), out);
            }
            return;
        }
        a.worker = None;
        if a.stopping {
            self.remove_actor(aid, out);
            let err = error(ErrorKind::ActorDied, "", "the actor was stopped".into());
            for t in calls {
                self.fail_call(t, err.clone(), out);
            }
            return;
        }
        let killed = a.kill_requested.take();
        let o = a.opts();
        let (max_restarts, max_retries) = (o.max_restarts, o.max_task_retries);
        // The process runs its oldest calls (up to its concurrency); the rest were only waiting
        // in it, and go to the restarted actor without using a retry.
        let running = o.max_concurrency.max(1) as usize;
        let class = a.class().to_string();
        let restarts_left = max_restarts < 0 || a.restarts < max_restarts as u32;
        let can_restart = killed != Some(true) && restarts_left && spawn_allowed;
        if !can_restart {
            let msg = match killed {
                Some(true) => format!("actor '{class}' was killed with volley.kill()"),
                _ => format!(
                    "actor '{class}' died: its process{} {}; max_restarts={} allows no more \
                     restarts (it was restarted {} time(s))",
                    // A process that could not be started has no pid.
                    if pid == 0 { String::new() } else { format!(" (pid {pid})") },
                    exit.how,
                    limit(max_restarts),
                    a.restarts
                ),
            };
            let log = killed.is_none().then(|| format!("volley: {msg}"));
            if let Some(l) = &log {
                out.push(Action::Log(l.clone()));
            }
            let mut err = error(ErrorKind::ActorDied, &class, msg);
            Arc::make_mut(&mut err).pid = pid;
            for t in calls {
                self.fail_call(t, err.clone(), out);
            }
            self.actor_dead(aid, err, out);
            if log.is_some() {
                self.tell_creator(aid, log, out);
            }
            return;
        }
        a.restarts += 1;
        self.actor_restarts += 1;
        a.life = Life::Restarting;
        note!(self, TaskEvent::Actor { actor: aid });
        let restart = a.restarts;
        let log = format!(
            "volley: actor '{class}' died (pid {pid} {}); restarting it (restart {restart} of {})",
            exit.how,
            limit(max_restarts)
        );
        out.push(Action::Log(log.clone()));
        self.tell_creator(aid, Some(log), out);
        let mut again = Vec::new();
        for (i, t) in calls.into_iter().enumerate() {
            let Some(task) = self.tasks.get_mut(&t) else { continue };
            if task.cancel.is_some() {
                let name = task.spec.name.clone();
                let msg = format!("task '{name}' was cancelled");
                self.fail_call(t, error(ErrorKind::Cancelled, &name, msg), out);
            } else if i >= running {
                task.state = TaskState::Queued;
                again.push((t, task.caller));
            } else if max_retries < 0 || task.attempts < max_retries as u32 {
                task.attempts += 1;
                task.state = TaskState::Queued;
                again.push((t, task.caller));
            } else {
                let name = task.spec.name.clone();
                let msg = format!(
                    "actor '{class}' died (pid {pid} {}) while running call '{name}'; the actor \
                     is restarting, but max_task_retries={} allows no retry of this call",
                    exit.how,
                    limit(max_retries)
                );
                let mut err = error(ErrorKind::ActorDied, &name, msg);
                Arc::make_mut(&mut err).pid = pid;
                self.fail_call(t, err, out);
            }
        }
        let new = self.spawn_for(Some(aid), out);
        if let Some(a) = self.actors.get_mut(&aid) {
            for (t, caller) in again.into_iter().rev() {
                a.requeue_call(caller, t);
            }
            a.worker = Some(new);
        }
    }

    /// Fails a call that was sent to the actor's process.
    pub(super) fn fail_call(&mut self, tid: TaskId, err: Arc<ErrorPayload>, out: &mut Vec<Action>) {
        let Some(name) = self.tasks.get(&tid).map(|t| t.spec.name.clone()) else {
            return;
        };
        let err = if *err.task_name == *name {
            err
        } else {
            let mut e = (*err).clone();
            e.task_name = name.to_string();
            Arc::new(e)
        };
        self.fail_task(tid, err, out);
    }

    /// The actor is dead for good: every queued call and every later one fails with `err`.
    pub(super) fn actor_dead(
        &mut self,
        aid: ActorId,
        err: Arc<ErrorPayload>,
        out: &mut Vec<Action>,
    ) {
        let Some(a) = self.actors.get_mut(&aid) else {
            return;
        };
        if a.life == Life::Dead {
            return;
        }
        a.life = Life::Dead;
        a.death = Some(err.clone());
        note!(self, TaskEvent::Actor { actor: aid });
        let calls: Vec<TaskId> = a.callers.drain().flat_map(|(_, q)| q).collect();
        let holds = std::mem::take(&mut a.holds_resources);
        let gpus = std::mem::take(&mut a.gpus);
        let release_args = !std::mem::replace(&mut a.args_released, true);
        let create = a.create.clone();
        let keeps = a.keeps_itself();
        let name = a.opts().name.clone().map(|n| (a.opts().namespace.clone(), n));
        if let Some(w) = a.worker {
            if self.workers.contains_key(&w) {
                self.workers.doom(w);
                out.push(Action::Kill { worker: w });
            }
        }
        if let Some(peer) = a.remote.filter(|_| !a.proxy) {
            out.push(Action::PeerKill { peer, actor: aid, no_restart: true });
        }
        self.actors.unpend(aid);
        if holds {
            self.res.give_cpu(create.options.cpu_milli);
            self.release_res(&create.options.resources, &gpus);
        }
        for t in calls {
            self.fail_call(t, err.clone(), out);
        }
        let obj = aid.object();
        if matches!(self.objects.get(&obj).map(|o| &o.state), Some(ObjectState::Pending)) {
            self.object_failed(obj, err.clone(), out);
        }
        if release_args {
            self.release_args(&create, out);
        }
        if let Some(key) = name {
            self.actors.unname(&key, aid);
        }
        if keeps {
            // The name's (or detachment's) own reference.
            self.decref_one(obj, out);
        }
        self.report_creation(aid, out);
        self.tell_creator(aid, None, out);
        self.tell_routes(aid, out);
    }
}

#[cfg(test)]
mod tests {
    use super::super::harness::task_spec;
    use super::*;

    fn entry() -> ActorEntry {
        let actor = ActorPart::Create(Box::default());
        let spec = task_spec(TaskId(1), FunctionId([2; 16]), "A", Default::default(), actor);
        ActorEntry::new(Arc::new(spec), Holder::Local)
    }

    #[test]
    fn a_name_is_dropped_only_by_the_actor_it_names() {
        let mut a = Actors::default();
        let (old, new) = (ActorId(TaskId(1)), ActorId(TaskId(2)));
        let key = ("ns".to_string(), "n".to_string());
        a.name(key.clone(), old);
        a.name(key.clone(), new);
        a.unname(&key, old);
        assert_eq!(a.named(&key), Some(new), "a newer actor took the name");
        a.unname(&key, new);
        assert_eq!(a.named(&key), None);
    }

    #[test]
    fn the_start_queue_keeps_creation_order_and_calls_held_back_are_taken_once() {
        let mut a = Actors::default();
        let ids: Vec<ActorId> = (1..=3).map(|n| ActorId(TaskId(n))).collect();
        for id in &ids {
            a.insert(*id, entry());
            a.push_pending(*id);
        }
        a.unpend(ids[1]);
        assert!(a.is_pending(&ids[0]) && !a.is_pending(&ids[1]));
        assert_eq!(a.pending().copied().collect::<Vec<_>>(), vec![ids[0], ids[2]]);
        assert_eq!(a.pop_pending(), Some(ids[0]));
        a.set_pending(VecDeque::new());
        assert!(a.no_pending());
        assert_eq!(a.len(), 3, "leaving the start queue does not forget the actor");
        let made = ObjectId::for_return(TaskId(9), 1);
        assert_eq!(a.take_gather(&made), None);
        a.wait_gather(made, ids[0]);
        a.wait_gather(made, ids[2]);
        assert_eq!(a.take_gather(&made), Some(vec![ids[0], ids[2]]));
        assert_eq!(a.take_gather(&made), None);
    }

    #[test]
    fn each_callers_calls_keep_their_order() {
        let mut a = entry();
        let (x, y) = (Holder::Local, Holder::Worker(WorkerId(4)));
        for (who, n) in [(x, 1), (y, 2), (x, 3)] {
            a.queue_call(who, TaskId(n));
        }
        a.requeue_call(x, TaskId(9));
        a.drop_call(x, TaskId(1));
        a.drop_call(y, TaskId(1)); // Not y's: nothing changes.
        let q = |h: &Holder| a.callers.get(h).map(|q| q.iter().map(|t| t.0).collect::<Vec<_>>());
        assert_eq!(q(&x), Some(vec![9, 3]));
        assert_eq!(q(&y), Some(vec![2]));
    }
}
