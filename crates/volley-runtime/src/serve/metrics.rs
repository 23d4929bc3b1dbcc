//! serve's metrics, counted in the ingress itself, and the figures serve's controller
//! publishes, rendered for the dashboard's `/metrics` (Prometheus text) and its Serve view
//! (`/api/v0/serve`).
//!
//! The core is sans-IO: a [`Registry`] of per-route counters (requests by HTTP status code, a
//! latency histogram, requests under way), all atomics, found once per request by the route's
//! prefix under one short lock (no allocation but the first request of a route); gauges read
//! at scrape time from the balancer (requests waiting in the ingress's lines, ongoing per
//! replica); and the controller's document (key [`CONTROLLER_KEY`]: replicas by state, target
//! replicas, autoscaling decisions), parsed by [`ControllerDoc::parse`]. A scrape never calls
//! into Python.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::response::Response;
use volley_proto::ActorId;
use volley_store::sync::Mutex;

use super::table::{parse_actor_id, Route};
use super::{Ingress, Serving, KV_NAMESPACE};

/// The key (namespace "volley.serve") of the controller's figures (see
/// `python/volley/serve/_controller.py`, `_publish_metrics`).
pub const CONTROLLER_KEY: &[u8] = b"metrics";

/// Upper bounds of the latency buckets, in seconds: sub-millisecond to a minute.
pub const BOUNDS: [f64; 17] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0,
    30.0, 60.0,
];

/// The same bounds in nanoseconds (what a request's time is compared with).
const BOUNDS_NS: [u64; 17] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    20_000_000_000,
    30_000_000_000,
    60_000_000_000,
];

/// The status codes counted one by one (100-999, what `StatusCode` takes).
const FIRST_CODE: u16 = 100;
const CODES: usize = 900;

/// The code counted for a request whose client went away before its answer (nginx's).
pub const CLIENT_CLOSED: u16 = 499;

/// A latency histogram: counts per bucket (not cumulative) and the sum, in atomics.
pub struct Histogram {
    counts: [AtomicU64; BOUNDS.len() + 1],
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram { counts: std::array::from_fn(|_| AtomicU64::new(0)), sum_ns: AtomicU64::new(0) }
    }
}

/// What a histogram held when read: cumulative counts per bucket (the last is +Inf, the
/// count), and the sum in seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    pub cumulative: [u64; BOUNDS.len() + 1],
    pub sum_s: f64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BOUNDS_NS.partition_point(|&b| b < ns);
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = [0u64; BOUNDS.len() + 1];
        let mut cum = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cum += c.load(Relaxed);
            cumulative[i] = cum;
        }
        HistogramSnapshot { cumulative, sum_s: self.sum_ns.load(Relaxed) as f64 / 1e9 }
    }
}

impl HistogramSnapshot {
    pub fn count(&self) -> u64 {
        self.cumulative[BOUNDS.len()]
    }

    /// The `q`-quantile (0 < q < 1), interpolated linearly inside its bucket as Prometheus'
    /// `histogram_quantile` does; `None` with no observation. One in the +Inf bucket answers
    /// the last finite bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let i = self.cumulative.iter().position(|&c| c as f64 >= rank).unwrap_or(BOUNDS.len());
        if i == BOUNDS.len() {
            return Some(BOUNDS[BOUNDS.len() - 1]);
        }
        let (lo, below) = if i == 0 { (0.0, 0) } else { (BOUNDS[i - 1], self.cumulative[i - 1]) };
        let inside = self.cumulative[i] - below;
        if inside == 0 {
            return Some(BOUNDS[i]);
        }
        Some(lo + (BOUNDS[i] - lo) * (rank - below as f64) / inside as f64)
    }
}

/// The counters of one route (a route prefix of a deployment of an app; all three empty for
/// the requests no route took).
pub struct RouteStats {
    pub app: String,
    pub deployment: String,
    pub route: String,
    codes: Box<[AtomicU64]>,
    pub latency: Histogram,
    /// Requests the ingress is handling now (waiting for a replica or at one).
    ongoing: AtomicI64,
}

impl RouteStats {
    fn new(app: &str, deployment: &str, route: &str) -> RouteStats {
        RouteStats {
            app: app.to_string(),
            deployment: deployment.to_string(),
            route: route.to_string(),
            codes: (0..CODES).map(|_| AtomicU64::new(0)).collect(),
            latency: Histogram::default(),
            ongoing: AtomicI64::new(0),
        }
    }

