//! `volley.serve`'s HTTP ingress: an HTTP/1.1 and HTTP/2 (h2c) server in the head's process
//! that hands each request to a replica actor through the engine, with no Python process on
//! the way (issue 23; the frames are `python/volley/serve/_wire.py`'s).
//!
//! Every node installs one (`Ingress::install`), idle: it follows the head's key-value table
//! through a hook in the head's change path, so only the node that is the head (a lone driver,
//! or `volley start --head`) ever sees the documents of namespace "volley.serve" and starts
//! serving. A change of "http" (re)binds the listener and answers under "http_status"; a
//! change of "routes" swaps the routing table before the write returns (requests under way
//! keep the route they had), so a request sent after `kv_put` finds the new table. Nothing
//! polls.
//!
//! A request is matched to a route (longest prefix, on segment boundaries), given a replica by
//! the balancer (`table.rs`: power of two choices on the ingress's own count of ongoing
//! requests per replica, never more than the route's `max_ongoing_requests` at one), and
//! submitted by this node's scheduler as a call of `__volley_serve_http__(frame)` held by the
//! node itself; its result wakes the request's task through the waiter's slot, so no tokio
//! thread ever blocks on the engine.

pub mod metrics;
mod stream;
pub mod table;
pub mod wire;
mod ws;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::Router;
use tokio::sync::{mpsc, oneshot, Notify};
use volley_proto::{
    ActorCall, ActorId, ActorPart, ErrorKind, FunctionId, IdGenerator, NodeId, ObjectData,
    ObjectId, TaskOptions, TaskSpec,
};
use volley_sched::{Action, Holder, WaitOwner};
use volley_store::sync::Mutex;

use crate::head::Head;
use crate::shared::{Shared, Slot};
use table::{Acquire, Balancer, Route, Table, WaiterId};

/// The head's key-value namespace and keys the ingress follows and writes.
pub const KV_NAMESPACE: &str = "volley.serve";
pub const HTTP_KEY: &[u8] = b"http";
pub const ROUTES_KEY: &[u8] = b"routes";
/// The prefix of the documents where replicas list the models they hold
/// (`models/APP/DEPLOYMENT/ACTOR_ID`: `{"actor_id": ..., "models": [...]}`).
pub const MODELS_PREFIX: &[u8] = b"models/";
/// The request header that names a request's model (Ray Serve's name).
pub const MODEL_HEADER: &str = "serve_multiplexed_model_id";
pub const HTTP_STATUS_KEY: &[u8] = b"http_status";
/// The replica's method the ingress calls.
pub const METHOD: &str = "__volley_serve_http__";
/// The largest request body taken (a larger one is answered 413).
const MAX_BODY: usize = 512 << 20;
/// What an overloaded deployment's 503 asks a client to wait, in seconds.
const RETRY_AFTER: &str = "1";

/// One node's ingress; idle until its head holds an "http" document.
pub struct Ingress {
    serving: Arc<Serving>,
    head: Weak<Head>,
    /// Each change of "http".
    wake: mpsc::UnboundedSender<()>,
    follow: Mutex<Option<mpsc::UnboundedReceiver<()>>>,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
}

/// What the request handlers share.
struct Serving {
    shared: Weak<Shared>,
    table: Mutex<Arc<Table>>,
    lines: Mutex<Lines>,
    ids: IdGenerator,
    name: Arc<str>,
    options: Arc<TaskOptions>,
    request_prefix: u64,
    requests: AtomicU64,
    /// Lines of deployments scaled to zero that have had requests waiting (their key, app and
    /// deployment): [`report_waiting`] writes how many wait under "waiting/APP/DEPLOYMENT",
    /// which serve's autoscaler reads, then 0 once none do.
    zero_lines: Mutex<HashMap<String, (String, String)>>,
    report: Notify,
    /// Requests by route and status code, latency (`metrics.rs`).
    metrics: metrics::Registry,
}

/// The balancer and the senders that hand a waiting request its replica (or `None`: no
/// replica is alive any more).
struct Lines {
    bal: Balancer,
    waiters: HashMap<WaiterId, oneshot::Sender<Option<ActorId>>>,
}

