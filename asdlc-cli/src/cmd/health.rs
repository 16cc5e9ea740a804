//! `asdlc health`: exit 0 healthy, 1 degraded, 2 unhealthy.

use asdlc_runtime::monitor::{HealthReport, HealthThresholds, Limits, check_health};
use asdlc_runtime::{HealthStatus, RedisConnection};

use crate::cli::HealthArgs;
use crate::ctx::Ctx;
use crate::error::{CliError, EXIT_DEGRADED, EXIT_OK, EXIT_UNHEALTHY};
use crate::fmt::or_dash;

pub async fn run(ctx: &mut Ctx, args: HealthArgs) -> Result<u8, CliError> {
    let thresholds = HealthThresholds::default()
        .with_lag(Limits::new(args.lag_degraded, args.lag_unhealthy))
        .with_pending(Limits::new(args.pending_degraded, args.pending_unhealthy))
        .with_oldest_pending(Limits::new(
            args.pending_age_degraded,
            args.pending_age_unhealthy,
        ))
        .with_dead_letters(Limits {
            degraded: args.dead_letters_degraded,
            unhealthy: None,
        })
        .with_missing_stream(if args.require_stream {
            HealthStatus::Degraded
        } else {
            HealthStatus::Healthy
        });
    // An unreachable server is a health finding (unhealthy), not a command failure.
    let report = match check(ctx, &thresholds).await {
        Ok(report) => report,
        Err(CliError::Connect { url, reason }) => HealthReport {
            status: HealthStatus::Unhealthy,
            reasons: vec![format!("unhealthy: cannot reach {url}: {reason}")],
            checked_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            ..HealthReport::default()
        },
        Err(e) => return Err(e),
    };
    if ctx.json {
        ctx.out.json(&report)?;
    } else {
        ctx.out.line(format!("status: {}", report.status))?;
        if let Some(ping) = report.ping_ms {
            ctx.out.line(format!(
                "server: {} {} ({}), ping {ping:.2} ms",
                or_dash(report.server_name.as_ref()),
                or_dash(report.server_version.as_ref()),
                or_dash(report.server_mode.as_ref()),
            ))?;
        }
        let groups: usize = report.streams.iter().map(|s| s.groups.len()).sum();
        ctx.out.line(format!(
            "checked: {} stream(s), {groups} group(s)",
            report.streams.len()
        ))?;
        for reason in &report.reasons {
            ctx.out.line(format!("- {reason}"))?;
        }
    }
    Ok(match report.status {
        HealthStatus::Healthy => EXIT_OK,
        HealthStatus::Degraded => EXIT_DEGRADED,
        HealthStatus::Unhealthy => EXIT_UNHEALTHY,
    })
}

async fn check(ctx: &mut Ctx, thresholds: &HealthThresholds) -> Result<HealthReport, CliError> {
    ctx.conn().await?;
    let streams: Vec<String> = ctx.targets().await?.into_iter().map(|t| t.stream).collect();
    let conn: &mut RedisConnection = ctx.conn().await?;
    Ok(check_health(conn, &streams, thresholds).await)
}
