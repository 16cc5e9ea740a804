//! Tenant isolation enforced by the server: a process connected as tenant A's ACL user runs
//! the whole protocol for A (publish, consume, retries, recovery, dead letters, marks, stream
//! info) and cannot read, write or even list tenant B's keys.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::common::*;
use asdlc::acl::{self, TenantAcl};
use asdlc::{
    Config, EventConsumer, EventType, IdempotencyTracker, Publisher, RedisConnection, StreamKeys,
    TenantContext, TenantId, deadletter, get_stream_info,
};
use redis::Value;

const WAIT: Duration = Duration::from_secs(15);

fn is_noperm(e: &redis::RedisError) -> bool {
    e.code() == Some("NOPERM")
}

/// Sends `cmd` and asserts the server refused it for lack of permission.
async fn refused(conn: &mut RedisConnection, cmd: &redis::Cmd) {
    let err = cmd.query_async::<Value>(conn).await.unwrap_err();
    assert!(is_noperm(&err), "expected NOPERM, got {err}");
}

struct Tenants {
    server: TestServer,
    admin: RedisConnection,
    a: TenantId,
    b: TenantId,
    /// Configuration connected as A's user.
    as_a: Config,
}

async fn setup() -> Tenants {
    let server = server();
    let mut admin = conn(&server).await;
    let (a, b) = (tenant("acme"), tenant("globex"));
    let creds = acl::provision_tenant(&mut admin, &a, &acl::generate_password())
        .await
        .unwrap();
    assert_eq!(creds.username(), "asdlc-tenant-acme");
    let as_a = Config {
        redis_url: creds.url(&server.redis_url()).unwrap(),
        ..multi_config(&server)
    };
    Tenants {
        server,
        admin,
        a,
        b,
        as_a,
    }
}

