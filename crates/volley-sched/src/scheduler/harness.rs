//! The one test harness of the scheduler's tests: a `Scheduler` driven event by event, with the
//! actions it answered collected in `out`, and helpers to submit work, connect workers and read
//! what was decided. Every test module of the scheduler (and of its parts) builds on it.

use super::*;
use volley_proto::{ActorCall, ActorOptions, IdGenerator, TaskOptions};

/// The function of plain tasks.
pub(super) const F: FunctionId = FunctionId([1; 16]);
/// The class of actors.
pub(super) const CLASS: FunctionId = FunctionId([2; 16]);

pub(super) struct H {
    pub(super) s: Scheduler,
    pub(super) ids: IdGenerator,
    pub(super) out: Vec<Action>,
}

impl H {
    /// A node with `cfg`, `F` and `CLASS` registered; no worker started yet.
    pub(super) fn with_config(cfg: Config) -> Self {
        let mut s = Scheduler::new(cfg);
        s.register_function(F, Arc::from(&b"fn"[..]));
        s.register_function(CLASS, Arc::from(&b"cls"[..]));
        H { s, ids: IdGenerator::new(), out: Vec::new() }
    }

    /// A node with `cpus` CPUs; no worker started yet.
    pub(super) fn new(cpus: f64) -> Self {
        H::with_config(Config::with_cpus(cpus))
    }

    /// Starts the pool and connects every spawned worker; `out` is left empty.
    pub(super) fn started(cpus: f64) -> Self {
        let mut h = H::new(cpus);
        h.s.start(&mut h.out);
        h.connect_spawned();
        h.out.clear();
        h
    }

    /// A started 1-CPU node with id `id` in a cluster of `peers`; `out` is left empty.
    pub(super) fn node_among(id: u32, peers: Vec<PeerView>) -> Self {
        let mut h = H::started(1.0);
        h.s.set_node_id(NodeId(id));
        h.s.set_peers(peers, &mut h.out);
        h.out.clear();
        h
    }

    /// A node with `cpus` CPUs and `res` (thousandths), its pool started and connected.
    pub(super) fn with_resources(cpus: f64, res: &[(&str, u64)]) -> Self {
        let mut cfg = Config::with_cpus(cpus);
        cfg.resources = res.iter().map(|(r, a)| (r.to_string(), *a)).collect();
        let mut h = H::with_config(cfg);
        h.s.start(&mut h.out);
        h.connect_spawned();
        h.out.clear();
        h
    }

    /// Connects the workers spawned since the last call; every other action in `out` is dropped.
    pub(super) fn connect_spawned(&mut self) -> Vec<WorkerId> {
        let spawned = self.drain_spawned();
        for w in &spawned {
            assert!(self.s.worker_connected(*w, 1000 + w.0, &mut self.out));
        }
        spawned
    }

    /// Connects the workers spawned since the last call, keeping the other actions in `out`.
    pub(super) fn connect_spawned_keep(&mut self) -> Vec<WorkerId> {
        let spawned = self.spawned();
        for w in &spawned {
            assert!(self.s.worker_connected(*w, 1000 + w.0, &mut self.out));
        }
        spawned
    }

    /// Spawn actions since the last call; `out` is emptied.
    pub(super) fn drain_spawned(&mut self) -> Vec<WorkerId> {
        self.out
            .drain(..)
            .filter_map(|a| match a {
                Action::Spawn { worker } => Some(worker),
                _ => None,
            })
            .collect()
    }

    /// Spawn actions since the last call (taken out of `out`).
    pub(super) fn spawned(&mut self) -> Vec<WorkerId> {
        let mut v = Vec::new();
        self.out.retain(|a| match a {
            Action::Spawn { worker } => {
                v.push(*worker);
                false
            }
            _ => true,
        });
        v
    }

    /// Advances the clock (`now`, ms) until workers are spawned again; returns them.
    pub(super) fn next_spawns(&mut self, now: &mut u64) -> Vec<WorkerId> {
        loop {
            let w = self.spawned();
            if !w.is_empty() {
                return w;
            }
            *now += 100;
            assert!(*now < 60_000, "no worker is started again");
            self.s.tick(*now, &mut self.out);
        }
    }

