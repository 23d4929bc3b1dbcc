use std::time::Duration;

use volley_proto::{NamedActor, NodeId, NodeSnapshot, PgInfo, PgStrategy};

use super::*;
use crate::testing::{node, poll};

/// A cluster configuration for these tests: heartbeats every 50 ms, no TLS, no log forwarding.
fn test_cluster_config(
    token: &[u8],
    listen: Option<&str>,
    head: Option<String>,
    driver: bool,
) -> crate::ClusterConfig {
    crate::ClusterConfig {
        listen: listen.map(str::to_string),
        head,
        token: token.to_vec(),
        driver,
        heartbeat: Duration::from_millis(50),
        dead_after: Duration::from_secs(10),
        logs: false,
        tls: None,
    }
}
use volley_proto::{ActorAnswer, ActorRequest, HeadAnswer, HeadRequest, Reservation};

/// A node's snapshot with nothing in use (the head's tests and the jobs' tests build on it).
pub(crate) fn info(addr: &str, driver: bool) -> NodeSnapshot {
    NodeSnapshot {
        id: NodeId(0),
        addr: addr.into(),
        cpu_total_milli: 2000,
        cpu_free_milli: 2000,
        resources: Vec::new(),
        workers: 0,
        store_used: 0,
        store_capacity: 0,
        tasks_waiting: 0,
        waiting: Vec::new(),
        named: Vec::new(),
        bytes_received: 0,
        bytes_served: 0,
        driver,
        pid: 4242,
        groups: Vec::new(),
        sched: Default::default(),
        store: Default::default(),
        mem_total: 0,
        mem_used: 0,
        heartbeat_rtt_us: 0,
    }
}

fn actor(name: &str) -> NamedActor {
    NamedActor {
        namespace: "ns".into(),
        name: name.into(),
        actor: volley_proto::ActorId(volley_proto::TaskId(7)),
        node: NodeId(0),
        class: "A".into(),
        meta: Vec::new(),
    }
}

fn group(id: &str) -> PgInfo {
    PgInfo {
        id: id.into(),
        name: String::new(),
        state: "CREATED".into(),
        strategy: PgStrategy::Pack,
        bundles: vec![vec![("CPU".into(), 1000)]],
        nodes: vec![Some(1)],
        reason: String::new(),
    }
}

fn head() -> Head {
    Head::new(Box::new(MemoryStore::default()))
}

#[test]
fn members_are_numbered_in_joining_order_after_the_head() {
    let h = head();
    assert_ne!(h.epoch(), 0);
    h.update_self(info("head:1", false));
    let a = h.join(info("a:1", false));
    let b = h.join(info("b:1", true));
    assert_eq!((a, b), (NodeId(2), NodeId(3)));
    let view: Vec<(u32, String)> = h.view().iter().map(|n| (n.id.0, n.addr.clone())).collect();
    assert_eq!(view, vec![(1, "head:1".into()), (2, "a:1".into()), (3, "b:1".into())]);
    // A node that comes back gets a new number.
    assert_eq!(h.leave(a).map(|i| i.addr), Some("a:1".to_string()));
    assert_eq!(h.join(info("a:1", false)), NodeId(4));
}

#[test]
fn a_silent_member_is_declared_dead_but_never_the_head() {
    let h = head();
    h.update_self(info("head:1", false));
    let a = h.join(info("a:1", false));
    std::thread::sleep(Duration::from_millis(30));
    let (gap, _) = h.beat(a, info("a:1", false));
    assert!(gap.is_some_and(|g| g >= Duration::from_millis(30)), "{gap:?}");
    std::thread::sleep(Duration::from_millis(30));
    let dead: Vec<NodeId> = h.expire(Duration::from_millis(20)).iter().map(|i| i.id).collect();
    assert_eq!(dead, vec![a]);
    assert_eq!(h.view().iter().map(|n| n.id).collect::<Vec<_>>(), vec![HEAD_ID]);
    // A heartbeat from a node declared dead meanwhile says it was not in the view.
    assert_eq!(h.beat(a, info("a:1", false)).0, None);
}

#[test]
fn the_directory_follows_what_nodes_report_and_forgets_a_node_that_leaves() {
    let h = head();
    let mut me = info("head:1", false);
    me.named = vec![actor("on-head")];
    h.update_self(me);
    let d = h.join(info("driver", true));
    let a = h.join(info("a:1", false));

    let mut ai = info("a:1", false);
    ai.named = vec![actor("x"), actor("y")];
    h.beat(a, ai.clone());
    let mut di = info("driver", true);
    di.groups = vec![group("pg1"), group("pg2")];
    h.beat(d, di.clone());
    let names: Vec<(String, NodeId)> =
        h.named_actors().iter().map(|n| (n.name.clone(), n.node)).collect();
    assert_eq!(
        names,
        vec![("on-head".into(), HEAD_ID), ("x".into(), a), ("y".into(), a)],
        "every node's names, each with the node that reported it"
    );
    let groups: Vec<(NodeId, String)> =
        h.placement_groups().iter().map(|(n, g)| (*n, g.id.clone())).collect();
    assert_eq!(groups, vec![(d, "pg1".into()), (d, "pg2".into())]);

    // Removed where they live: gone from the next report.
    ai.named = vec![actor("y")];
    h.beat(a, ai);
    di.groups = vec![group("pg2")];
    h.beat(d, di);
    let names: Vec<String> = h.named_actors().iter().map(|n| n.name.clone()).collect();
    assert_eq!(names, vec!["on-head".to_string(), "y".into()]);
    assert_eq!(h.placement_groups().len(), 1);

    // A node that leaves takes its names and groups with it; its job (a driver's) ends.
    let job = h.jobs().into_iter().find(|j| j.node == d).expect("the driver's job");
    assert_eq!((job.pid, job.ended_ms), (4242, None));
    h.leave(a);
    h.leave(d);
    let names: Vec<String> = h.named_actors().iter().map(|n| n.name.clone()).collect();
    assert_eq!(names, vec!["on-head".to_string()]);
    assert!(h.placement_groups().is_empty());
    let jobs = h.jobs();
    assert_eq!(jobs.len(), 1, "only drivers are jobs: {jobs:?}");
    assert!(jobs[0].ended_ms.is_some_and(|e| e >= jobs[0].started_ms));
}

