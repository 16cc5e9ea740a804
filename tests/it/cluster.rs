//! The framework on a real Redis Cluster (3 masters, 1 replica each): publishing, consuming
//! (one tenant, and many tenants spread over slots with one consumer per slot), idempotency,
//! recovery, dead letters and stream info, as `tests/it/consuming.rs` does on one server (a scenario
//! both need the same is written once there, with a wrapper for each); then a master failing over
//! and a slot moving while consumers run.
//!
//! Tests that only use their own keys share one cluster ([`TestCluster::shared`]), each under
//! its own stream name; the failover and resharding tests start their own.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::common::*;
use asdlc::keys::{hash_slot, partition_tenants_by_slot};
use asdlc::publish::ReplicaWait;
use asdlc::{
    AsdlcEvent, Config, EventConsumer, EventType, Publisher, RedisConnection, Tenancy,
    TenantContext, TenantId, acl, get_stream_info,
};
use redis::Value;

const WAIT: Duration = Duration::from_secs(20);

/// The cluster shared by the tests of this file that only touch their own keys.
fn cluster() -> &'static TestCluster {
    trace();
    TestCluster::shared()
}

/// Single-tenant configuration on stream `stream`.
fn single(c: &TestCluster, stream: &str) -> Config {
    Config {
        redis_url: c.redis_url(),
        stream: stream.to_owned(),
        ..Config::default()
    }
}

/// Multi-tenant configuration on stream base `stream`.
fn multi(c: &TestCluster, stream: &str) -> Config {
    Config {
        redis_url: c.redis_url(),
        stream: stream.to_owned(),
        tenancy: Tenancy::multi(),
        ..Config::default()
    }
}

async fn connect(c: &TestCluster) -> RedisConnection {
    let conn = RedisConnection::connect(&c.redis_url()).await.unwrap();
    assert!(conn.is_cluster());
    conn
}

async fn pending(c: &mut RedisConnection, stream: &str, group: &str) -> u64 {
    let info = get_stream_info(c, stream).await.unwrap();
    info.group(group).map(|g| g.pending).unwrap_or(0)
}

/// `count` tenants whose streams (under `base`) are served by different masters, as far as
/// the cluster has masters, then round-robin.
fn tenants_across_masters(
    c: &TestCluster,
    base: &str,
    prefix: &str,
    count: usize,
) -> Vec<TenantId> {
    let mut by_master: HashMap<usize, Vec<TenantId>> = HashMap::new();
    for i in 0..200 {
        let t = TenantId::new(format!("{prefix}{i}")).unwrap();
        let slot = hash_slot(asdlc::get_stream_name(base, Some(&t)).as_bytes());
        by_master
            .entry(c.master_of_slot(slot).unwrap())
            .or_default()
            .push(t);
    }
    let mut masters: Vec<_> = by_master.into_iter().collect();
    masters.sort_by_key(|(m, _)| *m);
    (0..count)
        .map(|i| {
            let (_, list) = &masters[i % masters.len()];
            list[i / masters.len()].clone()
        })
        .collect()
}

/// Starts one consumer of `group` per slot partition (`parts`), the `i`th named
/// `{prefix}{i}`, each reading the streams of its partition's tenants.
async fn consumers_per_slot(
    config: &Config,
    group: &str,
    parts: &[Vec<TenantId>],
    h: &TestHandler,
    prefix: &str,
) -> Vec<(
    EventConsumer,
    tokio::task::JoinHandle<Result<asdlc::ConsumerStats, asdlc::ConsumeError>>,
)> {
    let mut consumers = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let mut b = EventConsumer::builder(config.clone(), group)
            .handler(h.clone())
            .configure(|o| {
                fast(o);
                o.consumer = Some(format!("{prefix}{i}"));
            });
        for t in part {
            b = b.tenant(t.clone());
        }
        let consumer = b.build().await.unwrap();
        let run = spawn(&consumer).await;
        consumers.push((consumer, run));
    }
    consumers
}

