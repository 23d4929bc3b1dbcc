//! Streaming tasks: a generator's items become objects one by one, as it yields them.
//!
//! Item `i` of task `t` is object `(t, i + 2)`; return 1 is the stream's end (the number of
//! items, or the task's error). Each item is credited with one reference to the task's caller
//! when it is made, or when the caller asks for it first (then it waits, pending, for the
//! generator). The caller takes the items in order with `stream_next`; those it will not take are
//! given back with `stream_release`. An item asked for but never made (the generator ended
//! first) resolves to end-of-stream, or to the task's error if it failed.

use super::*;

struct StreamState {
    caller: Holder,
    /// Highest item index made (1: none yet).
    produced: u32,
    /// Highest item index the caller asked for.
    declared: u32,
    finished: bool,
    /// The task's error, until it has been handed to the caller as an item.
    error: Option<Arc<ErrorPayload>>,
    /// Items from this index on are not wanted any more.
    released_from: Option<u32>,
}

impl StreamState {
    fn new(caller: Holder) -> Self {
        StreamState {
            caller,
            produced: 1,
            declared: 1,
            finished: false,
            error: None,
            released_from: None,
        }
    }
}

/// The streams of streaming tasks this node submitted or runs, as a part of the scheduler: per
/// task, what was made and asked for. Its fields are this module's.
#[derive(Default)]
pub(super) struct Streams {
    map: HashMap<TaskId, StreamState>,
}

impl Streams {
    /// Task `tid` streams its items to `caller`.
    pub(super) fn start(&mut self, tid: TaskId, caller: Holder) {
        self.map.insert(tid, StreamState::new(caller));
    }

    /// Whether task `tid` streams (and its stream is not over).
    pub(super) fn contains(&self, tid: &TaskId) -> bool {
        self.map.contains_key(tid)
    }
}

/// What a caller's `stream_next` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamStep {
    /// The item exists (its value, or `failed`: the task's error); the caller holds one reference.
    Item { failed: bool },
    /// The stream ended before this item.
    End,
}

fn end_of_stream(task: &str) -> Arc<ErrorPayload> {
    error(ErrorKind::EndOfStream, task, "the stream ended".into())
}

impl Scheduler {
    /// An item of a stream this node called, made on the node that runs the task.
    pub(super) fn peer_stream_item(
        &mut self,
        id: ObjectId,
        data: ObjectData,
        out: &mut Vec<Action>,
    ) {
        let running =
            self.tasks.get(&{ id.task }).is_some_and(|t| matches!(t.state, TaskState::Remote(_)));
        let Some(s) = self.streams.map.get_mut(&{ id.task }) else { return };
        if !running || s.released_from.is_some_and(|f| id.index >= f) {
            return;
        }
        s.produced = s.produced.max(id.index);
        let caller = s.caller;
        self.placeholders(&data.contained);
        self.stream_item_made(id, caller, data, out);
    }

    /// Worker `w`, running streaming task `task`, made its item `index`.
    pub fn stream_item(
        &mut self,
        w: WorkerId,
        task: TaskId,
        index: u32,
        data: ObjectData,
        out: &mut Vec<Action>,
    ) {
        let running = self.tasks.get(&task).is_some_and(|t| t.state == TaskState::Assigned(w));
        let Some(s) = self.streams.map.get_mut(&task) else { return };
        if !running || index < 2 || s.released_from.is_some_and(|f| index >= f) {
            return;
        }
        s.produced = s.produced.max(index);
        let caller = s.caller;
        let id = ObjectId::for_return(task, index);
        if let Holder::Peer(peer) = caller {
            // The caller is on another node: the item goes there (with what it refers to).
            let mut failed = Vec::new();
            let objects = self.ship_contained(peer, data.contained.clone(), &mut failed);
            out.push(Action::PeerObject { peer, id, result: Ok(Arc::new(data)), objects });
            out.extend(failed);
            return;
        }
        self.stream_item_made(id, caller, data, out);
    }

    /// Item `id` of a stream called by `caller` is here.
    fn stream_item_made(
        &mut self,
        id: ObjectId,
        caller: Holder,
        data: ObjectData,
        out: &mut Vec<Action>,
    ) {
        match self.objects.get(&id).map(|o| &o.state) {
            Some(ObjectState::Pending) => self.object_ready(id, Arc::new(data), out),
            Some(_) => {} // Made again by a retry: the first one stands.
            None => {
                self.new_object(id);
                self.incref(caller, &[id]);
                self.object_ready(id, Arc::new(data), out);
            }
        }
    }

