//! The head: what the cluster keeps in one place. It holds the membership (which nodes are
//! live, numbered in joining order, with the load each last reported) and a directory for the
//! whole cluster (named actors, placement groups, jobs, a key-value table) behind a storage trait
//! ([`HeadStore`]; [`MemoryStore`] today, a persistent store later).
//!
//! The head is sans-IO: the cluster's connections (`cluster::membership`) call it when a node
//! joins, beats or leaves, and a node that runs alone is its own head. The directory is fed from
//! what members already report with each heartbeat (the named actors they host, the placement
//! groups their drivers made), so a name or group made anywhere shows up at the head within a
//! heartbeat, and goes when its node does; a named actor's creator also reports it as its
//! creation returns (`HeadRequest::NameCreated`, or `NamePlaced` with the node it was placed
//! on), so it is listed at once. A node resolves a name it does
//! not host itself through the head (`HeadRequest::LookupName`), so a driver finds an actor that
//! another driver named on another node as soon as the head has it, not a view later.
//!
//! Nodes, drivers and tasks read the directory and use the key-value table with a
//! [`HeadRequest`] ([`Head::serve`]): a node that is its own head calls it, a member sends it
//! over the network (`PeerMsg::Head`, see `cluster::status`).

pub mod big_values;
pub mod jobs;
mod store;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use volley_proto::{
    Directory, HeadAnswer, HeadRequest, JobRow, JobStatus, NamedActor, NodeId, NodeSnapshot,
    PgInfo, Reservation, MAX_KV_WATCH_MS,
};
use volley_store::sync::{Condvar, Mutex};

pub use store::{HeadStore, JobInfo, MemoryStore};

/// How long a name claimed for a creation holds without the actor showing up in its node's
/// heartbeat (it does with the next one, a fraction of this; a claim outlives a node that died
/// in between by this much at most).
const RESERVATION: Duration = Duration::from_secs(10);

/// A named actor the head listed at its creation (`name_created`, `name_placed`) leaves the
/// directory at the this-many-th heartbeat of the node that runs it that does not list it
/// (the ones before may have been built before the creation reached that node). One that died
/// before any heartbeat listed it leaves then, not a whole [`RESERVATION`] later.
const UNLISTED_BEATS: u8 = 3;

/// A name held for an actor the directory does not list from its node's heartbeats yet.
#[derive(Debug, Clone, Copy)]
struct Claim {
    owner: NodeId,
    at: Instant,
    /// (A listed actor's claim) how many more heartbeats of `owner` it outlives unlisted;
    /// `None` for a claim ahead of a creation (`reserve_name`), which only time ends.
    beats: Option<u8>,
}

/// The head's own number in the cluster (members get 2, 3, ... in joining order).
pub const HEAD_ID: NodeId = NodeId(1);

/// The cluster's membership and directory. See the module documentation.
pub struct Head {
    epoch: u64,
    members: Mutex<Members>,
    dir: Mutex<Box<dyn HeadStore>>,
    /// Notified (under `dir`'s lock) whenever a key-value entry changes, for `KvWatch`.
    kv_changed: Condvar,
    /// Each key's version for `KvWatch` (locked after `dir`, never before it).
    kv_versions: Mutex<KvVersions>,
    /// Names claimed for creations not yet in the directory, with the claiming node and when
    /// (locked after `dir`, never before it).
    reserved: Mutex<HashMap<(String, String), Claim>>,
    /// Submitted jobs (`volley job submit`), run by a cluster's head only.
    jobs: Arc<jobs::Jobs>,
    /// The task and actor tables of the state API (see `state`): the cluster's on the head; on
    /// a member, its own rows until they are sent to the head.
    pub tables: crate::state::Tables,
    /// Lets go of the big `SharedDict` values no key holds any more (see [`big_values`]).
    releaser: std::sync::OnceLock<Arc<dyn big_values::Releaser>>,
    /// Told of the key-value changes it wants (under the table's lock: it must not block or
    /// call back into the head): serve's ingress follows its documents this way.
    kv_hook: std::sync::OnceLock<Box<dyn KvHook>>,
}

