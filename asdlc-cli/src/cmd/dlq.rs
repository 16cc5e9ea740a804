//! `asdlc dlq`: list, show, replay and purge dead letters.

use asdlc_runtime::deadletter::{self, DeadLetter};
use serde::Serialize;
use serde_json::json;

use crate::cli::DlqCommand;
use crate::ctx::{Ctx, Target};
use crate::error::{CliError, EXIT_OK, EXIT_USAGE};
use crate::fmt::{Table, clip, progress};

#[derive(Serialize)]
struct Listed<'a> {
    stream: &'a str,
    tenant: Option<String>,
    #[serde(flatten)]
    letter: &'a DeadLetter,
}

pub async fn run(ctx: &mut Ctx, command: DlqCommand) -> Result<u8, CliError> {
    match command {
        DlqCommand::List { limit } => list(ctx, limit).await,
        DlqCommand::Show { id } => show(ctx, &id).await,
        DlqCommand::Replay {
            id: Some(id),
            group,
            ..
        } => replay_one(ctx, &id, group.as_deref()).await,
        DlqCommand::Replay {
            id: None,
            group,
            include_malformed,
            ..
        } => {
            let mut options =
                deadletter::ReplayOptions::default().with_include_malformed(include_malformed);
            options.from_group.clone_from(&group);
            options.to_group = group;
            replay_all(ctx, options).await
        }
        DlqCommand::Purge { yes } => purge(ctx, yes).await,
    }
}

async fn letters(
    ctx: &mut Ctx,
    t: &Target,
    start: &str,
    limit: usize,
) -> Result<Vec<DeadLetter>, CliError> {
    let url = ctx.url();
    deadletter::list(ctx.conn().await?, &t.stream, start, limit)
        .await
        .map_err(|e| CliError::stream(&url, e))
}

async fn list(ctx: &mut Ctx, limit: usize) -> Result<u8, CliError> {
    let mut all = Vec::new();
    for t in ctx.targets().await? {
        let found = letters(ctx, &t, "-", limit).await?;
        all.push((t, found));
    }
    if ctx.json {
        let listed: Vec<Listed> = all
            .iter()
            .flat_map(|(t, ls)| {
                ls.iter().map(move |l| Listed {
                    stream: &t.stream,
                    tenant: t.tenant.as_ref().map(ToString::to_string),
                    letter: l,
                })
            })
            .collect();
        ctx.out.json(&json!({ "dead_letters": listed }))?;
        return Ok(EXIT_OK);
    }
    let mut table = Table::new([
        "ID",
        "STREAM",
        "SOURCE ID",
        "GROUP",
        "HANDLER",
        "TRIES",
        "REASON",
        "ERROR",
    ]);
    for (t, ls) in &all {
        for l in ls {
            table.row([
                l.id.clone(),
                t.stream.clone(),
                l.source_id.clone(),
                l.group.clone(),
                if l.handler.is_empty() {
                    "-".to_owned()
                } else {
                    l.handler.clone()
                },
                l.attempts.to_string(),
                clip(&l.reason, 40),
                clip(&l.error, 40),
            ]);
        }
    }
    if table.is_empty() {
        ctx.out.line("no dead letters")?;
    } else {
        table.print(&mut ctx.out, "")?;
    }
    Ok(EXIT_OK)
}

