//! The routes: pages and assets, the JSON API, `/metrics`, behind the token check.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::net::SocketAddr;

use tokio::sync::{mpsc, oneshot};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::{auth, metrics, parse_query, ApiError, Source};

const INDEX: &str = include_str!("static/index.html");
const LOGIN: &str = include_str!("static/login.html");
const APP_JS: &str = include_str!("static/app.js");
const APP_CSS: &str = include_str!("static/app.css");

pub(crate) struct App {
    token: String,
    port: u16,
    source: Arc<dyn Source>,
    /// Served over TLS: the login cookie is then `Secure` (never sent in clear).
    tls: bool,
}

impl App {
    pub(crate) fn new(token: String, port: u16, source: Arc<dyn Source>, tls: bool) -> App {
        App { token, port, source, tls }
    }
}

/// How long a client may take over its TLS handshake before its connection is dropped.
const HANDSHAKE: std::time::Duration = std::time::Duration::from_secs(10);

/// Accepts TLS connections for axum. Each handshake runs in a task of its own, with a
/// deadline, so that a client that connects and says nothing (or speaks plain HTTP, which
/// fails the handshake and is dropped) holds up no other; finished ones come through a
/// channel.
struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<tokio::net::TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    fn new(
        listener: tokio::net::TcpListener,
        cfg: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(cfg);
        tokio::spawn(async move {
            while !tx.is_closed() {
                let (tcp, addr) = match listener.accept().await {
                    Ok(x) => x,
                    Err(_) => {
                        // Out of descriptors, most likely: back off instead of spinning.
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    if let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await
                    {
                        let _ = tx.send((tls, addr)).await;
                    }
                });
            }
        });
        Ok(TlsListener { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accepting task ended (the runtime shuts down): nothing more comes.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// Serves until `stop` fires (or its sender is dropped); over TLS with `tls`.
pub(crate) async fn serve(
    listener: std::net::TcpListener,
    app: Arc<App>,
    stop: oneshot::Receiver<()>,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            crate::diag::event!(Error, "volley: the dashboard cannot serve: {e}");
            return;
        }
    };
    let router = Router::new()
        .route("/", get(index))
        .route("/login", get(login))
        .route("/static/{file}", get(asset))
        .route("/metrics", get(metrics_text))
        .route("/api/v0/cluster", get(cluster))
        .route("/api/v0/logs", get(logs))
        .route("/api/v0/serve", get(serve_view))
        .route("/api/v0/{kind}", get(query))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(app.clone(), check))
        .with_state(app);
    let shutdown = async {
        let _ = stop.await;
    };
    let served = match tls {
        None => axum::serve(listener, router).with_graceful_shutdown(shutdown).await,
        Some(cfg) => match TlsListener::new(listener, cfg) {
            Ok(l) => axum::serve(l, router).with_graceful_shutdown(shutdown).await,
            Err(e) => Err(e),
        },
    };
    if let Err(e) = served {
        crate::diag::event!(Error, "volley: the dashboard stopped: {e}");
    }
}

fn params(raw: Option<&str>) -> Vec<(String, String)> {
    raw.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default()
}

fn is_api(path: &str) -> bool {
    path.starts_with("/api/") || path == "/metrics"
}

/// The token check in front of every route (see [`auth`]), and the headers every answer gets.
async fn check(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let mut resp = if path == "/login" || path.starts_with("/static/") {
        next.run(req).await
    } else {
        let ps = params(req.uri().query());
        if let Some((_, t)) = ps.iter().find(|(k, _)| k == "token") {
            if auth::ct_eq(t.as_bytes(), app.token.as_bytes()) {
                // Logged in: the same URL without the token, with the cookie.
                let rest: Vec<&(String, String)> =
                    ps.iter().filter(|(k, _)| k != "token").collect();
                let mut to = path.clone();
                if !rest.is_empty() {
                    let mut s = form_urlencoded::Serializer::new(String::new());
                    for (k, v) in rest {
                        s.append_pair(k, v);
                    }
                    to = format!("{to}?{}", s.finish());
                }
                let mut r = StatusCode::SEE_OTHER.into_response();
                if let (Ok(loc), Ok(c)) = (
                    HeaderValue::from_str(&to),
                    HeaderValue::from_str(&secure(auth::set_cookie(app.port, &app.token), app.tls)),
                ) {
                    r.headers_mut().insert(header::LOCATION, loc);
                    r.headers_mut().insert(header::SET_COOKIE, c);
                }
                r
            } else {
                unauthorized(&path, "the token in the URL is not this cluster's token")
            }
        } else {
            let h = req.headers();
            let authorization = h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
            let cookies: Vec<&str> =
                h.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).collect();
            if auth::authorized(&app.token, app.port, authorization, &cookies) {
                next.run(req).await
            } else if authorization.is_some() {
                unauthorized(&path, "the bearer token is not this cluster's token")
            } else {
                unauthorized(
                    &path,
                    "this dashboard needs the cluster's token: open the URL the node printed \
                     (with ?token=...), or send `Authorization: Bearer TOKEN`",
                )
            }
        }
    };
    let h = resp.headers_mut();
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // The token URL must not leak to another site through Referer.
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; img-src 'self' data:"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// A cookie served over TLS is marked `Secure`: a browser never sends it in clear.
fn secure(cookie: String, tls: bool) -> String {
    if tls {
        format!("{cookie}; Secure")
    } else {
        cookie
    }
}