/// Who is told of key-value changes (see [`Head::set_kv_hook`]).
pub trait KvHook: Send + Sync {
    /// Whether a change of `key` in `namespace` is of interest (asked for every change: cheap).
    fn wants(&self, namespace: &str, key: &[u8]) -> bool;
    /// `key` changed to `value` (`None`: deleted). Runs under the table's lock: take note, do
    /// not wait.
    fn changed(&self, namespace: &str, key: &[u8], value: Option<Vec<u8>>);
}

struct Members {
    next: u32,
    nodes: HashMap<NodeId, (NodeSnapshot, Instant)>,
}

impl Head {
    /// A head keeping its directory in `store`, with a fresh random epoch.
    pub fn new(store: Box<dyn HeadStore>) -> Head {
        Head {
            epoch: new_epoch(),
            members: Mutex::new(Members { next: HEAD_ID.0 + 1, nodes: HashMap::new() }),
            dir: Mutex::new(store),
            kv_changed: Condvar::new(),
            kv_versions: Mutex::new(KvVersions::default()),
            reserved: Mutex::new(HashMap::new()),
            jobs: Arc::new(jobs::Jobs::default()),
            tables: crate::state::Tables::default(),
            releaser: std::sync::OnceLock::new(),
            kv_hook: std::sync::OnceLock::new(),
        }
    }

    /// Who lets go of a big `SharedDict` value's object once no key holds it: the node.
    pub fn set_releaser(&self, releaser: Arc<dyn big_values::Releaser>) {
        let _ = self.releaser.set(releaser);
    }

    /// Who is told of each change of a key-value entry, with its namespace and key (the first
    /// one set stays). It runs under the table's lock: it must only take note.
    pub fn set_kv_hook(&self, hook: Box<dyn KvHook>) {
        let _ = self.kv_hook.set(hook);
    }

    /// The object the value under `key` holds (a big value's marker), before a change.
    fn held_before(
        dir: &dyn HeadStore,
        namespace: &str,
        key: &[u8],
    ) -> Option<volley_proto::ObjectId> {
        if !namespace.starts_with("shareddict:") {
            return None;
        }
        big_values::held_object(namespace, &dir.kv_get(namespace, key)?)
    }

    /// Lets go of `id`, the object of a big value no key holds any more. Called with the
    /// head's lock released (the node's scheduler takes its own).
    fn release(&self, id: Option<volley_proto::ObjectId>) {
        if let (Some(id), Some(r)) = (id, self.releaser.get()) {
            r.release(&[id]);
        }
    }

    /// Chosen at random when the head starts (see `PeerMsg::Welcome`): members that see another
    /// one know the head restarted and node numbers started over. Never 0.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    // ------------------------------------------------------------------ membership

    /// A node joins: its number. A driver's node starts a job.
    pub fn join(&self, mut info: NodeSnapshot) -> NodeId {
        let id = {
            let mut m = self.members.lock();
            let id = NodeId(m.next);
            m.next += 1;
            id
        };
        info.id = id;
        if info.driver {
            let job = JobInfo { node: id, pid: info.pid, started_ms: now_ms(), ended_ms: None };
            if let Some(submitted) = self.jobs.link_session(job.pid, id.0, job.started_ms) {
                // Its tasks and actors show the id `volley job submit` gave (as its driver's
                // get_job_id() does), not the driver node's number.
                self.tables.name_job(id, submitted);
            }
            self.dir.lock().put_job(job);
        }
        self.record(id, info, true);
        id
    }

    /// A lone driver's node lists its own session as job 0 (a cluster's head lists the drivers
    /// that joined it instead).
    pub fn local_job(&self, pid: u32, started_ms: u64) {
        let mut dir = self.dir.lock();
        if dir.job(NodeId(0)).is_none() {
            dir.put_job(JobInfo { node: NodeId(0), pid, started_ms, ended_ms: None });
        }
    }

    /// The head's own entry, refreshed (its load, what it hosts): its heartbeat.
    pub fn update_self(&self, mut info: NodeSnapshot) {
        info.id = HEAD_ID;
        self.record(HEAD_ID, info, true);
    }

    /// The head's own entry, refreshed for a question (not a heartbeat: a claim's count of
    /// heartbeats does not move).
    pub fn refresh_self(&self, mut info: NodeSnapshot) {
        info.id = HEAD_ID;
        self.record(HEAD_ID, info, false);
    }

