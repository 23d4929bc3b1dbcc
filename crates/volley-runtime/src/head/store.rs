//! Where the head keeps its directory: a storage trait, and the in-memory store used today.
//!
//! The head's tables (named actors, placement groups, jobs, a key-value table) go through
//! [`HeadStore`] so that a head which persists its state (a later step) only adds another
//! implementation; nothing else of the runtime changes.

use std::collections::BTreeMap;

pub use volley_proto::JobInfo;
use volley_proto::{NamedActor, NodeId, PgInfo};

/// The head's tables, for the whole cluster. Methods take what a caller has at hand and never
/// fail: the in-memory store cannot, and a persistent one is expected to keep its own errors
/// (it logs them and serves what it has) rather than stop the head.
pub trait HeadStore: Send {
    /// Records a named actor (replacing an entry of the same namespace and name).
    fn put_actor(&mut self, actor: NamedActor);
    /// Forgets a named actor; the entry, if there was one.
    fn remove_actor(&mut self, namespace: &str, name: &str) -> Option<NamedActor>;
    /// Every named actor, by namespace and name.
    fn actors(&self) -> Vec<NamedActor>;

    /// Records a placement group made by the driver of node `owner` (replacing one with its id).
    fn put_group(&mut self, owner: NodeId, group: PgInfo);
    /// Forgets a placement group; the entry, if there was one.
    fn remove_group(&mut self, id: &str) -> Option<(NodeId, PgInfo)>;
    /// Every placement group with the node that made it, by id.
    fn groups(&self) -> Vec<(NodeId, PgInfo)>;

    /// Records a job (replacing the entry for its node).
    fn put_job(&mut self, job: JobInfo);
    fn job(&self, node: NodeId) -> Option<JobInfo>;
    /// Every job, by node.
    fn jobs(&self) -> Vec<JobInfo>;

    /// Stores `value` under `key` in `namespace`; with `overwrite` false an existing value is
    /// kept. True if the value was stored.
    fn kv_put(&mut self, namespace: &str, key: &[u8], value: Vec<u8>, overwrite: bool) -> bool;
    fn kv_get(&self, namespace: &str, key: &[u8]) -> Option<Vec<u8>>;
    /// True if there was a value to delete.
    fn kv_del(&mut self, namespace: &str, key: &[u8]) -> bool;
    /// The keys of `namespace` that start with `prefix`, in order.
    fn kv_keys(&self, namespace: &str, prefix: &[u8]) -> Vec<Vec<u8>>;

    /// Adds `delta` to the integer under `key` (decimal text; a missing key counts as 0) and
    /// stores the sum; the new value, or why not (not an integer, an overflow), with nothing
    /// changed. One call is one step under the head's lock, so increments never get lost.
    fn kv_incr(&mut self, namespace: &str, key: &[u8], delta: i64) -> Result<i64, String> {
        let now = match self.kv_get(namespace, key) {
            None => 0,
            Some(v) => parse_counter(&v)?,
        };
        let new = now.checked_add(delta).ok_or_else(|| {
            format!("incrementing {now} by {delta} overflows a 64-bit integer; nothing changed")
        })?;
        self.kv_put(namespace, key, new.to_string().into_bytes(), true);
        Ok(new)
    }

    /// Stores `new` under `key` (`None`: deletes it) only if the value there is `expected`
    /// (`None`: absent); true if it swapped.
    fn kv_compare_and_set(
        &mut self,
        namespace: &str,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<Vec<u8>>,
    ) -> bool {
        if self.kv_get(namespace, key).as_deref() != expected {
            return false;
        }
        match new {
            Some(v) => {
                self.kv_put(namespace, key, v, true);
            }
            None => {
                self.kv_del(namespace, key);
            }
        }
        true
    }

    /// Stores `value` under `key` unless a value is there; the value there afterwards.
    fn kv_setdefault(&mut self, namespace: &str, key: &[u8], value: Vec<u8>) -> Vec<u8> {
        match self.kv_get(namespace, key) {
            Some(v) => v,
            None => {
                self.kv_put(namespace, key, value.clone(), false);
                value
            }
        }
    }
}

