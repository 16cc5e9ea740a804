//! Shared helpers of the integration tests: a real server per test, a [`Target`] for the
//! scenarios that run on a server and on a cluster, fast consumer settings, and a scriptable
//! handler that records every call. The stand-alone test binaries include it too (`#[path]`),
//! so some of it goes unused in each.
#![allow(dead_code, unused_imports)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use asdlc::{
    AsdlcEvent, BoxFuture, Config, ConsumerOptions, Effect, EventConsumer, EventHandler, EventType,
    HandlerContext, HandlerResult, RedisConnection, RedisUrl, Tenancy, TenantId,
};
pub use asdlc_testing::fixtures::{cut_connections, eventually, read_and_die, read_without_ack};
pub use asdlc_testing::{TestCluster, TestServer};

/// Logs to the test's output, filtered by `ASDLC_TEST_LOG` (e.g. `ASDLC_TEST_LOG=asdlc=debug`).
pub fn trace() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("ASDLC_TEST_LOG"))
        .with_test_writer()
        .try_init();
}

/// A fresh server for one test.
pub fn server() -> TestServer {
    trace();
    TestServer::start()
}

/// Where a scenario written once runs: a server of its own, or the cluster the cluster tests
/// share (each test on streams of its own there).
pub enum Target {
    /// A fresh server for this test.
    Server(TestServer),
    /// The shared cluster, [`TestCluster::shared`].
    Cluster(&'static TestCluster),
}

impl Target {
    /// A fresh server.
    pub fn server() -> Target {
        Target::Server(server())
    }

    /// The shared cluster.
    pub fn cluster() -> Target {
        trace();
        Target::Cluster(TestCluster::shared())
    }

    /// The URL of the server or of the cluster.
    pub fn redis_url(&self) -> RedisUrl {
        match self {
            Target::Server(s) => s.redis_url(),
            Target::Cluster(c) => c.redis_url(),
        }
    }

    /// Single-tenant configuration on stream `stream`.
    pub fn config(&self, stream: &str) -> Config {
        Config {
            redis_url: self.redis_url(),
            stream: stream.to_owned(),
            ..Config::default()
        }
    }

