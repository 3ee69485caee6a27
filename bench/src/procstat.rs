//! What the kernel says about processes and the machine (`/proc`): a
//! process's resident memory and CPU time, the CPU time of this process's
//! waited-for children, and the machine's busy and total CPU time — so that
//! a phase can tell tenantd's cost from the client's and the database's.

use std::time::Duration;

/// `VmRSS` of /proc/<pid>/status, in kB.
pub fn vm_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

pub fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// The fields of /proc/<pid>/stat after the parenthesised command name (the
/// third field of the line is the first here).
fn stat_fields(pid: &str) -> Option<Vec<u64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    // Non-numeric fields (the state letter) read as 0; only numbers are used.
    Some(
        rest.split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect(),
    )
}

fn ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100, |t| t.max(1) as u64)
}

fn ticks(n: u64) -> Duration {
    Duration::from_millis(n * 1000 / ticks_per_second())
}

/// User plus system CPU time of process `pid` so far.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let f = stat_fields(&pid.to_string())?;
    // utime and stime: the 14th and 15th fields of the line.
    Some(ticks(f.get(11)? + f.get(12)?))
}

/// User plus system CPU time of this process so far.
pub fn own_cpu_time() -> Option<Duration> {
    cpu_time(std::process::id())
}

/// User plus system CPU time of this process's children that have been
/// waited for (cutime, cstime): a child's CPU counts here once it is reaped.
pub fn children_cpu_time() -> Option<Duration> {
    let f = stat_fields("self")?;
    Some(ticks(f.get(13)? + f.get(14)?))
}

/// The machine's CPU time, all cores together: busy (everything but idle
/// and iowait) and total, from the first line of /proc/stat.
#[derive(Debug, Clone, Copy)]
pub struct MachineCpu {
    pub busy: Duration,
    pub total: Duration,
}

pub fn machine_cpu() -> Option<MachineCpu> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already
    // in user and nice).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some(MachineCpu {
        busy: ticks(total - idle),
        total: ticks(total),
    })
}
