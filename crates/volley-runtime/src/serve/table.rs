//! The ingress's sans-IO core: the routing table (parsed from the "routes" document, longest
//! prefix first) and the balancer (each replica's ongoing requests as this ingress counts them,
//! power-of-two choices under a route's `max_ongoing_requests`, and the requests waiting for a
//! free replica, first come first served, up to `max_queued_requests`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use volley_proto::{ActorId, TaskId};

/// One route of the table (see `python/volley/serve/_wire.py` and `docs/serve.md`).
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub prefix: String,
    pub app: String,
    pub deployment: String,
    pub replicas: Vec<ActorId>,
    /// The node each replica runs on (the document's optional "replica_nodes", in the order
    /// of "replicas"): a replica this node does not host is reached there.
    pub nodes: Vec<Option<u32>>,
    pub max_ongoing: u32,
    /// `None`: no bound.
    pub max_queued: Option<usize>,
    pub timeout: Option<Duration>,
}

impl Route {
    /// The key the balancer's waiting lines go by (a deployment of an app).
    pub fn key(&self) -> String {
        format!("{}/{}", self.app, self.deployment)
    }

    /// The node `replica` runs on, if the document said.
    pub fn node_of(&self, replica: ActorId) -> Option<u32> {
        let i = self.replicas.iter().position(|a| *a == replica)?;
        self.nodes.get(i).copied().flatten()
    }

    /// Whether `path` falls under this route: on path-segment boundaries ("/echo" matches
    /// "/echo" and "/echo/x", not "/echoes"; "/" matches every path).
    pub fn matches(&self, path: &str) -> bool {
        let p = self.prefix.as_str();
        if p == "/" {
            return true;
        }
        path.starts_with(p) && (path.len() == p.len() || path.as_bytes()[p.len()] == b'/')
    }
}

/// The routes, longest prefix first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    pub version: i64,
    pub routes: Vec<Route>,
}

impl Table {
    /// The route that serves `path`: the longest matching prefix.
    pub fn lookup(&self, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.matches(path))
    }

    /// Parses the "routes" document; a clear message for anything it cannot use.
    pub fn parse(doc: &[u8]) -> Result<Table, String> {
        let v: serde_json::Value = serde_json::from_slice(doc)
            .map_err(|e| format!("the routes document is not JSON: {e}"))?;
        let version = v.get("version").and_then(|x| x.as_i64()).unwrap_or(0);
        let Some(list) = v.get("routes").and_then(|x| x.as_array()) else {
            return Err("the routes document has no \"routes\" list".into());
        };
        let mut routes = Vec::with_capacity(list.len());
        let mut seen = HashSet::new();
        for (i, r) in list.iter().enumerate() {
            let route = parse_route(r).map_err(|e| format!("route {i}: {e}"))?;
            if !seen.insert(route.prefix.clone()) {
                return Err(format!("route {i}: prefix {:?} is listed twice", route.prefix));
            }
            routes.push(route);
        }
        routes.sort_by(|a, b| b.prefix.len().cmp(&a.prefix.len()).then(a.prefix.cmp(&b.prefix)));
        Ok(Table { version, routes })
    }
}

