//! Resident memory and CPU time of a process, read from `/proc` (Linux).

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    pub rss_kib: u64,
    /// User + system CPU time, seconds.
    pub cpu_secs: f64,
}

/// Reads `/proc/<pid>/status` (VmRSS) and `/proc/<pid>/stat` (utime + stime).
pub fn sample(pid: u32) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())?;
    let cpu_secs = cpu_secs(&format!("/proc/{pid}/stat"))?;
    Some(Sample { rss_kib, cpu_secs })
}

/// CPU time (user + system, seconds) of the calling process's main thread — the load
/// generator's reader thread (`/proc/self/task/<pid>/stat`).
pub fn main_thread_cpu_secs() -> Option<f64> {
    let pid = std::process::id();
    cpu_secs(&format!("/proc/{pid}/task/{pid}/stat"))
}

/// utime + stime of a `/proc/.../stat` file, seconds.
fn cpu_secs(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some(ticks / 100.0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_itself() {
        let s = super::sample(std::process::id()).expect("own /proc entry");
        assert!(s.rss_kib > 0);
        assert!(s.cpu_secs >= 0.0);
        assert!(super::main_thread_cpu_secs().is_some_and(|c| c >= 0.0));
    }
}