    /// The entry of a node that is in no cluster (its own head), refreshed: it shows as node 0,
    /// the number its task rows, its job and `volley.nodes()` give it.
    pub fn update_alone(&self, mut info: NodeSnapshot) {
        info.id = NodeId(0);
        self.record(HEAD_ID, info, false);
    }

    /// A member's heartbeat: records its load and directory entries. Gives how long it had been
    /// silent (`None` for a node not in the view, e.g. one declared dead meanwhile) and the view.
    pub fn beat(
        &self,
        id: NodeId,
        mut info: NodeSnapshot,
    ) -> (Option<Duration>, Vec<NodeSnapshot>) {
        info.id = id;
        let gap = self.members.lock().nodes.get(&id).map(|(_, seen)| seen.elapsed());
        self.record(id, info, true);
        (gap, self.view())
    }

    /// Drops the members not heard from for `dead_after` (never the head itself): what they
    /// were, for the log.
    pub fn expire(&self, dead_after: Duration) -> Vec<NodeSnapshot> {
        let dead: Vec<NodeId> = {
            let m = self.members.lock();
            m.nodes
                .iter()
                .filter(|(id, (_, seen))| **id != HEAD_ID && seen.elapsed() > dead_after)
                .map(|(id, _)| *id)
                .collect()
        };
        dead.into_iter().filter_map(|id| self.leave(id)).collect()
    }

    /// A member left (its connection to the head closed, or it was declared dead): its entry,
    /// if it was still in the view. What it hosted leaves the directory, and its job ends.
    pub fn leave(&self, id: NodeId) -> Option<NodeSnapshot> {
        let info = self.members.lock().nodes.remove(&id).map(|(i, _)| i)?;
        let mut dir = self.dir.lock();
        forget_node(dir.as_mut(), id);
        self.reserved.lock().retain(|_, c| c.owner != id);
        if let Some(mut job) = dir.job(id).filter(|j| j.ended_ms.is_none()) {
            job.ended_ms = Some(now_ms());
            dir.put_job(job);
        }
        Some(info)
    }

    /// Every live node, by number.
    pub fn view(&self) -> Vec<NodeSnapshot> {
        let m = self.members.lock();
        let mut v: Vec<NodeSnapshot> = m.nodes.values().map(|(i, _)| i.clone()).collect();
        v.sort_by_key(|i| i.id);
        v
    }

    /// Records a node's entry and what it reports for the directory: the named actors it hosts
    /// and the placement groups its driver made replace what it reported before. `beat`: it
    /// is the node's heartbeat (see [`Claim::beats`]).
    fn record(&self, id: NodeId, info: NodeSnapshot, beat: bool) {
        {
            let mut dir = self.dir.lock();
            let dir = dir.as_mut();
            // A name its node reported at creation (`name_created`) stays listed until a
            // heartbeat lists it too: this one may have been built before the creation.
            let claimed = self.claims_of(id, &info, beat);
            for a in dir.actors() {
                // A detached actor without a name is told from others by its id.
                let kept = info.named.iter().any(|n| {
                    n.namespace == a.namespace
                        && n.name == a.name
                        && (!a.name.is_empty() || n.actor == a.actor)
                });
                let key = (a.namespace.clone(), a.name.clone());
                if a.node == id && !kept && !claimed.contains(&key) {
                    dir.remove_actor(&a.namespace, &store::directory_name(&a));
                }
            }
            for a in &info.named {
                dir.put_actor(NamedActor { node: id, ..a.clone() });
            }
            for (owner, g) in dir.groups() {
                if owner == id && !info.groups.iter().any(|x| x.id == g.id) {
                    dir.remove_group(&g.id);
                }
            }
            for g in &info.groups {
                dir.put_group(id, g.clone());
            }
        }
        self.members.lock().nodes.insert(id, (info, Instant::now()));
    }

