//! Placement groups: bundles of resources reserved together, on one node or across several,
//! for tasks and actors that must run as a gang.
//!
//! The node that creates a group (`create_pg`) decides where each bundle goes from what it knows
//! of every node's free resources, reserves the bundles meant for itself at once and asks each
//! peer for the others (`Action::PeerReserve`; all of a peer's bundles or none). A refused
//! request is tried again with the next cluster view. Once every bundle is held, the group's
//! `ready` object gets its value.
//!
//! A reserved bundle turns into resources of its own on the node holding it: bundle `i` of group
//! `P` adds `pg:P:i:NAME` and `pg:P:NAME` for each `NAME` it reserves (`CPU` included), plus a
//! marker `pg:P:i:bundle` that every task placed in it takes a thousandth of, so that even a task
//! asking for nothing lands there. A task or actor scheduled into a bundle asks for those names
//! instead of the plain ones (the Python layer rewrites its request), so everything else —
//! fitting, spilling to the right peer, GPU indices — is the ordinary resource machinery.
//!
//! Removing a group releases its bundles everywhere, stops what runs in them and fails what
//! waits for them. A group dies with the node that created it; bundles on a node that dies are
//! placed again elsewhere.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use volley_proto::{
    ErrorKind, NodeId, NodeToWorker, ObjectData, PgInfo, PgSpec, PgStrategy, TaskSpec,
};

use super::{error, Action, Holder, ObjectState, Scheduler};

/// A bundle's resources: (name, thousandths), `CPU` among the names.
type Bundle = Vec<(String, u64)>;
/// A bundle held here: its index, resources and the GPU indices it took.
type HeldBundle = (u32, Bundle, Vec<u32>);
/// Bundles of one group with their indices.
type IndexedBundles = Vec<(u32, Bundle)>;

/// Resource names a placement group's bundles add start with this.
pub(super) const PG_PREFIX: &str = "pg:";
/// The marker resource of a bundle; a task in it takes `MARKER_TAKE` of the `MARKER_AMOUNT`.
const MARKER: &str = "bundle";
const MARKER_AMOUNT: u64 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PgState {
    Pending,
    Created,
    Removed,
    Failed,
}

/// A group this node created.
pub(super) struct PgEntry {
    spec: PgSpec,
    value: Arc<ObjectData>,
    /// Where each bundle is held, once its node said so.
    nodes: Vec<Option<NodeId>>,
    /// Reservations asked of peers and not answered yet.
    asked: HashMap<NodeId, Vec<u32>>,
    state: PgState,
    /// A peer refused: wait for a fresher cluster view before trying again.
    wait_view: bool,
    /// It was created once and lost bundles with a node.
    rescheduling: bool,
    reason: String,
}

/// Bundles held on this node.
pub(super) struct Reservation {
    /// Who created the group: `None` for this node.
    creator: Option<NodeId>,
    /// (index, resources, GPU indices taken).
    bundles: Vec<HeldBundle>,
}

/// The placement groups as a part of the scheduler: those this node created, the bundles it
/// holds (for itself or for peers), the groups waiting to be placed and those removed. Its fields
/// are this module's; the other parts ask through the methods below.
#[derive(Default)]
pub(super) struct Placement {
    /// Placement groups this node created.
    pgs: HashMap<String, PgEntry>,
    /// Placement-group bundles held on this node.
    reservations: HashMap<String, Reservation>,
    /// Placement groups waiting for bundles to be placed (in id order).
    pending: BTreeSet<String>,
    /// Placement groups removed (tasks waiting for them fail).
    removed: HashSet<String>,
}

impl Placement {
    /// Whether this node created no group.
    pub(super) fn is_empty(&self) -> bool {
        self.pgs.is_empty()
    }

    /// Whether a group waits to be placed.
    pub(super) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Why group `pg` is not placed yet (empty if there is nothing to say).
    pub(super) fn reason(&self, pg: &str) -> Option<&str> {
        self.pgs.get(pg).map(|e| e.reason.as_str())
    }

    /// The group's name for messages ("'name' (id)"), or its id if this node did not create it.
    pub(super) fn label(&self, pg: &str) -> String {
        self.pgs.get(pg).map(|e| e.label()).unwrap_or_else(|| pg.to_string())
    }

