//! Scheduled events against a real server (and the cluster): appended when due by the
//! promoter every consumer runs, exactly once however many race, cancellable, kept across a
//! server restart; follow-ups scheduled with their cause's commit; a handler's own retry delay.

use std::time::{Duration, Instant};

use asdlc::{AsdlcEvent, Config, EventType, HandlerResult, Publisher};

use crate::common::*;

const WAIT: Duration = Duration::from_secs(30);

fn task(i: usize) -> AsdlcEvent {
    AsdlcEvent::builder(EventType::TaskCreated, format!("s{i}"))
        .idempotency_key(format!("sched-{i}"))
        .build()
        .unwrap()
}

async fn xlen(target: &Target, stream: &str) -> usize {
    let mut c = target.conn().await;
    redis::cmd("XLEN")
        .arg(stream)
        .query_async(&mut c)
        .await
        .unwrap()
}

async fn scheduled(target: &Target, stream: &str) -> u64 {
    let mut c = target.conn().await;
    asdlc::schedule::count(&mut c, stream).await.unwrap()
}

async fn appended_when_due(target: Target, stream: &str) {
    let config = target.config(stream);
    let handler = TestHandler::new("h", &[EventType::TaskCreated]);
    let c = consumer_for(&config, "g", "c1", &handler).await;
    let run = spawn(&c).await;
    let publisher = Publisher::connect(config.clone()).await.unwrap();
    let at = Instant::now();
    let s = publisher
        .publish_after(&task(1), Duration::from_millis(400))
        .await
        .unwrap();
    assert!(s.newly_scheduled);
    assert_eq!(s.key, "sched-1");
    assert_eq!(
        xlen(&target, stream).await,
        0,
        "not in the stream before it is due"
    );
    assert_eq!(scheduled(&target, stream).await, 1);
    eventually(WAIT, "the scheduled event handled", || {
        let h = handler.clone();
        async move { h.count() == 1 }
    })
    .await;
    assert!(
        at.elapsed() >= Duration::from_millis(400),
        "{:?}",
        at.elapsed()
    );
    assert_eq!(scheduled(&target, stream).await, 0);
    assert_eq!(xlen(&target, stream).await, 1);
    c.stop();
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_scheduled_event_is_appended_when_due_on_a_server() {
    appended_when_due(Target::server(), "asdlc:events").await;
}

#[tokio::test]
async fn a_scheduled_event_is_appended_when_due_on_a_cluster() {
    appended_when_due(Target::cluster(), "cl-sched:events").await;
}

#[tokio::test]
async fn promoters_racing_on_one_stream_append_each_due_event_once() {
    let target = Target::server();
    let config = target.config("asdlc:events");
    // Six consumers of six groups: six promoters on one stream.
    let mut consumers = Vec::new();
    let mut handlers = Vec::new();
    for g in 0..6 {
        let h = TestHandler::new("h", &[EventType::TaskCreated]);
        let c = consumer_for(&config, &format!("g{g}"), "c", &h).await;
        let run = spawn(&c).await;
        consumers.push((c, run));
        handlers.push(h);
    }
    let publisher = Publisher::connect(config.clone()).await.unwrap();
    const N: usize = 1000;
    for i in 0..N {
        let delay = Duration::from_millis(100 + (i % 500) as u64);
        publisher.publish_after(&task(i), delay).await.unwrap();
    }
    eventually(WAIT, "every group handled every event", || {
        let hs = handlers.clone();
        async move { hs.iter().all(|h| h.count() >= N) }
    })
    .await;
    for (c, run) in consumers {
        c.stop();
        run.await.unwrap().unwrap();
    }
    assert_eq!(xlen(&target, &config.stream).await, N, "each appended once");
    for h in &handlers {
        assert_eq!(h.count(), N, "each handled once per group");
    }
    assert_eq!(scheduled(&target, &config.stream).await, 0);
}

#[tokio::test]
async fn a_cancelled_event_is_never_appended_and_a_key_is_scheduled_once() {
    let target = Target::server();
    let config = target.config("asdlc:events");
    let handler = TestHandler::new("h", &[EventType::TaskCreated]);
    let c = consumer_for(&config, "g", "c1", &handler).await;
    let run = spawn(&c).await;
    let publisher = Publisher::connect(config.clone()).await.unwrap();
    let delay = Duration::from_millis(500);
    publisher.publish_after(&task(1), delay).await.unwrap();
    publisher.publish_after(&task(2), delay).await.unwrap();
    // The same key again: the first schedule stands.
    let again = publisher
        .publish_after(&task(2), Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(!again.newly_scheduled);
    let mut conn = target.conn().await;
    let listed = asdlc::schedule::list(&mut conn, &config.stream, 10)
        .await
        .unwrap();
    assert_eq!(
        listed.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
        ["sched-1", "sched-2"]
    );
    assert!(publisher.cancel_scheduled("sched-1").await.unwrap());
    assert!(!publisher.cancel_scheduled("sched-1").await.unwrap());
    eventually(WAIT, "the other handled", || {
        let h = handler.clone();
        async move { h.count() == 1 }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let keys: Vec<String> = handler.calls().into_iter().map(|c| c.key).collect();
    assert_eq!(keys, ["sched-2"]);
    // Appended already: nothing left to cancel.
    assert!(!publisher.cancel_scheduled("sched-2").await.unwrap());
    assert_eq!(xlen(&target, &config.stream).await, 1);
    c.stop();
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_schedule_survives_a_server_restart_with_aof() {
    trace();
    let mut server = TestServer::builder().aof(true).start();
    let config = Config {
        redis_url: server.redis_url(),
        ..Config::default()
    };
    {
        let publisher = Publisher::connect(config.clone()).await.unwrap();
        publisher
            .publish_after(&task(1), Duration::from_millis(1500))
            .await
            .unwrap();
    }
    server.restart();
    let handler = TestHandler::new("h", &[EventType::TaskCreated]);
    let c = consumer_for(&config, "g", "c1", &handler).await;
    let run = spawn(&c).await;
    eventually(
        WAIT,
        "the scheduled event handled after the restart",
        || {
            let h = handler.clone();
            async move { h.count() == 1 }
        },
    )
    .await;
    c.stop();
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_follow_up_emitted_for_later_is_scheduled_with_its_cause_once() {
    let target = Target::server();
    let config = target.config("asdlc:events");
    let body = FnHandler::new(|event, ctx| {
        let next = AsdlcEvent::builder(EventType::TaskDispatched, event.session_id.clone())
            .build()
            .unwrap();
        ctx.emit_after(next, Duration::from_millis(500)).unwrap();
        if ctx.attempt() == 1 {
            HandlerResult::retry("not yet")
        } else {
            HandlerResult::ok()
        }
    });
    let c = body.consumer(&config, "designers").await;
    let run = spawn(&c).await;
    let dispatched = TestHandler::new("d", &[EventType::TaskDispatched]);
    let d = consumer_for(&config, "dispatchers", "d1", &dispatched).await;
    let d_run = spawn(&d).await;
    let publisher = Publisher::connect(config.clone()).await.unwrap();
    publisher.publish(&task(1)).await.unwrap();
    eventually(WAIT, "the cause committed", || {
        let c = c.clone();
        async move { c.stats().processed == 1 }
    })
    .await;
    let committed = Instant::now();
    assert_eq!(
        scheduled(&target, &config.stream).await,
        1,
        "the retry scheduled nothing"
    );
    eventually(WAIT, "the follow-up handled", || {
        let h = dispatched.clone();
        async move { h.count() == 1 }
    })
    .await;
    assert!(
        committed.elapsed() >= Duration::from_millis(300),
        "{:?}",
        committed.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(dispatched.count(), 1);
    for (c, r) in [(c, run), (d, d_run)] {
        c.stop();
        r.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn a_handler_asking_to_be_retried_later_is_redelivered_after_its_delay() {
    let target = Target::server();
    let config = target.config("asdlc:events");
    let body = FnHandler::new(|_, ctx| {
        if ctx.attempt() == 1 {
            HandlerResult::retry_after("rate limited", Duration::from_millis(2500))
        } else {
            HandlerResult::ok()
        }
    });
    let calls = body.calls.clone();
    // A peer of the same group, which claims entries idle past its claim threshold (800 ms
    // here): the waiting retry is kept alive, so the peer does not run it early.
    let peer = body.clone().consumer(&config, "designers").await;
    let c = body.consumer(&config, "designers").await;
    let run = spawn(&c).await;
    let peer_run = spawn(&peer).await;
    let publisher = Publisher::connect(config.clone()).await.unwrap();
    publisher.publish(&task(1)).await.unwrap();
    eventually(WAIT, "handled on the second attempt", || {
        let (c, peer) = (c.clone(), peer.clone());
        async move { c.stats().processed + peer.stats().processed == 1 }
    })
    .await;
    for (c, r) in [(c, run), (peer, peer_run)] {
        c.stop();
        r.await.unwrap().unwrap();
    }
    let at = calls.lock().unwrap().clone();
    assert_eq!(at.len(), 2);
    // The consumer's own backoff here is 30 ms, its claim threshold 800 ms: the handler's
    // delay was used, and nobody ran the retry early.
    assert!(
        at[1] - at[0] >= Duration::from_millis(2500),
        "{:?}",
        at[1] - at[0]
    );
}

#[tokio::test]
async fn a_damaged_scheduled_event_is_dead_lettered_and_blocks_nothing() {
    let target = Target::server();
    let config = target.config("asdlc:events");
    let keys = asdlc::StreamKeys::new(&config.stream);
    let mut conn = target.conn().await;
    // Written around the client, due first: its fields do not unpack.
    let _: () = redis::pipe()
        .cmd("HSET")
        .arg(keys.scheduled_events())
        .arg("damaged")
        .arg("12:not-enough")
        .ignore()
        .cmd("ZADD")
        .arg(keys.scheduled())
        .arg(0)
        .arg("damaged")
        .ignore()
        .query_async(&mut conn)
        .await
        .unwrap();
    let handler = TestHandler::new("h", &[EventType::TaskCreated]);
    let c = consumer_for(&config, "g", "c1", &handler).await;
    let run = spawn(&c).await;
    let publisher = Publisher::connect(config.clone()).await.unwrap();
    publisher
        .publish_after(&task(1), Duration::from_millis(100))
        .await
        .unwrap();
    eventually(WAIT, "the good event handled", || {
        let h = handler.clone();
        async move { h.count() == 1 }
    })
    .await;
    c.stop();
    run.await.unwrap().unwrap();
    let dead = asdlc::deadletter::list(&mut conn, &config.stream, "-", 10)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0].reason.contains("scheduled event damaged"),
        "{:?}",
        dead[0]
    );
    assert_eq!(scheduled(&target, &config.stream).await, 0);
}
