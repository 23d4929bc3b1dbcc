//! The node's resources as a part of the scheduler: CPUs, custom resources (`"GPU"`, names
//! the user chose, placement-group bundles) and which GPU indices are in use. Every change of
//! what is used goes through these methods, so a take is always matched by a give back with
//! the same amounts.

use std::collections::HashMap;

/// What this node has and what is in use, in thousandths.
pub(super) struct Resources {
    cpu_total: u32,
    cpu_used: u32,
    /// Totals of the resources other than CPU (placement-group bundles held here included).
    totals: HashMap<String, u64>,
    /// Resources other than CPU in use.
    used: HashMap<String, u64>,
    /// Per GPU (by index): thousandths in use.
    gpu_used: Vec<u32>,
}

impl Resources {
    pub(super) fn new(cpu_total: u32, totals: HashMap<String, u64>) -> Self {
        let gpus = totals.get("GPU").copied().unwrap_or(0);
        Resources {
            cpu_total,
            cpu_used: 0,
            totals,
            used: HashMap::new(),
            gpu_used: vec![0; (gpus / 1000) as usize],
        }
    }

    pub(super) fn cpu_total(&self) -> u32 {
        self.cpu_total
    }

    pub(super) fn cpu_used(&self) -> u32 {
        self.cpu_used
    }

    /// CPU not in use (0 when over-committed for a moment, see `take_cpu`).
    pub(super) fn cpu_free(&self) -> u32 {
        self.cpu_total.saturating_sub(self.cpu_used)
    }

    /// Whether `cpu` more would go past the node's CPUs.
    pub(super) fn cpu_short(&self, cpu: u32) -> bool {
        self.cpu_used + cpu > self.cpu_total
    }

    /// Counts `cpu` as used. A worker taking back the CPU it lent may over-commit for a moment:
    /// the lent-out work finishes and the balance returns.
    pub(super) fn take_cpu(&mut self, cpu: u32) {
        self.cpu_used += cpu;
    }

    /// Counts `cpu` as free again.
    pub(super) fn give_cpu(&mut self, cpu: u32) {
        self.cpu_used = self.cpu_used.saturating_sub(cpu);
    }

    /// The total of resource `r` here (0 if the node has none).
    pub(super) fn total(&self, r: &str) -> u64 {
        self.totals.get(r).copied().unwrap_or(0)
    }

    /// How much of resource `r` is in use.
    pub(super) fn used(&self, r: &str) -> u64 {
        self.used.get(r).copied().unwrap_or(0)
    }

    /// Totals of the resources other than CPU.
    pub(super) fn totals(&self) -> &HashMap<String, u64> {
        &self.totals
    }

    /// Whether this node has `cpu` and `res` at all (free or not): whether it could ever run
    /// what asks for them.
    pub(super) fn fits_total(&self, cpu: u32, res: &[(String, u64)]) -> bool {
        cpu <= self.cpu_total && res.iter().all(|(r, a)| *a <= self.total(r))
    }

    /// Whether `cpu` and `res` are free now.
    pub(super) fn fits(&self, cpu: u32, res: &[(String, u64)]) -> bool {
        self.cpu_used + cpu <= self.cpu_total
            && res.iter().all(|(r, a)| self.used(r) + a <= self.total(r))
    }

    /// Takes `res`; gives the GPUs (indices) picked for its `GPU` amount, or (for a resource of
    /// a placement-group bundle) those `bundle_gpus` says the bundle holds.
    pub(super) fn acquire(
        &mut self,
        res: &[(String, u64)],
        bundle_gpus: impl Fn(&str, u64) -> Option<Vec<u32>>,
    ) -> Vec<u32> {
        let mut gpus = Vec::new();
        for (r, a) in res {
            *self.used.entry(r.clone()).or_insert(0) += a;
            if r == "GPU" {
                gpus = self.take_gpus(*a);
            } else if gpus.is_empty() {
                if let Some(g) = bundle_gpus(r, *a) {
                    gpus = g;
                }
            }
        }
        gpus
    }

    /// Gives back `res` and the GPUs `gpus` taken with it.
    pub(super) fn release(&mut self, res: &[(String, u64)], gpus: &[u32]) {
        for (r, a) in res {
            if let Some(u) = self.used.get_mut(r) {
                *u = u.saturating_sub(*a);
            }
            if r == "GPU" {
                let each = if *a >= 1000 { 1000 } else { *a as u32 };
                for g in gpus {
                    if let Some(u) = self.gpu_used.get_mut(*g as usize) {
                        *u = u.saturating_sub(each);
                    }
                }
            }
        }
    }

    /// Takes one bundle's resources for a placement group (its CPU counted as used); gives the
    /// GPUs it holds.
    pub(super) fn reserve_bundle(&mut self, bundle: &[(String, u64)]) -> Vec<u32> {
        let mut gpus = Vec::new();
        for (r, a) in bundle {
            if r == "CPU" {
                self.cpu_used += *a as u32;
            } else {
                *self.used.entry(r.clone()).or_insert(0) += a;
                if r == "GPU" {
                    gpus = self.take_gpus(*a);
                }
            }
        }
        gpus
    }

    /// Gives back what `reserve_bundle` took.
    pub(super) fn release_bundle(&mut self, bundle: &[(String, u64)], gpus: &[u32]) {
        for (res, a) in bundle {
            if res == "CPU" {
                self.give_cpu(*a as u32);
            } else {
                self.release(&[(res.clone(), *a)], gpus);
            }
        }
    }

    /// Adds `amount` to the total of `name` (a placement-group bundle's resource).
    pub(super) fn add_total(&mut self, name: String, amount: u64) {
        *self.totals.entry(name).or_insert(0) += amount;
    }

