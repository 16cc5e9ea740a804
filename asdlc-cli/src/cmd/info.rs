//! `asdlc info`: every stream, its groups and consumers.

use std::time::Duration;

use asdlc_runtime::{StreamInfo, get_stream_info};
use serde::Serialize;

use crate::ctx::Ctx;
use crate::error::{CliError, EXIT_OK};
use crate::fmt::{Table, duration, oldest_pending, or_dash};

#[derive(Serialize)]
struct Described {
    tenant: Option<String>,
    #[serde(flatten)]
    info: StreamInfo,
}

pub async fn run(ctx: &mut Ctx) -> Result<u8, CliError> {
    let targets = ctx.targets().await?;
    let url = ctx.url();
    let mut described = Vec::with_capacity(targets.len());
    for t in &targets {
        let info = get_stream_info(ctx.conn().await?, &t.stream)
            .await
            .map_err(|e| CliError::stream(&url, e))?;
        described.push(Described {
            tenant: t.tenant.as_ref().map(ToString::to_string),
            info,
        });
    }
    if ctx.json {
        ctx.out.json(&serde_json::json!({ "streams": described }))?;
        return Ok(EXIT_OK);
    }
    if described.is_empty() {
        ctx.out.line("no streams found")?;
        return Ok(EXIT_OK);
    }
    let mut summary = Table::new([
        "STREAM", "TENANT", "LENGTH", "GROUPS", "PENDING", "DEAD", "FIRST", "LAST",
    ]);
    for d in &described {
        let i = &d.info;
        if !i.exists {
            summary.row([
                i.stream.clone(),
                or_dash(d.tenant.as_ref()),
                "(missing)".to_owned(),
                "-".into(),
                "-".into(),
                i.dead_letters.to_string(),
                "-".into(),
                "-".into(),
            ]);
            continue;
        }
        summary.row([
            i.stream.clone(),
            or_dash(d.tenant.as_ref()),
            i.length.to_string(),
            i.groups.len().to_string(),
            i.total_pending().to_string(),
            i.dead_letters.to_string(),
            or_dash(i.first_id.as_ref()),
            or_dash(i.last_id.as_ref()),
        ]);
    }
    summary.print(&mut ctx.out, "")?;
    for d in &described {
        let i = &d.info;
        if !i.exists {
            continue;
        }
        ctx.out.line("")?;
        if i.groups.is_empty() {
            ctx.out.line(format!("{}: no consumer groups", i.stream))?;
            continue;
        }
        ctx.out.line(format!("{}:", i.stream))?;
        let mut groups = Table::new([
            "GROUP",
            "CONSUMERS",
            "LAG",
            "PENDING",
            "OLDEST PENDING",
            "LAST DELIVERED",
        ]);
        let mut consumers = Table::new(["GROUP", "CONSUMER", "PENDING", "IDLE"]);
        for g in &i.groups {
            groups.row([
                g.name.clone(),
                g.consumers.len().to_string(),
                or_dash(g.lag),
                g.pending.to_string(),
                oldest_pending(g),
                g.last_delivered_id.clone(),
            ]);
            for c in &g.consumers {
                consumers.row([
                    g.name.clone(),
                    c.name.clone(),
                    c.pending.to_string(),
                    duration(Duration::from_millis(c.idle_ms)),
                ]);
            }
        }
        groups.print(&mut ctx.out, "  ")?;
        for g in i.groups.iter().filter(|g| g.held_back > 0) {
            ctx.out.line(format!(
                "  {}: {} held back behind an unfinished earlier entry of their key (ordered)",
                g.name, g.held_back
            ))?;
        }
        if !consumers.is_empty() {
            ctx.out.line("")?;
            consumers.print(&mut ctx.out, "  ")?;
        }
    }
    Ok(EXIT_OK)
}
