//! The dashboard: an HTTP server in the engine with the cluster's pages, a JSON API
//! (`/api/v0/...`) and Prometheus `/metrics`.
//!
//! It runs on a small tokio runtime of its own (two threads), created only when a dashboard
//! starts (`volley start --head`, `volley.init(dashboard=True)`): the task path never touches
//! it. Everything it shows comes through a [`Source`], so the pages, the CLI and scrapers read
//! the same answers; [`NodeSource`] is the one for this process's node.
//!
//! Every route but the login page and the static assets needs the cluster's token (see
//! [`auth`]). A forked child forgets its parent's dashboard without touching it
//! ([`after_fork_in_child`]): the runtime's threads did not survive the fork.

pub mod auth;
pub mod metrics;
mod server;
mod source;

use std::net::{TcpListener, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use volley_store::sync::Mutex;

pub use source::NodeSource;

use crate::RuntimeError;

/// The port the head's dashboard takes unless told otherwise (the one Ray users know).
pub const DEFAULT_PORT: u16 = 8265;

/// The kinds of rows the state API answers (`GET /api/v0/{kind}`), its filters and queries:
/// the state API's own types, so the HTTP API and `volley list` parse to the same query.
pub use volley_proto::{Filter, FilterOp as Op, StateQuery as Query, STATE_KINDS as KINDS};

/// An answer the API cannot give, with the HTTP status that says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    /// The request itself is wrong (an unknown kind, a malformed filter).
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError { status: 400, message: message.into() }
    }

    /// This build's dashboard has nothing behind the route yet.
    pub fn not_connected(what: &str) -> ApiError {
        ApiError {
            status: 501,
            message: format!("{what} are not available from this dashboard yet"),
        }
    }

    /// The node is gone (shut down) or did not answer.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError { status: 503, message: message.into() }
    }
}

/// What the dashboard shows, wherever it comes from. The default methods answer what exists in
/// every build (nodes from their snapshots); the state API, logs and jobs plug in by
/// overriding `query`, `logs` and `extra_metrics`.
pub trait Source: Send + Sync + 'static {
    /// Every node of the cluster as its head knows it (this node alone outside a cluster).
    fn nodes(&self) -> Result<Vec<volley_proto::NodeSnapshot>, ApiError>;

    /// Rows of `q.kind`, answered as `{"kind", "rows", "total", "truncated", "dropped"}`.
    /// Called off the server's threads (it may take a while over many rows).
    fn query(&self, q: &Query) -> Result<serde_json::Value, ApiError> {
        if q.kind == "nodes" {
            let rows = self.nodes()?.iter().map(node_row).collect();
            return Ok(answer(&q.kind, rows, q));
        }
        Err(ApiError::not_connected(&q.kind))
    }

    /// The time of day (ms since the Unix epoch) an answer of `query` is stamped with
    /// (`X-Volley-Now-Ms`): a row that changes after this reading has a later `changed_ms`.
    /// By default the system's clock.
    fn now_ms(&self) -> u64 {
        crate::state::now_ms()
    }

    /// Log lines for `GET /api/v0/logs` with its query parameters as given (`node`, `worker`,
    /// `task`, `actor`, `job`, `offset`, `limit`), answered as `{"lines": [...], "offset": N}`:
    /// the page asks again from `offset` for a live tail.
    fn logs(&self, _params: &[(String, String)]) -> Result<serde_json::Value, ApiError> {
        Err(ApiError::not_connected("logs"))
    }

    /// More Prometheus text appended to `/metrics` (complete families: `# HELP`, `# TYPE`, the
    /// samples), e.g. histograms of task durations from the state API.
    fn extra_metrics(&self) -> String {
        String::new()
    }

    /// serve's applications, deployments, replicas and request figures for
    /// `GET /api/v0/serve` (see `crate::serve::metrics::view`).
    fn serve(&self) -> Result<serde_json::Value, ApiError> {
        Err(ApiError::not_connected("serve's figures"))
    }
}