impl Lines {
    /// Hands replicas to the waiters `handed` names; one whose request is gone gives its
    /// replica back at once (which may serve the next).
    fn deliver(&mut self, mut handed: Vec<(WaiterId, Option<ActorId>)>) {
        while !handed.is_empty() {
            let mut again = Vec::new();
            for (w, a) in handed {
                let sent = self.waiters.remove(&w).is_some_and(|tx| tx.send(a).is_ok());
                if let (false, Some(a)) = (sent, a) {
                    again.extend(self.bal.release(a));
                }
            }
            handed = again;
        }
    }
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        return std::process::id() as u64 ^ Instant::now().elapsed().as_nanos() as u64;
    }
    u64::from_le_bytes(b)
}

impl Ingress {
    /// Installs the ingress of the node whose state is `shared`, idle, following its head.
    pub(crate) fn install(shared: &Arc<Shared>) -> Arc<Ingress> {
        let (wake, follow) = mpsc::unbounded_channel();
        let serving = Arc::new(Serving {
            shared: Arc::downgrade(shared),
            table: Mutex::new(Arc::new(Table::default())),
            lines: Mutex::new(Lines { bal: Balancer::new(random_u64()), waiters: HashMap::new() }),
            ids: IdGenerator::new(),
            name: Arc::from(METHOD),
            options: Arc::new(TaskOptions {
                cpu_milli: 0,
                max_retries: 0,
                ..TaskOptions::default()
            }),
            request_prefix: random_u64(),
            requests: AtomicU64::new(0),
            zero_lines: Mutex::new(HashMap::new()),
            report: Notify::new(),
            metrics: metrics::Registry::default(),
        });
        let ingress = Arc::new(Ingress {
            serving,
            head: Arc::downgrade(&shared.head),
            wake,
            follow: Mutex::new(Some(follow)),
            runtime: Mutex::new(None),
        });
        shared.head.set_kv_hook(Box::new(Hook(Arc::downgrade(&ingress))));
        // Documents already there (a head that kept its table): read once, then followed.
        for (key, doc) in shared.head.kv_items(KV_NAMESPACE, MODELS_PREFIX) {
            ingress.serving.models_changed(&key, Some(&doc));
        }
        ingress
    }

    /// "http" changed (called under the head's lock: only a send, and the runtime's start the
    /// first time).
    fn http_changed(&self) {
        if let Some(rx) = self.follow.lock().take() {
            let built = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("volley-serve")
                .enable_io()
                .enable_time()
                .build();
            match built {
                Ok(rt) => {
                    rt.spawn(follow(self.serving.clone(), self.head.clone(), rx));
                    rt.spawn(report_waiting(self.serving.clone(), self.head.clone()));
                    *self.runtime.lock() = Some(rt);
                }
                Err(e) => crate::diag::event!(Error, "volley: serve's ingress cannot start: {e}"),
            }
        }
        let _ = self.wake.send(());
    }

    /// Stops serving (the node shuts down).
    pub(crate) fn stop(&self) {
        if let Some(rt) = self.runtime.lock().take() {
            rt.shutdown_background();
        }
    }
}

/// The head's hook: a new routing table takes effect as its document is written (before the
/// write returns); a change of "http" wakes [`follow`].
struct Hook(Weak<Ingress>);

impl crate::head::KvHook for Hook {
    fn wants(&self, namespace: &str, key: &[u8]) -> bool {
        namespace == KV_NAMESPACE
            && (key == HTTP_KEY || key == ROUTES_KEY || key.starts_with(MODELS_PREFIX))
    }

    fn changed(&self, _namespace: &str, key: &[u8], value: Option<Vec<u8>>) {
        let Some(ingress) = self.0.upgrade() else { return };
        if key == HTTP_KEY {
            ingress.http_changed();
            return;
        }
        if key.starts_with(MODELS_PREFIX) {
            ingress.serving.models_changed(key, value.as_deref());
            return;
        }
        match value.as_deref().map(Table::parse) {
            None => ingress.serving.set_table(Table::default()),
            Some(Ok(t)) => ingress.serving.set_table(t),
            Some(Err(e)) => {
                crate::diag::event!(Warn, "volley: serve's ingress keeps its routes: {e}")
            }
        }
    }
}

