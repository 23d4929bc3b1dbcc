//! Pulling large values from other nodes, in chunks, straight into this node's store.
//!
//! A task from a peer names the large values it needs that this node has no copy of
//! (`PeerMsg::Task::fetch`, the scheduler's `Action::Pull`). For each, this node reserves the
//! whole segment in its store, then asks a node holding it (`PeerMsg::Fetch`): the relay the
//! sender named, else the sender itself. The holder answers with `PeerMsg::Chunk`s of at most
//! [`MAX_CHUNK`] bytes, in order, which go from the socket straight into the segment (spliced
//! into the store's memfd without TLS, so the kernel creates its pages filled instead of zeroing
//! them first; read into the mapping through TLS); a holder's writer takes turns between the
//! values it serves and the other messages on the connection. When the last chunk is in, the
//! segment is sealed and the scheduler gets the value (`peer_object`), so the tasks waiting for
//! it run. A holder that refuses (`NoObject`) or whose connection breaks sends the pull to the
//! next source; with none left the value fails with `ObjectLost`, and the tasks that need it
//! with it.
//!
//! Fetches travel on connections that already exist where they can: the sender's own
//! connection to this node for the sender (a driver accepts none), this node's link for a relay
//! (relays take tasks, so they listen). The answer comes back on the connection the request
//! came on.

use std::collections::{HashSet, VecDeque};
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use volley_proto::{
    encode, shm_layout, write_frame, FrameReader, Keep, NodeId, ObjectData, ObjectId, PeerMsg,
    ProtoError, ShmLoc, MAX_CHUNK,
};
use volley_store::{Lease, Owner};

use super::wire::{lease_bytes, lost, read_into_store, Outgoing};
use super::Cluster;
use crate::tls::Conn;

/// A connection as one side sees it: the peer, and whether this node opened it (its link).
pub(super) type Side = (NodeId, bool);

/// A value being pulled here.
pub(super) struct Pulling {
    layout: ShmLoc,
    contained: Vec<ObjectId>,
    dest: Dest,
    /// Bytes in so far (chunks come in order).
    received: u64,
    /// Asked now, and where to ask if it fails.
    source: Side,
    fallback: Option<Side>,
    /// Bumped when the pull moves to another source: bytes a reader was writing for an
    /// earlier one are not counted.
    attempt: u32,
    /// Readers writing a chunk into `dest` now (two just after a switch of source): it is not
    /// freed meanwhile.
    writers: u32,
    /// The pull failed while readers were writing: the last of them ends it.
    failed: Option<String>,
}

enum Dest {
    /// A segment of this node's store (its id, offset in the arena).
    Store { seg: u64, offset: u64 },
    /// No room in the store: a heap buffer, the value kept inline.
    Heap(Vec<u8>),
}

/// A value this node serves to a peer, in chunks (see [`Cluster::serve_start`]).
pub(super) struct Serving {
    id: ObjectId,
    lease: Lease,
    pos: u64,
}

impl Cluster {
    /// Starts pulling `id` (see the module's notes); `value` is its layout.
    pub(super) fn start_pull(
        self: &Arc<Self>,
        origin: NodeId,
        id: ObjectId,
        value: &ObjectData,
        relay: Option<NodeId>,
    ) {
        if self.pulls.lock().contains_key(&id) {
            return; // Already on its way.
        }
        let Some(layout) = value.shm.clone() else {
            return self.pulled(id, Err(format!("node {} sent no layout for it", origin.0)));
        };
        let (_, total) = shm_layout(layout.data_len, &layout.buffer_lens);
        if total != layout.size || layout.size == 0 {
            let why = format!("a value of {} bytes with a layout of {total}", layout.size);
            return self.pulled(id, Err(why));
        }
        let store = &self.shared.store;
        let dest = match store.alloc(Owner::Local, layout.size) {
            Ok((seg, offset)) if self.cfg.tls.is_none() => {
                // The chunks are spliced from the socket into the store's memory, which creates
                // its pages already filled (`receive_chunk`): nothing to back beforehand.
                Dest::Store { seg, offset }
            }
            Ok((seg, offset)) => {
                // Through TLS the chunks are read into the mapping, whose fresh pages the kernel
                // zeroes as it backs them. Backing them overlaps with the transfer; the reader
                // faults in what it reaches first. Populating never changes contents, so it is
                // harmless even if the segment is freed meanwhile.
                let (store, size) = (store.clone(), layout.size);
                let spawned = size >= 32 << 20
                    && std::thread::Builder::new()
                        .name("volley-populate".into())
                        .spawn(move || store.arena().populate_parallel(offset, size))
                        .is_ok();
                if !spawned {
                    self.shared.store.arena().populate(offset, layout.size);
                }
                Dest::Store { seg, offset }
            }
            Err(_) if layout.size as usize <= volley_proto::MAX_FRAME_SIZE => {
                Dest::Heap(vec![0u8; layout.size as usize])
            }
            Err(e) => {
                let why = format!("this node's object store has no room for it: {e}");
                return self.pulled(id, Err(why));
            }
        };
        let origin_side = (origin, false);
        let (source, fallback) = match relay {
            Some(r) if r != self.node_id() => ((r, true), Some(origin_side)),
            _ => (origin_side, None),
        };
        let contained = value.contained.clone();
        let p = Pulling {
            layout: *layout,
            contained,
            dest,
            received: 0,
            source,
            fallback,
            attempt: 0,
            writers: 0,
            failed: None,
        };
        self.pulls.lock().insert(id, p);
        self.ask(id, source);
    }

