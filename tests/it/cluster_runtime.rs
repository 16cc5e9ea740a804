//! The Runtime on a real Redis Cluster: a multi-tenant group whose tenants live in different
//! slots runs one consumer per slot (a cluster refuses one read over several slots), and
//! every tenant's events are handled once, in its own context.

use std::time::Duration;

use crate::common::*;
use asdlc::keys::partition_tenants_by_slot;
use asdlc::prelude::*;
use asdlc::{Runtime, Tenancy};
use asdlc_testing::TestCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_tenant_runtime_reads_each_slot_separately() {
    let cluster = TestCluster::start();
    let tenants: Vec<TenantId> = ["acme", "globex", "initech", "umbrella", "hooli", "stark"]
        .into_iter()
        .map(tenant)
        .collect();
    let slots = partition_tenants_by_slot("rt:events", tenants.clone()).len();
    assert!(slots > 1, "the tenants spread over several slots");
    let config = Config {
        redis_url: cluster.redis_url(),
        stream: "rt:events".into(),
        tenancy: Tenancy::multi_only(tenants.clone()),
        ..Config::default()
    };
    let handler = TestHandler::all("per-slot");
    let runtime = Runtime::builder()
        .without_registered()
        .config(config.clone())
        .consumer_name("cluster-worker")
        .handler("cluster-handlers", handler.clone())
        .configure(|_, o| fast(o))
        .build()
        .await
        .unwrap();
    let handle = runtime.handle();
    let run = tokio::spawn(runtime.run_until(std::future::pending()));
    tokio::time::timeout(Duration::from_secs(30), handle.ready())
        .await
        .unwrap()
        .unwrap();

    let publisher = Publisher::connect(config.clone()).await.unwrap();
    for t in &tenants {
        TenantContext::scope(t.clone(), async {
            for i in 0..5 {
                let e = AsdlcEvent::builder(EventType::TaskCreated, format!("{t}-{i}"))
                    .build()
                    .unwrap();
                publisher.publish(&e).await.unwrap();
            }
        })
        .await;
    }
    eventually(
        Duration::from_secs(30),
        "every tenant's events handled",
        || async { handler.count() == 5 * tenants.len() },
    )
    .await;
    for call in handler.calls() {
        let t = call.tenant.expect("handled in a tenant context");
        assert!(
            call.event.session_id.starts_with(&t),
            "{t} got {}",
            call.event.session_id
        );
    }
    handle.stop();
    let report = run.await.unwrap().unwrap();
    assert_eq!(
        report.group("cluster-handlers").unwrap().stats.processed,
        30
    );
}
