//! The worker pool as a part of the scheduler: one entry per worker process (what it runs, what
//! it holds, whether it is blocked), the ids handed to new ones, and the spawn back-off that keeps
//! a broken worker start from becoming a fork loop. Which worker gets which task is decided by
//! the coordinator with the queries here (`idle_worker`, `pipeline_target`, `steal_victim`).

use std::collections::{HashMap, HashSet, VecDeque};

use volley_proto::{ActorId, FunctionId, ObjectId, TaskId, WorkerId};

use super::{WaiterId, WorkerExit};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WorkerState {
    Starting,
    Alive,
    Retiring,
}

/// One worker process, as the coordinator sees it.
pub(super) struct WorkerEntry {
    pub(super) state: WorkerState,
    pub(super) pid: u32,
    /// Tasks sent to this worker, in the order it runs them; the head is running.
    pub(super) queue: VecDeque<TaskId>,
    /// CPU held by the head task (counted as used unless the worker is blocked).
    pub(super) cpu_held: u32,
    /// Nested blocking requests in progress; a blocked worker lends its CPU.
    pub(super) blocked: u32,
    pub(super) revoke_outstanding: bool,
    pub(super) known_functions: HashSet<FunctionId>,
    /// References this process holds, released if it dies.
    pub(super) held: HashMap<ObjectId, u32>,
    pub(super) requests: HashMap<u64, WaiterId>,
    pub(super) idle_since: u64,
    /// Resources other than CPU held by the head task.
    pub(super) res_held: Vec<(String, u64)>,
    /// The GPUs (indices) among them.
    pub(super) gpus: Vec<u32>,
    /// The actor this worker was started for; it never runs pool tasks.
    pub(super) actor: Option<ActorId>,
    /// The scheduler asked for its end (`Action::Kill`, or a shutdown of a stopping actor):
    /// its death is then no crash (`Stats::worker_crashes`).
    pub(super) told_to_exit: bool,
}

impl WorkerEntry {
    pub(super) fn is_idle(&self) -> bool {
        self.state == WorkerState::Alive
            && self.queue.is_empty()
            && self.blocked == 0
            && self.actor.is_none()
    }

    /// A pool worker that counts towards the one-per-CPU target.
    pub(super) fn is_active_pool(&self) -> bool {
        self.state != WorkerState::Retiring && self.blocked == 0 && self.actor.is_none()
    }

    /// The process holds one more reference to `id` (released for it if it dies).
    pub(super) fn hold(&mut self, id: ObjectId) {
        *self.held.entry(id).or_insert(0) += 1;
    }

    /// The process drops a reference to `id`; false if it held none (not its to release).
    pub(super) fn release(&mut self, id: &ObjectId) -> bool {
        match self.held.get_mut(id) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                self.held.remove(id);
            }
            None => return false,
        }
        true
    }

    /// The process blocks in request `req` (answered through `waiter`). True if a pool worker
    /// was not blocked before: it now lends the CPU its task holds.
    pub(super) fn block(&mut self, req: u64, waiter: WaiterId) -> bool {
        self.requests.insert(req, waiter);
        self.blocked += 1;
        self.blocked == 1 && self.actor.is_none()
    }

    /// Request `req` was answered or given up. True if a pool worker is no longer blocked: it
    /// takes back the CPU its task holds.
    pub(super) fn unblock(&mut self, req: u64) -> bool {
        if self.requests.remove(&req).is_none() || self.blocked == 0 {
            return false;
        }
        self.blocked -= 1;
        self.blocked == 0 && self.actor.is_none()
    }

    /// The tasks queued behind the running one.
    pub(super) fn pipelined(&self) -> Vec<TaskId> {
        self.queue.iter().skip(1).copied().collect()
    }
}

/// Every worker process of the node, and the spawn back-off.
pub(super) struct Workers {
    map: HashMap<WorkerId, WorkerEntry>,
    next_id: u32,
    /// Workers that failed to start (not killed from outside), in a row.
    start_failures: u32,
    last_start_failure: String,
    /// Workers that died before they connected, for any reason, in a row: spawns back off.
    early_deaths: u32,
    /// No pool worker is spawned before this (the back-off after early deaths).
    spawn_after_ms: u64,
    /// While workers fail to start, one is tried again at this time (to recover once they can).
    next_probe_ms: u64,
}