    /// Forgets every resource whose name starts with `prefix` (a removed group's bundles).
    pub(super) fn remove_prefixed(&mut self, prefix: &str) {
        self.totals.retain(|r, _| !r.starts_with(prefix));
        self.used.retain(|r, _| !r.starts_with(prefix));
    }

    /// Resources other than CPU: name, total, free (thousandths), sorted by name.
    pub(super) fn usage(&self) -> Vec<(String, u64, u64)> {
        let mut v: Vec<(String, u64, u64)> = self
            .totals
            .iter()
            .map(|(r, total)| (r.clone(), *total, total.saturating_sub(self.used(r))))
            .collect();
        v.sort();
        v
    }

    /// Whole GPUs for an amount of one or more (the lowest free indices), or the fullest GPU
    /// with room for a fraction of one.
    fn take_gpus(&mut self, amount: u64) -> Vec<u32> {
        if amount == 0 || self.gpu_used.is_empty() {
            return Vec::new();
        }
        if amount >= 1000 {
            let want = amount.div_ceil(1000) as usize;
            let free: Vec<u32> = (0..self.gpu_used.len() as u32)
                .filter(|g| self.gpu_used[*g as usize] == 0)
                .take(want)
                .collect();
            for g in &free {
                self.gpu_used[*g as usize] = 1000;
            }
            return free;
        }
        let a = amount as u32;
        let best = (0..self.gpu_used.len())
            .filter(|g| self.gpu_used[*g] + a <= 1000)
            .max_by_key(|g| (self.gpu_used[*g], std::cmp::Reverse(*g)));
        match best {
            Some(g) => {
                self.gpu_used[g] += a;
                vec![g as u32]
            }
            None => Vec::new(),
        }
    }

    /// Test-only: changes the node's CPUs (a test of what a bigger node would say).
    #[cfg(test)]
    pub(super) fn set_cpu_total(&mut self, milli: u32) {
        self.cpu_total = milli;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(cpus: u32, gpus: u64) -> Resources {
        let mut totals = HashMap::new();
        if gpus > 0 {
            totals.insert("GPU".to_string(), gpus * 1000);
        }
        Resources::new(cpus * 1000, totals)
    }

    fn gpu(a: u64) -> Vec<(String, u64)> {
        vec![("GPU".to_string(), a)]
    }

    const NO_BUNDLE: fn(&str, u64) -> Option<Vec<u32>> = |_, _| None;

    #[test]
    fn cpu_taken_and_given_back_balances_and_fits_says_when_it_is_full() {
        let mut r = node(2, 0);
        assert!(r.fits(2000, &[]));
        r.take_cpu(1500);
        assert!(r.fits(500, &[]) && !r.fits(501, &[]));
        assert!(r.cpu_short(501) && !r.cpu_short(500));
        r.take_cpu(1000); // A blocked worker taking its CPU back over-commits for a moment.
        assert_eq!((r.cpu_used(), r.cpu_free()), (2500, 0));
        r.give_cpu(2500);
        assert_eq!(r.cpu_free(), 2000);
        r.give_cpu(1); // Never below zero.
        assert_eq!(r.cpu_used(), 0);
    }

    #[test]
    fn whole_gpus_take_the_lowest_free_indices_and_fractions_pack_the_fullest() {
        let mut r = node(1, 3);
        let two = r.acquire(&gpu(2000), NO_BUNDLE);
        assert_eq!(two, vec![0, 1]);
        assert!(!r.fits(0, &gpu(1001)), "only one GPU is left");
        let half = r.acquire(&gpu(500), NO_BUNDLE);
        assert_eq!(half, vec![2]);
        let quarter = r.acquire(&gpu(250), NO_BUNDLE);
        assert_eq!(quarter, vec![2], "a fraction goes to the fullest GPU with room");
        r.release(&gpu(2000), &two);
        let again = r.acquire(&gpu(250), NO_BUNDLE);
        assert_eq!(again, vec![2], "still the fullest with room");
        r.release(&gpu(500), &half);
        r.release(&gpu(250), &quarter);
        r.release(&gpu(250), &again);
        assert_eq!(r.usage(), vec![("GPU".to_string(), 3000, 3000)]);
        assert_eq!(r.acquire(&gpu(3000), NO_BUNDLE), vec![0, 1, 2]);
    }

    #[test]
    fn a_bundle_resource_uses_the_gpus_its_bundle_holds() {
        let mut r = node(2, 1);
        let res = vec![("pg:g:0:bundle".to_string(), 1000)];
        let gpus = r.acquire(&res, |name, _| (name == "pg:g:0:bundle").then(|| vec![0]));
        assert_eq!(gpus, vec![0]);
        assert_eq!(r.used("pg:g:0:bundle"), 1000);
    }

    #[test]
    fn bundles_reserve_cpu_and_gpus_and_removing_a_group_forgets_its_resources() {
        let mut r = node(4, 2);
        let bundle = vec![("CPU".to_string(), 2000), ("GPU".to_string(), 1000)];
        let gpus = r.reserve_bundle(&bundle);
        assert_eq!((r.cpu_used(), gpus.clone()), (2000, vec![0]));
        r.add_total("pg:g:CPU".into(), 2000);
        assert_eq!(r.total("pg:g:CPU"), 2000);
        assert!(r.fits(0, &[("pg:g:CPU".to_string(), 2000)]));
        r.release_bundle(&bundle, &gpus);
        r.remove_prefixed("pg:g:");
        assert_eq!(r.cpu_used(), 0);
        assert_eq!(r.usage(), vec![("GPU".to_string(), 2000, 2000)]);
    }
}