/// The stream whose dead-letter stream holds `id`: not found if none, a usage error if more
/// than one does (then --tenant says which).
async fn locate(ctx: &mut Ctx, id: &str) -> Result<(Target, DeadLetter), CliError> {
    if !is_entry_id(id) {
        return Err(CliError::Usage(format!(
            "`{}` is not an entry id (like 1712345678901-0)",
            clip(id, 60)
        )));
    }
    let mut found = Vec::new();
    for t in ctx.targets().await? {
        if let Some(l) = letters(ctx, &t, id, 1)
            .await?
            .into_iter()
            .find(|l| l.id == id)
        {
            found.push((t, l));
        }
    }
    match found.len() {
        0 => Err(CliError::NotFound(format!("no dead letter with id {id}"))),
        1 => Ok(found.remove(0)),
        _ => Err(CliError::Usage(format!(
            "dead letter {id} exists on several streams ({}); choose one with --tenant",
            found
                .iter()
                .map(|(t, _)| t.stream.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

fn is_entry_id(id: &str) -> bool {
    asdlc_runtime::streams::EntryId::parse(id).is_some()
}

async fn show(ctx: &mut Ctx, id: &str) -> Result<u8, CliError> {
    let (t, l) = locate(ctx, id).await?;
    let event = l.event();
    if ctx.json {
        let mut value = serde_json::to_value(Listed {
            stream: &t.stream,
            tenant: t.tenant.as_ref().map(ToString::to_string),
            letter: &l,
        })
        .map_err(|e| CliError::Failed(e.to_string()))?;
        value["event"] = match &event {
            Ok(e) => serde_json::to_value(e).map_err(|e| CliError::Failed(e.to_string()))?,
            Err(_) => serde_json::Value::Null,
        };
        ctx.out.json(&value)?;
        return Ok(EXIT_OK);
    }
    let rows = [
        ("dead letter", l.id.clone()),
        ("stream", t.stream.clone()),
        ("source id", l.source_id.clone()),
        ("group", l.group.clone()),
        ("consumer", l.consumer.clone()),
        ("handler", l.handler.clone()),
        ("attempts", l.attempts.to_string()),
        ("dead at", l.dead_at.clone()),
        ("reason", l.reason.clone()),
        ("error", l.error.clone()),
    ];
    for (k, v) in rows {
        ctx.out
            .line(format!("{k:<12}{}", v.replace(['\n', '\r'], " ")))?;
    }
    match event {
        Ok(e) => {
            let pretty =
                serde_json::to_string_pretty(&e).map_err(|e| CliError::Failed(e.to_string()))?;
            ctx.out.line("event")?;
            for line in pretty.lines() {
                ctx.out.line(format!("  {line}"))?;
            }
        }
        Err(err) => {
            ctx.out
                .line(format!("event       (does not decode: {err})"))?;
            for (k, v) in &l.fields {
                ctx.out.line(format!("  {k} = {}", clip(v, 200)))?;
            }
        }
    }
    Ok(EXIT_OK)
}

async fn replay_one(ctx: &mut Ctx, id: &str, group: Option<&str>) -> Result<u8, CliError> {
    let (t, _) = locate(ctx, id).await?;
    let url = ctx.url();
    let conn = ctx.conn().await?;
    let replayed = match group {
        Some(g) => deadletter::replay_to_group(conn, &t.stream, id, g).await,
        None => deadletter::replay(conn, &t.stream, id).await,
    };
    let new_id = replayed
        .map_err(|e| CliError::stream(&url, e))?
        .ok_or_else(|| CliError::NotFound(format!("no dead letter with id {id}")))?;
    let r = deadletter::Replayed {
        stream: t.stream,
        dead_letter_id: id.to_owned(),
        new_id,
    };
    if ctx.json {
        ctx.out.json(&json!({ "replayed": [r] }))?;
    } else {
        ctx.out.line(format!(
            "replayed {} to {} as {}",
            r.dead_letter_id, r.stream, r.new_id
        ))?;
    }
    Ok(EXIT_OK)
}

async fn replay_all(ctx: &mut Ctx, options: deadletter::ReplayOptions) -> Result<u8, CliError> {
    let url = ctx.url();
    let targets = ctx.targets().await?;
    let mut total = 0;
    for t in &targets {
        total += deadletter::count(ctx.conn().await?, &t.stream)
            .await
            .map_err(|e| CliError::stream(&url, e))?;
    }
    let bar = progress(total, ctx.json, "replaying");
    let (mut replayed, mut skipped) = (Vec::new(), Vec::new());
    for t in &targets {
        let mut all = deadletter::ReplayAll::new(ctx.conn().await?, &t.stream, options.clone())
            .await
            .map_err(|e| CliError::stream(&url, e))?;
        while let Some(batch) = all
            .next_batch(ctx.conn().await?)
            .await
            .map_err(|e| CliError::stream(&url, e))?
        {
            bar.inc((batch.replayed.len() + batch.skipped.len()) as u64);
            replayed.extend(batch.replayed);
            skipped.extend(batch.skipped);
        }
    }
    bar.finish_and_clear();
    if ctx.json {
        ctx.out
            .json(&json!({ "replayed": replayed, "skipped": skipped }))?;
    } else {
        ctx.out
            .line(format!("replayed {} dead letter(s)", replayed.len()))?;
        if !skipped.is_empty() {
            ctx.out.line(format!(
                "skipped {} (--include-malformed replays the malformed ones; a cut one cannot be replayed):",
                skipped.len()
            ))?;
            for s in &skipped {
                ctx.out.line(format!(
                    "  {} {}: {}",
                    s.stream,
                    s.dead_letter_id,
                    clip(&s.reason, 200)
                ))?;
            }
        }
    }
    Ok(EXIT_OK)
}

async fn purge(ctx: &mut Ctx, yes: bool) -> Result<u8, CliError> {
    let url = ctx.url();
    let targets = ctx.targets().await?;
    if !yes {
        let mut total = 0;
        for t in &targets {
            total += deadletter::count(ctx.conn().await?, &t.stream)
                .await
                .map_err(|e| CliError::stream(&url, e))?;
        }
        eprintln!(
            "asdlc: error: this deletes {total} dead letter(s) for good; run again with --yes"
        );
        return Ok(EXIT_USAGE);
    }
    let mut purged = Vec::new();
    for t in &targets {
        let n = deadletter::purge(ctx.conn().await?, &t.stream)
            .await
            .map_err(|e| CliError::stream(&url, e))?;
        purged.push((t.stream.clone(), n));
    }
    if ctx.json {
        let list: Vec<_> = purged
            .iter()
            .map(|(s, n)| json!({ "stream": s, "purged": n }))
            .collect();
        ctx.out.json(&json!({ "purged": list }))?;
    } else {
        let n: u64 = purged.iter().map(|(_, n)| n).sum();
        ctx.out.line(format!("purged {n} dead letter(s)"))?;
    }
    Ok(EXIT_OK)
}
