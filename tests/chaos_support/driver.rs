//! The driver of the crash and fault suite: runs worker processes against a real server with
//! an append-only file, makes trouble while they work, and then checks from Redis that every
//! published event's effect was applied exactly once.
//!
//! [`run`] does, in order:
//!
//! 1. starts a [`TestServer`] (append-only file, `appendfsync always`) and the workers;
//! 2. publishes the events in batches, about [`Plan::duplicate_percent`] of them twice with
//!    the same idempotency key; meanwhile a chaos thread SIGKILLs a random worker now and then
//!    and starts it again at once under the same consumer name, cuts every client connection
//!    but its own (`CLIENT KILL TYPE normal SKIPME yes`), and crashes or restarts the server
//!    at set points of the publishing;
//! 3. stops every worker with SIGTERM and checks that none left an entry half-done;
//! 4. starts one last worker that claims and drains whatever is left, then stops it;
//! 5. checks: each published key applied exactly once, no other key applied, nothing pending
//!    or unread, no lease left, every invocation in the log accounted for.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use asdlc::{AsdlcEvent, Config, EventType, Publisher, RedisConnection, StreamKeys};
use asdlc_testing::TestServer;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use redis::streams::{StreamPendingCountReply, StreamRangeReply};

use super::worker::{self, APPLIED, GROUP, INVOCATIONS, READY_LINE, REPORT_PREFIX};

/// The stream the workers consume (the default single-tenant stream).
pub const STREAM: &str = "asdlc:events";

/// Makes the command that starts one worker process; the driver adds its environment and
/// redirects its output.
pub type Spawner = Arc<dyn Fn() -> Command + Send + Sync>;

/// What a run does.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Distinct events (idempotency keys) to publish.
    pub events: usize,
    /// Events per published batch.
    pub batch: usize,
    /// The share of events published a second time with the same key, in percent.
    pub duplicate_percent: usize,
    /// The pause between two batches.
    pub publish_pause: Duration,
    /// Worker processes.
    pub workers: usize,
    /// A worker is SIGKILLed every so often: a random time in this range.
    pub kill_every: (Duration, Duration),
    /// Keep making trouble after publishing until this many workers were killed.
    pub min_kills: usize,
    /// Client connections are cut every so often: a random time in this range.
    pub cut_every: (Duration, Duration),
    /// How many times the server goes down during publishing (crash and restart, or
    /// graceful restart, alternately), spread evenly.
    pub server_restarts: usize,
    /// Each handler call sleeps a random time in this range, in ms.
    pub handler_sleep_ms: (u64, u64),
    /// Handlers running at once in each worker.
    pub concurrency: usize,
    /// The workers' `claim_idle` (also the lease time).
    pub claim_idle: Duration,
    /// How long the final drain may take before the run counts as stalled.
    pub drain_timeout: Duration,
    /// Seeds the driver's choices (which events are duplicated, whom to kill, when).
    pub seed: u64,
    /// Where worker logs go.
    pub log_dir: PathBuf,
    /// Whether the workers run the chain of five groups ([`worker::CHAIN_GROUPS`]), each
    /// emitting the next event with `HandlerContext::emit`.
    pub chain: bool,
    /// Whether events are scheduled (`Publisher::publish_at`, due within
    /// [`Plan::schedule_within`]) rather than published: the workers' promoters append them
    /// while they are killed, and each must be appended exactly once.
    pub schedule: bool,
    /// How far ahead a scheduled event is due: a random time up to this.
    pub schedule_within: Duration,
}

impl Plan {
    /// The short run CI does: a few thousand events, a few kills, one server restart.
    pub fn short(log_dir: PathBuf) -> Self {
        Plan {
            events: 3000,
            batch: 100,
            duplicate_percent: 10,
            publish_pause: Duration::from_millis(150),
            workers: 3,
            kill_every: (Duration::from_millis(600), Duration::from_millis(1500)),
            min_kills: 5,
            cut_every: (Duration::from_millis(1000), Duration::from_millis(2500)),
            server_restarts: 1,
            handler_sleep_ms: (2, 30),
            concurrency: 32,
            claim_idle: Duration::from_secs(3),
            drain_timeout: Duration::from_secs(60),
            seed: rand::random(),
            log_dir,
            chain: false,
            schedule: false,
            schedule_within: Duration::from_secs(3),
        }
    }
}