/// Follows the "http" document. Every write of it is answered under "http_status": one that
/// changes nothing (the same document again) keeps the listener and writes its status again;
/// one after a failed bind tries again.
async fn follow(serving: Arc<Serving>, head: Weak<Head>, mut wake: mpsc::UnboundedReceiver<()>) {
    let mut bound: Option<(Vec<u8>, oneshot::Sender<()>)> = None;
    let mut last_status: Option<Vec<u8>> = None;
    loop {
        let Some(h) = head.upgrade() else { return };
        let http = h.kv_get(KV_NAMESPACE, HTTP_KEY);
        let same = match (&http, &bound) {
            (Some(doc), Some((now, _))) => doc == now,
            (None, None) => true,
            _ => false,
        };
        if !same {
            // The old listener closes; its open connections end as their clients leave.
            if let Some((_, stop)) = bound.take() {
                let _ = stop.send(());
            }
            last_status = None;
            if let Some(doc) = http {
                let (status, server) = listen(&serving, &doc);
                last_status = Some(status.to_string().into_bytes());
                bound = server.map(|stop| (doc, stop));
            }
        }
        if let Some(status) = &last_status {
            h.kv_put(KV_NAMESPACE, HTTP_STATUS_KEY, status.clone(), true);
        }
        drop(h);
        if wake.recv().await.is_none() {
            return;
        }
        while wake.try_recv().is_ok() {}
    }
}

/// Writes, for each deployment at zero replicas that had requests waiting, how many wait now
/// (`{"waiting": n}` under "waiting/APP/DEPLOYMENT"; serve's autoscaler starts replicas for
/// them), and 0 once none do. Outside the head's lock: a table change only wakes it.
async fn report_waiting(serving: Arc<Serving>, head: Weak<Head>) {
    loop {
        serving.report.notified().await;
        let Some(h) = head.upgrade() else { return };
        let lines: Vec<(String, (String, String))> =
            serving.zero_lines.lock().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (key, (app, deployment)) in lines {
            let n = serving.lines.lock().bal.queued_for(&key);
            let doc = serde_json::json!({ "waiting": n }).to_string().into_bytes();
            let kv_key = format!("waiting/{app}/{deployment}");
            h.kv_put(KV_NAMESPACE, kv_key.as_bytes(), doc, true);
            if n == 0 {
                serving.zero_lines.lock().remove(&key);
            }
        }
    }
}

/// Binds and starts serving as the "http" document `doc` says; the "http_status" document,
/// and the sender that stops the server when it started.
fn listen(serving: &Arc<Serving>, doc: &[u8]) -> (serde_json::Value, Option<oneshot::Sender<()>>) {
    let parsed: Result<(String, u16), String> = serde_json::from_slice::<serde_json::Value>(doc)
        .map_err(|e| format!("the http document is not JSON: {e}"))
        .and_then(|v| {
            let host = v.get("host").and_then(|h| h.as_str()).unwrap_or("127.0.0.1").to_string();
            match v.get("port").map(|p| p.as_u64()) {
                None => Ok((host, 8000)),
                Some(Some(p)) if p <= u16::MAX as u64 => Ok((host, p as u16)),
                Some(_) => Err("the http document's port must be an integer 0-65535".into()),
            }
        });
    let (host, port) = match parsed {
        Ok(x) => x,
        Err(e) => {
            return (serde_json::json!({"host": null, "port": null, "error": e}), None);
        }
    };
    let status = |port: u16, error: Option<String>| serde_json::json!({"host": host, "port": port, "error": error});
    let listener = match std::net::TcpListener::bind((host.as_str(), port))
        .and_then(|l| l.set_nonblocking(true).map(|_| l))
        .and_then(tokio::net::TcpListener::from_std)
    {
        Ok(l) => l,
        Err(e) => {
            let why = format!("cannot listen on {host}:{port}: {e}");
            crate::diag::event!(Warn, "volley: serve's ingress {why}");
            return (status(port, Some(why)), None);
        }
    };
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(port);
    let (stop, stopped) = oneshot::channel::<()>();
    let app = Router::new().fallback(metrics::measured).with_state(serving.clone());
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        let served = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await;
        if let Err(e) = served {
            crate::diag::event!(Warn, "volley: serve's ingress stopped: {e}");
        }
    });
    (status(port, None), Some(stop))
}

/// The (replica, models) of a replica's models document at `key`; `None` if it is not one.
/// A document deleted (`doc` None) means the replica holds none.
fn parse_models(key: &[u8], doc: Option<&[u8]>) -> Option<(ActorId, Vec<String>)> {
    let id = std::str::from_utf8(key).ok()?.rsplit('/').next()?;
    let actor = table::parse_actor_id(id).ok()?;
    let Some(doc) = doc else { return Some((actor, Vec::new())) };
    let v: serde_json::Value = serde_json::from_slice(doc).ok()?;
    let models = v.get("models")?.as_array()?;
    Some((actor, models.iter().filter_map(|m| m.as_str().map(str::to_string)).collect()))
}

