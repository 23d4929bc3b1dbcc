//! Why a task or an actor cannot start: what it asks for that is not free here, and who holds
//! it ("1 CPU: all 2 CPUs are held by actor 'A' (2 of them)").
//!
//! Kept apart from the scheduling code (as HyperQueue keeps its `explain.rs`): it only reads the
//! scheduler's state. Three readers use it: the wait notice a `tick` logs once per function or
//! actor class that has waited longer than `Config::wait_notice_ms`, the message of a `get` that
//! timed out (`explain_wait`), and the lines of `volley status` (`waiting_reasons`). Nothing here
//! runs per task on the submit or dispatch paths: a tick looks at the heads of the ready queues
//! only.

use std::collections::{BTreeMap, HashSet};

use super::*;

/// What the wait notices have said already: one notice per task name or actor class (and per
/// driver, for work other nodes sent) for the node's lifetime, so a program whose queue keeps
/// waiting is told once, not every tick.
#[derive(Default)]
pub(super) struct Notices {
    tasks: HashMap<Holder, HashSet<String>>,
    actors: HashMap<Holder, HashSet<String>>,
    /// When `tick` first saw each waiting actor (actors keep no queue time of their own).
    actor_since: HashMap<ActorId, u64>,
}

impl Notices {
    /// Forgets what was said to a peer that is gone (a daemon outlives many drivers).
    pub(super) fn forget(&mut self, who: Holder) {
        self.tasks.remove(&who);
        self.actors.remove(&who);
    }
}

/// Queued tasks (from the head of each ready queue) and pending actors a tick looks at: the
/// oldest are at the heads, and a bound keeps a tick cheap however long the queues are.
const SCAN: usize = 32;

/// Holders named in one explanation, at most (then "and N more").
const MAX_HOLDERS: usize = 5;

