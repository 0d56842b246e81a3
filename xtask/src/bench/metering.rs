//! What the machine spends: the CPU and memory of the processes that carry
//! the traffic (from /proc), and the CPU time the hypervisor gave to other
//! guests (steal).
use std::time::{Duration, Instant};

/// A process's CPU ticks (user+system) and memory.
struct Usage {
    ticks: u64,
    /// VmRSS: everything mapped in, the shared binary's pages included.
    rss_kb: u64,
    /// RssAnon: memory the process alone holds (heap, stacks).
    anon_kb: u64,
}

fn proc_usage(pid: u32) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(Usage {
        ticks: stat_ticks(&stat)?,
        rss_kb: kb_field(&status, "VmRSS:")?,
        anon_kb: kb_field(&status, "RssAnon:")?,
    })
}

/// utime + stime of a /proc/<pid>/stat line. The command name before them
/// is in parentheses and may hold spaces, so fields count from its `)`.
fn stat_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// A `Key:   123 kB` line of a /proc file, in kB.
fn kb_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// How much of its memory the busiest agent touches while idle: RSS also
/// counts the binary's pages that startup touched once and that stay
/// mapped, so this tells them apart from what the agent keeps using. The
/// kernel's referenced bits are cleared, and counted again after a while.
pub fn idle_working_set_mib(pids: &[u32]) -> Option<f64> {
    for pid in pids {
        std::fs::write(format!("/proc/{pid}/clear_refs"), "1").ok()?;
    }
    std::thread::sleep(Duration::from_secs(2));
    pids.iter()
        .map(|pid| {
            let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
            kb_field(&rollup, "Referenced:")
        })
        .try_fold(0u64, |max, kb| Some(max.max(kb?)))
        .map(mib)
}

/// Meters a set of processes (the agents, or the relays) over an interval.
pub struct AgentMeter {
    pids: Vec<u32>,
    start: Vec<u64>,
    at: Instant,
}

/// The busiest process's CPU and the largest one's memory over an
/// interval: with one forwarder per node, the busier node is the one that
/// limits.
pub struct Metered {
    /// Percent of one CPU.
    pub cpu: f64,
    pub rss_mib: f64,
    pub anon_mib: f64,
}

impl AgentMeter {
    pub fn start(pids: &[u32]) -> Self {
        Self {
            pids: pids.to_vec(),
            start: pids
                .iter()
                .map(|p| proc_usage(*p).map(|u| u.ticks).unwrap_or(0))
                .collect(),
            at: Instant::now(),
        }
    }

    /// Highest per-process CPU % over the interval, and highest memory now.
    pub fn stop(&self) -> Metered {
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let secs = self.at.elapsed().as_secs_f64();
        let mut m = Metered {
            cpu: 0.0,
            rss_mib: 0.0,
            anon_mib: 0.0,
        };
        for (pid, t0) in self.pids.iter().zip(&self.start) {
            if let Some(u) = proc_usage(*pid) {
                m.cpu = m.cpu.max((u.ticks - t0) as f64 / hz / secs * 100.0);
                m.rss_mib = m.rss_mib.max(mib(u.rss_kb));
                m.anon_mib = m.anon_mib.max(mib(u.anon_kb));
            }
        }
        m
    }
}

/// Time the hypervisor gave this VM's CPUs to others while a mode was
/// measured (/proc/stat `steal`), summed over that mode's stages. Under
/// steal every figure, direct included, gets slower and noisier, so the
/// table says how much there was.
#[derive(Default)]
pub struct Steal {
    steal: u64,
    total: u64,
}

impl Steal {
    /// (steal, all) jiffies of all CPUs since boot.
    pub fn read() -> Option<(u64, u64)> {
        cpu_jiffies(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    pub fn add(&mut self, before: Option<(u64, u64)>, after: Option<(u64, u64)>) {
        if let (Some((s0, t0)), Some((s1, t1))) = (before, after) {
            self.steal += s1.saturating_sub(s0);
            self.total += t1.saturating_sub(t0);
        }
    }

    pub fn percent(&self) -> Option<f64> {
        (self.total > 0).then(|| self.steal as f64 * 100.0 / self.total as f64)
    }
}

/// (steal, all) from the first (all CPUs) line of /proc/stat.
fn cpu_jiffies(stat: &str) -> Option<(u64, u64)> {
    let cpu: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is
    // already inside user).
    let total = cpu.iter().take(8).sum();
    Some((*cpu.get(7)?, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn referenced_is_read_from_smaps_rollup() {
        let rollup = "55d0-7ffe ---p 00000000 00:00 0 [rollup]\nRss:               15664 kB\nPss:               14000 kB\nReferenced:          1840 kB\nAnonymous:          1588 kB\n";
        assert_eq!(kb_field(rollup, "Referenced:"), Some(1840));
        assert_eq!(kb_field(rollup, "RssAnon:"), None);
    }

    #[test]
    fn cpu_ticks_count_from_after_the_command_name() {
        let stat = "4242 (mesh agent) S 1 4242 4242 0 -1 4194560 2171 0 0 0 37 12 0 0 20 0 3 0 81920 91234304 2290 18446744073709551615\n";
        assert_eq!(stat_ticks(stat), Some(49));
        assert_eq!(stat_ticks("4242 (x) S 1"), None);
    }

    #[test]
    fn steal_is_the_eighth_cpu_column() {
        let stat = "cpu  100 5 50 800 10 1 4 30 0 0\ncpu0 50 2 25 400 5 0 2 15 0 0\n";
        assert_eq!(cpu_jiffies(stat), Some((30, 1000)));
    }

    #[test]
    fn steal_sums_the_stages_of_a_mode() {
        let mut steal = Steal::default();
        assert_eq!(steal.percent(), None);
        steal.add(Some((10, 1000)), Some((20, 1100)));
        steal.add(Some((50, 2000)), Some((80, 2100)));
        steal.add(None, Some((90, 2200)));
        assert_eq!(steal.percent(), Some(20.0));
    }
}