    /// Sends the `Fetch` for `id` to `source`; on to the next source if it cannot go. A link
    /// to a relay is opened on a thread of its own: a relay that hangs holds up only this pull,
    /// until the head declares it dead (`sources_left`).
    fn ask(self: &Arc<Self>, id: ObjectId, source: Side) {
        let (peer, link) = source;
        let tx =
            if link { self.links.lock().get(&peer).cloned() } else { self.incoming_from(peer) };
        let send = move |c: &Arc<Cluster>, tx: Option<(u64, std::sync::mpsc::Sender<Outgoing>)>| {
            let msg = Outgoing::Msg(Box::new(PeerMsg::Fetch { id }));
            let sent = tx.is_some_and(|(_, tx)| tx.send(msg).is_ok());
            if !sent {
                c.source_failed(id, source, &format!("node {} cannot be reached", peer.0));
            }
        };
        if tx.is_some() || !link {
            return send(self, tx);
        }
        let c = self.clone();
        let spawned = std::thread::Builder::new().name("volley-tcp-open".into()).spawn(move || {
            let tx = c.link_to(peer);
            send(&c, tx);
        });
        if spawned.is_err() {
            self.source_failed(id, source, "no thread to reach it");
        }
    }

    /// The cluster's view changed: pulls from nodes no longer in it go to their next source.
    pub(super) fn sources_left(self: &Arc<Self>, live: &HashSet<NodeId>) {
        let gone: Vec<(ObjectId, Side)> = self
            .pulls
            .lock()
            .iter()
            .filter(|(_, p)| !live.contains(&p.source.0))
            .map(|(id, p)| (*id, p.source))
            .collect();
        for (id, side) in gone {
            self.source_failed(id, side, "it left the cluster");
        }
    }

    /// `source` cannot serve `id`: the next source is asked, or the pull fails.
    fn source_failed(self: &Arc<Self>, id: ObjectId, source: Side, why: &str) {
        let next = {
            let mut pulls = self.pulls.lock();
            let Some(p) = pulls.get_mut(&id) else { return };
            if p.source != source {
                return;
            }
            match p.fallback.take() {
                Some(next) => {
                    p.source = next;
                    p.received = 0;
                    p.attempt += 1;
                    Some(next)
                }
                None => None,
            }
        };
        match next {
            Some(next) => self.ask(id, next),
            None => {
                let why = format!("pulling it from node {} failed: {why}", source.0 .0);
                self.fail_pull(id, why);
            }
        }
    }

    fn fail_pull(&self, id: ObjectId, why: String) {
        let removed = {
            let mut pulls = self.pulls.lock();
            if let Some(p) = pulls.get_mut(&id).filter(|p| p.writers > 0) {
                // Readers are writing into its segment: the last frees it and reports.
                p.failed = Some(why);
                return;
            }
            pulls.remove(&id)
        };
        self.free(removed);
        self.pulled(id, Err(why));
    }

    fn free(&self, p: Option<Pulling>) {
        if let Some(Pulling { dest: Dest::Store { seg, .. }, .. }) = p {
            self.shared.store.release(seg, Owner::Local);
        }
    }

    /// The outcome of a pull goes to the scheduler.
    fn pulled(&self, id: ObjectId, result: Result<ObjectData, String>) {
        let result = result.map_err(|why| {
            let message = format!("a value a task needs could not be brought here: {why}");
            lost("", message)
        });
        self.shared.with(|st, out| st.sched.peer_object(id, result, Vec::new(), out));
    }

    /// A connection ended: pulls waiting on it go to their next source.
    pub(super) fn side_closed(self: &Arc<Self>, side: Side) {
        let ids: Vec<ObjectId> =
            self.pulls.lock().iter().filter(|(_, p)| p.source == side).map(|(id, _)| *id).collect();
        for id in ids {
            self.source_failed(id, side, "its connection closed");
        }
    }

    /// `NoObject` from `side`.
    pub(super) fn pull_refused(self: &Arc<Self>, side: Side, id: ObjectId, reason: &str) {
        self.source_failed(id, side, reason);
    }

