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
use volley_proto::{prim_home, Guard, PrimOp, PrimResult, WorkerId, MAX_PRIM_ITEM, PRIM_RECALL};

use super::{Delivery, Inner, Parked, Waiter, Who, BATCH_BYTES};

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
    /// Extra items of batches (`ChanRecvMany`) waiting in `holder`'s buffer: they keep their
    /// room in the buffer until handed out (`Ack`), so senders feel the same backpressure.
    lent: u64,
    holder: Option<WorkerId>,
    /// The holder was asked to give them back (another receiver waits): until it answers, no
    /// item goes to another receiver, which could otherwise get a newer one first.
    recalling: bool,
    /// Who received last and how many times in a row: a batch goes only to a lone receiver.
    last_recv: Option<Who>,
    recv_solo: u32,
    /// Slots of the buffer reserved for workers' sends (`Granted`), by worker, and their sum.
    credits: HashMap<WorkerId, u64>,
    reserved: u64,
    /// Workers asked to give their slots back (a sender parked): none is granted more till
    /// they answer.
    credit_recalled: HashSet<WorkerId>,
    /// Who sent last and how many times in a row: slots go only to a lone sender.
    last_send: Option<Who>,
    send_solo: u32,
}

/// The most slots one grant reserves for a sender.
const MAX_GRANT: u64 = 64;

fn streak(last: &mut Option<Who>, solo: &mut u32, who: Who) {
    if *last == Some(who) {
        *solo = solo.saturating_add(1);
    } else {
        *last = Some(who);
        *solo = 1;
    }
}

impl Channel {
    /// Free slots of a buffered channel: its capacity less the items held, lent out in
    /// batches and reserved for senders.
    fn room(&self) -> u64 {
        self.capacity.saturating_sub(self.items.len() as u64 + self.lent + self.reserved)
    }

    /// Free slots for a send of `who`: the slots reserved for it are its own.
    fn room_for(&self, who: Who) -> u64 {
        let own = match who {
            Who::Worker(w) => self.credits.get(&w).copied().unwrap_or(0),
            _ => 0,
        };
        self.room() + own
    }

    /// A send of `who` takes one of the slots reserved for it, if it holds any.
    fn use_credit(&mut self, who: Who) {
        let Who::Worker(w) = who else { return };
        if let Some(n) = self.credits.get_mut(&w).filter(|n| **n > 0) {
            *n -= 1;
            self.reserved = self.reserved.saturating_sub(1);
        }
    }

    /// Whether `who` must wait for a batch held by another process before it takes an item.
    fn held_from(&self, who: Who) -> bool {
        self.recalling || self.holder.is_some_and(|h| Who::Worker(h) != who)
    }

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
        if ready(&inner.chans, &guards[i], me.who) {
            let mut guards = guards;
            let g = guards.swap_remove(i);
            let c = g.chan;
            let sent = g.send.is_some();
            let (source, item) = fire(inner, g, me.who, out);
            let mut result = result_for(kind, i as u32, source, item);
            if let (Some(ch), false) = (inner.chans.chans.get_mut(&c), select) {
                if sent {
                    streak(&mut ch.last_send, &mut ch.send_solo, me.who);
                    if let Some(n) = grant(ch, me.who) {
                        result = PrimResult::Granted(n);
                    }
                } else {
                    streak(&mut ch.last_recv, &mut ch.recv_solo, me.who);
                }
            }
            return inner.answer(me, source, result, out);
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
        let sends = g.send.is_some();
        match g.send {
            Some(item) => ch.senders.push_back(Offer { key, index, item, reg: 0 }),
            None => ch.receivers.push_back(Offer { key, index, item: Vec::new(), reg: g.reg }),
        }
        chans.push(g.chan);
        // What others hold of this channel comes back: a receiver waits for the items lent
        // in a batch, a sender for the slots reserved for other senders.
        recall(ch, g.chan, me.who, sends, out);
    }
    inner.chans.waits.insert(key, Wait { kind, chans });
    inner.parked.insert(key, (0, Parked::Chan));
}

