//! The translation between what goes over links and what the scheduler knows: a scheduler
//! action (or a message of the runtime's own) becomes a `PeerMsg` with leases on the stored
//! values whose bytes follow it, and the bytes that follow an incoming message go straight into
//! this node's store.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use volley_proto::{
    shm_layout, FrameReader, Keep, ObjectData, ObjectId, PeerMsg, ProtoError, ShmLoc, TaskResult,
    TaskSpec,
};
use volley_sched::Action;
use volley_store::{Arena, Lease, Owner};

use super::Cluster;
use crate::tls::Conn;

/// What a link's writer sends: a scheduler action meant for the peer (turned into its message
/// by the writer, which copies the values out of the store), or a message of the runtime's own
/// (pulling a value, worker output), which the scheduler never sees. The message is boxed so
/// that the channel's slots stay the size of an action (a `PeerMsg` is larger).
// An action is sent by value, as before the split: boxing it would cost an allocation per task.
#[allow(clippy::large_enum_variant)]
pub(super) enum Outgoing {
    Action(Action),
    Msg(Box<PeerMsg>),
}

/// Reads the raw bytes that follow the last frame into the store at `at`, `dst` being that range
/// of the mapping. Without TLS they are spliced from the socket into the store's memfd, which
/// creates fresh pages filled instead of zeroed first (`Arena::fill_from`); through TLS they are
/// read into the mapping, its pages backed first if `populate` says so.
pub(super) fn read_into_store(
    r: &mut FrameReader<&Conn>,
    arena: &Arena,
    at: u64,
    dst: &mut [u8],
    populate: bool,
) -> Result<(), ProtoError> {
    let conn: &Conn = r.get_ref();
    match conn.tcp_fd() {
        Some(fd) => {
            let n = r.take_buffered(dst) as u64;
            arena.fill_from(fd, at + n, dst.len() as u64 - n).map_err(ProtoError::from)
        }
        None => {
            if populate {
                arena.populate(at, dst.len() as u64);
            }
            r.read_raw(dst)
        }
    }
}

/// The values of a message whose bytes follow it, in order.
fn bulk_values(msg: &mut PeerMsg) -> Vec<&mut ObjectData> {
    let mut v: Vec<&mut ObjectData> = Vec::new();
    match msg {
        PeerMsg::Task { spec, objects, .. } => {
            v.push(&mut spec.args);
            v.extend(objects.iter_mut().map(|(_, o)| o));
        }
        PeerMsg::Done { result, objects, .. } => {
            if let TaskResult::Ok(vs) = result {
                v.extend(vs.iter_mut());
            }
            v.extend(objects.iter_mut().map(|(_, o)| o));
        }
        PeerMsg::Object { result, objects, .. } => {
            if let Ok(o) = result {
                v.push(o);
            }
            v.extend(objects.iter_mut().map(|(_, o)| o));
        }
        _ => {}
    }
    v.retain(|o| o.shm.is_some());
    v
}

pub(super) fn lease_bytes(l: &Lease) -> &[u8] {
    // SAFETY: the lease pins the segment in memory, read-only, for as long as it lives.
    unsafe { std::slice::from_raw_parts(l.ptr(), l.len()) }
}

pub(super) fn lost(task: &str, message: String) -> volley_proto::ErrorPayload {
    volley_proto::ErrorPayload {
        kind: volley_proto::ErrorKind::ObjectLost,
        task_name: task.to_string(),
        message,
        traceback: String::new(),
        exception: None,
        pid: std::process::id(),
    }
}

pub(super) fn msg_name(m: &PeerMsg) -> &'static str {
    match m {
        PeerMsg::Join { .. } => "Join",
        PeerMsg::Welcome { .. } => "Welcome",
        PeerMsg::Heartbeat { .. } => "Heartbeat",
        PeerMsg::View { .. } => "View",
        PeerMsg::Hello { .. } => "Hello",
        PeerMsg::Task { .. } => "Task",
        PeerMsg::Done { .. } => "Done",
        PeerMsg::Cancel { .. } => "Cancel",
        PeerMsg::Refused { .. } => "Refused",
        PeerMsg::Release { .. } => "Release",
        PeerMsg::Object { .. } => "Object",
        PeerMsg::ActorState { .. } => "ActorState",
        PeerMsg::Kill { .. } => "Kill",
        PeerMsg::Reserve { .. } => "Reserve",
        PeerMsg::Reserved { .. } => "Reserved",
        PeerMsg::PgRelease { .. } => "PgRelease",
        PeerMsg::Steal { .. } => "Steal",
        PeerMsg::Returned { .. } => "Returned",
        PeerMsg::Started { .. } => "Started",
        PeerMsg::Status => "Status",
        PeerMsg::Head(_) => "Head",
        PeerMsg::HeadReply(_) => "HeadReply",
        PeerMsg::StateRows(_) => "StateRows",
        PeerMsg::Node(_) => "Node",
        PeerMsg::NodeReply(_) => "NodeReply",
        PeerMsg::SubscribeLogs => "SubscribeLogs",
        PeerMsg::Log { .. } => "Log",
        PeerMsg::Fetch { .. } => "Fetch",
        PeerMsg::Chunk { .. } => "Chunk",
        PeerMsg::NoObject { .. } => "NoObject",
        PeerMsg::Prim { .. } => "Prim",
        PeerMsg::PrimReply { .. } => "PrimReply",
    }
}

