//! A worker process killed mid-handler, restarted, nothing lost and nothing done twice.
//!
//! The example runs itself twice as a worker (`crash_recovery worker N`). The first worker
//! is killed with SIGKILL while handlers are running; the second starts under the same
//! consumer name, takes the name back from the dead process at once, recovers the pending
//! entries before reading new ones, and prints its recovery result. Each handler applies a
//! "patch" as an exactly-once effect (it commits with the acknowledgement) and also logs
//! every invocation, so the output shows which events ran twice and that each patch was
//! still applied once.
//!
//! Run it with `scripts/run-example.sh crash_recovery`. Its stream base is
//! `examples:crash_recovery`, started clean by the driver (the workers share it): it counts
//! the patches and invocations it expects.

mod common;

use std::process::Stdio;
use std::time::Duration;

use asdlc::prelude::*;
use asdlc::{RedisConnection, StreamKeys, get_stream_info};
use tokio::io::{AsyncBufReadExt, BufReader};

const EVENTS: usize = 24;
static CONN: tokio::sync::OnceCell<RedisConnection> = tokio::sync::OnceCell::const_new();

async fn conn() -> Result<RedisConnection, HandlerError> {
    let conn = CONN
        .get_or_try_init(|| async {
            let config =
                common::config(NAME).map_err(|e| HandlerError::permanent(e.to_string()))?;
            Ok::<_, HandlerError>(RedisConnection::connect(&config.redis_url).await?)
        })
        .await?;
    Ok(conn.clone())
}
const GROUP: &str = "deployment-handlers";
/// The example's name, and its stream base `examples:crash_recovery`.
const NAME: &str = "crash_recovery";

#[event_handler(types = [PatchCreated], group = "deployment-handlers", timeout = "30s")]
async fn apply_patch(event: &AsdlcEvent, ctx: &HandlerContext) -> Result<(), HandlerError> {
    let key = event.idempotency_key.clone().unwrap_or_default();
    let mut conn = conn().await?;
    // The invocation log is written at once, outside the commit: it sees every run,
    // including runs whose process died before committing.
    redis::cmd("RPUSH")
        .arg(ctx.scoped_key("invocations"))
        .arg(&key)
        .query_async::<i64>(&mut conn)
        .await?;
    tokio::time::sleep(Duration::from_millis(150)).await;
    // The patch itself: applied exactly once, atomically with the acknowledgement.
    ctx.stage(Effect::hincr_by(ctx.scoped_key("applied-patches"), key, 1))?;
    Ok(())
}

async fn worker(total: usize) -> Result<(), Box<dyn std::error::Error>> {
    let config = common::config(NAME)?;
    let runtime = Runtime::builder()
        .config(config.clone())
        .consumer_name("crash-demo")
        .configure(|_, o| o.concurrency = 4)
        .build()
        .await?;
    let handle = runtime.handle();
    let run = tokio::spawn(runtime.run());
    handle.ready().await?;
    if let Some(r) = handle.report().group(GROUP).and_then(|g| g.recovery) {
        println!(
            "recovery: processed={} skipped={} failed={} claimed={}",
            r.processed, r.skipped, r.failed, r.claimed
        );
    }
    println!("ready");
    let mut conn = RedisConnection::connect(&config.redis_url).await?;
    let applied_key = StreamKeys::new(config.stream.clone()).scoped("applied-patches");
    loop {
        let n: usize = redis::cmd("HLEN")
            .arg(&applied_key)
            .query_async(&mut conn)
            .await?;
        if n >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    handle.stop();
    let report = run.await??;
    println!("worker done: processed={}", report.processed());
    Ok(())
}

async fn spawn_worker(
    label: &'static str,
) -> Result<tokio::process::Child, Box<dyn std::error::Error>> {
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .arg("worker")
        .arg(EVENTS.to_string())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        let mut tx = Some(tx);
        while let Ok(Some(line)) = lines.next_line().await {
            println!("  [{label}] {line}");
            if line == "ready"
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(());
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(30), rx).await??;
    Ok(child)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    common::init_logs("warn");
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some("worker") {
        let total = args.next().and_then(|n| n.parse().ok()).unwrap_or(EVENTS);
        return worker(total).await;
    }

    let config = common::config(NAME)?;
    println!("asdlc crash-recovery example against {}", config.redis_url);
    common::start_clean(&config).await?;
    let keys = StreamKeys::new(config.stream.clone());
    let mut conn = RedisConnection::connect(&config.redis_url).await?;
    let publisher = Publisher::connect(config.clone()).await?;
    let events: Vec<AsdlcEvent> = (0..EVENTS)
        .map(|i| {
            AsdlcEvent::builder(EventType::PatchCreated, "crash-session")
                .task_id(format!("task-{i}"))
                .git_sha(format!("{:07x}", 0xabc0000 + i))
                .build()
        })
        .collect::<Result<_, _>>()?;
    publisher.publish_batch(&events).await?;
    println!("published {EVENTS} patches");

    let mut first = spawn_worker("worker 1").await?;
    loop {
        let n: usize = redis::cmd("LLEN")
            .arg(keys.scoped("invocations"))
            .query_async(&mut conn)
            .await?;
        if n >= 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.kill().await?; // SIGKILL, mid-handler
    let applied_before: usize = redis::cmd("HLEN")
        .arg(keys.scoped("applied-patches"))
        .query_async(&mut conn)
        .await?;
    let info = get_stream_info(&mut conn, keys.stream()).await?;
    let pending = info.group(GROUP).map(|g| g.pending).unwrap_or(0);
    println!(
        "killed worker 1 with SIGKILL: {applied_before} patches committed, {pending} entries pending"
    );

    let mut second = spawn_worker("worker 2").await?;
    let status = tokio::time::timeout(Duration::from_secs(60), second.wait()).await??;

    let applied: std::collections::HashMap<String, i64> = redis::cmd("HGETALL")
        .arg(keys.scoped("applied-patches"))
        .query_async(&mut conn)
        .await?;
    let invocations: Vec<String> = redis::cmd("LRANGE")
        .arg(keys.scoped("invocations"))
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await?;
    let info = get_stream_info(&mut conn, keys.stream()).await?;
    let twice = applied.values().filter(|n| **n > 1).count();
    let lost = events
        .iter()
        .filter(|e| !applied.contains_key(e.idempotency_key.as_deref().unwrap_or_default()))
        .count();
    let reruns = invocations.len() - applied.len().min(invocations.len());
    println!(
        "\npatches applied: {} of {EVENTS}; applied twice: {twice}; lost: {lost}; handler runs: {} ({reruns} re-run after the crash); pending: {}",
        applied.len(),
        invocations.len(),
        info.total_pending()
    );
    let ok = status.success() && twice == 0 && lost == 0 && info.total_pending() == 0;
    common::outcome(ok, "OK — nothing lost, nothing applied twice");
    Ok(())
}
