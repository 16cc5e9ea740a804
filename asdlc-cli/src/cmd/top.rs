//! `asdlc top`: every group of every stream, redrawn each interval, with processed/s from the
//! progress between two refreshes (entries read minus pending, Redis 7+).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use asdlc_runtime::get_stream_info;

use crate::cli::TopArgs;
use crate::ctx::Ctx;
use crate::error::{CliError, EXIT_OK};
use crate::fmt::{Table, duration, oldest_pending, or_dash};

pub async fn run(ctx: &mut Ctx, args: TopArgs) -> Result<u8, CliError> {
    let tty = std::io::stdout().is_terminal() && !ctx.json;
    let url = ctx.url();
    let interval = args.interval.max(Duration::from_millis(50));
    let mut before: HashMap<(String, String), (Instant, u64)> = HashMap::new();
    let mut frame = 0u64;
    loop {
        frame += 1;
        let mut groups = Table::new([
            "STREAM",
            "TENANT",
            "GROUP",
            "CONSUMERS",
            "LAG",
            "PENDING",
            "OLDEST PENDING",
            "PROCESSED/S",
            "DEAD",
        ]);
        let mut rows = Vec::new();
        for t in ctx.targets().await? {
            let info = get_stream_info(ctx.conn().await?, &t.stream)
                .await
                .map_err(|e| CliError::stream(&url, e))?;
            let now = Instant::now();
            for g in &info.groups {
                let done = g.entries_read.map(|r| r.saturating_sub(g.pending));
                let key = (t.stream.clone(), g.name.clone());
                let rate = match (done, before.get(&key)) {
                    (Some(d), Some((t0, d0))) if now > *t0 => {
                        Some(d.saturating_sub(*d0) as f64 / (now - *t0).as_secs_f64())
                    }
                    _ => None,
                };
                if let Some(d) = done {
                    before.insert(key, (now, d));
                }
                rows.push(serde_json::json!({
                    "stream": t.stream, "tenant": t.tenant.as_ref().map(ToString::to_string),
                    "group": g.name, "consumers": g.consumers.len(), "lag": g.lag,
                    "pending": g.pending, "oldest_pending_ms": g.oldest_pending_ms,
                    "processed_per_second": rate, "dead_letters": info.dead_letters,
                }));
                groups.row([
                    t.stream.clone(),
                    or_dash(t.tenant.as_ref()),
                    g.name.clone(),
                    g.consumers.len().to_string(),
                    or_dash(g.lag),
                    g.pending.to_string(),
                    oldest_pending(g),
                    rate.map_or_else(|| "-".to_owned(), |r| format!("{r:.1}")),
                    info.dead_letters.to_string(),
                ]);
            }
        }
        if ctx.json {
            ctx.out.json(&serde_json::json!({ "groups": rows }))?;
        } else {
            if tty {
                // Home and clear, like top.
                ctx.out.line("\x1b[H\x1b[2J\x1b[3J")?;
            } else if frame > 1 {
                ctx.out.line("")?;
            }
            ctx.out.line(format!(
                "asdlc top: {url} · {} · {} · every {}",
                ctx.config.stream,
                chrono::Local::now().format("%H:%M:%S"),
                duration(interval)
            ))?;
            if groups.is_empty() {
                ctx.out.line("no consumer groups")?;
            } else {
                groups.print(&mut ctx.out, "")?;
            }
        }
        if args.iterations.is_some_and(|n| frame >= n) {
            return Ok(EXIT_OK);
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(EXIT_OK),
        }
    }
}
