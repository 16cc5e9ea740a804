//! `asdlc publish`: one event (or several) from JSON or flags, validated.

use std::io::Read;

use asdlc_runtime::{AsdlcEvent, EventType, Mode, Publisher, TenantContext};
use serde_json::{Map, Value};

use crate::cli::PublishArgs;
use crate::ctx::Ctx;
use crate::error::{CliError, EXIT_OK};

pub async fn run(ctx: &mut Ctx, args: PublishArgs) -> Result<u8, CliError> {
    let events = match &args.file {
        Some(path) => from_json(path)?,
        None => vec![from_flags(&args)?],
    };
    for e in &events {
        e.validate()?;
    }
    let url = ctx.url();
    let mut config = ctx.config.clone();
    if events.iter().any(|e| e.tenant_id.is_some()) && !config.tenancy.is_multi() {
        config.tenancy = asdlc_runtime::Tenancy::multi();
    }
    let conn = ctx.conn().await?.clone();
    let publisher = Publisher::new(conn, config);
    let publish = publisher.publish_batch(&events);
    let published = match ctx.tenant.clone() {
        Some(t) => TenantContext::scope(t, publish).await,
        None => publish.await,
    }
    .map_err(|e| CliError::publish(&url, e))?;
    for p in &published {
        if ctx.json {
            ctx.out.json(&serde_json::json!({
                "event_id": p.event_id,
                "stream": p.stream,
                "idempotency_key": p.idempotency_key,
            }))?;
        } else {
            ctx.out.line(&p.event_id)?;
        }
    }
    Ok(EXIT_OK)
}

fn from_json(path: &std::path::Path) -> Result<Vec<AsdlcEvent>, CliError> {
    let name = path.display().to_string();
    let text = if name == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| CliError::Usage(format!("cannot read the event from stdin: {e}")))?;
        s
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| CliError::Usage(format!("cannot read {name}: {e}")))?
    };
    let source = if name == "-" { "stdin" } else { name.as_str() };
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| CliError::Usage(format!("{source} is not valid JSON: {e}")))?;
    let objects = match value {
        Value::Array(items) => items,
        other => vec![other],
    };
    if objects.is_empty() {
        return Err(CliError::Usage(format!("{source} holds no event")));
    }
    let now = serde_json::to_value(chrono::Utc::now()).unwrap_or(Value::Null);
    objects
        .into_iter()
        .enumerate()
        .map(|(i, mut v)| {
            let Some(obj) = v.as_object_mut() else {
                return Err(CliError::Usage(format!(
                    "{source}: event {i} is not a JSON object"
                )));
            };
            // Redis assigns the id; "now" is the natural default for a hand-written event.
            obj.remove("event_id");
            obj.entry("timestamp").or_insert_with(|| now.clone());
            serde_json::from_value::<AsdlcEvent>(v)
                .map_err(|e| CliError::Usage(format!("{source}: event {i}: {e}")))
        })
        .collect()
}

fn from_flags(args: &PublishArgs) -> Result<AsdlcEvent, CliError> {
    let type_name = args.event_type.as_deref().unwrap_or_default();
    let event_type: EventType = type_name
        .parse()
        .map_err(|e: asdlc_runtime::event::UnknownEventType| CliError::Usage(e.to_string()))?;
    let mut b = AsdlcEvent::builder(event_type, args.session.clone().unwrap_or_default());
    if let Some(v) = &args.epic {
        b = b.epic_id(v);
    }
    if let Some(v) = &args.task {
        b = b.task_id(v);
    }
    if let Some(v) = &args.git_sha {
        b = b.git_sha(v);
    }
    if !args.artifacts.is_empty() {
        b = b.artifact_paths(args.artifacts.iter().cloned());
    }
    if let Some(m) = &args.mode {
        let mode: Mode = m
            .parse()
            .map_err(|_| CliError::Usage(format!("invalid `mode`: `{m}` is not normal or rlm")))?;
        b = b.mode(mode);
    }
    if let Some(k) = &args.idempotency_key {
        b = b.idempotency_key(k);
    }
    let mut metadata = Map::new();
    for entry in &args.meta {
        let (k, v) = entry
            .split_once('=')
            .ok_or_else(|| CliError::Usage(format!("--meta `{entry}` is not KEY=VALUE")))?;
        if k.is_empty() {
            return Err(CliError::Usage(format!(
                "--meta `{entry}` has an empty key"
            )));
        }
        let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_owned()));
        metadata.insert(k.to_owned(), value);
    }
    b = b.metadata(metadata);
    Ok(b.build()?)
}
