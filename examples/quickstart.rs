//! The main job: one aSDLC session flowing through handlers in the six consumer groups.
//!
//! ```text
//! session_started ─discovery→ task_created ×2 ─design→ task_dispatched ─development→
//!   patch_created ─validation→ gate_requested ─hitl→ gate_approved ─deployment→
//!   patch_applied + task_completed ─discovery→ … session_completed
//! ```
//!
//! Every handler hands its follow-up events to `ctx.emit`: they are appended in the same atomic
//! step as the cause's processed mark and acknowledgement, so each is published exactly once
//! (a crash before the commit emits nothing; the redelivered cause emits them then). The gate
//! approval uses an operation key (gate and patch at one git SHA), so a duplicate approval is
//! skipped: at the end one is published on purpose, and the stream info is printed. What the
//! handlers share with `main` (a progress count, a "done" signal) reaches them as state
//! (`Runtime::builder().state_arc(...)`, a `State<Progress>` parameter): no global.
//!
//! Run it with `scripts/run-example.sh quickstart` (which starts a server and sets
//! `REDIS_URL`), or `cargo run --example quickstart` against your own server. It uses the
//! stream base `examples:quickstart` and deletes what an earlier run left there (see
//! `examples/common/mod.rs`), so it runs beside the other examples, and again.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use asdlc::prelude::*;
use asdlc::{StreamInfo, get_stream_info};

/// What the handlers share with `main`: handed to the runtime with `.state(...)`, taken by
/// the handlers that need it as a `State<Progress>` parameter. No global.
#[derive(Default)]
struct Progress {
    /// Patches applied so far (a handler's own side effect: outside the exactly-once commit).
    applied: AtomicUsize,
    /// Told when the session completes.
    done: tokio::sync::Notify,
}
const TASKS: [&str; 2] = ["t1-parse-spec", "t2-write-tests"];

/// A follow-up of `cause`: same session, epic and task. `ctx.emit` gives it the cause's
/// tenant, a key derived from the cause's and a child of its trace.
fn follow_up(cause: &AsdlcEvent, t: EventType) -> asdlc::AsdlcEventBuilder {
    let mut b = AsdlcEvent::builder(t, cause.session_id.clone());
    if let Some(epic) = &cause.epic_id {
        b = b.epic_id(epic.clone());
    }
    if let Some(task) = &cause.task_id {
        b = b.task_id(task.clone());
    }
    b
}

#[event_handler(types = [SessionStarted, TaskCompleted], group = "discovery-handlers")]
async fn discover(
    event: &AsdlcEvent,
    ctx: &HandlerContext,
    progress: State<Progress>,
) -> Result<(), HandlerError> {
    match event.event_type {
        EventType::SessionStarted => {
            println!(
                "[discovery]   session {} started: planning {} tasks",
                event.session_id,
                TASKS.len()
            );
            let tasks = TASKS.iter().map(|task| {
                follow_up(event, EventType::TaskCreated)
                    .task_id(*task)
                    .build()
            });
            ctx.emit_all(tasks.collect::<Result<Vec<_>, _>>()?)?;
        }
        _ => {
            // Count completed tasks in Redis, exactly once per event, in the commit step.
            ctx.stage(Effect::sadd(
                ctx.scoped_key("completed-tasks"),
                event.task_id.clone().unwrap_or_default(),
            ))?;
            println!(
                "[discovery]   task {} completed",
                event.task_id.as_deref().unwrap_or("?")
            );
            if progress.applied.load(Ordering::SeqCst) == TASKS.len() {
                // One completion per session, however many tasks announce it.
                let done =
                    AsdlcEvent::builder(EventType::SessionCompleted, event.session_id.clone())
                        .operation_key();
                ctx.emit(done.build()?)?;
            }
        }
    }
    Ok(())
}

#[event_handler(types = [TaskCreated], group = "design-handlers")]
async fn design(event: &AsdlcEvent, ctx: &HandlerContext) -> Result<(), HandlerError> {
    println!(
        "[design]      task {} designed; dispatching to an agent",
        event.task_id.as_deref().unwrap_or("?")
    );
    ctx.emit(follow_up(event, EventType::TaskDispatched).build()?)?;
    Ok(())
}

#[event_handler(types = [TaskDispatched], group = "development-handlers")]
async fn develop(event: &AsdlcEvent, ctx: &HandlerContext) -> Result<(), HandlerError> {
    let task = event.task_id.clone().unwrap_or_default();
    let sha = if task.starts_with("t1") {
        "1a2b3c4d"
    } else {
        "5e6f7a8b"
    };
    println!("[development] agent wrote a patch for {task} at {sha}");
    ctx.emit(
        follow_up(event, EventType::PatchCreated)
            .git_sha(sha)
            .artifact_path(format!("patches/{task}.diff"))
            .build()?,
    )?;
    Ok(())
}

#[event_handler(types = [PatchCreated], group = "validation-handlers")]
async fn validate(event: &AsdlcEvent, ctx: &HandlerContext) -> Result<(), HandlerError> {
    println!(
        "[validation]  tests pass for {}; asking a human",
        event.artifact_paths.join(", ")
    );
    let mut gate =
        follow_up(event, EventType::GateRequested).artifact_paths(event.artifact_paths.clone());
    if let Some(sha) = &event.git_sha {
        gate = gate.git_sha(sha.clone());
    }
    ctx.emit(gate.build()?)?;
    Ok(())
}