impl Scheduler {
    /// What waits on this node and why, a line per kind (most common first), at most `limit`:
    /// tasks waiting for their arguments or for resources, actors waiting for resources,
    /// placement groups waiting for room.
    pub fn waiting_reasons(&self, limit: usize) -> Vec<String> {
        // Grouped by what they wait for first; a line is written once per group (a heartbeat
        // must not format a string per queued task).
        type Key<'a> = (&'a str, Option<u32>, u32, &'a [(String, u64)]);
        let mut groups: HashMap<Key<'_>, usize> = HashMap::new();
        for t in self.tasks.values() {
            let o = &t.spec.options;
            let key: Key<'_> = match t.state {
                TaskState::WaitingDeps(n) => (&t.spec.name, Some(n), 0, &[]),
                TaskState::Queued if matches!(t.spec.actor, ActorPart::None) => {
                    (&t.spec.name, None, o.cpu_milli, &o.resources)
                }
                _ => continue,
            };
            *groups.entry(key).or_insert(0) += 1;
        }
        // Who holds what a demand needs takes a walk over the actors, groups and workers: once
        // per distinct demand, however many tasks and actors wait for it.
        let mut holders: HashMap<(u32, Vec<(String, u64)>), String> = HashMap::new();
        let mut held_by = |cpu: u32, res: &[(String, u64)]| -> String {
            holders.entry((cpu, res.to_vec())).or_insert_with(|| self.held_by(cpu, res)).clone()
        };
        let mut counts: HashMap<String, usize> = HashMap::new();
        for ((name, deps, cpu, res), n) in groups {
            let why = match deps {
                Some(d) => format!("waiting for {d} argument(s) to be made"),
                None => format!("waiting for {}{}", demand_text(cpu, res), held_by(cpu, res)),
            };
            *counts.entry(format!("task '{name}': {why}")).or_insert(0) += n;
        }
        for aid in self.actors.pending() {
            if let Some(a) = self.actors.get(aid) {
                let o = &a.create.options;
                let line = format!(
                    "actor '{}': waiting for {}{}",
                    a.class(),
                    demand_text(o.cpu_milli, &o.resources),
                    held_by(o.cpu_milli, &o.resources)
                );
                *counts.entry(line).or_insert(0) += 1;
            }
        }
        self.pipelined_reasons(&mut counts);
        let mut lines: Vec<(usize, String)> = counts.into_iter().map(|(l, n)| (n, l)).collect();
        lines.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut out: Vec<String> = self.pgs_waiting();
        out.extend(lines.into_iter().map(|(n, l)| if n > 1 { format!("{n} x {l}") } else { l }));
        out.truncate(limit);
        out
    }

    /// Logs a notice for each task name and actor class (not said before) that has waited at
    /// least `wait_notice_ms` for resources. Called by `tick`.
    pub(super) fn wait_notices(&mut self, out: &mut Vec<Action>) {
        let delay = self.cfg.wait_notice_ms;
        if delay == 0 {
            return;
        }
        let now = self.now_ms;
        let mut due: Vec<(TaskId, u64)> = Vec::new();
        // Each name is judged once a tick (a long queue is mostly one function).
        let mut judged: Vec<(Holder, &str)> = Vec::new();
        let [ready, side_ready] = self.tasks.queues();
        for tid in ready.iter().take(SCAN).chain(side_ready.iter().take(SCAN)) {
            let Some(t) = self.tasks.get(tid) else { continue };
            let waited = now.saturating_sub(t.queued_at);
            let (who, name) = (audience(t.caller), &*t.spec.name);
            if t.state != TaskState::Queued || waited < delay || judged.contains(&(who, name)) {
                continue;
            }
            judged.push((who, name));
            let said = self.notices.tasks.get(&who);
            if !said.is_some_and(|s| s.contains(name)) && self.stuck(&t.spec) {
                due.push((*tid, waited));
            }
        }
        for (tid, waited) in due {
            let Some((spec, caller)) =
                self.tasks.get(&tid).map(|t| (t.spec.clone(), audience(t.caller)))
            else {
                continue;
            };
            if self.notices.tasks.entry(caller).or_default().insert(spec.name.to_string()) {
                let line = format!(
                    "volley: task '{}' has waited {} s{} for {}",
                    spec.name,
                    waited / 1000,
                    self.on_node(),
                    self.why_queued(&spec)
                );
                self.notice(caller, line, out);
            }
        }
        // Actors: remember when each was first seen pending, forget those that left.
        let pending: Vec<ActorId> = self.actors.pending().take(SCAN).copied().collect();
        self.notices.actor_since.retain(|a, _| pending.contains(a));
        let mut judged: Vec<(Holder, String)> = Vec::new();
        for aid in pending {
            let since = *self.notices.actor_since.entry(aid).or_insert(now);
            let Some(a) = self.actors.get(&aid) else { continue };
            let who = audience(a.caller);
            if now.saturating_sub(since) < delay
                || judged.iter().any(|(h, c)| *h == who && c == a.class())
            {
                continue;
            }
            judged.push((who, a.class().to_string()));
            let said = self.notices.actors.get(&who);
            if said.is_some_and(|s| s.contains(a.class())) || !self.stuck(&a.create) {
                continue;
            }
            let (class, spec, caller) =
                (a.class().to_string(), a.create.clone(), audience(a.caller));
            let line = format!(
                "volley: actor '{class}' has waited {} s{} to start, for {}",
                now.saturating_sub(since) / 1000,
                self.on_node(),
                self.why_queued(&spec)
            );
            self.notice(caller, line, out);
            self.notices.actors.entry(caller).or_default().insert(class);
        }
    }

    /// " on node 3" in a cluster (a notice may be printed far from the node it is about).
    fn on_node(&self) -> String {
        match self.peers.node_id() {
            Some(id) if !self.peers.is_empty() => format!(" on node {}", id.0),
            _ => String::new(),
        }
    }

    /// Says `line` where the driver of the work sees it: on this process's stderr, or sent to
    /// the node that sent the work here, which prints it as it prints its workers' output.
    fn notice(&self, caller: Holder, line: String, out: &mut Vec<Action>) {
        match caller {
            Holder::Peer(origin) => out.push(Action::PeerNotice { peer: origin, line }),
            Holder::Local | Holder::Worker(_) => out.push(Action::Log(line)),
        }
    }

    /// Why the task behind `id` has not given its value yet, if it is still waiting here to
    /// start (for a `get` that timed out). `None` if it runs, ran, or is not known here.
    pub fn explain_wait(&self, id: ObjectId) -> Option<String> {
        if let Some(a) = self.actors.get(&ActorId(id.task)) {
            if self.actors.is_pending(&ActorId(id.task)) {
                let why = self.why_queued(&a.create);
                return Some(format!("actor '{}' has not started: it waits for {why}", a.class()));
            }
        }
        let t = self.tasks.get(&{ id.task })?;
        let name = &t.spec.name;
        match t.state {
            TaskState::WaitingDeps(n) => {
                Some(format!("task '{name}' waits for {n} of its arguments to be made"))
            }
            TaskState::Queued => match &t.spec.actor {
                ActorPart::Call(call) => {
                    let actor = &call.actor;
                    let a = self.actors.get(actor)?;
                    if let Some(node) = a.remote.filter(|_| a.proxy) {
                        match self.peers.get(&node).map(|p| p.view.driver) {
                            Some(true) => {
                                return Some(format!(
                                    "call '{name}' waits for its actor '{}', which a driver's node \
                                     (node {}) holds: a driver's node takes no calls from other \
                                     nodes, so the call goes to the node the actor starts on \
                                     (one waiting there for its arguments is placed once they \
                                     are made)",
                                    a.class(),
                                    node.0
                                ))
                            }
                            None => {
                                return Some(format!(
                                    "call '{name}' waits for node {}, where its actor '{}' \
                                     lives, to appear in this node's view of the cluster",
                                    node.0,
                                    a.class()
                                ))
                            }
                            Some(false) => {}
                        }
                    }
                    if !self.actors.is_pending(actor) {
                        return None;
                    }
                    let why = self.why_queued(&a.create);
                    Some(format!(
                        "call '{name}' waits for its actor '{}', which has not started: it \
                         waits for {why}",
                        a.class()
                    ))
                }
                _ => Some(format!(
                    "task '{name}' is queued, waiting for {}",
                    self.why_queued(&t.spec)
                )),
            },
            // Whether it waits there is that node's to say (its notice comes here).
            TaskState::Remote(n) => {
                Some(format!("task '{name}' was sent to node {}, and has not finished there", n.0))
            }
            TaskState::Assigned(w) => {
                let head = self.workers.get(&w)?.queue.front()?;
                let running = self.tasks.get(head).filter(|_| *head != { id.task })?;
                Some(format!(
                    "task '{name}' is queued on a worker behind task '{}', which runs",
                    running.spec.name
                ))
            }
        }
    }

    /// "1 CPU: all 2 CPUs are held by actor 'A' (2 of them)" for a task or actor creation that
    /// waits to start here.
    pub(super) fn why_queued(&self, spec: &TaskSpec) -> String {
        let o = &spec.options;
        let need = self.demand(o.cpu_milli, &o.resources);
        if let Some(pg) = placement::pg_of(spec) {
            if !self.holds_pg_resources(spec) {
                let state = match self.placement.reason(pg) {
                    Some(r) if !r.is_empty() => format!(" ({r})"),
                    _ => String::new(),
                };
                return format!(
                    "{need}: its placement group {} is not placed on this node{state}",
                    self.pg_label(pg)
                );
            }
        }
        let mut short = self.shortfall(o.cpu_milli, &o.resources);
        if !short.is_empty() && self.may_move(spec) {
            short.push(self.cluster_room());
        }
        if !short.is_empty() {
            return format!("{need}: {}", short.join("; "));
        }
        let starting = self.workers.values().any(|w| w.state == WorkerState::Starting);
        if starting {
            format!("{need}: they are free, and a worker process is starting")
        } else {
            format!("{need}: they are free, and it is next in line")
        }
    }

    /// Whether `spec` may still go to another node (this node's own work, in a cluster with
    /// nodes that run work): work a peer sent never moves on.
    fn may_move(&self, spec: &TaskSpec) -> bool {
        let caller = match spec.actor {
            ActorPart::Create(_) => self.actors.get(&ActorId(spec.task_id)).map(|a| a.caller),
            _ => self.tasks.get(&spec.task_id).map(|t| t.caller),
        };
        let placeable = match spec.actor {
            ActorPart::None => true,
            ActorPart::Create(_) => true,
            ActorPart::Call(_) => false,
        };
        placeable
            && !matches!(caller, Some(Holder::Peer(_)))
            && self.peers.values().any(|p| !p.view.driver)
    }

    /// Whether waiting `spec` is stuck rather than in line, and worth a notice: an actor or a
    /// placement group holds some of what it needs, or it is free and yet does not start. A
    /// queue behind running tasks moves as they end (a long `map` is not news), and work that
    /// may go to another node is explained by the node it goes to.
    fn stuck(&self, spec: &TaskSpec) -> bool {
        if self.may_move(spec) {
            return false;
        }
        if placement::pg_of(spec).is_some() && !self.holds_pg_resources(spec) {
            return true; // Its group is not placed here (yet).
        }
        let o = &spec.options;
        let mut short: Vec<Held<'_>> = Vec::new();
        if o.cpu_milli > 0 && self.res.cpu_short(o.cpu_milli) {
            short.push(Held::Cpu);
        }
        for (r, a) in &o.resources {
            if self.res.used(r) + a > self.res.total(r) {
                short.push(Held::Res(r));
            }
        }
        short.is_empty() || short.iter().any(|h| self.held_beyond_tasks(h))
    }

    /// Whether an actor or a placement group holds some of `what` here.
    fn held_beyond_tasks(&self, what: &Held<'_>) -> bool {
        let holds = |cpu: u32, res: &[(String, u64)]| match what {
            Held::Cpu => cpu > 0,
            Held::Res(r) => res.iter().any(|(n, a)| n == r && *a > 0),
        };
        self.actors.values().any(|a| {
            let o = &a.create.options;
            a.holds_resources && a.remote.is_none() && holds(o.cpu_milli, &o.resources)
        }) || self.placement.held_bundles().flat_map(|(_, b)| b.iter()).any(|(_, b, _)| {
            let cpu = b.iter().filter(|(n, _)| n == "CPU").map(|(_, a)| *a).sum::<u64>();
            holds(u32::try_from(cpu).unwrap_or(u32::MAX), b)
        }) || self.holds.iter().any(|(_, cpu, res)| holds(cpu, res))
    }

    /// "no other node has room now (node 2: 0 of 1 CPU free, ...)" for work that could have
    /// gone to another node.
    fn cluster_room(&self) -> String {
        let mut nodes: Vec<String> = self
            .peers
            .values()
            .filter(|p| !p.view.driver)
            .map(|p| {
                let v = &p.view;
                format!(
                    "node {}: {} of {} CPU free",
                    v.id.0,
                    milli(v.cpu_free_milli.into()),
                    milli(v.cpu_total_milli.into())
                )
            })
            .collect();
        let more = nodes.len().saturating_sub(MAX_HOLDERS);
        nodes.truncate(MAX_HOLDERS);
        if more > 0 {
            nodes.push(format!("{more} more"));
        }
        format!("no other node of the cluster has room now ({})", nodes.join(", "))
    }

    /// What of `cpu` and `res` is not free now, a phrase each, with who holds it.
    pub(super) fn shortfall(&self, cpu: u32, res: &[(String, u64)]) -> Vec<String> {
        let mut out = Vec::new();
        let mut said: HashSet<(&str, &str)> = HashSet::new();
        let total = self.res.cpu_total();
        if cpu > 0 && self.res.cpu_short(cpu) {
            let free = self.res.cpu_free();
            out.push(held_text(
                "CPU",
                u64::from(free),
                u64::from(total),
                &self.holders(&Held::Cpu),
            ));
        }
        for (r, a) in res {
            let total = self.res.total(r);
            let used = self.res.used(r);
            if used + a <= total {
                continue;
            }
            let free = total.saturating_sub(used);
            let holders = self.holders(&Held::Res(r));
            let what = match r.strip_prefix(placement::PG_PREFIX) {
                Some(rest) => {
                    let pg = rest.split(':').next().unwrap_or_default();
                    let name = rest.rsplit(':').next().unwrap_or_default();
                    // The bundle marker (every task in a bundle takes a sliver of it) says
                    // nothing; a name short both in the bundle and in the group, once.
                    if name == "bundle" || !said.insert((pg, name)) {
                        continue;
                    }
                    format!("{name} of placement group {}", self.pg_label(pg))
                }
                None => r.clone(),
            };
            out.push(held_text(&what, free, total, &holders));
        }
        out
    }

    /// Adds a line per task name for tasks pipelined on a worker behind the one it runs (for
    /// `waiting_reasons`): they wait too, though not for free resources.
    pub(super) fn pipelined_reasons(&self, counts: &mut HashMap<String, usize>) {
        let mut by_name: HashMap<&str, usize> = HashMap::new();
        for w in self.workers.values().filter(|w| w.actor.is_none()) {
            for t in w.queue.iter().skip(1).filter_map(|t| self.tasks.get(t)) {
                *by_name.entry(&t.spec.name).or_insert(0) += 1;
            }
        }
        for (name, n) in by_name {
            let line = format!("task '{name}': queued on a worker behind the task it runs");
            *counts.entry(line).or_insert(0) += n;
        }
    }

    /// ": all 2 CPUs are held by actor 'A'" after what a line of `waiting_reasons` waits for,
    /// or nothing if it is free.
    pub(super) fn held_by(&self, cpu: u32, res: &[(String, u64)]) -> String {
        let short = self.shortfall(cpu, res);
        if short.is_empty() {
            String::new()
        } else {
            format!(": {}", short.join("; "))
        }
    }

    /// Who holds CPUs (or resource `r`) here: "actor 'A' (2 of them)", "placement group 'p'
    /// (id)", "task 'f' (3 running)", largest holders first.
    fn holders(&self, what: &Held<'_>) -> Vec<String> {
        // (kind order, label) -> (count, amount)
        let mut by: BTreeMap<(u8, String), (usize, u64)> = BTreeMap::new();
        let mut add = |kind: u8, label: String, amount: u64| {
            if amount > 0 {
                let e = by.entry((kind, label)).or_insert((0, 0));
                e.0 += 1;
                e.1 += amount;
            }
        };
        let amount_in = |res: &[(String, u64)], cpu: u32| -> u64 {
            match what {
                Held::Cpu => u64::from(cpu),
                Held::Res(r) => res.iter().filter(|(n, _)| n == r).map(|(_, a)| *a).sum(),
            }
        };
        for a in self.actors.values() {
            if a.holds_resources && a.remote.is_none() {
                let o = &a.create.options;
                add(0, a.class().to_string(), amount_in(&o.resources, o.cpu_milli));
            }
        }
        for (pg, bundles) in self.placement.held_bundles() {
            let amount: u64 = bundles
                .iter()
                .flat_map(|(_, b, _)| b.iter())
                .filter(|(n, _)| match what {
                    Held::Cpu => n == "CPU",
                    Held::Res(r) => n == r,
                })
                .map(|(_, a)| *a)
                .sum();
            add(1, self.pg_label(pg), amount);
        }
        for w in self.workers.values() {
            if w.actor.is_some() || w.blocked > 0 {
                continue;
            }
            let Some(head) = w.queue.front().and_then(|t| self.tasks.get(t)) else { continue };
            add(2, head.spec.name.to_string(), amount_in(&w.res_held, w.cpu_held));
        }
        for (key, cpu, res) in self.holds.iter() {
            add(3, key.to_string(), amount_in(res, cpu));
        }
        let mut list: Vec<((u8, String), (usize, u64))> = by.into_iter().collect();
        list.sort_by(|a, b| b.1 .1.cmp(&a.1 .1).then(a.0.cmp(&b.0)));
        list.into_iter()
            .map(|((kind, label), (n, _))| match kind {
                0 if n > 1 => format!("actor '{label}' ({n} of them)"),
                0 => format!("actor '{label}'"),
                1 => format!("placement group {label}"),
                3 => label, // "job 'id'", as its holder named itself
                _ if n > 1 => format!("task '{label}' ({n} running)"),
                _ => format!("task '{label}'"),
            })
            .collect()
    }

    /// "1 CPU", "0.5 CPU and 1 GPU", "1 CPU of placement group 'p' (id)": what a task asks
    /// for.
    fn demand(&self, cpu_milli: u32, resources: &[(String, u64)]) -> String {
        let mut parts = Vec::new();
        if cpu_milli > 0 {
            parts.push(format!("{} CPU", milli(cpu_milli.into())));
        }
        for (r, a) in resources {
            match r.strip_prefix(placement::PG_PREFIX) {
                None => parts.push(format!("{} {r}", milli(*a))),
                // Each amount of a group's resource is asked for as `pg:P:NAME` (and also as
                // `pg:P:i:NAME` for bundle i): the first says it once.
                Some(rest) => {
                    if let Some((pg, name)) = rest.split_once(':') {
                        if !name.contains(':') && name != "bundle" {
                            let label = self.pg_label(pg);
                            parts.push(format!("{} {name} of placement group {label}", milli(*a)));
                        }
                    }
                }
            }
        }
        if parts.is_empty() {
            return "a free slot".into();
        }
        parts.join(" and ")
    }

    /// How messages name a placement group: "'name' (id)" if this node created it with a name.
    fn pg_label(&self, pg: &str) -> String {
        self.placement.label(pg)
    }
}

