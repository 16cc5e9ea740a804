//! Test setups the workspace's tests share: a handler that refuses everything, events published
//! in bulk, entries left pending by a consumer that dies, dead letters made on purpose, and
//! waiting until something holds.
//!
//! Each fixture works on whatever server or cluster its [`Config`] or [`RedisConnection`] names.

use std::future::Future;
use std::time::Duration;

use asdlc_runtime::{
    AsdlcEvent, BoxFuture, Config, EventConsumer, EventHandler, EventType, HandlerContext,
    HandlerResult, Publisher, RedisConnection, TenantId,
};

/// How long [`dead_letter_all`] and [`wait_for_dead_letters`] wait before they panic.
pub const DEAD_LETTER_WAIT: Duration = Duration::from_secs(15);

/// The reason [`Refuse`] gives for every event.
pub const REFUSAL: &str = "cannot ever work";

/// A handler named `refuse` that takes every event type and fails each event for good
/// ([`REFUSAL`]), so every event it is given is dead-lettered on its first attempt.
#[derive(Debug, Clone, Copy, Default)]
pub struct Refuse;

impl EventHandler for Refuse {
    fn name(&self) -> &str {
        "refuse"
    }

    fn can_handle(&self, _: EventType) -> bool {
        true
    }

    fn handle<'a>(
        &'a self,
        _: &'a AsdlcEvent,
        _: &'a HandlerContext,
    ) -> BoxFuture<'a, HandlerResult> {
        Box::pin(async { HandlerResult::permanent(REFUSAL) })
    }
}

/// Publishes `n` `task_created` events, with session ids `{session_prefix}0`,
/// `{session_prefix}1`, ..., in one batch to `tenant`'s stream (or the single stream), and
/// returns their event ids in order.
pub async fn publish_events(
    config: &Config,
    tenant: Option<&TenantId>,
    n: usize,
    session_prefix: &str,
) -> Vec<String> {
    let publisher = Publisher::connect(config.clone())
        .await
        .expect("connect a publisher");
    let events: Vec<AsdlcEvent> = (0..n)
        .map(|i| {
            let mut event = AsdlcEvent::new(EventType::TaskCreated, format!("{session_prefix}{i}"));
            event.tenant_id = tenant.cloned();
            event
        })
        .collect();
    publisher
        .publish_batch(&events)
        .await
        .expect("publish the events")
        .into_iter()
        .map(|published| published.event_id)
        .collect()
}

/// Reads new entries of `stream` as consumer `consumer` of the existing group `group`, at most
/// `count` of them (all if `None`), and never acknowledges them: they stay pending for a
/// consumer that took them and died before any handler began.
pub async fn read_without_ack(
    conn: &mut RedisConnection,
    stream: &str,
    group: &str,
    consumer: &str,
    count: Option<usize>,
) {
    let mut cmd = redis::cmd("XREADGROUP");
    cmd.arg("GROUP").arg(group).arg(consumer);
    if let Some(count) = count {
        cmd.arg("COUNT").arg(count);
    }
    let _: redis::Value = cmd
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query_async(conn)
        .await
        .expect("XREADGROUP");
}

/// Creates `group` on `stream` from its first entry (if it does not exist) and reads `count`
/// entries as `consumer` without acknowledging them: a consumer that then dies.
pub async fn read_and_die(
    conn: &mut RedisConnection,
    stream: &str,
    group: &str,
    consumer: &str,
    count: usize,
) {
    asdlc_runtime::create_consumer_group(conn, stream, group, asdlc_runtime::GroupStart::Beginning)
        .await
        .expect("create the group");
    read_without_ack(conn, stream, group, consumer, Some(count)).await;
}

/// On `tenant`'s stream (or the single stream): creates group `slow` at the stream's end,
/// publishes `n` events (sessions `{session_prefix}0`, ...), and has `slow_consumer` read the
/// first 2 of them without acknowledging: group `slow` then lags by `n - 2` and has 2 pending.
pub async fn leave_lag_and_pending(
    config: &Config,
    tenant: Option<&TenantId>,
    n: usize,
    session_prefix: &str,
    slow_consumer: &str,
) {
    let stream = config.stream_for(tenant);
    let mut conn = RedisConnection::connect(&config.redis_url)
        .await
        .expect("connect");
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("slow")
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .expect("create group slow");
    publish_events(config, tenant, n, session_prefix).await;
    read_without_ack(&mut conn, &stream, "slow", slow_consumer, Some(2)).await;
}

/// Waits until `consumer` has dead-lettered at least `n` entries; panics with its stats after
/// [`DEAD_LETTER_WAIT`].
pub async fn wait_for_dead_letters(consumer: &EventConsumer, n: u64) {
    let deadline = tokio::time::Instant::now() + DEAD_LETTER_WAIT;
    while consumer.stats().dead_lettered < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "dead letters: {:?}",
            consumer.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs consumer `consumer_name` of `group` (on `tenant`'s stream, or the single stream) with
/// [`Refuse`] until it has dead-lettered `n` entries, then stops it.
pub async fn dead_letter_all(
    config: &Config,
    tenant: Option<&TenantId>,
    group: &str,
    consumer_name: &str,
    n: u64,
) {
    let mut builder = EventConsumer::builder(config.clone(), group);
    if let Some(tenant) = tenant {
        builder = builder.tenant(tenant.clone());
    }
    let consumer = builder
        .handler(Refuse)
        .configure(|o| {
            o.consumer = Some(consumer_name.to_owned());
            o.block = Duration::from_millis(50);
        })
        .build()
        .await
        .expect("build the refusing consumer");
    let running = tokio::spawn({
        let consumer = consumer.clone();
        async move { consumer.start().await }
    });
    wait_for_dead_letters(&consumer, n).await;
    consumer.stop();
    running
        .await
        .expect("the refusing consumer did not panic")
        .expect("the refusing consumer stopped cleanly");
}

/// Closes every normal client connection of the server `conn` talks to but `conn`'s own
/// (`CLIENT KILL TYPE normal SKIPME yes`), as a network cut would, and returns how many it
/// closed.
pub async fn cut_connections(conn: &mut RedisConnection) -> redis::RedisResult<i64> {
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query_async(conn)
        .await
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs one command, given as its words (`["XLEN", "asdlc:events"]`), on the server at `url`
/// over a fresh blocking connection.
pub fn raw_command(url: &str, words: &[&str]) -> redis::RedisResult<redis::Value> {
    let mut conn = redis::Client::open(url)?.get_connection()?;
    let mut cmd = redis::cmd(words[0]);
    for word in &words[1..] {
        cmd.arg(*word);
    }
    cmd.query(&mut conn)
}
