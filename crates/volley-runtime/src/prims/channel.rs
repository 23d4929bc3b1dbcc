//! CSP channels (`volley.channel`) on the node's primitive service: rendezvous and buffered
//! channels, alternation (select) over guards on this node's channels, poison, retire and
//! broadcast.
//!
//! Every op is a list of guards (a plain send or recv is a select of one guard that answers
//! `Done`/`Item` instead of `Selected`). An op that finds no ready guard leaves an offer on each
//! guarded channel's wait list (senders and receivers, FIFO) and one [`Wait`] naming them all.
//! Everything happens under the service's one lock, and an op is answered only by [`settle`],
//! which removes its `Wait` and all its offers first: so an op commits at most once, and a
//! select parked on several channels is gone from all of them when one fires.

use std::collections::{HashMap, HashSet, VecDeque};

use serde_bytes::ByteBuf;
use volley_proto::{prim_home, Guard, PrimOp, PrimResult, WorkerId, MAX_PRIM_ITEM};

use super::{Delivery, Inner, Parked, Waiter, Who};

type Key = (Who, u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Send,
    Recv,
    Select,
}

/// A parked op's guard on one channel: an item to send, or a recv (by `reg` on a broadcast
/// channel).
struct Offer {
    key: Key,
    index: u32,
    item: Vec<u8>,
    reg: u64,
}

struct Wait {
    kind: Kind,
    chans: Vec<u64>,
}

/// A registered end: it counts towards its side until it leaves; a broadcast reader end holds
/// its own buffer.
struct Reg {
    chan: u64,
    reader: bool,
    holder: Who,
    claimed: bool,
    buf: VecDeque<Vec<u8>>,
}

#[derive(Default)]
struct Channel {
    /// How errors name it: `'name' (#id)` or `#id`.
    label: String,
    capacity: u64,
    broadcast: bool,
    items: VecDeque<Vec<u8>>,
    senders: VecDeque<Offer>,
    receivers: VecDeque<Offer>,
    poisoned: bool,
    readers: u64,
    writers: u64,
    /// All readers retired: sends fail `Retired`.
    readers_retired: bool,
    /// All writers retired: a recv with nothing left to take fails `Retired`.
    writers_retired: bool,
    /// A broadcast channel's reader ends, in the order they joined.
    subs: Vec<u64>,
}

impl Channel {
    /// The room each broadcast reader's buffer has.
    fn sub_room(&self) -> usize {
        self.capacity.max(1) as usize
    }
}

/// The channels of one node, with their registered ends and parked ops.
#[derive(Default)]
pub(super) struct Chans {
    chans: HashMap<u64, Channel>,
    regs: HashMap<u64, Reg>,
    waits: HashMap<Key, Wait>,
    /// Turns a fair select's first guard.
    turn: u64,
    /// This node's workers' ends of channels on other nodes (their homes see only this node
    /// as the holder): retired here when the worker dies. And the forwarded joins and claims
    /// whose registration is still to come.
    remote_ends: HashMap<WorkerId, Vec<u64>>,
    joining: HashSet<(WorkerId, u64)>,
}

/// One guard of an op, owned.
struct G {
    chan: u64,
    reg: u64,
    send: Option<Vec<u8>>,
}

fn gone(chan: u64) -> PrimResult {
    PrimResult::Closed(format!(
        "channel #{chan} was made in another session, or on a node that has since left the \
         cluster"
    ))
}

fn poisoned(ch: &Channel) -> PrimResult {
    PrimResult::Poisoned(format!("channel {} was poisoned", ch.label))
}

fn retired(ch: &Channel, readers: bool) -> PrimResult {
    let side = if readers { "reader ends" } else { "writer ends" };
    PrimResult::Retired(format!("channel {}: all its {side} retired", ch.label))
}

fn result_for(kind: Kind, index: u32, source: u64, item: Option<Vec<u8>>) -> PrimResult {
    match (kind, item) {
        (Kind::Select, item) => {
            PrimResult::Selected { index, chan: source, item: item.map(ByteBuf::from) }
        }
        (_, Some(item)) => PrimResult::Item(item),
        (_, None) => PrimResult::Done,
    }
}