    pub(super) fn spec(&self, deps: Vec<ObjectId>, opts: TaskOptions) -> TaskSpec {
        let mut spec = task_spec(self.ids.next_task(), F, "t", opts, ActorPart::None);
        spec.deps = deps.into();
        spec
    }

    /// `peer` sends `spec`, naming `cached` as values this node keeps for it (no others).
    pub(super) fn sent_by(&mut self, peer: NodeId, spec: TaskSpec, cached: Vec<ObjectId>) {
        let (objects, routes, errors, fetch) = (vec![], vec![], vec![], vec![]);
        let out = &mut self.out;
        self.s.accept_peer_task(peer, spec, None, objects, routes, errors, cached, fetch, out);
    }

    pub(super) fn submit(&mut self, deps: Vec<ObjectId>) -> ObjectId {
        self.submit_opts(deps, TaskOptions::default())
    }

    pub(super) fn submit_opts(&mut self, deps: Vec<ObjectId>, opts: TaskOptions) -> ObjectId {
        let spec = self.spec(deps, opts);
        let id = ObjectId::for_return(spec.task_id, 1);
        self.s.submit(Holder::Local, spec, &mut self.out);
        id
    }

    /// Submits a task named `name` with `opts` and no arguments.
    pub(super) fn submit_named(&mut self, name: &str, opts: TaskOptions) -> ObjectId {
        let mut spec = self.spec(vec![], opts);
        spec.name = name.into();
        let id = ObjectId::for_return(spec.task_id, 1);
        self.s.submit(Holder::Local, spec, &mut self.out);
        id
    }

    /// Submits a task named `name` that needs one CPU.
    pub(super) fn cpu_task(&mut self, name: &str) -> ObjectId {
        self.submit_named(name, TaskOptions { cpu_milli: 1000, ..Default::default() })
    }

    /// Creates an actor of class `class` holding `cpu_milli`, with no restarts; its id.
    pub(super) fn actor(&mut self, class: &str, cpu_milli: u32) -> ActorId {
        let spec = self.actor_spec(class, cpu_milli, 0, 0);
        let (aid, _) = self.s.create_actor(Holder::Local, spec, &mut self.out).expect("ok");
        aid
    }

    /// Creates an actor of class "A", which must be accepted here.
    pub(super) fn create(
        &mut self,
        cpu_milli: u32,
        max_restarts: i32,
        max_task_retries: i32,
    ) -> ActorId {
        let spec = self.actor_spec("A", cpu_milli, max_restarts, max_task_retries);
        let (aid, created) =
            self.s.create_actor(Holder::Local, spec, &mut self.out).expect("created");
        assert!(created);
        aid
    }

    pub(super) fn actor_spec(
        &self,
        class: &str,
        cpu_milli: u32,
        max_restarts: i32,
        max_task_retries: i32,
    ) -> TaskSpec {
        let options = TaskOptions { cpu_milli, ..Default::default() };
        let actor = ActorPart::Create(Box::new(ActorOptions {
            class_name: class.into(),
            max_restarts,
            max_task_retries,
            max_concurrency: 1,
            ..Default::default()
        }));
        task_spec(self.ids.next_task(), CLASS, class, options, actor)
    }

    /// Connects the actor's new worker and finishes `__init__`; returns the worker.
    pub(super) fn bring_up(&mut self, aid: ActorId) -> WorkerId {
        let w = self.connect_spawned_keep();
        assert_eq!(w.len(), 1);
        let ex = self.executed();
        assert_eq!(ex, vec![(w[0], aid.0)]);
        self.done(w[0], aid.0, 1);
        w[0]
    }

    /// `holder` calls method "m" of actor `aid`.
    pub(super) fn call(&mut self, holder: Holder, aid: ActorId, deps: Vec<ObjectId>) -> TaskId {
        let options = TaskOptions { cpu_milli: 0, max_retries: 0, ..Default::default() };
        let actor = ActorPart::Call(Box::new(ActorCall { actor: aid, method: "m".into() }));
        let mut spec = task_spec(self.ids.next_task(), FunctionId([0; 16]), "A.m", options, actor);
        spec.deps = deps.into();
        let tid = spec.task_id;
        self.s.submit(holder, spec, &mut self.out);
        tid
    }

