//! Streaming responses: a replica method that yields its body (a generator, or a
//! `StreamingResponse`) is sent to the client chunk by chunk, as HTTP/1.1 chunked transfer (DATA
//! frames over h2c), each chunk as the replica yields it.
//!
//! Two steps, so that a request whose answer is whole costs exactly what it did before (one
//! call, one frame; the only addition is a four-byte compare of the answer's magic):
//!
//! 1. The ingress calls `__volley_serve_http__(frame)` as for every request. A replica whose
//!    method streams runs its generator to the first chunk and answers with a *stream head*
//!    (`wire::STREAM_HEAD`: status, headers, the first chunk and the stream's key) instead of a
//!    response frame. It keeps its `max_ongoing_requests` slot for the stream, as the ingress
//!    keeps the replica counted in its balancer: a stream counts until it ends.
//! 2. [`start`] calls the replica's streaming method `__volley_serve_stream__(key)` (an actor
//!    call with `streaming`: each chunk becomes an object as it is yielded) and a task of its
//!    own ([`follow`]) takes the items in order through the scheduler's `stream_next`, waiting
//!    on the waiter's slot (no tokio thread blocks), and hands them to the response body through
//!    a bounded channel.
//!
//! The client leaving (the body dropped: the channel's receiver) wakes the follower, which
//! calls `__volley_serve_cancel__(key)` on the replica (its generator gets `CancelledError` or
//! `GeneratorExit`) and gives the replica back once that returned. A generator that raises
//! after its first chunk ends the body with an error: hyper closes the connection without the
//! terminating zero-size chunk (HTTP/1.1) or resets the stream (h2), so the client sees an
//! incomplete body, never a clean end; the error is logged with the request id.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use axum::response::Response;
use http_body::Frame;
use tokio::sync::{mpsc, oneshot};
use volley_proto::{ActorId, ObjectId, TaskId, TaskOptions};
use volley_sched::{Action, Holder, StreamStep, WaitOwner};

use super::{
    answer_headers, finish, read_value, submit_call, wire, CallOf, Fail, Pending, Serving,
};
use crate::shared::{Shared, Slot};

/// The replica's streaming method: the chunks after the first, of the stream its key names.
pub const STREAM_METHOD: &str = "__volley_serve_stream__";
/// The replica's method that stops a stream whose client left.
pub const CANCEL_METHOD: &str = "__volley_serve_cancel__";
/// The replica's method that hears how many items of a stream the ingress took.
pub const CREDIT_METHOD: &str = "__volley_serve_credit__";
/// The ingress tells the replica every this many items (`_streaming.CREDIT_EVERY`); the
/// replica's producer runs at most `_streaming.WINDOW` items past the last count it heard.
const CREDIT_EVERY: u32 = 8;
/// Chunks held between the follower and a slow client before the follower waits.
const BUFFERED: usize = 16;
/// How long the follower waits for the replica to confirm a cancelled stream is closed.
const CANCEL_WAIT: Duration = Duration::from_secs(10);

/// What a replica's call answered: a whole response frame, or a stream that follows.
pub(super) enum Answer {
    Frame(Vec<u8>),
    Stream(Streamed),
}

/// A stream under way: its head (status, headers, first chunk) and the chunks to come.
pub(super) struct Streamed {
    head: wire::Response,
    rx: mpsc::Receiver<Chunk>,
}

pub(super) enum Chunk {
    Data(Bytes),
    /// The generator raised after the chunks sent: the body ends with an error.
    Failed,
}

/// Whether a replica's answer opens a stream.
pub(super) fn is_head(frame: &[u8]) -> bool {
    frame.starts_with(wire::STREAM_HEAD)
}

/// The replica `actor` answered with a stream head: calls its streaming method and starts
/// following it. Owns the replica's count in the balancer from here on: it is given back when
/// the stream ends (or at once if it cannot start).
pub(super) fn start(
    s: Arc<Serving>,
    actor: ActorId,
    node: Option<u32>,
    frame: Vec<u8>,
) -> Result<Answer, Fail> {
    let (head, key) = match wire::decode_stream_head(&frame) {
        Ok(x) => x,
        Err(e) => {
            s.release(actor);
            return Err(Fail::Internal(format!("the replica's stream head: {e}")));
        }
    };
    let rx = open_follow(s, actor, node, STREAM_METHOD, key, &head, "its stream began")?;
    Ok(Answer::Stream(Streamed { head, rx }))
}