/// Makes a channel; answers its id.
pub(super) fn create(
    inner: &mut Inner,
    me: Waiter,
    capacity: u64,
    broadcast: bool,
    name: String,
    out: &mut Vec<Delivery>,
) {
    let id = inner.fresh_id();
    let label = if name.is_empty() { format!("#{id}") } else { format!("{name:?} (#{id})") };
    inner.chans.chans.insert(id, Channel { label, capacity, broadcast, ..Channel::default() });
    inner.answer(me, id, PrimResult::Created(id), out);
}

/// Runs a send, recv or select for `me`.
pub(super) fn op(
    inner: &mut Inner,
    me: Waiter,
    guards: Vec<Guard>,
    select: bool,
    skip: bool,
    priority: bool,
    out: &mut Vec<Delivery>,
) {
    let kind = match (select, guards.first()) {
        (true, _) => Kind::Select,
        (false, Some(Guard { send: Some(_), .. })) => Kind::Send,
        _ => Kind::Recv,
    };
    if guards.is_empty() {
        let msg = "select needs at least one guard".to_string();
        return inner.answer(me, 0, PrimResult::Error(msg), out);
    }
    let guards: Vec<G> = guards
        .into_iter()
        .map(|g| G { chan: g.chan, reg: g.reg, send: g.send.map(ByteBuf::into_vec) })
        .collect();
    // Bad input, and dead channels, first: nothing is committed then.
    let home = prim_home(guards[0].chan);
    if let Some(g) = guards.iter().find(|g| prim_home(g.chan) != home) {
        let msg = format!(
            "a select's channels must all live on one node: channel #{} lives on node {}, \
             channel #{} on node {} (a select across nodes is not supported yet)",
            guards[0].chan,
            home.0,
            g.chan,
            prim_home(g.chan).0
        );
        return inner.answer(me, 0, PrimResult::Error(msg), out);
    }
    for g in &guards {
        let Some(ch) = inner.chans.chans.get(&g.chan) else {
            return inner.answer(me, g.chan, gone(g.chan), out);
        };
        if let Some(item) = &g.send {
            if item.len() > MAX_PRIM_ITEM {
                let msg = format!(
                    "a channel message is at most {MAX_PRIM_ITEM} bytes pickled, this one is {}: \
                     send a volley.put() ref of it instead",
                    item.len()
                );
                return inner.answer(me, g.chan, PrimResult::Error(msg), out);
            }
        } else if ch.broadcast {
            let ok = inner.chans.regs.get(&g.reg).is_some_and(|r| r.chan == g.chan && r.reader);
            if !ok {
                let msg = format!(
                    "a recv on broadcast channel {} needs one of its reader ends \
                     (channel.reader()): each reader end gets every message",
                    g.chan
                );
                return inner.answer(me, g.chan, PrimResult::Error(msg), out);
            }
        }
        if ch.poisoned {
            return inner.answer(me, g.chan, poisoned(ch), out);
        }
    }
    let n = guards.len();
    let start = if select && !priority {
        inner.chans.turn = inner.chans.turn.wrapping_add(1);
        (inner.chans.turn % n as u64) as usize
    } else {
        0
    };
    for k in 0..n {
        let i = (start + k) % n;
        if ready(&inner.chans, &guards[i]) {
            let mut guards = guards;
            let g = guards.swap_remove(i);
            let (source, item) = fire(inner, g, out);
            return inner.answer(me, source, result_for(kind, i as u32, source, item), out);
        }
    }
    if let Some(r) = guards.iter().find_map(|g| dead(&inner.chans, g)) {
        return inner.answer(me, 0, r, out);
    }
    if skip {
        return inner.answer(me, 0, PrimResult::Empty, out);
    }
    let key = (me.who, me.req);
    let mut chans = Vec::with_capacity(n);
    for (i, g) in guards.into_iter().enumerate() {
        let Some(ch) = inner.chans.chans.get_mut(&g.chan) else { continue };
        let index = i as u32;
        match g.send {
            Some(item) => ch.senders.push_back(Offer { key, index, item, reg: 0 }),
            None => ch.receivers.push_back(Offer { key, index, item: Vec::new(), reg: g.reg }),
        }
        chans.push(g.chan);
    }
    inner.chans.waits.insert(key, Wait { kind, chans });
    inner.parked.insert(key, (0, Parked::Chan));
}

