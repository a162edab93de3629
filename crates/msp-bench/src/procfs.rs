//! What the bench reads about its processes from `/proc`: CPU time (`utime + stime`, all threads, the ones
//! that exited included), resident memory and its peak. Readers return `None` for a process that is gone.

use std::path::Path;

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, 100 on Linux for every architecture the
/// agent runs on).
pub const TICKS_PER_SEC: u64 = 100;

/// `utime + stime` of `pid`, in clock ticks (fields 14 and 15 of `/proc/<pid>/stat`).
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; count fields after its last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let mut fields = rest.split_ascii_whitespace();
    // `rest` starts at field 3; utime is field 14.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The nice value of `pid` (field 19 of `/proc/<pid>/stat`).
pub fn nice(pid: u32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    rest.split_ascii_whitespace().nth(16)?.parse().ok()
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in bytes.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        let v = l.strip_prefix(field)?.strip_prefix(':')?;
        v.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()
    })
}

/// Resident set size now, bytes.
pub fn rss(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS").map(|k| k * 1024)
}

/// The hard `RLIMIT_NOFILE` of a process, from `/proc/<pid>/limits` (`None`: unreadable or unlimited).
pub fn nofile_hard(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_ascii_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Peak resident set size since start, bytes.
pub fn peak_rss(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM").map(|k| k * 1024)
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = text
        .split_ascii_whitespace()
        .map(|v| v.parse().unwrap_or(0.0));
    [
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
    ]
}

/// `CLOCK_MONOTONIC` now, nanoseconds: comparable between the bench and its workers.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| (t.tv_sec() as u64) * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// Size of a file, bytes.
pub fn file_size(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(cpu_ticks(me).is_some());
        assert!(rss(me).unwrap() > 0);
        assert!(peak_rss(me).unwrap() >= rss(me).unwrap() / 2);
        assert!(monotonic_ns() > 0);
        assert_eq!(cpu_ticks(u32::MAX), None);
    }
}