    /// The names node `id` holds a fresh claim on; the claims of those its heartbeat `info`
    /// lists end (the listing holds the name from now on), and so do those of listed actors
    /// past their [`UNLISTED_BEATS`].
    fn claims_of(&self, id: NodeId, info: &NodeSnapshot, beat: bool) -> Vec<(String, String)> {
        let mut reserved = self.reserved.lock();
        if reserved.is_empty() {
            return Vec::new();
        }
        reserved.retain(|key, c| {
            if c.at.elapsed() >= RESERVATION {
                return false;
            }
            if c.owner != id {
                return true;
            }
            if info.named.iter().any(|n| n.namespace == key.0 && n.name == key.1) {
                return false;
            }
            match &mut c.beats {
                Some(n) if beat => {
                    *n = n.saturating_sub(1);
                    *n > 0
                }
                _ => true,
            }
        });
        reserved.iter().filter(|(_, c)| c.owner == id).map(|(k, _)| k.clone()).collect()
    }

    // ------------------------------------------------------------------ directory

    /// Every named actor of the cluster, by namespace and name.
    pub fn named_actors(&self) -> Vec<NamedActor> {
        self.dir.lock().actors()
    }

    /// Every placement group of the cluster, with the node whose driver made it.
    pub fn placement_groups(&self) -> Vec<(NodeId, PgInfo)> {
        self.dir.lock().groups()
    }

    /// Every job (driver) the cluster has had since the head started.
    pub fn jobs(&self) -> Vec<JobInfo> {
        self.dir.lock().jobs()
    }

    /// The submitted jobs (see [`jobs`]): `Jobs::enable` makes this head run them.
    pub fn job_table(&self) -> &Arc<jobs::Jobs> {
        &self.jobs
    }

    /// The head's own node's resources in all, in thousandths (`CPU`, `GPU`, custom): what
    /// the entrypoints of submitted jobs, which run there, share.
    fn capacity(&self) -> Vec<(String, u64)> {
        let m = self.members.lock();
        let Some((me, _)) = m.nodes.get(&HEAD_ID) else { return Vec::new() };
        let mut v = vec![("CPU".to_string(), u64::from(me.cpu_total_milli))];
        v.extend(me.resources.iter().map(|(name, total, _)| (name.clone(), *total)));
        v
    }

    /// Every job as the state API lists it (`job` rows): the submitted jobs, and the driver
    /// sessions that are no submitted job's (by node id, with no entrypoint; one that left
    /// reads SUCCEEDED: the head sees a driver leave, not how it ended), oldest first.
    /// The changes of submitted jobs' rows since the last call, oldest first (the history
    /// writes each, not only the last state it saw).
    pub fn take_job_changes(&self) -> Vec<JobRow> {
        self.jobs.take_changes()
    }

    pub fn job_rows(&self) -> Vec<JobRow> {
        let mut rows = self.jobs.rows();
        for s in self.jobs() {
            if rows.iter().any(|r| r.driver_node == Some(s.node.0)) {
                continue;
            }
            rows.push(JobRow {
                job_id: s.node.0.to_string(),
                status: if s.ended_ms.is_some() {
                    JobStatus::Succeeded
                } else {
                    JobStatus::Running
                },
                entrypoint: None,
                driver_pid: Some(s.pid),
                start_ms: s.started_ms,
                end_ms: s.ended_ms,
                exit_code: None,
                message: None,
                driver_node: Some(s.node.0),
            });
        }
        rows.sort_by_key(|r| r.start_ms);
        rows
    }

    /// The whole directory in one answer (one lock of the store, so its tables agree).
    pub fn directory(&self) -> Directory {
        let dir = self.dir.lock();
        Directory { actors: dir.actors(), groups: dir.groups(), jobs: dir.jobs() }
    }

