use std::io::{Read, Write};
use std::sync::Arc;

use volley_proto::{NodeId, NodeSnapshot};

use super::*;

fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn snapshot(id: u32) -> NodeSnapshot {
    NodeSnapshot {
        id: NodeId(id),
        addr: format!("127.0.0.1:{}", 6000 + id),
        cpu_total_milli: 4000,
        cpu_free_milli: 1500,
        resources: vec![("GPU".into(), 2000, 1000), ("pg:x:0:bundle".into(), 1000, 1000)],
        workers: 4,
        store_used: 1024,
        store_capacity: 1 << 20,
        tasks_waiting: 3,
        waiting: vec![],
        named: vec![],
        bytes_received: 77,
        bytes_served: 88,
        driver: false,
        pid: 1234,
        groups: vec![],
        sched: volley_proto::SchedCounters {
            tasks_queued: 5,
            tasks_assigned: 4,
            tasks_pipelined: 1,
            actor_restarts: 2,
            worker_crashes: 3,
            ..Default::default()
        },
        store: volley_proto::StoreCounters { spill_count: 9, ..Default::default() },
        mem_total: 8 << 30,
        mem_used: 3 << 30,
        heartbeat_rtt_us: 1500,
    }
}

#[test]
fn queries_parse_and_refuse_bad_input() {
    let q = parse_query(
        "tasks",
        &params(&[
            ("filter", "state=FAILED"),
            ("filter", "name!=f"),
            ("limit", "0"),
            ("detail", "1"),
        ]),
    )
    .expect("valid");
    assert_eq!(q.limit, None);
    assert!(q.detail);
    assert_eq!(q.filters[0], Filter { key: "state".into(), op: Op::Eq, value: "FAILED".into() });
    assert_eq!(q.filters[1].op, Op::Ne);
    assert_eq!(parse_query("actors", &[]).expect("valid").limit, Some(100));
    for (kind, ps, needle) in [
        ("bogus", vec![], "unknown kind"),
        ("tasks", params(&[("limit", "-1")]), "limit"),
        ("tasks", params(&[("filter", "state")]), "key=value"),
        ("tasks", params(&[("filter", "=x")]), "no key"),
        ("tasks", params(&[("detail", "yes")]), "detail"),
        ("tasks", params(&[("sort", "x")]), "unknown parameter"),
    ] {
        let e = parse_query(kind, &ps).expect_err(needle);
        assert_eq!(e.status, 400);
        assert!(e.message.contains(needle), "{}", e.message);
    }
}

#[test]
fn answers_filter_then_count_then_limit() {
    let rows: Vec<serde_json::Value> = (0..10)
        .map(|i| serde_json::json!({"i": i, "even": i % 2 == 0, "s": if i < 3 { "a" } else { "b" }, "n": null}))
        .collect();
    let q = parse_query(
        "nodes",
        &params(&[("filter", "even=true"), ("filter", "s!=a"), ("limit", "2")]),
    )
    .expect("valid");
    let a = answer("nodes", rows.clone(), &q);
    assert_eq!(a["total"], 3); // 4, 6, 8
    assert_eq!(a["rows"].as_array().map(|r| r.len()), Some(2));
    assert_eq!(a["truncated"], true);
    let q = parse_query("nodes", &params(&[("filter", "n=null"), ("filter", "missing=null")]))
        .expect("valid");
    assert_eq!(answer("nodes", rows, &q)["total"], 10);
}

#[test]
fn tokens_and_cookies() {
    assert!(auth::ct_eq(b"abc", b"abc"));
    assert!(!auth::ct_eq(b"abc", b"abd"));
    assert!(!auth::ct_eq(b"abc", b"abcd"));
    let c = format!("other=1; {}={}", auth::cookie_name(80), auth::cookie_value("t"));
    assert!(auth::authorized("t", 80, None, &[&c]));
    assert!(!auth::authorized("t", 81, None, &[&c]), "a cookie is for its port only");
    assert!(!auth::authorized("u", 80, None, &[&c]));
    assert!(auth::authorized("t", 80, Some("Bearer t"), &[]));
    assert!(!auth::authorized("t", 80, Some("Bearer x"), &[&c]), "a wrong bearer is refused");
    assert!(!auth::authorized("t", 80, None, &[]));
    assert!(auth::set_cookie(80, "t").contains("HttpOnly; SameSite=Strict"));
}

