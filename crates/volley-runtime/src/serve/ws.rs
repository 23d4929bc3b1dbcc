//! WebSockets: an upgrade request on a route is handed to a replica whose ASGI app (FastAPI's
//! `@app.websocket` under `@serve.ingress`) answers the handshake; the ingress then carries
//! messages both ways with no Python process in between (see `python/volley/serve/_websocket.py`
//! for the replica's side and `_wire.py` for the messages' form).
//!
//! 1. The request frame (no body) goes to the replica's `__volley_serve_websocket__` through the
//!    balancer, as a request would, within the route's timeout. A response frame (the app
//!    refused: 403, a denial response, a 500 or a 501) is sent as the answer; a WebSocket head
//!    (`wire::SOCKET_HEAD`) accepts, with the app's subprotocol and headers.
//! 2. The ingress at once follows `__volley_serve_ws_out__(key)`, a streaming call whose items
//!    are the app's messages ([`super::stream::follow`], as an HTTP stream's chunks), and answers
//!    101. Once the connection is upgraded, [`pump`] sends each message to the client, and hands
//!    each client message to a task of its own ([`deliver`]) that calls
//!    `__volley_serve_ws_in__` with them one at a time, in order: at most [`INBOUND`] wait in
//!    the ingress, then the client's messages are not read (TCP pushes back).
//! 3. The app's close ends the stream; the client's close (or loss: 1006) is handed to the app
//!    as a message; a replica that dies closes the socket with 1011. The socket holds its
//!    replica's slot in the balancer until its stream ends; a client that leaves (or an upgrade
//!    that never completes: the receiver is dropped) cancels the app through the follower.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;
use volley_proto::ActorId;

use super::stream::{open_follow, submit_to, Chunk};
use super::{fail_response, finish, framing, json_response, wire, Fail, Serving};
use crate::serve::table::Route;

/// The replica's method that answers a WebSocket handshake.
pub const SOCKET_METHOD: &str = "__volley_serve_websocket__";
/// The replica's streaming method: the app's messages on an accepted socket.
pub const SOCKET_OUT_METHOD: &str = "__volley_serve_ws_out__";
/// The replica's method that takes one client message.
pub const SOCKET_IN_METHOD: &str = "__volley_serve_ws_in__";
/// Client messages held in the ingress while the replica takes earlier ones.
const INBOUND: usize = 16;
/// How long the ingress waits, after the client's close, for the app to close in turn.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Whether a request asks to upgrade to a WebSocket (other upgrades, such as curl's
/// `Upgrade: h2c`, are ignored as HTTP allows and the request is served).
pub(super) fn wants_websocket(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(axum::http::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().windows(9).any(|w| w.eq_ignore_ascii_case(b"websocket")))
}

/// An accepted socket, before the upgrade: the head's headers and the app's messages.
struct Accepted {
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    key: Vec<u8>,
    rx: mpsc::Receiver<Chunk>,
}