impl Serving {
    /// A replica's models document changed (under the head's lock: a parse and a map write).
    fn models_changed(&self, key: &[u8], doc: Option<&[u8]>) {
        match parse_models(key, doc) {
            Some((actor, models)) => self.lines.lock().bal.set_models(actor, models),
            None => crate::diag::event!(
                Warn,
                "volley: serve's ingress cannot read the models document {}",
                String::from_utf8_lossy(key)
            ),
        }
    }

    fn set_table(&self, t: Table) {
        let mut lines = self.lines.lock();
        let handed = lines.bal.set_table(&t);
        *self.table.lock() = Arc::new(t);
        lines.deliver(handed);
        drop(lines);
        if !self.zero_lines.lock().is_empty() {
            self.report.notify_one(); // Waiters may have been handed the new replicas.
        }
    }

    /// A request of `route` waits or stopped waiting: if the deployment is at zero replicas,
    /// the count goes to serve's autoscaler.
    fn waiting_changed(&self, route: &Route) {
        if route.replicas.is_empty() {
            let who = (route.app.clone(), route.deployment.clone());
            self.zero_lines.lock().insert(route.key(), who);
            self.report.notify_one();
        }
    }

    fn new_request_id(&self) -> String {
        let n = self.requests.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}{:016x}", self.request_prefix, n)
    }

    /// A replica for a request of `route`: at once, or once one is free (until `deadline`).
    async fn acquire(
        &self,
        route: &Route,
        model: &str,
        deadline: Option<Instant>,
    ) -> Result<ActorId, Fail> {
        let (w, rx) = {
            let mut lines = self.lines.lock();
            match lines.bal.acquire_for(route, model, Instant::now()) {
                Acquire::Got(a) => return Ok(a),
                Acquire::Overloaded => return Err(Fail::Overloaded),
                Acquire::NoReplica => return Err(Fail::NoReplica),
                Acquire::Wait(w) => {
                    let (tx, rx) = oneshot::channel();
                    lines.waiters.insert(w, tx);
                    (w, rx)
                }
            }
        };
        self.waiting_changed(route);
        let mut rx = rx;
        let got = match deadline {
            Some(d) => tokio::time::timeout_at(d.into(), &mut rx).await.ok(),
            None => Some((&mut rx).await),
        };
        match got {
            Some(Ok(Some(a))) => Ok(a),
            Some(Ok(None)) => Err(Fail::NoReplica),
            Some(Err(_)) => Err(Fail::Internal("the ingress stopped".into())),
            None => {
                let mut lines = self.lines.lock();
                lines.bal.forget(w);
                lines.waiters.remove(&w);
                // Handed a replica just as the time ran out: it goes back.
                if let Ok(Some(a)) = rx.try_recv() {
                    let handed = lines.bal.release(a);
                    lines.deliver(handed);
                }
                drop(lines);
                self.waiting_changed(route);
                Err(Fail::Timeout)
            }
        }
    }

    /// The node of `actor`, handed for a request of `route`: read in `route`, or (a replica of
    /// a newer table than the request's) in the latest table.
    fn node_of(&self, route: &Route, actor: ActorId) -> Option<u32> {
        match route.replicas.contains(&actor) {
            true => route.node_of(actor),
            false => self.table.lock().lookup(&route.prefix).and_then(|r| r.node_of(actor)),
        }
    }

    fn release(&self, a: ActorId) {
        let mut lines = self.lines.lock();
        let handed = lines.bal.release(a);
        lines.deliver(handed);
    }

    fn mark_dead(&self, a: ActorId) {
        let mut lines = self.lines.lock();
        let handed = lines.bal.release(a);
        lines.deliver(handed);
        let handed = lines.bal.mark_dead(a);
        lines.deliver(handed);
    }
}

/// Why a request was not answered by its replica.
enum Fail {
    Overloaded,
    NoReplica,
    Timeout,
    /// The replica died with the request under way.
    Died(String),
    /// The call failed otherwise, or its answer could not be read.
    Internal(String),
}

/// A submitted call: its return's id, and what fires when it is ready.
struct Pending {
    ret: ObjectId,
    ready: Option<oneshot::Receiver<()>>,
}