    /// The bundles held here, by group: (index, resources, GPU indices).
    pub(super) fn held_bundles(&self) -> impl Iterator<Item = (&String, &[HeldBundle])> {
        self.reservations.iter().map(|(pg, r)| (pg, r.bundles.as_slice()))
    }

    /// The GPUs of the bundle behind a placement-group GPU resource (see `bundle_gpus`).
    pub(super) fn bundle_gpus(&self, res: &str, amount: u64) -> Option<Vec<u32>> {
        bundle_gpus(&self.reservations, res, amount)
    }
}

/// A node as placement sees it: its total and free resources (`CPU` among them).
struct Capacity {
    node: NodeId,
    total: HashMap<String, u64>,
    free: HashMap<String, u64>,
}

impl Capacity {
    fn fits(&self, demand: &BTreeMap<String, u64>, totals: bool) -> bool {
        let have = if totals { &self.total } else { &self.free };
        demand.iter().all(|(r, a)| *a == 0 || have.get(r).is_some_and(|h| h >= a))
    }

    fn take(&mut self, demand: &BTreeMap<String, u64>) {
        for (r, a) in demand {
            if let Some(f) = self.free.get_mut(r) {
                *f = f.saturating_sub(*a);
            }
        }
    }
}

fn demand_of<'a>(
    bundles: impl IntoIterator<Item = &'a Vec<(String, u64)>>,
) -> BTreeMap<String, u64> {
    let mut d = BTreeMap::new();
    for b in bundles {
        for (r, a) in b {
            *d.entry(r.clone()).or_insert(0) += a;
        }
    }
    d
}

/// The group a task or actor is placed in, if it is (from the resources it asks for).
pub(super) fn pg_of(spec: &TaskSpec) -> Option<&str> {
    spec.options.resources.iter().find_map(|(r, _)| {
        let rest = r.strip_prefix(PG_PREFIX)?;
        rest.split(':').next()
    })
}

/// Where each of `todo` (bundle indices) goes, given bundles already placed (`placed`), or why
/// there is no such placement. `caps` are in preference order.
fn plan(
    spec: &PgSpec,
    placed: &[Option<NodeId>],
    todo: &[u32],
    caps: &[Capacity],
    totals: bool,
) -> Result<Vec<(u32, NodeId)>, String> {
    let bundle = |i: u32| &spec.bundles[i as usize];
    let mut caps: Vec<Capacity> = caps
        .iter()
        .map(|c| Capacity { node: c.node, total: c.total.clone(), free: c.free.clone() })
        .collect();
    let count_on = |plan: &[(u32, NodeId)], n: NodeId| {
        placed.iter().filter(|p| **p == Some(n)).count() + plan.iter().filter(|p| p.1 == n).count()
    };
    let whole = demand_of(todo.iter().map(|i| bundle(*i)));
    // A node already holding bundles of the group comes first.
    let holder = placed.iter().flatten().next().copied();
    let one_node = |caps: &[Capacity]| -> Option<NodeId> {
        let mut order: Vec<&Capacity> = caps.iter().collect();
        order.sort_by_key(|c| Some(c.node) != holder);
        order.into_iter().find(|c| c.fits(&whole, totals)).map(|c| c.node)
    };
    match spec.strategy {
        PgStrategy::StrictPack => {
            let node = caps
                .iter()
                .filter(|c| holder.is_none_or(|h| h == c.node))
                .find(|c| c.fits(&whole, totals))
                .map(|c| c.node);
            match node {
                Some(n) => Ok(todo.iter().map(|i| (*i, n)).collect()),
                None => Err(format!(
                    "no node has {} for all {} bundles together (STRICT_PACK)",
                    describe(&whole),
                    todo.len()
                )),
            }
        }
        PgStrategy::Pack => {
            if let Some(n) = one_node(&caps) {
                return Ok(todo.iter().map(|i| (*i, n)).collect());
            }
            let mut out = Vec::new();
            for &i in todo {
                let d = demand_of([bundle(i)]);
                let Some(c) = caps.iter_mut().find(|c| c.fits(&d, totals)) else {
                    return Err(format!("no node has {} for bundle {i}", describe(&d)));
                };
                if !totals {
                    c.take(&d);
                } else {
                    for (r, a) in &d {
                        if let Some(t) = c.total.get_mut(r) {
                            *t = t.saturating_sub(*a);
                        }
                    }
                }
                out.push((i, c.node));
            }
            Ok(out)
        }
        PgStrategy::Spread | PgStrategy::StrictSpread => {
            let strict = spec.strategy == PgStrategy::StrictSpread;
            let mut out: Vec<(u32, NodeId)> = Vec::new();
            for &i in todo {
                let d = demand_of([bundle(i)]);
                let best = caps
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.fits(&d, totals))
                    .map(|(k, c)| (count_on(&out, c.node), k))
                    .filter(|(n, _)| !strict || *n == 0)
                    .min();
                let Some((_, k)) = best else {
                    return Err(if strict {
                        format!(
                            "bundle {i} needs a node of its own with {} (STRICT_SPREAD over {} \
                             bundles)",
                            describe(&d),
                            spec.bundles.len()
                        )
                    } else {
                        format!("no node has {} for bundle {i}", describe(&d))
                    });
                };
                let c = &mut caps[k];
                if totals {
                    for (r, a) in &d {
                        if let Some(t) = c.total.get_mut(r) {
                            *t = t.saturating_sub(*a);
                        }
                    }
                } else {
                    c.take(&d);
                }
                out.push((i, c.node));
            }
            Ok(out)
        }
    }
}