#[tokio::test]
async fn tenants_in_different_slots_get_one_consumer_per_slot() {
    let c = cluster();
    let base = "cl-multi:events";
    let config = multi(c, base);
    let tenants = tenants_across_masters(c, base, "mt", 6);
    let parts = partition_tenants_by_slot(base, tenants.clone());
    assert_eq!(parts.len(), 6, "six tenants, six slots");
    let masters: HashSet<usize> = tenants
        .iter()
        .map(|t| {
            let slot = hash_slot(asdlc::get_stream_name(base, Some(t)).as_bytes());
            c.master_of_slot(slot).unwrap()
        })
        .collect();
    assert_eq!(masters.len(), 3, "the tenants live on all three masters");

    // One consumer cannot read streams of two slots with one XREADGROUP.
    let mut conn = connect(c).await;
    let s0 = config.stream_for(Some(&tenants[0]));
    let s1 = config.stream_for(Some(&tenants[1]));
    let err = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("g")
        .arg("c")
        .arg("STREAMS")
        .arg(&s0)
        .arg(&s1)
        .arg(">")
        .arg(">")
        .query_async::<Value>(&mut conn)
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        redis::ErrorKind::Server(redis::ServerErrorKind::CrossSlot),
        "{err}"
    );

    let h = TestHandler::all("h");
    let consumers = consumers_per_slot(&config, "hitl-handlers", &parts, &h, "w-slot").await;
    // One batch holding every tenant's events: split by slot under the hood.
    let p = Publisher::connect(config.clone()).await.unwrap();
    let mut batch = Vec::new();
    for round in 0..5 {
        for t in &tenants {
            batch.push(
                AsdlcEvent::builder(EventType::GateRequested, format!("{t}-{round}"))
                    .tenant_id(t.clone())
                    .build()
                    .unwrap(),
            );
        }
    }
    let published = p.publish_batch(&batch).await.unwrap();
    for (e, out) in batch.iter().zip(&published) {
        assert_eq!(out.stream, config.stream_for(e.tenant_id.as_ref()));
    }
    // And one through the task-local tenant context.
    TenantContext::scope(
        tenants[2].clone(),
        p.publish(&event(EventType::GateApproved, "ctx")),
    )
    .await
    .unwrap();
    eventually(WAIT, "every tenant's events handled", || async {
        h.count() == 31
    })
    .await;
    for call in h.calls() {
        let tenant = call.tenant.clone().expect("handled in a tenant context");
        if call.event.session_id != "ctx" {
            assert!(
                call.event.session_id.starts_with(&format!("{tenant}-")),
                "{call:?}"
            );
        }
    }
    for t in &tenants {
        let stream = config.stream_for(Some(t));
        let applied = applied(&mut conn, &stream, "hitl-handlers").await;
        let want = if *t == tenants[2] { 6 } else { 5 };
        assert_eq!(applied.len(), want, "{stream}");
        assert_eq!(pending(&mut conn, &stream, "hitl-handlers").await, 0);
    }
    for (consumer, run) in consumers {
        consumer.stop();
        run.await.unwrap().unwrap();
    }
}

/// `CLIENT ID` of the connection.
async fn client_id(conn: &mut RedisConnection) -> i64 {
    redis::cmd("CLIENT")
        .arg("ID")
        .query_async(conn)
        .await
        .unwrap()
}