/// Whom a notice about work from `h` is for: the node's own driver (its workers' tasks
/// included) or the node that sent it.
fn audience(h: Holder) -> Holder {
    match h {
        Holder::Worker(_) => Holder::Local,
        other => other,
    }
}

/// What a holder holds: CPUs, or one named resource.
enum Held<'a> {
    Cpu,
    Res(&'a str),
}

/// "all 2 CPUs are held by actor 'A' (2 of them)", "0.5 of 2 GPU are free; the rest is held by
/// task 'g'".
fn held_text(what: &str, free: u64, total: u64, holders: &[String]) -> String {
    let by = if holders.is_empty() {
        String::new()
    } else {
        let mut names: Vec<String> = holders.iter().take(MAX_HOLDERS).cloned().collect();
        if holders.len() > MAX_HOLDERS {
            names.push(format!("{} more", holders.len() - MAX_HOLDERS));
        }
        let last = names.pop().unwrap_or_default();
        let list = if names.is_empty() { last } else { format!("{} and {last}", names.join(", ")) };
        format!(" by {list}")
    };
    let plural = if what == "CPU" && total != 1000 { "CPUs" } else { what };
    if total == 0 {
        format!("this node has no {what}")
    } else if free == 0 && total == 1000 {
        format!("the one {what} is held{by}")
    } else if free == 0 {
        format!("all {} {plural} are held{by}", milli(total))
    } else {
        format!("only {} of {} {plural} free; the rest held{by}", milli(free), milli(total))
    }
}