impl PgEntry {
    /// How messages name the group: its name, else its id.
    pub(super) fn label(&self) -> String {
        if self.spec.name.is_empty() {
            self.spec.id.clone()
        } else {
            format!("'{}' ({})", self.spec.name, self.spec.id)
        }
    }
}

fn describe(d: &BTreeMap<String, u64>) -> String {
    let parts: Vec<String> = d.iter().map(|(r, a)| format!("{} {r}", *a as f64 / 1000.0)).collect();
    if parts.is_empty() {
        "room".into()
    } else {
        parts.join(", ")
    }
}

fn state_name(e: &PgEntry) -> &'static str {
    match e.state {
        PgState::Pending if e.rescheduling => "RESCHEDULING",
        PgState::Pending => "PENDING",
        PgState::Created => "CREATED",
        PgState::Removed => "REMOVED",
        PgState::Failed => "FAILED",
    }
}

impl Scheduler {
    fn here(&self) -> NodeId {
        self.peers.node_id().unwrap_or(NodeId(0))
    }

    /// Every node that may hold bundles, this one first, with what it has.
    fn capacities(&self) -> Vec<Capacity> {
        let mut caps = Vec::new();
        if !self.peers.prefer_peers() {
            let mut total: HashMap<String, u64> = HashMap::new();
            let mut free: HashMap<String, u64> = HashMap::new();
            total.insert("CPU".into(), u64::from(self.res.cpu_total()));
            free.insert("CPU".into(), u64::from(self.res.cpu_free()));
            for (r, t, f) in self.resource_usage() {
                if !r.starts_with(PG_PREFIX) {
                    total.insert(r.clone(), t);
                    free.insert(r, f);
                }
            }
            caps.push(Capacity { node: self.here(), total, free });
        }
        for (id, p) in self.peers.iter() {
            if p.view.driver {
                continue;
            }
            let mut total: HashMap<String, u64> = HashMap::new();
            let mut free: HashMap<String, u64> = HashMap::new();
            total.insert("CPU".into(), u64::from(p.view.cpu_total_milli));
            free.insert("CPU".into(), u64::from(p.view.cpu_free_milli));
            for (r, t, f) in &p.view.resources {
                if !r.starts_with(PG_PREFIX) {
                    total.insert(r.clone(), *t);
                    free.insert(r.clone(), *f);
                }
            }
            caps.push(Capacity { node: *id, total, free });
        }
        caps
    }