/// `CLIENT LIST ID id` as seen through `conn`: empty once that client is gone.
async fn client_list(conn: &mut RedisConnection, id: i64) -> String {
    redis::cmd("CLIENT")
        .arg("LIST")
        .arg("ID")
        .arg(id)
        .query_async(conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn client_ids_are_checked_on_the_node_that_gave_them() {
    // The consumer-name lock stores the holder's CLIENT ID and another process checks it with
    // CLIENT LIST ID: both must reach the same node.
    let c = cluster();
    let a = connect(c).await;
    let mut b = connect(c).await;
    let mut a2 = a.clone();
    let id = client_id(&mut a2).await;
    for _ in 0..5 {
        let again = client_id(&mut a2).await;
        assert_eq!(again, id, "always the same node and socket");
    }
    let list = client_list(&mut b, id).await;
    assert!(list.contains(&format!("id={id} ")), "{list}");
    drop(a);
    drop(a2);
    eventually(WAIT, "the closed connection is gone", || {
        let mut b = b.clone();
        async move { client_list(&mut b, id).await.trim().is_empty() }
    })
    .await;
}

#[tokio::test]
async fn durable_publish_waits_for_a_replica() {
    let c = cluster();
    let p = Publisher::connect(single(c, "cl-durable:events"))
        .await
        .unwrap();
    let out = p
        .publish_durable(
            &event(EventType::PatchCreated, "s1"),
            ReplicaWait::one(Duration::from_secs(2)),
        )
        .await
        .unwrap();
    assert!(out.is_replicated(), "{out:?}");
    assert_eq!(out.replicas, 1);
    // The replica really has it.
    let slot = hash_slot(b"cl-durable:events");
    let master = c.master_of_slot(slot).unwrap();
    let master_port = format!("master_port:{}", c.node(master).port());
    let replica = (0..c.node_count())
        .find(|n| {
            let mut con = c.node_client(*n).get_connection().unwrap();
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query(&mut con)
                .unwrap();
            info.contains("role:slave") && info.contains(&master_port)
        })
        .expect("the stream's master has a replica");
    let mut con = c.node_client(replica).get_connection().unwrap();
    redis::cmd("READONLY").query::<()>(&mut con).unwrap();
    let len: u64 = redis::cmd("XLEN")
        .arg("cl-durable:events")
        .query(&mut con)
        .unwrap();
    assert_eq!(len, 1);

    // A lone server has no replica: the publish happens, the wait says so.
    let s = server();
    let p = Publisher::connect(config(&s)).await.unwrap();
    let out = p
        .publish_durable(
            &event(EventType::PatchCreated, "s1"),
            ReplicaWait::one(Duration::from_millis(100)),
        )
        .await
        .unwrap();
    assert!(!out.is_replicated());
    assert_eq!(out.replicas, 0);
    assert_eq!(
        get_stream_info(&mut conn(&s).await, "asdlc:events")
            .await
            .unwrap()
            .length,
        1
    );
}

#[tokio::test]
async fn tenant_users_are_confined_to_their_keys_on_a_cluster() {
    let c = cluster();
    let base = "cl-acl:events";
    let tenants = tenants_across_masters(c, base, "acl", 2);
    let (a, b) = (&tenants[0], &tenants[1]);
    let mut admin = connect(c).await;
    let creds = acl::provision_tenant(&mut admin, a, &acl::generate_password())
        .await
        .unwrap();
    // Provisioning returns once every node, replicas included, has the user.
    assert_eq!(creds.nodes().len(), c.node_count(), "{:?}", creds.nodes());
    for n in 0..c.node_count() {
        assert!(has_user(c, n, creds.username()), "node {n}");
    }
    let admin_p = Publisher::connect(multi(c, base)).await.unwrap();
    TenantContext::scope(
        b.clone(),
        admin_p.publish(&event(EventType::TaskCreated, "b-secret")),
    )
    .await
    .unwrap();

    let config = Config {
        redis_url: creds.url(&c.redis_url()).unwrap(),
        ..multi(c, base)
    };
    let p = Publisher::connect(config.clone()).await.unwrap();
    let h = TestHandler::all("h");
    let consumer = tenant_consumer_for(&config, "development-handlers", a, "acl-w1", &h).await;
    let run = spawn(&consumer).await;
    for i in 0..5 {
        TenantContext::scope(
            a.clone(),
            p.publish(&event(EventType::TaskCreated, &format!("a{i}"))),
        )
        .await
        .unwrap();
    }
    eventually(WAIT, "tenant A's events handled as A's user", || async {
        h.count() == 5
    })
    .await;
    // A's user cannot publish to B, nor read B's stream.
    let err = TenantContext::scope(b.clone(), p.publish(&event(EventType::TaskCreated, "x")))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, asdlc::PublishError::Redis { source, .. } if source.code() == Some("NOPERM")),
        "{err}"
    );
    let mut as_a = RedisConnection::connect(&config.redis_url).await.unwrap();
    let err = redis::cmd("XRANGE")
        .arg(config.stream_for(Some(b)))
        .arg("-")
        .arg("+")
        .query_async::<Value>(&mut as_a)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("NOPERM"), "{err}");
    consumer.stop();
    run.await.unwrap().unwrap();
    assert!(acl::revoke_tenant(&mut admin, a).await.unwrap());
    let b_info = get_stream_info(&mut admin, &config.stream_for(Some(b)))
        .await
        .unwrap();
    assert_eq!(b_info.length, 1, "B's data is intact");
}

