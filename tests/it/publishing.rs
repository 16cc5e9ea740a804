//! Publishing and stream operations against a real server (seed US-01, US-05, T02, T07).

use crate::common::*;
use asdlc::{
    AsdlcEvent, Config, EventType, GroupStart, PublishError, Publisher, TenantContext, TenantError,
    create_consumer_group, encoding, ensure_stream_exists, get_stream_info,
};

async fn exists(conn: &mut asdlc::RedisConnection, key: &str) -> bool {
    redis::cmd("EXISTS")
        .arg(key)
        .query_async::<i64>(conn)
        .await
        .unwrap()
        == 1
}

#[tokio::test]
async fn publish_event_validates_required_fields() {
    let s = server();
    let publisher = Publisher::connect(config(&s)).await.unwrap();
    let mut bad = AsdlcEvent::builder(EventType::TaskCreated, "").build_unchecked();
    let err = publisher.publish(&bad).await.unwrap_err();
    match err {
        PublishError::Validation(v) => {
            assert_eq!(v.field, "session_id");
            assert!(v.to_string().contains("session_id"), "{v}");
        }
        other => panic!("expected a validation error, got {other}"),
    }
    bad.session_id = "s".into();
    bad.git_sha = Some("not-a-sha".into());
    let err = publisher.publish(&bad).await.unwrap_err();
    assert!(
        matches!(err, PublishError::Validation(ref v) if v.field == "git_sha"),
        "{err}"
    );
    let mut conn = conn(&s).await;
    assert!(
        !exists(&mut conn, "asdlc:events").await,
        "an invalid event wrote nothing"
    );
}

#[tokio::test]
async fn publish_event_returns_event_id() {
    let s = server();
    let publisher = Publisher::connect(config(&s)).await.unwrap();
    let published = publisher
        .publish(&event(EventType::SessionStarted, "s1"))
        .await
        .unwrap();
    let mut conn = conn(&s).await;
    let entries = xrange(&mut conn, "asdlc:events").await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].0, published.event_id);
    assert_eq!(published.stream, "asdlc:events");
}

#[tokio::test]
async fn published_event_reads_back_equal() {
    let s = server();
    let publisher = Publisher::connect(config(&s)).await.unwrap();
    let e = AsdlcEvent::builder(EventType::PatchApplied, "session-7")
        .epic_id("epic-1")
        .task_id("task-9")
        .git_sha("0123abcd")
        .artifact_paths(["src/a,b.rs", "docs/line\nbreak.md", "ünï/✓.txt"])
        .mode(asdlc::Mode::Rlm)
        .meta("reviewer", "ada")
        .meta("nested", serde_json::json!({"k": [1, {"x": null}]}))
        .build()
        .unwrap();
    let published = publisher.publish(&e).await.unwrap();
    let mut conn = conn(&s).await;
    let entries = xrange(&mut conn, "asdlc:events").await;
    let decoded = encoding::decode(&entries[0].1).unwrap();
    assert_eq!(decoded, e);
    assert_eq!(
        published.idempotency_key,
        e.idempotency_key.clone().unwrap()
    );
}

#[tokio::test]
async fn idempotency_key_generated_if_missing() {
    let s = server();
    let publisher = Publisher::connect(config(&s)).await.unwrap();
    let mut e = event(EventType::TaskFailed, "s1");
    e.idempotency_key = None;
    let a = publisher.publish(&e).await.unwrap();
    let b = publisher.publish(&e).await.unwrap();
    assert!(a.idempotency_key.starts_with("evt-"));
    assert_ne!(
        a.idempotency_key, b.idempotency_key,
        "each event gets its own key"
    );
    // A built event keeps its key across publish retries.
    let built = event(EventType::TaskFailed, "s1");
    let c = publisher.publish(&built).await.unwrap();
    let d = publisher.publish(&built).await.unwrap();
    assert_eq!(c.idempotency_key, d.idempotency_key);
    let mut conn = conn(&s).await;
    let entries = xrange(&mut conn, "asdlc:events").await;
    let keys: Vec<_> = entries
        .iter()
        .map(|(_, f)| encoding::decode(f).unwrap().idempotency_key.unwrap())
        .collect();
    assert_eq!(
        keys,
        vec![
            a.idempotency_key,
            b.idempotency_key,
            c.idempotency_key.clone(),
            c.idempotency_key
        ]
    );
}