    /// Answers a request from a node, a driver or a task (over the network or by a call).
    pub fn serve(&self, req: HeadRequest) -> HeadAnswer {
        if let Some(why) = req.check() {
            if matches!(req, HeadRequest::JobSubmit(_) | HeadRequest::JobUpload { .. }) {
                return HeadAnswer::JobRefused(why);
            }
            return HeadAnswer::Error(why);
        }
        match req {
            HeadRequest::KvPut { namespace, key, value, overwrite } => {
                HeadAnswer::Stored(self.kv_put(&namespace, &key, value, overwrite))
            }
            HeadRequest::KvGet { namespace, key } => {
                HeadAnswer::Value(self.kv_get(&namespace, &key).map(serde_bytes::ByteBuf::from))
            }
            HeadRequest::KvDelete { namespace, key } => {
                HeadAnswer::Deleted(self.kv_del(&namespace, &key))
            }
            HeadRequest::KvKeys { namespace, prefix } => HeadAnswer::Keys(
                self.kv_keys(&namespace, &prefix)
                    .into_iter()
                    .map(serde_bytes::ByteBuf::from)
                    .collect(),
            ),
            HeadRequest::KvIncr { namespace, key, delta } => {
                match self.kv_incr(&namespace, &key, delta) {
                    Ok(n) => HeadAnswer::Counter(n),
                    Err(why) => HeadAnswer::KvRefused(why),
                }
            }
            HeadRequest::KvCompareAndSet { namespace, key, expected, new } => {
                HeadAnswer::Stored(self.kv_compare_and_set(
                    &namespace,
                    &key,
                    expected.as_deref().map(|v| &v[..]),
                    new.map(|v| v.into_vec()),
                ))
            }
            HeadRequest::KvSetDefault { namespace, key, value } => HeadAnswer::Value(Some(
                serde_bytes::ByteBuf::from(self.kv_setdefault(&namespace, &key, value)),
            )),
            HeadRequest::KvWatch { namespace, key, seen, wait_ms } => {
                let wait = Duration::from_millis(u64::from(wait_ms.min(MAX_KV_WATCH_MS)));
                let (digest, changed, value) = self.kv_watch(&namespace, &key, seen, wait);
                HeadAnswer::KvWatched {
                    digest,
                    changed,
                    value: value.map(serde_bytes::ByteBuf::from),
                }
            }
            HeadRequest::KvPutMany { namespace, items } => {
                let items = items.into_iter().map(|(k, v)| (k.into_vec(), v.into_vec()));
                self.kv_put_many(&namespace, items.collect());
                HeadAnswer::Stored(true)
            }
            HeadRequest::KvItems { namespace, prefix } => HeadAnswer::Items(
                self.kv_items(&namespace, &prefix)
                    .into_iter()
                    .map(|(k, v)| (serde_bytes::ByteBuf::from(k), serde_bytes::ByteBuf::from(v)))
                    .collect(),
            ),
            HeadRequest::Directory => HeadAnswer::Directory(self.directory()),
            HeadRequest::ReserveName { namespace, name, node } => {
                HeadAnswer::Reservation(self.reserve_name(&namespace, &name, node))
            }
            HeadRequest::ReleaseName { namespace, name, node } => {
                HeadAnswer::Deleted(self.release_name(&namespace, &name, node))
            }
            HeadRequest::NameCreated(actor) => HeadAnswer::Stored(self.name_created(actor)),
            HeadRequest::NamePlaced { actor, by } => {
                HeadAnswer::Stored(self.name_placed(actor, by))
            }
            HeadRequest::State(q) => match self.serve_state(&q) {
                Ok(a) => HeadAnswer::State(a),
                Err(why) => HeadAnswer::Error(why),
            },
            HeadRequest::LookupName { namespace, name } => HeadAnswer::Named(
                self.dir
                    .lock()
                    .actors()
                    .into_iter()
                    .find(|a| !a.name.is_empty() && a.namespace == namespace && a.name == name),
            ),
            HeadRequest::JobSubmit(spec) => job_answer(self.jobs.submit(spec, self.capacity())),
            HeadRequest::JobUpload { hash, total, offset, data } => {
                match self.jobs.upload(&hash, total, offset, &data) {
                    Ok(have) => HeadAnswer::JobUploaded(have),
                    Err(why) => HeadAnswer::JobRefused(why),
                }
            }
            HeadRequest::JobStatus { id } => job_answer(self.jobs.status(&id)),
            HeadRequest::JobStop { id } => job_answer(self.jobs.stop(&id)),
            HeadRequest::JobList => HeadAnswer::Jobs(self.job_rows()),
            // Relayed by the head's node (`cluster::node_ask`), which knows the addresses.
            HeadRequest::NodeAsk(_) => {
                HeadAnswer::Error("a node's question is relayed by the head's node".into())
            }
            HeadRequest::JobLogs { id, offset } => match self.jobs.logs(&id, offset) {
                Ok((data, next, done)) => HeadAnswer::JobLogs { data, next, done },
                Err(why) => HeadAnswer::JobRefused(why),
            },
        }
    }

