//! `asdlc pending GROUP`: what a group has read and not acknowledged.

use std::time::Duration;

use asdlc_runtime::encoding::decode;
use asdlc_runtime::get_stream_info;
use asdlc_runtime::keys::{validate_consumer, validate_group};
use redis::Value;
use serde::Serialize;

use crate::cli::PendingArgs;
use crate::ctx::{Ctx, Target};
use crate::entries::{PendingEntry, entries, pending};
use crate::error::{CliError, EXIT_OK};
use crate::fmt::{Table, clip, duration};

/// A pending entry with what it is.
#[derive(Debug, Serialize)]
pub struct Described {
    #[serde(flatten)]
    pub entry: PendingEntry,
    /// The event type, or why there is none (`deleted`, `not an event`).
    pub event_type: String,
    /// Its session, if it is an event.
    pub session_id: Option<String>,
}

#[derive(Serialize)]
struct StreamPending {
    stream: String,
    tenant: Option<String>,
    group: String,
    pending: u64,
    entries: Vec<Described>,
}

pub async fn run(ctx: &mut Ctx, args: PendingArgs) -> Result<u8, CliError> {
    validate_group(&args.group)?;
    if let Some(c) = &args.consumer {
        validate_consumer(c)?;
    }
    let mut found = Vec::new();
    for t in groups_streams(ctx, &args.group).await? {
        let entries = list(
            ctx,
            &t,
            &args.group,
            None,
            args.consumer.as_deref(),
            args.limit,
        )
        .await?;
        let url = ctx.url();
        let info = get_stream_info(ctx.conn().await?, &t.stream)
            .await
            .map_err(|e| CliError::stream(&url, e))?;
        found.push(StreamPending {
            pending: info.group(&args.group).map_or(0, |g| g.pending),
            stream: t.stream,
            tenant: t.tenant.map(|t| t.to_string()),
            group: args.group.clone(),
            entries,
        });
    }
    if ctx.json {
        ctx.out.json(&serde_json::json!({ "streams": found }))?;
        return Ok(EXIT_OK);
    }
    for (i, s) in found.iter().enumerate() {
        if i > 0 {
            ctx.out.line("")?;
        }
        ctx.out.line(format!(
            "{}: group `{}` has {} pending{}",
            s.stream,
            s.group,
            s.pending,
            if (s.entries.len() as u64) < s.pending {
                format!(" (showing {})", s.entries.len())
            } else {
                String::new()
            }
        ))?;
        print_entries(ctx, &s.entries)?;
    }
    Ok(EXIT_OK)
}

/// The selected streams on which `group` exists; not found if none.
pub async fn groups_streams(ctx: &mut Ctx, group: &str) -> Result<Vec<Target>, CliError> {
    let url = ctx.url();
    let mut out = Vec::new();
    let targets = ctx.targets().await?;
    let names: Vec<String> = targets.iter().map(|t| t.stream.clone()).collect();
    for t in targets {
        let info = get_stream_info(ctx.conn().await?, &t.stream)
            .await
            .map_err(|e| CliError::stream(&url, e))?;
        if info.group(group).is_some() {
            out.push(t);
        }
    }
    if out.is_empty() {
        return Err(CliError::NotFound(format!(
            "group `{group}` does not exist on {}",
            if names.is_empty() {
                "any stream (none found)".to_owned()
            } else {
                names.join(", ")
            }
        )));
    }
    Ok(out)
}

/// Up to `limit` pending entries of `group` on `target`, idle at least `min_idle`, optionally
/// of one consumer, with their event type (one pipelined round trip for the entries).
pub async fn list(
    ctx: &mut Ctx,
    target: &Target,
    group: &str,
    min_idle: Option<Duration>,
    consumer: Option<&str>,
    limit: usize,
) -> Result<Vec<Described>, CliError> {
    let url = ctx.url();
    let conn = ctx.conn().await?;
    let mut cmd = redis::cmd("XPENDING");
    cmd.arg(&target.stream).arg(group);
    if let Some(idle) = min_idle {
        cmd.arg("IDLE").arg(idle.as_millis() as u64);
    }
    cmd.arg("-").arg("+").arg(limit.max(1));
    if let Some(c) = consumer {
        cmd.arg(c);
    }
    let reply: Value = cmd
        .query_async(conn)
        .await
        .map_err(|e| CliError::redis(&url, &e))?;
    let listed = pending(&reply);
    if listed.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for p in &listed {
        pipe.cmd("XRANGE").arg(&target.stream).arg(&p.id).arg(&p.id);
    }
    let bodies: Vec<Value> = pipe
        .query_async(conn)
        .await
        .map_err(|e| CliError::redis(&url, &e))?;
    Ok(listed
        .into_iter()
        .zip(bodies)
        .map(|(entry, body)| {
            let found = entries(&body).into_iter().next().and_then(|(_, f)| f);
            let (event_type, session_id) = match found.as_deref().map(decode) {
                None => ("(deleted)".to_owned(), None),
                Some(Ok(e)) => (e.event_type.to_string(), Some(e.session_id)),
                Some(Err(_)) => ("(not an event)".to_owned(), None),
            };
            Described {
                entry,
                event_type,
                session_id,
            }
        })
        .collect())
}

/// Prints pending entries as a table.
pub fn print_entries(ctx: &mut Ctx, entries: &[Described]) -> Result<(), CliError> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut t = Table::new(["ID", "CONSUMER", "IDLE", "DELIVERIES", "EVENT", "SESSION"]);
    for d in entries {
        t.row([
            d.entry.id.clone(),
            d.entry.consumer.clone(),
            duration(Duration::from_millis(d.entry.idle_ms)),
            d.entry.deliveries.to_string(),
            d.event_type.clone(),
            clip(d.session_id.as_deref().unwrap_or("-"), 40),
        ]);
    }
    t.print(&mut ctx.out, "  ")
}
