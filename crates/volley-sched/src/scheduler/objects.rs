//! Objects and waits as a part of the scheduler: each object's state, reference count and who
//! waits on it (`get`/`wait` waiters, dependent tasks, watchers), and the waits in progress.
//! What happens when an object becomes ready or is freed spans other parts (tasks become
//! runnable, actors are stopped, peers are told) and is the coordinator's.

use std::collections::HashMap;
use std::sync::Arc;

use volley_proto::{ErrorKind, ErrorPayload, ObjectData, ObjectId, TaskId};

use super::{error, Holder, ObjectState, WaitOwner, WaiterId};

/// One object as the scheduler sees it.
pub(super) struct ObjectEntry {
    /// Its id: the table's key, held here (a 20-byte id and `refs` fill 24 bytes with no
    /// padding; a `HashMap` slot would hold a second copy of the key).
    id: ObjectId,
    pub(super) state: ObjectState,
    pub(super) refs: u32,
    /// Who waits for it, boxed: a queued task's result object is waited on by nobody until
    /// someone `get`s it, and three empty `Vec`s inline cost 72 bytes in every slot of the
    /// table (issue 19: a queued task in 300 bytes). Taken when the object settles.
    waiting: Option<Box<Waiting>>,
}

/// The `get`/`wait` waiters, dependent tasks and watchers of a pending object.
#[derive(Default)]
pub(super) struct Waiting {
    pub(super) waiters: Vec<WaiterId>,
    pub(super) dependents: Vec<TaskId>,
    pub(super) watchers: Vec<Holder>,
}

impl ObjectEntry {
    /// Object `id` in `state`, which nobody references or waits on yet.
    pub(super) fn new(id: ObjectId, state: ObjectState) -> Self {
        ObjectEntry { id, state, refs: 0, waiting: None }
    }

    /// Its waiting lists, made on first use.
    pub(super) fn waiting(&mut self) -> &mut Waiting {
        self.waiting.get_or_insert_with(Box::default)
    }
}

/// What giving an object its final state found (see `Objects::settle`).
pub(super) enum Settled {
    /// The object is not known (freed already).
    Unknown,
    /// Nobody references it any more: it is dropped, its state with it.
    Dropped,
    /// It has its state now; these waited for it, and are the caller's to tell.
    Kept { waiters: Vec<WaiterId>, dependents: Vec<TaskId>, watchers: Vec<Holder> },
}

/// Every object this node knows.
#[derive(Default)]
pub(super) struct Objects {
    /// Keyed by each entry's own `id` (held in the entry): every queued task's result
    /// has an entry, and at a million the table is half empty after its last doubling, so
    /// each byte of a slot costs two (issue 19).
    map: hashbrown::HashTable<ObjectEntry>,
}

fn hash(id: &ObjectId) -> u64 {
    use std::hash::BuildHasher;
    volley_proto::IdBuildHasher::default().hash_one(id)
}

fn hash_entry(o: &ObjectEntry) -> u64 {
    hash(&o.id)
}

#[allow(dead_code)] // The accessors of `table_access!`; each part uses those it needs.
impl Objects {
    pub(super) fn get(&self, id: &ObjectId) -> Option<&ObjectEntry> {
        self.map.find(hash(id), |o| o.id == *id)
    }

    pub(super) fn get_mut(&mut self, id: &ObjectId) -> Option<&mut ObjectEntry> {
        self.map.find_mut(hash(id), |o| o.id == *id)
    }

    pub(super) fn contains_key(&self, id: &ObjectId) -> bool {
        self.get(id).is_some()
    }

    pub(super) fn remove(&mut self, id: &ObjectId) -> Option<ObjectEntry> {
        let found = self.map.find_entry(hash(id), |o| o.id == *id).ok()?;
        Some(found.remove().0)
    }

    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&ObjectId, &ObjectEntry)> {
        self.map.iter().map(|o| (&o.id, o))
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = &ObjectId> {
        self.map.iter().map(|o| &o.id)
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &ObjectEntry> {
        self.map.iter()
    }
}

impl Objects {
    /// Gives back the table's room when it grew for a burst and is mostly empty now (see
    /// `crate::shrink`).
    pub(super) fn shrink(&mut self) -> bool {
        if !crate::shrink::is_sparse(self.map.len(), self.map.capacity()) {
            return false;
        }
        self.map.shrink_to(crate::shrink::target(self.map.len()), hash_entry);
        true
    }

    /// Records `id` as pending (replacing what was known of it).
    pub(super) fn insert_pending(&mut self, id: ObjectId) {
        let entry = ObjectEntry::new(id, ObjectState::Pending);
        match self.map.entry(hash(&id), |o| o.id == id, hash_entry) {
            hashbrown::hash_table::Entry::Occupied(mut o) => *o.get_mut() = entry,
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert(entry);
            }
        }
    }

    /// Records `id` with a value, unless it is known already.
    pub(super) fn insert_ready_if_new(&mut self, id: ObjectId, value: Arc<ObjectData>) {
        if let hashbrown::hash_table::Entry::Vacant(v) =
            self.map.entry(hash(&id), |o| o.id == id, hash_entry)
        {
            v.insert(ObjectEntry::new(id, ObjectState::Ready(value)));
        }
    }

    /// Adds a reference to `id`, if it exists; whether it does.
    pub(super) fn incref(&mut self, id: &ObjectId) -> bool {
        match self.get_mut(id) {
            Some(o) => {
                o.refs += 1;
                true
            }
            None => false,
        }
    }

    /// Gives object `id` its value or error (`state`, made only if it is kept), and hands back
    /// who waited for it; an object nobody references any more is dropped instead.
    pub(super) fn settle(&mut self, id: &ObjectId, state: impl FnOnce() -> ObjectState) -> Settled {
        let Some(o) = self.get_mut(id) else {
            return Settled::Unknown;
        };
        if o.refs == 0 {
            self.remove(id);
            return Settled::Dropped;
        }
        o.state = state();
        let Waiting { waiters, dependents, watchers } =
            o.waiting.take().map(|w| *w).unwrap_or_default();
        Settled::Kept { waiters, dependents, watchers }
    }

    pub(super) fn state(&self, id: &ObjectId) -> Option<&ObjectState> {
        self.get(id).map(|o| &o.state)
    }

    /// True once the object has a value or an error (or is unknown, which `result_of` reports).
    pub(super) fn is_ready(&self, id: &ObjectId) -> bool {
        !matches!(self.state(id), Some(ObjectState::Pending))
    }

    /// The value or error of a ready object; why there is none otherwise.
    pub(super) fn result_of(&self, id: &ObjectId) -> Result<Arc<ObjectData>, Arc<ErrorPayload>> {
        match self.state(id) {
            Some(ObjectState::Ready(v)) => Ok(v.clone()),
            Some(ObjectState::Failed(e)) => Err(e.clone()),
            Some(ObjectState::Pending) => {
                Err(error(ErrorKind::ObjectLost, "", format!("object {id:?} is not ready")))
            }
            None => Err(error(
                ErrorKind::ObjectLost,
                "",
                format!("object {id:?} does not exist (it was freed, or never created here)"),
            )),
        }
    }
}