#[test]
fn metrics_follow_the_text_format() {
    let text = metrics::render(&[snapshot(1), snapshot(2)], "# HELP x y\n# TYPE x gauge\nx 1\n");
    assert!(text.contains("volley_nodes 2\n"), "{text}");
    assert!(text.contains("volley_tasks{node=\"2\",state=\"QUEUED\"} 5\n"));
    assert!(text.contains("volley_tasks{node=\"1\",state=\"RUNNING\"} 3\n"));
    assert!(text.contains("volley_cpus_used{node=\"1\"} 2.5\n"));
    assert!(text.contains("volley_resource_used{node=\"1\",resource=\"GPU\"} 1\n"));
    assert!(!text.contains("pg:"), "bundles are not resources of their own");
    assert!(text.contains("# TYPE volley_object_spills_total counter\n"));
    assert!(text.contains("volley_actor_restarts_total{node=\"1\"} 2\n"));
    assert!(text.contains("volley_worker_crashes_total{node=\"2\"} 3\n"));
    assert!(text.contains("volley_node_memory_bytes{node=\"1\",kind=\"total\"} 8589934592\n"));
    assert!(text.contains("volley_node_memory_bytes{node=\"1\",kind=\"used\"} 3221225472\n"));
    assert!(text.contains("volley_heartbeat_latency_seconds{node=\"2\"} 0.0015\n"), "{text}");
    assert!(text.ends_with("x 1\n"));
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = line.rsplit_once(' ').expect("a sample");
        assert!(value.parse::<f64>().is_ok(), "{line}");
        assert!(name.starts_with("volley_") || name == "x", "{line}");
    }
}

struct Fake;

impl Source for Fake {
    fn nodes(&self) -> Result<Vec<NodeSnapshot>, ApiError> {
        Ok(vec![snapshot(1)])
    }
}

fn http(port: u16, path: &str, headers: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(10))).expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n")
        .expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

#[test]
fn serves_with_the_token_only() {
    let url = start(Config {
        host: "127.0.0.1".into(),
        port: 0,
        port_given: true,
        token: "sekrit".into(),
        source: Arc::new(Fake),
        tls: None,
    })
    .expect("starts");
    let port: u16 =
        url.trim_end_matches('/').rsplit(':').next().and_then(|p| p.parse().ok()).expect("port");
    let again = start(Config {
        host: "127.0.0.1".into(),
        port: 0,
        port_given: true,
        token: "x".into(),
        source: Arc::new(Fake),
        tls: None,
    });
    assert!(again.is_err(), "one dashboard per process");
    assert!(http(port, "/api/v0/cluster", "").starts_with("HTTP/1.1 401"));
    assert!(http(port, "/metrics", "Authorization: Bearer nope\r\n").starts_with("HTTP/1.1 401"));
    let r = http(port, "/?token=sekrit&x=1", "");
    assert!(r.starts_with("HTTP/1.1 303"), "{r}");
    assert!(r.to_ascii_lowercase().contains("location: /?x=1"), "{r}");
    let cookie =
        format!("Cookie: {}={}\r\n", auth::cookie_name(port), auth::cookie_value("sekrit"));
    let r = http(port, "/api/v0/nodes?filter=id=1", &cookie);
    assert!(r.starts_with("HTTP/1.1 200") && r.contains("\"total\":1"), "{r}");
    let r = http(port, "/api/v0/tasks", &cookie);
    assert!(r.starts_with("HTTP/1.1 501") && r.contains("not available"), "{r}");
    let r = http(port, "/api/v0/nodes?limit=x", "Authorization: Bearer sekrit\r\n");
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    let r = http(port, "/metrics", "Authorization: Bearer sekrit\r\n");
    assert!(r.contains("volley_nodes 1"), "{r}");
    assert!(http(port, "/static/app.js", "").starts_with("HTTP/1.1 200"));
    stop();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "stopped");
}