/// "1 CPU, 2 GPU" for a request (placement-group resources named by their bundle).
fn demand_text(cpu_milli: u32, resources: &[(String, u64)]) -> String {
    let mut need = format!("{} CPU", cpu_milli as f64 / 1000.0);
    for (r, a) in resources {
        if !r.starts_with(placement::PG_PREFIX) {
            need.push_str(&format!(", {} {r}", *a as f64 / 1000.0));
        } else if r.ends_with(":bundle") && r.matches(':').count() == 3 {
            need.push_str(&format!(", its bundle ({r})"));
        }
    }
    need
}

#[cfg(test)]
mod tests {
    //! Driven event by event, like `scheduler::tests`.

    use super::super::harness::{peer_view, F, H};
    use super::*;
    use volley_proto::{PgSpec, PgStrategy, TaskOptions};

    #[test]
    fn a_task_behind_two_actors_is_noticed_once_naming_them() {
        let mut h = H::with_resources(2.0, &[]);
        h.actor("Counter", 1000);
        h.actor("Counter", 1000);
        let f = h.cpu_task("f");
        let also = h.cpu_task("f");
        assert_eq!(h.s.stats().tasks_queued, 2);
        assert!(h.tick_logs(9_000).is_empty(), "not before the delay");
        let said = h.tick_logs(10_000);
        assert_eq!(
            said,
            vec!["volley: task 'f' has waited 10 s for 1 CPU: all 2 CPUs are held by actor \
                  'Counter' (2 of them)"
                .to_string()]
        );
        assert!(h.tick_logs(20_000).is_empty(), "said once, not every tick");
        h.cpu_task("f");
        assert!(h.tick_logs(40_000).is_empty(), "once per function, not per task");
        let why = h.s.explain_wait(f).expect("queued");
        assert!(why.contains("task 'f' is queued"), "{why}");
        assert!(why.contains("all 2 CPUs are held by actor 'Counter' (2 of them)"), "{why}");
        assert!(h.s.explain_wait(also).is_some());
        // Another function waiting is said once too.
        h.cpu_task("g");
        assert!(h.tick_logs(45_000).is_empty(), "g has waited 5 s only");
        let said = h.tick_logs(56_000);
        assert_eq!(said.len(), 1);
        assert!(said[0].starts_with("volley: task 'g' has waited 16 s for 1 CPU"), "{said:?}");
    }