    /// Creates a placement group held by `holder` (its `ready` object, that is). An error if
    /// the request is malformed; a group no node set can ever hold fails its `ready` object.
    pub fn create_pg(
        &mut self,
        holder: Holder,
        spec: PgSpec,
        out: &mut Vec<Action>,
    ) -> Result<(), String> {
        if spec.bundles.is_empty() {
            return Err("a placement group needs at least one bundle".into());
        }
        for (i, b) in spec.bundles.iter().enumerate() {
            if b.iter().all(|(_, a)| *a == 0) {
                return Err(format!(
                    "bundle {i} asks for nothing; every bundle needs some resource"
                ));
            }
        }
        if spec.id.is_empty() || spec.id.contains(':') || self.placement.pgs.contains_key(&spec.id)
        {
            return Err(format!("placement group id {:?} is invalid or taken", spec.id));
        }
        self.new_object(spec.ready);
        self.incref(holder, &[spec.ready]);
        let n = spec.bundles.len();
        let all: Vec<u32> = (0..n as u32).collect();
        let infeasible = plan(&spec, &vec![None; n], &all, &self.capacities(), true).err();
        let id = spec.id.clone();
        let mut entry = PgEntry {
            value: Arc::new(spec.value.clone()),
            spec,
            nodes: vec![None; n],
            asked: HashMap::new(),
            state: PgState::Pending,
            wait_view: false,
            rescheduling: false,
            reason: String::new(),
        };
        if let Some(why) = infeasible {
            entry.state = PgState::Failed;
            let msg = format!(
                "placement group {} can never be placed: {why} (the cluster's nodes have too \
                 little in total)",
                entry.label()
            );
            entry.reason = msg.clone();
            let ready = entry.spec.ready;
            self.placement.pgs.insert(id, entry);
            self.object_failed(ready, error(ErrorKind::Unschedulable, "placement_group", msg), out);
            return Ok(());
        }
        self.placement.pending.insert(id.clone());
        self.placement.pgs.insert(id, entry);
        self.schedule(out);
        Ok(())
    }

    /// Tries to place the bundles of pending groups that nothing is in flight for.
    pub(super) fn place_pgs(&mut self, out: &mut Vec<Action>) {
        let pgs = &self.placement.pgs;
        let ids: Vec<String> = self
            .placement
            .pending
            .iter()
            .filter(|id| pgs.get(*id).is_some_and(|e| e.asked.is_empty() && !e.wait_view))
            .cloned()
            .collect();
        if ids.is_empty() {
            return;
        }
        let mut caps = self.capacities();
        for id in ids {
            let Some(e) = self.placement.pgs.get(&id) else { continue };
            if e.state != PgState::Pending || !e.asked.is_empty() || e.wait_view {
                continue;
            }
            let todo: Vec<u32> =
                (0..e.nodes.len() as u32).filter(|i| e.nodes[*i as usize].is_none()).collect();
            let placement = match plan(&e.spec, &e.nodes, &todo, &caps, false) {
                Ok(p) => p,
                Err(why) => {
                    if let Some(e) = self.placement.pgs.get_mut(&id) {
                        e.reason = format!("waiting for resources: {why}");
                    }
                    continue;
                }
            };
            let bundles = e.spec.bundles.clone();
            for (i, n) in &placement {
                if let Some(c) = caps.iter_mut().find(|c| c.node == *n) {
                    c.take(&demand_of([&bundles[*i as usize]]));
                }
            }
            let mut by_node: BTreeMap<NodeId, IndexedBundles> = BTreeMap::new();
            for (i, n) in placement {
                by_node.entry(n).or_default().push((i, bundles[i as usize].clone()));
            }
            let here = self.here();
            for (n, b) in by_node {
                if n == here {
                    if self.reserve_here(None, &id, &b) {
                        if let Some(e) = self.placement.pgs.get_mut(&id) {
                            for (i, _) in &b {
                                e.nodes[*i as usize] = Some(here);
                            }
                        }
                    }
                } else {
                    if let Some(e) = self.placement.pgs.get_mut(&id) {
                        e.asked.insert(n, b.iter().map(|(i, _)| *i).collect());
                    }
                    out.push(Action::PeerReserve { peer: n, pg: id.clone(), bundles: b });
                }
            }
            self.pg_progress(&id, out);
        }
    }