/// A `get`/`wait` in progress.
pub(super) struct Waiter {
    pub(super) owner: WaitOwner,
    pub(super) ids: Vec<ObjectId>,
    pub(super) remaining: usize,
    pub(super) fetch: bool,
    /// A streaming caller's wait for one item (see `streams`).
    pub(super) stream: bool,
}

/// The waits in progress, by id.
pub(super) struct Waiters {
    map: HashMap<WaiterId, Waiter>,
    next: WaiterId,
}

impl Default for Waiters {
    fn default() -> Self {
        Waiters { map: HashMap::new(), next: 1 }
    }
}

impl Waiters {
    /// Records `w` under a fresh id.
    pub(super) fn add(&mut self, w: Waiter) -> WaiterId {
        let id = self.next;
        self.next += 1;
        self.map.insert(id, w);
        id
    }

    /// One object `w` waits for is ready; whether that was the last it needed.
    pub(super) fn one_ready(&mut self, w: WaiterId) -> bool {
        match self.map.get_mut(&w) {
            Some(w) => {
                w.remaining = w.remaining.saturating_sub(1);
                w.remaining == 0
            }
            None => false,
        }
    }

    pub(super) fn remove(&mut self, w: &WaiterId) -> Option<Waiter> {
        self.map.remove(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use volley_proto::TaskId;

    fn oid(n: u128) -> ObjectId {
        ObjectId::for_return(TaskId(n), 1)
    }

    #[test]
    fn states_and_results_of_known_and_unknown_objects() {
        let mut o = Objects::default();
        let (a, b, gone) = (oid(1), oid(2), oid(3));
        o.insert_pending(a);
        assert!(!o.is_ready(&a));
        assert!(o.result_of(&a).is_err_and(|e| e.message.contains("is not ready")));
        o.insert_ready_if_new(b, Arc::new(ObjectData::default()));
        o.insert_ready_if_new(a, Arc::new(ObjectData::default()));
        assert!(!o.is_ready(&a), "a known object is not replaced");
        assert!(o.is_ready(&b) && o.result_of(&b).is_ok());
        assert!(o.is_ready(&gone), "unknown counts as ready; result_of says why");
        let e = o.result_of(&gone).expect_err("gone");
        assert_eq!(e.kind, ErrorKind::ObjectLost);
        assert!(e.message.contains("does not exist"));
        assert!(o.incref(&a) && !o.incref(&gone));
        assert_eq!((o.get(&a).map(|e| e.refs), o.len()), (Some(1), 2));
    }

    #[test]
    fn a_waiter_is_done_when_its_last_object_is_ready() {
        let mut ws = Waiters::default();
        let w = |remaining| Waiter {
            owner: WaitOwner::Local,
            ids: vec![],
            remaining,
            fetch: false,
            stream: false,
        };
        let (one, two) = (ws.add(w(1)), ws.add(w(2)));
        assert_ne!(one, two);
        assert!(ws.one_ready(one));
        assert!(!ws.one_ready(two) && ws.one_ready(two));
        assert!(ws.remove(&one).is_some() && ws.remove(&one).is_none());
        assert!(!ws.one_ready(one), "a removed waiter is never done");
    }

    #[test]
    fn settling_hands_back_who_waited_or_drops_an_object_nobody_references() {
        let mut o = Objects::default();
        let (kept, dropped) = (oid(1), oid(2));
        o.insert_pending(kept);
        o.insert_pending(dropped);
        o.incref(&kept);
        if let Some(e) = o.get_mut(&kept) {
            e.waiting().waiters.push(7);
            e.waiting().dependents.push(TaskId(8));
            e.waiting().watchers.push(Holder::Local);
        }
        let ready = || ObjectState::Ready(Arc::new(ObjectData::default()));
        match o.settle(&kept, ready) {
            Settled::Kept { waiters, dependents, watchers } => {
                assert_eq!(
                    (waiters, dependents, watchers),
                    (vec![7], vec![TaskId(8)], vec![Holder::Local])
                );
            }
            _ => panic!("kept"),
        }
        assert!(o.is_ready(&kept) && o.result_of(&kept).is_ok());
        assert!(matches!(o.settle(&dropped, ready), Settled::Dropped));
        assert!(!o.contains_key(&dropped));
        assert!(matches!(o.settle(&dropped, ready), Settled::Unknown));
    }
}
