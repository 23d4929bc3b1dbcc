//! Facts about the machine a node runs on, for its snapshot (`NodeSnapshot::mem_total`).

/// The host's memory in bytes, `(total, used)`, from `/proc/meminfo`: used is `MemTotal -
/// MemAvailable`, the memory the kernel could not give a new process without swapping (the
/// figure `free` shows as "available", the one an out-of-memory kill depends on). `None` where
/// the file is missing or lacks either line (not Linux, a restricted container).
pub(crate) fn memory() -> Option<(u64, u64)> {
    parse_meminfo(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let kib = |key: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        let rest = line[key.len()..].trim_start().strip_prefix(':')?;
        rest.split_whitespace().next()?.parse::<u64>().ok().map(|k| k.saturating_mul(1024))
    };
    let total = kib("MemTotal")?;
    let available = kib("MemAvailable")?;
    Some((total, total.saturating_sub(available)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_gives_total_and_total_minus_available() {
        let text = "MemTotal:       16000 kB\nMemFree:  100 kB\nMemAvailable:    4000 kB\n";
        assert_eq!(parse_meminfo(text), Some((16000 * 1024, 12000 * 1024)));
        assert_eq!(parse_meminfo("MemTotal: 5 kB\n"), None, "no MemAvailable line");
        assert_eq!(parse_meminfo("MemTotal: x kB\nMemAvailable: 1 kB\n"), None);
    }

    #[test]
    fn this_host_has_memory() {
        let (total, used) = memory().expect("/proc/meminfo on Linux");
        assert!(total > 0 && used <= total, "{total} {used}");
    }
}
