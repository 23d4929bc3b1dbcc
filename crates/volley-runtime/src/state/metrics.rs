//! Prometheus histograms of the tasks the tables saw end: how long they ran, and how long they
//! waited from submission to their start (the scheduling latency). Counted as each task ends,
//! so a scrape reads a few hundred numbers whatever the size of the tables.

use std::fmt::Write;

/// Upper bounds of the buckets, in seconds (the times are milliseconds, so the first bucket
/// holds every task shorter than a millisecond).
const BOUNDS: [f64; 15] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0];

/// One histogram: counts per bucket (not cumulative; the text renders them cumulative).
#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BOUNDS.len() + 1],
    sum_ms: u64,
}

impl Histogram {
    fn observe(&mut self, ms: u64) {
        let s = ms as f64 / 1000.0;
        let i = BOUNDS.iter().position(|&b| s <= b).unwrap_or(BOUNDS.len());
        self.counts[i] += 1;
        self.sum_ms += ms;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cum = 0;
        for (i, b) in BOUNDS.iter().enumerate() {
            cum += self.counts[i];
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{b}\"}} {cum}");
        }
        cum += self.counts[BOUNDS.len()];
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {cum}");
        let plain = labels.trim_end_matches(',');
        let braces = if plain.is_empty() { String::new() } else { format!("{{{plain}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum_ms as f64 / 1000.0);
        let _ = writeln!(out, "{name}_count{braces} {cum}");
    }
}

/// The histograms and counters of ended tasks, by their final state.
#[derive(Default, Clone)]
pub(crate) struct TaskMetrics {
    /// Run time of tasks that started, by final state (FINISHED, FAILED, CANCELLED).
    duration: [Histogram; 3],
    /// Submission to start, of every task that started.
    latency: Histogram,
    /// Tasks that ended, by final state.
    ended: [u64; 3],
}

fn slot(state: volley_proto::TaskStateCode) -> usize {
    match state {
        volley_proto::TaskStateCode::Failed => 1,
        volley_proto::TaskStateCode::Cancelled => 2,
        _ => 0,
    }
}

const STATES: [&str; 3] = ["FINISHED", "FAILED", "CANCELLED"];

impl TaskMetrics {
    /// A task ended in `state` with these times (milliseconds since the epoch, 0: unknown).
    pub(crate) fn ended(
        &mut self,
        state: volley_proto::TaskStateCode,
        submitted_ms: u64,
        started_ms: u64,
        ended_ms: u64,
    ) {
        let s = slot(state);
        self.ended[s] += 1;
        if started_ms != 0 {
            if ended_ms >= started_ms {
                self.duration[s].observe(ended_ms - started_ms);
            }
            if submitted_ms != 0 && started_ms >= submitted_ms {
                self.latency.observe(started_ms - submitted_ms);
            }
        }
    }

    /// The Prometheus text (format 0.0.4) of these families.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP volley_tasks_ended_total Tasks that ended, by final state (the tables' view).\n\
             # TYPE volley_tasks_ended_total counter\n",
        );
        for (i, s) in STATES.iter().enumerate() {
            let _ = writeln!(out, "volley_tasks_ended_total{{state=\"{s}\"}} {}", self.ended[i]);
        }
        out.push_str(
            "# HELP volley_task_duration_seconds How long tasks ran, from start to end, by final state.\n\
             # TYPE volley_task_duration_seconds histogram\n",
        );
        for (i, s) in STATES.iter().enumerate() {
            self.duration[i].render(
                &mut out,
                "volley_task_duration_seconds",
                &format!("state=\"{s}\","),
            );
        }
        out.push_str(
            "# HELP volley_task_scheduling_latency_seconds How long tasks waited from submission to start.\n\
             # TYPE volley_task_scheduling_latency_seconds histogram\n",
        );
        self.latency.render(&mut out, "volley_task_scheduling_latency_seconds", "");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use volley_proto::TaskStateCode;

    #[test]
    fn buckets_are_cumulative_and_sums_in_seconds() {
        let mut m = TaskMetrics::default();
        m.ended(TaskStateCode::Finished, 1000, 1002, 1003);
        m.ended(TaskStateCode::Finished, 1000, 1000, 3000);
        m.ended(TaskStateCode::Failed, 0, 0, 5000);
        let t = m.render();
        assert!(t.contains("volley_tasks_ended_total{state=\"FINISHED\"} 2"), "{t}");
        assert!(t.contains("volley_tasks_ended_total{state=\"FAILED\"} 1"), "{t}");
        assert!(
            t.contains("volley_task_duration_seconds_bucket{state=\"FINISHED\",le=\"0.001\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("volley_task_duration_seconds_bucket{state=\"FINISHED\",le=\"2.5\"} 2"),
            "{t}"
        );
        assert!(t.contains("volley_task_duration_seconds_count{state=\"FINISHED\"} 2"), "{t}");
        assert!(t.contains("volley_task_duration_seconds_sum{state=\"FINISHED\"} 2.001"), "{t}");
        // A task that never started has no duration nor latency.
        assert!(t.contains("volley_task_duration_seconds_count{state=\"FAILED\"} 0"), "{t}");
        assert!(
            t.contains("volley_task_scheduling_latency_seconds_bucket{le=\"0.0025\"} 2"),
            "{t}"
        );
        assert!(t.contains("volley_task_scheduling_latency_seconds_count 2"), "{t}");
    }
}