table_access!(Workers.map: WorkerId => WorkerEntry);

impl Workers {
    /// Notes that the scheduler ended worker `id` on purpose (it is sent `Action::Kill` or a
    /// shutdown), so that its death does not count as a crash.
    pub(super) fn doom(&mut self, id: WorkerId) {
        if let Some(w) = self.map.get_mut(&id) {
            w.told_to_exit = true;
        }
    }

    pub(super) fn new() -> Self {
        Workers {
            map: HashMap::new(),
            next_id: 1,
            start_failures: 0,
            last_start_failure: String::new(),
            early_deaths: 0,
            spawn_after_ms: 0,
            next_probe_ms: 0,
        }
    }

    /// Records a new worker, starting, for `actor` or for the pool; its id.
    pub(super) fn add(&mut self, actor: Option<ActorId>, now_ms: u64) -> WorkerId {
        let id = WorkerId(self.next_id);
        self.next_id += 1;
        self.map.insert(
            id,
            WorkerEntry {
                state: WorkerState::Starting,
                pid: 0,
                queue: VecDeque::new(),
                cpu_held: 0,
                blocked: 0,
                revoke_outstanding: false,
                known_functions: HashSet::new(),
                held: HashMap::new(),
                requests: HashMap::new(),
                idle_since: now_ms,
                res_held: Vec::new(),
                gpus: Vec::new(),
                actor,
                told_to_exit: false,
            },
        );
        id
    }

    /// The idle pool worker with the lowest id (lowest first keeps the choice deterministic).
    pub(super) fn idle_worker(&self) -> Option<WorkerId> {
        self.map.iter().filter(|(_, w)| w.is_idle()).map(|(id, _)| *id).min()
    }

    pub(super) fn idle_count(&self) -> usize {
        self.map.values().filter(|w| w.is_idle()).count()
    }

    /// Pool workers that count towards the one-per-CPU target.
    pub(super) fn active_pool(&self) -> usize {
        self.map.values().filter(|w| w.is_active_pool()).count()
    }

    /// Pool workers not connected yet.
    pub(super) fn starting_pool(&self) -> usize {
        self.map.values().filter(|w| w.state == WorkerState::Starting && w.actor.is_none()).count()
    }

    /// Whether a pool worker is connected.
    pub(super) fn any_alive_pool(&self) -> bool {
        self.map.values().any(|w| w.state == WorkerState::Alive && w.actor.is_none())
    }

    /// The pool worker to queue a task needing `cpu` behind, when every CPU is busy: one running
    /// a task of the same size, holding nothing else, with the shortest queue (at most `depth`).
    pub(super) fn pipeline_target(&self, cpu: u32, depth: usize) -> Option<WorkerId> {
        if cpu == 0 || depth == 0 {
            return None;
        }
        self.map
            .iter()
            .filter(|(_, w)| {
                w.state == WorkerState::Alive
                    && w.actor.is_none()
                    && w.res_held.is_empty()
                    && w.blocked == 0
                    && !w.queue.is_empty()
                    && w.queue.len() <= depth
                    && w.cpu_held == cpu
            })
            .map(|(id, w)| (w.queue.len(), *id))
            .min()
            .map(|(_, id)| id)
    }

    /// The pool worker with the most tasks pipelined behind its running one (lowest id on a
    /// tie), if one has any and no revoke is on its way to it.
    pub(super) fn steal_victim(&self) -> Option<WorkerId> {
        self.map
            .iter()
            .filter(|(_, w)| {
                !w.revoke_outstanding && w.queue.len() > 1 && w.blocked == 0 && w.actor.is_none()
            })
            .map(|(id, w)| (w.queue.len(), std::cmp::Reverse(*id)))
            .max()
            .map(|(_, std::cmp::Reverse(id))| id)
    }

