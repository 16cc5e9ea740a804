//! `asdlc tail`: follow new events live (XREAD BLOCK, not a consumer group).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use asdlc_runtime::encoding::decode;
use asdlc_runtime::get_stream_info;
use redis::Value;
use serde_json::json;

use crate::cli::TailArgs;
use crate::ctx::{Ctx, Target};
use crate::entries::{Entry, read_reply};
use crate::error::{CliError, EXIT_OK};

/// How long one read blocks.
const BLOCK: Duration = Duration::from_secs(2);
/// How often the streams are looked for again (new tenants), when following all of them.
const REDISCOVER: Duration = Duration::from_secs(5);

pub async fn run(ctx: &mut Ctx, args: TailArgs) -> Result<u8, CliError> {
    let url = ctx.url();
    let targets = ctx.targets().await?;
    // Where each stream is followed from. "Only new events" is resolved to the stream's last
    // id now (what `$` means), so nothing published after the announcement below is missed.
    let mut from: BTreeMap<String, String> = BTreeMap::new();
    for t in &targets {
        from.insert(
            t.stream.clone(),
            start_id(ctx, t, args.from.as_deref()).await?,
        );
    }
    let many = targets.len() > 1 || ctx.tenant.is_none() && ctx.config.tenancy.is_multi();
    eprintln!(
        "asdlc: following {} stream(s) from {}; ctrl-c to stop",
        from.len(),
        if args.from.is_some() {
            "the given id"
        } else {
            "now"
        }
    );
    if args.count == Some(0) {
        return Ok(EXIT_OK);
    }
    let mut reader = ctx.blocking_conn(BLOCK).await?;
    let mut shown = 0u64;
    let mut discovered = Instant::now();
    loop {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("COUNT")
            .arg(100)
            .arg("STREAMS");
        for stream in from.keys() {
            cmd.arg(stream);
        }
        for id in from.values() {
            cmd.arg(id);
        }
        let reply: Value = cmd
            .query_async(&mut reader)
            .await
            .map_err(|e| CliError::redis(&url, &e))?;
        for (stream, entries) in read_reply(&reply) {
            for entry in entries {
                from.insert(stream.clone(), entry.0.clone());
                show(ctx, &stream, &entry, many)?;
                shown += 1;
                if args.count.is_some_and(|n| shown >= n) {
                    return Ok(EXIT_OK);
                }
            }
        }
        if ctx.tenant.is_none() && discovered.elapsed() >= REDISCOVER {
            discovered = Instant::now();
            for t in ctx.targets().await? {
                // A stream that appeared after the start: everything in it is new.
                from.entry(t.stream).or_insert_with(|| "0-0".to_owned());
            }
        }
    }
}

async fn start_id(ctx: &mut Ctx, target: &Target, from: Option<&str>) -> Result<String, CliError> {
    if let Some(id) = from {
        return Ok(id.to_owned());
    }
    let url = ctx.url();
    let info = get_stream_info(ctx.conn().await?, &target.stream)
        .await
        .map_err(|e| CliError::stream(&url, e))?;
    Ok(info.last_id.unwrap_or_else(|| "0-0".to_owned()))
}

fn show(ctx: &mut Ctx, stream: &str, (id, fields): &Entry, many: bool) -> Result<(), CliError> {
    let Some(fields) = fields else {
        return Ok(());
    };
    match decode(fields) {
        Ok(mut event) => {
            event.event_id = Some(id.clone());
            if ctx.json {
                return ctx
                    .out
                    .json(&json!({ "stream": stream, "id": id, "event": event }));
            }
            let mut line = format!(
                "{}  {id}  {}",
                event
                    .timestamp
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                event.event_type
            );
            if many {
                line = format!("{stream}  {line}");
            }
            line.push_str(&format!("  session={}", event.session_id));
            let optional = [
                ("tenant", event.tenant_id.as_ref().map(|t| t.to_string())),
                ("epic", event.epic_id.clone()),
                ("task", event.task_id.clone()),
                ("sha", event.git_sha.clone()),
                ("key", event.idempotency_key.clone()),
            ];
            for (name, value) in optional {
                if let Some(v) = value {
                    line.push_str(&format!(" {name}={v}"));
                }
            }
            if !event.artifact_paths.is_empty() {
                line.push_str(&format!(" artifacts={}", event.artifact_paths.len()));
            }
            ctx.out.line(crate::fmt::clip(&line, 400))
        }
        Err(e) => {
            let raw: Vec<(String, String)> = fields
                .iter()
                .map(|(k, v)| {
                    (
                        String::from_utf8_lossy(k).into_owned(),
                        String::from_utf8_lossy(v).into_owned(),
                    )
                })
                .collect();
            if ctx.json {
                return ctx.out.json(
                    &json!({ "stream": stream, "id": id, "error": e.to_string(), "fields": raw }),
                );
            }
            let prefix = if many {
                format!("{stream}  ")
            } else {
                String::new()
            };
            ctx.out.line(format!("{prefix}{id}  (not an event: {e})"))
        }
    }
}