#[tokio::test]
async fn a_tenant_user_runs_the_whole_protocol_for_its_tenant() {
    let t = setup().await;
    let stream = t.as_a.stream_for(Some(&t.a));
    let p = Publisher::connect(t.as_a.clone()).await.unwrap();
    let mut conn = RedisConnection::connect(&t.as_a.redis_url).await.unwrap();

    // Recovery: entries a dead consumer read and never acknowledged, as A's user.
    let events: Vec<_> = (0..6)
        .map(|i| event(EventType::TaskCreated, &format!("s{i}")))
        .collect();
    TenantContext::scope(t.a.clone(), p.publish_batch(&events))
        .await
        .unwrap();
    asdlc::create_consumer_group(
        &mut conn,
        &stream,
        "development-handlers",
        asdlc::GroupStart::Beginning,
    )
    .await
    .unwrap();
    read_without_ack(
        &mut conn,
        &stream,
        "development-handlers",
        "dead-worker",
        None,
    )
    .await;

    let fixed = Arc::new(AtomicBool::new(false));
    let f = fixed.clone();
    let h = TestHandler::all("h").behave(move |e, attempt| match e.session_id.as_str() {
        "flaky" if attempt < 2 => Behavior::Retry,
        "broken" if !f.load(Ordering::SeqCst) => Behavior::Permanent,
        _ => Behavior::Ok,
    });
    let c = EventConsumer::builder(t.as_a.clone(), "development-handlers")
        .tenant(t.a.clone())
        .handler(h.clone())
        .configure(|o| {
            fast(o);
            o.consumer = Some("w1".into());
            o.claim_idle = Duration::from_millis(300);
        })
        .build()
        .await
        .unwrap();
    let run = spawn(&c).await;
    // The dead consumer's six entries are claimed and handled.
    eventually(WAIT, "claimed from the dead consumer", || async {
        h.count() >= 6
    })
    .await;
    for s in ["flaky", "broken", "fine"] {
        TenantContext::scope(t.a.clone(), p.publish(&event(EventType::PatchCreated, s)))
            .await
            .unwrap();
    }
    // A duplicate is skipped.
    TenantContext::scope(t.a.clone(), p.publish(&events[0]))
        .await
        .unwrap();
    eventually(WAIT, "retried, dead-lettered and handled", || async {
        let s = c.stats();
        s.processed == 8 && s.dead_lettered == 1 && s.duplicates == 1
    })
    .await;

    // Dead letters: list, replay after a fix, purge.
    let dead = deadletter::list(&mut conn, &stream, "-", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    fixed.store(true, Ordering::SeqCst);
    assert!(
        deadletter::replay(&mut conn, &stream, &dead[0].id)
            .await
            .unwrap()
            .is_some()
    );
    eventually(WAIT, "replayed event handled", || async {
        c.stats().processed == 9
    })
    .await;
    assert_eq!(deadletter::purge(&mut conn, &stream).await.unwrap(), 0);

    // Marks and monitoring.
    let tracker = IdempotencyTracker::new(
        conn.clone(),
        StreamKeys::new(stream.clone()),
        "development-handlers",
    );
    assert!(tracker.mark_processed("manual-1").await.unwrap());
    assert!(!tracker.mark_processed("manual-1").await.unwrap());
    let info = get_stream_info(&mut conn, &stream).await.unwrap();
    // Six, three, the duplicate, the replayed copy.
    assert_eq!(info.length, 11);
    assert_eq!(info.group("development-handlers").unwrap().pending, 0);
    c.stop();
    run.await.unwrap().unwrap();
    // A clean stop releases the name: a restart under it is immediate even without CLIENT
    // LIST.
    let restarted = tenant_consumer_for(&t.as_a, "development-handlers", &t.a, "w1", &h).await;
    let started = std::time::Instant::now();
    let again = spawn(&restarted).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    restarted.stop();
    again.await.unwrap().unwrap();
    let applied = applied(&mut t.admin.clone(), &stream, "development-handlers").await;
    assert_eq!(applied.len(), 9);
    assert!(applied.values().all(|n| *n == 1));
}

#[tokio::test]
async fn a_tenant_user_cannot_read_write_or_list_another_tenant() {
    let mut t = setup().await;
    let b_stream = t.as_a.stream_for(Some(&t.b));
    let b_keys = StreamKeys::new(b_stream.clone());
    // B's data, written by the admin.
    let admin_p = Publisher::connect(multi_config(&t.server)).await.unwrap();
    TenantContext::scope(
        t.b.clone(),
        admin_p.publish(&event(EventType::GateApproved, "b-secret")),
    )
    .await
    .unwrap();
    asdlc::create_consumer_group(
        &mut t.admin,
        &b_stream,
        "hitl-handlers",
        asdlc::GroupStart::Beginning,
    )
    .await
    .unwrap();
    let _: () = redis::cmd("SET")
        .arg(b_keys.scoped("balance"))
        .arg(100)
        .query_async(&mut t.admin)
        .await
        .unwrap();

    let mut a = RedisConnection::connect(&t.as_a.redis_url).await.unwrap();
    // Read.
    refused(
        &mut a,
        redis::cmd("XRANGE").arg(&b_stream).arg("-").arg("+"),
    )
    .await;
    refused(&mut a, redis::cmd("XLEN").arg(&b_stream)).await;
    refused(&mut a, redis::cmd("XINFO").arg("STREAM").arg(&b_stream)).await;
    refused(&mut a, redis::cmd("GET").arg(b_keys.scoped("balance"))).await;
    refused(
        &mut a,
        redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("hitl-handlers")
            .arg("thief")
            .arg("STREAMS")
            .arg(&b_stream)
            .arg(">"),
    )
    .await;
    // Write.
    refused(
        &mut a,
        redis::cmd("XADD").arg(&b_stream).arg("*").arg("f").arg("v"),
    )
    .await;
    refused(&mut a, redis::cmd("DEL").arg(&b_stream)).await;
    refused(
        &mut a,
        redis::cmd("XGROUP")
            .arg("DESTROY")
            .arg(&b_stream)
            .arg("hitl-handlers"),
    )
    .await;
    // Not through the protocol's functions either: every key is declared and checked first.
    let lag = format!("{}_lag", asdlc::functions::library_name());
    refused(
        &mut a,
        redis::cmd("FCALL")
            .arg(&lag)
            .arg(1)
            .arg(&b_stream)
            .arg("0-0")
            .arg(10),
    )
    .await;
    // List: no way to learn what keys exist.
    refused(&mut a, redis::cmd("SCAN").arg(0)).await;
    refused(&mut a, redis::cmd("KEYS").arg("*")).await;
    refused(&mut a, &redis::cmd("RANDOMKEY")).await;
    refused(&mut a, redis::cmd("INFO").arg("keyspace")).await;
    refused(&mut a, &redis::cmd("DBSIZE")).await;
    refused(&mut a, &redis::cmd("FLUSHDB")).await;
    refused(&mut a, redis::cmd("CLIENT").arg("LIST")).await;
    // Nor through the publisher.
    let p = Publisher::connect(t.as_a.clone()).await.unwrap();
    let err = TenantContext::scope(t.b.clone(), p.publish(&event(EventType::TaskCreated, "x")))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, asdlc::PublishError::Redis { source, .. } if is_noperm(source)),
        "{err}"
    );

    // B is intact.
    let info = get_stream_info(&mut t.admin, &b_stream).await.unwrap();
    assert_eq!(info.length, 1);
    assert!(info.group("hitl-handlers").is_some());
    let balance: i64 = redis::cmd("GET")
        .arg(b_keys.scoped("balance"))
        .query_async(&mut t.admin)
        .await
        .unwrap();
    assert_eq!(balance, 100);
}