    /// Marks a group created once every bundle is held.
    fn pg_progress(&mut self, id: &str, out: &mut Vec<Action>) {
        let Some(e) = self.placement.pgs.get_mut(id) else { return };
        if e.state != PgState::Pending || !e.asked.is_empty() {
            return;
        }
        if e.nodes.iter().all(Option::is_some) {
            self.placement.pending.remove(id);
            e.state = PgState::Created;
            e.rescheduling = false;
            e.reason.clear();
            let (ready, value) = (e.spec.ready, e.value.clone());
            if matches!(self.objects.get(&ready).map(|o| &o.state), Some(ObjectState::Pending)) {
                self.object_ready(ready, value, out);
            }
        }
    }

    /// A peer's answer to `PeerReserve`.
    pub fn pg_reserved(
        &mut self,
        peer: NodeId,
        pg: &str,
        bundles: &[u32],
        ok: bool,
        out: &mut Vec<Action>,
    ) {
        let Some(e) = self.placement.pgs.get_mut(pg) else {
            if ok {
                out.push(Action::PeerPgRelease { peer, pg: pg.to_string(), remove: true });
            }
            return;
        };
        e.asked.remove(&peer);
        if e.state != PgState::Pending {
            if ok {
                out.push(Action::PeerPgRelease { peer, pg: pg.to_string(), remove: true });
            }
            return;
        }
        if !ok {
            e.wait_view = true;
            e.reason = format!("waiting for resources: node {} had no room after all", peer.0);
            return;
        }
        for i in bundles {
            if let Some(slot) = e.nodes.get_mut(*i as usize) {
                *slot = Some(peer);
            }
        }
        let added: Vec<(u32, Vec<(String, u64)>)> = bundles
            .iter()
            .filter_map(|i| e.spec.bundles.get(*i as usize).map(|b| (*i, b.clone())))
            .collect();
        self.add_view_resources(peer, pg, &added);
        self.pg_progress(pg, out);
        self.schedule(out);
    }

    /// Puts the resources bundles add on `peer` into our view of it at once (the head's view
    /// shows them only after the peer's next heartbeat).
    fn add_view_resources(
        &mut self,
        peer: NodeId,
        pg: &str,
        bundles: &[(u32, Vec<(String, u64)>)],
    ) {
        let Some(p) = self.peers.get_mut(&peer) else { return };
        for (name, amount) in bundle_resources(pg, bundles) {
            if !p.view.resources.iter().any(|(r, _, _)| *r == name) {
                p.view.resources.push((name, amount, amount));
            }
        }
    }

    /// After a new cluster view: keeps bundles we know peers hold in their views, and tries the
    /// groups that were waiting for it.
    pub(super) fn pgs_after_view(&mut self, out: &mut Vec<Action>) {
        let mut known: Vec<(NodeId, String, IndexedBundles)> = Vec::new();
        for (id, e) in &self.placement.pgs {
            if matches!(e.state, PgState::Removed | PgState::Failed) {
                continue;
            }
            let mut by_node: BTreeMap<NodeId, IndexedBundles> = BTreeMap::new();
            for (i, n) in e.nodes.iter().enumerate() {
                if let Some(n) = n {
                    by_node.entry(*n).or_default().push((i as u32, e.spec.bundles[i].clone()));
                }
            }
            known.extend(by_node.into_iter().map(|(n, b)| (n, id.clone(), b)));
        }
        for (n, pg, b) in known {
            self.add_view_resources(n, &pg, &b);
        }
        for e in self.placement.pgs.values_mut() {
            e.wait_view = false;
        }
        self.place_pgs(out);
    }

    /// Reserves bundles of group `pg` on this node, all or none.
    pub fn reserve_here(
        &mut self,
        creator: Option<NodeId>,
        pg: &str,
        bundles: &[(u32, Vec<(String, u64)>)],
    ) -> bool {
        if self.placement.removed.contains(pg) {
            return false;
        }
        let whole = demand_of(bundles.iter().map(|(_, b)| b));
        let cpu = whole.get("CPU").copied().unwrap_or(0);
        let other: Vec<(String, u64)> =
            whole.iter().filter(|(r, _)| *r != "CPU").map(|(r, a)| (r.clone(), *a)).collect();
        if cpu > u64::from(u32::MAX) || !self.res.fits(cpu as u32, &other) {
            return false;
        }
        for (i, b) in bundles {
            let gpus = self.res.reserve_bundle(b);
            let r = self
                .placement
                .reservations
                .entry(pg.to_string())
                .or_insert_with(|| Reservation { creator, bundles: Vec::new() });
            r.bundles.push((*i, b.clone(), gpus));
        }
        for (name, amount) in bundle_resources(pg, bundles) {
            self.res.add_total(name, amount);
        }
        true
    }