impl Cluster {
    /// The message for an action, and the leases on the stored values whose bytes follow it (in
    /// the order [`bulk_values`] lists them).
    pub(super) fn to_msg(&self, a: Action) -> Option<(PeerMsg, Vec<Lease>)> {
        let mut leases = Vec::new();
        match a {
            Action::Spill {
                peer,
                spec,
                function,
                objects,
                packages,
                routes,
                errors,
                cached,
                fetch,
            } => {
                let mut spec: TaskSpec = (*spec).clone();
                let prepared = self.prepare(&spec.args, &mut leases).and_then(|args| {
                    spec.args = args;
                    self.prepare_all(&objects, &mut leases)
                });
                let objects = match prepared {
                    Ok(o) => o,
                    Err(e) => {
                        let message = format!(
                            "an argument could not be read to send it to node {}: {e}",
                            peer.0
                        );
                        let result =
                            TaskResult::Err { error: lost(&spec.name, message), retryable: false };
                        let tid = spec.task_id;
                        self.shared
                            .with(|st, out| st.sched.peer_done(peer, tid, result, Vec::new(), out));
                        return None;
                    }
                };
                let bytes = |b: Arc<[u8]>| serde_bytes::ByteBuf::from(b.to_vec());
                let msg = PeerMsg::Task {
                    function: function.map(bytes),
                    packages: packages.into_iter().map(|(h, b)| (h, bytes(b))).collect(),
                    errors: errors.into_iter().map(|(id, e)| (id, (*e).clone())).collect(),
                    // Pulled by the peer: the layout goes, not the bytes.
                    fetch: fetch
                        .into_iter()
                        .map(|(id, v, relay)| (id, layout_of(&v), relay))
                        .collect(),
                    spec,
                    objects,
                    routes,
                    cached,
                };
                Some((msg, leases))
            }
            Action::PeerDone { peer, task, result, objects, mut kept, routes } => {
                // Copies of large results are kept while the store has room to spare: past half
                // of it they would only be spilled to disk for tasks that may never come.
                let store = &self.shared.store;
                if !kept.is_empty() && store.used() > store.capacity() / 2 {
                    let ids = std::mem::take(&mut kept);
                    self.shared.with(|st, out| st.sched.peer_release(peer, &ids, out));
                }
                let prepared = result.map_err(|e| (*e).clone()).and_then(|vs| {
                    let vs: Result<Vec<_>, String> =
                        vs.iter().map(|v| self.prepare(v, &mut leases)).collect();
                    vs.map_err(|why| {
                        lost("", format!("the result could not be read to send it back: {why}"))
                    })
                });
                let result = match prepared {
                    Ok(vs) => TaskResult::Ok(vs),
                    Err(error) => {
                        leases.clear();
                        TaskResult::Err { error, retryable: false }
                    }
                };
                let objects = self.prepare_referred(&objects, &mut leases);
                Some((PeerMsg::Done { task, result, objects, kept, routes }, leases))
            }
            Action::PeerCancel { task, force, .. } => {
                Some((PeerMsg::Cancel { task, force }, leases))
            }
            Action::PeerRelease { ids, .. } => Some((PeerMsg::Release { ids }, leases)),
            Action::PeerKill { actor, no_restart, .. } => {
                Some((PeerMsg::Kill { actor, no_restart }, leases))
            }
            Action::PeerReserve { pg, bundles, .. } => {
                Some((PeerMsg::Reserve { pg, bundles }, leases))
            }
            Action::PeerReserved { pg, bundles, ok, .. } => {
                Some((PeerMsg::Reserved { pg, bundles, ok }, leases))
            }
            Action::PeerPgRelease { pg, remove, .. } => {
                Some((PeerMsg::PgRelease { pg, remove }, leases))
            }
            Action::PeerSteal { max, .. } => Some((PeerMsg::Steal { max }, leases)),
            Action::PeerReturned { tasks, .. } => Some((PeerMsg::Returned { tasks }, leases)),
            Action::PeerStarted { task, .. } => Some((PeerMsg::Started { task }, leases)),
            Action::PeerNotice { line, .. } => {
                let lines = serde_bytes::ByteBuf::from(format!("{line}\n").into_bytes());
                Some((PeerMsg::Log { fd: 2, lines }, leases))
            }
            Action::PeerObject { id, result, objects, .. } => {
                let result = match result {
                    Ok(v) => self.prepare(&v, &mut leases).map_err(|why| {
                        lost("", format!("the object could not be read to send it on: {why}"))
                    }),
                    Err(e) => Err((*e).clone()),
                };
                if result.is_err() {
                    leases.clear();
                }
                let objects = self.prepare_referred(&objects, &mut leases);
                Some((PeerMsg::Object { id, result, objects }, leases))
            }
            Action::PeerActorState { actor, pid, restarts, death, log, .. } => {
                let death = death.map(|e| (*e).clone());
                Some((PeerMsg::ActorState { actor, pid, restarts, death, log }, leases))
            }
            // Not for peers (`dispatch` only passes the ones above).
            Action::Execute { .. }
            | Action::Send { .. }
            | Action::GetReply { .. }
            | Action::WakeLocal { .. }
            | Action::LocalReady { .. }
            | Action::Spawn { .. }
            | Action::Kill { .. }
            | Action::Pull { .. }
            | Action::PeerServe { .. }
            | Action::Log(_) => None,
        }
    }