    /// Reads the bytes of a `Chunk` from `side` into the value's segment. Returns the value
    /// once its last chunk is in (as the `Object` message the scheduler takes).
    pub(super) fn receive_chunk(
        &self,
        r: &mut FrameReader<&Conn>,
        side: Side,
        id: ObjectId,
        offset: u64,
        len: u64,
    ) -> Result<Option<PeerMsg>, ProtoError> {
        if len == 0 || len > MAX_CHUNK {
            return Err(ProtoError::Handshake(format!("a chunk of {len} bytes")));
        }
        let dst = {
            let mut pulls = self.pulls.lock();
            match pulls.get_mut(&id) {
                Some(p) if p.source == side && p.failed.is_none() => {
                    if offset != p.received || offset + len > p.layout.size {
                        return Err(ProtoError::Handshake(format!(
                            "a chunk at {offset} (+{len}) of a value of {} bytes, {} in",
                            p.layout.size, p.received
                        )));
                    }
                    let (ptr, at) = match &mut p.dest {
                        Dest::Store { offset: base, .. } => (
                            self.shared.store.arena().ptr(*base + offset, len),
                            Some(*base + offset),
                        ),
                        Dest::Heap(buf) => (Some(buf[offset as usize..].as_mut_ptr()), None),
                    };
                    if ptr.is_some() {
                        p.writers += 1;
                    }
                    ptr.map(|ptr| (ptr, at, p.attempt))
                }
                _ => None,
            }
        };
        let Some((dst, store_at, attempt)) = dst else {
            // Not (or no longer) pulled from there: the bytes are read and dropped.
            let mut scratch = vec![0u8; len as usize];
            r.read_raw(&mut scratch)?;
            return Ok(None);
        };
        // SAFETY: the range lies inside the segment (or buffer) reserved for this pull, which
        // stays allocated while it has writers (a failure meanwhile leaves the freeing to the
        // last of them, below); nothing reads it before the pull ends. Another source's reader may write
        // the same bytes of the same value at the same time after a switch: equal bytes.
        let dst = unsafe { std::slice::from_raw_parts_mut(dst, len as usize) };
        let read = match store_at {
            // (Its pages were populated at the start if they are read into the mapping.)
            Some(at) => read_into_store(r, self.shared.store.arena(), at, dst, false),
            None => r.read_raw(dst),
        };
        let (done, failed) = {
            let mut pulls = self.pulls.lock();
            let Some(p) = pulls.get_mut(&id) else { return read.map(|_| None) };
            p.writers -= 1;
            if p.failed.is_some() && p.writers > 0 {
                (None, None) // The last writer ends it.
            } else if p.failed.is_some() {
                let p = pulls.remove(&id);
                let why = p.as_ref().and_then(|p| p.failed.clone()).unwrap_or_default();
                (p, Some(why))
            } else if read.is_err() || p.attempt != attempt {
                (None, None) // This source is done for (its reader ends) or was replaced.
            } else {
                p.received += len;
                if p.received < p.layout.size {
                    (None, None)
                } else {
                    (pulls.remove(&id), None)
                }
            }
        };
        if let Some(why) = failed {
            self.free(done);
            self.pulled(id, Err(why));
            return read.map(|_| None);
        }
        read?;
        self.bytes_received.fetch_add(len, Ordering::Relaxed);
        let Some(p) = done else { return Ok(None) };
        let value = match p.dest {
            Dest::Store { seg, offset } => {
                let sealed = self
                    .shared
                    .store
                    .seal(Owner::Local, seg, p.layout.size, None)
                    .map_err(|e| ProtoError::Handshake(e.to_string()))?;
                let mut v = ObjectData::inline(Vec::new(), Vec::new(), p.contained);
                v.shm = Some(Box::new(ShmLoc { seg, offset, ..p.layout }));
                v.keep = Keep::new(sealed);
                v
            }
            Dest::Heap(buf) => ObjectData::from_segment(&p.layout, &buf, p.contained)
                .ok_or_else(|| ProtoError::Handshake("value shorter than its layout".into()))?,
        };
        Ok(Some(PeerMsg::Object { id, result: Ok(value), objects: Vec::new() }))
    }

    /// Begins serving a value a peer asked for: a lease keeps it in memory until the last chunk
    /// is written. `Err` is the reason to send back instead.
    pub(super) fn serve_start(
        &self,
        id: ObjectId,
        value: Result<Arc<ObjectData>, String>,
    ) -> Result<Serving, String> {
        let v = value?;
        let loc = v.shm.as_ref().ok_or("it is not in this node's store")?;
        let lease = self.shared.store.lease_local(loc.seg).map_err(|e| e.to_string())?;
        if lease.len() as u64 != loc.size || loc.size == 0 || lease.ptr().is_null() {
            return Err(format!("segment {} is not the size its layout says", loc.seg));
        }
        Ok(Serving { id, lease, pos: 0 })
    }
}

/// Writes the next chunk of the value served longest ago and puts it back in line if more
/// remains (values served at once take turns, a chunk each). Returns the bytes written.
pub(super) fn write_chunk(
    w: &mut impl Write,
    serving: &mut VecDeque<Serving>,
) -> Result<u64, ProtoError> {
    let Some(mut s) = serving.pop_front() else { return Ok(0) };
    let bytes = lease_bytes(&s.lease);
    let len = MAX_CHUNK.min(bytes.len() as u64 - s.pos);
    let msg = PeerMsg::Chunk { id: s.id, offset: s.pos, len };
    write_frame(w, &encode(&msg)?)?;
    w.write_all(&bytes[s.pos as usize..(s.pos + len) as usize])?;
    s.pos += len;
    if s.pos < bytes.len() as u64 {
        serving.push_back(s);
    }
    Ok(len)
}