/// Calls the replica's streaming `method` with `key` and starts following its items (the
/// request id for the logs read from `head`); the receiver of the items. Owns the replica's
/// count in the balancer from here on: given back when the stream ends, or at once on error
/// (`before`: what the replica died before, for the message).
pub(super) fn open_follow(
    s: Arc<Serving>,
    actor: ActorId,
    node: Option<u32>,
    method: &str,
    key: Vec<u8>,
    head: &wire::Response,
    before: &str,
) -> Result<mpsc::Receiver<Chunk>, Fail> {
    let Some(shared) = s.shared.upgrade() else {
        s.release(actor);
        return Err(Fail::Internal("the node shut down".into()));
    };
    let task = match submit_to(&s, &shared, actor, node, method, true, wire::call_args(&key)) {
        Ok(p) => p.ret.task,
        Err(_) => {
            s.mark_dead(actor);
            return Err(Fail::Died(format!("it died before {before}")));
        }
    };
    drop(shared);
    let rid = head
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(b"x-request-id"))
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default();
    let (tx, rx) = mpsc::channel(BUFFERED);
    tokio::spawn(follow(s, actor, node, key, task, tx, rid));
    Ok(rx)
}

/// How a stream's following ended.
enum Outcome {
    /// The generator ended (or the replica's call failed before any item: nothing to say).
    End,
    /// The generator raised (or an item could not be read): the message.
    Failed(String),
    /// The client left.
    Left,
    /// The node is shutting down.
    Gone,
}

/// Takes the stream's items in order and sends them to the body, until the stream ends or the
/// client leaves; then lets go of the stream's objects, cancels the generator if the client
/// left, and gives the replica back.
async fn follow(
    s: Arc<Serving>,
    actor: ActorId,
    node: Option<u32>,
    key: Vec<u8>,
    task: TaskId,
    tx: mpsc::Sender<Chunk>,
    rid: String,
) {
    let weak = s.shared.clone();
    let mut index = 2u32;
    let mut sent = 1u32; // the head carried the first chunk
    let outcome = loop {
        let item = ObjectId::for_return(task, index);
        let Some(shared) = weak.upgrade() else { break Outcome::Gone };
        let slot = Arc::new(Slot::default());
        let (wake, woken) = oneshot::channel();
        *slot.waker.lock() = Some(wake);
        let reg = shared.with(|st, out| {
            let wid = st.sched.stream_next(Holder::Local, WaitOwner::Local, item, out)?;
            let before = out.len();
            out.retain(|a| !matches!(a, Action::WakeLocal { waiter } if *waiter == wid));
            let now = out.len() < before;
            if !now {
                st.local.insert(wid, slot.clone());
            }
            Some((wid, now))
        });
        crate::outbox::flush_queued();
        drop(shared);
        let Some((wid, now)) = reg else { break Outcome::End };
        if !now {
            tokio::select! {
                r = woken => if r.is_err() { break Outcome::Gone },
                _ = tx.closed() => {
                    if let Some(sh) = weak.upgrade() {
                        sh.with(|st, _| {
                            st.sched.remove_local_waiter(wid);
                            st.local.remove(&wid);
                        });
                    }
                    break Outcome::Left;
                }
            }
        }
        let Some(shared) = weak.upgrade() else { break Outcome::Gone };
        match shared.with(|st, out| st.sched.stream_take(Holder::Local, item, out)) {
            StreamStep::End => break Outcome::End,
            StreamStep::Item { .. } => {
                let result = shared.state.lock().sched.result_of(&item);
                let chunk = match result {
                    Ok(v) => read_value(&shared, &v).map_err(|f| match f {
                        Fail::Internal(m) | Fail::Died(m) => m,
                        _ => "an item could not be read".into(),
                    }),
                    Err(e) => Err(format!("{}: {}", e.task_name, e.message)),
                };
                shared.with(|st, out| st.sched.decref(Holder::Local, &[item], out));
                drop(shared);
                index += 1;
                match chunk {
                    Ok(b) if b.is_empty() => {} // a zero-size chunk would end the body
                    Ok(b) => {
                        if tx.send(Chunk::Data(Bytes::from(b))).await.is_err() {
                            break Outcome::Left;
                        }
                        sent += 1;
                    }
                    Err(m) => break Outcome::Failed(m),
                }
                // Items taken (into the body's channel): the producer may run WINDOW past.
                let taken = index - 2;
                if taken.is_multiple_of(CREDIT_EVERY) {
                    credit(&s, actor, node, &key, taken);
                }
            }
        }
    };
    if let Some(shared) = weak.upgrade() {
        shared.with(|st, out| {
            st.sched.stream_release(Holder::Local, task, index, out);
            st.sched.decref(Holder::Local, &[ObjectId::for_return(task, 1)], out);
        });
        crate::outbox::flush_queued();
    }
    match outcome {
        Outcome::Failed(why) => {
            crate::diag::event!(
                Warn,
                "volley: serve: request {rid}: the stream failed after {sent} chunks (the client \
                 gets an incomplete body): {why}"
            );
            let _ = tx.send(Chunk::Failed).await;
        }
        Outcome::Left => cancel(&s, actor, node, &key).await,
        Outcome::End | Outcome::Gone => {}
    }
    s.release(actor);
}

