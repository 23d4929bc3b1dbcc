//! A timing check of the per-task path (submit -> dispatch -> done -> release), run by hand
//! before and after a change to the scheduler's hot path:
//! `cargo test -p volley-sched --release -- --ignored per_task_path --nocapture`.

use super::harness::H;
use super::*;
use std::time::Instant;
use volley_proto::TaskOptions;

/// Nanoseconds per task: 8 CPUs, batches of 64 tasks submitted, run to completion on whichever
/// worker each went to, their results released.
fn per_task_ns(tasks: usize) -> f64 {
    let mut h = H::started(8.0);
    let value = ObjectData { data: vec![1], ..Default::default() };
    let mut running: Vec<(WorkerId, TaskId)> = Vec::new();
    let mut done = 0;
    let start = Instant::now();
    while done < tasks {
        for _ in 0..64 {
            let spec = h.spec(vec![], TaskOptions::default());
            h.s.submit(Holder::Local, spec, &mut h.out);
        }
        loop {
            for a in h.out.drain(..) {
                if let Action::Execute { worker, spec, .. } = a {
                    running.push((worker, spec.task_id));
                }
            }
            let Some((w, t)) = running.pop() else { break };
            h.s.task_done(w, t, TaskResult::Ok(vec![value.clone()]), &mut h.out);
            h.s.decref(Holder::Local, &[ObjectId::for_return(t, 1)], &mut h.out);
            done += 1;
        }
    }
    assert_eq!(h.s.stats().objects, 0);
    start.elapsed().as_nanos() as f64 / done as f64
}

#[test]
#[ignore = "a timing run, by hand"]
fn per_task_path() {
    per_task_ns(20_000); // Warm up.
    let mut runs: Vec<f64> = (0..7).map(|_| per_task_ns(200_000)).collect();
    runs.sort_by(f64::total_cmp);
    println!("per task: median {:.0} ns (runs {:?})", runs[3], runs);
}