    /// A state API query over what the head keeps: tasks and actors (its tables), nodes (the
    /// view), placement groups and jobs (the directory). Workers and objects are a node's own
    /// (the head's node asks every node: `cluster::node_ask`).
    pub fn serve_state(
        &self,
        q: &volley_proto::StateQuery,
    ) -> Result<volley_proto::StateAnswer, String> {
        use crate::state::kinds;
        kinds::check_kind(&q.kind)?;
        match q.kind.as_str() {
            "tasks" | "actors" => self.tables.query(q),
            "nodes" => kinds::nodes(q, self.view()),
            "placement_groups" => kinds::groups(q, self.placement_groups()),
            "jobs" => kinds::jobs(q, self.job_rows()),
            other => Err(format!("{other} are answered by each node, not the head")),
        }
    }

    /// Claims (`namespace`, `name`) for an actor node `node` is about to create. Checked and
    /// claimed under one lock, so of racing nodes exactly one gets `Reserved`; a claim ends
    /// when a heartbeat of its node lists the actor (then that entry holds the name until the
    /// actor dies), when released, or after [`RESERVATION`].
    pub fn reserve_name(&self, namespace: &str, name: &str, node: NodeId) -> Reservation {
        let dir = self.dir.lock();
        let key = (namespace.to_string(), name.to_string());
        let listed = dir.actors().into_iter().find(|a| a.namespace == key.0 && a.name == key.1);
        let mut reserved = self.reserved.lock();
        reserved.retain(|_, c| c.at.elapsed() < RESERVATION);
        if let Some(a) = listed {
            return if a.node == node { Reservation::Mine } else { Reservation::Taken };
        }
        match reserved.get(&key) {
            Some(c) if c.owner == node => Reservation::Mine,
            Some(_) => Reservation::Taken,
            None => {
                reserved.insert(key, Claim { owner: node, at: Instant::now(), beats: None });
                Reservation::Reserved
            }
        }
    }

    /// Lists a named actor its node (`actor.node`) just created, without waiting for that
    /// node's next heartbeat; false if another node holds the name (its actor, or its claim).
    /// The name stays claimed for the node for a few of its heartbeats ([`UNLISTED_BEATS`]),
    /// so that one built before the creation does not unlist it (see `record`).
    pub fn name_created(&self, actor: NamedActor) -> bool {
        self.list_made(actor, None)
    }

    /// Lists a named actor node `by` created and placed on another node (`actor.node`), as
    /// [`Head::name_created`] does: `by`'s claim on the name passes to the node that runs it
    /// (whose heartbeats list it from then on).
    pub fn name_placed(&self, actor: NamedActor, by: NodeId) -> bool {
        self.list_made(actor, Some(by))
    }

    /// Lists `actor` at `actor.node` unless a node other than it (and other than `creator`)
    /// holds the name, its actor or its claim; checked and listed under one lock.
    fn list_made(&self, actor: NamedActor, creator: Option<NodeId>) -> bool {
        if actor.name.is_empty() {
            return false; // Only named actors are looked up by name.
        }
        let mut dir = self.dir.lock();
        let key = (actor.namespace.clone(), actor.name.clone());
        let listed = dir.actors().into_iter().find(|a| a.namespace == key.0 && a.name == key.1);
        // (Its creator may have listed it at itself while it waited for its arguments.)
        let moved = |a: &NamedActor| a.actor == actor.actor && Some(a.node) == creator;
        if listed.is_some_and(|a| a.node != actor.node && !moved(&a)) {
            return false;
        }
        let mut reserved = self.reserved.lock();
        reserved.retain(|_, c| c.at.elapsed() < RESERVATION);
        let ours = |owner: NodeId| owner == actor.node || Some(owner) == creator;
        if reserved.get(&key).is_some_and(|c| !ours(c.owner)) {
            return false;
        }
        let claim = Claim { owner: actor.node, at: Instant::now(), beats: Some(UNLISTED_BEATS) };
        reserved.insert(key, claim);
        dir.put_actor(actor);
        true
    }

