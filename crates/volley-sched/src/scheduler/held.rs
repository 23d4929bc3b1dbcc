//! Resources held for something that is not a task, an actor or a placement group: a submitted
//! job's entrypoint, which the head's node keeps for the driver while it runs (as Ray reserves
//! `entrypoint_num_cpus`). They come from the same free pool tasks take from, so a task waits
//! while a job holds the CPU, and the wait notices name the job as the holder.

use std::collections::BTreeMap;

use super::{milli, Action, Scheduler};

/// What each holder (by its key, e.g. "job 'abc'") holds here.
#[derive(Default)]
pub(super) struct Holds {
    by_key: BTreeMap<String, Hold>,
}

struct Hold {
    cpu: u32,
    res: Vec<(String, u64)>,
    /// The GPUs (indices) picked for its `GPU` amount.
    gpus: Vec<u32>,
}

impl Holds {
    /// (key, CPU, other resources) of each hold, by key.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&str, u32, &[(String, u64)])> {
        self.by_key.iter().map(|(k, h)| (k.as_str(), h.cpu, h.res.as_slice()))
    }
}

impl Scheduler {
    /// Takes `cpu_milli` and `resources` (thousandths) from this node's free pool for `key`
    /// (a label the wait notices show as the holder, e.g. "job 'abc'") until
    /// [`Scheduler::release_resources`]. All or nothing: an error saying what is short (and who
    /// holds it) when they are not free now, or when `key` holds resources already. Gives the
    /// indices of the GPUs picked for a `GPU` amount (none without one), so that the holder
    /// (a job's driver) can be shown those and no others.
    pub fn hold_resources(
        &mut self,
        key: &str,
        cpu_milli: u32,
        resources: &[(String, u64)],
    ) -> Result<Vec<u32>, String> {
        if self.holds.by_key.contains_key(key) {
            return Err(format!("{key} holds resources here already"));
        }
        let res: Vec<(String, u64)> = resources.iter().filter(|(_, a)| *a > 0).cloned().collect();
        if let Some((r, a)) = res.iter().find(|(r, a)| *a > self.res.total(r)) {
            return Err(format!(
                "{} {r}: this node has {} in all",
                milli(*a),
                milli(self.res.total(r))
            ));
        }
        if cpu_milli > self.res.cpu_total() {
            return Err(format!(
                "{} CPU: this node has {} in all",
                milli(cpu_milli.into()),
                milli(self.res.cpu_total().into())
            ));
        }
        if !self.res.fits(cpu_milli, &res) {
            return Err(self.shortfall(cpu_milli, &res).join("; "));
        }
        self.res.take_cpu(cpu_milli);
        let gpus = self.res.acquire(&res, |_, _| None);
        self.holds.by_key.insert(key.to_string(), Hold { cpu: cpu_milli, res, gpus: gpus.clone() });
        Ok(gpus)
    }

    /// Gives back what `key` holds (nothing if it holds nothing) and starts the work that
    /// waited for it.
    pub fn release_resources(&mut self, key: &str, out: &mut Vec<Action>) {
        if let Some(h) = self.holds.by_key.remove(key) {
            self.res.give_cpu(h.cpu);
            self.res.release(&h.res, &h.gpus);
            self.schedule(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::harness::H;
    use volley_proto::TaskOptions;

    #[test]
    fn a_hold_takes_the_cpu_tasks_use_until_released_and_is_named_in_the_notice() {
        let mut h = H::with_resources(1.0, &[("GPU", 1000)]);
        let gpus = h.s.hold_resources("job 'j1'", 1000, &[]).expect("free");
        assert!(gpus.is_empty(), "no GPU asked for, none given");
        assert_eq!(h.s.stats().cpu_used_milli, 1000);
        let f = h.cpu_task("f");
        assert_eq!(h.s.stats().tasks_queued, 1, "the task waits for the held CPU");
        let said = h.tick_logs(10_000);
        assert_eq!(
            said,
            vec!["volley: task 'f' has waited 10 s for 1 CPU: the one CPU is held by job 'j1'"
                .to_string()]
        );
        let why = h.s.explain_wait(f).expect("queued");
        assert!(why.contains("held by job 'j1'"), "{why}");
        let busy = h.s.hold_resources("job 'j2'", 500, &[]).expect_err("no CPU left");
        assert!(busy.contains("the one CPU is held by job 'j1'"), "{busy}");
        let again = h.s.hold_resources("job 'j1'", 0, &[]).expect_err("one hold per key");
        assert!(again.contains("already"), "{again}");
        h.out.clear();
        h.s.release_resources("job 'j1'", &mut h.out);
        assert_eq!(h.s.stats().tasks_queued, 0, "released: the task runs");
        h.s.release_resources("job 'j1'", &mut h.out); // twice is harmless
        assert_eq!(h.s.stats().cpu_used_milli, 1000, "the task's CPU only");
    }

    #[test]
    fn a_held_gpu_is_not_given_to_a_task_and_too_much_is_refused() {
        let mut h = H::with_resources(2.0, &[("GPU", 1000)]);
        let gpus = h.s.hold_resources("job 'g'", 0, &[("GPU".into(), 1000)]).expect("free");
        assert_eq!(gpus, vec![0], "the one GPU, by its index");
        h.submit_named(
            "g",
            TaskOptions {
                cpu_milli: 0,
                resources: vec![("GPU".into(), 500)],
                ..Default::default()
            },
        );
        assert_eq!(h.s.stats().tasks_queued, 1);
        assert_eq!(h.s.resource_usage(), vec![("GPU".to_string(), 1000, 0)]);
        let e = h.s.hold_resources("job 'x'", 3000, &[]).expect_err("more than the node");
        assert!(e.contains("this node has 2 in all"), "{e}");
        let e = h.s.hold_resources("job 'x'", 0, &[("disk".into(), 1)]).expect_err("none");
        assert!(e.contains("0.001 disk: this node has 0 in all"), "{e}");
        h.s.release_resources("job 'g'", &mut h.out);
        assert_eq!(h.s.stats().tasks_queued, 0);
    }

    #[test]
    fn each_hold_gets_gpus_of_its_own_and_a_released_one_is_picked_again() {
        let mut h = H::with_resources(2.0, &[("GPU", 2000)]);
        let gpu = |n| vec![("GPU".to_string(), n)];
        assert_eq!(h.s.hold_resources("job 'a'", 0, &gpu(1000)), Ok(vec![0]));
        assert_eq!(h.s.hold_resources("job 'b'", 0, &gpu(1000)), Ok(vec![1]));
        let e = h.s.hold_resources("job 'c'", 0, &gpu(500)).expect_err("both held");
        assert!(e.contains("GPU"), "{e}");
        h.s.release_resources("job 'a'", &mut h.out);
        assert_eq!(h.s.hold_resources("job 'c'", 0, &gpu(500)), Ok(vec![0]), "a's, free again");
        h.s.release_resources("job 'b'", &mut h.out);
        h.s.release_resources("job 'c'", &mut h.out);
        assert_eq!(h.s.hold_resources("job 'd'", 0, &gpu(2000)), Ok(vec![0, 1]));
    }
}
