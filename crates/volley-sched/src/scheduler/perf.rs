//! A timing check of the per-task path (submit -> dispatch -> done -> release), run by hand
//! before and after a change to the scheduler's hot path:
//! `cargo test -p volley-sched --release -- --ignored per_task_path --nocapture`.

use super::*;
use std::time::Instant;
use volley_proto::{IdGenerator, TaskOptions};

const F: FunctionId = FunctionId([9; 16]);

fn spec(ids: &IdGenerator) -> TaskSpec {
    TaskSpec {
        task_id: ids.next_task(),
        function: F,
        name: "t".into(),
        args: ObjectData::default(),
        deps: vec![],
        num_returns: 1,
        options: TaskOptions::default(),
        actor: ActorPart::None,
    }
}

/// Nanoseconds per task: 8 CPUs, batches of 64 tasks submitted, run to completion on whichever
/// worker each went to, their results released.
fn per_task_ns(tasks: usize) -> f64 {
    let mut s = Scheduler::new(Config::with_cpus(8.0));
    s.register_function(F, Arc::from(&b"fn"[..]));
    let ids = IdGenerator::new();
    let mut out = Vec::new();
    s.start(&mut out);
    let spawned: Vec<WorkerId> = out
        .drain(..)
        .filter_map(|a| match a {
            Action::Spawn { worker } => Some(worker),
            _ => None,
        })
        .collect();
    for w in spawned {
        assert!(s.worker_connected(w, 100 + w.0, &mut out));
    }
    out.clear();
    let value = ObjectData { data: vec![1], ..Default::default() };
    let mut running: Vec<(WorkerId, TaskId)> = Vec::new();
    let mut done = 0;
    let start = Instant::now();
    while done < tasks {
        for _ in 0..64 {
            s.submit(Holder::Local, spec(&ids), &mut out);
        }
        loop {
            for a in out.drain(..) {
                if let Action::Execute { worker, spec, .. } = a {
                    running.push((worker, spec.task_id));
                }
            }
            let Some((w, t)) = running.pop() else { break };
            s.task_done(w, t, TaskResult::Ok(vec![value.clone()]), &mut out);
            s.decref(Holder::Local, &[ObjectId::for_return(t, 1)], &mut out);
            done += 1;
        }
    }
    assert_eq!(s.stats().objects, 0);
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