#[test]
fn the_key_value_table_keeps_namespaces_apart() {
    let h = head();
    assert!(h.kv_put("a", b"k1", b"v1".to_vec(), false));
    assert!(!h.kv_put("a", b"k1", b"other".to_vec(), false), "kept without overwrite");
    assert_eq!(h.kv_get("a", b"k1"), Some(b"v1".to_vec()));
    assert!(h.kv_put("a", b"k1", b"v2".to_vec(), true));
    assert_eq!(h.kv_get("a", b"k1"), Some(b"v2".to_vec()));
    assert!(h.kv_put("a", b"k2", Vec::new(), false));
    assert!(h.kv_put("a", b"j", Vec::new(), false));
    assert!(h.kv_put("b", b"k3", Vec::new(), false));
    assert_eq!(h.kv_keys("a", b"k"), vec![b"k1".to_vec(), b"k2".to_vec()]);
    assert_eq!(h.kv_keys("b", b""), vec![b"k3".to_vec()]);
    assert_eq!(h.kv_get("b", b"k1"), None);
    assert!(h.kv_del("a", b"k1"));
    assert!(!h.kv_del("a", b"k1"));
    assert_eq!(h.kv_keys("a", b""), vec![b"j".to_vec(), b"k2".to_vec()]);
}

/// Over real sockets: a lone node is its own head; as a cluster's head it records a driver that
/// joins as a job, answers `volley status` with a `Status` request, and ends the job when the
/// driver's connection closes. A member has no head of its own.
#[test]
fn a_head_keeps_the_membership_of_nodes_that_join_over_tcp() {
    let dir = std::env::temp_dir().join(format!("volley-head-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a spill dir");
    let token = b"head-test-token".to_vec();
    let cfg = |listen: Option<&str>, head: Option<String>, driver: bool| {
        test_cluster_config(&token, listen, head, driver)
    };

    let first = node(&dir, 8 << 20);
    let alone = first.head().expect("a lone node is its own head");
    // Alone it is node 0, as its task rows and `volley.nodes()` say (docs/cluster.md).
    assert_eq!(alone.view().iter().map(|n| n.id).collect::<Vec<_>>(), vec![NodeId(0)]);

    let (id, addr) = first.join_cluster(cfg(Some("127.0.0.1:0"), None, false)).expect("head");
    assert_eq!(id, HEAD_ID.0);
    let head = first.head().expect("the cluster's head");
    assert_eq!(head.epoch(), alone.epoch(), "the lone node's head became the cluster's");
    assert_eq!(head.view().iter().map(|n| n.id).collect::<Vec<_>>(), vec![HEAD_ID], "node 1");

    let driver = node(&dir, 8 << 20);
    let (did, _) = driver.join_cluster(cfg(None, Some(addr.clone()), true)).expect("joins");
    assert_eq!(did, 2);
    assert!(driver.head().is_none(), "a member asks the head");
    poll("the driver in the head's view", || head.view().len() == 2);
    let jobs = head.jobs();
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        (jobs[0].node, jobs[0].pid, jobs[0].ended_ms),
        (NodeId(2), std::process::id(), None)
    );

    // A placement group the driver makes shows up in the head's directory with its next
    // heartbeat, as the driver's.
    let spec = volley_proto::PgSpec {
        id: "pg-from-the-driver".into(),
        name: "g".into(),
        bundles: vec![vec![("CPU".into(), 500)]],
        strategy: PgStrategy::Pack,
        ready: volley_proto::ObjectId::for_return(volley_proto::TaskId(99), 1),
        value: Default::default(),
    };
    let answer = driver.actor(volley_proto::ActorRequest::PgCreate(Box::new(spec)));
    assert!(!matches!(answer, volley_proto::ActorAnswer::Error(_)), "{answer:?}");
    poll("the group in the head's directory", || {
        head.placement_groups()
            .iter()
            .any(|(owner, g)| *owner == NodeId(2) && g.id == "pg-from-the-driver")
    });

    let (nodes, refused) = crate::cluster_status(&addr, &token, None).expect("status");
    assert_eq!(
        nodes.iter().map(|n| (n.id.0, n.driver)).collect::<Vec<_>>(),
        [(1, false), (2, true)]
    );
    assert!(refused.is_empty(), "{refused:?}");
    // A wrong token is refused at the handshake, and the head remembers it for status.
    assert!(crate::cluster_status(&addr, b"wrong", None).is_err());
    let (_, refused) = crate::cluster_status(&addr, &token, None).expect("status");
    assert_eq!(refused.len(), 1, "{refused:?}");

    driver.shutdown(Duration::from_millis(200));
    poll("the driver's job to end", || {
        head.view().len() == 1 && head.jobs().iter().all(|j| j.ended_ms.is_some())
    });
    assert!(head.placement_groups().is_empty(), "the driver's groups went with it");
    first.shutdown(Duration::from_millis(200));
    let _ = std::fs::remove_dir_all(&dir);
}

fn stored(a: HeadAnswer) -> bool {
    match a {
        HeadAnswer::Stored(b) => b,
        other => panic!("not Stored: {other:?}"),
    }
}

fn put(ns: &str, key: &[u8], value: &[u8], overwrite: bool) -> HeadRequest {
    HeadRequest::KvPut { namespace: ns.into(), key: key.to_vec(), value: value.to_vec(), overwrite }
}

