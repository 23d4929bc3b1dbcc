//! Identifiers of tasks, objects, functions and workers.
//!
//! Ids are made locally, without asking anyone: a task id is a random per-process prefix and a
//! counter, so any process (driver or worker) can name the results of the tasks it submits the
//! moment it submits them.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// A task, unique across the cluster.
///
/// Aligned to 8 bytes, not the 16 of a `u128`: an `ObjectId` (this and a `u32`) is then 24
/// bytes instead of 32, and so is every hash-table slot keyed by one (issue 19: a queued task
/// costs its driver a task entry, an object entry and a ref-table entry). Read the field by
/// value (`{ id.0 }`): a packed field cannot be borrowed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[repr(C, packed(8))]
pub struct TaskId(pub u128);

/// An object: the `index`-th return of a task (1-based), or a `put` (index 0).
///
/// 20 bytes, 4-aligned: no padding after `index`, so a table slot can put a `u32` of its own
/// there (the scheduler's reference count, the ref table's count: 8 bytes less per slot of the
/// tables every queued task has an entry in). Read `id.task` by value: a field of a packed
/// struct cannot be borrowed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[repr(C, packed(4))]
pub struct ObjectId {
    pub task: TaskId,
    pub index: u32,
}

/// An actor, named by the id of the task that created it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ActorId(pub TaskId);

impl ActorId {
    /// The object that stands for the actor: ready once its `__init__` has run, and referenced
    /// by every handle (the actor is stopped when none is left, unless it is named or detached).
    pub fn object(self) -> ObjectId {
        ObjectId::for_return(self.0, 1)
    }
}

impl fmt::Debug for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Actor({:032x})", { self.0 .0 })
    }
}

/// A pickled function, named by a hash of its bytes so it is shipped to each worker only once.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FunctionId(pub [u8; 16]);

/// A worker process of one node.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct WorkerId(pub u32);

impl ObjectId {
    pub const BYTES: usize = 20;

    pub fn for_return(task: TaskId, index: u32) -> Self {
        ObjectId { task, index }
    }

    pub fn to_bytes(self) -> [u8; Self::BYTES] {
        let mut out = [0u8; Self::BYTES];
        out[..16].copy_from_slice(&self.task.0.to_be_bytes());
        out[16..].copy_from_slice(&self.index.to_be_bytes());
        out
    }

    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() != Self::BYTES {
            return None;
        }
        let task = u128::from_be_bytes(b[..16].try_into().ok()?);
        let index = u32::from_be_bytes(b[16..].try_into().ok()?);
        Some(ObjectId { task: TaskId(task), index })
    }

    pub fn hex(self) -> String {
        self.to_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Task({:032x})", { self.0 })
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Object({:032x}.{})", { self.task.0 }, self.index)
    }
}

impl fmt::Debug for FunctionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Function(")?;
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

/// A hasher for ids, which are random prefixes and counters already: a multiply per word
/// instead of SipHash, for the per-task inserts and lookups of the scheduler's tables, the
/// process's ref table and the state API's. Ids come from the cluster's own authenticated
/// processes, so flooding one bucket is not a concern.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }

    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn write_u128(&mut self, v: u128) {
        self.write_u64(v as u64);
        self.write_u64((v >> 64) as u64);
    }
}

/// The `BuildHasher` of [`IdHasher`].
pub type IdBuildHasher = std::hash::BuildHasherDefault<IdHasher>;

/// A hash map keyed by ids (see [`IdHasher`]).
pub type IdMap<K, V> = std::collections::HashMap<K, V, IdBuildHasher>;

/// Makes task ids for one process: a random 64-bit prefix and a counter.
pub struct IdGenerator {
    prefix: u64,
    counter: AtomicU64,
}

impl IdGenerator {
    pub fn new() -> Self {
        let mut h = RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        IdGenerator { prefix: h.finish(), counter: AtomicU64::new(1) }
    }

    pub fn next_task(&self) -> TaskId {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        TaskId(((self.prefix as u128) << 64) | n as u128)
    }
}

impl Default for IdGenerator {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_id_bytes_roundtrip() {
        let g = IdGenerator::new();
        let id = ObjectId::for_return(g.next_task(), 3);
        assert_eq!(ObjectId::from_bytes(&id.to_bytes()), Some(id));
        assert_eq!(ObjectId::from_bytes(&[1, 2, 3]), None);
        assert_eq!(id.hex().len(), 40);
    }

    #[test]
    fn generators_in_one_process_do_not_collide() {
        let a = IdGenerator::new();
        let b = IdGenerator::new();
        assert_ne!(a.next_task(), b.next_task());
    }
}