    #[test]
    fn a_placement_group_holding_the_cpus_is_named() {
        let mut h = H::with_resources(2.0, &[]);
        let ready = ObjectId::for_return(h.ids.next_task(), 0);
        let spec = PgSpec {
            id: "6f1c".into(),
            name: "gang".into(),
            bundles: vec![vec![("CPU".into(), 1000)], vec![("CPU".into(), 500)]],
            strategy: PgStrategy::Pack,
            ready,
            value: ObjectData::default(),
        };
        h.s.create_pg(Holder::Local, spec, &mut h.out).expect("valid");
        h.actor("A", 500);
        let f = h.cpu_task("f");
        let why = h.s.explain_wait(f).expect("queued");
        assert!(
            why.ends_with(
                "1 CPU: all 2 CPUs are held by placement group 'gang' (6f1c) and actor 'A'"
            ),
            "{why}"
        );
        let lines = h.s.waiting_reasons(8);
        assert!(
            lines.iter().any(|l| l.contains("task 'f': waiting for 1 CPU: all 2 CPUs")),
            "{lines:?}"
        );
    }

    #[test]
    fn running_tasks_and_partly_free_resources_are_described() {
        let mut h = H::with_resources(2.0, &[("disk", 3000)]);
        let disk = |a: u64| TaskOptions {
            cpu_milli: 0,
            resources: vec![("disk".into(), a)],
            ..Default::default()
        };
        h.submit_named("copy", disk(1000));
        h.submit_named("copy", disk(1000));
        let big = h.submit_named("big", disk(2000));
        let why = h.s.explain_wait(big).expect("queued");
        assert!(
            why.ends_with(
                "2 disk: only 1 of 3 disk free; the rest held by task 'copy' (2 running)"
            ),
            "{why}"
        );
    }