#[tokio::test]
async fn revoking_a_tenant_closes_its_connections() {
    let mut t = setup().await;
    let mut a = RedisConnection::connect(&t.as_a.redis_url).await.unwrap();
    let _: String = redis::cmd("PING").query_async(&mut a).await.unwrap();
    assert!(acl::revoke_tenant(&mut t.admin, &t.a).await.unwrap());
    assert!(!acl::revoke_tenant(&mut t.admin, &t.a).await.unwrap());
    eventually(WAIT, "the revoked user is locked out", || {
        let mut a = a.clone();
        async move {
            redis::cmd("PING")
                .query_async::<String>(&mut a)
                .await
                .is_err()
        }
    })
    .await;
    assert!(
        RedisConnection::connect(&t.as_a.redis_url).await.is_err(),
        "the password no longer works"
    );
}

#[tokio::test]
async fn extra_grants_and_client_list_are_opt_in() {
    let s = server();
    let mut admin = conn(&s).await;
    let a = tenant("acme");
    let creds = TenantAcl::new(a.clone())
        .allow_client_list(true)
        .command("zadd")
        .provision(&mut admin, &acl::generate_password())
        .await
        .unwrap();
    let mut conn = RedisConnection::connect(&creds.url(&s.redis_url()).unwrap())
        .await
        .unwrap();
    let key = StreamKeys::new(asdlc::get_stream_name("asdlc:events", Some(&a))).scoped("board");
    let _: i64 = redis::cmd("ZADD")
        .arg(&key)
        .arg(1)
        .arg("x")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut conn)
        .await
        .unwrap();
    // Still only its own keys.
    refused(
        &mut conn,
        redis::cmd("ZADD").arg("elsewhere").arg(1).arg("x"),
    )
    .await;
    // Weak passwords and odd command names are refused before reaching the server.
    assert!(matches!(
        acl::provision_tenant(&mut admin, &a, "short").await,
        Err(acl::AclError::Password { .. })
    ));
    assert!(matches!(
        TenantAcl::new(a)
            .command("zadd ~*")
            .provision(&mut admin, &acl::generate_password())
            .await,
        Err(acl::AclError::Command { .. })
    ));
}

#[tokio::test]
async fn a_tenant_cannot_run_code_of_its_own_so_it_cannot_stall_the_server() {
    let t = setup().await;
    let mut a = RedisConnection::connect(&t.as_a.redis_url).await.unwrap();
    let own = t.as_a.stream_for(Some(&t.a));
    // A busy loop on its own key: refused before it runs, as any code of its own is.
    let busy = "local i = 0 while true do i = i + 1 end";
    refused(&mut a, redis::cmd("EVAL").arg(busy).arg(1).arg(&own)).await;
    refused(&mut a, redis::cmd("SCRIPT").arg("LOAD").arg(busy)).await;
    refused(
        &mut a,
        redis::cmd("EVALSHA").arg("0".repeat(40)).arg(1).arg(&own),
    )
    .await;
    let lib = format!("#!lua name=stall\nredis.register_function('stall', function() {busy} end)");
    refused(&mut a, redis::cmd("FUNCTION").arg("LOAD").arg(&lib)).await;
    // Nor take the protocol away from the other tenants.
    refused(
        &mut a,
        redis::cmd("FUNCTION")
            .arg("DELETE")
            .arg(asdlc::functions::library_name()),
    )
    .await;
    refused(&mut a, redis::cmd("FUNCTION").arg("FLUSH")).await;
    refused(&mut a, redis::cmd("SCRIPT").arg("FLUSH")).await;
    // The protocol's own functions it may call, on its own keys.
    let created: i64 = redis::cmd("FCALL")
        .arg(format!(
            "{}_ensure_stream",
            asdlc::functions::library_name()
        ))
        .arg(1)
        .arg(&own)
        .query_async(&mut a)
        .await
        .unwrap();
    assert_eq!(created, 1);
}

