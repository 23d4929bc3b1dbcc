//! Tasks as a part of the scheduler: every task this node knows (its spec, state, attempts and
//! caller) and the two ready queues of runnable pool tasks. Where a queued task goes (a worker,
//! a peer, behind a running task) is the coordinator's decision (`Scheduler::schedule`).

use std::collections::VecDeque;
use std::sync::Arc;

use volley_proto::{NodeId, TaskId, TaskSpec, WorkerId};

use super::Holder;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TaskState {
    /// Waits for this many of its arguments (a `u32`: the entry is 8 bytes smaller).
    WaitingDeps(u32),
    Queued,
    Assigned(WorkerId),
    /// Sent to another node.
    Remote(NodeId),
}

/// One task, from submission until its results are in.
pub(super) struct TaskEntry {
    pub(super) spec: Arc<TaskSpec>,
    pub(super) state: TaskState,
    pub(super) attempts: u32,
    /// `Some(force)` once cancelled.
    pub(super) cancel: Option<bool>,
    /// Who submitted it (actor calls keep each caller's order).
    pub(super) caller: Holder,
    /// When it last went into a ready queue (the clock of the last `tick`), for wait notices.
    pub(super) queued_at: u64,
    /// Its number in the state API's events (`TaskEvent`): the slot of its row in the
    /// runtime's table. 0 when not recorded (recording off, or an actor's creation).
    pub(super) seq: u64,
}

impl TaskEntry {
    /// A task just submitted by `caller`, waiting for its dependencies to be counted.
    pub(super) fn new(spec: Arc<TaskSpec>, caller: Holder) -> Self {
        TaskEntry {
            spec,
            state: TaskState::WaitingDeps(0),
            attempts: 0,
            cancel: None,
            caller,
            queued_at: 0,
            seq: 0,
        }
    }

    /// Whether `max_retries` allows another attempt.
    pub(super) fn retries_left(&self) -> bool {
        let max = self.spec.options.max_retries;
        max < 0 || self.attempts < max as u32
    }

    /// Whether it goes to the side queue: it asks for resources other than CPU, or for no CPU.
    fn is_side(&self) -> bool {
        self.spec.options.cpu_milli == 0 || !self.spec.options.resources.is_empty()
    }
}

/// The tasks this node knows, and its ready queues.
#[derive(Default)]
pub(super) struct Tasks {
    /// Keyed by each entry's `spec.task_id`: a `HashTable`, not a `HashMap`, so that a slot
    /// does not hold a second copy of the 16-byte id (issue 19: at a million queued tasks the
    /// table is half empty after its last doubling, so each byte of a slot costs two).
    map: hashbrown::HashTable<TaskEntry>,
    /// Runnable plain tasks, in order.
    ready: VecDeque<TaskId>,
    /// Runnable tasks that ask for resources other than CPU, or for no CPU.
    side_ready: VecDeque<TaskId>,
}

fn hash(tid: &TaskId) -> u64 {
    use std::hash::BuildHasher;
    volley_proto::IdBuildHasher::default().hash_one(tid)
}

fn hash_entry(t: &TaskEntry) -> u64 {
    hash(&t.spec.task_id)
}

#[allow(dead_code)] // The accessors of `table_access!`; each part uses those it needs.
impl Tasks {
    pub(super) fn get(&self, tid: &TaskId) -> Option<&TaskEntry> {
        self.map.find(hash(tid), |t| t.spec.task_id == *tid)
    }

    pub(super) fn get_mut(&mut self, tid: &TaskId) -> Option<&mut TaskEntry> {
        self.map.find_mut(hash(tid), |t| t.spec.task_id == *tid)
    }

    pub(super) fn contains_key(&self, tid: &TaskId) -> bool {
        self.get(tid).is_some()
    }