/// Whether guard `g` can commit now.
fn ready(chans: &Chans, g: &G) -> bool {
    let Some(ch) = chans.chans.get(&g.chan) else { return false };
    match (&g.send, ch.broadcast) {
        (Some(_), false) => {
            !ch.readers_retired
                && (!ch.receivers.is_empty() || (ch.items.len() as u64) < ch.capacity)
        }
        (None, false) => !ch.items.is_empty() || !ch.senders.is_empty(),
        (Some(_), true) => !ch.readers_retired && fits(chans, ch),
        (None, true) => chans.regs.get(&g.reg).is_some_and(|r| !r.buf.is_empty()),
    }
}

/// Whether a broadcast message fits now: there is a reader, and each has room or waits.
fn fits(chans: &Chans, ch: &Channel) -> bool {
    !ch.subs.is_empty()
        && ch.subs.iter().all(|s| {
            chans.regs.get(s).is_none_or(|r| r.buf.len() < ch.sub_room())
                || ch.receivers.iter().any(|o| o.reg == *s)
        })
}

/// The failure of guard `g` if it can never become ready (its other side retired).
fn dead(chans: &Chans, g: &G) -> Option<PrimResult> {
    let ch = chans.chans.get(&g.chan)?;
    match &g.send {
        Some(_) if ch.readers_retired => Some(retired(ch, true)),
        None if ch.writers_retired => Some(retired(ch, false)),
        _ => None,
    }
}

/// Commits ready guard `g`: returns where its item came from and the item a recv got.
fn fire(inner: &mut Inner, g: G, out: &mut Vec<Delivery>) -> (u64, Option<Vec<u8>>) {
    let c = g.chan;
    let Some(ch) = inner.chans.chans.get_mut(&c) else { return (c, None) };
    match (g.send, ch.broadcast) {
        (Some(item), false) => {
            if let Some(o) = ch.receivers.pop_front() {
                settle(inner, o.key, o.index, c, Some(item), out);
            } else {
                ch.items.push_back(item);
            }
            (c, None)
        }
        (None, false) => {
            if let Some(item) = ch.items.pop_front() {
                // Room for the first parked sender's item, behind the others.
                if let Some(o) = ch.senders.pop_front() {
                    ch.items.push_back(o.item);
                    settle(inner, o.key, o.index, c, None, out);
                }
                (c, Some(item))
            } else if let Some(o) = ch.senders.pop_front() {
                // Rendezvous: the sender's item goes straight to this receiver.
                settle(inner, o.key, o.index, c, None, out);
                (c, Some(o.item))
            } else {
                (c, None)
            }
        }
        (Some(item), true) => {
            broadcast(inner, c, item, out);
            (c, None)
        }
        (None, true) => {
            let item = inner.chans.regs.get_mut(&g.reg).and_then(|r| r.buf.pop_front());
            pump(inner, c, out);
            (g.reg, item)
        }
    }
}

/// Gives `item` to every reader end of broadcast channel `c` (each has room: see [`fits`]).
fn broadcast(inner: &mut Inner, c: u64, item: Vec<u8>, out: &mut Vec<Delivery>) {
    let Some(ch) = inner.chans.chans.get_mut(&c) else { return };
    let mut handed = Vec::new();
    for s in ch.subs.clone() {
        if let Some(pos) = ch.receivers.iter().position(|o| o.reg == s) {
            if let Some(o) = ch.receivers.remove(pos) {
                handed.push((o.key, o.index, s));
            }
        } else if let Some(r) = inner.chans.regs.get_mut(&s) {
            r.buf.push_back(item.clone());
        }
    }
    for (key, index, s) in handed {
        settle(inner, key, index, s, Some(item.clone()), out);
    }
}

/// Moves parked senders' items in while there is room (after a recv made some, or a broadcast
/// reader joined or left).
fn pump(inner: &mut Inner, c: u64, out: &mut Vec<Delivery>) {
    loop {
        let Some(ch) = inner.chans.chans.get_mut(&c) else { return };
        if ch.senders.is_empty() || ch.readers_retired {
            return;
        }
        if ch.broadcast {
            let ch = &inner.chans.chans[&c];
            if !fits(&inner.chans, ch) {
                return;
            }
            let Some(o) = inner.chans.chans.get_mut(&c).and_then(|ch| ch.senders.pop_front())
            else {
                return;
            };
            broadcast(inner, c, o.item, out);
            settle(inner, o.key, o.index, c, None, out);
        } else {
            if (ch.items.len() as u64) >= ch.capacity {
                return;
            }
            let Some(o) = ch.senders.pop_front() else { return };
            ch.items.push_back(o.item);
            settle(inner, o.key, o.index, c, None, out);
        }
    }
}