    /// The values a result or object refers to, as sent (their leases added to `leases`); none
    /// at all if one of them cannot be read, so the message still goes.
    fn prepare_referred(
        &self,
        objects: &[(ObjectId, Arc<ObjectData>)],
        leases: &mut Vec<Lease>,
    ) -> Vec<(ObjectId, ObjectData)> {
        let mut extra = Vec::new();
        match self.prepare_all(objects, &mut extra) {
            Ok(o) => {
                leases.extend(extra);
                o
            }
            Err(_) => Vec::new(),
        }
    }

    fn prepare_all(
        &self,
        objects: &[(ObjectId, Arc<ObjectData>)],
        leases: &mut Vec<Lease>,
    ) -> Result<Vec<(ObjectId, ObjectData)>, String> {
        objects.iter().map(|(id, v)| Ok((*id, self.prepare(v, leases)?))).collect()
    }

    /// The value as sent: a small one inline; a stored one as its layout, its bytes to follow
    /// the frame (pinned by a lease until written).
    fn prepare(&self, v: &ObjectData, leases: &mut Vec<Lease>) -> Result<ObjectData, String> {
        let Some(loc) = &v.shm else {
            return Ok(ObjectData::inline(v.data.clone(), v.buffers.clone(), v.contained.clone()));
        };
        let lease = self.shared.store.lease_local(loc.seg).map_err(|e| e.to_string())?;
        if lease.len() as u64 != loc.size || lease.ptr().is_null() {
            return Err(format!("segment {} is not the size its layout says", loc.seg));
        }
        leases.push(lease);
        Ok(layout_of(v))
    }

    /// Reads the bytes that follow a message for its stored values, straight into this node's
    /// store (or inline if the store has no room).
    pub(super) fn receive_bulk(
        &self,
        r: &mut FrameReader<&Conn>,
        msg: &mut PeerMsg,
    ) -> Result<(), ProtoError> {
        let store = &self.shared.store;
        for v in bulk_values(msg) {
            let Some(loc) = v.shm.clone() else { continue };
            let (_, total) = shm_layout(loc.data_len, &loc.buffer_lens);
            self.bytes_received.fetch_add(loc.size, Ordering::Relaxed);
            if total != loc.size || loc.size == 0 {
                return Err(ProtoError::Handshake(format!(
                    "a value of {} bytes with a layout of {total}",
                    loc.size
                )));
            }
            match store.alloc(Owner::Local, loc.size) {
                Ok((seg, offset)) => {
                    let Some(ptr) = store.arena().ptr(offset, loc.size) else {
                        store.release(seg, Owner::Local);
                        return Err(ProtoError::Handshake("allocation outside the store".into()));
                    };
                    // SAFETY: the segment was just allocated for us alone and lies inside the
                    // mapping; nothing reads it before it is sealed below.
                    let dst = unsafe { std::slice::from_raw_parts_mut(ptr, loc.size as usize) };
                    let read = read_into_store(r, store.arena(), offset, dst, true);
                    if let Err(e) = read {
                        store.release(seg, Owner::Local);
                        return Err(e);
                    }
                    let sealed = store
                        .seal(Owner::Local, seg, loc.size, None)
                        .map_err(|e| ProtoError::Handshake(e.to_string()))?;
                    v.shm = Some(Box::new(ShmLoc { seg, offset, ..*loc }));
                    v.keep = Keep::new(sealed);
                }
                Err(_) if loc.size as usize <= volley_proto::MAX_FRAME_SIZE => {
                    let mut buf = vec![0u8; loc.size as usize];
                    r.read_raw(&mut buf)?;
                    *v = ObjectData::from_segment(&loc, &buf, v.contained.clone()).ok_or_else(
                        || ProtoError::Handshake("value shorter than its layout".into()),
                    )?;
                }
                Err(e) => return Err(ProtoError::Handshake(format!("no room for a value: {e}"))),
            }
        }
        Ok(())
    }
}

/// The layout of a stored value without its bytes: what a peer needs to pull it (`Fetch`).
fn layout_of(v: &ObjectData) -> ObjectData {
    let mut layout = ObjectData::inline(Vec::new(), Vec::new(), v.contained.clone());
    layout.shm = v.shm.clone();
    layout
}