    #[test]
    fn an_actor_that_cannot_start_is_noticed_with_its_class() {
        let mut h = H::with_resources(1.0, &[]);
        h.actor("Holder", 1000);
        let waiting = h.actor("Late", 1000);
        assert!(h.tick_logs(1_000).is_empty());
        let said = h.tick_logs(12_000);
        assert_eq!(
            said,
            vec!["volley: actor 'Late' has waited 11 s to start, for 1 CPU: the one CPU is held \
                  by actor 'Holder'"
                .to_string()]
        );
        assert!(h.tick_logs(30_000).is_empty());
        let why = h.s.explain_wait(waiting.object()).expect("pending");
        assert!(why.starts_with("actor 'Late' has not started: it waits for 1 CPU"), "{why}");
    }

    #[test]
    fn a_queue_behind_running_tasks_is_in_line_not_stuck() {
        let mut h = H::with_resources(1.0, &[]);
        h.s.cfg.pipeline_depth = 0;
        h.cpu_task("f");
        let queued = h.cpu_task("f");
        assert!(h.tick_logs(60_000).is_empty(), "it starts when the running one ends");
        let why = h.s.explain_wait(queued).expect("queued");
        assert!(why.ends_with("1 CPU: the one CPU is held by task 'f'"), "{why}");
        // An actor taking the CPU meanwhile makes it stuck.
        h.s.res.set_cpu_total(2000);
        h.actor("A", 1000);
        let said = h.tick_logs(70_000);
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(said[0].contains("all 2 CPUs are held by actor 'A' and task 'f'"), "{said:?}");
    }