    /// A connection, checked to be a cluster connection exactly on a cluster.
    pub async fn conn(&self) -> RedisConnection {
        let conn = RedisConnection::connect(&self.redis_url())
            .await
            .expect("connect");
        assert_eq!(conn.is_cluster(), matches!(self, Target::Cluster(_)));
        conn
    }
}

/// A consumer `name` of `group` on `tenant`'s stream with the fast settings, running `handler`.
pub async fn tenant_consumer_for(
    config: &Config,
    group: &str,
    tenant: &TenantId,
    name: &str,
    handler: &TestHandler,
) -> EventConsumer {
    build_consumer(
        EventConsumer::builder(config.clone(), group).tenant(tenant.clone()),
        name,
        handler,
    )
    .await
}

/// A consumer `name` of `group` with the fast settings, running `handler`.
pub async fn consumer_for(
    config: &Config,
    group: &str,
    name: &str,
    handler: &TestHandler,
) -> EventConsumer {
    build_consumer(EventConsumer::builder(config.clone(), group), name, handler).await
}

async fn build_consumer(
    builder: asdlc::EventConsumerBuilder,
    name: &str,
    handler: &TestHandler,
) -> EventConsumer {
    builder
        .handler(handler.clone())
        .configure(|o| {
            fast(o);
            o.consumer = Some(name.to_owned());
        })
        .build()
        .await
        .unwrap()
}

/// Single-tenant configuration for `server`.
pub fn config(server: &TestServer) -> Config {
    Config {
        redis_url: server.redis_url(),
        ..Config::default()
    }
}

/// Multi-tenant configuration for `server`.
pub fn multi_config(server: &TestServer) -> Config {
    Config {
        redis_url: server.redis_url(),
        tenancy: Tenancy::multi(),
        ..Config::default()
    }
}

pub async fn conn(server: &TestServer) -> RedisConnection {
    RedisConnection::connect(&server.redis_url())
        .await
        .expect("connect")
}

pub fn tenant(id: &str) -> TenantId {
    TenantId::new(id).unwrap()
}

/// `p` refuses to publish for tenant `id`, one outside its configuration's allow-list.
pub async fn assert_not_allowed(p: &asdlc::Publisher, id: &str) {
    let err =
        asdlc::TenantContext::scope(tenant(id), p.publish(&event(EventType::TaskCreated, "x")))
            .await
            .unwrap_err();
    assert!(
        matches!(
            err,
            asdlc::PublishError::Tenant(asdlc::TenantError::NotAllowed(_))
        ),
        "{err}"
    );
}

/// Short timings so tests run in well under a second each.
pub fn fast(o: &mut ConsumerOptions) {
    o.block = Duration::from_millis(100);
    o.claim_idle = Duration::from_millis(800);
    o.claim_interval = Duration::from_millis(200);
    o.retry.base = Duration::from_millis(30);
    o.retry.max = Duration::from_millis(150);
    o.shutdown_grace = Duration::from_secs(5);
    o.batch_size = 50;
}

/// Starts `consumer` on a task and waits until it has recovered and is reading.
pub async fn spawn(
    consumer: &EventConsumer,
) -> tokio::task::JoinHandle<Result<asdlc::ConsumerStats, asdlc::ConsumeError>> {
    let c = consumer.clone();
    let handle = tokio::spawn(async move { c.start().await });
    tokio::time::timeout(Duration::from_secs(20), consumer.ready())
        .await
        .expect("consumer ready in time")
        .expect("consumer ready");
    handle
}

/// A runtime running on a task: its handle and the task.
pub type Running = (
    asdlc::RuntimeHandle,
    tokio::task::JoinHandle<Result<asdlc::RuntimeReport, asdlc::RuntimeError>>,
);

/// Builds the runtime, runs it on a task until stopped and waits until it is ready.
pub async fn start_runtime(builder: asdlc::RuntimeBuilder) -> Running {
    let rt = builder.build().await.unwrap();
    let handle = rt.handle();
    let run = tokio::spawn(rt.run_until(std::future::pending()));
    tokio::time::timeout(Duration::from_secs(15), handle.ready())
        .await
        .expect("runtime ready in time")
        .expect("runtime ready");
    (handle, run)
}

/// Stops a runtime started with [`start_runtime`] and returns its report.
pub async fn stop_runtime((handle, run): Running) -> asdlc::RuntimeReport {
    handle.stop();
    run.await.unwrap().unwrap()
}

/// What a test handler does with one call.
#[derive(Debug, Clone)]
pub enum Behavior {
    Ok,
    Retry,
    Permanent,
    Panic,
    Sleep(Duration),
}

/// One recorded handler call.
#[derive(Debug, Clone)]
pub struct Call {
    pub entry_id: String,
    pub key: String,
    pub attempt: u32,
    pub consumer: String,
    pub tenant: Option<String>,
    pub event: AsdlcEvent,
}

type Decide = dyn Fn(&AsdlcEvent, u32) -> Behavior + Send + Sync;

/// A handler whose behaviour a test scripts, recording every call, and staging one effect per
/// success: `HINCRBY <scoped applied:<group>> <idempotency key> 1`.
#[derive(Clone)]
pub struct TestHandler {
    pub name: String,
    pub types: Vec<EventType>,
    pub calls: Arc<Mutex<Vec<Call>>>,
    decide: Arc<Decide>,
}

impl TestHandler {
    pub fn new(name: &str, types: &[EventType]) -> Self {
        TestHandler {
            name: name.to_owned(),
            types: types.to_vec(),
            calls: Arc::default(),
            decide: Arc::new(|_, _| Behavior::Ok),
        }
    }

    pub fn all(name: &str) -> Self {
        TestHandler::new(name, EventType::ALL)
    }

    pub fn behave(
        mut self,
        f: impl Fn(&AsdlcEvent, u32) -> Behavior + Send + Sync + 'static,
    ) -> Self {
        self.decide = Arc::new(f);
        self
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.calls.lock().unwrap().len()
    }
}

impl EventHandler for TestHandler {
    fn name(&self) -> &str {
        &self.name
    }

    fn can_handle(&self, event_type: EventType) -> bool {
        self.types.contains(&event_type)
    }

    fn handle<'a>(
        &'a self,
        event: &'a AsdlcEvent,
        ctx: &'a HandlerContext,
    ) -> BoxFuture<'a, HandlerResult> {
        Box::pin(async move {
            let key = event.idempotency_key.clone().unwrap_or_default();
            self.calls.lock().unwrap().push(Call {
                entry_id: ctx.entry_id().to_owned(),
                key: key.clone(),
                attempt: ctx.attempt(),
                consumer: ctx.consumer().to_owned(),
                tenant: asdlc::TenantContext::current().map(|t| t.to_string()),
                event: event.clone(),
            });
            match (self.decide)(event, ctx.attempt()) {
                Behavior::Ok => {}
                Behavior::Retry => return HandlerResult::retry("try again"),
                Behavior::Permanent => return HandlerResult::permanent("cannot ever work"),
                Behavior::Panic => panic!("handler exploded"),
                Behavior::Sleep(d) => tokio::time::sleep(d).await,
            }
            ctx.stage(Effect::hincr_by(
                ctx.scoped_key(&format!("applied:{}", ctx.group())),
                key.into_bytes(),
                1,
            ))
            .expect("effect in slot");
            HandlerResult::ok()
        })
    }
}

