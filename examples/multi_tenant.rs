//! Two tenants, one process, isolated.
//!
//! Each tenant has its own stream (`tenant:{acme}:<base>`, `tenant:{globex}:<base>`),
//! its own processed marks and dead letters. One runtime serves both: its consumer reads both
//! streams fairly and runs each handler inside the event's tenant context, so what a handler
//! publishes stays with that tenant. A tenant id that could reach another's keys is refused.
//!
//! Run it with `scripts/run-example.sh multi_tenant`. Its stream base is `examples:multi_tenant`
//! (so the streams are `tenant:{acme}:examples:multi_tenant` and so on), started clean.

mod common;

use std::sync::Mutex;
use std::time::Duration;

use asdlc::prelude::*;
use asdlc::{Tenancy, get_stream_info};

static SEEN: Mutex<Vec<(String, String, String)>> = Mutex::new(Vec::new());

#[event_handler(types = [TaskCreated], group = "development-handlers")]
async fn on_task(event: &AsdlcEvent, ctx: &HandlerContext) -> Result<(), HandlerError> {
    let tenant = ctx.tenant().map(|t| t.to_string()).unwrap_or_default();
    SEEN.lock().unwrap_or_else(|p| p.into_inner()).push((
        tenant.clone(),
        event.task_id.clone().unwrap_or_default(),
        ctx.stream().to_owned(),
    ));
    // Per-tenant state, in the tenant's own keys, changed exactly once per event.
    ctx.stage(Effect::incr_by(ctx.scoped_key("tasks-created"), 1))?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    common::init_logs("warn");
    let acme = TenantId::new("acme")?;
    let globex = TenantId::new("globex")?;
    let config = Config {
        tenancy: Tenancy::multi_only([acme.clone(), globex.clone()]),
        ..common::config("multi_tenant")?
    };
    println!("asdlc multi-tenant example against {}", config.redis_url);
    common::start_clean(&config).await?;

    for hostile in ["acme}:x", "{globex}", "a*", "../b", ""] {
        let err = TenantId::new(hostile).unwrap_err();
        println!("tenant id {hostile:?} refused: {err}");
    }

    let publisher = Publisher::connect(config.clone()).await?;
    let no_tenant = publisher
        .publish(&AsdlcEvent::builder(EventType::TaskCreated, "s").build()?)
        .await;
    println!(
        "publishing with no tenant in multi-tenant mode: {}",
        no_tenant.unwrap_err()
    );

    let runtime = Runtime::builder()
        .config(config.clone())
        .groups(["development-handlers"])
        .consumer_name("multi-tenant-example")
        .build()
        .await?;
    let handle = runtime.handle();
    let run = tokio::spawn(runtime.run());
    handle.ready().await?;

    for (tenant, tasks) in [(&acme, 3), (&globex, 2)] {
        TenantContext::scope(tenant.clone(), async {
            for i in 0..tasks {
                let e = AsdlcEvent::builder(EventType::TaskCreated, format!("{tenant}-session"))
                    .task_id(format!("{tenant}-task-{i}"))
                    .build()?;
                let published = publisher.publish(&e).await?;
                println!(
                    "published {} to {}",
                    e.task_id.as_deref().unwrap_or("?"),
                    published.stream
                );
            }
            Ok::<_, Box<dyn std::error::Error>>(())
        })
        .await?;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while SEEN.lock().unwrap_or_else(|p| p.into_inner()).len() < 5
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    handle.stop();
    run.await??;

    let seen = SEEN.lock().unwrap_or_else(|p| p.into_inner()).clone();
    println!();
    for (tenant, task, stream) in &seen {
        println!("handled {task:<16} for tenant {tenant:<7} from {stream}");
    }
    let mut conn = asdlc::RedisConnection::connect(&config.redis_url).await?;
    let mut isolated = seen.len() == 5;
    for tenant in [&acme, &globex] {
        let stream = config.stream_for(Some(tenant));
        let info = get_stream_info(&mut conn, &stream).await?;
        let count: i64 = redis::cmd("GET")
            .arg(asdlc::StreamKeys::new(stream.clone()).scoped("tasks-created"))
            .query_async(&mut conn)
            .await?;
        println!(
            "{stream}: {} entries, {count} tasks counted, {} pending",
            info.length,
            info.total_pending()
        );
        isolated &= seen.iter().all(|(t, task, s)| {
            (t == tenant.as_str()) == task.starts_with(tenant.as_str())
                && (t != tenant.as_str() || *s == stream)
        });
    }
    println!();
    common::outcome(
        isolated,
        "OK — each tenant's events stayed in its own stream and context",
    );
    Ok(())
}