#[event_handler(types = [GateRequested], group = "hitl-handlers")]
async fn approve(event: &AsdlcEvent, ctx: &HandlerContext) -> Result<(), HandlerError> {
    println!(
        "[hitl]        gate for {} approved",
        event.git_sha.as_deref().unwrap_or("?")
    );
    // One approval per gate and git SHA, whatever the number of requests.
    let mut approval = AsdlcEvent::builder(EventType::GateApproved, event.session_id.clone())
        .artifact_paths(event.artifact_paths.clone());
    if let Some(task) = &event.task_id {
        approval = approval.task_id(task.clone());
    }
    if let Some(sha) = &event.git_sha {
        approval = approval.git_sha(sha.clone());
    }
    ctx.emit(approval.operation_key().build()?)?;
    Ok(())
}

#[event_handler(types = [GateApproved], group = "deployment-handlers")]
async fn deploy(
    event: &AsdlcEvent,
    ctx: &HandlerContext,
    progress: State<Progress>,
) -> Result<(), HandlerError> {
    let sha = event.git_sha.clone().unwrap_or_default();
    // The applied-patch record commits atomically with the acknowledgement: a patch is
    // recorded once even if this event is delivered twice.
    ctx.stage(Effect::hset(
        ctx.scoped_key("applied-patches"),
        sha.clone(),
        event.task_id.clone().unwrap_or_default(),
    ))?;
    let n = progress.applied.fetch_add(1, Ordering::SeqCst) + 1;
    println!("[deployment]  patch {sha} applied ({n}/{})", TASKS.len());
    ctx.emit_all([
        follow_up(event, EventType::PatchApplied)
            .git_sha(sha)
            .build()?,
        follow_up(event, EventType::TaskCompleted).build()?,
    ])?;
    Ok(())
}

#[event_handler(types = [SessionCompleted], group = "discovery-handlers", name = "session-done")]
async fn finished(event: &AsdlcEvent, progress: State<Progress>) {
    println!("[discovery]   session {} completed", event.session_id);
    progress.done.notify_one();
}

fn print_info(info: &StreamInfo) {
    println!(
        "\nstream {}: {} entries, {} dead letters",
        info.stream, info.length, info.dead_letters
    );
    println!(
        "  {:<22} {:>8} {:>6} {:>10}",
        "group", "pending", "lag", "consumers"
    );
    for g in &info.groups {
        println!(
            "  {:<22} {:>8} {:>6} {:>10}",
            g.name,
            g.pending,
            g.lag.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
            g.consumers.len()
        );
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    common::init_logs("warn");
    let config = common::config("quickstart")?;
    println!("asdlc quickstart against {}", config.redis_url);
    common::start_clean(&config).await?;
    let publisher = Publisher::connect(config.clone()).await?;

    let progress = std::sync::Arc::new(Progress::default());
    let runtime = Runtime::builder()
        .config(config.clone())
        .state_arc(progress.clone())
        .consumer_name("quickstart")
        .build()
        .await?;
    println!(
        "found {} handlers in groups {:?}\n",
        runtime.handlers().len(),
        runtime.groups()
    );
    let handle = runtime.handle();
    let run = tokio::spawn(runtime.run());
    handle.ready().await?;

    let session = format!("session-{}", std::process::id());
    let start = AsdlcEvent::builder(EventType::SessionStarted, session.clone())
        .epic_id("epic-7")
        .build()?;
    publisher.publish(&start).await?;
    tokio::time::timeout(Duration::from_secs(30), progress.done.notified()).await?;

    // A duplicate approval for the first patch: same operation key, so it is skipped.
    let dup = AsdlcEvent::builder(EventType::GateApproved, session.clone())
        .task_id(TASKS[0])
        .git_sha("1a2b3c4d")
        .artifact_path(format!("patches/{}.diff", TASKS[0]))
        .operation_key()
        .build()?;
    publisher.publish(&dup).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    handle.stop();
    let report = run.await??;

    let mut conn = asdlc::RedisConnection::connect(&config.redis_url).await?;
    let info = get_stream_info(&mut conn, &config.stream).await?;
    print_info(&info);
    println!("\nper group: processed / duplicates skipped");
    for g in &report.groups {
        println!(
            "  {:<22} {:>4} / {}",
            g.group, g.stats.processed, g.stats.duplicates
        );
    }
    let deployment = report
        .group("deployment-handlers")
        .map(|g| g.stats)
        .unwrap_or_default();
    let ok = progress.applied.load(Ordering::SeqCst) == TASKS.len()
        && deployment.duplicates >= 1
        && info.total_pending() == 0;
    println!(
        "follow-ups emitted with their causes' commits: {}",
        report.groups.iter().map(|g| g.stats.emitted).sum::<u64>()
    );
    println!();
    common::outcome(
        ok,
        &format!(
            "OK — {} patches applied once each, {} duplicate approval skipped, nothing pending",
            progress.applied.load(Ordering::SeqCst),
            deployment.duplicates
        ),
    );
    Ok(())
}