/// Submits the call of `actor`'s method with `args`, unless the engine knows the actor is dead
/// (then the call has not started and `args` come back).
fn submit(
    s: &Serving,
    shared: &Shared,
    actor: ActorId,
    node: Option<u32>,
    args: Vec<u8>,
) -> Result<Pending, Vec<u8>> {
    let call = CallOf { name: s.name.clone(), method: METHOD, options: s.options.clone() };
    submit_call(s, shared, actor, node, call, args)
}

/// What a submitted call runs: the task's name, the replica's method, its options (whether it
/// streams among them).
struct CallOf<'a> {
    name: Arc<str>,
    method: &'a str,
    options: Arc<TaskOptions>,
}

/// Submits `call` on `actor` with `args`, as [`submit`] does; a streaming call's return is not
/// awaited (its items are followed).
fn submit_call(
    s: &Serving,
    shared: &Shared,
    actor: ActorId,
    node: Option<u32>,
    call: CallOf<'_>,
    args: Vec<u8>,
) -> Result<Pending, Vec<u8>> {
    let task_id = s.ids.next_task();
    let ret = ObjectId::for_return(task_id, 1);
    let slot = Arc::new(Slot::default());
    let (tx, rx) = oneshot::channel();
    *slot.waker.lock() = Some(tx);
    let streaming = call.options.streaming;
    let now = shared.with(|st, out| {
        if let Some(n) = node {
            // A replica on another node: calls go there (a route, as a handle would bring).
            st.sched.route_to_actor(actor, NodeId(n), "serve replica");
        }
        let alive = st.sched.actor_info(actor).is_some_and(|i| i.state != "DEAD");
        if !alive {
            return Err(args);
        }
        let spec = TaskSpec {
            task_id,
            function: FunctionId([0; 16]),
            name: call.name,
            args: ObjectData::inline(args, Vec::new(), Vec::new()),
            deps: Box::default(),
            num_returns: 1,
            options: call.options,
            actor: ActorPart::Call(Box::new(ActorCall { actor, method: call.method.into() })),
        };
        st.sched.submit(Holder::Local, spec, out);
        if streaming {
            return Ok(true); // followed item by item; its return is not awaited
        }
        let wid = st.sched.add_waiter(WaitOwner::Local, &[ret], 1, true, out);
        let before = out.len();
        out.retain(|a| !matches!(a, Action::WakeLocal { waiter } if *waiter == wid));
        let now = out.len() < before;
        if !now {
            st.local.insert(wid, slot.clone());
        }
        Ok(now)
    })?;
    crate::outbox::flush_queued();
    Ok(Pending { ret, ready: if now { None } else { Some(rx) } })
}

/// Waits for a submitted call's answer and lets go of it: the response frame's bytes.
async fn finish(shared: Weak<Shared>, p: Pending) -> Result<Vec<u8>, Fail> {
    if let Some(rx) = p.ready {
        if rx.await.is_err() {
            return Err(Fail::Internal("the node shut down".into()));
        }
    }
    let Some(shared) = shared.upgrade() else {
        return Err(Fail::Internal("the node shut down".into()));
    };
    let result = shared.state.lock().sched.result_of(&p.ret);
    let answer = match result {
        Ok(v) => read_value(&shared, &v),
        Err(e) => Err(match e.kind {
            ErrorKind::ActorDied | ErrorKind::WorkerCrashed => Fail::Died(e.message.clone()),
            _ => Fail::Internal(format!("{}: {}", e.task_name, e.message)),
        }),
    };
    shared.with(|st, out| st.sched.decref(Holder::Local, &[p.ret], out));
    answer
}

/// The bytes of a result value (inline, or copied out of the store).
fn read_value(shared: &Shared, v: &ObjectData) -> Result<Vec<u8>, Fail> {
    let bad = |e: String| Fail::Internal(format!("the replica's answer: {e}"));
    match &v.shm {
        None => {
            let bufs: Vec<&[u8]> = v.buffers.iter().map(|b| b.as_slice()).collect();
            wire::result_bytes(&v.data, &bufs).map(<[u8]>::to_vec).map_err(bad)
        }
        Some(loc) => {
            let bytes = shared.store.read_copy(loc.seg).map_err(|e| bad(e.to_string()))?;
            let copy = ObjectData::from_segment(loc, &bytes, Vec::new())
                .ok_or_else(|| bad("its stored copy is cut short".into()))?;
            let bufs: Vec<&[u8]> = copy.buffers.iter().map(|b| b.as_slice()).collect();
            wire::result_bytes(&copy.data, &bufs).map(<[u8]>::to_vec).map_err(bad)
        }
    }
}