/// Serves a WebSocket upgrade request on `route` (see the module's doc).
pub(super) async fn serve(
    s: Arc<Serving>,
    route: &Route,
    mut parts: Parts,
    frame: Vec<u8>,
    rid: String,
    deadline: Option<Instant>,
) -> Response {
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(u) => u,
        Err(rejection) => {
            let status = rejection.status();
            let error = format!(
                "not a WebSocket upgrade that route {} can take: {}",
                route.prefix,
                rejection.body_text()
            );
            return json_response(
                status,
                &rid,
                serde_json::json!({"error": error, "route": route.prefix, "request_id": rid}),
            );
        }
    };
    let actor = match s.acquire(route, super::model_of(&parts.headers), deadline).await {
        Ok(a) => a,
        Err(f) => return fail_response(f, &rid, route),
    };
    let node = s.node_of(route, actor);
    let Some(shared) = s.shared.upgrade() else {
        s.release(actor);
        return fail_response(Fail::Internal("the node shut down".into()), &rid, route);
    };
    let submitted =
        submit_to(&s, &shared, actor, node, SOCKET_METHOD, false, wire::call_args(&frame));
    drop(shared);
    let Ok(p) = submitted else {
        s.mark_dead(actor);
        return fail_response(Fail::Died("it died before the handshake".into()), &rid, route);
    };
    // The handshake runs in a task of its own: one that outlives a timeout still gives its
    // replica back (and an accepted socket no one takes is cancelled by its follower).
    let s2 = s.clone();
    let call = tokio::spawn(async move {
        match finish(s2.shared.clone(), p).await {
            Ok(f) if f.starts_with(wire::SOCKET_HEAD) => accept(s2, actor, node, &f),
            r => {
                if matches!(r, Err(Fail::Died(_))) {
                    s2.mark_dead(actor);
                } else {
                    s2.release(actor);
                }
                r.map(Err)
            }
        }
    });
    let joined = match deadline {
        Some(d) => match tokio::time::timeout_at(d.into(), call).await {
            Ok(j) => j,
            Err(_) => return fail_response(Fail::Timeout, &rid, route),
        },
        None => call.await,
    };
    let accepted = match joined.unwrap_or_else(|e| Err(Fail::Internal(e.to_string()))) {
        Ok(Ok(a)) => a,
        Ok(Err(frame)) => return super::frame_response(&frame, &rid, route),
        Err(f) => return fail_response(f, &rid, route),
    };
    let Accepted { headers, key, rx } = accepted;
    let mut upgrade = upgrade;
    let mut extra = Vec::new();
    for (n, v) in headers {
        if n.eq_ignore_ascii_case(b"sec-websocket-protocol") {
            if let Ok(v) = HeaderValue::from_bytes(&v) {
                upgrade.set_selected_protocol(v);
            }
        } else if !framing(&n) && !n.to_ascii_lowercase().starts_with(b"sec-websocket-") {
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(&n), HeaderValue::from_bytes(&v)) {
                extra.push((n, v));
            }
        }
    }
    let rid2 = rid.clone();
    let mut r = upgrade
        .on_upgrade(move |socket| pump(s, actor, node, key, socket, rx, rid2))
        .into_response();
    let h = r.headers_mut();
    for (n, v) in extra {
        h.append(n, v);
    }
    if let Ok(v) = HeaderValue::from_str(&rid) {
        h.insert("x-request-id", v);
    }
    r
}

/// The replica accepted: starts following its socket's outbound messages. Owns the replica's
/// count in the balancer from here on (the follower gives it back).
fn accept(
    s: Arc<Serving>,
    actor: ActorId,
    node: Option<u32>,
    frame: &[u8],
) -> Result<Result<Accepted, Vec<u8>>, Fail> {
    let (head, key) = match wire::decode_socket_head(frame) {
        Ok(x) => x,
        Err(e) => {
            s.release(actor);
            return Err(Fail::Internal(format!("the replica's WebSocket head: {e}")));
        }
    };
    if key.len() > usize::from(u8::MAX) {
        s.release(actor);
        return Err(Fail::Internal("the replica's WebSocket key is too long".into()));
    }
    let rx =
        open_follow(s, actor, node, SOCKET_OUT_METHOD, key.clone(), &head, "its socket opened")?;
    // The follower starts at the stream's first item: a stream head's first chunk rides in the
    // head, a socket head carries none.
    Ok(Ok(Accepted { headers: head.headers, key, rx }))
}

/// A message in the wire form: its kind, then its payload (a close: code, then reason).
fn to_wire(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(1 + payload.len());
    m.push(kind);
    m.extend_from_slice(payload);
    m
}

fn close_wire(code: u16, reason: &str) -> Vec<u8> {
    let mut m = vec![b'c'];
    m.extend_from_slice(&code.to_be_bytes());
    m.extend_from_slice(reason.as_bytes());
    m
}

/// The client's form of one of the app's messages; `None` for one that is not a message.
fn from_wire(m: &[u8]) -> Option<Message> {
    let (&kind, payload) = m.split_first()?;
    match kind {
        b't' => Some(Message::text(String::from_utf8_lossy(payload).into_owned())),
        b'b' => Some(Message::binary(payload.to_vec())),
        b'c' => {
            let code = match payload.get(..2) {
                Some(c) => u16::from_be_bytes([c[0], c[1]]),
                None => 1000,
            };
            let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or_default());
            Some(Message::Close(Some(CloseFrame { code, reason: reason.as_ref().into() })))
        }
        _ => None,
    }
}