/// Removes parked op `key` from every wait list; its kind if it was parked.
fn forget(inner: &mut Inner, key: Key) -> Option<Kind> {
    let wait = inner.chans.waits.remove(&key)?;
    for c in &wait.chans {
        if let Some(ch) = inner.chans.chans.get_mut(c) {
            ch.senders.retain(|o| o.key != key);
            ch.receivers.retain(|o| o.key != key);
        }
    }
    inner.parked.remove(&key);
    Some(wait.kind)
}

/// Answers parked op `key`: guard `index` committed (`item`: what a recv got, from `source`).
fn settle(
    inner: &mut Inner,
    key: Key,
    index: u32,
    source: u64,
    item: Option<Vec<u8>>,
    out: &mut Vec<Delivery>,
) {
    if let Some(kind) = forget(inner, key) {
        let w = Waiter { who: key.0, req: key.1 };
        inner.answer(w, source, result_for(kind, index, source, item), out);
    }
}

/// Fails parked op `key` with `result`.
fn fail(inner: &mut Inner, key: Key, result: PrimResult, out: &mut Vec<Delivery>) {
    if forget(inner, key).is_some() {
        inner.answer(Waiter { who: key.0, req: key.1 }, 0, result, out);
    }
}

/// A parked op's asker stopped waiting: answered `Full` (a send) or `Empty` now.
pub(super) fn cancel(inner: &mut Inner, me: Waiter, out: &mut Vec<Delivery>) {
    if let Some(kind) = forget(inner, (me.who, me.req)) {
        let r = if kind == Kind::Send { PrimResult::Full } else { PrimResult::Empty };
        inner.answer(me, 0, r, out);
    }
}

/// Drops a parked op of a process that is gone (nothing is answered).
pub(super) fn drop_parked(inner: &mut Inner, key: (Who, u64)) {
    forget(inner, key);
}

/// Poisons channel `c`: its items are dropped and every parked op on it fails.
pub(super) fn poison(inner: &mut Inner, me: Waiter, c: u64, out: &mut Vec<Delivery>) {
    let Some(ch) = inner.chans.chans.get_mut(&c) else {
        return inner.answer(me, c, gone(c), out);
    };
    ch.poisoned = true;
    ch.items.clear();
    let keys: Vec<Key> = ch.senders.iter().chain(ch.receivers.iter()).map(|o| o.key).collect();
    for s in ch.subs.clone() {
        if let Some(r) = inner.chans.regs.get_mut(&s) {
            r.buf.clear();
        }
    }
    let r = poisoned(ch);
    for key in keys {
        fail(inner, key, r.clone(), out);
    }
    inner.answer(me, c, PrimResult::Done, out);
}

/// Registers an end of channel `c` held by `me`; answers its registration.
pub(super) fn join(inner: &mut Inner, me: Waiter, c: u64, reader: bool, out: &mut Vec<Delivery>) {
    if !inner.chans.chans.contains_key(&c) {
        return inner.answer(me, c, gone(c), out);
    }
    let reg = inner.fresh_id();
    let Some(ch) = inner.chans.chans.get_mut(&c) else { return };
    if reader {
        ch.readers += 1;
        if ch.broadcast {
            ch.subs.push(reg);
        }
    } else {
        ch.writers += 1;
    }
    let r = Reg { chan: c, reader, holder: me.who, claimed: false, buf: VecDeque::new() };
    inner.chans.regs.insert(reg, r);
    pump(inner, c, out);
    inner.answer(me, c, PrimResult::Created(reg), out);
}

/// `me` unpickled the end registered as `reg`: it holds it now (a new one if it was claimed).
pub(super) fn claim(
    inner: &mut Inner,
    me: Waiter,
    c: u64,
    reg: u64,
    reader: bool,
    out: &mut Vec<Delivery>,
) {
    match inner.chans.regs.get_mut(&reg) {
        Some(r) if !r.claimed && r.chan == c && r.reader == reader => {
            r.claimed = true;
            r.holder = me.who;
            inner.answer(me, c, PrimResult::Created(reg), out);
        }
        _ => join(inner, me, c, reader, out),
    }
}