fn json_response(status: StatusCode, rid: &str, body: serde_json::Value) -> Response {
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(rid) {
        h.insert("x-request-id", v);
    }
    r
}

fn fail_response(f: Fail, rid: &str, route: &Route) -> Response {
    let dep = format!("deployment '{}' of app '{}'", route.deployment, route.app);
    let (status, error) = match f {
        Fail::Overloaded => {
            let msg = format!("{dep} is overloaded: too many requests wait; retry later");
            let mut r = json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                rid,
                serde_json::json!({"error": msg, "request_id": rid}),
            );
            r.headers_mut().insert("retry-after", HeaderValue::from_static(RETRY_AFTER));
            return r;
        }
        Fail::NoReplica => (StatusCode::SERVICE_UNAVAILABLE, format!("{dep} has no replica alive")),
        Fail::Timeout => (
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "request {rid} to {dep} took longer than its timeout of {:.3} s",
                route.timeout.unwrap_or_default().as_secs_f64()
            ),
        ),
        Fail::Died(why) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the replica of {dep} handling request {rid} died: {why}"),
        ),
        Fail::Internal(why) => {
            (StatusCode::INTERNAL_SERVER_ERROR, format!("request {rid} to {dep} failed: {why}"))
        }
    };
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        crate::diag::event!(Warn, "volley: serve: {error}");
    }
    json_response(status, rid, serde_json::json!({"error": error, "request_id": rid}))
}

/// Headers a replica's answer may not set: the server frames the body itself.
fn framing(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"content-length")
        || name.eq_ignore_ascii_case(b"transfer-encoding")
        || name.eq_ignore_ascii_case(b"connection")
}

fn request_id(s: &Serving, headers: &HeaderMap) -> String {
    match headers.get("x-request-id").and_then(|v| v.to_str().ok()) {
        Some(v) if !v.is_empty() && v.len() <= 256 => v.to_string(),
        _ => s.new_request_id(),
    }
}

async fn handle(
    State(s): State<Arc<Serving>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let arrived = Instant::now();
    let rid = request_id(&s, req.headers());
    let path = req.uri().path().to_string();
    let table = s.table.lock().clone();
    let Some(route) = table.lookup(&path) else {
        let error = format!("no route for path {path}");
        return json_response(
            StatusCode::NOT_FOUND,
            &rid,
            serde_json::json!({"error": error, "path": path, "request_id": rid}),
        );
    };
    let deadline = route.timeout.map(|t| arrived + t);
    let client = peer.to_string();
    if ws::wants_websocket(req.headers()) {
        let (parts, _) = req.into_parts();
        let frame = request_frame(&rid, &parts, &path, route, &client, b"");
        return ws::serve(s.clone(), route, parts, frame, rid, deadline).await;
    }
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(e) => {
            let error =
                format!("the request body could not be read (at most {MAX_BODY} bytes): {e}");
            return json_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                &rid,
                serde_json::json!({"error": error, "request_id": rid}),
            );
        }
    };
    let frame = request_frame(&rid, &parts, &path, route, &client, &body);
    let model = model_of(&parts.headers);
    let mut args = wire::call_args(&frame);
    drop(frame);
    // A GET, HEAD or OPTIONS whose replica died under it goes to another replica once: the
    // ingress cannot tell whether a replica on another node died before the call reached it,
    // and these are safe to run again.
    let idempotent = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
    let mut retried = false;
    // The table a try goes by: the one the request came in under, then (after a replica it
    // was handed turned out dead) the latest. A request that waited in a line may be handed a
    // replica of a newer table than its own: its node is read there.
    let mut current = table.clone();
    let answer = loop {
        let Some(now) = current.lookup(&path) else {
            let why = format!("the route for {path} was removed while the request waited");
            break Err(Fail::Internal(why));
        };
        let actor = match s.acquire(now, model, deadline).await {
            Ok(a) => a,
            Err(f) => return fail_response(f, &rid, now),
        };
        let node = s.node_of(now, actor);
        let Some(shared) = s.shared.upgrade() else {
            s.release(actor);
            return fail_response(Fail::Internal("the node shut down".into()), &rid, route);
        };
        let spare = (idempotent && !retried).then(|| args.clone());
        match submit(&s, &shared, actor, node, args) {
            Ok(p) => {
                // The call runs to its end in a task of its own, which gives its replica back
                // then: a request that times out (or whose client leaves) still counts until
                // its replica is done with it.
                let (weak, s2) = (s.shared.clone(), s.clone());
                let call = tokio::spawn(async move {
                    match finish(weak, p).await {
                        // A stream follows: its follower gives the replica back at its end.
                        Ok(f) if stream::is_head(&f) => stream::start(s2, actor, node, f),
                        r => {
                            s2.release(actor);
                            r.map(stream::Answer::Frame)
                        }
                    }
                });
                let joined = match deadline {
                    Some(d) => match tokio::time::timeout_at(d.into(), call).await {
                        Ok(j) => j,
                        Err(_) => break Err(Fail::Timeout),
                    },
                    None => call.await,
                };
                let result = joined.unwrap_or_else(|e| Err(Fail::Internal(e.to_string())));
                if matches!(result, Err(Fail::Died(_))) {
                    // No later request goes there (a POST's too: it is not run again, but the
                    // next ones must not meet the same dead replica until the table changes).
                    s.mark_dead(actor);
                }
                match (result, spare) {
                    (Err(Fail::Died(_)), Some(again)) => {
                        args = again;
                        retried = true;
                    }
                    (result, _) => break result,
                }
            }
            Err(back) => {
                // The actor is dead and the call never started: another replica takes it.
                args = back;
                s.mark_dead(actor);
            }
        }
        current = s.table.lock().clone();
    };
    match answer {
        Ok(stream::Answer::Frame(f)) => frame_response(&f, &rid, route),
        Ok(stream::Answer::Stream(st)) => stream::response(st, &rid),
        Err(f) => fail_response(f, &rid, route),
    }
}

