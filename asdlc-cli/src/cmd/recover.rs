//! `asdlc recover GROUP`: stale pending entries, optionally handed to another consumer.

use asdlc_runtime::keys::{validate_consumer, validate_group};
use serde::Serialize;

use super::pending::{Described, groups_streams, list, print_entries};
use crate::cli::RecoverArgs;
use crate::ctx::Ctx;
use crate::error::{CliError, EXIT_OK};
use crate::fmt::{duration, progress};

/// Entries claimed per XCLAIM.
const CLAIM_BATCH: usize = 100;

#[derive(Serialize)]
struct StreamStale {
    stream: String,
    tenant: Option<String>,
    stale: Vec<Described>,
    claimed_to: Option<String>,
    claimed: u64,
}

pub async fn run(ctx: &mut Ctx, args: RecoverArgs) -> Result<u8, CliError> {
    validate_group(&args.group)?;
    if let Some(c) = &args.claim_to {
        validate_consumer(c)?;
    }
    let url = ctx.url();
    let mut results = Vec::new();
    for t in groups_streams(ctx, &args.group).await? {
        let stale = list(ctx, &t, &args.group, Some(args.min_idle), None, args.limit).await?;
        let mut claimed = 0;
        if let Some(to) = &args.claim_to
            && !stale.is_empty()
        {
            // The minimum idle time makes the claim skip any entry that became active again
            // since it was listed; JUSTID leaves delivery counts as they are. In batches, so
            // the bar moves.
            let bar = progress(stale.len() as u64, ctx.json, "claiming");
            for batch in stale.chunks(CLAIM_BATCH) {
                let mut cmd = redis::cmd("XCLAIM");
                cmd.arg(&t.stream)
                    .arg(&args.group)
                    .arg(to)
                    .arg(args.min_idle.as_millis() as u64);
                for d in batch {
                    cmd.arg(&d.entry.id);
                }
                cmd.arg("JUSTID");
                let ids: Vec<String> = cmd
                    .query_async(ctx.conn().await?)
                    .await
                    .map_err(|e| CliError::redis(&url, &e))?;
                claimed += ids.len() as u64;
                bar.inc(batch.len() as u64);
            }
            bar.finish_and_clear();
        }
        results.push(StreamStale {
            stream: t.stream,
            tenant: t.tenant.map(|t| t.to_string()),
            stale,
            claimed_to: args.claim_to.clone(),
            claimed,
        });
    }
    if ctx.json {
        ctx.out.json(&serde_json::json!({ "streams": results }))?;
        return Ok(EXIT_OK);
    }
    for r in &results {
        ctx.out.line(format!(
            "{}: {} entr{} of group `{}` pending for {} or more",
            r.stream,
            r.stale.len(),
            if r.stale.len() == 1 { "y" } else { "ies" },
            args.group,
            duration(args.min_idle)
        ))?;
        print_entries(ctx, &r.stale)?;
        if let Some(to) = &r.claimed_to {
            ctx.out.line(format!(
                "  claimed {} to `{to}`: it handles them when it next starts (or any running \
                 consumer of the group claims them once idle for its claim_idle)",
                r.claimed
            ))?;
        }
    }
    if args.claim_to.is_none() && results.iter().any(|r| !r.stale.is_empty()) {
        ctx.out.line(
            "nothing changed: running consumers claim stale entries by themselves; \
             use --claim-to CONSUMER to hand them to a specific one",
        )?;
    }
    Ok(EXIT_OK)
}