#[tokio::test]
async fn a_tenant_whose_server_lost_the_library_is_told_who_can_load_it() {
    let mut t = setup().await;
    let p = Publisher::connect(t.as_a.clone()).await.unwrap();
    let _: () = redis::cmd("FUNCTION")
        .arg("FLUSH")
        .query_async(&mut t.admin)
        .await
        .unwrap();
    let mut a = RedisConnection::connect(&t.as_a.redis_url).await.unwrap();
    let err = asdlc::functions::ensure_loaded(&mut a).await.unwrap_err();
    assert!(
        matches!(err, asdlc::functions::FunctionsError::NotLoaded { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("asdlc functions load"), "{err}");
    // The consumer cannot start without it, and says why.
    let h = TestHandler::all("h");
    let c = EventConsumer::builder(t.as_a.clone(), "development-handlers")
        .tenant(t.a.clone())
        .handler(h.clone())
        .configure(|o| {
            fast(o);
            o.consumer = Some("w1".into());
        })
        .build()
        .await;
    let started = match c {
        Ok(c) => c.start().await.map(|_| c),
        Err(e) => Err(e),
    };
    let Err(err) = started else {
        panic!("no start without the library")
    };
    assert!(err.to_string().contains("asdlc functions load"), "{err}");
    // An admin loads it; the tenant works again.
    asdlc::functions::ensure_loaded(&mut t.admin).await.unwrap();
    asdlc::functions::ensure_loaded(&mut a).await.unwrap();
    let c = tenant_consumer_for(&t.as_a, "development-handlers", &t.a, "w2", &h).await;
    let run = spawn(&c).await;
    TenantContext::scope(
        t.a.clone(),
        p.publish(&event(EventType::TaskCreated, "after")),
    )
    .await
    .unwrap();
    eventually(
        WAIT,
        "handled after the admin loaded the library",
        || async { h.count() == 1 },
    )
    .await;
    c.stop();
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_protocol_function_refuses_keys_it_was_not_given() {
    let s = server();
    let mut admin = conn(&s).await;
    asdlc::functions::ensure_loaded(&mut admin).await.unwrap();
    let keys = StreamKeys::new("asdlc:events");
    // The mark check of one fingerprint, without the layout key and the mark hash it would
    // read (for the server's current bucket, of width 10^9 ms).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let err = redis::cmd("FCALL")
        .arg(format!("{}_mark", asdlc::functions::library_name()))
        .arg(1)
        .arg(keys.stream())
        .arg(keys.marks_prefix("g"))
        .arg(1_000_000_000)
        .arg(now / 1_000_000_000)
        .arg(2_000_000_000)
        .arg("16:4")
        .arg("abcdefghijkl")
        .arg("check")
        .query_async::<Value>(&mut admin)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("was not declared in KEYS"),
        "{err}"
    );
    // Through the tracker, which declares them, the same check works.
    let tracker = IdempotencyTracker::new(admin.clone(), keys, "g");
    assert!(!tracker.is_processed("k").await.unwrap());
    assert!(tracker.mark_processed("k").await.unwrap());
    assert!(tracker.is_processed("k").await.unwrap());
}

/// Scheduled events, follow-ups for later and approval gates, all as the tenant's ACL user: the
/// functions they run need nothing the tenant was not granted.
#[tokio::test]
async fn a_tenant_user_schedules_events_and_runs_gates() {
    let t = setup().await;
    let h = TestHandler::new("h", &[EventType::TaskCreated, EventType::GateExpired]);
    let c = EventConsumer::builder(t.as_a.clone(), "hitl")
        .tenant(t.a.clone())
        .handler(h.clone())
        .configure(fast)
        .build()
        .await
        .unwrap();
    let run = spawn(&c).await;
    let p = Publisher::connect(t.as_a.clone()).await.unwrap();
    let scheduled = TenantContext::scope(
        t.a.clone(),
        p.publish_after(
            &event(EventType::TaskCreated, "later"),
            Duration::from_millis(200),
        ),
    )
    .await
    .unwrap();
    assert!(scheduled.newly_scheduled);
    TenantContext::scope(t.a.clone(), async {
        let approved = asdlc::Gate::new(&p, "g-approved");
        approved
            .request("s", Duration::from_secs(60), "validation")
            .await
            .unwrap();
        assert!(matches!(
            approved.approve("alice").await.unwrap(),
            asdlc::GateDecision::Decided { .. }
        ));
        asdlc::Gate::new(&p, "g-expires")
            .request("s", Duration::from_millis(200), "validation")
            .await
            .unwrap();
    })
    .await;
    eventually(WAIT, "the scheduled event and the expiry handled", || {
        let h = h.clone();
        async move { h.count() == 2 }
    })
    .await;
    c.stop();
    run.await.unwrap().unwrap();
}