    /// (worker, task) pairs sent since the last call.
    pub(super) fn executed(&mut self) -> Vec<(WorkerId, TaskId)> {
        let mut v = Vec::new();
        self.out.retain(|a| match a {
            Action::Execute { worker, spec, .. } => {
                v.push((*worker, spec.task_id));
                false
            }
            _ => true,
        });
        v
    }

    /// Workers the scheduler asked to kill (left in `out`).
    pub(super) fn killed(&mut self) -> Vec<WorkerId> {
        self.out
            .iter()
            .filter_map(|a| match a {
                Action::Kill { worker } => Some(*worker),
                _ => None,
            })
            .collect()
    }

    /// Worker `w` finished task `t` with one value, `[byte]`.
    pub(super) fn done(&mut self, w: WorkerId, t: TaskId, byte: u8) {
        let v = ObjectData { data: vec![byte], ..Default::default() };
        self.s.task_done(w, t, TaskResult::Ok(vec![v]), &mut self.out);
    }

    pub(super) fn value(&self, id: ObjectId) -> Option<u8> {
        match self.s.object_state(&id) {
            Some(ObjectState::Ready(v)) => v.data.first().copied(),
            _ => None,
        }
    }

    pub(super) fn error_kind(&self, id: ObjectId) -> Option<ErrorKind> {
        match self.s.object_state(&id) {
            Some(ObjectState::Failed(e)) => Some(e.kind),
            _ => None,
        }
    }

    /// The error kind of task `t`'s (first) return.
    pub(super) fn task_error(&self, t: TaskId) -> Option<ErrorKind> {
        self.error_kind(ObjectId::for_return(t, 1))
    }

    /// Advances the clock to `ms`; the lines it logged (`out` is emptied first).
    pub(super) fn tick_logs(&mut self, ms: u64) -> Vec<String> {
        self.out.clear();
        self.s.tick(ms, &mut self.out);
        self.out
            .drain(..)
            .filter_map(|a| match a {
                Action::Log(l) => Some(l),
                _ => None,
            })
            .collect()
    }

    /// (peer, task, first value's bytes) of each successful `PeerDone` so far.
    pub(super) fn peer_results(&self) -> Vec<(NodeId, TaskId, Vec<u8>)> {
        self.out
            .iter()
            .filter_map(|a| match a {
                Action::PeerDone { peer, task, result: Ok(v), .. } => {
                    Some((*peer, *task, v[0].data.clone()))
                }
                _ => None,
            })
            .collect()
    }

    /// (peer, task, values sent along) of each `Spill` since the last call.
    pub(super) fn spilled(&mut self) -> Vec<(NodeId, TaskId, usize)> {
        let mut v = Vec::new();
        self.out.retain(|a| match a {
            Action::Spill { peer, spec, objects, .. } => {
                v.push((*peer, spec.task_id, objects.len()));
                false
            }
            _ => true,
        });
        v
    }
}

/// The spec of task `task_id`: `function` (named `name`) with no arguments and one return.
pub(super) fn task_spec(
    task_id: TaskId,
    function: FunctionId,
    name: &str,
    options: TaskOptions,
    actor: ActorPart,
) -> TaskSpec {
    TaskSpec {
        task_id,
        function,
        name: name.into(),
        args: ObjectData::default(),
        deps: Box::default(),
        num_returns: 1,
        options: std::sync::Arc::new(options),
        actor,
    }
}

/// A peer's view: `cpus` CPUs, all of them free.
pub(super) fn peer(id: u32, cpus: u32) -> PeerView {
    peer_view(id, cpus, cpus, false)
}

/// A peer's view with `free` of its `cpus` CPUs free; `driver`: a driver's node.
pub(super) fn peer_view(id: u32, cpus: u32, free: u32, driver: bool) -> PeerView {
    PeerView {
        id: NodeId(id),
        cpu_total_milli: cpus * 1000,
        cpu_free_milli: free * 1000,
        resources: Vec::new(),
        driver,
        named: Vec::new(),
    }
}