/// A node's row: its snapshot's fields, and `alive` (the head lists live nodes only).
pub fn node_row(n: &volley_proto::NodeSnapshot) -> serde_json::Value {
    let mut v = serde_json::to_value(n).unwrap_or(serde_json::Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.insert("alive".into(), serde_json::Value::Bool(true));
    }
    v
}

/// Whether `row` passes `f`: its field printed as text (a string as is, `null` as "null",
/// numbers and booleans as JSON) compared with the filter's value.
pub fn matches(row: &serde_json::Value, f: &Filter) -> bool {
    let field = match row.get(&f.key) {
        None | Some(serde_json::Value::Null) => "null".to_string(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    (field == f.value) == (f.op == Op::Eq)
}

/// The answer of `q` over rows held in memory: filtered, counted, then cut at the limit.
pub fn answer(kind: &str, rows: Vec<serde_json::Value>, q: &Query) -> serde_json::Value {
    let mut kept: Vec<serde_json::Value> =
        rows.into_iter().filter(|r| q.filters.iter().all(|f| matches(r, f))).collect();
    let total = kept.len();
    if let Some(limit) = q.limit {
        kept.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    }
    serde_json::json!({
        "kind": kind,
        "rows": kept,
        "total": total,
        "truncated": kept.len() < total,
        "dropped": 0,
    })
}

/// Parses a query string's `filter`, `limit` and `detail` parameters (see the module's doc).
pub fn parse_query(kind: &str, params: &[(String, String)]) -> Result<Query, ApiError> {
    if !KINDS.contains(&kind) {
        return Err(ApiError::bad_request(format!(
            "unknown kind {kind:?}; the kinds are {}",
            KINDS.join(", ")
        )));
    }
    let mut q =
        Query { kind: kind.to_string(), filters: Vec::new(), limit: Some(100), detail: false };
    for (k, v) in params {
        match k.as_str() {
            "filter" => {
                let Some((key, op, value)) = Op::split(v) else {
                    return Err(ApiError::bad_request(format!(
                        "filter {v:?} is not key=value, key!=value, or key>N, key>=N, key<N, \
                         key<=N for a number"
                    )));
                };
                if key.is_empty() {
                    return Err(ApiError::bad_request(format!("filter {v:?} has no key")));
                }
                q.filters.push(Filter { key: key.to_string(), op, value: value.to_string() });
            }
            "limit" => {
                let n: u64 = v.parse().map_err(|_| {
                    ApiError::bad_request(format!("limit must be a whole number >= 0, not {v:?}"))
                })?;
                q.limit = (n > 0).then_some(n);
            }
            "detail" => {
                q.detail = match v.as_str() {
                    "1" | "true" => true,
                    "0" | "false" | "" => false,
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "detail must be 0 or 1, not {v:?}"
                        )))
                    }
                };
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter {other:?}; the parameters are filter, limit and detail"
                )))
            }
        }
    }
    Ok(q)
}

/// Where and how to serve.
pub struct Config {
    /// The address to bind (the head's host by default).
    pub host: String,
    /// The port; with `port_given` false, a taken port is replaced by a free one (and the log
    /// says so), with it true a taken port is an error.
    pub port: u16,
    pub port_given: bool,
    /// The cluster's token: every request but the login page's must carry it.
    pub token: String,
    pub source: Arc<dyn Source>,
    /// The cluster's TLS (certificate and key): the dashboard then serves HTTPS only, so
    /// that the token and the pages do not cross the network in clear on a cluster that
    /// encrypts everything else.
    pub tls: Option<Arc<crate::TlsConfig>>,
}

/// A running dashboard.
struct Running {
    runtime: tokio::runtime::Runtime,
    /// The listening socket's descriptor, which a forked child closes (see
    /// [`after_fork_in_child`]).
    listen_fd: std::os::fd::RawFd,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    url: String,
    token: String,
}

/// This process's dashboard (at most one).
static DASHBOARD: Mutex<Option<Running>> = Mutex::new(None);