    pub(super) fn new_object(&mut self, id: ObjectId) {
        self.objects.insert_pending(id);
    }

    /// `holder` asks for `item` of a stream: registers a waiter for it (`owner` is answered as
    /// for `wait`, naming the item unless the stream ended first), or `None` if the stream has
    /// already ended before it.
    pub fn stream_next(
        &mut self,
        holder: Holder,
        owner: WaitOwner,
        item: ObjectId,
        out: &mut Vec<Action>,
    ) -> Option<WaiterId> {
        let s = self.streams.map.get_mut(&{ item.task })?;
        if item.index < 2 || s.caller != holder {
            return None;
        }
        if !self.objects.contains_key(&item) {
            if s.finished {
                match s.error.take() {
                    Some(e) => {
                        self.new_object(item);
                        self.incref(holder, &[item]);
                        self.object_failed(item, e, out);
                    }
                    None => {
                        self.streams.map.remove(&{ item.task });
                        return None;
                    }
                }
            } else {
                s.declared = s.declared.max(item.index);
                self.new_object(item);
                self.incref(holder, &[item]);
            }
        }
        Some(self.add_waiter_inner(owner, &[item], 1, false, true, out))
    }

    /// After a local `stream_next` waiter woke: what the caller got. An end-of-stream item's
    /// reference is dropped here.
    pub fn stream_take(
        &mut self,
        holder: Holder,
        item: ObjectId,
        out: &mut Vec<Action>,
    ) -> StreamStep {
        match self.objects.get(&item).map(|o| &o.state) {
            Some(ObjectState::Ready(_)) => StreamStep::Item { failed: false },
            Some(ObjectState::Failed(e)) if e.kind != ErrorKind::EndOfStream => {
                StreamStep::Item { failed: true }
            }
            Some(ObjectState::Failed(_)) => {
                self.decref(holder, &[item], out);
                if self.streams.map.get(&{ item.task }).is_some_and(|s| s.finished) {
                    self.streams.map.remove(&{ item.task });
                }
                StreamStep::End
            }
            Some(ObjectState::Pending) | None => StreamStep::End,
        }
    }

    /// The `ready` list of a worker's `stream_next` answer.
    pub(super) fn stream_reply(&mut self, holder: Holder, ids: &[ObjectId]) -> Vec<ObjectId> {
        let Some(item) = ids.first().copied() else { return Vec::new() };
        let mut out = Vec::new();
        match self.stream_take(holder, item, &mut out) {
            StreamStep::Item { .. } => vec![item],
            StreamStep::End => Vec::new(),
        }
    }

    /// The streaming task `tid` is over (`err`: it failed). Items asked for and never made
    /// resolve now.
    pub(super) fn stream_finished(
        &mut self,
        tid: TaskId,
        err: Option<Arc<ErrorPayload>>,
        out: &mut Vec<Action>,
    ) {
        let Some(s) = self.streams.map.get_mut(&tid) else { return };
        if matches!(s.caller, Holder::Peer(_)) {
            // Its caller's node keeps the stream's state; it learns the end from the result.
            self.streams.map.remove(&tid);
            return;
        }
        s.finished = true;
        s.error = err.clone();
        let (from, to) = (s.produced + 1, s.declared);
        for index in from..=to {
            let id = ObjectId::for_return(tid, index);
            if !matches!(self.objects.get(&id).map(|o| &o.state), Some(ObjectState::Pending)) {
                continue;
            }
            let e = match self.streams.map.get_mut(&tid).and_then(|s| s.error.take()) {
                Some(e) => e,
                None => end_of_stream(""),
            };
            self.object_failed(id, e, out);
        }
    }

    /// `holder` will not take the items of `task` from `from` on: their references go.
    pub fn stream_release(
        &mut self,
        holder: Holder,
        task: TaskId,
        from: u32,
        out: &mut Vec<Action>,
    ) {
        let Some(s) = self.streams.map.get_mut(&task) else { return };
        if s.caller != holder {
            return;
        }
        let from = from.max(2);
        s.released_from = Some(s.released_from.map_or(from, |f| f.min(from)));
        let hi = s.produced.max(s.declared);
        let finished = s.finished;
        for index in from..=hi {
            let id = ObjectId::for_return(task, index);
            if self.objects.contains_key(&id) {
                self.decref(holder, &[id], out);
            }
        }
        if finished {
            self.streams.map.remove(&task);
        }
    }
}