    #[test]
    fn no_notice_when_disabled_or_when_the_task_runs() {
        let mut h = H::with_resources(1.0, &[]);
        h.s.cfg.wait_notice_ms = 0;
        h.actor("A", 1000);
        h.cpu_task("f");
        assert!(h.tick_logs(60_000).is_empty());
        let mut h = H::with_resources(1.0, &[]);
        let f = h.cpu_task("f");
        assert!(h.tick_logs(60_000).is_empty(), "it runs");
        assert_eq!(h.s.explain_wait(f), None);
    }

    #[test]
    fn work_a_peer_sent_is_noticed_to_that_peer_naming_this_node() {
        let mut h = H::with_resources(1.0, &[]);
        h.s.set_node_id(NodeId(2));
        h.s.set_peers(vec![peer_view(1, 0, 0, true)], &mut h.out);
        h.actor("A", 1000);
        let spec = TaskSpec {
            task_id: h.ids.next_task(),
            function: F,
            name: "f".into(),
            args: ObjectData::default(),
            deps: Box::default(),
            num_returns: 1,
            options: std::sync::Arc::new(TaskOptions { cpu_milli: 1000, ..Default::default() }),
            actor: ActorPart::None,
        };
        let (objects, routes, errors, cached, fetch) = (vec![], vec![], vec![], vec![], vec![]);
        let out = &mut h.out;
        h.s.accept_peer_task(NodeId(1), spec, None, objects, routes, errors, cached, fetch, out);
        h.out.clear();
        h.s.tick(10_000, &mut h.out);
        let sent: Vec<(NodeId, String)> = h
            .out
            .iter()
            .filter_map(|a| match a {
                Action::PeerNotice { peer, line } => Some((*peer, line.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(
            sent,
            vec![(
                NodeId(1),
                "volley: task 'f' has waited 10 s on node 2 for 1 CPU: the one CPU is held by \
                 actor 'A'"
                    .to_string()
            )]
        );
        assert!(!h.out.iter().any(|a| matches!(a, Action::Log(_))), "not printed here");
    }

    #[test]
    fn a_drivers_node_says_no_node_of_the_cluster_has_room() {
        let mut h = H::with_resources(0.0, &[]);
        h.s.set_node_id(NodeId(4));
        h.s.set_peers(vec![peer_view(1, 0, 0, false), peer_view(2, 1, 0, false)], &mut h.out);
        // Node 2 takes PEER_DEPTH tasks per CPU; the next one waits here.
        let refs: Vec<ObjectId> = (0..=super::peers::PEER_DEPTH).map(|_| h.cpu_task("f")).collect();
        let why = h.s.explain_wait(refs[refs.len() - 1]).expect("queued here");
        assert!(
            why.ends_with(
                "1 CPU: this node has no CPU; no other node of the cluster has room now (node 1: \
                 0 of 0 CPU free, node 2: 0 of 1 CPU free)"
            ),
            "{why}"
        );
    }

    #[test]
    fn tasks_pipelined_behind_a_running_one_count_as_waiting() {
        let mut h = H::with_resources(1.0, &[]);
        for _ in 0..3 {
            h.cpu_task("f");
        }
        let s = h.s.stats();
        assert_eq!((s.tasks_assigned, s.tasks_pipelined, s.tasks_queued), (3, 2, 0));
        assert_eq!(
            h.s.waiting_reasons(8),
            vec!["2 x task 'f': queued on a worker behind the task it runs".to_string()]
        );
        let (_, behind) = (h.cpu_task("g"), h.cpu_task("g"));
        let why = h.s.explain_wait(behind).expect("pipelined");
        assert_eq!(why, "task 'g' is queued on a worker behind task 'f', which runs");
    }
}