/// What a run found.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// Follow-up entries in the stream (chain mode).
    pub follow_ups: usize,
    /// Distinct keys published.
    pub published: usize,
    /// Stream entries written (duplicates and batches re-sent after an error included).
    pub entries: usize,
    /// Effects applied (the sum of the `applied` counters).
    pub processed: u64,
    /// Entries acknowledged without their effect because their key was already processed.
    pub duplicates_skipped: u64,
    /// Keys whose effect was applied more than once.
    pub applied_twice: usize,
    /// Published keys whose effect was never applied.
    pub lost: usize,
    /// Workers killed with SIGKILL.
    pub kills: usize,
    /// Worker processes started again (after a kill or an unexpected exit).
    pub restarts: usize,
    /// Times the server went down and came back.
    pub server_restarts: usize,
    /// `CLIENT KILL` rounds, and connections they cut.
    pub cuts: usize,
    /// Connections cut.
    pub connections_cut: usize,
    /// Handler invocations in the log.
    pub invocations: usize,
    /// Invocations beyond one per key, explained by a kill or a redelivery.
    pub extra_invocations: usize,
    /// Entries in the dead-letter stream.
    pub dead_lettered: usize,
    /// Batches published again after a publish error.
    pub republished_batches: usize,
    /// Worker processes that exited when nobody asked them to (the driver starts them again,
    /// as a supervisor would); listed in [`Summary::notes`].
    pub unexpected_exits: usize,
    /// Dead letters by reason (up to its first `:`), and whether their key was applied anyway
    /// (by another copy of the event).
    pub dead_reasons: BTreeMap<String, (usize, usize)>,
    /// Things worth knowing that do not break the promise (workers that gave up and were
    /// started again).
    pub notes: Vec<String>,
    /// How long the run took.
    pub elapsed: Duration,
    /// Everything that went wrong; empty when the run proves what it should.
    pub problems: Vec<String>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "published={} processed={} duplicates_skipped={} applied_twice={} lost={} kills={} \
             restarts={} server_restarts={} connection_cuts={} entries={} invocations={} \
             extra_invocations={} dead_lettered={} unexpected_exits={} elapsed={:.1}s",
            self.published,
            self.processed,
            self.duplicates_skipped,
            self.applied_twice,
            self.lost,
            self.kills,
            self.restarts,
            self.server_restarts,
            self.connections_cut,
            self.entries,
            self.invocations,
            self.extra_invocations,
            self.dead_lettered,
            self.unexpected_exits,
            self.elapsed.as_secs_f64(),
        )
    }
}

/// Settings every worker of a run gets.
#[derive(Debug, Clone)]
pub struct WorkerEnv {
    /// The server.
    pub url: String,
    /// Handler sleep range, in ms.
    pub sleep_ms: (u64, u64),
    /// Handlers at once.
    pub concurrency: usize,
    /// `claim_idle`.
    pub claim_idle: Duration,
    /// Chain mode (`CHAOS_CHAIN=1`).
    pub chain: bool,
}

struct Worker {
    name: String,
    generation: u32,
    child: Option<Child>,
    log: PathBuf,
}

impl Worker {
    fn incarnation(&self) -> String {
        format!("{}#{}", self.name, self.generation)
    }
}

/// The worker processes of a run, and what happened to them.
pub struct Fleet {
    spawner: Spawner,
    env: WorkerEnv,
    log_dir: PathBuf,
    workers: Vec<Worker>,
    /// SIGKILLs sent.
    pub kills: usize,
    /// Processes started again.
    pub restarts: usize,
    /// Incarnations that died without a graceful stop (killed, or exited by themselves).
    pub died: HashSet<String>,
    /// Exits nobody asked for, with the end of the worker's log.
    pub unexpected: Vec<String>,
}

impl Fleet {
    /// A fleet of `names`, not started.
    pub fn new(spawner: Spawner, env: WorkerEnv, log_dir: &Path, names: &[&str]) -> Self {
        Fleet {
            spawner,
            env,
            log_dir: log_dir.to_owned(),
            workers: names
                .iter()
                .map(|n| Worker {
                    name: (*n).to_owned(),
                    generation: 0,
                    child: None,
                    log: PathBuf::new(),
                })
                .collect(),
            kills: 0,
            restarts: 0,
            died: HashSet::new(),
            unexpected: Vec::new(),
        }
    }

    /// How many workers the fleet has.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Starts worker `i` (a new incarnation of its consumer name).
    pub fn start(&mut self, i: usize) {
        let w = &mut self.workers[i];
        w.generation += 1;
        let incarnation = w.incarnation();
        w.log = self
            .log_dir
            .join(format!("{}.{}.log", w.name, w.generation));
        let out = File::create(&w.log).expect("create worker log");
        let err = out.try_clone().expect("clone worker log");
        let mut cmd = (self.spawner)();
        cmd.env("REDIS_URL", &self.env.url)
            .env("ASDLC_CONSUMER", &w.name)
            .env("CHAOS_INCARNATION", &incarnation)
            .env("CHAOS_MIN_SLEEP_MS", self.env.sleep_ms.0.to_string())
            .env("CHAOS_MAX_SLEEP_MS", self.env.sleep_ms.1.to_string())
            .env("CHAOS_CONCURRENCY", self.env.concurrency.to_string())
            .env(
                "CHAOS_CLAIM_IDLE_MS",
                self.env.claim_idle.as_millis().to_string(),
            )
            .env("CHAOS_CHAIN", if self.env.chain { "1" } else { "0" })
            .env_remove("ASDLC_STREAM")
            .env_remove("ASDLC_TENANCY")
            .env_remove("ASDLC_TENANTS")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        w.child = Some(cmd.spawn().expect("start a worker process"));
    }