#[tokio::test]
async fn publish_event_includes_tenant_context() {
    let s = server();
    let publisher = Publisher::connect(multi_config(&s)).await.unwrap();
    let published = TenantContext::scope(
        tenant("acme"),
        publisher.publish(&event(EventType::TaskCreated, "s1")),
    )
    .await
    .unwrap();
    assert_eq!(published.stream, "tenant:{acme}:asdlc:events");
    let mut conn = conn(&s).await;
    let entries = xrange(&mut conn, "tenant:{acme}:asdlc:events").await;
    let e = encoding::decode(&entries[0].1).unwrap();
    assert_eq!(e.tenant_id, Some(tenant("acme")));
}

#[tokio::test]
async fn publish_uses_tenant_prefixed_stream() {
    let s = server();
    let publisher = Publisher::connect(multi_config(&s)).await.unwrap();
    for t in ["acme", "globex"] {
        TenantContext::scope(
            tenant(t),
            publisher.publish(&event(EventType::TaskCreated, "s")),
        )
        .await
        .unwrap();
    }
    let mut conn = conn(&s).await;
    assert_eq!(
        xrange(&mut conn, "tenant:{acme}:asdlc:events").await.len(),
        1
    );
    assert_eq!(
        xrange(&mut conn, "tenant:{globex}:asdlc:events")
            .await
            .len(),
        1
    );
    assert!(!exists(&mut conn, "asdlc:events").await);
}

#[tokio::test]
async fn single_tenant_uses_default_stream() {
    let s = server();
    let publisher = Publisher::connect(config(&s)).await.unwrap();
    let p = publisher
        .publish(&event(EventType::GateRequested, "s"))
        .await
        .unwrap();
    assert_eq!(p.stream, "asdlc:events");
    // A tenant context does not change the stream in single-tenant mode.
    let p = TenantContext::scope(
        tenant("acme"),
        publisher.publish(&event(EventType::GateRequested, "s")),
    )
    .await
    .unwrap();
    assert_eq!(p.stream, "asdlc:events");
}

#[tokio::test]
async fn tenant_errors_are_typed_and_write_nothing() {
    let s = server();
    let publisher = Publisher::connect(multi_config(&s)).await.unwrap();
    let err = publisher
        .publish(&event(EventType::TaskCreated, "s"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, PublishError::Tenant(TenantError::Missing)),
        "{err}"
    );
    let mut e = event(EventType::TaskCreated, "s");
    e.tenant_id = Some(tenant("globex"));
    let err = TenantContext::scope(tenant("acme"), publisher.publish(&e))
        .await
        .unwrap_err();
    assert!(
        matches!(err, PublishError::Tenant(TenantError::Mismatch { .. })),
        "{err}"
    );

    let only_acme = Config {
        tenancy: asdlc::Tenancy::multi_only([tenant("acme")]),
        ..multi_config(&s)
    };
    let publisher = Publisher::connect(only_acme).await.unwrap();
    assert_not_allowed(&publisher, "globex").await;

    let single = Publisher::connect(config(&s)).await.unwrap();
    let err = single.publish(&e).await.unwrap_err();
    assert!(
        matches!(err, PublishError::Tenant(TenantError::InSingleMode(_))),
        "{err}"
    );

    let mut conn = conn(&s).await;
    let keys = all_keys(&mut conn).await;
    assert!(keys.is_empty(), "nothing written: {keys:?}");
}

