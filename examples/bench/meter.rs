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
}

/// Wall clock and CPU time at the start of a timed section.
pub(crate) struct Meter {
    wall: Instant,
    client: f64,
    server: f64,
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
            wall: Instant::now(),
        }
    }

    pub(crate) async fn stop(self, b: &Bench, n: usize) -> Sample {
        let took = self.wall.elapsed();
        let client = process_cpu() - self.client;
        let server = b.server_cpu().await - self.server;
        Sample {
            rate: n as f64 / took.as_secs_f64(),
            client_us: client * 1e6 / n as f64,
            server_us: server * 1e6 / n as f64,
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