/// Asks the processes holding what `who` waits for on channel `c` to give it back: the lent
/// items of a batch (a receiver waits), or the reserved slots (a sender waits).
fn recall(ch: &mut Channel, c: u64, who: Who, sender: bool, out: &mut Vec<Delivery>) {
    let mut to = Vec::new();
    if sender {
        for (w, n) in &ch.credits {
            if *n > 0 && Who::Worker(*w) != who && ch.credit_recalled.insert(*w) {
                to.push(*w);
            }
        }
    } else if let Some(h) = ch.holder {
        if !ch.recalling && ch.lent > 0 && Who::Worker(h) != who {
            ch.recalling = true;
            to.push(h);
        }
    }
    for w in to {
        let (req, result) = (PRIM_RECALL, PrimResult::Done);
        out.push(Delivery { to: Who::Worker(w), req, result, queue: c, lent: false });
    }
}

/// Slots reserved for the lone worker `who` that just sent on `ch` (and is answered now):
/// half the free room, so that others still find some; none while anyone waits to send.
fn grant(ch: &mut Channel, who: Who) -> Option<u64> {
    let Who::Worker(w) = who else { return None };
    // One grant at a time: a worker's plain send with slots left (an awaited one) uses them.
    let holds = ch.credits.get(&w).is_some_and(|n| *n > 0);
    let lone =
        ch.send_solo >= 2 && ch.senders.is_empty() && !holds && !ch.credit_recalled.contains(&w);
    if ch.broadcast || ch.capacity < 4 || ch.poisoned || ch.readers_retired || !lone {
        return None;
    }
    let n = (ch.room() / 2).min(MAX_GRANT);
    if n == 0 {
        return None;
    }
    *ch.credits.entry(w).or_default() += n;
    ch.reserved += n;
    Some(n)
}

/// Whether guard `g` can commit now for `who`.
fn ready(chans: &Chans, g: &G, who: Who) -> bool {
    let Some(ch) = chans.chans.get(&g.chan) else { return false };
    match (&g.send, ch.broadcast) {
        (Some(_), false) => {
            !ch.readers_retired
                && ((!ch.receivers.is_empty() && !ch.recalling) || ch.room_for(who) > 0)
        }
        (None, false) => !ch.held_from(who) && (!ch.items.is_empty() || !ch.senders.is_empty()),
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
        // Items lent in a batch may still come back (the holder dies or its task ends).
        None if ch.writers_retired && ch.lent == 0 => Some(retired(ch, false)),
        _ => None,
    }
}