    /// Ids and pids of connected workers, by id.
    pub(super) fn pids(&self) -> Vec<(WorkerId, u32)> {
        let mut v: Vec<_> =
            self.map.iter().filter(|(_, w)| w.pid != 0).map(|(id, w)| (*id, w.pid)).collect();
        v.sort();
        v
    }

    // ------------------------------------------------------------ spawn back-off

    /// A worker connected: starts work again. Returns whether they were failing (the pool is
    /// then refilled).
    pub(super) fn start_succeeded(&mut self) -> bool {
        let recovered = self.start_failures > 0 || self.early_deaths > 0;
        self.start_failures = 0;
        self.early_deaths = 0;
        self.spawn_after_ms = 0;
        recovered
    }

    /// A worker died before it connected. Killed from outside, it is only replaced; otherwise it
    /// counts as a failure to start. Either way, after a few in a row the next spawns back off
    /// (50 ms doubling to 1 s), so a broken start does not become a fork loop.
    pub(super) fn died_before_connecting(&mut self, exit: &WorkerExit, now_ms: u64) {
        if !exit.killed {
            self.start_failures += 1;
            self.last_start_failure = exit.how.clone();
        }
        self.early_deaths += 1;
        if self.early_deaths > 2 {
            let delay = (50u64 << (self.early_deaths - 3).min(5)).min(1000);
            self.spawn_after_ms = now_ms + delay;
        }
    }

    /// Workers fail to start (`max` in a row): queued tasks fail, and only probes are spawned.
    pub(super) fn starts_failing(&self, max: u32) -> bool {
        self.start_failures >= max
    }

    /// Whether a pool worker may be spawned now.
    pub(super) fn spawn_allowed(&self, now_ms: u64, max: u32) -> bool {
        !self.starts_failing(max) && now_ms >= self.spawn_after_ms
    }

    /// While starts fail: whether it is time for the next probe (one worker at a time, every
    /// 2 s, and none while one is starting); the next is then due 2 s later.
    pub(super) fn probe_due(&mut self, now_ms: u64) -> bool {
        if self.starting_pool() > 0 || now_ms < self.next_probe_ms {
            return false;
        }
        self.next_probe_ms = now_ms + 2000;
        true
    }

    /// Whether a back-off has just ended (spawns held back by it may go now).
    pub(super) fn backoff_ended(&mut self, now_ms: u64) -> bool {
        if self.spawn_after_ms != 0 && now_ms >= self.spawn_after_ms {
            self.spawn_after_ms = 0;
            return true;
        }
        false
    }