    /// A request starts: it counts as ongoing until the returned timer ends or is dropped.
    pub fn begin(self: &Arc<Self>) -> Timer {
        self.ongoing.fetch_add(1, Relaxed);
        Timer { stats: self.clone(), start: Instant::now(), done: false }
    }

    fn count(&self, code: u16, took: Duration) {
        let i = usize::from(code.saturating_sub(FIRST_CODE)).min(CODES - 1);
        self.codes[i].fetch_add(1, Relaxed);
        self.latency.observe(took);
    }

    /// The requests answered so far by status code (those with one).
    pub fn codes(&self) -> BTreeMap<u16, u64> {
        self.codes
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let n = c.load(Relaxed);
                (n > 0).then_some((FIRST_CODE + i as u16, n))
            })
            .collect()
    }

    pub fn ongoing(&self) -> u64 {
        self.ongoing.load(Relaxed).max(0) as u64
    }

    fn labels(&self) -> String {
        format!(
            "app=\"{}\",deployment=\"{}\",route=\"{}\"",
            label(&self.app),
            label(&self.deployment),
            label(&self.route)
        )
    }
}

/// One request's measure: [`Timer::end`] counts its answer's code and time; dropped without
/// (its client went away, the handler's future was dropped) it counts as [`CLIENT_CLOSED`].
pub struct Timer {
    stats: Arc<RouteStats>,
    start: Instant,
    done: bool,
}

impl Timer {
    pub fn end(mut self, code: u16) {
        self.stats.count(code, self.start.elapsed());
        self.done = true;
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        if !self.done {
            self.stats.count(CLIENT_CLOSED, self.start.elapsed());
        }
        self.stats.ongoing.fetch_sub(1, Relaxed);
    }
}

/// Every route's counters. A route keeps its counters across table versions (a counter only
/// grows); a prefix that moves to another deployment starts new ones and the old stay shown.
pub struct Registry {
    no_route: Arc<RouteStats>,
    inner: Mutex<RegistryInner>,
}

#[derive(Default)]
struct RegistryInner {
    /// The counters each prefix used last.
    by_prefix: HashMap<String, Arc<RouteStats>>,
    /// Every route's counters, in order of first use.
    all: Vec<Arc<RouteStats>>,
}

impl Default for Registry {
    fn default() -> Registry {
        Registry { no_route: Arc::new(RouteStats::new("", "", "")), inner: Mutex::default() }
    }
}

impl Registry {
    /// The counters of `route` (`None`: the path matched no route).
    pub fn of(&self, route: Option<&Route>) -> Arc<RouteStats> {
        let Some(r) = route else { return self.no_route.clone() };
        let mut g = self.inner.lock();
        if let Some(s) = g.by_prefix.get(r.prefix.as_str()) {
            if s.app == r.app && s.deployment == r.deployment {
                return s.clone();
            }
        }
        let found = g
            .all
            .iter()
            .find(|s| s.route == r.prefix && s.app == r.app && s.deployment == r.deployment)
            .cloned();
        let s = found.unwrap_or_else(|| {
            let s = Arc::new(RouteStats::new(&r.app, &r.deployment, &r.prefix));
            g.all.push(s.clone());
            s
        });
        g.by_prefix.insert(r.prefix.clone(), s.clone());
        s
    }

    /// Every route's counters, the requests no route took last.
    pub fn all(&self) -> Vec<Arc<RouteStats>> {
        let mut v = self.inner.lock().all.clone();
        v.push(self.no_route.clone());
        v
    }
}

/// A replica as the ingress sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaGauge {
    pub actor: ActorId,
    pub node: Option<u32>,
    /// Requests this ingress has at it.
    pub ongoing: u32,
}

/// A deployment that serves a route, as the ingress sees it now.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentGauge {
    pub app: String,
    pub deployment: String,
    pub route: String,
    /// Requests waiting in the ingress's line for a replica.
    pub queued: usize,
    pub replicas: Vec<ReplicaGauge>,
}

/// A replica as serve's controller knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ControllerReplica {
    pub id: String,
    pub actor_id: String,
    pub node: i64,
    pub state: String,
}