fn unauthorized(path: &str, why: &str) -> Response {
    let mut r = if is_api(path) {
        error(&ApiError { status: 401, message: why.to_string() })
    } else {
        let page = LOGIN.replace("{{why}}", &html_escape(why));
        (StatusCode::UNAUTHORIZED, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], page)
            .into_response()
    };
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"volley\""));
    r
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

fn error(e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json(status, &serde_json::json!({ "error": e.message }))
}

/// Runs a source's call off the server's threads (a query over many rows takes a while).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(ApiError { status: 500, message: format!("the query failed: {e}") })
    })
}

async fn index() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX).into_response()
}

async fn login() -> Response {
    let page = LOGIN.replace("{{why}}", "");
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response()
}

async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "app.css" => (APP_CSS, "text/css; charset=utf-8"),
        _ => return not_found().await,
    };
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

async fn not_found() -> Response {
    error(&ApiError { status: 404, message: "no such page".into() })
}

async fn metrics_text(State(app): State<Arc<App>>) -> Response {
    let src = app.source.clone();
    match blocking(move || Ok(metrics::render(&src.nodes()?, &src.extra_metrics()))).await {
        Ok(text) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Err(e) => error(&e),
    }
}

/// `/api/v0/cluster`: every node, and the cluster's totals.
async fn cluster(State(app): State<Arc<App>>) -> Response {
    let src = app.source.clone();
    match blocking(move || src.nodes()).await {
        Ok(nodes) => {
            let mut t = serde_json::Map::new();
            let sum = |f: &dyn Fn(&volley_proto::NodeSnapshot) -> f64| -> f64 {
                nodes.iter().map(f).sum()
            };
            t.insert("nodes".into(), nodes.len().into());
            t.insert("cpus".into(), sum(&|n| f64::from(n.cpu_total_milli) / 1000.0).into());
            t.insert(
                "cpus_used".into(),
                sum(&|n| f64::from(n.cpu_total_milli.saturating_sub(n.cpu_free_milli)) / 1000.0)
                    .into(),
            );
            t.insert("workers".into(), sum(&|n| f64::from(n.workers)).into());
            t.insert("actors".into(), sum(&|n| f64::from(n.sched.actors)).into());
            t.insert("store_used".into(), sum(&|n| n.store_used as f64).into());
            t.insert("store_capacity".into(), sum(&|n| n.store_capacity as f64).into());
            t.insert("tasks_waiting".into(), sum(&|n| f64::from(n.tasks_waiting)).into());
            let mut res = std::collections::BTreeMap::<String, (f64, f64)>::new();
            for n in &nodes {
                for (name, total, free) in n.resources.iter().filter(|r| !r.0.starts_with("pg:")) {
                    let e = res.entry(name.clone()).or_default();
                    e.0 += *total as f64 / 1000.0;
                    e.1 += total.saturating_sub(*free) as f64 / 1000.0;
                }
            }
            t.insert("resources".into(), serde_json::json!(res));
            let rows: Vec<serde_json::Value> = nodes.iter().map(super::node_row).collect();
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            json(StatusCode::OK, &serde_json::json!({"nodes": rows, "totals": t, "now_ms": now_ms}))
        }
        Err(e) => error(&e),
    }
}

/// `/api/v0/serve`: serve's deployments, replicas and request figures, with the node's clock
/// (the page turns two answers' counts into requests per second).
async fn serve_view(State(app): State<Arc<App>>) -> Response {
    let src = app.source.clone();
    match blocking(move || src.serve()).await {
        Ok(mut v) => {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            if let Some(o) = v.as_object_mut() {
                o.insert("now_ms".into(), now_ms.into());
            }
            json(StatusCode::OK, &v)
        }
        Err(e) => error(&e),
    }
}

async fn logs(State(app): State<Arc<App>>, RawQuery(raw): RawQuery) -> Response {
    let ps = params(raw.as_deref());
    let src = app.source.clone();
    match blocking(move || src.logs(&ps)).await {
        Ok(v) => json(StatusCode::OK, &v),
        Err(e) => error(&e),
    }
}

async fn query(
    State(app): State<Arc<App>>,
    Path(kind): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let q = match parse_query(&kind, &params(raw.as_deref())) {
        Ok(q) => q,
        Err(e) => return error(&e),
    };
    // The clock that stamps the node's rows, read before the rows are: a client that asks
    // again for what changed since (`changed_ms>`) starts from here, not from its own clock,
    // which may be another machine's. What changes after this reading, even in the same
    // millisecond, is stamped after it.
    let src = app.source.clone();
    let now_ms = src.now_ms();
    match blocking(move || src.query(&q)).await {
        Ok(v) => {
            let mut r = json(StatusCode::OK, &v);
            if let Ok(h) = HeaderValue::from_str(&now_ms.to_string()) {
                r.headers_mut().insert("x-volley-now-ms", h);
            }
            r
        }
        Err(e) => error(&e),
    }
}