/// Tells the replica that `taken` items of stream `key` were taken (`_streaming.Credit`); the
/// call's answer is waited for in a task of its own, only to let go of it.
fn credit(s: &Arc<Serving>, actor: ActorId, node: Option<u32>, key: &[u8], taken: u32) {
    let Some(shared) = s.shared.upgrade() else { return };
    let Ok(n) = u8::try_from(key.len()) else { return };
    let mut arg = Vec::with_capacity(5 + key.len());
    arg.push(n);
    arg.extend_from_slice(key);
    arg.extend_from_slice(&taken.to_le_bytes());
    let submitted = submit_to(s, &shared, actor, node, CREDIT_METHOD, false, wire::call_args(&arg));
    drop(shared);
    if let Ok(p) = submitted {
        tokio::spawn(finish(s.shared.clone(), p));
    }
}

/// Asks the replica to stop the stream `key` (its client left) and waits until it did (at
/// most `CANCEL_WAIT`).
async fn cancel(s: &Serving, actor: ActorId, node: Option<u32>, key: &[u8]) {
    let Some(shared) = s.shared.upgrade() else { return };
    let submitted = submit_to(s, &shared, actor, node, CANCEL_METHOD, false, wire::call_args(key));
    drop(shared);
    if let Ok(p) = submitted {
        let _ = tokio::time::timeout(CANCEL_WAIT, finish(s.shared.clone(), p)).await;
    }
}

/// Submits a call of `actor`'s `method` (streaming or not) with `args`; as `super::submit`,
/// unless the engine knows the actor is dead. The caller holds the call's return (index 1).
pub(super) fn submit_to(
    s: &Serving,
    shared: &Shared,
    actor: ActorId,
    node: Option<u32>,
    method: &str,
    streaming: bool,
    args: Vec<u8>,
) -> Result<Pending, Vec<u8>> {
    let options = Arc::new(TaskOptions { streaming, ..(*s.options).clone() });
    let call = CallOf { name: Arc::from(method), method, options };
    submit_call(s, shared, actor, node, call, args)
}

/// The response of a stream: its head's status and headers, and a body that sends the first
/// chunk and then each chunk as the follower hands it over.
pub(super) fn response(st: Streamed, rid: &str) -> Response {
    let Streamed { head, rx } = st;
    let first = (!head.body.is_empty()).then(|| Bytes::from(head.body));
    let mut r = Response::new(Body::new(StreamBody { first, rx, failing: None }));
    *r.status_mut() = StatusCode::from_u16(head.status).unwrap_or(StatusCode::OK);
    answer_headers(r.headers_mut(), &head.headers, rid);
    r
}

