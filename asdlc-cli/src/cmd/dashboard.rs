//! `asdlc dashboard`: serve the web dashboard until Ctrl-C.

use asdlc_dashboard::{DashboardError, DashboardOptions, hosts_for, serve};

use crate::cli::DashboardArgs;
use crate::ctx::Ctx;
use crate::error::{CliError, EXIT_OK};

pub async fn run(ctx: &mut Ctx, args: DashboardArgs) -> Result<u8, CliError> {
    let write_token = match (args.write, args.token) {
        (true, Some(t)) if !t.is_empty() => Some(t),
        (true, _) => {
            return Err(CliError::Usage(
                "--write needs a token: --token TOKEN or ASDLC_DASHBOARD_TOKEN".to_owned(),
            ));
        }
        (false, _) => None,
    };
    let mut allowed_hosts = if args.allow_hosts.is_empty() {
        None
    } else {
        Some(args.allow_hosts.clone())
    };
    // Only the hosts asked for, plus the bound address's own (when it has them).
    if let (Some(extra), Some(own)) = (allowed_hosts.as_mut(), hosts_for(args.bind))
        && args.bind.port() != 0
    {
        extra.extend(own);
    }
    let mut options = DashboardOptions::default();
    options.write_token = write_token;
    options.allowed_hosts = allowed_hosts;
    let served = serve(args.bind, ctx.config.clone(), options)
        .await
        .map_err(|e| match e {
            DashboardError::Connect { url, source } => CliError::redis(&url, &source),
            other => CliError::Failed(other.to_string()),
        })?;
    let mode = if served.dashboard.writable() {
        "writable with the token"
    } else {
        "read-only"
    };
    if ctx.json {
        ctx.out.json(&serde_json::json!({
            "url": served.url(),
            "writable": served.dashboard.writable(),
        }))?;
    } else {
        ctx.out.line(format!(
            "dashboard on {} ({mode}); Ctrl-C stops it",
            served.url()
        ))?;
    }
    let _ = tokio::signal::ctrl_c().await;
    served
        .stop()
        .await
        .map_err(|e| CliError::Failed(e.to_string()))?;
    Ok(EXIT_OK)
}