    /// Gives back a claim of node `node`; whether there was one.
    pub fn release_name(&self, namespace: &str, name: &str, node: NodeId) -> bool {
        let key = (namespace.to_string(), name.to_string());
        let mut reserved = self.reserved.lock();
        if reserved.get(&key).is_some_and(|c| c.owner == node) {
            reserved.remove(&key);
            return true;
        }
        false
    }

    /// See [`HeadStore::kv_put`].
    pub fn kv_put(&self, namespace: &str, key: &[u8], value: Vec<u8>, overwrite: bool) -> bool {
        let mut dir = self.dir.lock();
        let old = Self::held_before(dir.as_ref(), namespace, key);
        let kept = old.map(|_| big_values::held_object(namespace, &value));
        let stored = dir.kv_put(namespace, key, value, overwrite);
        if stored {
            self.kv_changed(dir.as_ref(), namespace, key, true);
        }
        drop(dir);
        if stored && kept.flatten() != old {
            self.release(old);
        }
        stored
    }

    pub fn kv_get(&self, namespace: &str, key: &[u8]) -> Option<Vec<u8>> {
        self.dir.lock().kv_get(namespace, key)
    }

    pub fn kv_del(&self, namespace: &str, key: &[u8]) -> bool {
        let mut dir = self.dir.lock();
        let old = Self::held_before(dir.as_ref(), namespace, key);
        let deleted = dir.kv_del(namespace, key);
        if deleted {
            self.kv_changed(dir.as_ref(), namespace, key, false);
        }
        drop(dir);
        if deleted {
            self.release(old);
        }
        deleted
    }

    pub fn kv_keys(&self, namespace: &str, prefix: &[u8]) -> Vec<Vec<u8>> {
        self.dir.lock().kv_keys(namespace, prefix)
    }

    /// Stores every pair under one lock of the table (see `HeadRequest::KvPutMany`).
    pub fn kv_put_many(&self, namespace: &str, items: Vec<(Vec<u8>, Vec<u8>)>) {
        let mut dir = self.dir.lock();
        let mut released = Vec::new();
        for (key, value) in items {
            let old = Self::held_before(dir.as_ref(), namespace, &key);
            let kept = old.map(|_| big_values::held_object(namespace, &value));
            dir.kv_put(namespace, &key, value, true);
            self.kv_changed(dir.as_ref(), namespace, &key, true);
            if kept.flatten() != old {
                released.push(old);
            }
        }
        drop(dir);
        for old in released {
            self.release(old);
        }
    }

    /// The pairs under keys starting with `prefix`, in key order, read under one lock.
    pub fn kv_items(&self, namespace: &str, prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let dir = self.dir.lock();
        dir.kv_keys(namespace, prefix)
            .into_iter()
            .filter_map(|k| dir.kv_get(namespace, &k).map(|v| (k, v)))
            .collect()
    }

    /// See [`HeadStore::kv_incr`].
    pub fn kv_incr(&self, namespace: &str, key: &[u8], delta: i64) -> Result<i64, String> {
        let mut dir = self.dir.lock();
        let n = dir.kv_incr(namespace, key, delta)?;
        self.kv_changed(dir.as_ref(), namespace, key, true);
        Ok(n)
    }

    /// See [`HeadStore::kv_compare_and_set`].
    pub fn kv_compare_and_set(
        &self,
        namespace: &str,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<Vec<u8>>,
    ) -> bool {
        let mut dir = self.dir.lock();
        let old = Self::held_before(dir.as_ref(), namespace, key);
        let kept = match (&old, &new) {
            (Some(_), Some(v)) => big_values::held_object(namespace, v),
            _ => None,
        };
        let present = new.is_some();
        let swapped = dir.kv_compare_and_set(namespace, key, expected, new);
        if swapped {
            self.kv_changed(dir.as_ref(), namespace, key, present);
        }
        drop(dir);
        if swapped && kept != old {
            self.release(old);
        }
        swapped
    }

    /// See [`HeadStore::kv_setdefault`].
    pub fn kv_setdefault(&self, namespace: &str, key: &[u8], value: Vec<u8>) -> Vec<u8> {
        let mut dir = self.dir.lock();
        let was = dir.kv_get(namespace, key).is_some();
        let now = dir.kv_setdefault(namespace, key, value);
        if !was {
            self.kv_changed(dir.as_ref(), namespace, key, true);
        }
        now
    }