fn get(ns: &str, key: &[u8]) -> HeadRequest {
    HeadRequest::KvGet { namespace: ns.into(), key: key.to_vec() }
}

fn value(v: &[u8]) -> HeadAnswer {
    HeadAnswer::Value(Some(serde_bytes::ByteBuf::from(v.to_vec())))
}

/// `Head::serve` answers every request, and refuses a key or value over the limits with a
/// message rather than storing it.
#[test]
fn the_head_serves_key_value_and_directory_requests() {
    let h = head();
    assert!(stored(h.serve(put("ns", b"a", b"1", true))));
    assert!(!stored(h.serve(put("ns", b"a", b"2", false))), "kept without overwrite");
    assert_eq!(h.serve(get("ns", b"a")), value(b"1"));
    assert_eq!(h.serve(get("other", b"a")), HeadAnswer::Value(None));
    let keys = h.serve(HeadRequest::KvKeys { namespace: "ns".into(), prefix: b"".to_vec() });
    assert_eq!(keys, HeadAnswer::Keys(vec![serde_bytes::ByteBuf::from(b"a".to_vec())]));
    let del = HeadRequest::KvDelete { namespace: "ns".into(), key: b"a".to_vec() };
    assert_eq!(h.serve(del.clone()), HeadAnswer::Deleted(true));
    assert_eq!(h.serve(del), HeadAnswer::Deleted(false));

    let big = vec![0u8; volley_proto::MAX_KV_VALUE + 1];
    assert!(
        matches!(h.serve(put("ns", b"big", &big, true)), HeadAnswer::Error(m) if m.contains("object store"))
    );
    assert_eq!(h.serve(get("ns", b"big")), HeadAnswer::Value(None));

    let id = h.join(info("10.0.0.2:1", true));
    h.beat(id, NodeSnapshot { named: vec![actor("x")], ..info("10.0.0.2:1", true) });
    let HeadAnswer::Directory(d) = h.serve(HeadRequest::Directory) else { panic!("a directory") };
    assert_eq!(d.actors.iter().map(|a| (a.name.as_str(), a.node)).collect::<Vec<_>>(), [("x", id)]);
    assert_eq!(d.jobs.len(), 1);
}

