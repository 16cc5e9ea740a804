//! `asdlc gates`: approval gates and their outcomes.

use asdlc_runtime::gate;
use serde_json::json;

use crate::cli::GatesArgs;
use crate::ctx::Ctx;
use crate::error::{CliError, EXIT_OK};
use crate::fmt::Table;

pub async fn run(ctx: &mut Ctx, args: GatesArgs) -> Result<u8, CliError> {
    let all = ctx
        .read_targets(async |conn, stream| gate::list(conn, stream, args.limit, args.pending).await)
        .await?;
    if ctx.json {
        let listed: Vec<_> = all
            .iter()
            .flat_map(|(t, gs)| {
                gs.iter().map(move |g| {
                    json!({
                        "stream": t.stream,
                        "tenant": t.tenant.as_ref().map(ToString::to_string),
                        "gate": g,
                    })
                })
            })
            .collect();
        ctx.out.json(&json!({ "gates": listed }))?;
        return Ok(EXIT_OK);
    }
    let time =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut table = Table::new([
        "GATE",
        "STREAM",
        "OUTCOME",
        "REQUESTED BY",
        "DEADLINE",
        "DECIDED BY",
        "DECIDED AT",
    ]);
    for (t, gs) in &all {
        for g in gs {
            table.row([
                g.id.clone(),
                t.stream.clone(),
                g.outcome.to_string(),
                g.requested_by.clone(),
                time(g.deadline),
                g.decided_by.clone().unwrap_or_else(|| "-".into()),
                g.decided_at.map(time).unwrap_or_else(|| "-".into()),
            ]);
        }
    }
    if table.is_empty() {
        ctx.out.line(if args.pending {
            "no pending gates"
        } else {
            "no gates"
        })?;
    } else {
        table.print(&mut ctx.out, "")?;
    }
    Ok(EXIT_OK)
}