/// Starts this process's dashboard; gives its URL (without the token). An error if one runs
/// already, if the host does not resolve, or if a port given explicitly is taken.
pub fn start(cfg: Config) -> Result<String, RuntimeError> {
    let mut slot = DASHBOARD.lock();
    if let Some(r) = slot.as_ref() {
        return Err(RuntimeError::Io(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("a dashboard already runs in this process at {}", r.url),
        )));
    }
    if cfg.token.is_empty() {
        return Err(RuntimeError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the dashboard needs a token",
        )));
    }
    let tls = match &cfg.tls {
        None => None,
        Some(t) => Some(t.server_config().ok_or_else(|| {
            RuntimeError::Tls(
                "the dashboard serves HTTPS with the cluster's certificate and its key; this \
                 node has the certificate only"
                    .into(),
            )
        })?),
    };
    let listener = bind(&cfg.host, cfg.port, cfg.port_given)?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let listen_fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
    let shown_host = match cfg.host.as_str() {
        "0.0.0.0" | "::" | "" => "localhost".to_string(),
        h if h.contains(':') => format!("[{h}]"),
        h => h.to_string(),
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{shown_host}:{}/", local.port());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .thread_name("volley-dashboard")
        .enable_io()
        .enable_time()
        .build()?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let app =
        Arc::new(server::App::new(cfg.token.clone(), local.port(), cfg.source, tls.is_some()));
    runtime.spawn(server::serve(listener, app, rx, tls));
    *slot =
        Some(Running { runtime, listen_fd, stop: Some(tx), url: url.clone(), token: cfg.token });
    Ok(url)
}

/// Binds `host:port`; a taken default port gives way to a free one.
fn bind(host: &str, port: u16, port_given: bool) -> Result<TcpListener, RuntimeError> {
    let addrs: Vec<std::net::SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| {
            std::io::Error::new(e.kind(), format!("dashboard host {host:?} does not resolve: {e}"))
        })?
        .collect();
    let Some(addr) = addrs.first().copied() else {
        return Err(RuntimeError::Io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("dashboard host {host:?} has no address"),
        )));
    };
    match TcpListener::bind(addr) {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && !port_given => {
            let l = TcpListener::bind((addr.ip(), 0))?;
            crate::diag::event!(
                Info,
                "volley: the dashboard's port {port} on {host} is taken; it listens on port {} \
                 instead",
                l.local_addr().map(|a| a.port()).unwrap_or(0)
            );
            Ok(l)
        }
        Err(e) => Err(RuntimeError::Io(std::io::Error::new(
            e.kind(),
            format!("the dashboard cannot listen on {addr}: {e}"),
        ))),
    }
}

/// Stops this process's dashboard, if one runs (open connections get a second to finish).
pub fn stop() {
    let running = DASHBOARD.lock().take();
    if let Some(mut r) = running {
        if let Some(tx) = r.stop.take() {
            let _ = tx.send(());
        }
        r.runtime.shutdown_timeout(Duration::from_secs(1));
    }
}

/// The running dashboard's URL (without the token) and token.
pub fn running() -> Option<(String, String)> {
    DASHBOARD.lock().as_ref().map(|r| (r.url.clone(), r.token.clone()))
}

/// In a child just forked: forgets the parent's dashboard without dropping it (its runtime's
/// threads are gone; dropping it would wait for them), and closes the child's copy of the
/// listening socket, which would otherwise keep the port bound after the parent lets it go.
pub(crate) fn after_fork_in_child() {
    // SAFETY: only the forking thread exists in the child, and it holds no guard of it (a
    // thread that held it is gone).
    unsafe { DASHBOARD.reset_after_fork() };
    if let Some(r) = DASHBOARD.lock().take() {
        // SAFETY: the descriptor is the listener's, which nothing in the child uses: the
        // runtime that owned it is forgotten below, never dropped (no second close).
        unsafe { libc::close(r.listen_fd) };
        std::mem::forget(r);
    }
}

#[cfg(test)]
mod tests;