/// Over real sockets: a member asks the cluster's head (`PeerMsg::Head` on a connection of its
/// own) and sees what the head and other members stored; two members racing to store one key
/// without overwrite: exactly one wins. A member reads the directory with a named actor's
/// entry the head got from another node's heartbeat.
#[test]
fn members_use_the_heads_key_value_table_over_tcp() {
    let dir = std::env::temp_dir().join(format!("volley-head-kv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a spill dir");
    let token = b"head-kv-token".to_vec();
    let cfg = |listen: Option<&str>, head: Option<String>, driver: bool| {
        test_cluster_config(&token, listen, head, driver)
    };
    let first = node(&dir, 8 << 20);
    // Alone, the node is its own head: the same request by a function call.
    assert!(stored(first.ask_head(put("ns", b"lone", b"v", true))));
    let (_, addr) = first.join_cluster(cfg(Some("127.0.0.1:0"), None, false)).expect("head");
    assert_eq!(first.ask_head(get("ns", b"lone")), value(b"v"), "kept when it became a head");

    let a = node(&dir, 8 << 20);
    a.join_cluster(cfg(None, Some(addr.clone()), true)).expect("a joins");
    let b = node(&dir, 8 << 20);
    b.join_cluster(cfg(None, Some(addr.clone()), true)).expect("b joins");
    assert_eq!(a.ask_head(get("ns", b"lone")), value(b"v"), "a member reads the head's table");
    assert!(stored(a.ask_head(put("ns", b"from-a", b"1", true))));
    assert_eq!(b.ask_head(get("ns", b"from-a")), value(b"1"));

    // The race: one key, no overwrite, from two members at once, many times.
    for round in 0..20u32 {
        let key = format!("race-{round}").into_bytes();
        let (ka, kb) = (key.clone(), key.clone());
        let (na, nb) = (&a, &b);
        let (wa, wb) = std::thread::scope(|s| {
            let ta = s.spawn(move || stored(na.ask_head(put("ns", &ka, b"a", false))));
            let tb = s.spawn(move || stored(nb.ask_head(put("ns", &kb, b"b", false))));
            (ta.join().expect("a's thread"), tb.join().expect("b's thread"))
        });
        assert!(wa ^ wb, "round {round}: exactly one wins ({wa}, {wb})");
        let winner: &[u8] = if wa { b"a" } else { b"b" };
        assert_eq!(first.ask_head(get("ns", &key)), value(winner));
    }

    // A named actor another node reports (a node of its own, so no real heartbeat replaces
    // it) shows up in the directory a member reads, and a member's lookup of that name goes
    // through the head and routes to that node.
    let far = NodeId(99);
    first
        .head()
        .expect("the head")
        .beat(far, NodeSnapshot { named: vec![actor("far")], ..info("x", false) });
    let HeadAnswer::Directory(d) = b.ask_head(HeadRequest::Directory) else {
        panic!("a directory")
    };
    assert!(d.actors.iter().any(|x| x.name == "far" && x.node == far), "{d:?}");
    assert_eq!(d.jobs.len(), 2, "{d:?}");
    let found = b.actor(ActorRequest::Lookup { name: "far".into(), namespace: "ns".into() });
    assert!(
        matches!(&found, ActorAnswer::Found { actor: x, created: false, .. } if *x == actor("far").actor),
        "{found:?}"
    );
    let missing = b.actor(ActorRequest::Lookup { name: "nobody".into(), namespace: "ns".into() });
    assert_eq!(missing, ActorAnswer::NotFound);

    // A key too large is refused by the asking node, before any round trip.
    let big = vec![0u8; volley_proto::MAX_KV_KEY + 1];
    assert!(matches!(a.ask_head(get("ns", &big)), HeadAnswer::Error(_)));

    // The head gone: a clear error, not a hang.
    first.shutdown(Duration::from_millis(200));
    assert!(matches!(a.ask_head(get("ns", b"lone")), HeadAnswer::Error(_)));
    a.shutdown(Duration::from_millis(200));
    b.shutdown(Duration::from_millis(200));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A name is claimed once: another node's claim is `Taken` until the claim is released, lapses
/// or its node leaves; the claiming node's own repeat is `Mine`; once the actor is in the
/// directory its entry holds the name (for its host) and the claim is gone.
#[test]
fn names_are_claimed_at_the_head_once() {
    let h = head();
    let (a, b) = (h.join(info("a", true)), h.join(info("b", false)));
    assert_eq!(h.reserve_name("ns", "x", a), Reservation::Reserved);
    assert_eq!(h.reserve_name("ns", "x", b), Reservation::Taken);
    assert_eq!(h.reserve_name("ns", "x", a), Reservation::Mine);
    assert_eq!(h.reserve_name("other", "x", b), Reservation::Reserved, "namespaces apart");
    assert!(!h.release_name("ns", "x", b), "not b's to release");
    assert!(h.release_name("ns", "x", a));
    assert_eq!(h.reserve_name("ns", "x", b), Reservation::Reserved);

    // b hosts the actor (its heartbeat lists it): the name is b's, the claim gone.
    h.beat(b, NodeSnapshot { named: vec![actor("x")], ..info("b", false) });
    assert_eq!(h.reserve_name("ns", "x", a), Reservation::Taken);
    assert_eq!(h.reserve_name("ns", "x", b), Reservation::Mine);
    // It died (b's next heartbeat does not list it): the name is free again.
    h.beat(b, info("b", false));
    assert_eq!(h.reserve_name("ns", "x", a), Reservation::Reserved);
    // A node that leaves gives back its claims.
    h.leave(a);
    assert_eq!(h.reserve_name("ns", "x", b), Reservation::Reserved);
}

/// A node that placed the named actor it created on another node lists it there: its claim
/// passes to the host (whose heartbeats hold the name from then on); a node with no claim on
/// the name cannot list an actor under it.
#[test]
fn a_creators_claim_passes_to_the_node_it_placed_the_actor_on() {
    let h = head();
    let (creator, host, other) =
        (h.join(info("c", true)), h.join(info("h", false)), h.join(info("o", false)));
    assert_eq!(h.reserve_name("ns", "x", creator), Reservation::Reserved);
    let placed = NamedActor { node: host, ..actor("x") };
    assert!(!h.name_placed(placed.clone(), other), "another node's claim holds the name");
    assert!(!h.name_created(placed.clone()), "nor does the host claim it by itself");
    assert!(h.name_placed(placed.clone(), creator));
    let ask = || h.serve(HeadRequest::LookupName { namespace: "ns".into(), name: "x".into() });
    assert!(matches!(ask(), HeadAnswer::Named(Some(n)) if n.node == host), "{:?}", ask());
    assert_eq!(h.reserve_name("ns", "x", host), Reservation::Mine);
    assert_eq!(h.reserve_name("ns", "x", creator), Reservation::Taken);
    // The host's heartbeat lists it (the claim ends), then one does not (it died): unlisted.
    h.beat(host, NodeSnapshot { named: vec![placed.clone()], ..info("h", false) });
    h.beat(host, info("h", false));
    assert!(matches!(ask(), HeadAnswer::Named(None)), "{:?}", ask());
    // One that dies before any heartbeat of its host lists it: unlisted at the host's third
    // heartbeat without it (the ones before may have been built before it was made there),
    // not once its claim lapses 10 s later.
    assert_eq!(h.reserve_name("ns", "z", creator), Reservation::Reserved);
    assert!(h.name_placed(NamedActor { node: host, ..actor("z") }, creator));
    let z = || h.serve(HeadRequest::LookupName { namespace: "ns".into(), name: "z".into() });
    for beat in 1..=3 {
        assert!(matches!(z(), HeadAnswer::Named(Some(_))), "listed before beat {beat}");
        h.beat(host, info("h", false));
    }
    assert!(matches!(z(), HeadAnswer::Named(None)), "{:?}", z());
    // The creator listed it at itself first (it waited for its arguments), then placed it.
    assert_eq!(h.reserve_name("ns", "y", creator), Reservation::Reserved);
    assert!(h.name_created(NamedActor { node: creator, ..actor("y") }));
    assert!(h.name_placed(NamedActor { node: host, ..actor("y") }, creator));
    let y = h.serve(HeadRequest::LookupName { namespace: "ns".into(), name: "y".into() });
    assert!(matches!(&y, HeadAnswer::Named(Some(n)) if n.node == host), "{y:?}");
}

/// The creation of an actor of class `class` named `name` in namespace "ns", as task `task`.
fn creation(
    class: volley_proto::FunctionId,
    name: &str,
    task: u128,
    get_if_exists: bool,
) -> volley_proto::TaskSpec {
    let opts = volley_proto::ActorOptions {
        class_name: "A".into(),
        name: Some(name.into()),
        namespace: "ns".into(),
        get_if_exists,
        ..Default::default()
    };
    volley_proto::TaskSpec {
        task_id: volley_proto::TaskId(task),
        function: class,
        name: "A".into(),
        args: Default::default(),
        deps: Box::default(),
        num_returns: 1,
        options: Default::default(),
        actor: volley_proto::ActorPart::Create(Box::new(opts)),
    }
}

/// Over real sockets, with heartbeats a minute apart: a named actor is found from another
/// node as soon as its creation returned, whether its creator hosts it (the creator told the
/// head then; no heartbeat could have listed it yet) or placed it on another node (node
/// affinity: the creator's heartbeat never lists it and the host's next one is a minute away,
/// so the creator tells the head where it went).
#[test]
fn a_named_actor_is_found_from_another_node_as_soon_as_its_creation_returns() {
    let dir = std::env::temp_dir().join(format!("volley-head-created-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a spill dir");
    let token = b"head-created-token".to_vec();
    let cfg = |listen: Option<&str>, head: Option<String>, driver: bool| crate::ClusterConfig {
        heartbeat: Duration::from_secs(60),
        dead_after: Duration::from_secs(300),
        ..test_cluster_config(&token, listen, head, driver)
    };
    let first = node(&dir, 8 << 20);
    let (_, addr) = first.join_cluster(cfg(Some("127.0.0.1:0"), None, false)).expect("head");
    let host = node(&dir, 8 << 20);
    let (host_id, _) =
        host.join_cluster(cfg(Some("127.0.0.1:0"), Some(addr.clone()), false)).expect("host");
    let creator = node(&dir, 8 << 20);
    creator.join_cluster(cfg(None, Some(addr.clone()), true)).expect("a driver joins");
    let asker = node(&dir, 8 << 20);
    asker.join_cluster(cfg(None, Some(addr), true)).expect("another driver joins");
    let class = volley_proto::FunctionId([9; 16]);
    for n in [&host, &creator] {
        n.register_function(class, b"class bytes");
    }
    let mut placed = creation(class, "placed", 78, false);
    placed.options = std::sync::Arc::new(volley_proto::TaskOptions {
        strategy: volley_proto::Strategy::Node { id: host_id, soft: false },
        ..Default::default()
    });
    for (maker, spec) in [(&host, creation(class, "fresh", 77, false)), (&creator, placed)] {
        let name = match &spec.actor {
            volley_proto::ActorPart::Create(o) => o.name.clone().unwrap_or_default(),
            _ => unreachable!("a creation"),
        };
        let made = maker.actor(ActorRequest::Create(Box::new(spec)));
        let ActorAnswer::Found { actor, created: true, .. } = made else {
            panic!("{name} created: {made:?}")
        };
        let ask = HeadRequest::LookupName { namespace: "ns".into(), name: name.clone() };
        let listed = first.head().expect("the head").serve(ask);
        assert!(
            matches!(&listed, HeadAnswer::Named(Some(n)) if n.actor == actor && n.node == NodeId(host_id)),
            "{name} listed at once, at the node that runs it ({host_id}): {listed:?}"
        );
        let found =
            asker.actor(ActorRequest::Lookup { name: name.clone(), namespace: "ns".into() });
        assert!(
            matches!(&found, ActorAnswer::Found { actor: a, created: false, .. } if *a == actor),
            "{name} found from another node at once: {found:?}"
        );
    }
    for n in [asker, creator, host, first] {
        n.shutdown(Duration::from_millis(200));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Over real sockets: a driver whose head stopped answering (it shut down: its member
/// connections close with it) says so when it explains a wait (a `get` that timed out).
#[test]
fn a_wait_says_the_cluster_head_does_not_answer() {
    let dir = std::env::temp_dir().join(format!("volley-head-lost-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a spill dir");
    let token = b"head-lost-token".to_vec();
    let first = node(&dir, 8 << 20);
    let cfg = |listen: Option<&str>, head: Option<String>| {
        test_cluster_config(&token, listen, head, true)
    };
    let (_, addr) = first.join_cluster(cfg(Some("127.0.0.1:0"), None)).expect("head");
    let driver = node(&dir, 8 << 20);
    driver.join_cluster(cfg(None, Some(addr.clone()))).expect("a driver joins");
    // What a get waits for: a task's value (whatever it waits on, the head's silence is said).
    let oid = volley_proto::ObjectId { task: volley_proto::TaskId(0x10057), index: 1 };
    let said = |n: &crate::Node| n.explain_wait(&[oid], 8).join(" | ");
    assert!(!said(&driver).contains("has not reached the cluster's head"), "{}", said(&driver));
    first.shutdown(Duration::from_millis(200));
    // Its port is free again (its accept thread ended and let go of the socket).
    poll("the head's port to be free", || std::net::TcpListener::bind(&addr).is_ok());
    poll("the driver to say its head does not answer", || {
        said(&driver).contains(&format!("has not reached the cluster's head at {addr} for"))
    });
    driver.shutdown(Duration::from_millis(200));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Over real sockets: two drivers' nodes create an actor of one name at once, many times;
/// exactly one creation succeeds each time, the other gets the duplicate-name error.
#[test]
fn two_drivers_racing_for_a_name_over_tcp_exactly_one_wins() {
    let dir = std::env::temp_dir().join(format!("volley-head-names-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a spill dir");
    let token = b"head-names-token".to_vec();
    let cfg = |listen: Option<&str>, head: Option<String>, driver: bool| {
        test_cluster_config(&token, listen, head, driver)
    };
    let first = node(&dir, 8 << 20);
    let (_, addr) = first.join_cluster(cfg(Some("127.0.0.1:0"), None, false)).expect("head");
    let a = node(&dir, 8 << 20);
    a.join_cluster(cfg(None, Some(addr.clone()), true)).expect("a joins");
    let b = node(&dir, 8 << 20);
    b.join_cluster(cfg(None, Some(addr.clone()), true)).expect("b joins");
    let class = volley_proto::FunctionId([7; 16]);
    for n in [&a, &b] {
        n.register_function(class, b"class bytes");
    }
    let create_or_get = |n: &crate::Node, name: &str, task: u128, get_if_exists: bool| {
        n.actor(ActorRequest::Create(Box::new(creation(class, name, task, get_if_exists))))
    };
    let create = |n: &crate::Node, name: &str, task: u128| create_or_get(n, name, task, false);
    let mut winners = Vec::new();
    for round in 0..10u128 {
        let name = format!("one-{round}");
        let (ra, rb) = std::thread::scope(|s| {
            let ta = s.spawn(|| create(&a, &name, 1000 + 2 * round));
            let tb = s.spawn(|| create(&b, &name, 1001 + 2 * round));
            (ta.join().expect("a's thread"), tb.join().expect("b's thread"))
        });
        let won = |r: &ActorAnswer| matches!(r, ActorAnswer::Found { created: true, .. });
        assert!(won(&ra) ^ won(&rb), "round {round}: exactly one wins: {ra:?} {rb:?}");
        let lost = if won(&ra) { &rb } else { &ra };
        assert!(
            matches!(lost, ActorAnswer::Error(m) if m.contains("already exists in namespace 'ns'")),
            "{lost:?}"
        );
        winners.push(if won(&ra) { (&b, ra) } else { (&a, rb) });
    }
    // The losing node's `get_if_exists` gets the winner's actor (through the head), not a new
    // one.
    let (loser, ActorAnswer::Found { actor: wanted, .. }) = &winners[0] else { unreachable!() };
    let got = create_or_get(loser, "one-0", 5000, true);
    assert!(
        matches!(&got, ActorAnswer::Found { actor, created: false, .. } if actor == wanted),
        "{got:?}"
    );
    a.shutdown(Duration::from_millis(200));
    b.shutdown(Duration::from_millis(200));
    first.shutdown(Duration::from_millis(200));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A detached actor without a name is listed in the directory too (it appeared nowhere), each
/// by its id: two of them do not replace each other, and each goes when its node stops
/// reporting it or leaves. A lookup by a user's name never finds one.
#[test]
fn detached_actors_without_a_name_are_listed_by_id() {
    let h = head();
    let a = h.join(info("a:1", false));
    let unnamed = |id: u128| NamedActor {
        name: String::new(),
        actor: volley_proto::ActorId(volley_proto::TaskId(id)),
        ..actor("")
    };
    let mut ai = info("a:1", false);
    ai.named = vec![unnamed(1), unnamed(2), actor("x")];
    h.beat(a, ai.clone());
    let listed: Vec<(String, u128)> =
        h.named_actors().iter().map(|n| (n.name.clone(), n.actor.0 .0)).collect();
    assert_eq!(listed, vec![("".into(), 1), ("".into(), 2), ("x".into(), 7)]);
    let HeadAnswer::Named(found) =
        h.serve(HeadRequest::LookupName { namespace: "ns".into(), name: String::new() })
    else {
        panic!("a lookup answer")
    };
    assert!(found.is_none(), "an empty name finds nothing: {found:?}");

    ai.named = vec![unnamed(2), actor("x")];
    h.beat(a, ai);
    let ids: Vec<u128> = h.named_actors().iter().map(|n| n.actor.0 .0).collect();
    assert_eq!(ids, vec![2, 7]);
    h.leave(a);
    assert!(h.named_actors().is_empty());
}

/// A named actor its node reports as the creation returns is listed at once; a heartbeat of
/// that node built before the creation (arriving after the report) does not unlist it, and
/// the first heartbeat that lists it hands the name over to the heartbeats.
#[test]
fn a_name_reported_at_creation_is_listed_at_once_and_outlives_an_older_heartbeat() {
    let h = head();
    let b = h.join(info("b:1", false));
    let c = h.join(info("c:1", false));
    let lookup = |h: &Head| match h
        .serve(HeadRequest::LookupName { namespace: "ns".into(), name: "x".into() })
    {
        HeadAnswer::Named(found) => found.map(|n| n.node),
        other => panic!("a lookup answer, not {other:?}"),
    };
    assert_eq!(h.reserve_name("ns", "x", b), Reservation::Reserved);
    assert_eq!(lookup(&h), None, "a claim is no listing");
    let x = NamedActor { node: b, ..actor("x") };
    assert!(stored(h.serve(HeadRequest::NameCreated(x.clone()))));
    assert_eq!(lookup(&h), Some(b), "listed as the creation returns");
    h.beat(b, info("b:1", false)); // Built before the creation.
    assert_eq!(lookup(&h), Some(b), "an older heartbeat does not unlist it");
    // Another node can neither take the name nor report an actor of its own under it.
    assert_eq!(h.reserve_name("ns", "x", c), Reservation::Taken);
    assert!(!stored(h.serve(HeadRequest::NameCreated(NamedActor { node: c, ..actor("x") }))));
    assert!(!stored(h.serve(HeadRequest::NameCreated(NamedActor { node: b, ..actor("") }))));
    // b's heartbeat lists it: from then on b's heartbeats decide, and the next says it died.
    h.beat(b, NodeSnapshot { named: vec![x.clone()], ..info("b:1", false) });
    assert_eq!(lookup(&h), Some(b));
    h.beat(b, info("b:1", false));
    assert_eq!(lookup(&h), None, "gone with the first heartbeat that no longer lists it");
    assert_eq!(h.reserve_name("ns", "x", c), Reservation::Reserved);
}

fn incr(ns: &str, key: &[u8], delta: i64) -> HeadRequest {
    HeadRequest::KvIncr { namespace: ns.into(), key: key.to_vec(), delta }
}

fn cas(key: &[u8], expected: Option<&[u8]>, new: Option<&[u8]>) -> HeadRequest {
    let b = |v: Option<&[u8]>| v.map(|v| serde_bytes::ByteBuf::from(v.to_vec()));
    HeadRequest::KvCompareAndSet {
        namespace: "ns".into(),
        key: key.to_vec(),
        expected: b(expected),
        new: b(new),
    }
}

/// The store's atomic operations: incr counts from 0 on a missing key and on a value stored
/// as decimal text, and refuses (changing nothing) a value that is not an integer and an
/// overflow; compare-and-set swaps only on the expected value (absence included) and can
/// delete; setdefault answers the value that is there.
#[test]
fn the_store_increments_swaps_and_sets_defaults() {
    let mut s = MemoryStore::default();
    assert_eq!(s.kv_incr("ns", b"n", 5), Ok(5));
    assert_eq!(s.kv_incr("ns", b"n", -7), Ok(-2));
    assert_eq!(s.kv_get("ns", b"n").as_deref(), Some(&b"-2"[..]));
    s.kv_put("ns", b"text", b"41".to_vec(), true);
    assert_eq!(s.kv_incr("ns", b"text", 1), Ok(42));
    s.kv_put("ns", b"pickle", b"\x80\x05K\x01.".to_vec(), true);
    let why = s.kv_incr("ns", b"pickle", 1).expect_err("a pickle");
    assert!(why.contains("not an integer"), "{why}");
    assert_eq!(s.kv_get("ns", b"pickle").as_deref(), Some(&b"\x80\x05K\x01."[..]));
    s.kv_put("ns", b"max", i64::MAX.to_string().into_bytes(), true);
    assert!(s.kv_incr("ns", b"max", 1).expect_err("an overflow").contains("overflows"));
    assert_eq!(s.kv_incr("ns", b"max", 0), Ok(i64::MAX));

    assert!(s.kv_compare_and_set("ns", b"c", None, Some(b"a".to_vec())), "absent as expected");
    assert!(!s.kv_compare_and_set("ns", b"c", None, Some(b"b".to_vec())), "not absent now");
    assert!(!s.kv_compare_and_set("ns", b"c", Some(b"x"), Some(b"b".to_vec())));
    assert!(s.kv_compare_and_set("ns", b"c", Some(b"a"), Some(b"b".to_vec())));
    assert_eq!(s.kv_get("ns", b"c").as_deref(), Some(&b"b"[..]));
    assert!(s.kv_compare_and_set("ns", b"c", Some(b"b"), None), "a swap to nothing deletes");
    assert_eq!(s.kv_get("ns", b"c"), None);

    assert_eq!(s.kv_setdefault("ns", b"d", b"first".to_vec()), b"first");
    assert_eq!(s.kv_setdefault("ns", b"d", b"second".to_vec()), b"first");
    assert_eq!(s.kv_get("other", b"d"), None, "namespaces stay apart");
}

/// Through `Head::serve`: the answers of the new requests, the limits checked on them, and
/// increments from 8 threads at once, 1,000 each, none lost; of 8 threads racing one
/// compare-and-set from absent, exactly one wins.
#[test]
fn the_head_serves_atomic_key_value_operations_from_many_threads() {
    let h = std::sync::Arc::new(head());
    assert_eq!(h.serve(incr("ns", b"n", 3)), HeadAnswer::Counter(3));
    h.serve(put("ns", b"s", b"hello", true));
    assert!(
        matches!(h.serve(incr("ns", b"s", 1)), HeadAnswer::KvRefused(m) if m.contains("\"hello\""))
    );
    assert_eq!(h.serve(cas(b"c", None, Some(b"v"))), HeadAnswer::Stored(true));
    assert_eq!(h.serve(cas(b"c", None, Some(b"w"))), HeadAnswer::Stored(false));
    let dflt = |v: &[u8]| HeadRequest::KvSetDefault {
        namespace: "ns".into(),
        key: b"d".to_vec(),
        value: v.to_vec(),
    };
    assert_eq!(h.serve(dflt(b"1")), value(b"1"));
    assert_eq!(h.serve(dflt(b"2")), value(b"1"));
    let big = vec![0u8; volley_proto::MAX_KV_VALUE + 1];
    assert!(matches!(h.serve(cas(b"c", Some(&big), None)), HeadAnswer::Error(_)));
    assert!(matches!(h.serve(cas(b"c", Some(b"v"), Some(&big))), HeadAnswer::Error(_)));
    assert!(matches!(h.serve(dflt(&big)), HeadAnswer::Error(_)));
    let long_key = vec![b'k'; volley_proto::MAX_KV_KEY + 1];
    assert!(matches!(h.serve(incr("ns", &long_key, 1)), HeadAnswer::Error(_)));

    let threads: Vec<_> = (0..8)
        .map(|_| {
            let h = h.clone();
            std::thread::spawn(move || {
                for _ in 0..1000 {
                    assert!(matches!(h.serve(incr("ns", b"many", 1)), HeadAnswer::Counter(_)));
                }
                h.serve(cas(b"race", None, Some(b"mine"))) == HeadAnswer::Stored(true)
            })
        })
        .collect();
    let wins = threads.into_iter().map(|t| t.join().expect("a thread")).filter(|w| *w).count();
    assert_eq!(wins, 1);
    assert_eq!(h.serve(get("ns", b"many")), value(b"8000"));
}

/// `KvWatch`: a wait with nothing changing ends unchanged at its deadline; a put from another
/// thread wakes a watcher with the new value; a watcher that comes back with an old version
/// learns at once of a change it missed between two waits, even one undone meanwhile; a
/// delete is a change too.
#[test]
fn a_watch_wakes_on_a_change_and_ends_at_its_deadline() {
    let h = std::sync::Arc::new(head());
    let watch = |seen: Option<u64>, wait_ms: u32| HeadRequest::KvWatch {
        namespace: "ns".into(),
        key: b"w".to_vec(),
        seen,
        wait_ms,
    };
    let t0 = std::time::Instant::now();
    let HeadAnswer::KvWatched { digest, changed: false, value: None } = h.serve(watch(None, 50))
    else {
        panic!("unchanged")
    };
    assert!(t0.elapsed() >= Duration::from_millis(50));
    assert_eq!(digest, 0, "never changed");

    let writer = {
        let h = h.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            h.serve(put("ns", b"other", b"x", true)); // another key: wakes, no change
            h.serve(put("ns", b"w", b"v1", true));
        })
    };
    let answer = h.serve(watch(Some(digest), 10_000));
    writer.join().expect("the writer");
    let HeadAnswer::KvWatched { digest: d1, changed: true, value: Some(v) } = answer else {
        panic!("changed: {answer:?}")
    };
    assert_eq!(&v[..], b"v1");

    h.serve(put("ns", b"w", b"v2", true));
    let HeadAnswer::KvWatched { digest: d2, changed: true, value: Some(v) } =
        h.serve(watch(Some(d1), 0))
    else {
        panic!("a change between two waits")
    };
    assert_eq!(&v[..], b"v2");
    // Changed and changed back between two waits: still a change (versions, not values).
    h.serve(put("ns", b"w", b"v3", true));
    h.serve(put("ns", b"w", b"v2", true));
    let HeadAnswer::KvWatched { digest: d3, changed: true, value: Some(v) } =
        h.serve(watch(Some(d2), 0))
    else {
        panic!("an undone change")
    };
    assert_eq!(&v[..], b"v2");
    assert!(matches!(h.serve(watch(Some(d3), 0)), HeadAnswer::KvWatched { changed: false, .. }));
    h.serve(HeadRequest::KvDelete { namespace: "ns".into(), key: b"w".to_vec() });
    assert!(matches!(
        h.serve(watch(Some(d3), 0)),
        HeadAnswer::KvWatched { changed: true, value: None, .. }
    ));
}

/// Records the objects the head lets go of.
#[derive(Default)]
struct Released(Mutex<Vec<volley_proto::ObjectId>>);

impl big_values::Releaser for Released {
    fn release(&self, ids: &[volley_proto::ObjectId]) {
        self.0.lock().extend_from_slice(ids);
    }
}

fn marker(n: u32) -> (volley_proto::ObjectId, Vec<u8>) {
    let id =
        volley_proto::ObjectId { task: volley_proto::TaskId(u128::from(n) << 64 | 7), index: n };
    let mut v = big_values::BIG_VALUE_MAGIC.to_vec();
    v.extend_from_slice(&id.to_bytes());
    v.extend_from_slice(b"pickled ref");
    (id, v)
}

#[test]
fn a_big_shared_dict_value_is_let_go_once_no_key_holds_it() {
    let h = Head::new(Box::new(MemoryStore::default()));
    let released = Arc::new(Released::default());
    h.set_releaser(released.clone());
    let ns = "shareddict:big";
    let (a, ma) = marker(1);
    let (b, mb) = marker(2);
    let (c, mc) = marker(3);
    h.serve(put(ns, b"k", &ma, true));
    h.serve(put(ns, b"k", &ma, true)); // the same object again: kept
    assert!(released.0.lock().is_empty());
    h.serve(put(ns, b"k", &mb, false)); // not stored: kept
    assert!(released.0.lock().is_empty());
    h.serve(put(ns, b"k", &mb, true)); // replaced
    assert_eq!(*released.0.lock(), vec![a]);
    let cas = |expected: &[u8], new: Option<&[u8]>| HeadRequest::KvCompareAndSet {
        namespace: ns.into(),
        key: b"k".to_vec(),
        expected: Some(serde_bytes::ByteBuf::from(expected.to_vec())),
        new: new.map(|v| serde_bytes::ByteBuf::from(v.to_vec())),
    };
    h.serve(cas(&ma, Some(&mc))); // the compare fails: kept
    assert_eq!(*released.0.lock(), vec![a]);
    h.serve(cas(&mb, Some(&mc)));
    assert_eq!(*released.0.lock(), vec![a, b]);
    h.serve(HeadRequest::KvDelete { namespace: ns.into(), key: b"k".to_vec() });
    assert_eq!(*released.0.lock(), vec![a, b, c]);
    // Other namespaces' values are only bytes.
    h.serve(put("other", b"k", &ma, true));
    h.serve(HeadRequest::KvDelete { namespace: "other".into(), key: b"k".to_vec() });
    assert_eq!(released.0.lock().len(), 3);
}

/// `KvPutMany` stores every pair, `KvItems` reads the pairs under a prefix in key order, and
/// an update over the size limit stores nothing.
#[test]
fn put_many_and_items() {
    let h = head();
    let b = |x: &[u8]| serde_bytes::ByteBuf::from(x.to_vec());
    let many = |items: Vec<(&[u8], &[u8])>| HeadRequest::KvPutMany {
        namespace: "ns".into(),
        items: items.into_iter().map(|(k, v)| (b(k), b(v))).collect(),
    };
    assert!(stored(h.serve(many(vec![(b"p/b", b"2"), (b"p/a", b"1"), (b"q", b"3")]))));
    let items = |prefix: &[u8]| {
        h.serve(HeadRequest::KvItems { namespace: "ns".into(), prefix: prefix.to_vec() })
    };
    assert_eq!(items(b"p/"), HeadAnswer::Items(vec![(b(b"p/a"), b(b"1")), (b(b"p/b"), b(b"2"))]));
    assert!(stored(h.serve(many(vec![(b"p/a", b"10")]))));
    assert_eq!(h.serve(get("ns", b"p/a")), value(b"10"));
    let block = vec![1u8; 1 << 20];
    let too_much: Vec<(&[u8], &[u8])> = (0..17).map(|_| (&b"k"[..], &block[..])).collect();
    assert!(matches!(h.serve(many(too_much)), HeadAnswer::Error(m) if m.contains("split it")));
    assert_eq!(h.serve(get("ns", b"k")), HeadAnswer::Value(None));
}
