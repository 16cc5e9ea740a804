//! The Runtime with macro-declared handlers, end to end against a real server: discovery,
//! recovery at startup, group selection, multi-tenancy and graceful shutdown.

#[path = "it/common/mod.rs"]
mod common;

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use asdlc::prelude::*;
use asdlc::{RegistryError, Runtime, RuntimeError};
use common::*;

const WAIT: Duration = Duration::from_secs(15);

static DEV_CALLS: Mutex<Vec<(String, u32)>> = Mutex::new(Vec::new());
static HITL_CALLS: AtomicUsize = AtomicUsize::new(0);

mod development {
    use super::*;

    #[event_handler(types = [TaskCreated, TaskDispatched], group = "rt-development")]
    pub async fn on_task(event: &AsdlcEvent, ctx: &HandlerContext) -> HandlerResult {
        DEV_CALLS
            .lock()
            .unwrap()
            .push((event.session_id.clone(), ctx.attempt()));
        ctx.stage(Effect::incr_by(ctx.scoped_key("rt-tasks"), 1))
            .unwrap();
        HandlerResult::ok()
    }
}

mod hitl {
    use super::*;

    #[event_handler(types = [GateRequested], group = "rt-hitl", max_deliveries = 2)]
    pub async fn on_gate(_: &AsdlcEvent) -> Result<(), HandlerError> {
        HITL_CALLS.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

static TENANT_CALLS: Mutex<Vec<(String, Option<String>)>> = Mutex::new(Vec::new());

#[event_handler(types = [AgentStarted], group = "rt-tenants")]
async fn on_agent(event: &AsdlcEvent, ctx: &HandlerContext) {
    TENANT_CALLS.lock().unwrap().push((
        event.session_id.clone(),
        ctx.tenant().map(|t| t.to_string()),
    ));
    // A handler's own publishes stay with its tenant.
    assert_eq!(TenantContext::current().as_ref(), ctx.tenant());
}

fn fast_runtime(cfg: Config, groups: &[&str]) -> asdlc::RuntimeBuilder {
    Runtime::builder()
        .config(cfg)
        .groups(groups.iter().copied())
        .consumer_name("rt-worker")
        .configure(|_, o| fast(o))
}

/// Publishes an event of type `t` for `session` in `id`'s tenant context.
async fn publish_as(p: &Publisher, id: &str, t: EventType, session: &str) {
    TenantContext::scope(tenant(id), p.publish(&event(t, session)))
        .await
        .unwrap();
}

#[tokio::test]
async fn runtime_discovers_handlers_from_several_modules() {
    let s = server();
    let rt = fast_runtime(config(&s), &["rt-development", "rt-hitl"])
        .build()
        .await
        .unwrap();
    assert_eq!(rt.groups(), vec!["rt-development", "rt-hitl"]);
    let names: Vec<String> = rt.handlers().into_iter().map(|h| h.name).collect();
    assert!(
        names.iter().any(|n| n.ends_with("development::on_task")),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n.ends_with("hitl::on_gate")),
        "{names:?}"
    );
    let all = Runtime::builder().config(config(&s)).build().await.unwrap();
    assert!(all.groups().contains(&"rt-tenants".to_owned()));
}

#[tokio::test]
async fn unknown_group_is_refused_with_the_known_ones() {
    let s = server();
    let err = fast_runtime(config(&s), &["rt-nope"])
        .build()
        .await
        .unwrap_err();
    match err {
        RuntimeError::Registry(RegistryError::UnknownGroup { group, known }) => {
            assert_eq!(group, "rt-nope");
            assert!(known.contains("rt-development"), "{known}");
        }
        other => panic!("{other}"),
    }
}

#[tokio::test]
async fn runtime_recovers_then_consumes_then_stops_gracefully() {
    let s = server();
    let p = Publisher::connect(config(&s)).await.unwrap();
    // Before the runtime starts: three events pending for a crashed "rt-worker" (this
    // process's name), two new ones, one gate event for the other group.
    for i in 0..3 {
        p.publish(
            &AsdlcEvent::builder(EventType::TaskCreated, format!("old-{i}"))
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    }
    let mut c = conn(&s).await;
    read_and_die(&mut c, "asdlc:events", "rt-development", "rt-worker", 3).await;
    for i in 0..2 {
        p.publish(
            &AsdlcEvent::builder(EventType::TaskDispatched, format!("new-{i}"))
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    }
    p.publish(
        &AsdlcEvent::builder(EventType::GateRequested, "gate")
            .build()
            .unwrap(),
    )
    .await
    .unwrap();

    let rt = fast_runtime(config(&s), &["rt-development", "rt-hitl"])
        .build()
        .await
        .unwrap();
    let handle = rt.handle();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(rt.run_until(async {
        let _ = rx.await;
    }));
    tokio::time::timeout(WAIT, handle.ready())
        .await
        .unwrap()
        .unwrap();
    // Recovery ran before consumption: the old entries were handled first. Their first
    // delivery died before any handler began, so this is still their first attempt.
    let report = handle.report();
    let dev = report.group("rt-development").unwrap();
    assert_eq!(dev.recovery.unwrap().processed, 3);
    eventually(WAIT, "all handled", || async {
        DEV_CALLS.lock().unwrap().len() == 5 && HITL_CALLS.load(Ordering::SeqCst) == 1
    })
    .await;
    let calls = DEV_CALLS.lock().unwrap().clone();
    assert_eq!(
        calls[..3]
            .iter()
            .map(|(s, a)| (s.as_str(), *a))
            .collect::<Vec<_>>(),
        vec![("old-0", 1), ("old-1", 1), ("old-2", 1)]
    );
    assert!(
        calls[3..]
            .iter()
            .all(|(s, a)| s.starts_with("new-") && *a == 1)
    );
    tx.send(()).unwrap();
    let report = run.await.unwrap().unwrap();
    assert_eq!(report.group("rt-development").unwrap().stats.processed, 5);
    assert_eq!(report.group("rt-hitl").unwrap().stats.processed, 1);
    let n: i64 = redis::cmd("GET")
        .arg(asdlc::StreamKeys::new("asdlc:events").scoped("rt-tasks"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 5);
    let info = asdlc::get_stream_info(&mut c, "asdlc:events")
        .await
        .unwrap();
    assert_eq!(info.total_pending(), 0);
}

#[tokio::test]
async fn multi_tenant_runtime_discovers_tenants_and_isolates_them() {
    let s = server();
    let cfg = multi_config(&s);
    let p = Publisher::connect(cfg.clone()).await.unwrap();
    // One tenant exists before start; another appears while running.
    publish_as(&p, "acme", EventType::AgentStarted, "acme-1").await;
    let (handle, run) = start_runtime(
        fast_runtime(cfg.clone(), &["rt-tenants"])
            .tenant_discovery_interval(Duration::from_millis(100)),
    )
    .await;
    publish_as(&p, "globex", EventType::AgentStarted, "globex-1").await;
    eventually(WAIT, "both tenants handled", || async {
        TENANT_CALLS.lock().unwrap().len() == 2
    })
    .await;
    let mut calls = TENANT_CALLS.lock().unwrap().clone();
    calls.sort();
    assert_eq!(
        calls,
        vec![
            ("acme-1".into(), Some("acme".into())),
            ("globex-1".into(), Some("globex".into()))
        ],
        "each event handled in its own tenant's context"
    );
    handle.stop();
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_busy_tenant_does_not_starve_a_quiet_one() {
    let s = server();
    let cfg = Config {
        tenancy: asdlc::Tenancy::multi_only([tenant("busy"), tenant("quiet")]),
        ..multi_config(&s)
    };
    let p = Publisher::connect(cfg.clone()).await.unwrap();
    let events: Vec<AsdlcEvent> = (0..3000)
        .map(|i| {
            AsdlcEvent::builder(EventType::TaskCreated, format!("b{i}"))
                .build()
                .unwrap()
        })
        .collect();
    TenantContext::scope(tenant("busy"), async {
        for chunk in events.chunks(500) {
            p.publish_batch(chunk).await.unwrap();
        }
    })
    .await;
    let order = std::sync::Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = order.clone();
    let handler = TestHandler::all("fair").behave(move |e, _| {
        seen.lock().unwrap().push(e.session_id.clone());
        Behavior::Ok
    });
    let (handle, run) = start_runtime(
        Runtime::builder()
            .without_registered()
            .config(cfg.clone())
            .consumer_name("fair-worker")
            .handler("fairness", handler.clone())
            .configure(|_, o| {
                fast(o);
                o.concurrency = 8;
                o.batch_size = 8;
            }),
    )
    .await;
    publish_as(&p, "quiet", EventType::TaskCreated, "q").await;
    eventually(WAIT, "quiet handled", || async {
        order.lock().unwrap().iter().any(|s| s == "q")
    })
    .await;
    let position = order.lock().unwrap().iter().position(|s| s == "q").unwrap();
    assert!(
        position < 2500,
        "the quiet tenant's event waited behind {position} of the busy tenant's"
    );
    handle.stop();
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_runtime_stopped_while_it_is_starting_stops_cleanly() {
    let s = server();
    // On a fresh server the consumer name is taken on probation (a couple of seconds), so the
    // stop lands while the consumer is still starting.
    let rt = fast_runtime(config(&s), &["rt-hitl"])
        .build()
        .await
        .unwrap();
    let handle = rt.handle();
    let run = tokio::spawn(rt.run_until(std::future::pending()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(1), handle.ready())
            .await
            .is_err(),
        "the consumer is still starting when the stop comes"
    );
    handle.stop();
    let report = tokio::time::timeout(WAIT, run)
        .await
        .expect("stops in time")
        .unwrap()
        .expect("a stop during start-up is not an error");
    assert_eq!(report.processed(), 0);
}