/// A deployment as serve's controller knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ControllerDeployment {
    pub app: String,
    pub deployment: String,
    pub status: String,
    pub route_prefix: Option<String>,
    pub ingress: bool,
    pub target: u64,
    pub replicas: Vec<ControllerReplica>,
    pub scaled_up: u64,
    pub scaled_down: u64,
}

/// The controller's document: `{"deployments": [{"app", "deployment", "status",
/// "route_prefix", "ingress", "target", "replicas": [{"id", "actor_id", "node", "state"}],
/// "autoscaling": {"up", "down"}}]}`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ControllerDoc {
    pub deployments: Vec<ControllerDeployment>,
}

/// The replica states always shown (0 when none is in it), so that a gauge falls to 0.
pub const STATES: [&str; 3] = ["STARTING", "RUNNING", "STOPPING"];

impl ControllerDoc {
    /// Parses the controller's document; a clear message for anything it cannot use.
    pub fn parse(doc: &[u8]) -> Result<ControllerDoc, String> {
        let v: serde_json::Value = serde_json::from_slice(doc)
            .map_err(|e| format!("serve's metrics document is not JSON: {e}"))?;
        let list = v
            .get("deployments")
            .and_then(|d| d.as_array())
            .ok_or("serve's metrics document has no \"deployments\" list")?;
        let mut deployments = Vec::with_capacity(list.len());
        for (i, d) in list.iter().enumerate() {
            let text = |k: &str| -> Result<String, String> {
                d.get(k)
                    .and_then(|x| x.as_str())
                    .map(str::to_string)
                    .ok_or(format!("deployment {i}: no string {k:?}"))
            };
            let mut replicas = Vec::new();
            for r in d.get("replicas").and_then(|x| x.as_array()).into_iter().flatten() {
                let field = |k: &str| r.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
                replicas.push(ControllerReplica {
                    id: field("id"),
                    actor_id: field("actor_id"),
                    node: r.get("node").and_then(|x| x.as_i64()).unwrap_or(-1),
                    state: field("state"),
                });
            }
            let scaled = |k: &str| {
                d.get("autoscaling").and_then(|a| a.get(k)).and_then(|x| x.as_u64()).unwrap_or(0)
            };
            deployments.push(ControllerDeployment {
                app: text("app")?,
                deployment: text("deployment")?,
                status: d.get("status").and_then(|x| x.as_str()).unwrap_or("").to_string(),
                route_prefix: d.get("route_prefix").and_then(|x| x.as_str()).map(str::to_string),
                ingress: d.get("ingress").and_then(|x| x.as_bool()).unwrap_or(false),
                target: d.get("target").and_then(|x| x.as_u64()).unwrap_or(0),
                replicas,
                scaled_up: scaled("up"),
                scaled_down: scaled("down"),
            });
        }
        Ok(ControllerDoc { deployments })
    }
}

/// Escapes a label value (backslash, quote, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn actor_hex(a: ActorId) -> String {
    format!("{:032x}", { a.0 .0 })
}