/// End `reg` leaves; with `retire`, its side closes once all its ends retired.
pub(super) fn leave(inner: &mut Inner, reg: u64, retire: bool, out: &mut Vec<Delivery>) {
    let Some(r) = inner.chans.regs.remove(&reg) else { return };
    let c = r.chan;
    let Some(ch) = inner.chans.chans.get_mut(&c) else { return };
    let mut failed = Vec::new();
    if r.reader {
        ch.readers = ch.readers.saturating_sub(1);
        ch.subs.retain(|s| *s != reg);
        // A broadcast reader end's own parked recv has nothing left to wait for.
        failed.extend(ch.receivers.iter().filter(|o| o.reg == reg && reg != 0).map(|o| o.key));
        if retire && ch.readers == 0 {
            ch.readers_retired = true;
            failed.extend(ch.senders.iter().map(|o| o.key));
        }
    } else {
        ch.writers = ch.writers.saturating_sub(1);
        if retire && ch.writers == 0 {
            ch.writers_retired = true;
            failed.extend(ch.receivers.iter().map(|o| o.key));
        }
    }
    let r = retired(ch, r.reader);
    for key in failed {
        fail(inner, key, r.clone(), out);
    }
    pump(inner, c, out);
}

/// Process `w` (or every process of node `w`) is gone: the ends it held retire.
pub(super) fn drop_holder(inner: &mut Inner, w: Who, out: &mut Vec<Delivery>) {
    let held: Vec<u64> =
        inner.chans.regs.iter().filter(|(_, r)| r.holder == w).map(|(id, _)| *id).collect();
    for reg in held {
        leave(inner, reg, true, out);
    }
}

/// Gives back an item whose taker could not use it: to the first parked receiver, or to the
/// head of the channel's (or the broadcast reader end's) buffer. Whether `id` was a channel's.
pub(super) fn unget(inner: &mut Inner, id: u64, item: Vec<u8>, out: &mut Vec<Delivery>) -> bool {
    let (c, reg) = match inner.chans.regs.get(&id) {
        Some(r) => (r.chan, id),
        None if inner.chans.chans.contains_key(&id) => (id, 0),
        None => return false,
    };
    let Some(ch) = inner.chans.chans.get_mut(&c) else { return true };
    if ch.poisoned {
        return true;
    }
    if let Some(pos) = ch.receivers.iter().position(|o| o.reg == reg) {
        if let Some(o) = ch.receivers.remove(pos) {
            settle(inner, o.key, o.index, id, Some(item), out);
        }
    } else if reg != 0 {
        if let Some(r) = inner.chans.regs.get_mut(&reg) {
            r.buf.push_front(item);
        }
    } else {
        ch.items.push_front(item);
    }
    true
}

/// `who`'s op goes to another node: a worker's end registered or leaving there is noted, so
/// that its death retires it there too.
pub(super) fn forwarding(inner: &mut Inner, who: Who, req: u64, op: &PrimOp) {
    let Who::Worker(w) = who else { return };
    match op {
        // A travelling end (being pickled) is the unpickling process's once it claims it.
        PrimOp::ChanJoin { travelling: false, .. } | PrimOp::ChanClaim { .. } => {
            inner.chans.joining.insert((w, req));
        }
        PrimOp::ChanLeave { reg, .. } => {
            if let Some(ends) = inner.chans.remote_ends.get_mut(&w) {
                ends.retain(|r| r != reg);
            }
        }
        _ => {}
    }
}

/// The answer to `who`'s forwarded op `req` came: a registration is the worker's end now.
pub(super) fn forwarded_answer(inner: &mut Inner, who: Who, req: u64, result: &PrimResult) {
    let Who::Worker(w) = who else { return };
    if inner.chans.joining.remove(&(w, req)) {
        if let PrimResult::Created(reg) = result {
            inner.chans.remote_ends.entry(w).or_default().push(*reg);
        }
    }
}

/// Worker `w` died: its ends of other nodes' channels retire (no answer awaited).
pub(super) fn drop_remote_ends(inner: &mut Inner, w: WorkerId) {
    inner.chans.joining.retain(|(x, _)| *x != w);
    for reg in inner.chans.remote_ends.remove(&w).unwrap_or_default() {
        inner.forward(Who::Local, u64::MAX, reg, PrimOp::ChanLeave { reg, retire: true });
    }
}