fn parse_route(r: &serde_json::Value) -> Result<Route, String> {
    let text = |k: &str| -> Result<String, String> {
        r.get(k).and_then(|x| x.as_str()).map(str::to_string).ok_or(format!("no string {k:?}"))
    };
    let prefix = text("prefix")?;
    if !prefix.starts_with('/') || (prefix.len() > 1 && prefix.ends_with('/')) {
        return Err(format!("prefix {prefix:?} must start with \"/\" and not end with one"));
    }
    let mut replicas = Vec::new();
    for x in r.get("replicas").and_then(|x| x.as_array()).ok_or("no \"replicas\" list")? {
        let hex = x.as_str().ok_or("a replica is not a string")?;
        replicas.push(parse_actor_id(hex)?);
    }
    let mut nodes = vec![None; replicas.len()];
    if let Some(list) = r.get("replica_nodes").filter(|x| !x.is_null()) {
        let list = list.as_array().ok_or("\"replica_nodes\" is not a list")?;
        if list.len() != replicas.len() {
            return Err(format!(
                "\"replica_nodes\" names {} nodes for {} replicas",
                list.len(),
                replicas.len()
            ));
        }
        for (slot, x) in nodes.iter_mut().zip(list) {
            *slot = match x.as_i64() {
                Some(n) if (0..=u32::MAX as i64).contains(&n) => Some(n as u32),
                Some(_) => None, // not known (-1)
                None => return Err("a replica's node is not an integer".into()),
            };
        }
    }
    let max_ongoing = match r.get("max_ongoing_requests").and_then(|x| x.as_u64()) {
        Some(n) if n >= 1 && n <= u32::MAX as u64 => n as u32,
        _ => return Err("max_ongoing_requests must be an integer >= 1".into()),
    };
    let max_queued = match r.get("max_queued_requests") {
        None | Some(serde_json::Value::Null) => None,
        Some(x) => match x.as_i64() {
            Some(-1) => None,
            Some(n) if n >= 0 => Some(n as usize),
            _ => return Err("max_queued_requests must be -1 or an integer >= 0".into()),
        },
    };
    let timeout = match r.get("request_timeout_s") {
        None | Some(serde_json::Value::Null) => None,
        Some(x) => match x.as_f64() {
            Some(s) if s > 0.0 && s.is_finite() && s < 1e9 => Some(Duration::from_secs_f64(s)),
            _ => return Err("request_timeout_s must be null or a number > 0".into()),
        },
    };
    Ok(Route {
        prefix,
        app: text("app")?,
        deployment: text("deployment")?,
        replicas,
        nodes,
        max_ongoing,
        max_queued,
        timeout,
    })
}

/// An actor's id from the hex the engine shows (`get_runtime_context().get_actor_id()`).
pub fn parse_actor_id(hex: &str) -> Result<ActorId, String> {
    if hex.is_empty() || hex.len() > 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("replica id {hex:?} is not an actor id (32 hex digits)"));
    }
    u128::from_str_radix(hex, 16)
        .map(|n| ActorId(TaskId(n)))
        .map_err(|e| format!("replica id {hex:?}: {e}"))
}

/// A request waiting for a replica.
pub type WaiterId = u64;

/// What [`Balancer::acquire`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquire {
    /// Send it to this replica (its count was taken).
    Got(ActorId),
    /// Every live replica is at its bound: the request waits (as this waiter) for one.
    Wait(WaiterId),
    /// The waiting line is full: 503 with Retry-After.
    Overloaded,
    /// The route lists no replica that is alive: 503.
    NoReplica,
}

/// Per-replica counts and waiting lines. Counts outlive table versions: a replica listed again
/// keeps its count, and one dropped from the table is still counted until its calls end.
#[derive(Default)]
pub struct Balancer {
    ongoing: HashMap<ActorId, u32>,
    dead: HashSet<ActorId>,
    /// Per deployment key: the route (as last seen) and its waiters, oldest first.
    lines: HashMap<String, (Route, VecDeque<WaiterId>)>,
    next_waiter: WaiterId,
    rng: u64,
    /// The models each replica says it holds (`serve.multiplexed`'s "models/..." documents).
    models: HashMap<ActorId, Vec<String>>,
    /// Models this ingress sent to a replica lately: it holds them, or is loading them, before
    /// its document says so.
    sent: HashMap<(ActorId, String), Instant>,
}

/// How long a replica a model's request went to counts as holding that model, before its
/// document says so (serve's handles wait as long: `MODEL_SENT_S`).
pub const MODEL_SENT: Duration = Duration::from_secs(2);

impl Balancer {
    pub fn new(seed: u64) -> Balancer {
        Balancer { rng: seed | 1, ..Balancer::default() }
    }