#[tokio::test]
async fn batch_publish_is_all_or_nothing() {
    let s = server();
    let publisher = Publisher::connect(config(&s)).await.unwrap();
    let mut events: Vec<AsdlcEvent> = (0..10)
        .map(|i| event(EventType::TaskCreated, &format!("s{i}")))
        .collect();
    events[7].session_id.clear();
    let err = publisher.publish_batch(&events).await.unwrap_err();
    assert!(err.to_string().contains("event 7"), "{err}");
    let mut conn = conn(&s).await;
    assert!(!exists(&mut conn, "asdlc:events").await);
    events[7].session_id = "fixed".into();
    let published = publisher.publish_batch(&events).await.unwrap();
    assert_eq!(published.len(), 10);
    let entries = xrange(&mut conn, "asdlc:events").await;
    let ids: Vec<_> = entries.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(
        ids,
        published
            .iter()
            .map(|p| p.event_id.clone())
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn raw_publish_event_is_kept_for_old_producers() {
    let s = server();
    let publisher = Publisher::connect(config(&s)).await.unwrap();
    let id = publisher
        .publish_event(&[
            ("event_type", "task_created"),
            ("session_id", "s1"),
            ("timestamp", "2026-01-22T10:00:00+00:00"),
        ])
        .await
        .unwrap();
    let mut conn = conn(&s).await;
    let entries = xrange(&mut conn, "asdlc:events").await;
    assert_eq!(entries[0].0, id);
    assert_eq!(encoding::decode(&entries[0].1).unwrap().session_id, "s1");
}

#[tokio::test]
async fn no_trimming_unless_configured() {
    let s = server();
    let publisher = Publisher::connect(config(&s)).await.unwrap();
    let events: Vec<_> = (0..12_000)
        .map(|i| event(EventType::AgentStarted, &format!("s{i}")))
        .collect();
    for chunk in events.chunks(1000) {
        publisher.publish_batch(chunk).await.unwrap();
    }
    let mut c = conn(&s).await;
    let len: u64 = redis::cmd("XLEN")
        .arg("asdlc:events")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(len, 12_000, "a backlog beyond 10,000 entries is kept");

    let capped = Publisher::connect(Config {
        max_len: Some(100),
        stream: "capped".into(),
        ..config(&s)
    })
    .await
    .unwrap();
    for chunk in events.chunks(1000).take(2) {
        capped.publish_batch(chunk).await.unwrap();
    }
    let len: u64 = redis::cmd("XLEN")
        .arg("capped")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!((100..2000).contains(&len), "approximate cap applied: {len}");
}

#[tokio::test]
async fn unreachable_server_is_a_typed_error() {
    let mut s = server();
    let cfg = config(&s);
    s.kill();
    let err = Publisher::connect(cfg).await.unwrap_err();
    assert!(matches!(err, PublishError::Redis { .. }), "{err}");
}

#[tokio::test]
async fn stream_operations_are_tenant_aware_and_idempotent() {
    let s = server();
    let mut c = conn(&s).await;
    let cfg = multi_config(&s);
    let acme = cfg.stream_for(Some(&tenant("acme")));
    assert!(ensure_stream_exists(&mut c, &acme).await.unwrap());
    assert!(!ensure_stream_exists(&mut c, &acme).await.unwrap());
    let info = get_stream_info(&mut c, &acme).await.unwrap();
    assert!(info.exists && info.length == 0 && info.groups.is_empty());

    let globex = cfg.stream_for(Some(&tenant("globex")));
    assert!(
        create_consumer_group(&mut c, &globex, "design-handlers", GroupStart::Beginning)
            .await
            .unwrap()
    );
    assert!(
        !create_consumer_group(&mut c, &globex, "design-handlers", GroupStart::Beginning)
            .await
            .unwrap()
    );
    let info = get_stream_info(&mut c, &globex).await.unwrap();
    assert_eq!(info.groups.len(), 1);
    assert_eq!(info.groups[0].name, "design-handlers");
    assert!(
        get_stream_info(&mut c, &acme)
            .await
            .unwrap()
            .groups
            .is_empty(),
        "tenants' streams are separate keys"
    );
    assert!(
        create_consumer_group(&mut c, &globex, "Bad Name", GroupStart::Beginning)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn stream_info_handles_missing_stream() {
    let s = server();
    let mut c = conn(&s).await;
    let info = get_stream_info(&mut c, "nope").await.unwrap();
    assert!(!info.exists);
    assert_eq!(
        (info.length, info.groups.len(), info.dead_letters),
        (0, 0, 0)
    );
    assert_eq!(info.first_id, None);
}

#[tokio::test]
async fn stream_info_includes_pending_count() {
    let s = server();
    let publisher = Publisher::connect(config(&s)).await.unwrap();
    for i in 0..5 {
        publisher
            .publish(&event(EventType::TaskCreated, &format!("s{i}")))
            .await
            .unwrap();
    }
    let mut c = conn(&s).await;
    read_and_die(&mut c, "asdlc:events", "development-handlers", "w1", 3).await;
    let info = get_stream_info(&mut c, "asdlc:events").await.unwrap();
    assert_eq!(info.length, 5);
    let g = info.group("development-handlers").unwrap();
    assert_eq!(g.pending, 3);
    assert_eq!(g.consumers.len(), 1);
    assert_eq!(g.consumers[0].name, "w1");
    assert_eq!(g.consumers[0].pending, 3);
    assert_eq!(g.lag, Some(2), "two entries not yet read");
    assert!(g.oldest_pending_ms < 60_000);
    assert_eq!(info.total_pending(), 3);
}