/// The model a request names (its `serve_multiplexed_model_id` header), `""` for none.
fn model_of(headers: &HeaderMap) -> &str {
    headers.get(MODEL_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// The request frame of a request (its body read whole).
fn request_frame(
    rid: &str,
    parts: &axum::http::request::Parts,
    path: &str,
    route: &Route,
    client: &str,
    body: &[u8],
) -> Vec<u8> {
    wire::RequestFrame {
        request_id: rid,
        method: parts.method.as_str(),
        path,
        route_prefix: &route.prefix,
        query: parts.uri.query().unwrap_or(""),
        client,
        headers: parts.headers.iter().map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())).collect(),
        body,
    }
    .encode()
}

/// The client's response for a replica's response frame (an undecodable one is a 500).
fn frame_response(frame: &[u8], rid: &str, route: &Route) -> Response {
    let resp = match wire::decode_response(frame) {
        Ok(r) => r,
        Err(e) => {
            let why = format!("the replica's answer is not a response frame: {e}");
            return fail_response(Fail::Internal(why), rid, route);
        }
    };
    let mut r = Response::new(Body::from(resp.body));
    *r.status_mut() =
        StatusCode::from_u16(resp.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    answer_headers(r.headers_mut(), &resp.headers, rid);
    r
}

/// Puts a replica's answer headers into `h` (not those that frame the body: the server frames
/// it), and the request id.
fn answer_headers(h: &mut HeaderMap, headers: &[(Vec<u8>, Vec<u8>)], rid: &str) {
    for (n, v) in headers {
        if framing(n) {
            continue;
        }
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(n), HeaderValue::from_bytes(v)) {
            h.append(n, v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(rid) {
        h.insert("x-request-id", v);
    }
}

#[cfg(test)]
mod model_tests {
    use super::*;

    #[test]
    fn models_documents_are_read_by_their_key_and_a_deleted_one_holds_none() {
        let key = format!("models/app/Dep/{:032x}", 5u128);
        let doc = br#"{"actor_id": "x", "models": ["a", "b", 3], "version": 2}"#;
        let (a, m) = parse_models(key.as_bytes(), Some(doc)).expect("parses");
        assert_eq!((a, m), (ActorId(volley_proto::TaskId(5)), vec!["a".into(), "b".into()]));
        assert_eq!(parse_models(key.as_bytes(), None).map(|x| x.1), Some(vec![]));
        assert!(parse_models(b"models/app/Dep/nothex", Some(doc)).is_none());
        assert!(parse_models(key.as_bytes(), Some(b"{")).is_none());
    }
}