/// The exactly-once effect counters of `group` on `stream`: key -> times applied.
pub async fn applied(
    conn: &mut RedisConnection,
    stream: &str,
    group: &str,
) -> std::collections::HashMap<String, i64> {
    let key = asdlc::StreamKeys::new(stream).scoped(&format!("applied:{group}"));
    redis::cmd("HGETALL")
        .arg(key)
        .query_async(conn)
        .await
        .unwrap()
}

/// Waits until `group` has read and acknowledged every entry of `asdlc:events`.
pub async fn all_acknowledged(conn: &RedisConnection, group: &str, what: &str) {
    eventually(Duration::from_secs(15), what, || {
        let mut conn = conn.clone();
        async move {
            asdlc::get_stream_info(&mut conn, "asdlc:events")
                .await
                .unwrap()
                .group(group)
                .is_some_and(|g| g.pending == 0 && g.lag == Some(0))
        }
    })
    .await;
}

/// Every key of the database (`KEYS *`: the test servers are small).
pub async fn all_keys(conn: &mut impl redis::aio::ConnectionLike) -> Vec<String> {
    redis::cmd("KEYS").arg("*").query_async(conn).await.unwrap()
}

/// Every entry of `stream` as it is stored: its id and its field-value pairs.
pub async fn xrange(
    conn: &mut asdlc::RedisConnection,
    stream: &str,
) -> Vec<(String, Vec<(Vec<u8>, Vec<u8>)>)> {
    let v: redis::Value = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .unwrap();
    let redis::Value::Array(items) = v else {
        return Vec::new();
    };
    items
        .into_iter()
        .map(|item| {
            let redis::Value::Array(mut parts) = item else {
                panic!()
            };
            let fields = parts.pop().unwrap();
            let redis::Value::BulkString(id) = parts.pop().unwrap() else {
                panic!()
            };
            let redis::Value::Array(flat) = fields else {
                panic!()
            };
            let flat: Vec<Vec<u8>> = flat
                .into_iter()
                .map(|v| match v {
                    redis::Value::BulkString(b) => b,
                    _ => panic!(),
                })
                .collect();
            let pairs = flat
                .chunks(2)
                .map(|c| (c[0].clone(), c[1].clone()))
                .collect();
            (String::from_utf8(id).unwrap(), pairs)
        })
        .collect()
}

pub fn event(t: EventType, session: &str) -> AsdlcEvent {
    AsdlcEvent::builder(t, session).build().unwrap()
}

type Body = dyn Fn(&AsdlcEvent, &HandlerContext) -> HandlerResult + Send + Sync;

/// A handler of `task_created` whose body a test writes, noting when each call came.
#[derive(Clone)]
pub struct FnHandler {
    body: Arc<Body>,
    /// When each call started.
    pub calls: Arc<Mutex<Vec<std::time::Instant>>>,
}

impl FnHandler {
    pub fn new(
        f: impl Fn(&AsdlcEvent, &HandlerContext) -> HandlerResult + Send + Sync + 'static,
    ) -> Self {
        FnHandler {
            body: Arc::new(f),
            calls: Arc::default(),
        }
    }

    /// A consumer of `group` with the fast settings, running this handler.
    pub async fn consumer(self, config: &Config, group: &str) -> EventConsumer {
        EventConsumer::builder(config.clone(), group)
            .handler(self)
            .configure(fast)
            .build()
            .await
            .unwrap()
    }
}

impl EventHandler for FnHandler {
    fn name(&self) -> &str {
        "fn-handler"
    }

    fn can_handle(&self, event_type: EventType) -> bool {
        event_type == EventType::TaskCreated
    }

    fn handle<'a>(
        &'a self,
        event: &'a AsdlcEvent,
        ctx: &'a HandlerContext,
    ) -> BoxFuture<'a, HandlerResult> {
        self.calls.lock().unwrap().push(std::time::Instant::now());
        Box::pin(async move { (self.body)(event, ctx) })
    }
}

/// How many times the server has run `command` (lower case, e.g. `xadd`, `hexists`, `fcall`),
/// from `INFO commandstats`.
pub async fn command_calls(conn: &mut RedisConnection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// The hash a mark of fingerprint `fp` is in, in `bucket` of a layout of `shards` shards: the
/// fingerprint's first two bytes modulo `shards` in four hex digits up to 65,536 shards, its
/// first three (the third above the two) in five digits above. Written out here, apart from
/// the runtime's, so the tests check the layout rather than repeat it.
pub fn mark_hash_of(prefix: &str, bucket: u64, shards: u32, fp: &[u8]) -> String {
    let two = (u32::from(fp[0]) << 8) | u32::from(fp[1]);
    if shards > 1 << 16 {
        let three = (u32::from(fp[2]) << 16) | two;
        format!("{prefix}{bucket}:{:05x}", three % shards)
    } else {
        format!("{prefix}{bucket}:{:04x}", two % shards)
    }
}