/// Commits ready guard `g`: returns where its item came from and the item a recv got.
fn fire(inner: &mut Inner, g: G, who: Who, out: &mut Vec<Delivery>) -> (u64, Option<Vec<u8>>) {
    let c = g.chan;
    let Some(ch) = inner.chans.chans.get_mut(&c) else { return (c, None) };
    match (g.send, ch.broadcast) {
        (Some(item), false) => {
            ch.use_credit(who);
            let taker = if ch.recalling { None } else { ch.receivers.pop_front() };
            if let Some(o) = taker {
                settle(inner, o.key, o.index, c, Some(item), out);
            } else {
                ch.items.push_back(item);
            }
            (c, None)
        }
        (None, false) => {
            if let Some(item) = ch.items.pop_front() {
                // Room for parked senders' items, behind the others.
                pump(inner, c, out);
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
            if ch.room() == 0 {
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
    // The items lent in a batch are dropped too (given back into a poisoned channel).
    if let Some(h) = ch.holder.filter(|_| ch.lent > 0 && !ch.recalling) {
        ch.recalling = true;
        let (req, result) = (PRIM_RECALL, PrimResult::Done);
        out.push(Delivery { to: Who::Worker(h), req, result, queue: c, lent: false });
    }
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
        // Receivers waiting for a batch's items to come back still get them.
        if retire && ch.writers == 0 {
            ch.writers_retired = true;
            if ch.lent == 0 {
                failed.extend(ch.receivers.iter().map(|o| o.key));
            }
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

/// A worker's recv that may take a batch (`ChanRecvMany`): up to `max` items when it receives
/// alone from a buffered channel with a backlog, else served as a plain recv.
pub(super) fn recv_many(inner: &mut Inner, me: Waiter, c: u64, max: u32, out: &mut Vec<Delivery>) {
    let plain = |inner: &mut Inner, out: &mut Vec<Delivery>| {
        let guard = Guard { chan: c, reg: 0, send: None };
        op(inner, me, vec![guard], false, false, true, out)
    };
    let Who::Worker(w) = me.who else { return plain(inner, out) };
    let Some(ch) = inner.chans.chans.get_mut(&c) else { return plain(inner, out) };
    let alone = ch.last_recv == Some(me.who) && ch.recv_solo >= 2;
    let batch = !ch.broadcast
        && !ch.poisoned
        && ch.capacity > 0
        && ch.items.len() >= 2
        && max >= 2
        && !ch.held_from(me.who)
        && alone;
    if !batch {
        return plain(inner, out);
    }
    streak(&mut ch.last_recv, &mut ch.recv_solo, me.who);
    let mut items = Vec::new();
    let mut bytes = 0;
    while let Some(item) = ch.items.pop_front() {
        bytes += item.len();
        items.push(ByteBuf::from(item));
        if items.len() >= max as usize || bytes >= BATCH_BYTES {
            break;
        }
    }
    // The extra items keep their room until handed out; the first one's is free now.
    ch.lent += items.len() as u64 - 1;
    if items.len() > 1 {
        ch.holder = Some(w);
    }
    pump(inner, c, out);
    let result = if items.len() == 1 {
        PrimResult::Item(items.remove(0).into_vec())
    } else {
        PrimResult::Items(items)
    };
    inner.answer(me, c, result, out);
}

/// A worker's send into a slot reserved for it (`ChanPost`): answered only if it failed.
pub(super) fn post(inner: &mut Inner, me: Waiter, c: u64, item: Vec<u8>, out: &mut Vec<Delivery>) {
    let Some(ch) = inner.chans.chans.get_mut(&c) else { return inner.answer(me, c, gone(c), out) };
    ch.use_credit(me.who);
    if ch.poisoned {
        let r = poisoned(ch);
        return inner.answer(me, c, r, out);
    }
    if ch.readers_retired {
        let r = retired(ch, true);
        return inner.answer(me, c, r, out);
    }
    let taker = if ch.recalling { None } else { ch.receivers.pop_front() };
    match taker {
        Some(o) => settle(inner, o.key, o.index, c, Some(item), out),
        None => ch.items.push_back(item),
    }
    inner.answer(me, c, PrimResult::Done, out);
}

/// Worker `w` gives back `n` slots reserved for its sends (`ChanReturn`).
pub(super) fn uncredit(inner: &mut Inner, w: Who, c: u64, n: u64, out: &mut Vec<Delivery>) {
    let Who::Worker(w) = w else { return };
    let Some(ch) = inner.chans.chans.get_mut(&c) else { return };
    if let Some(have) = ch.credits.get_mut(&w) {
        let n = n.min(*have);
        *have -= n;
        ch.reserved = ch.reserved.saturating_sub(n);
        if *have == 0 {
            ch.credits.remove(&w);
        }
    }
    pump(inner, c, out);
}

/// Whether `id` is a channel of this node.
pub(super) fn is_chan(inner: &Inner, id: u64) -> bool {
    inner.chans.chans.contains_key(&id)
}

/// A worker handed out one extra item of a batch from channel `c`: its room is free now.
pub(super) fn acked(inner: &mut Inner, c: u64, out: &mut Vec<Delivery>) {
    let Some(ch) = inner.chans.chans.get_mut(&c) else { return };
    ch.lent = ch.lent.saturating_sub(1);
    if ch.lent == 0 && !ch.recalling {
        ch.holder = None;
    }
    pump(inner, c, out);
}

/// An item of a batch from channel `c` comes back (its holder gave it back or died): to the
/// head of the buffer, in order (the caller goes newest first); `extra`: it was lent.
pub(super) fn put_back(inner: &mut Inner, c: u64, item: Vec<u8>, extra: bool) {
    let Some(ch) = inner.chans.chans.get_mut(&c) else { return };
    if extra {
        ch.lent = ch.lent.saturating_sub(1);
    }
    if !ch.poisoned {
        ch.items.push_front(item);
    }
}

/// Worker `w` answered the recall of channel `c` (a `GiveBack` naming it), or gave back what
/// it held unasked: the items handed out again, in order, first to the receivers parked
/// meanwhile. A recall its batch overtook is made again (as for a queue).
pub(super) fn gave_back(inner: &mut Inner, w: WorkerId, c: u64, out: &mut Vec<Delivery>) {
    let Some(ch) = inner.chans.chans.get_mut(&c) else { return };
    ch.credit_recalled.remove(&w);
    if ch.holder == Some(w) && ch.recalling && ch.lent > 0 {
        let (req, result) = (PRIM_RECALL, PrimResult::Done);
        out.push(Delivery { to: Who::Worker(w), req, result, queue: c, lent: false });
        return;
    }
    if ch.holder.is_none_or(|h| h == w) {
        end_recall(inner, c, out);
    }
}

/// The holder of channel `c`'s lent items gave them back (or died): items go to the
/// receivers that waited, oldest first, then parked senders' items move in.
pub(super) fn end_recall(inner: &mut Inner, c: u64, out: &mut Vec<Delivery>) {
    let Some(ch) = inner.chans.chans.get_mut(&c) else { return };
    ch.recalling = false;
    if ch.lent == 0 {
        ch.holder = None;
    }
    let mut handed = Vec::new();
    while !ch.items.is_empty() && !ch.receivers.is_empty() {
        if let (Some(o), Some(item)) = (ch.receivers.pop_front(), ch.items.pop_front()) {
            handed.push((o, item));
        }
    }
    let stranded: Vec<Key> = if ch.writers_retired && ch.items.is_empty() && ch.lent == 0 {
        ch.receivers.iter().map(|o| o.key).collect()
    } else {
        Vec::new()
    };
    let r = retired(ch, false);
    for (o, item) in handed {
        settle(inner, o.key, o.index, c, Some(item), out);
    }
    for key in stranded {
        fail(inner, key, r.clone(), out);
    }
    pump(inner, c, out);
}

/// Worker `w` is gone: the slots reserved for it are free, and the channels whose batch it
/// held (its items already given back) hand items out again.
pub(super) fn drop_worker(inner: &mut Inner, w: WorkerId, out: &mut Vec<Delivery>) {
    let mine: Vec<u64> = inner
        .chans
        .chans
        .iter()
        .filter(|(_, ch)| ch.credits.contains_key(&w) || ch.holder == Some(w))
        .map(|(c, _)| *c)
        .collect();
    for c in mine {
        let Some(ch) = inner.chans.chans.get_mut(&c) else { continue };
        let n = ch.credits.remove(&w).unwrap_or(0);
        ch.reserved = ch.reserved.saturating_sub(n);
        ch.credit_recalled.remove(&w);
        if ch.holder == Some(w) {
            ch.holder = None;
            ch.lent = 0;
            end_recall(inner, c, out);
        } else {
            // Another's batch may be on recall: only the freed slots matter here.
            pump(inner, c, out);
        }
    }
}

/// Whether channel `c` waits for its batch holder to answer a recall.
pub(super) fn recalling(inner: &Inner, c: u64) -> bool {
    inner.chans.chans.get(&c).is_some_and(|ch| ch.recalling)
}
