//! Poison and failing events end in the dead-letter stream, with why; replayed after a fix.
//!
//! Three things go wrong: an entry that is not an event at all (an unknown type written by
//! an old producer), an event whose handler fails permanently, and one whose handler keeps
//! failing until it runs out of deliveries. Each lands in the dead-letter stream beside the
//! source stream with its reason, last error and delivery count; the consumer keeps going and
//! handles the good events around them. Then the handler is "fixed" and the dead letters that
//! hold real events are replayed: same idempotency key, handled this time.
//!
//! Run it with `scripts/run-example.sh dead_letters`. Its stream base is
//! `examples:dead_letters`, started clean (it counts the dead letters it expects).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use asdlc::prelude::*;
use asdlc::{RedisConnection, deadletter, get_stream_info};

static FIXED: AtomicBool = AtomicBool::new(false);

#[event_handler(types = [PatchCreated], group = "validation-handlers", max_deliveries = 3)]
async fn validate(event: &AsdlcEvent, ctx: &HandlerContext) -> Result<(), HandlerError> {
    if FIXED.load(Ordering::SeqCst) {
        println!("  handled {} (attempt {})", event.session_id, ctx.attempt());
        return Ok(());
    }
    match event.session_id.as_str() {
        "bad-patch" => Err(HandlerError::permanent(
            "patch does not apply to its base commit",
        )),
        "flaky-ci" => Err(HandlerError::retryable("CI runner unreachable")),
        _ => {
            println!("  handled {} (attempt {})", event.session_id, ctx.attempt());
            Ok(())
        }
    }
}

async fn wait_for(
    what: &str,
    mut done: impl AsyncFnMut() -> bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done().await {
        if tokio::time::Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    common::init_logs("error");
    let config = common::config("dead_letters")?;
    println!("asdlc dead-letter example against {}", config.redis_url);
    common::start_clean(&config).await?;
    let publisher = Publisher::connect(config.clone()).await?;
    let mut conn = RedisConnection::connect(&config.redis_url).await?;

    let runtime = Runtime::builder()
        .config(config.clone())
        .consumer_name("dead-letter-example")
        .configure(|_, o| {
            o.retry.base = Duration::from_millis(50);
            o.retry.max = Duration::from_millis(200);
        })
        .build()
        .await?;
    let handle = runtime.handle();
    let run = tokio::spawn(runtime.run());
    handle.ready().await?;

    println!("publishing: good-1, an unknown event type, bad-patch, flaky-ci, good-2");
    publisher
        .publish(&AsdlcEvent::builder(EventType::PatchCreated, "good-1").build()?)
        .await?;
    publisher
        .publish_event(&[
            ("event_type", "patch_exploded"),
            ("session_id", "old-producer"),
            ("timestamp", "2026-01-22T10:00:00Z"),
        ])
        .await?;
    publisher
        .publish(&AsdlcEvent::builder(EventType::PatchCreated, "bad-patch").build()?)
        .await?;
    publisher
        .publish(&AsdlcEvent::builder(EventType::PatchCreated, "flaky-ci").build()?)
        .await?;
    publisher
        .publish(&AsdlcEvent::builder(EventType::PatchCreated, "good-2").build()?)
        .await?;

    let stream = config.stream.clone();
    wait_for("three dead letters", async || {
        deadletter::count(&mut conn, &stream).await.unwrap_or(0) == 3
    })
    .await?;
    println!("\ndead letters of {}:", config.stream);
    let dead = deadletter::list(&mut conn, &config.stream, "-", 10).await?;
    for d in &dead {
        println!(
            "  {}  from {}  attempts={}  reason: {}{}",
            d.id,
            d.source_id,
            d.attempts,
            d.reason,
            if d.error.is_empty() {
                String::new()
            } else {
                format!(" (last error: {})", d.error)
            }
        );
    }

    println!("\nfixing the handler and replaying the dead letters that hold events:");
    FIXED.store(true, Ordering::SeqCst);
    let mut replayed = 0;
    for d in &dead {
        match d.event() {
            Ok(_) => {
                deadletter::replay(&mut conn, &config.stream, &d.id).await?;
                replayed += 1;
            }
            Err(e) => println!("  keeping {} in the dead-letter stream: {e}", d.id),
        }
    }
    wait_for("the replayed events", async || {
        handle
            .report()
            .group("validation-handlers")
            .map(|g| g.stats.processed)
            .unwrap_or(0)
            == 4
    })
    .await?;
    handle.stop();
    let report = run.await??;
    let info = get_stream_info(&mut conn, &config.stream).await?;
    let stats = report
        .group("validation-handlers")
        .map(|g| g.stats)
        .unwrap_or_default();
    println!(
        "\nprocessed={} dead-lettered={} retried={} replayed={replayed}; dead letters left: {}; pending: {}",
        stats.processed,
        stats.dead_lettered,
        stats.retried,
        info.dead_letters,
        info.total_pending()
    );
    let ok = stats.processed == 4
        && stats.dead_lettered == 3
        && info.dead_letters == 1
        && info.total_pending() == 0;
    common::outcome(
        ok,
        "OK — failures were parked with their reasons and replayed after the fix; the poison entry stays for inspection",
    );
    Ok(())
}