    /// Releases the bundles of `pg` held here. With `remove`, the group is gone: workers running
    /// tasks in it are stopped, its actors killed, and tasks waiting for it fail.
    pub fn release_pg(&mut self, pg: &str, remove: bool, out: &mut Vec<Action>) {
        if let Some(r) = self.placement.reservations.remove(pg) {
            for (_, b, gpus) in r.bundles {
                self.res.release_bundle(&b, &gpus);
            }
        }
        let prefix = format!("{PG_PREFIX}{pg}:");
        self.res.remove_prefixed(&prefix);
        if remove {
            self.placement.removed.insert(pg.to_string());
            let uses = |res: &[(String, u64)]| res.iter().any(|(r, _)| r.starts_with(&prefix));
            // The task each such worker runs, as far as this node knows: the worker ends only
            // if it still runs that one (it may have sent its `Done` and started the next).
            let doomed: Vec<_> = self
                .workers
                .iter()
                .filter(|(_, w)| w.actor.is_none() && uses(&w.res_held))
                .filter_map(|(id, w)| w.queue.front().map(|t| (*id, *t)))
                .collect();
            for (w, task) in doomed {
                self.workers.doom(w);
                out.push(Action::Send { worker: w, msg: NodeToWorker::KillIfRunning { task } });
            }
            let mut actors: Vec<_> = self
                .actors
                .iter()
                .filter(|(_, a)| uses(&a.create.options.resources))
                .map(|(id, _)| *id)
                .collect();
            actors.sort();
            for a in actors {
                self.kill_actor_for(a, true, "its placement group was removed", out);
            }
        }
        self.schedule(out);
    }

    /// Removes a group this node created: its bundles are released everywhere.
    pub fn remove_pg(&mut self, pg: &str, out: &mut Vec<Action>) {
        let Some(e) = self.placement.pgs.get_mut(pg) else {
            // Created elsewhere (a worker of another node made it): release what is here.
            self.release_pg(pg, true, out);
            for peer in self.peers.keys() {
                out.push(Action::PeerPgRelease { peer: *peer, pg: pg.to_string(), remove: true });
            }
            return;
        };
        if e.state == PgState::Removed {
            return;
        }
        e.state = PgState::Removed;
        e.reason.clear();
        self.placement.pending.remove(pg);
        let ready = e.spec.ready;
        let name = e.label();
        for peer in self.peers.keys() {
            out.push(Action::PeerPgRelease { peer: *peer, pg: pg.to_string(), remove: true });
        }
        let msg = format!("placement group {name} was removed before it was ready");
        self.object_failed(ready, error(ErrorKind::Unschedulable, "placement_group", msg), out);
        self.release_pg(pg, true, out);
    }

    /// A node died: groups it created are released here; bundles it held for our groups are
    /// placed again.
    pub(super) fn pgs_peer_gone(&mut self, id: NodeId, out: &mut Vec<Action>) {
        let theirs: Vec<String> = self
            .placement
            .reservations
            .iter()
            .filter(|(_, r)| r.creator == Some(id))
            .map(|(pg, _)| pg.clone())
            .collect();
        for pg in theirs {
            self.release_pg(&pg, true, out);
        }
        for (pg, e) in self.placement.pgs.iter_mut() {
            if matches!(e.state, PgState::Removed | PgState::Failed) {
                continue;
            }
            e.asked.remove(&id);
            let mut lost = false;
            for n in e.nodes.iter_mut() {
                if *n == Some(id) {
                    *n = None;
                    lost = true;
                }
            }
            if lost {
                e.rescheduling = e.state == PgState::Created || e.rescheduling;
                e.state = PgState::Pending;
                self.placement.pending.insert(pg.clone());
            }
        }
        self.place_pgs(out);
    }

    /// Whether `spec`'s group was removed (it can never run then).
    pub(super) fn pg_removed(&self, spec: &TaskSpec) -> Option<String> {
        let pg = pg_of(spec)?;
        self.placement.removed.contains(pg).then(|| {
            format!("'{}' was scheduled into placement group {pg}, which was removed", spec.name)
        })
    }