    /// Forgets a task, not its place in a ready queue (see `unqueue`).
    pub(super) fn remove(&mut self, tid: &TaskId) -> Option<TaskEntry> {
        let found = self.map.find_entry(hash(tid), |t| t.spec.task_id == *tid).ok()?;
        Some(found.remove().0)
    }

    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&TaskId, &TaskEntry)> {
        self.map.iter().map(|t| (&t.spec.task_id, t))
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = &TaskId> {
        self.map.iter().map(|t| &t.spec.task_id)
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &TaskEntry> {
        self.map.iter()
    }
}

impl Tasks {
    /// Records `task` (replacing what was known of `tid`); `tid` is its spec's id, the key the
    /// table finds it by.
    pub(super) fn insert(&mut self, tid: TaskId, task: TaskEntry) {
        debug_assert_eq!(tid, task.spec.task_id, "a task is keyed by its own id");
        match self.map.entry(hash(&tid), |t| t.spec.task_id == tid, hash_entry) {
            hashbrown::hash_table::Entry::Occupied(mut o) => *o.get_mut() = task,
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert(task);
            }
        }
    }

    /// Puts a runnable task in its ready queue (at the `front`: it was there before), stamped
    /// with the time `now_ms` for wait notices.
    pub(super) fn enqueue(&mut self, tid: TaskId, front: bool, now_ms: u64) {
        let side = self.get_mut(&tid).is_some_and(|t| {
            t.queued_at = now_ms;
            t.is_side()
        });
        let q = self.queue(side);
        if front {
            q.push_front(tid);
        } else {
            q.push_back(tid);
        }
    }

    /// The side queue (`side`) or the plain one.
    pub(super) fn queue(&mut self, side: bool) -> &mut VecDeque<TaskId> {
        if side {
            &mut self.side_ready
        } else {
            &mut self.ready
        }
    }

    /// Both ready queues, the plain one first.
    /// Gives back the room of the table and the ready queues when they grew for a burst and
    /// are mostly empty now (see `crate::shrink`).
    pub(super) fn shrink(&mut self) -> bool {
        use crate::shrink::{is_sparse, Shrink};
        let table = is_sparse(self.map.len(), self.map.capacity());
        if table {
            self.map.shrink_to(crate::shrink::target(self.map.len()), hash_entry);
        }
        table | self.ready.shrink_if_sparse() | self.side_ready.shrink_if_sparse()
    }

    pub(super) fn queues(&self) -> [&VecDeque<TaskId>; 2] {
        [&self.ready, &self.side_ready]
    }

    /// Tasks in the ready queues.
    pub(super) fn queued(&self) -> usize {
        self.ready.len() + self.side_ready.len()
    }

    /// Takes every task out of the ready queues, the plain ones first.
    pub(super) fn drain_queued(&mut self) -> Vec<TaskId> {
        let mut queued: Vec<TaskId> = self.ready.drain(..).collect();
        queued.extend(self.side_ready.drain(..));
        queued
    }

    /// Takes `tid` out of its ready queue, if it is in one.
    pub(super) fn unqueue(&mut self, tid: TaskId) {
        for q in [&mut self.ready, &mut self.side_ready] {
            if let Some(pos) = q.iter().position(|t| *t == tid) {
                q.remove(pos);
            }
        }
    }

    /// Keeps in the ready queues only the tasks `keep` says.
    pub(super) fn retain_queued(&mut self, mut keep: impl FnMut(&TaskId) -> bool) {
        self.ready.retain(&mut keep);
        self.side_ready.retain(&mut keep);
    }
}

#[cfg(test)]
mod tests {
    use super::super::harness::task_spec;
    use super::*;
    use volley_proto::{ActorPart, FunctionId, TaskOptions};

    fn task(n: u128, cpu_milli: u32, gpu: bool, max_retries: i32) -> (TaskId, TaskEntry) {
        let resources = if gpu { vec![("GPU".to_string(), 1000)] } else { vec![] };
        let options = TaskOptions { cpu_milli, resources, max_retries, ..Default::default() };
        let spec = task_spec(TaskId(n), FunctionId([1; 16]), "t", options, ActorPart::None);
        (TaskId(n), TaskEntry::new(Arc::new(spec), Holder::Local))
    }

    #[test]
    fn runnable_tasks_go_to_the_queue_of_what_they_need_in_order() {
        let mut ts = Tasks::default();
        for (n, cpu, gpu) in [(1, 1000, false), (2, 0, false), (3, 1000, true), (4, 500, false)] {
            let (tid, t) = task(n, cpu, gpu, 0);
            ts.insert(tid, t);
            ts.enqueue(tid, false, 7);
        }
        let (first, _) = task(5, 1000, false, 0);
        ts.insert(first, task(5, 1000, false, 0).1);
        ts.enqueue(first, true, 8);
        let [plain, side] = ts.queues();
        assert_eq!(plain.iter().map(|t| t.0).collect::<Vec<_>>(), vec![5, 1, 4]);
        assert_eq!(side.iter().map(|t| t.0).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(ts.get(&TaskId(1)).map(|t| t.queued_at), Some(7));
        ts.unqueue(TaskId(1));
        ts.retain_queued(|t| t.0 != 3);
        assert_eq!(ts.queued(), 3);
        assert_eq!(ts.drain_queued(), vec![TaskId(5), TaskId(4), TaskId(2)]);
        assert_eq!(ts.queued(), 0);
        assert!(ts.contains_key(&TaskId(1)), "unqueued, not forgotten");
    }

    #[test]
    fn retries_are_counted_against_max_retries_and_negative_means_no_limit() {
        let (_, mut once) = task(1, 1000, false, 1);
        assert!(once.retries_left());
        once.attempts = 1;
        assert!(!once.retries_left());
        let (_, mut always) = task(2, 1000, false, -1);
        always.attempts = 1_000_000;
        assert!(always.retries_left());
        assert!(!task(3, 1000, false, 0).1.retries_left());
    }
}
