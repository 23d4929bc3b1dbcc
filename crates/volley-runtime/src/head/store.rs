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
