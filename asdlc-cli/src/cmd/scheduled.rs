//! `asdlc scheduled`: list scheduled events (due and upcoming), cancel one.

use asdlc_runtime::schedule::{self, ScheduledEntry};
use chrono::Utc;
use serde_json::json;

use crate::cli::ScheduledCommand;
use crate::ctx::Ctx;
use crate::error::{CliError, EXIT_OK};
use crate::fmt::Table;

pub async fn run(ctx: &mut Ctx, command: ScheduledCommand) -> Result<u8, CliError> {
    match command {
        ScheduledCommand::List { limit } => list(ctx, limit).await,
        ScheduledCommand::Cancel { key } => cancel(ctx, &key).await,
    }
}

fn field<'a>(e: &'a ScheduledEntry, name: &str) -> &'a str {
    e.fields
        .iter()
        .find(|(k, _)| k == name)
        .map_or("-", |(_, v)| v.as_str())
}

/// "in 3.2 s", or "due 1.5 s ago" for one a promoter has not appended yet.
fn when(e: &ScheduledEntry) -> String {
    let ms = (e.due - Utc::now()).num_milliseconds();
    if ms >= 0 {
        format!("in {:.1} s", ms as f64 / 1000.0)
    } else {
        format!("due {:.1} s ago", -ms as f64 / 1000.0)
    }
}

async fn list(ctx: &mut Ctx, limit: usize) -> Result<u8, CliError> {
    let all = ctx
        .read_targets(async |conn, stream| schedule::list(conn, stream, limit).await)
        .await?;
    if ctx.json {
        let listed: Vec<_> = all
            .iter()
            .flat_map(|(t, es)| {
                es.iter().map(move |e| {
                    json!({
                        "stream": t.stream,
                        "tenant": t.tenant.as_ref().map(ToString::to_string),
                        "key": e.key,
                        "due": e.due.to_rfc3339(),
                        "event_type": field(e, "event_type"),
                        "session_id": field(e, "session_id"),
                    })
                })
            })
            .collect();
        ctx.out.json(&json!({ "scheduled": listed }))?;
        return Ok(EXIT_OK);
    }
    let mut table = Table::new(["KEY", "STREAM", "DUE", "WHEN", "TYPE", "SESSION"]);
    for (t, es) in &all {
        for e in es {
            table.row([
                e.key.clone(),
                t.stream.clone(),
                e.due.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                when(e),
                field(e, "event_type").to_owned(),
                field(e, "session_id").to_owned(),
            ]);
        }
    }
    if table.is_empty() {
        ctx.out.line("no scheduled events")?;
    } else {
        table.print(&mut ctx.out, "")?;
    }
    Ok(EXIT_OK)
}

async fn cancel(ctx: &mut Ctx, key: &str) -> Result<u8, CliError> {
    let url = ctx.url();
    let mut cancelled = Vec::new();
    for t in ctx.targets().await? {
        if schedule::cancel(ctx.conn().await?, &t.stream, key)
            .await
            .map_err(|e| CliError::stream(&url, e))?
        {
            cancelled.push(t.stream);
        }
    }
    if cancelled.is_empty() {
        return Err(CliError::NotFound(format!(
            "no scheduled event with key {key} is waiting (never scheduled, cancelled, or appended already)"
        )));
    }
    if ctx.json {
        ctx.out
            .json(&json!({ "cancelled": key, "streams": cancelled }))?;
    } else {
        ctx.out
            .line(format!("cancelled {key} on {}", cancelled.join(", ")))?;
    }
    Ok(EXIT_OK)
}