    /// SIGKILLs worker `i` and starts it again at once under the same name.
    pub fn kill_and_restart(&mut self, i: usize) {
        let w = &mut self.workers[i];
        if let Some(mut child) = w.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            self.died.insert(w.incarnation());
            self.kills += 1;
        }
        self.restarts += 1;
        self.start(i);
    }

    /// Starts again every worker that exited by itself, noting why.
    pub fn restart_exited(&mut self) {
        for i in 0..self.workers.len() {
            let w = &mut self.workers[i];
            let Some(child) = w.child.as_mut() else {
                continue;
            };
            if let Ok(Some(status)) = child.try_wait() {
                w.child = None;
                self.died.insert(w.incarnation());
                self.unexpected.push(format!(
                    "{} exited by itself ({status}); its log ends with:\n{}",
                    w.incarnation(),
                    tail(&w.log, 15)
                ));
                self.restarts += 1;
                self.start(i);
            }
        }
    }

    /// Waits until every running worker says it is consuming (a worker stopped before that
    /// would not show how a stop under load goes). Returns the problems.
    pub fn wait_ready(&mut self, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut problems = Vec::new();
        for w in &self.workers {
            if w.child.is_none() {
                continue;
            }
            loop {
                let log = std::fs::read_to_string(&w.log).unwrap_or_default();
                if log.lines().any(|l| l == READY_LINE) {
                    break;
                }
                if Instant::now() > deadline {
                    problems.push(format!(
                        "{} not consuming after {timeout:?}; its log ends with:\n{}",
                        w.incarnation(),
                        tail(&w.log, 15)
                    ));
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        problems
    }

    /// Sends SIGTERM to every worker and waits up to `timeout` for each to exit; each must
    /// exit successfully after printing its report. Returns the problems.
    pub fn terminate_all(&mut self, timeout: Duration) -> Vec<String> {
        let mut problems = Vec::new();
        for w in &self.workers {
            if let Some(child) = &w.child {
                sigterm(child.id());
            }
        }
        let deadline = Instant::now() + timeout;
        for w in &mut self.workers {
            let Some(mut child) = w.child.take() else {
                continue;
            };
            let status = loop {
                match child.try_wait() {
                    Ok(Some(status)) => break Some(status),
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => break None,
                }
            };
            match status {
                Some(status) if status.success() => {
                    let log = std::fs::read_to_string(&w.log).unwrap_or_default();
                    if !log.lines().any(|l| l.starts_with(REPORT_PREFIX)) {
                        problems.push(format!(
                            "{} exited without its report after SIGTERM",
                            w.incarnation()
                        ));
                    }
                }
                Some(status) => problems.push(format!(
                    "{} exited with {status} after SIGTERM; its log ends with:\n{}",
                    w.incarnation(),
                    tail(&w.log, 15)
                )),
                None => {
                    let _ = child.kill();
                    let _ = child.wait();
                    self.died.insert(w.incarnation());
                    problems.push(format!(
                        "{} did not stop within {timeout:?} of SIGTERM (killed); its log ends with:\n{}",
                        w.incarnation(),
                        tail(&w.log, 15)
                    ));
                }
            }
        }
        problems
    }

    /// SIGKILLs whatever still runs (after a failure).
    pub fn kill_all(&mut self) {
        for w in &mut self.workers {
            if let Some(mut child) = w.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Sends SIGTERM through `kill(1)` (the crate forbids the unsafe call).
pub fn sigterm(pid: u32) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
}

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn pick(rng: &mut StdRng, range: (Duration, Duration)) -> Duration {
    if range.1 <= range.0 {
        return range.0;
    }
    rng.random_range(range.0..range.1)
}

/// Cuts every normal client connection but the one sending the command; returns how many.
fn cut_connections(url: &str) -> Option<usize> {
    let client = redis::Client::open(url).ok()?;
    let mut conn = client
        .get_connection_with_timeout(Duration::from_secs(1))
        .ok()?;
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query::<usize>(&mut conn)
        .ok()
}

/// The order events are published in: every index once, and a chosen share of them again a
/// little later (within the next two batches).
fn publish_order(plan: &Plan, rng: &mut StdRng) -> Vec<usize> {
    let n = plan.events;
    let mut indices: Vec<usize> = (0..n).collect();
    indices.shuffle(rng);
    let dups = n * plan.duplicate_percent / 100;
    let mut later: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for &i in &indices[..dups] {
        let at = i + rng.random_range(0..plan.batch.max(1) * 2);
        later.entry(at.min(n)).or_default().push(i);
    }
    let mut order = Vec::with_capacity(n + dups);
    for i in 0..=n {
        if i < n {
            order.push(i);
        }
        if let Some(again) = later.remove(&i) {
            order.extend(again);
        }
    }
    order
}

/// The idempotency key of event `i`.
pub fn key_of(i: usize) -> String {
    format!("k{i:07}")
}

fn event_of(i: usize) -> AsdlcEvent {
    AsdlcEvent::builder(EventType::TaskCreated, format!("chaos-session-{}", i % 97))
        .task_id(format!("task-{i}"))
        .idempotency_key(key_of(i))
        .build()
        .expect("valid event")
}

struct ChaosState {
    fleet: Fleet,
    server: TestServer,
    server_restarts: usize,
    cuts: usize,
    connections_cut: usize,
}

/// Runs the whole suite once; `spawner` makes a worker process.
pub async fn run(plan: Plan, spawner: Spawner) -> Summary {
    let started = Instant::now();
    std::fs::create_dir_all(&plan.log_dir).expect("create the log directory");
    let server = TestServer::builder().aof(true).start();
    let url = server.url();
    let config = Config {
        redis_url: server.redis_url(),
        ..Config::default()
    };
    let mut rng = StdRng::seed_from_u64(plan.seed);
    let order = publish_order(&plan, &mut rng);
    let names: Vec<String> = (0..plan.workers).map(|i| format!("w{i}")).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let env = WorkerEnv {
        url: url.clone(),
        sleep_ms: plan.handler_sleep_ms,
        concurrency: plan.concurrency,
        claim_idle: plan.claim_idle,
        chain: plan.chain,
    };
    let mut fleet = Fleet::new(spawner.clone(), env.clone(), &plan.log_dir, &name_refs);
    for i in 0..fleet.len() {
        fleet.start(i);
    }
    let state = Arc::new(Mutex::new(ChaosState {
        fleet,
        server,
        server_restarts: 0,
        cuts: 0,
        connections_cut: 0,
    }));
    let published = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let chaos = {
        let (state, published, stop, plan, url) = (
            state.clone(),
            published.clone(),
            stop.clone(),
            plan.clone(),
            url.clone(),
        );
        let mut rng = StdRng::seed_from_u64(plan.seed ^ 0x5eed);
        std::thread::spawn(move || chaos_loop(&plan, &url, &state, &published, &stop, &mut rng))
    };

    // Publish, riding out cut connections and server restarts: a batch that fails is sent
    // again whole (entries it wrote already become duplicates, handled once like any other).
    let publisher = loop {
        match Publisher::connect(config.clone()).await {
            Ok(p) => break p,
            Err(e) => {
                tracing::warn!(error = %e, "publisher cannot connect yet");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let mut republished = 0;
    // Keys of batches sent again: scheduled twice, so possibly appended twice (a duplicate the
    // consumers skip), which the once-check of schedule mode leaves out.
    let mut resent: HashSet<String> = HashSet::new();
    for chunk in order.chunks(plan.batch.max(1)) {
        let events: Vec<AsdlcEvent> = chunk.iter().map(|&i| event_of(i)).collect();
        loop {
            let sent = if plan.schedule {
                schedule_all(&publisher, &events, plan.schedule_within, &mut rng).await
            } else {
                publisher.publish_batch(&events).await.map(drop)
            };
            match sent {
                Ok(_) => break,
                Err(e) => {
                    republished += 1;
                    resent.extend(events.iter().filter_map(|e| e.idempotency_key.clone()));
                    let mut error = e.to_string();
                    error.truncate(200);
                    tracing::warn!(%error, "publishing a batch failed; sending it again");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        published.fetch_add(chunk.len(), Ordering::SeqCst);
        tokio::time::sleep(plan.publish_pause).await;
    }
    // Keep the trouble going until enough workers were killed.
    let deadline = Instant::now() + Duration::from_secs(120);
    while state.lock().unwrap().fleet.kills < plan.min_kills && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let chaos_panic = chaos.join().err();

    let mut summary = Summary {
        published: plan.events,
        republished_batches: republished,
        ..Summary::default()
    };
    if let Some(p) = chaos_panic {
        summary
            .problems
            .push(format!("the chaos thread panicked: {p:?}"));
    }
    let mut conn = connect(&config).await;

    // Graceful stop of every worker: nothing may be left half-done.
    let problems = tokio::task::block_in_place(|| {
        let mut st = state.lock().unwrap();
        let mut problems = st.fleet.wait_ready(Duration::from_secs(60));
        problems.extend(st.fleet.terminate_all(Duration::from_secs(60)));
        problems
    });
    summary.problems.extend(problems);
    let snapshot = Snapshot::read(&mut conn).await;
    summary.problems.extend(
        snapshot
            .half_done()
            .into_iter()
            .map(|p| format!("after SIGTERM: {p}")),
    );

    // A last worker claims what the others left and drains the stream.
    tokio::time::sleep(plan.claim_idle + Duration::from_millis(300)).await;
    let mut drain = Fleet::new(spawner, env, &plan.log_dir, &["drain"]);
    drain.start(0);
    let ready = tokio::task::block_in_place(|| drain.wait_ready(Duration::from_secs(60)));
    summary.problems.extend(ready);
    let groups: &[&str] = if plan.chain {
        &worker::CHAIN_GROUPS
    } else {
        &[GROUP]
    };
    let drained = wait_drained(&mut conn, groups, plan.drain_timeout).await;
    if let Err(why) = drained {
        summary.problems.push(format!(
            "the stream was not drained within {:?}: {why}",
            plan.drain_timeout
        ));
    }
    let problems = tokio::task::block_in_place(|| drain.terminate_all(Duration::from_secs(60)));
    summary.problems.extend(problems);

    // Leases of deliveries that were killed lapse after claim_idle; none may outlive that.
    let lease_pattern = format!("{}:lease:*", StreamKeys::new(STREAM).namespace());
    let lease_deadline = Instant::now() + plan.claim_idle * 2 + Duration::from_secs(1);
    let leases = loop {
        let leases = scan(&mut conn, &lease_pattern).await;
        if leases.is_empty() || Instant::now() > lease_deadline {
            break leases;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if !leases.is_empty() {
        summary.problems.push(format!(
            "{} leases left after the drain, e.g. {:?}",
            leases.len(),
            &leases[..leases.len().min(5)]
        ));
    }

    let snapshot = Snapshot::read(&mut conn).await;
    summary.problems.extend(
        snapshot
            .half_done()
            .into_iter()
            .map(|p| format!("at the end: {p}")),
    );
    if plan.schedule {
        summary
            .problems
            .extend(snapshot.appended_more_than_once(&resent));
        let left = asdlc::schedule::count(&mut conn, STREAM)
            .await
            .unwrap_or(u64::MAX);
        if left != 0 {
            summary
                .problems
                .push(format!("{left} scheduled events never appended"));
        }
    }
    let st = state.lock().unwrap();
    let died: HashSet<String> = st.fleet.died.iter().chain(&drain.died).cloned().collect();
    snapshot.account(&plan, &died, &mut summary);
    if plan.chain {
        summary.follow_ups = snapshot.follow_ups.values().sum();
        summary.problems.extend(snapshot.chain_problems(&plan));
    }
    summary.kills = st.fleet.kills;
    summary.restarts = st.fleet.restarts;
    summary.server_restarts = st.server_restarts;
    summary.cuts = st.cuts;
    summary.connections_cut = st.connections_cut;
    summary.unexpected_exits = st.fleet.unexpected.len() + drain.unexpected.len();
    for u in st.fleet.unexpected.iter().chain(&drain.unexpected) {
        summary.notes.push(format!("a worker gave up: {u}"));
    }
    summary.elapsed = started.elapsed();
    summary
}

fn chaos_loop(
    plan: &Plan,
    url: &str,
    state: &Mutex<ChaosState>,
    published: &AtomicUsize,
    stop: &AtomicBool,
    rng: &mut StdRng,
) {
    let mut next_kill = Instant::now() + pick(rng, plan.kill_every);
    let mut next_cut = Instant::now() + pick(rng, plan.cut_every);
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(20));
        let mut st = state.lock().unwrap();
        st.fleet.restart_exited();
        let now = Instant::now();
        if now >= next_kill {
            let i = rng.random_range(0..st.fleet.len());
            tracing::info!(worker = i, "SIGKILL");
            st.fleet.kill_and_restart(i);
            next_kill = now + pick(rng, plan.kill_every);
        }
        if now >= next_cut {
            if let Some(n) = cut_connections(url) {
                tracing::info!(connections = n, "cut client connections");
                st.cuts += 1;
                st.connections_cut += n;
            }
            next_cut = now + pick(rng, plan.cut_every);
        }
        let done = st.server_restarts;
        if done < plan.server_restarts {
            let at = plan.events * (done + 1) / (plan.server_restarts + 1);
            if published.load(Ordering::SeqCst) >= at {
                if done.is_multiple_of(2) {
                    tracing::info!("server crash (SIGKILL) and restart");
                    st.server.kill();
                    st.server.restart();
                } else {
                    tracing::info!("server graceful restart");
                    st.server.restart();
                }
                st.server_restarts += 1;
            }
        }
    }
}

/// Schedules each of `events` for a random time within `within` (a batch sent again after an
/// error keeps the first schedule of each key).
async fn schedule_all(
    publisher: &Publisher,
    events: &[AsdlcEvent],
    within: Duration,
    rng: &mut StdRng,
) -> Result<(), asdlc::PublishError> {
    for e in events {
        let ms = rng.random_range(0..=within.as_millis() as i64);
        let due = chrono::Utc::now() + chrono::Duration::milliseconds(ms);
        publisher.publish_at(e, due).await?;
    }
    Ok(())
}

/// Connects, retrying while the server comes back.
pub async fn connect(config: &Config) -> RedisConnection {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match RedisConnection::connect(&config.redis_url).await {
            Ok(c) => return c,
            Err(e) if Instant::now() < deadline => {
                tracing::warn!(error = %e, "cannot connect yet");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("cannot connect to the server: {e}"),
        }
    }
}

async fn scan(conn: &mut RedisConnection, pattern: &str) -> Vec<String> {
    let mut cursor: u64 = 0;
    let mut out = Vec::new();
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .expect("SCAN");
        out.extend(keys);
        if next == 0 {
            return out;
        }
        cursor = next;
    }
}

/// Waits until the group has read every entry and has nothing pending.
pub async fn wait_drained(
    conn: &mut RedisConnection,
    groups: &[&str],
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        match asdlc::get_stream_info(conn, STREAM).await {
            Ok(info) => {
                let mut drained = 0;
                for group in groups {
                    let Some(g) = info.group(group) else {
                        last = format!("group {group} does not exist");
                        break;
                    };
                    // Read to the end: the group's last delivered id is the stream's last id.
                    // (Not the server's `lag`: its entries-read counter can drift across
                    // restarts and report a lag for a group that has read everything.)
                    let at_end = info
                        .last_id
                        .as_deref()
                        .is_none_or(|last| id_parts(&g.last_delivered_id) >= id_parts(last));
                    if g.pending == 0 && at_end {
                        drained += 1;
                        continue;
                    }
                    last = format!(
                        "group {group}: pending {} (by consumer: {:?}), last delivered {} of \
                         {:?}, lag {:?}, oldest pending {} ms",
                        g.pending,
                        g.consumers
                            .iter()
                            .map(|c| (c.name.as_str(), c.pending))
                            .collect::<Vec<_>>(),
                        g.last_delivered_id,
                        info.last_id,
                        g.lag,
                        g.oldest_pending_ms
                    );
                    break;
                }
                if drained == groups.len() {
                    return Ok(());
                }
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last)
}

/// One invocation from the log.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The idempotency key.
    pub key: String,
    /// Which process (consumer name and start number).
    pub incarnation: String,
    /// The delivery attempt.
    pub attempt: u32,
    /// The stream entry.
    pub entry: String,
}

/// The state of the stream, the group and the effect at one quiet moment.
pub struct Snapshot {
    /// Entry id -> idempotency key, for every `task_created` entry (the events the driver
    /// published).
    pub entries: Vec<(String, String)>,
    /// (task id, event type) -> entries, for the follow-ups of chain mode.
    pub follow_ups: HashMap<(String, String), usize>,
    /// Pending entry ids.
    pub pending: HashSet<String>,
    /// The group's last delivered id.
    pub last_delivered: String,
    /// Key -> times applied.
    pub applied: HashMap<String, i64>,
    /// Source entry ids of dead letters.
    pub dead: HashMap<String, String>,
    /// The invocation log.
    pub invocations: Vec<Invocation>,
}

fn id_parts(id: &str) -> (u64, u64) {
    let (a, b) = id.split_once('-').unwrap_or((id, "0"));
    (a.parse().unwrap_or(0), b.parse().unwrap_or(0))
}

impl Snapshot {
    /// Reads everything from the server.
    pub async fn read(conn: &mut RedisConnection) -> Snapshot {
        let keys = StreamKeys::new(STREAM);
        let mut entries = Vec::new();
        let mut follow_ups = HashMap::new();
        let mut start = "-".to_owned();
        loop {
            let page: StreamRangeReply = redis::cmd("XRANGE")
                .arg(STREAM)
                .arg(&start)
                .arg("+")
                .arg("COUNT")
                .arg(5000)
                .query_async(conn)
                .await
                .expect("XRANGE");
            let Some(last) = page.ids.last().map(|e| e.id.clone()) else {
                break;
            };
            for e in page.ids {
                let kind: String = e.get("event_type").unwrap_or_default();
                if kind == EventType::TaskCreated.as_str() {
                    let key: String = e.get("idempotency_key").unwrap_or_default();
                    entries.push((e.id, key));
                } else {
                    let task: String = e.get("task_id").unwrap_or_default();
                    *follow_ups.entry((task, kind)).or_default() += 1;
                }
            }
            start = format!("({last}");
        }
        let mut pending = HashSet::new();
        let mut start = "-".to_owned();
        loop {
            let page: Result<StreamPendingCountReply, _> = redis::cmd("XPENDING")
                .arg(STREAM)
                .arg(GROUP)
                .arg(&start)
                .arg("+")
                .arg(5000)
                .query_async(conn)
                .await;
            let Ok(page) = page else { break };
            let Some(last) = page.ids.last().map(|p| p.id.clone()) else {
                break;
            };
            pending.extend(page.ids.into_iter().map(|p| p.id));
            start = format!("({last}");
        }
        let last_delivered = asdlc::get_stream_info(conn, STREAM)
            .await
            .ok()
            .and_then(|i| i.group(GROUP).map(|g| g.last_delivered_id.clone()))
            .unwrap_or_else(|| "0-0".to_owned());
        let applied: HashMap<String, i64> = redis::cmd("HGETALL")
            .arg(keys.scoped(APPLIED))
            .query_async(conn)
            .await
            .expect("HGETALL applied");
        let n_dead = asdlc::deadletter::count(conn, STREAM).await.unwrap_or(0);
        let dead = asdlc::deadletter::list(conn, STREAM, "-", n_dead as usize)
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|d| (d.source_id, d.reason))
            .collect();
        let raw: Vec<String> = redis::cmd("LRANGE")
            .arg(keys.scoped(INVOCATIONS))
            .arg(0)
            .arg(-1)
            .query_async(conn)
            .await
            .expect("LRANGE invocations");
        let invocations = raw
            .iter()
            .filter_map(|r| {
                let mut parts = r.split(' ');
                Some(Invocation {
                    key: parts.next()?.to_owned(),
                    incarnation: parts.next()?.to_owned(),
                    attempt: parts.next()?.parse().ok()?,
                    entry: parts.next()?.to_owned(),
                })
            })
            .collect();
        Snapshot {
            entries,
            follow_ups,
            pending,
            last_delivered,
            applied,
            dead,
            invocations,
        }
    }

    /// Keys with more than one entry, but for those in `resent` (scheduled twice): in schedule
    /// mode (no duplicates published) a key the promoters appended twice.
    pub fn appended_more_than_once(&self, resent: &HashSet<String>) -> Vec<String> {
        let mut n: HashMap<&str, usize> = HashMap::new();
        for (_, key) in self.entries.iter().filter(|(_, k)| !resent.contains(k)) {
            *n.entry(key).or_default() += 1;
        }
        let mut twice: Vec<String> = n
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|(k, n)| format!("key {k} appended {n} times"))
            .collect();
        twice.sort();
        twice.truncate(20);
        twice
    }

    /// What is wrong with the chain's follow-ups: each published task must end with exactly
    /// one event of each type in [`worker::FOLLOW_UPS`], and there must be no other.
    pub fn chain_problems(&self, plan: &Plan) -> Vec<String> {
        let mut problems = Vec::new();
        for i in 0..plan.events {
            for kind in worker::FOLLOW_UPS {
                let key = (format!("task-{i}"), kind.as_str().to_owned());
                let n = self.follow_ups.get(&key).copied().unwrap_or(0);
                if n != 1 {
                    problems.push(format!("task-{i}: {n} {kind} events, not 1"));
                }
            }
        }
        let expected = plan.events * worker::FOLLOW_UPS.len();
        let total: usize = self.follow_ups.values().sum();
        if total != expected {
            problems.push(format!("{total} follow-up entries, not {expected}"));
        }
        problems.truncate(20);
        problems
    }

    /// Entries left half-done: a key applied while every entry of it is still pending (the
    /// effect committed without the acknowledgement), or an entry acknowledged (delivered,
    /// not pending, not dead-lettered) whose key was never applied.
    pub fn half_done(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let delivered = id_parts(&self.last_delivered);
        let mut by_key: HashMap<&str, Vec<&str>> = HashMap::new();
        for (id, key) in &self.entries {
            by_key.entry(key).or_default().push(id);
        }
        for (key, ids) in &by_key {
            let applied = self.applied.get(*key).copied().unwrap_or(0) > 0;
            let acked: Vec<&&str> = ids
                .iter()
                .filter(|id| {
                    id_parts(id) <= delivered
                        && !self.pending.contains(**id)
                        && !self.dead.contains_key(**id)
                })
                .collect();
            if applied && ids.iter().all(|id| self.pending.contains(*id)) {
                problems.push(format!(
                    "key {key} applied but every entry of it ({ids:?}) still pending"
                ));
            }
            if !applied && !acked.is_empty() {
                problems.push(format!(
                    "key {key}: entries {acked:?} acknowledged but the effect never applied"
                ));
            }
        }
        problems.sort();
        problems.truncate(20);
        problems
    }

    /// Fills in the counts of `summary` and its exactly-once and accounting problems.
    fn account(&self, plan: &Plan, died: &HashSet<String>, summary: &mut Summary) {
        summary.entries = self.entries.len();
        summary.processed = self.applied.values().map(|v| *v as u64).sum();
        summary.dead_lettered = self.dead.len();
        let key_of_entry: HashMap<&str, &str> = self
            .entries
            .iter()
            .map(|(id, key)| (id.as_str(), key.as_str()))
            .collect();
        for (id, reason) in &self.dead {
            let kind = reason.split(':').next().unwrap_or_default().to_owned();
            let applied = key_of_entry
                .get(id.as_str())
                .is_some_and(|k| self.applied.contains_key(*k));
            let slot = summary.dead_reasons.entry(kind).or_default();
            slot.0 += 1;
            slot.1 += usize::from(applied);
        }
        summary.duplicates_skipped = (self.entries.len() as u64)
            .saturating_sub(summary.processed)
            .saturating_sub(self.dead.len() as u64);
        let published: HashSet<String> = (0..plan.events).map(key_of).collect();
        summary.applied_twice = self.applied.values().filter(|v| **v > 1).count();
        summary.lost = published
            .iter()
            .filter(|k| self.applied.get(*k).copied().unwrap_or(0) == 0)
            .count();
        let twice: Vec<_> = self
            .applied
            .iter()
            .filter(|(_, v)| **v > 1)
            .take(10)
            .collect();
        if !twice.is_empty() {
            summary
                .problems
                .push(format!("effects applied more than once: {twice:?}"));
        }
        let lost: Vec<&String> = published
            .iter()
            .filter(|k| !self.applied.contains_key(*k))
            .take(10)
            .collect();
        if !lost.is_empty() {
            let why: Vec<String> = lost
                .iter()
                .map(|k| {
                    let ids: Vec<&String> = self
                        .entries
                        .iter()
                        .filter(|(_, key)| key == *k)
                        .map(|(id, _)| id)
                        .collect();
                    let dead: Vec<&String> =
                        ids.iter().filter_map(|id| self.dead.get(*id)).collect();
                    format!("{k} (entries {ids:?}, dead letters {dead:?})")
                })
                .collect();
            summary
                .problems
                .push(format!("{} keys never applied: {why:?}", summary.lost));
        }
        let strangers: Vec<&String> = self
            .applied
            .keys()
            .filter(|k| !published.contains(*k))
            .take(10)
            .collect();
        if !strangers.is_empty() {
            summary.problems.push(format!(
                "keys applied that were never published: {strangers:?}"
            ));
        }
        if !self.pending.is_empty() {
            summary.problems.push(format!(
                "{} entries still pending at the end",
                self.pending.len()
            ));
        }
        if let Some((last, _)) = self.entries.last()
            && id_parts(last) > id_parts(&self.last_delivered)
        {
            summary.problems.push(format!(
                "entries after {} were never read",
                self.last_delivered
            ));
        }

        // Every invocation accounted for: per key one invocation committed the effect; any
        // other came from a process that died (killed mid-handler or before its commit) or
        // was followed by a later delivery of the key (a redelivery after a failure).
        summary.invocations = self.invocations.len();
        summary.extra_invocations = self
            .invocations
            .len()
            .saturating_sub(summary.processed as usize);
        let mut by_key: HashMap<&str, Vec<&Invocation>> = HashMap::new();
        for inv in &self.invocations {
            by_key.entry(&inv.key).or_default().push(inv);
        }
        let mut unexplained = Vec::new();
        for key in self.applied.keys() {
            let Some(invs) = by_key.get(key.as_str()) else {
                summary
                    .problems
                    .push(format!("key {key} applied without any logged invocation"));
                continue;
            };
            let max_attempt = invs.iter().map(|i| i.attempt).max().unwrap_or(0);
            let plain = invs
                .iter()
                .filter(|i| !died.contains(&i.incarnation) && i.attempt == max_attempt)
                .count();
            if plain > 1 {
                unexplained.push(format!("{key}: {invs:?}"));
            }
        }
        if !unexplained.is_empty() {
            unexplained.sort();
            summary.problems.push(format!(
                "{} keys were invoked more than once with no kill or redelivery to explain it, e.g. {:?}",
                unexplained.len(),
                &unexplained[..unexplained.len().min(5)]
            ));
        }
        let invoked_not_applied: Vec<&&str> = by_key
            .keys()
            .filter(|k| !self.applied.contains_key(**k))
            .take(10)
            .collect();
        if !invoked_not_applied.is_empty() {
            summary.problems.push(format!(
                "keys invoked but never applied: {invoked_not_applied:?}"
            ));
        }
    }
}