/// Whether node `n` of `c` has ACL user `user` (`ACL GETUSER`, on the node itself).
fn has_user(c: &TestCluster, n: usize, user: &str) -> bool {
    let mut con = c.node_client(n).get_connection().unwrap();
    let reply: Value = redis::cmd("ACL")
        .arg("GETUSER")
        .arg(user)
        .query(&mut con)
        .unwrap();
    reply != Value::Nil
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_keeps_working_after_failing_over_to_a_replica_that_had_lost_its_user() {
    trace();
    let mut cl = blocking(|| {
        TestCluster::builder()
            .masters(1)
            .replicas_per_master(1)
            .start()
    });
    let master = cl.master_of_slot(0).unwrap();
    let replica = cl.replica_of(master).unwrap().expect("a replica");
    let base = "ha:events";
    let tenant = TenantId::new("ha1").unwrap();
    let late = TenantId::new("ha2").unwrap();
    let mut admin = connect(&cl).await;
    let creds = acl::provision_tenant(&mut admin, &tenant, &acl::generate_password())
        .await
        .unwrap();
    assert_eq!(creds.nodes().len(), 2);
    assert!(has_user(&cl, replica, creds.username()));

    let config = Config {
        redis_url: creds.url(&cl.redis_url()).unwrap(),
        ..multi(&cl, base)
    };
    let p = Publisher::connect(config.clone()).await.unwrap();
    let h = TestHandler::all("h");
    let consumer = tenant_consumer_for(&config, "development-handlers", &tenant, "ha-w1", &h).await;
    let run = spawn(&consumer).await;
    let publish = |session: &'static str| {
        let e = AsdlcEvent::builder(EventType::TaskCreated, session)
            .tenant_id(tenant.clone())
            .build()
            .unwrap();
        let p = p.clone();
        async move { p.publish(&e).await }
    };
    publish("before").await.unwrap();
    eventually(WAIT, "the first event handled", || async { h.count() == 1 }).await;

    // A node that cannot be reached is named, not skipped.
    blocking(|| cl.kill_node(replica));
    let err = acl::provision_tenant(&mut admin, &late, &acl::generate_password())
        .await
        .unwrap_err();
    let replica_addr = format!("127.0.0.1:{}", cl.node(replica).port());
    match &err {
        acl::AclError::Unreached {
            report,
            credentials: Some(late_creds),
            ..
        } => {
            assert_eq!(report.unreached.len(), 1, "{err}");
            assert_eq!(report.unreached[0].node, replica_addr, "{err}");
            assert_eq!(late_creds.nodes().len(), 1);
        }
        other => panic!("expected Unreached, got {other}"),
    }
    assert!(err.to_string().contains(&replica_addr), "{err}");

    // Restarted without an ACL file, the replica has lost every tenant user; a sync puts
    // them back from the record.
    blocking(|| cl.restart_node(replica)).unwrap();
    assert!(!has_user(&cl, replica, creds.username()));
    let report = acl::sync_tenants(&mut admin).await.unwrap();
    let mut restored: Vec<_> = report
        .changes_of(acl::UserChange::Created)
        .map(|c| (c.node.clone(), c.user.clone()))
        .collect();
    restored.sort();
    assert_eq!(
        restored,
        [
            (replica_addr.clone(), acl::tenant_username(&tenant)),
            (replica_addr.clone(), acl::tenant_username(&late)),
        ]
    );
    assert_eq!(report.changes_of(acl::UserChange::Unchanged).count(), 2);
    assert!(has_user(&cl, replica, creds.username()));

    // The replica takes over: the tenant's publisher and consumer keep working.
    blocking(|| cl.failover(replica)).unwrap();
    assert_eq!(cl.master_of_slot(0).unwrap(), replica);
    eventually(WAIT, "publishing works on the promoted master", || async {
        publish("after").await.is_ok()
    })
    .await;
    eventually(
        WAIT,
        "the event published after the failover handled",
        || async { h.calls().iter().any(|c| c.event.session_id == "after") },
    )
    .await;
    consumer.stop();
    run.await.unwrap().unwrap();
}

