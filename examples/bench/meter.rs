//! What a timed part measures: its rate and the CPU it took per event, in this process and
//! in the server.

use std::time::Instant;

use crate::Bench;

/// One timed run: its rate and the CPU it took per event, in this process and in the server.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) rate: f64,
    pub(crate) client_us: f64,
    pub(crate) server_us: f64,
    /// Context switches of this process's threads per event: how often a thread went to
    /// sleep and was woken (voluntary) or was preempted.
    pub(crate) switches: f64,
}

/// Wall clock and CPU time at the start of a timed section.
pub(crate) struct Meter {
    wall: Instant,
    client: f64,
    server: f64,
    switches: u64,
}

/// Context switches of every thread of this process so far, from `/proc/self/task/*/status`
/// (threads that ended are not counted: the runtimes measured keep theirs alive).
pub(crate) fn context_switches() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// CPU time stolen from this machine by its host so far (the `steal` ticks of `/proc/stat`),
/// and all ticks, to tell how much of a run's time the host took.
pub(crate) fn steal_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let ticks: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    (ticks.get(7).copied().unwrap_or(0), ticks.iter().sum())
}

/// The share of the machine's time its host stole between two [`steal_ticks`] readings, in %.
pub(crate) fn steal_percent(start: (u64, u64), end: (u64, u64)) -> f64 {
    let total = end.1.saturating_sub(start.1).max(1);
    100.0 * end.0.saturating_sub(start.0) as f64 / total as f64
}

/// CPU seconds used by this process so far (all threads), from `/proc/self/stat`.
pub(crate) fn process_cpu() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line, 11 and 12 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

impl Meter {
    pub(crate) async fn start(b: &Bench) -> Meter {
        let server = b.server_cpu().await;
        Meter {
            client: process_cpu(),
            server,
            switches: context_switches(),
            wall: Instant::now(),
        }
    }

    pub(crate) async fn stop(self, b: &Bench, n: usize) -> Sample {
        let took = self.wall.elapsed();
        let client = process_cpu() - self.client;
        let switches = context_switches().saturating_sub(self.switches);
        let server = b.server_cpu().await - self.server;
        Sample {
            rate: n as f64 / took.as_secs_f64(),
            client_us: client * 1e6 / n as f64,
            server_us: server * 1e6 / n as f64,
            switches: switches as f64 / n as f64,
        }
    }
}

/// The sample of median rate.
pub(crate) fn median(mut v: Vec<Sample>) -> Sample {
    v.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    v[v.len() / 2]
}

pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}