    fn random(&mut self) -> u64 {
        // xorshift64*: enough to spread choices, not for secrets.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn ongoing(&self, a: ActorId) -> u32 {
        self.ongoing.get(&a).copied().unwrap_or(0)
    }

    pub fn is_dead(&self, a: ActorId) -> bool {
        self.dead.contains(&a)
    }

    /// Requests waiting for a replica of `route`'s deployment.
    pub fn queued(&self, route: &Route) -> usize {
        self.queued_for(&route.key())
    }

    /// Requests waiting in the line of deployment `key` (see [`Route::key`]).
    pub fn queued_for(&self, key: &str) -> usize {
        self.lines.get(key).map_or(0, |(_, q)| q.len())
    }

    /// Replica `actor` holds `models` now (its document; empty: it holds none, or is gone).
    pub fn set_models(&mut self, actor: ActorId, models: Vec<String>) {
        if models.is_empty() {
            self.models.remove(&actor);
        } else {
            self.models.insert(actor, models);
        }
    }

    fn holds(&self, a: ActorId, model: &str, now: Instant) -> bool {
        self.models.get(&a).is_some_and(|m| m.iter().any(|x| x == model))
            || self
                .sent
                .get(&(a, model.to_string()))
                .is_some_and(|t| now.saturating_duration_since(*t) < MODEL_SENT)
    }

    /// How many models `a` holds (or was sent lately).
    fn held(&self, a: ActorId, now: Instant) -> usize {
        let published = self.models.get(&a).map_or(0, Vec::len);
        let fresh = self
            .sent
            .iter()
            .filter(|((x, m), t)| {
                *x == a
                    && now.saturating_duration_since(**t) < MODEL_SENT
                    && !self.models.get(&a).is_some_and(|l| l.contains(m))
            })
            .count();
        published + fresh
    }

    /// The live replicas under the bound.
    fn free(&self, route: &Route) -> Vec<ActorId> {
        route
            .replicas
            .iter()
            .copied()
            .filter(|a| !self.dead.contains(a) && self.ongoing(*a) < route.max_ongoing)
            .collect()
    }

    /// Power of two choices among the live replicas under the bound; `None` if there is none.
    fn choose(&mut self, route: &Route) -> Option<ActorId> {
        let free = self.free(route);
        self.take_one(free)
    }

    /// As `choose`, for a request that names `model` (Ray Serve's multiplexing): among the
    /// free replicas that hold it; when none that holds it is free, among all; when none holds
    /// it, among those that hold the fewest models. The one chosen counts as holding it for
    /// `MODEL_SENT`.
    fn choose_for_model(&mut self, route: &Route, model: &str, now: Instant) -> Option<ActorId> {
        let free = self.free(route);
        if free.is_empty() {
            return None;
        }
        let live = route.replicas.iter().filter(|a| !self.dead.contains(a));
        let holds_any = live.clone().any(|a| self.holds(*a, model, now));
        let mut pool: Vec<ActorId> =
            free.iter().copied().filter(|a| self.holds(*a, model, now)).collect();
        if pool.is_empty() {
            pool = if holds_any {
                free
            } else {
                let fewest = free.iter().map(|a| self.held(*a, now)).min().unwrap_or(0);
                free.into_iter().filter(|a| self.held(*a, now) == fewest).collect()
            };
        }
        let pick = self.take_one(pool)?;
        if self.sent.len() > 4096 {
            self.sent.retain(|_, t| now.saturating_duration_since(*t) < MODEL_SENT);
        }
        self.sent.insert((pick, model.to_string()), now);
        Some(pick)
    }

    /// Power of two choices among `free`; the one chosen is counted.
    fn take_one(&mut self, free: Vec<ActorId>) -> Option<ActorId> {
        let pick = match free.len() {
            0 => return None,
            1 => free[0],
            n => {
                let i = (self.random() % n as u64) as usize;
                let mut j = (self.random() % (n as u64 - 1)) as usize;
                if j >= i {
                    j += 1;
                }
                let (a, b) = (free[i], free[j]);
                if self.ongoing(b) < self.ongoing(a) {
                    b
                } else {
                    a
                }
            }
        };
        *self.ongoing.entry(pick).or_insert(0) += 1;
        Some(pick)
    }