/// Runs `f` on a blocking-friendly thread of the multi-threaded test runtime.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumption_resumes_after_a_master_fails_over() {
    trace();
    let mut cl = blocking(TestCluster::start);
    let base = "fo:events";
    let config = multi(&cl, base);
    let tenants = tenants_across_masters(&cl, base, "fo", 3);
    // Tenant 0 lives on the master that will die; keep it off the master of slot 0, which
    // also answers CLIENT ID for every connection.
    let doomed_slot = hash_slot(config.stream_for(Some(&tenants[1])).as_bytes());
    let doomed = cl.master_of_slot(doomed_slot).unwrap();
    assert_ne!(doomed, cl.master_of_slot(0).unwrap());
    let h = TestHandler::all("h");
    let parts = partition_tenants_by_slot(base, tenants.clone());
    let consumers = consumers_per_slot(&config, "development-handlers", &parts, &h, "fo-").await;
    let p = Publisher::connect(config.clone()).await.unwrap();
    let publish = |t: TenantId, session: String, durable: bool| {
        let p = p.clone();
        async move {
            let e = AsdlcEvent::builder(EventType::TaskCreated, session)
                .tenant_id(t)
                .build()
                .unwrap();
            if durable {
                p.publish_durable(&e, ReplicaWait::one(Duration::from_secs(1)))
                    .await
                    .map(|d| (d.is_replicated(), d.published.idempotency_key))
            } else {
                p.publish(&e).await.map(|d| (false, d.idempotency_key))
            }
        }
    };
    // Before: every event durable.
    let mut durable_keys = Vec::new();
    for i in 0..20 {
        for t in &tenants {
            let (replicated, key) = publish(t.clone(), format!("before-{i}"), true)
                .await
                .unwrap();
            assert!(replicated);
            durable_keys.push((t.clone(), key));
        }
    }
    eventually(WAIT, "the first events handled", || async {
        h.count() == 60
    })
    .await;

    // Kill the master under tenant 1 while publishing goes on to every tenant.
    let killed = cl.kill_master(doomed);
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    let during = tokio::time::Instant::now();
    let mut i = 0;
    while during.elapsed() < Duration::from_millis(1500) {
        for t in &tenants {
            match publish(t.clone(), format!("during-{i}"), false).await {
                Ok((_, key)) => acknowledged.push((t.clone(), key)),
                Err(_) => refused += 1,
            }
        }
        i += 1;
    }
    let promoted = blocking(|| cl.wait_for_failover(killed)).unwrap();
    assert_ne!(promoted, killed);
    // After: the promoted master has no replica until the old one comes back, so these are
    // plain publishes; nothing fails any more, so every one must be handled.
    for i in 0..20 {
        for t in &tenants {
            let (_, key) = publish(t.clone(), format!("after-{i}"), false)
                .await
                .unwrap();
            durable_keys.push((t.clone(), key));
        }
    }
    // The old master comes back as a replica of the promoted one: durable publishing works
    // for its tenant again.
    blocking(|| cl.restart_node(killed)).unwrap();
    assert_eq!(cl.master_of_slot(doomed_slot).unwrap(), promoted);
    for t in &tenants {
        let (replicated, key) = publish(t.clone(), "rejoined".to_owned(), true)
            .await
            .unwrap();
        assert!(replicated, "{t}");
        durable_keys.push((t.clone(), key));
    }
    let handled = || -> HashSet<String> { h.calls().into_iter().map(|c| c.key).collect() };
    eventually(
        Duration::from_secs(30),
        "every event published durably or after the failover handled",
        || async {
            let seen = handled();
            durable_keys.iter().all(|(_, k)| seen.contains(k))
        },
    )
    .await;
    // Let the consumers drain whatever else survived.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let seen = handled();
    let lost: Vec<_> = acknowledged
        .iter()
        .filter(|(_, k)| !seen.contains(k))
        .collect();
    eprintln!(
        "failover: {} publishes acknowledged while the master was down or failing over, {} \
         refused, {} acknowledged but never handled (lost with the dead master)",
        acknowledged.len(),
        refused,
        lost.len()
    );
    for (t, _) in &lost {
        assert_eq!(
            *t, tenants[1],
            "only the failed master's tenant can lose events"
        );
    }
    // Redis-staged effects are exactly once per handled event, across the failover.
    let mut conn = RedisConnection::connect(&config.redis_url).await.unwrap();
    for t in &tenants {
        let stream = config.stream_for(Some(t));
        let applied = applied(&mut conn, &stream, "development-handlers").await;
        assert!(applied.values().all(|v| *v == 1), "{stream}: {applied:?}");
        eventually(WAIT, "nothing left pending", || {
            let mut conn = conn.clone();
            let stream = stream.clone();
            async move { pending(&mut conn, &stream, "development-handlers").await == 0 }
        })
        .await;
    }
    for (consumer, run) in consumers {
        consumer.stop();
        run.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumption_survives_moving_a_slot() {
    trace();
    let mut cl = blocking(|| TestCluster::builder().replicas_per_master(0).start());
    let stream = "reshard:events";
    let config = single(&cl, stream);
    let slot = hash_slot(stream.as_bytes());
    let from = cl.master_of_slot(slot).unwrap();
    let to = (from + 1) % cl.master_count();
    let h = TestHandler::all("h");
    let consumer = consumer_for(&config, "development-handlers", "w1", &h).await;
    let run = spawn(&consumer).await;
    let p = Publisher::connect(config.clone()).await.unwrap();
    let mut keys = Vec::new();
    for i in 0..30 {
        keys.push(
            p.publish(&event(EventType::TaskCreated, &format!("a{i}")))
                .await
                .unwrap()
                .idempotency_key,
        );
    }
    eventually(WAIT, "handled before the move", || async {
        h.count() == 30
    })
    .await;
    // Publish while the slot moves: redirected with ASK while it migrates, MOVED after.
    let mover = {
        let hold = Duration::from_millis(800);
        tokio::task::spawn_blocking(move || {
            cl.migrate_slot(slot, to, hold).unwrap();
            cl
        })
    };
    let started = tokio::time::Instant::now();
    let mut i = 0;
    while !mover.is_finished() || started.elapsed() < Duration::from_millis(300) {
        let e = event(EventType::TaskCreated, &format!("b{i}"));
        keys.push(p.publish(&e).await.unwrap().idempotency_key);
        i += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cl = mover.await.unwrap();
    assert_eq!(cl.master_of_slot(slot).unwrap(), to);
    for i in 0..30 {
        keys.push(
            p.publish(&event(EventType::TaskCreated, &format!("c{i}")))
                .await
                .unwrap()
                .idempotency_key,
        );
    }
    let total = keys.len();
    eventually(
        Duration::from_secs(30),
        "every event handled after the move",
        || async { h.count() >= total },
    )
    .await;
    let mut conn = RedisConnection::connect(&config.redis_url).await.unwrap();
    eventually(WAIT, "nothing left pending", || {
        let mut conn = conn.clone();
        async move { pending(&mut conn, stream, "development-handlers").await == 0 }
    })
    .await;
    let applied = applied(&mut conn, stream, "development-handlers").await;
    assert_eq!(applied.len(), total);
    assert!(applied.values().all(|v| *v == 1), "{applied:?}");
    // The stream now lives on the new master alone.
    let mut direct = cl.node_client(to).get_connection().unwrap();
    let len: u64 = redis::cmd("XLEN").arg(stream).query(&mut direct).unwrap();
    assert_eq!(len as usize, total);
    consumer.stop();
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn tenants_on_every_master_are_discovered() {
    let c = cluster();
    let base = "cl-discover:events";
    let tenants = tenants_across_masters(c, base, "dt", 6);
    let p = Publisher::connect(multi(c, base)).await.unwrap();
    for t in &tenants {
        TenantContext::scope(t.clone(), p.publish(&event(EventType::TaskCreated, "s")))
            .await
            .unwrap();
    }
    let mut conn = connect(c).await;
    let mut want = tenants.clone();
    want.sort();
    assert_eq!(
        asdlc::discover_tenants(&mut conn, base).await.unwrap(),
        want
    );
    let streams = asdlc::monitor::tenant_streams(&mut conn, base)
        .await
        .unwrap();
    assert_eq!(
        streams.into_iter().map(|(t, _)| t).collect::<Vec<_>>(),
        want
    );
    let keys = conn
        .scan_match("tenant:{dt*}:cl-discover:events", Some("stream"))
        .await
        .unwrap();
    assert_eq!(keys.len(), 6);
}