/// Carries one upgraded socket's messages both ways until either side closes.
async fn pump(
    s: Arc<Serving>,
    actor: ActorId,
    node: Option<u32>,
    key: Vec<u8>,
    mut socket: WebSocket,
    mut rx: mpsc::Receiver<Chunk>,
    rid: String,
) {
    let (in_tx, in_rx) = mpsc::channel::<Vec<u8>>(INBOUND);
    tokio::spawn(deliver(s, actor, node, key, in_rx));
    let mut client_open = true;
    let mut told_app = false; // the client's close (or loss) went to the app
    let mut give_up: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            m = socket.recv(), if client_open && in_tx.capacity() > 0 => {
                let wire = match m {
                    Some(Ok(Message::Text(t))) => to_wire(b't', t.as_bytes()),
                    Some(Ok(Message::Binary(b))) => to_wire(b'b', &b),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(f))) => {
                        client_open = false;
                        match f {
                            Some(f) => close_wire(f.code, f.reason.as_str()),
                            None => close_wire(1005, ""),
                        }
                    }
                    Some(Err(_)) | None => {
                        client_open = false;
                        close_wire(1006, "")
                    }
                };
                if !client_open {
                    told_app = true;
                    give_up = Some(tokio::time::Instant::now() + CLOSE_WAIT);
                }
                // Room was checked: only this loop sends.
                let _ = in_tx.try_send(wire);
            }
            c = rx.recv() => match c {
                Some(Chunk::Data(b)) => {
                    let Some(m) = from_wire(&b) else { continue };
                    let closing = matches!(m, Message::Close(_));
                    if socket.send(m).await.is_err() {
                        if !told_app {
                            let _ = in_tx.try_send(close_wire(1006, ""));
                        }
                        break;
                    }
                    if closing {
                        break;
                    }
                }
                end => {
                    // The stream ended without the app's close (the replica died: 1011).
                    let code = if matches!(end, Some(Chunk::Failed)) { 1011 } else { 1000 };
                    if matches!(end, Some(Chunk::Failed)) {
                        crate::diag::event!(
                            Warn,
                            "volley: serve: request {rid}: the WebSocket's replica failed; \
                             closed with 1011"
                        );
                    }
                    let reason = if code == 1011 { "the replica failed" } else { "" };
                    let frame = CloseFrame { code, reason: reason.into() };
                    let _ = socket.send(Message::Close(Some(frame))).await;
                    break;
                }
            },
            _ = tokio::time::sleep_until(give_up.unwrap_or_else(tokio::time::Instant::now)),
                if give_up.is_some() => break,
        }
    }
    drop(in_tx);
    drop(rx); // a follower still running cancels the app
              // Read the client's answer to a close, so that the connection ends cleanly.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(Ok(m)) = socket.recv().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// Hands the client's messages to the replica one at a time, in order, until the client's
/// close went or the replica cannot take more.
async fn deliver(
    s: Arc<Serving>,
    actor: ActorId,
    node: Option<u32>,
    key: Vec<u8>,
    mut in_rx: mpsc::Receiver<Vec<u8>>,
) {
    while let Some(m) = in_rx.recv().await {
        let close = m.first() == Some(&b'c');
        let mut arg = Vec::with_capacity(1 + key.len() + m.len());
        arg.push(key.len() as u8); // at most 255: checked in `accept`
        arg.extend_from_slice(&key);
        arg.extend_from_slice(&m);
        let Some(shared) = s.shared.upgrade() else { return };
        let submitted =
            submit_to(&s, &shared, actor, node, SOCKET_IN_METHOD, false, wire::call_args(&arg));
        drop(shared);
        let Ok(p) = submitted else { return };
        if finish(s.shared.clone(), p).await.is_err() || close {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_cross_the_wire_form_both_ways() {
        assert_eq!(from_wire(&to_wire(b't', b"hi")), Some(Message::text("hi")));
        assert_eq!(from_wire(&to_wire(b'b', &[0, 1])), Some(Message::binary(vec![0u8, 1])));
        let close = from_wire(&close_wire(4001, "bye"));
        assert_eq!(
            close,
            Some(Message::Close(Some(CloseFrame { code: 4001, reason: "bye".into() })))
        );
        assert_eq!(close_wire(1000, ""), b"c\x03\xe8", "as _websocket.close_message writes it");
        assert_eq!(from_wire(b""), None);
        assert_eq!(from_wire(b"x?"), None);
    }

    #[test]
    fn only_websocket_upgrades_are_taken() {
        let mut h = axum::http::HeaderMap::new();
        assert!(!wants_websocket(&h));
        h.insert("upgrade", HeaderValue::from_static("h2c"));
        assert!(!wants_websocket(&h));
        h.insert("upgrade", HeaderValue::from_static("WebSocket"));
        assert!(wants_websocket(&h));
    }
}