    /// `key` changed (to a value, or deleted when not `present`), under `dir`'s lock: it gets
    /// a new version and watchers wake.
    fn kv_changed(&self, dir: &dyn HeadStore, namespace: &str, key: &[u8], present: bool) {
        self.kv_versions.lock().bump(namespace, key, present);
        self.kv_changed.notify_all();
        if let Some(hook) = self.kv_hook.get().filter(|h| h.wants(namespace, key)) {
            hook.changed(namespace, key, dir.kv_get(namespace, key));
        }
    }

    /// Waits at most `wait` until `key` changed since version `seen` (`None`: the version as
    /// the call starts); its version then, whether it changed, and the value when it did.
    /// Versions, not values, are compared: a change undone before the watcher comes back is
    /// still a change. The wait releases the head's lock, so a watcher holds up nothing; every
    /// change of the table wakes it to compare.
    pub fn kv_watch(
        &self,
        namespace: &str,
        key: &[u8],
        seen: Option<u64>,
        wait: Duration,
    ) -> (u64, bool, Option<Vec<u8>>) {
        let deadline = Instant::now() + wait;
        let mut dir = self.dir.lock();
        let version = |h: &Self| h.kv_versions.lock().of(namespace, key);
        let base = seen.unwrap_or_else(|| version(self));
        loop {
            let now_version = version(self);
            if now_version != base {
                return (now_version, true, dir.kv_get(namespace, key));
            }
            let now = Instant::now();
            if now >= deadline {
                return (now_version, false, None);
            }
            dir = self.kv_changed.wait_for(dir, deadline - now);
        }
    }
}

/// The most deleted keys whose versions are kept: past it, a deleted key's version is
/// forgotten (a watcher of it then sees "absent" as version 0, and may miss a re-creation
/// deleted again between two of its waits).
const MAX_DELETED_VERSIONS: usize = 1 << 16;

/// Key versions for `KvWatch`: a counter bumped by every change of any key, and the value it
/// had at each key's last change (0: not changed since the head started).
#[derive(Default)]
struct KvVersions {
    seq: u64,
    of: HashMap<String, HashMap<Vec<u8>, u64>>,
    deleted: usize,
}

impl KvVersions {
    fn of(&self, namespace: &str, key: &[u8]) -> u64 {
        self.of.get(namespace).and_then(|m| m.get(key)).copied().unwrap_or(0)
    }

    fn bump(&mut self, namespace: &str, key: &[u8], present: bool) {
        self.seq += 1;
        let seq = self.seq;
        let m = match self.of.get_mut(namespace) {
            Some(m) => m,
            None => self.of.entry(namespace.to_string()).or_default(),
        };
        if present || self.deleted < MAX_DELETED_VERSIONS {
            if !present {
                self.deleted += 1;
            }
            match m.get_mut(key) {
                Some(v) => *v = seq,
                None => {
                    m.insert(key.to_vec(), seq);
                }
            }
        } else {
            m.remove(key);
        }
    }
}

fn job_answer(r: Result<JobRow, String>) -> HeadAnswer {
    match r {
        Ok(row) => HeadAnswer::Job(row),
        Err(why) => HeadAnswer::JobRefused(why),
    }
}

/// Drops what node `id` hosted or made from the directory.
fn forget_node(dir: &mut dyn HeadStore, id: NodeId) {
    for a in dir.actors().into_iter().filter(|a| a.node == id) {
        dir.remove_actor(&a.namespace, &store::directory_name(&a));
    }
    for (_, g) in dir.groups().into_iter().filter(|(owner, _)| *owner == id) {
        dir.remove_group(&g.id);
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A random epoch, never 0 (0 is a member's "no head seen yet").
fn new_epoch() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        let t = SystemTime::now().duration_since(UNIX_EPOCH);
        return t.map(|d| d.as_nanos() as u64).unwrap_or(1) | 1;
    }
    u64::from_le_bytes(b).max(1)
}

#[cfg(test)]
pub(crate) mod tests;
