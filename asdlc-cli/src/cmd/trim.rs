//! `asdlc trim`: remove what every group has read and acknowledged.

use asdlc_runtime::monitor::{TrimOptions, trim_acknowledged_with};

use crate::cli::TrimArgs;
use crate::ctx::Ctx;
use crate::error::{CliError, EXIT_OK};
use crate::fmt::{Table, progress};

pub async fn run(ctx: &mut Ctx, args: TrimArgs) -> Result<u8, CliError> {
    let url = ctx.url();
    let mut options = TrimOptions::default().with_dry_run(args.dry_run);
    options.min_age = args.min_age;
    let mut reports = Vec::new();
    let targets = ctx.targets().await?;
    // One atomic step per stream: the bar counts streams.
    let bar = progress(targets.len() as u64, ctx.json, "trimming");
    for t in targets {
        bar.set_message(t.stream.clone());
        let report = trim_acknowledged_with(ctx.conn().await?, &t.stream, options)
            .await
            .map_err(|e| CliError::stream(&url, e))?;
        reports.push(report);
        bar.inc(1);
    }
    bar.finish_and_clear();
    if ctx.json {
        ctx.out.json(&serde_json::json!({ "trimmed": reports }))?;
        return Ok(EXIT_OK);
    }
    let mut table = Table::new([
        "STREAM",
        if args.dry_run {
            "WOULD REMOVE"
        } else {
            "REMOVED"
        },
        "BEFORE",
        "AFTER",
        "WHY THE REST IS KEPT",
    ]);
    for r in &reports {
        table.row([
            r.stream.clone(),
            r.removed.to_string(),
            r.length_before.to_string(),
            r.length_after.to_string(),
            r.kept_reason.clone(),
        ]);
    }
    if table.is_empty() {
        ctx.out.line("no streams found")?;
    } else {
        table.print(&mut ctx.out, "")?;
    }
    Ok(EXIT_OK)
}