/// A counter's value from its stored bytes: an i64's decimal text (what `kv_incr` writes).
pub fn parse_counter(v: &[u8]) -> Result<i64, String> {
    let text = std::str::from_utf8(v).ok();
    if let Some(n) = text.and_then(|t| t.trim().parse::<i64>().ok()) {
        return Ok(n);
    }
    let what = match text {
        Some(t) if t.chars().count() <= 40 => format!("the text {t:?}"),
        Some(t) => format!(
            "{} bytes of text starting {:?}",
            v.len(),
            t.chars().take(40).collect::<String>()
        ),
        None => format!("{} bytes that are not text", v.len()),
    };
    Err(format!(
        "the value there is not an integer but {what}; incr counts only on integers (a value \
         written by incr, or an integer's decimal text)"
    ))
}

/// The name an actor is kept under in the directory: its name, or for a detached actor
/// without one (listed so that it appears somewhere), a key made of its id that no lookup by a
/// user's name matches.
pub fn directory_name(a: &NamedActor) -> String {
    if a.name.is_empty() {
        format!("\u{0}detached:{:032x}", { a.actor.0 .0 })
    } else {
        a.name.clone()
    }
}

/// The head's tables in memory: they live as long as the head's process.
#[derive(Default)]
pub struct MemoryStore {
    actors: BTreeMap<(String, String), NamedActor>,
    groups: BTreeMap<String, (NodeId, PgInfo)>,
    jobs: BTreeMap<NodeId, JobInfo>,
    kv: BTreeMap<(String, Vec<u8>), Vec<u8>>,
}

impl HeadStore for MemoryStore {
    fn put_actor(&mut self, actor: NamedActor) {
        self.actors.insert((actor.namespace.clone(), directory_name(&actor)), actor);
    }

    fn remove_actor(&mut self, namespace: &str, name: &str) -> Option<NamedActor> {
        self.actors.remove(&(namespace.to_string(), name.to_string()))
    }

    fn actors(&self) -> Vec<NamedActor> {
        self.actors.values().cloned().collect()
    }

    fn put_group(&mut self, owner: NodeId, group: PgInfo) {
        self.groups.insert(group.id.clone(), (owner, group));
    }

    fn remove_group(&mut self, id: &str) -> Option<(NodeId, PgInfo)> {
        self.groups.remove(id)
    }

    fn groups(&self) -> Vec<(NodeId, PgInfo)> {
        self.groups.values().cloned().collect()
    }

    fn put_job(&mut self, job: JobInfo) {
        self.jobs.insert(job.node, job);
    }

    fn job(&self, node: NodeId) -> Option<JobInfo> {
        self.jobs.get(&node).cloned()
    }

    fn jobs(&self) -> Vec<JobInfo> {
        self.jobs.values().cloned().collect()
    }

    fn kv_put(&mut self, namespace: &str, key: &[u8], value: Vec<u8>, overwrite: bool) -> bool {
        let k = (namespace.to_string(), key.to_vec());
        if !overwrite && self.kv.contains_key(&k) {
            return false;
        }
        self.kv.insert(k, value);
        true
    }

    fn kv_get(&self, namespace: &str, key: &[u8]) -> Option<Vec<u8>> {
        self.kv.get(&(namespace.to_string(), key.to_vec())).cloned()
    }

    fn kv_del(&mut self, namespace: &str, key: &[u8]) -> bool {
        self.kv.remove(&(namespace.to_string(), key.to_vec())).is_some()
    }

    fn kv_keys(&self, namespace: &str, prefix: &[u8]) -> Vec<Vec<u8>> {
        let from = (namespace.to_string(), prefix.to_vec());
        self.kv
            .range(from..)
            .take_while(|((ns, k), _)| ns == namespace && k.starts_with(prefix))
            .map(|((_, k), _)| k.clone())
            .collect()
    }
}
