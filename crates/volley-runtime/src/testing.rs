//! Helpers for the crate's tests: nodes of this process that need no Python.

use std::time::{Duration, Instant};

/// A node of this process, with no worker that ever connects (its one worker is `sleep`).
pub(crate) fn node(dir: &std::path::Path, store_bytes: u64) -> crate::Node {
    crate::Node::start(crate::NodeConfig {
        num_cpus: 1.0,
        python: "sleep".into(),
        worker_args: vec!["30".into()],
        env: Vec::new(),
        log_to_driver: false,
        pipeline_depth: 1,
        idle_worker_timeout_ms: 60_000,
        object_store_memory: store_bytes,
        spill_dir: dir.to_path_buf(),
        inline_threshold: 100 << 10,
        resources: Vec::new(),
        max_workers: 1,
        wait_notice_ms: 0,
        template: None,
    })
    .expect("a node starts")
}

pub(crate) fn poll(what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < Duration::from_secs(20), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