    fn alive(&self, route: &Route) -> bool {
        route.replicas.iter().any(|a| !self.dead.contains(a))
    }

    /// A replica for a new request of `route`, or its place in the waiting line. A route with
    /// no replica at all (its deployment scaled to zero) keeps its requests waiting until the
    /// table brings one; one whose replicas all died answers at once.
    pub fn acquire(&mut self, route: &Route) -> Acquire {
        self.acquire_for(route, "", Instant::now())
    }

    /// `acquire`, for a request that names `model` (`""`: none; see `choose_for_model`). A
    /// request that waits is handed the first replica free, as every waiter is.
    pub fn acquire_for(&mut self, route: &Route, model: &str, now: Instant) -> Acquire {
        if !route.replicas.is_empty() && !self.alive(route) {
            return Acquire::NoReplica;
        }
        let key = route.key();
        let waiting = self.lines.get(&key).is_some_and(|(_, q)| !q.is_empty());
        // Nobody jumps the line: a free replica goes to the oldest waiter first.
        if !waiting {
            let got = match model {
                "" => self.choose(route),
                m => self.choose_for_model(route, m, now),
            };
            if let Some(a) = got {
                return Acquire::Got(a);
            }
        }
        let line = self.lines.entry(key).or_insert_with(|| (route.clone(), VecDeque::new()));
        line.0 = route.clone();
        if route.max_queued.is_some_and(|max| line.1.len() >= max) {
            return Acquire::Overloaded;
        }
        self.next_waiter += 1;
        line.1.push_back(self.next_waiter);
        Acquire::Wait(self.next_waiter)
    }

    /// A waiter gave up (timed out, its client left): it leaves its line.
    pub fn forget(&mut self, waiter: WaiterId) {
        for (_, q) in self.lines.values_mut() {
            q.retain(|w| *w != waiter);
        }
        self.lines.retain(|_, (_, q)| !q.is_empty());
    }