fn dep_labels(app: &str, deployment: &str) -> String {
    format!("app=\"{}\",deployment=\"{}\"", label(app), label(deployment))
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The Prometheus text of serve: the ingress's counters (`routes`), its gauges now
/// (`deployments`) and the controller's figures (`controller`).
pub fn render(
    routes: &[Arc<RouteStats>],
    deployments: &[DeploymentGauge],
    controller: &ControllerDoc,
) -> String {
    let mut o = String::with_capacity(4096);
    family(
        &mut o,
        "volley_serve_http_requests_total",
        "counter",
        "HTTP requests serve's ingress answered, by app, deployment, route prefix and status \
         code (deployment \"\": no route matched, answered 404; code 499: the client left \
         before its answer).",
    );
    for s in routes {
        let l = s.labels();
        for (code, n) in s.codes() {
            let _ = writeln!(o, "volley_serve_http_requests_total{{{l},code=\"{code}\"}} {n}");
        }
    }
    let name = "volley_serve_http_request_duration_seconds";
    family(
        &mut o,
        name,
        "histogram",
        "Time from a request's arrival at serve's ingress to its response (headers), in \
         seconds.",
    );
    for s in routes {
        let l = s.labels();
        let h = s.latency.snapshot();
        for (i, b) in BOUNDS.iter().enumerate() {
            let _ = writeln!(o, "{name}_bucket{{{l},le=\"{b}\"}} {}", h.cumulative[i]);
        }
        let _ = writeln!(o, "{name}_bucket{{{l},le=\"+Inf\"}} {}", h.count());
        let _ = writeln!(o, "{name}_sum{{{l}}} {}", h.sum_s);
        let _ = writeln!(o, "{name}_count{{{l}}} {}", h.count());
    }
    family(
        &mut o,
        "volley_serve_http_ongoing_requests",
        "gauge",
        "HTTP requests serve's ingress is handling now (waiting for a replica or at one).",
    );
    for s in routes {
        let _ = writeln!(o, "volley_serve_http_ongoing_requests{{{}}} {}", s.labels(), s.ongoing());
    }
    family(
        &mut o,
        "volley_serve_queued_requests",
        "gauge",
        "Requests waiting in serve's ingress for a replica of the deployment (all its \
         replicas at max_ongoing_requests, or none yet).",
    );
    for d in deployments {
        let l = dep_labels(&d.app, &d.deployment);
        let _ = writeln!(o, "volley_serve_queued_requests{{{l}}} {}", d.queued);
    }
    family(
        &mut o,
        "volley_serve_ongoing_requests",
        "gauge",
        "Requests serve's ingress has at the deployment's replicas now.",
    );
    for d in deployments {
        let l = dep_labels(&d.app, &d.deployment);
        let n: u64 = d.replicas.iter().map(|r| u64::from(r.ongoing)).sum();
        let _ = writeln!(o, "volley_serve_ongoing_requests{{{l}}} {n}");
    }
    family(
        &mut o,
        "volley_serve_replica_ongoing_requests",
        "gauge",
        "Requests serve's ingress has at each replica now (replica: its actor id).",
    );
    for d in deployments {
        let l = dep_labels(&d.app, &d.deployment);
        for r in &d.replicas {
            let node = r.node.map(|n| n.to_string()).unwrap_or_default();
            let _ = writeln!(
                o,
                "volley_serve_replica_ongoing_requests{{{l},replica=\"{}\",node=\"{node}\"}} {}",
                actor_hex(r.actor),
                r.ongoing
            );
        }
    }
    family(
        &mut o,
        "volley_serve_replicas",
        "gauge",
        "Replicas of each deployment by state (STARTING, RUNNING, STOPPING), as serve's \
         controller knows them.",
    );
    for d in &controller.deployments {
        let l = dep_labels(&d.app, &d.deployment);
        let mut by: BTreeMap<&str, u64> = STATES.iter().map(|s| (*s, 0)).collect();
        for r in &d.replicas {
            *by.entry(r.state.as_str()).or_default() += 1;
        }
        for (state, n) in by {
            let _ = writeln!(o, "volley_serve_replicas{{{l},state=\"{}\"}} {n}", label(state));
        }
    }
    family(
        &mut o,
        "volley_serve_target_replicas",
        "gauge",
        "The replicas serve's controller aims at for each deployment (num_replicas, or the \
         autoscaler's decision).",
    );
    for d in &controller.deployments {
        let l = dep_labels(&d.app, &d.deployment);
        let _ = writeln!(o, "volley_serve_target_replicas{{{l}}} {}", d.target);
    }
    family(
        &mut o,
        "volley_serve_autoscaling_decisions_total",
        "counter",
        "Changes of a deployment's target replicas made by serve's autoscaler, by direction \
         (up, down), since its controller started.",
    );
    for d in &controller.deployments {
        let l = dep_labels(&d.app, &d.deployment);
        for (dir, n) in [("up", d.scaled_up), ("down", d.scaled_down)] {
            let _ = writeln!(
                o,
                "volley_serve_autoscaling_decisions_total{{{l},direction=\"{dir}\"}} {n}"
            );
        }
    }
    o
}

fn round(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// The dashboard's Serve view: `{"deployments": [...], "routes": [...], "no_route": {...}}`,
/// each deployment with its app, route prefix, status, target, replicas (id, actor id, node,
/// state, ongoing), requests by code, p50/p99 (seconds), queued and ongoing.
pub fn view(
    routes: &[Arc<RouteStats>],
    deployments: &[DeploymentGauge],
    controller: &ControllerDoc,
) -> serde_json::Value {
    let stats_of = |app: &str, dep: &str| -> Vec<&Arc<RouteStats>> {
        routes.iter().filter(|s| s.app == app && s.deployment == dep).collect()
    };
    let http = |list: &[&Arc<RouteStats>]| {
        let mut codes: BTreeMap<String, u64> = BTreeMap::new();
        let mut cumulative = [0u64; BOUNDS.len() + 1];
        let mut sum_s = 0.0;
        let mut ongoing = 0;
        for s in list {
            for (c, n) in s.codes() {
                *codes.entry(c.to_string()).or_default() += n;
            }
            let h = s.latency.snapshot();
            for (a, b) in cumulative.iter_mut().zip(h.cumulative) {
                *a += b;
            }
            sum_s += h.sum_s;
            ongoing += s.ongoing();
        }
        let h = HistogramSnapshot { cumulative, sum_s };
        serde_json::json!({
            "requests": h.count(),
            "codes": codes,
            "p50_s": h.quantile(0.5).map(round),
            "p99_s": h.quantile(0.99).map(round),
            "mean_s": (h.count() > 0).then(|| round(h.sum_s / h.count() as f64)),
            "ongoing": ongoing,
        })
    };
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for d in &controller.deployments {
        seen.insert((d.app.clone(), d.deployment.clone()));
        let gauge = deployments.iter().find(|g| g.app == d.app && g.deployment == d.deployment);
        let replicas: Vec<serde_json::Value> = d
            .replicas
            .iter()
            .map(|r| {
                let id = parse_actor_id(&r.actor_id).ok();
                let ongoing = gauge
                    .and_then(|g| g.replicas.iter().find(|x| Some(x.actor) == id))
                    .map(|x| x.ongoing);
                serde_json::json!({
                    "id": r.id, "actor_id": r.actor_id,
                    "node": (r.node >= 0).then_some(r.node),
                    "state": r.state, "ongoing": ongoing,
                })
            })
            .collect();
        out.push(serde_json::json!({
            "app": d.app,
            "deployment": d.deployment,
            "status": d.status,
            "ingress": d.ingress,
            "route_prefix": d.route_prefix,
            "target": d.target,
            "replicas": replicas,
            "autoscaling": {"up": d.scaled_up, "down": d.scaled_down},
            "queued": gauge.map_or(0, |g| g.queued),
            "http": http(&stats_of(&d.app, &d.deployment)),
        }));
    }
    // Deployments the ingress counted that the controller no longer lists (deleted apps).
    for s in routes.iter().filter(|s| !s.deployment.is_empty()) {
        if seen.insert((s.app.clone(), s.deployment.clone())) {
            out.push(serde_json::json!({
                "app": s.app,
                "deployment": s.deployment,
                "status": "DELETED",
                "ingress": true,
                "route_prefix": s.route,
                "target": 0,
                "replicas": [],
                "autoscaling": {"up": 0, "down": 0},
                "queued": 0,
                "http": http(&stats_of(&s.app, &s.deployment)),
            }));
        }
    }
    let table: Vec<serde_json::Value> = deployments
        .iter()
        .map(|g| serde_json::json!({"prefix": g.route, "app": g.app, "deployment": g.deployment}))
        .collect();
    serde_json::json!({
        "deployments": out,
        "routes": table,
        "no_route": http(&stats_of("", "")),
    })
}

impl Serving {
    /// The ingress's gauges now: each routed deployment's line and replicas.
    fn gauges(&self) -> Vec<DeploymentGauge> {
        let table = self.table.lock().clone();
        let lines = self.lines.lock();
        table
            .routes
            .iter()
            .map(|r| DeploymentGauge {
                app: r.app.clone(),
                deployment: r.deployment.clone(),
                route: r.prefix.clone(),
                queued: lines.bal.queued(r),
                replicas: r
                    .replicas
                    .iter()
                    .map(|&a| ReplicaGauge {
                        actor: a,
                        node: r.node_of(a),
                        ongoing: lines.bal.ongoing(a),
                    })
                    .collect(),
            })
            .collect()
    }
}

impl Ingress {
    /// The controller's figures, as last written (none before serve starts).
    fn controller_doc(&self) -> ControllerDoc {
        let raw = self.head.upgrade().and_then(|h| h.kv_get(KV_NAMESPACE, CONTROLLER_KEY));
        match raw.as_deref().map(ControllerDoc::parse) {
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                crate::diag::event!(Warn, "volley: serve's metrics: {e}");
                ControllerDoc::default()
            }
            None => ControllerDoc::default(),
        }
    }

    /// serve's families for `/metrics` (empty on a node that never served).
    pub fn metrics_text(&self) -> String {
        let doc = self.controller_doc();
        let routes = self.serving.metrics.all();
        let gauges = self.serving.gauges();
        if doc.deployments.is_empty() && gauges.is_empty() && routes.len() == 1 {
            let quiet = routes[0].codes().is_empty() && routes[0].ongoing() == 0;
            if quiet {
                return String::new();
            }
        }
        render(&routes, &gauges, &doc)
    }

    /// The dashboard's Serve view (see [`view`]).
    pub fn view(&self) -> serde_json::Value {
        view(&self.serving.metrics.all(), &self.serving.gauges(), &self.controller_doc())
    }
}

/// The ingress's handler, measured: counts the answer's code and time against the route the
/// path falls under.
pub(super) async fn measured(
    State(s): State<Arc<Serving>>,
    peer: ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let stats = {
        let table = s.table.lock();
        s.metrics.of(table.lookup(req.uri().path()))
    };
    let timer = stats.begin();
    let r = super::handle(State(s), peer, req).await;
    timer.end(r.status().as_u16());
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use volley_proto::TaskId;

    fn route(prefix: &str, app: &str, dep: &str) -> Route {
        Route {
            prefix: prefix.into(),
            app: app.into(),
            deployment: dep.into(),
            replicas: vec![ActorId(TaskId(7)), ActorId(TaskId(8))],
            nodes: vec![Some(1), None],
            max_ongoing: 2,
            max_queued: None,
            timeout: None,
        }
    }

    #[test]
    fn buckets_take_a_time_at_their_bound_and_render_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(100)); // <= 0.0005
        h.observe(Duration::from_micros(500)); // at the bound: still 0.0005
        h.observe(Duration::from_micros(501)); // 0.001
        h.observe(Duration::from_secs(2)); // 2.5
        h.observe(Duration::from_secs(100)); // +Inf
        let s = h.snapshot();
        assert_eq!(s.cumulative[0], 2);
        assert_eq!(s.cumulative[1], 3);
        assert_eq!(s.cumulative[BOUNDS.iter().position(|&b| b == 1.0).expect("a bound")], 3);
        assert_eq!(s.cumulative[BOUNDS.iter().position(|&b| b == 2.5).expect("a bound")], 4);
        assert_eq!(s.count(), 5);
        assert!(s.cumulative.windows(2).all(|w| w[0] <= w[1]));
        assert!((s.sum_s - 102.001101).abs() < 1e-9, "{}", s.sum_s);
    }

    #[test]
    fn quantiles_interpolate_inside_their_bucket() {
        let h = Histogram::default();
        assert_eq!(h.snapshot().quantile(0.5), None);
        for _ in 0..100 {
            h.observe(Duration::from_millis(3)); // (0.0025, 0.005]
        }
        let s = h.snapshot();
        let p50 = s.quantile(0.5).expect("observed");
        assert!(p50 > 0.0025 && p50 <= 0.005, "{p50}");
        assert!((p50 - 0.00375).abs() < 1e-12, "{p50}");
        h.observe(Duration::from_secs(1000));
        assert_eq!(h.snapshot().quantile(1.0), Some(60.0));
    }

    #[test]
    fn codes_counts_and_a_dropped_timer() {
        let reg = Registry::default();
        let r = route("/a", "app", "D");
        let s = reg.of(Some(&r));
        let t = s.begin();
        assert_eq!(s.ongoing(), 1);
        t.end(200);
        s.begin().end(200);
        s.begin().end(503);
        drop(s.begin()); // the client left
        assert_eq!(s.ongoing(), 0);
        let codes = s.codes();
        assert_eq!(codes, BTreeMap::from([(200, 2), (503, 1), (CLIENT_CLOSED, 1)]));
        assert_eq!(s.latency.snapshot().count(), 4);
        // The same route again: the same counters, without a new entry.
        assert!(Arc::ptr_eq(&s, &reg.of(Some(&r))));
        // The prefix moves to another deployment: new counters; the old are still listed.
        let moved = reg.of(Some(&route("/a", "app", "E")));
        assert!(!Arc::ptr_eq(&s, &moved));
        assert!(Arc::ptr_eq(&s, &reg.of(Some(&r))));
        let no = reg.of(None);
        no.begin().end(404);
        let all = reg.all();
        assert_eq!(all.len(), 3);
        assert_eq!(all[2].deployment, "");
    }

    #[test]
    fn render_has_each_family_once_with_help_and_type() {
        let reg = Registry::default();
        let r = route("/a", "app", "D\"x");
        reg.of(Some(&r)).begin().end(200);
        reg.of(None).begin().end(404);
        let gauges = vec![DeploymentGauge {
            app: "app".into(),
            deployment: "D\"x".into(),
            route: "/a".into(),
            queued: 3,
            replicas: vec![
                ReplicaGauge { actor: ActorId(TaskId(7)), node: Some(1), ongoing: 2 },
                ReplicaGauge { actor: ActorId(TaskId(8)), node: None, ongoing: 1 },
            ],
        }];
        let doc = ControllerDoc::parse(
            br#"{"deployments": [{"app": "app", "deployment": "D\"x", "target": 3,
                "status": "HEALTHY", "ingress": true, "route_prefix": "/a",
                "replicas": [{"id": "r1", "actor_id": "7", "node": 1, "state": "RUNNING"},
                             {"id": "r2", "actor_id": "8", "node": -1, "state": "STARTING"}],
                "autoscaling": {"up": 2, "down": 1}}]}"#,
        )
        .expect("parses");
        let t = render(&reg.all(), &gauges, &doc);
        for name in [
            "volley_serve_http_requests_total",
            "volley_serve_http_request_duration_seconds",
            "volley_serve_http_ongoing_requests",
            "volley_serve_queued_requests",
            "volley_serve_ongoing_requests",
            "volley_serve_replica_ongoing_requests",
            "volley_serve_replicas",
            "volley_serve_target_replicas",
            "volley_serve_autoscaling_decisions_total",
        ] {
            assert_eq!(t.matches(&format!("# HELP {name} ")).count(), 1, "{name}");
            assert_eq!(t.matches(&format!("# TYPE {name} ")).count(), 1, "{name}");
        }
        let l = "app=\"app\",deployment=\"D\\\"x\"";
        for line in [
            format!("volley_serve_http_requests_total{{{l},route=\"/a\",code=\"200\"}} 1"),
            "volley_serve_http_requests_total{app=\"\",deployment=\"\",route=\"\",code=\"404\"} 1"
                .to_string(),
            format!("volley_serve_http_request_duration_seconds_count{{{l},route=\"/a\"}} 1"),
            format!("volley_serve_http_request_duration_seconds_bucket{{{l},route=\"/a\",le=\"+Inf\"}} 1"),
            format!("volley_serve_queued_requests{{{l}}} 3"),
            format!("volley_serve_ongoing_requests{{{l}}} 3"),
            format!(
                "volley_serve_replica_ongoing_requests{{{l},replica=\"{:032x}\",node=\"1\"}} 2",
                7
            ),
            format!("volley_serve_replicas{{{l},state=\"RUNNING\"}} 1"),
            format!("volley_serve_replicas{{{l},state=\"STARTING\"}} 1"),
            format!("volley_serve_replicas{{{l},state=\"STOPPING\"}} 0"),
            format!("volley_serve_target_replicas{{{l}}} 3"),
            format!("volley_serve_autoscaling_decisions_total{{{l},direction=\"up\"}} 2"),
        ] {
            assert!(t.lines().any(|x| x == line), "missing {line:?} in\n{t}");
        }
        let v = view(&reg.all(), &gauges, &doc);
        let d = &v["deployments"][0];
        assert_eq!(d["queued"], 3);
        assert_eq!(d["http"]["requests"], 1);
        assert_eq!(d["http"]["codes"]["200"], 1);
        assert_eq!(d["replicas"][0]["ongoing"], 2);
        assert_eq!(d["replicas"][1]["node"], serde_json::Value::Null);
        assert_eq!(v["no_route"]["codes"]["404"], 1);
        assert_eq!(v["routes"][0]["prefix"], "/a");
    }

    #[test]
    fn a_bad_controller_document_is_refused_with_its_reason() {
        let e = ControllerDoc::parse(b"{").expect_err("not JSON");
        assert!(e.contains("not JSON"), "{e}");
        let e = ControllerDoc::parse(b"{}").expect_err("no list");
        assert!(e.contains("\"deployments\""), "{e}");
        let e =
            ControllerDoc::parse(br#"{"deployments": [{"app": "a"}]}"#).expect_err("no deployment");
        assert!(e.contains("deployment 0") && e.contains("\"deployment\""), "{e}");
    }
}