/// The body of a streamed response.
struct StreamBody {
    first: Option<Bytes>,
    rx: mpsc::Receiver<Chunk>,
    /// The generator failed: the error is given once this timer ends (`FLUSH_GRACE`).
    failing: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// How long a failed stream's body waits between its last chunk and its error. hyper drops
/// what it has not written yet when a body fails: on HTTP/1.1 what it buffered, on h2 the DATA
/// frames the connection's task has not yet written (the reset clears the stream's queue,
/// and that task runs apart from the body's). A moment for both to write what was sent, so
/// the client gets every chunk the generator yielded before the body breaks.
const FLUSH_GRACE: Duration = Duration::from_millis(100);

/// The error that ends a stream whose generator raised (hyper then closes the connection or
/// resets the h2 stream: the client sees an incomplete body).
#[derive(Debug, thiserror::Error)]
#[error("the replica's generator raised after the chunks sent")]
struct StreamFailed;

impl http_body::Body for StreamBody {
    type Data = Bytes;
    type Error = StreamFailed;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamFailed>>> {
        if let Some(b) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        if let Some(grace) = self.failing.as_mut() {
            return grace.as_mut().poll(cx).map(|()| Some(Err(StreamFailed)));
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Chunk::Data(b))) => Poll::Ready(Some(Ok(Frame::data(b)))),
            Poll::Ready(Some(Chunk::Failed)) => {
                let grace = self.failing.insert(Box::pin(tokio::time::sleep(FLUSH_GRACE)));
                grace.as_mut().poll(cx).map(|()| Some(Err(StreamFailed)))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(first: Option<&'static [u8]>) -> (StreamBody, mpsc::Sender<Chunk>) {
        let (tx, rx) = mpsc::channel(4);
        (StreamBody { first: first.map(Bytes::from_static), rx, failing: None }, tx)
    }

    fn poll(b: &mut StreamBody) -> Poll<Option<Result<Frame<Bytes>, StreamFailed>>> {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        http_body::Body::poll_frame(Pin::new(b), &mut cx)
    }

    fn data(p: Poll<Option<Result<Frame<Bytes>, StreamFailed>>>) -> Option<Bytes> {
        match p {
            Poll::Ready(Some(Ok(f))) => f.into_data().ok(),
            _ => None,
        }
    }

    #[test]
    fn the_body_sends_the_first_chunk_then_each_as_it_comes_then_ends() {
        let (mut b, tx) = body(Some(b"one"));
        assert_eq!(data(poll(&mut b)).as_deref(), Some(&b"one"[..]));
        assert!(poll(&mut b).is_pending(), "nothing more yet: the body waits");
        assert!(tx.try_send(Chunk::Data(Bytes::from_static(b"two"))).is_ok(), "room");
        assert_eq!(data(poll(&mut b)).as_deref(), Some(&b"two"[..]));
        drop(tx);
        assert!(matches!(poll(&mut b), Poll::Ready(None)), "a clean end");
    }

    #[test]
    fn a_failed_generator_ends_the_body_with_an_error_not_a_clean_end() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build();
        let rt = rt.expect("a runtime");
        let (mut b, tx) = body(None);
        assert!(tx.try_send(Chunk::Data(Bytes::from_static(b"a"))).is_ok(), "room");
        assert!(tx.try_send(Chunk::Failed).is_ok(), "room");
        let _in_rt = rt.enter();
        assert_eq!(data(poll(&mut b)).as_deref(), Some(&b"a"[..]));
        let t0 = std::time::Instant::now();
        assert!(poll(&mut b).is_pending(), "pending: hyper writes the chunks sent first");
        assert!(poll(&mut b).is_pending(), "still pending within the grace");
        rt.block_on(tokio::time::sleep(FLUSH_GRACE));
        assert!(matches!(poll(&mut b), Poll::Ready(Some(Err(StreamFailed)))));
        assert!(t0.elapsed() >= FLUSH_GRACE);
    }

    #[test]
    fn stream_heads_are_told_from_response_frames_by_their_magic() {
        assert!(is_head(b"VSS1\x00"));
        assert!(!is_head(b"VSR1\x00"));
        assert!(!is_head(b"VS"));
    }
}