    /// Failed starts in a row, and how the last one failed.
    pub(super) fn start_failure(&self) -> (u32, &str) {
        (self.start_failures, &self.last_start_failure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(ws: &mut Workers, actor: Option<ActorId>) -> WorkerId {
        let id = ws.add(actor, 0);
        let w = ws.get_mut(&id).expect("added");
        w.state = WorkerState::Alive;
        w.pid = 100 + id.0;
        id
    }

    #[test]
    fn ids_count_up_and_only_connected_workers_have_pids() {
        let mut ws = Workers::new();
        let a = ws.add(None, 0);
        let b = alive(&mut ws, None);
        assert_eq!((a, b), (WorkerId(1), WorkerId(2)));
        assert_eq!(ws.pids(), vec![(b, 102)]);
        assert_eq!((ws.starting_pool(), ws.any_alive_pool()), (1, true));
    }

    #[test]
    fn the_idle_worker_is_the_lowest_id_and_actors_workers_are_never_idle() {
        let mut ws = Workers::new();
        let actor = alive(&mut ws, Some(ActorId(TaskId(7))));
        let (a, b) = (alive(&mut ws, None), alive(&mut ws, None));
        assert_eq!(ws.idle_worker(), Some(a));
        ws.get_mut(&a).expect("a").queue.push_back(TaskId(7));
        assert_eq!(ws.idle_worker(), Some(b));
        assert_eq!(ws.idle_count(), 1);
        assert_ne!(ws.idle_worker(), Some(actor));
        ws.get_mut(&b).expect("b").blocked = 1;
        assert_eq!(ws.idle_worker(), None);
        assert_eq!(ws.active_pool(), 1, "a blocked worker does not count towards the target");
    }

    #[test]
    fn pipelining_goes_behind_a_task_of_the_same_size_with_the_shortest_queue() {
        let mut ws = Workers::new();
        let (a, b) = (alive(&mut ws, None), alive(&mut ws, None));
        for (id, n) in [(a, 2), (b, 1)] {
            let w = ws.get_mut(&id).expect("w");
            w.cpu_held = 1000;
            w.queue.extend((0..n).map(|_| TaskId(7)));
        }
        assert_eq!(ws.pipeline_target(1000, 8), Some(b));
        assert_eq!(ws.pipeline_target(500, 8), None, "a different size");
        assert_eq!(ws.pipeline_target(1000, 0), None, "pipelining off");
        assert_eq!(ws.pipeline_target(0, 8), None, "a task of no CPU never waits behind one");
        assert_eq!(ws.steal_victim(), Some(a));
        ws.get_mut(&a).expect("a").revoke_outstanding = true;
        assert_eq!(ws.steal_victim(), None);
    }

    #[test]
    fn early_deaths_back_off_then_failed_starts_stop_spawning_until_one_connects() {
        let mut ws = Workers::new();
        let killed = WorkerExit::killed("SIGKILL");
        for _ in 0..2 {
            ws.died_before_connecting(&killed, 0);
        }
        assert!(ws.spawn_allowed(0, 3), "no back-off for the first two");
        ws.died_before_connecting(&killed, 0);
        assert!(!ws.spawn_allowed(49, 3) && ws.spawn_allowed(50, 3), "50 ms after the third");
        assert!(!ws.backoff_ended(49) && ws.backoff_ended(50) && !ws.backoff_ended(51));
        assert!(!ws.starts_failing(1), "killed workers did not fail to start");
        for _ in 0..3 {
            ws.died_before_connecting(&WorkerExit::failed("exit 1"), 100);
        }
        assert!(ws.starts_failing(3));
        assert_eq!(ws.start_failure(), (3, "exit 1"));
        assert!(!ws.spawn_allowed(100_000, 3));
        assert!(ws.probe_due(0) && !ws.probe_due(1999) && ws.probe_due(2000));
        assert!(ws.start_succeeded());
        assert!(!ws.start_succeeded());
        assert!(ws.spawn_allowed(0, 3));
    }

    #[test]
    fn a_worker_lends_its_cpu_on_its_first_block_and_takes_it_back_on_its_last() {
        let mut ws = Workers::new();
        let (pool, actor) = (alive(&mut ws, None), alive(&mut ws, Some(ActorId(TaskId(7)))));
        let w = ws.get_mut(&pool).expect("pool");
        assert!(w.block(1, 10), "first block: lend");
        assert!(!w.block(2, 11), "nested: already lent");
        assert!(!w.unblock(3), "an unknown request changes nothing");
        assert!(!w.unblock(1));
        assert!(w.unblock(2), "last one: take the CPU back");
        assert!(!w.unblock(2), "answered once");
        assert_eq!(w.blocked, 0);
        let a = ws.get_mut(&actor).expect("actor");
        assert!(!a.block(1, 12) && !a.unblock(1), "an actor holds its resources, blocked or not");
    }

    #[test]
    fn a_worker_releases_only_references_it_holds() {
        let mut ws = Workers::new();
        let id = alive(&mut ws, None);
        let w = ws.get_mut(&id).expect("w");
        let obj = ObjectId::for_return(TaskId(3), 1);
        w.hold(obj);
        w.hold(obj);
        assert!(w.release(&obj) && w.release(&obj));
        assert!(!w.release(&obj), "not its to release");
        assert!(w.held.is_empty());
        w.queue.extend([TaskId(1), TaskId(2), TaskId(3)]);
        assert_eq!(w.pipelined(), vec![TaskId(2), TaskId(3)]);
    }
}