    /// A call on `a` ended: its count drops, and the replicas now free go to waiters (each
    /// handed one already counted). A waiter whose line lost every live replica is handed
    /// `None` (answer 503).
    pub fn release(&mut self, a: ActorId) -> Vec<(WaiterId, Option<ActorId>)> {
        if let Some(n) = self.ongoing.get_mut(&a) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.ongoing.remove(&a);
            }
        }
        self.serve_lines()
    }

    /// `a` is dead (the engine says so as a call was about to go to it).
    pub fn mark_dead(&mut self, a: ActorId) -> Vec<(WaiterId, Option<ActorId>)> {
        self.dead.insert(a);
        self.serve_lines()
    }

    /// A new table: waiting lines follow their deployments' new routes (a deployment gone
    /// keeps its old one until its waiters are served or give up).
    pub fn set_table(&mut self, t: &Table) -> Vec<(WaiterId, Option<ActorId>)> {
        for r in &t.routes {
            if let Some(line) = self.lines.get_mut(&r.key()) {
                line.0 = r.clone();
            }
        }
        self.serve_lines()
    }

    fn serve_lines(&mut self) -> Vec<(WaiterId, Option<ActorId>)> {
        let mut handed = Vec::new();
        let keys: Vec<String> = self.lines.keys().cloned().collect();
        for key in keys {
            let Some((route, _)) = self.lines.get(&key) else { continue };
            let route = route.clone();
            while let Some((_, q)) = self.lines.get(&key) {
                if q.is_empty() {
                    break;
                }
                if route.replicas.is_empty() {
                    break; // Scaled to zero: they wait for the replica the autoscaler starts.
                }
                if !self.alive(&route) {
                    if let Some((_, q)) = self.lines.get_mut(&key) {
                        handed.extend(q.drain(..).map(|w| (w, None)));
                    }
                    break;
                }
                let Some(a) = self.choose(&route) else { break };
                if let Some(w) = self.lines.get_mut(&key).and_then(|(_, q)| q.pop_front()) {
                    handed.push((w, Some(a)));
                }
            }
        }
        self.lines.retain(|_, (_, q)| !q.is_empty());
        handed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aid(n: u128) -> ActorId {
        ActorId(TaskId(n))
    }

    fn doc(routes: &str) -> Vec<u8> {
        format!("{{\"version\": 3, \"routes\": [{routes}]}}").into_bytes()
    }

    #[test]
    fn each_replica_may_name_its_node() {
        let r = |nodes: &str| {
            format!(
                "{{\"prefix\": \"/a\", \"app\": \"x\", \"deployment\": \"D\", \
                 \"replicas\": [\"{:032x}\", \"{:032x}\"], \"replica_nodes\": {nodes}, \
                 \"max_ongoing_requests\": 2}}",
                1u128, 2u128
            )
        };
        let t = Table::parse(&doc(&r("[3, -1]"))).expect("parses");
        assert_eq!(t.routes[0].node_of(aid(1)), Some(3));
        assert_eq!(t.routes[0].node_of(aid(2)), None, "-1: not known");
        assert_eq!(t.routes[0].node_of(aid(9)), None, "not a replica of the route");
        let t = Table::parse(&doc(&r("null"))).expect("parses");
        assert_eq!(t.routes[0].nodes, vec![None, None]);
        let e = Table::parse(&doc(&r("[3]"))).expect_err("one node for two replicas");
        assert!(e.contains("names 1 nodes for 2 replicas"), "{e}");
        let e = Table::parse(&doc(&r("[3, \"x\"]"))).expect_err("not a number");
        assert!(e.contains("not an integer"), "{e}");
    }

    fn route(prefix: &str, replicas: &[u128], max: u32, queued: i64) -> String {
        let ids: Vec<String> = replicas.iter().map(|r| format!("\"{r:032x}\"")).collect();
        format!(
            "{{\"prefix\": \"{prefix}\", \"app\": \"default\", \"deployment\": \"D{prefix}\", \
             \"replicas\": [{}], \"max_ongoing_requests\": {max}, \
             \"max_queued_requests\": {queued}, \"request_timeout_s\": null}}",
            ids.join(", ")
        )
    }

    #[test]
    fn a_models_requests_go_to_the_replicas_that_hold_it() {
        let t = Table::parse(&doc(&route("/m", &[1, 2, 3], 2, -1))).expect("parses");
        let r = &t.routes[0];
        let mut b = Balancer::new(7);
        let now = Instant::now();
        b.set_models(aid(2), vec!["a".into(), "b".into()]);
        b.set_models(aid(3), vec!["c".into()]);
        // "a" is held by 2 alone: its requests go there while it has room.
        assert_eq!(b.acquire_for(r, "a", now), Acquire::Got(aid(2)));
        assert_eq!(b.acquire_for(r, "a", now), Acquire::Got(aid(2)));
        // 2 is full: any replica with room.
        let third = b.acquire_for(r, "a", now);
        assert!(matches!(third, Acquire::Got(a) if a != aid(2)), "{third:?}");
        for a in [aid(2), aid(2)] {
            b.release(a);
        }
        if let Acquire::Got(a) = third {
            b.release(a);
        }
        // A model no replica holds goes to the one holding the fewest (1: none), which then
        // counts as holding it until its document says so.
        assert_eq!(b.acquire_for(r, "new", now), Acquire::Got(aid(1)));
        b.release(aid(1));
        assert_eq!(b.acquire_for(r, "new", now), Acquire::Got(aid(1)));
        b.release(aid(1));
        let later = now + MODEL_SENT + Duration::from_millis(1);
        assert_eq!(b.held(aid(1), later), 0, "sent long ago, never published");
        // A replica's document gone (it stopped): it holds nothing.
        b.set_models(aid(2), vec![]);
        assert!(!b.holds(aid(2), "a", later));
        // No model: plain power of two choices, all three reachable.
        let mut seen = HashSet::new();
        for _ in 0..60 {
            if let Acquire::Got(a) = b.acquire_for(r, "", later) {
                seen.insert(a);
                b.release(a);
            }
        }
        assert_eq!(seen.len(), 3);
    }

    #[test]
    fn longest_prefix_on_segment_boundaries() {
        let routes = [
            route("/", &[1], 1, -1),
            route("/echo", &[2], 1, -1),
            route("/echo/deep", &[3], 1, -1),
        ]
        .join(", ");
        let t = Table::parse(&doc(&routes)).expect("parses");
        assert_eq!(t.version, 3);
        let p = |path: &str| t.lookup(path).map(|r| r.prefix.clone());
        assert_eq!(p("/echo").as_deref(), Some("/echo"));
        assert_eq!(p("/echo/x").as_deref(), Some("/echo"));
        assert_eq!(p("/echo/deep/y").as_deref(), Some("/echo/deep"));
        assert_eq!(p("/echoes").as_deref(), Some("/"), "not on a segment boundary");
        assert_eq!(p("/other").as_deref(), Some("/"));
        let t = Table::parse(&doc(&route("/echo", &[2], 1, -1))).expect("parses");
        assert!(t.lookup("/echoes").is_none());
        assert!(t.lookup("/").is_none());
    }

    #[test]
    fn bad_documents_say_what_is_wrong() {
        let e = Table::parse(b"{").expect_err("not JSON");
        assert!(e.contains("not JSON"), "{e}");
        let e = Table::parse(b"{\"version\": 1}").expect_err("no list");
        assert!(e.contains("no \"routes\""), "{e}");
        let e = Table::parse(&doc(&route("echo", &[1], 1, -1))).expect_err("no slash");
        assert!(e.contains("must start with"), "{e}");
        let e = Table::parse(&doc(&route("/a", &[1], 0, -1))).expect_err("zero");
        assert!(e.contains("max_ongoing_requests"), "{e}");
        let twice = [route("/a", &[1], 1, -1), route("/a", &[2], 1, -1)].join(",");
        assert!(Table::parse(&doc(&twice)).expect_err("twice").contains("twice"));
        let good = String::from_utf8(doc(&route("/a", &[1], 1, -1))).expect("utf-8");
        let bad = good.replace(&format!("{:032x}", 1), "zz");
        let e = Table::parse(bad.as_bytes()).expect_err("bad id");
        assert!(e.contains("not an actor id"), "{e}");
    }

    #[test]
    fn actor_ids_read_as_the_engine_writes_them() {
        let n: u128 = 0x0123_4567_89ab_cdef_0011_2233_4455_6677;
        assert_eq!(parse_actor_id(&format!("{n:032x}")), Ok(aid(n)));
        assert!(parse_actor_id("").is_err());
        assert!(parse_actor_id(&"f".repeat(33)).is_err());
    }

    #[test]
    fn p2c_never_passes_the_bound_and_spreads() {
        let t = Table::parse(&doc(&route("/a", &[1, 2], 3, -1))).expect("parses");
        let r = &t.routes[0];
        let mut b = Balancer::new(7);
        let mut got = Vec::new();
        for _ in 0..6 {
            match b.acquire(r) {
                Acquire::Got(a) => got.push(a),
                other => panic!("expected a replica, got {other:?}"),
            }
        }
        assert_eq!((b.ongoing(aid(1)), b.ongoing(aid(2))), (3, 3));
        let Acquire::Wait(w) = b.acquire(r) else { panic!("all busy: waits") };
        let handed = b.release(aid(2));
        assert_eq!(handed, vec![(w, Some(aid(2)))], "the freed replica goes to the waiter");
        assert_eq!(b.ongoing(aid(2)), 3);
    }

    #[test]
    fn p2c_prefers_the_less_busy() {
        let t = Table::parse(&doc(&route("/a", &[1, 2], 100, -1))).expect("parses");
        let r = &t.routes[0];
        let mut b = Balancer::new(99);
        for _ in 0..200 {
            b.acquire(r);
        }
        let (x, y) = (b.ongoing(aid(1)), b.ongoing(aid(2)));
        assert_eq!(x + y, 200);
        assert!(x.abs_diff(y) <= 1, "two choices of two keep them even: {x} vs {y}");
    }

    #[test]
    fn the_queue_bound_overloads() {
        let t = Table::parse(&doc(&route("/a", &[1], 1, 2))).expect("parses");
        let r = &t.routes[0];
        let mut b = Balancer::new(1);
        assert_eq!(b.acquire(r), Acquire::Got(aid(1)));
        let Acquire::Wait(w1) = b.acquire(r) else { panic!("waits") };
        let Acquire::Wait(w2) = b.acquire(r) else { panic!("waits") };
        assert_eq!(b.acquire(r), Acquire::Overloaded);
        b.forget(w1);
        assert_eq!(b.queued(r), 1);
        assert_eq!(b.release(aid(1)), vec![(w2, Some(aid(1)))]);
        assert_eq!(b.queued(r), 0);
    }

    #[test]
    fn dead_replicas_are_skipped_and_waiters_told() {
        let t = Table::parse(&doc(&route("/a", &[1, 2], 1, -1))).expect("parses");
        let r = &t.routes[0];
        let mut b = Balancer::new(3);
        let first = b.acquire(r);
        let second = b.acquire(r);
        assert!(matches!((first, second), (Acquire::Got(_), Acquire::Got(_))));
        let Acquire::Wait(w) = b.acquire(r) else { panic!("waits") };
        assert!(b.mark_dead(aid(1)).is_empty(), "replica 2 still lives (and is busy)");
        b.release(aid(1));
        assert_eq!(b.release(aid(2)), vec![(w, Some(aid(2)))]);
        let Acquire::Wait(w) = b.acquire(r) else { panic!("waits") };
        assert_eq!(b.mark_dead(aid(2)), vec![(w, None)], "no replica left: told at once");
        assert_eq!(b.acquire(r), Acquire::NoReplica);
    }

    #[test]
    fn a_new_table_serves_waiters() {
        let t = Table::parse(&doc(&route("/a", &[1], 1, -1))).expect("parses");
        let mut b = Balancer::new(5);
        assert_eq!(b.acquire(&t.routes[0]), Acquire::Got(aid(1)));
        let Acquire::Wait(w) = b.acquire(&t.routes[0]) else { panic!("waits") };
        let t2 = Table::parse(&doc(&route("/a", &[1, 2], 1, -1))).expect("parses");
        assert_eq!(b.set_table(&t2), vec![(w, Some(aid(2)))]);
    }

    #[test]
    fn a_deployment_at_zero_replicas_keeps_its_requests_until_one_comes() {
        let zero = Table::parse(&doc(&route("/z", &[], 1, 2))).expect("parses");
        let mut b = Balancer::new(7);
        let Acquire::Wait(w1) = b.acquire(&zero.routes[0]) else { panic!("waits at zero") };
        let Acquire::Wait(w2) = b.acquire(&zero.routes[0]) else { panic!("waits at zero") };
        assert_eq!(b.acquire(&zero.routes[0]), Acquire::Overloaded, "max_queued_requests 2");
        assert_eq!(b.queued_for(&zero.routes[0].key()), 2);
        assert!(b.set_table(&zero).is_empty(), "still none: they keep waiting");
        let one = Table::parse(&doc(&route("/z", &[1], 1, 2))).expect("parses");
        assert_eq!(b.set_table(&one), vec![(w1, Some(aid(1)))], "the oldest first");
        assert_eq!(b.release(aid(1)), vec![(w2, Some(aid(1)))]);
        assert_eq!(b.queued_for(&one.routes[0].key()), 0);
    }
}