    /// Whether this node holds (in total) what `spec` asks of placement-group resources.
    pub(super) fn holds_pg_resources(&self, spec: &TaskSpec) -> bool {
        spec.options.resources.iter().all(|(r, a)| {
            !r.starts_with(PG_PREFIX) || self.res.totals().get(r).is_some_and(|t| t >= a)
        })
    }

    /// Every group this node created, for `placement_group_table`.
    pub fn pg_table(&self) -> Vec<PgInfo> {
        let mut v: Vec<PgInfo> = self
            .placement
            .pgs
            .iter()
            .map(|(id, e)| PgInfo {
                id: id.clone(),
                name: e.spec.name.clone(),
                state: state_name(e).to_string(),
                strategy: e.spec.strategy,
                bundles: e.spec.bundles.clone(),
                nodes: e.nodes.iter().map(|n| n.map(|n| n.0)).collect(),
                reason: e.reason.clone(),
            })
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Why groups wait, a line each (for `waiting_reasons`).
    pub(super) fn pgs_waiting(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .placement
            .pgs
            .values()
            .filter(|e| e.state == PgState::Pending)
            .map(|e| format!("placement group {}: {}", e.label(), e.reason))
            .collect();
        v.sort();
        v
    }
}

/// The resources bundles of `pg` add to the node holding them.
fn bundle_resources(pg: &str, bundles: &[(u32, Vec<(String, u64)>)]) -> Vec<(String, u64)> {
    let mut out: BTreeMap<String, u64> = BTreeMap::new();
    for (i, b) in bundles {
        for (r, a) in b.iter().chain(std::iter::once(&(MARKER.to_string(), MARKER_AMOUNT))) {
            *out.entry(format!("{PG_PREFIX}{pg}:{i}:{r}")).or_insert(0) += a;
            *out.entry(format!("{PG_PREFIX}{pg}:{r}")).or_insert(0) += a;
        }
    }
    out.into_iter().collect()
}

/// The GPUs of the bundle behind a placement-group GPU resource (`pg:P:i:GPU`, or
/// `pg:P:GPU` for any bundle of P here), among the bundles `reservations` holds.
fn bundle_gpus(
    reservations: &HashMap<String, Reservation>,
    res: &str,
    amount: u64,
) -> Option<Vec<u32>> {
    let rest = res.strip_prefix(PG_PREFIX)?.strip_suffix(":GPU")?;
    let mut parts = rest.split(':');
    let pg = parts.next()?;
    let index: Option<u32> = parts.next().and_then(|i| i.parse().ok());
    let r = reservations.get(pg)?;
    let gpus = r
        .bundles
        .iter()
        .find(|(i, _, g)| !g.is_empty() && index.is_none_or(|x| x == *i))
        .map(|(_, _, g)| g)?;
    let want = (amount.div_ceil(1000) as usize).max(1);
    Some(gpus.iter().take(want).copied().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_gpu_resource_names_the_gpus_its_bundle_holds() {
        let mut p = Placement::default();
        let gpu = vec![("GPU".to_string(), 2000)];
        let bundles = vec![(0, Vec::new(), Vec::new()), (1, gpu, vec![2, 3])];
        p.reservations.insert("g".into(), Reservation { creator: None, bundles });
        assert_eq!(p.bundle_gpus("pg:g:1:GPU", 1000), Some(vec![2]));
        assert_eq!(p.bundle_gpus("pg:g:GPU", 2000), Some(vec![2, 3]), "any bundle of g");
        assert_eq!(p.bundle_gpus("pg:g:0:GPU", 1000), None, "bundle 0 holds no GPU");
        assert_eq!(p.bundle_gpus("pg:other:GPU", 1000), None);
        assert_eq!(p.bundle_gpus("GPU", 1000), None, "not a group's resource");
        let held: Vec<usize> = p.held_bundles().map(|(_, b)| b.len()).collect();
        assert_eq!(held, vec![2]);
        assert_eq!(p.label("g"), "g", "a group another node made is named by its id");
        assert!(p.is_empty() && !p.has_pending());
    }
}
