//! The commit step applies each record of a call at most once. Its check of the staged effects
//! foresees what each effect will find (the effects before it in the call, a value Redis does
//! not read as an integer, an increment past 64 bits), so a refused effect refuses its own
//! record only; and a call that fails midway all the same is committed again without applying
//! a second time the records it did apply.
//!
//! To put several events into one commit call, [`in_one_call`] holds the server's writes while
//! a first event commits alone, so the others finish and queue up behind it; a `MONITOR`
//! connection shows the calls the server ran.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{Barrier, watch};

use crate::common::*;
use asdlc::{
    AsdlcEvent, BoxFuture, Config, ConsumerStats, Effect, EventConsumer, EventHandler, EventType,
    HandlerContext, HandlerResult, Publisher, StreamKeys, deadletter,
};

const WAIT: Duration = Duration::from_secs(20);
const STREAM: &str = "asdlc:events";
const GROUP: &str = "g";
/// The session of the event that commits alone while the others queue up behind it.
const FIRST: &str = "first";

/// A key of the stream's effects namespace.
fn fx(name: &str) -> String {
    StreamKeys::new(STREAM).scoped(name)
}

type Stage = dyn Fn(&str) -> Vec<Effect> + Send + Sync;

/// A handler that stages `stage(session)` for the event of each session. On their first
/// attempt the events of `order` wait for each other and for the test, then, once the test
/// holds the server's writes, return in that order: the first at once, the others while the
/// first one's commit is held.
#[derive(Clone)]
struct Staging {
    stage: Arc<Stage>,
    order: Arc<Vec<String>>,
    gate: Arc<Barrier>,
    held: watch::Receiver<bool>,
}

impl EventHandler for Staging {
    fn name(&self) -> &str {
        "staging"
    }
    fn can_handle(&self, _: EventType) -> bool {
        true
    }
    fn handle<'a>(
        &'a self,
        event: &'a AsdlcEvent,
        ctx: &'a HandlerContext,
    ) -> BoxFuture<'a, HandlerResult> {
        Box::pin(async move {
            if ctx.attempt() == 1 {
                let at = self
                    .order
                    .iter()
                    .position(|s| *s == event.session_id)
                    .expect("an event of the test");
                self.gate.wait().await;
                let mut held = self.held.clone();
                held.wait_for(|h| *h).await.expect("the test holds writes");
                tokio::time::sleep(return_after(at)).await;
            }
            for e in (self.stage)(&event.session_id) {
                ctx.stage(e).expect("effect in slot");
            }
            HandlerResult::ok()
        })
    }
}

/// When the handler of the `at`-th event returns, after writes are held.
fn return_after(at: usize) -> Duration {
    if at == 0 {
        Duration::ZERO
    } else {
        Duration::from_millis(100 + 30 * at as u64)
    }
}

/// A consumer at work on events of which all but the first commit in one call.
struct Held {
    consumer: EventConsumer,
    run: tokio::task::JoinHandle<Result<ConsumerStats, asdlc::ConsumeError>>,
    /// The entry id of each session's event.
    ids: HashMap<String, String>,
    /// The commit calls the server ran, as `MONITOR` shows them.
    commits: Arc<Mutex<Vec<String>>>,
}

impl Held {
    /// How many commit calls carried the events of every one of `sessions`.
    fn calls_with(&self, sessions: &[&str]) -> usize {
        let ids: Vec<String> = sessions
            .iter()
            .map(|s| format!("\"{}\"", self.ids[*s]))
            .collect();
        self.commits
            .lock()
            .unwrap()
            .iter()
            .filter(|line| ids.iter().all(|id| line.contains(id)))
            .count()
    }

    /// Asserts that one call committed the events of `sessions` together.
    fn assert_together(&self, sessions: &[&str]) {
        assert!(
            self.calls_with(sessions) >= 1,
            "one commit call carried {sessions:?}: {:#?}",
            self.commits.lock().unwrap()
        );
    }

    async fn stop(self) -> ConsumerStats {
        self.consumer.stop();
        self.run.await.unwrap().unwrap()
    }
}

/// Publishes an event for [`FIRST`] and one for each of `sessions`, in order, and starts a
/// consumer of [`GROUP`] (on `config`, `max_deliveries` attempts an event) whose handler stages
/// `stage(session)`. The first event commits alone while the server holds writes, and the events
/// of `sessions` queue up behind it meanwhile, so they commit in one call, in order.
async fn in_one_call(
    s: &TestServer,
    config: Config,
    sessions: &[&str],
    max_deliveries: u32,
    stage: impl Fn(&str) -> Vec<Effect> + Send + Sync + 'static,
) -> Held {
    let commits: Arc<Mutex<Vec<String>>> = Arc::default();
    let monitor = s.client().get_async_monitor().await.unwrap();
    let seen = commits.clone();
    tokio::spawn(async move {
        let mut lines = monitor.into_on_message::<String>();
        while let Some(line) = lines.next().await {
            if line.contains("_commit\"") {
                seen.lock().unwrap().push(line);
            }
        }
    });
    let order: Vec<String> = std::iter::once(FIRST)
        .chain(sessions.iter().copied())
        .map(str::to_owned)
        .collect();
    let publisher = Publisher::connect(config.clone()).await.unwrap();
    let mut ids = HashMap::new();
    for session in &order {
        let published = publisher
            .publish(&event(EventType::TaskCreated, session))
            .await
            .unwrap();
        ids.insert(session.clone(), published.event_id);
    }
    let gate = Arc::new(Barrier::new(order.len() + 1));
    let (hold, held) = watch::channel(false);
    let handler = Staging {
        stage: Arc::new(stage),
        order: Arc::new(order),
        gate: gate.clone(),
        held,
    };
    let consumer = EventConsumer::builder(config, GROUP)
        .handler(handler)
        .configure(|o| {
            fast(o);
            o.consumer = Some("w1".to_owned());
            o.max_deliveries = max_deliveries;
        })
        .build()
        .await
        .unwrap();
    let run = spawn(&consumer).await;
    // Every handler is running: every event began, in one read.
    gate.wait().await;
    // Long after the last handler returns (return_after).
    let hold_ms = 1000 + 30 * sessions.len() as u64;
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(hold_ms)
        .arg("WRITE")
        .query_async(&mut conn(s).await)
        .await
        .unwrap();
    hold.send_replace(true);
    Held {
        consumer,
        run,
        ids,
        commits,
    }
}

async fn get(conn: &mut asdlc::RedisConnection, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query_async(conn).await.unwrap()
}

async fn hgetall(conn: &mut asdlc::RedisConnection, key: &str) -> HashMap<String, String> {
    redis::cmd("HGETALL")
        .arg(key)
        .query_async(conn)
        .await
        .unwrap()
}

async fn set(conn: &mut asdlc::RedisConnection, key: &str, value: &str) {
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query_async(conn)
        .await
        .unwrap();
}

async fn hset(conn: &mut asdlc::RedisConnection, key: &str, field: &str, value: &str) {
    let _: i64 = redis::cmd("HSET")
        .arg(key)
        .arg(field)
        .arg(value)
        .query_async(conn)
        .await
        .unwrap();
}

/// Waits until `n` events are dead-lettered and every entry is acknowledged, then returns the
/// refusal each dead letter carries, by session.
async fn settle(held: &Held, conn: &mut asdlc::RedisConnection, n: u64) -> HashMap<String, String> {
    eventually(WAIT, "the refused events dead-lettered", || async {
        held.consumer.stats().dead_lettered == n
    })
    .await;
    all_acknowledged(conn, GROUP, "every entry acknowledged").await;
    let session_of: HashMap<&String, &String> = held.ids.iter().map(|(s, id)| (id, s)).collect();
    deadletter::list(conn, STREAM, "-", 100)
        .await
        .unwrap()
        .into_iter()
        .map(|d| (session_of[&d.source_id].clone(), d.error))
        .collect()
}

/// No lease is left behind.
async fn assert_no_lease(conn: &mut asdlc::RedisConnection) {
    let lease_hash = StreamKeys::new(STREAM)
        .lease_prefix(GROUP)
        .trim_end_matches(':')
        .to_owned();
    let leases: i64 = redis::cmd("HLEN")
        .arg(&lease_hash)
        .query_async(conn)
        .await
        .unwrap();
    assert_eq!(leases, 0, "no lease left");
}

fn refused(errors: &HashMap<String, String>, session: &str, text: &str) {
    let error = errors
        .get(session)
        .unwrap_or_else(|| panic!("{session} dead-lettered: {errors:?}"));
    assert!(
        error.contains(&format!("effect refused: {text}")),
        "{session}: {error}"
    );
}

#[tokio::test]
async fn an_incrby_after_a_set_of_its_key_in_the_same_record_refuses_that_record_only() {
    let s = server();
    let mut conn = conn(&s).await;
    let (applied, k) = (fx("applied"), fx("k"));
    let held = in_one_call(&s, config(&s), &["a", "b", "c"], 2, {
        let (applied, k) = (applied.clone(), k.clone());
        move |session| match session {
            "a" => vec![Effect::hincr_by(&applied, "a", 1)],
            "b" => vec![Effect::set(&k, "abc"), Effect::incr_by(&k, 1)],
            // Checked against what the call leaves of `k` without b's effects: no key.
            "c" => vec![Effect::incr_by(&k, 5)],
            _ => Vec::new(),
        }
    })
    .await;
    let errors = settle(&held, &mut conn, 1).await;
    held.assert_together(&["a", "b", "c"]);
    // Refused twice: in the call, then on its second and last attempt.
    refused(
        &errors,
        "b",
        &format!("INCRBY on {k}: value is not an integer"),
    );
    assert_eq!(hgetall(&mut conn, &applied).await["a"], "1", "applied once");
    assert_eq!(
        get(&mut conn, &k).await.as_deref(),
        Some("5"),
        "c applied, b not"
    );
    assert_no_lease(&mut conn).await;
    let stats = held.stop().await;
    assert_eq!((stats.processed, stats.dead_lettered), (3, 1), "{stats:?}");
}

#[tokio::test]
async fn an_effect_on_a_key_an_earlier_record_of_the_call_changed_sees_that_change() {
    let s = server();
    let mut conn = conn(&s).await;
    let (k, gone) = (fx("k"), fx("gone"));
    hset(&mut conn, &gone, "f", "v").await;
    let held = in_one_call(&s, config(&s), &["a", "b", "c", "d", "e"], 1, {
        let (k, gone) = (k.clone(), gone.clone());
        move |session| match session {
            "a" => vec![Effect::set(&k, "abc")],
            "b" => vec![Effect::incr_by(&k, 1)],
            "c" => vec![Effect::rpush(&k, "x")],
            "d" => vec![Effect::del(&gone)],
            "e" => vec![Effect::incr_by(&gone, 2)],
            _ => Vec::new(),
        }
    })
    .await;
    let errors = settle(&held, &mut conn, 2).await;
    held.assert_together(&["a", "b", "c", "d", "e"]);
    refused(
        &errors,
        "b",
        &format!("INCRBY on {k}: value is not an integer"),
    );
    refused(&errors, "c", &format!("RPUSH on {k}: key holds a string"));
    assert_eq!(get(&mut conn, &k).await.as_deref(), Some("abc"));
    assert_eq!(get(&mut conn, &gone).await.as_deref(), Some("2"));
    assert_no_lease(&mut conn).await;
    let stats = held.stop().await;
    assert_eq!((stats.processed, stats.dead_lettered), (4, 2), "{stats:?}");
}

#[tokio::test]
async fn an_incrby_past_64_bits_refuses_its_record_and_one_up_to_the_limit_is_applied() {
    let s = server();
    let mut conn = conn(&s).await;
    let [applied, top, empty, to_max, to_min] =
        ["applied", "top", "empty", "to-max", "to-min"].map(fx);
    set(&mut conn, &top, &i64::MAX.to_string()).await;
    let sessions = ["a", "b", "c", "d", "e", "f"];
    let held = in_one_call(&s, config(&s), &sessions, 1, {
        let [applied, top, empty, to_max, to_min] =
            [&applied, &top, &empty, &to_max, &to_min].map(|k| k.clone());
        move |session| match session {
            "a" => vec![Effect::hincr_by(&applied, "a", 1)],
            "b" => vec![Effect::incr_by(&top, 1)],
            "c" => vec![Effect::incr_by(&top, -1)],
            "d" => vec![
                Effect::incr_by(&empty, i64::MAX),
                Effect::incr_by(&empty, 1),
            ],
            "e" => vec![
                Effect::incr_by(&to_max, i64::MAX - 1),
                Effect::incr_by(&to_max, 1),
            ],
            "f" => vec![
                Effect::incr_by(&to_min, i64::MIN),
                Effect::incr_by(&to_min, -1),
            ],
            _ => Vec::new(),
        }
    })
    .await;
    let errors = settle(&held, &mut conn, 3).await;
    held.assert_together(&sessions);
    for (session, key) in [("b", &top), ("d", &empty), ("f", &to_min)] {
        refused(
            &errors,
            session,
            &format!("INCRBY on {key}: increment or decrement would overflow"),
        );
    }
    assert_eq!(hgetall(&mut conn, &applied).await["a"], "1", "applied once");
    let below = (i64::MAX - 1).to_string();
    assert_eq!(get(&mut conn, &top).await, Some(below), "c applied, b not");
    assert_eq!(get(&mut conn, &empty).await, None, "nothing of d applied");
    assert_eq!(get(&mut conn, &to_max).await, Some(i64::MAX.to_string()));
    assert_eq!(get(&mut conn, &to_min).await, None, "nothing of f applied");
    assert_no_lease(&mut conn).await;
    let stats = held.stop().await;
    assert_eq!((stats.processed, stats.dead_lettered), (4, 3), "{stats:?}");
}

#[tokio::test]
async fn an_hincrby_past_64_bits_refuses_its_record_and_sees_the_fields_set_before_it() {
    let s = server();
    let mut conn = conn(&s).await;
    let [applied, h, cleared] = ["applied", "h", "cleared"].map(fx);
    hset(&mut conn, &h, "low", &i64::MIN.to_string()).await;
    hset(&mut conn, &cleared, "x", "abc").await;
    let sessions = ["a", "b", "c", "d", "e", "f"];
    let held = in_one_call(&s, config(&s), &sessions, 1, {
        let [applied, h, cleared] = [&applied, &h, &cleared].map(|k| k.clone());
        move |session| match session {
            "a" => vec![Effect::hincr_by(&applied, "a", 1)],
            "b" => vec![Effect::hincr_by(&h, "low", -1)],
            "c" => vec![Effect::hincr_by(&h, "low", 1)],
            "d" => vec![
                Effect::hset(&h, "high", i64::MAX.to_string()),
                Effect::hincr_by(&h, "high", 1),
            ],
            "e" => vec![
                Effect::hset(&h, "twelve", "12"),
                Effect::hincr_by(&h, "twelve", 3),
            ],
            "f" => vec![Effect::del(&cleared), Effect::hincr_by(&cleared, "x", 1)],
            _ => Vec::new(),
        }
    })
    .await;
    let errors = settle(&held, &mut conn, 2).await;
    held.assert_together(&sessions);
    for session in ["b", "d"] {
        refused(
            &errors,
            session,
            &format!("HINCRBY on {h}: increment or decrement would overflow"),
        );
    }
    assert_eq!(hgetall(&mut conn, &applied).await["a"], "1", "applied once");
    let h_now = hgetall(&mut conn, &h).await;
    assert_eq!(h_now["low"], (i64::MIN + 1).to_string(), "c applied, b not");
    assert!(!h_now.contains_key("high"), "nothing of d applied");
    assert_eq!(h_now["twelve"], "15");
    assert_eq!(
        hgetall(&mut conn, &cleared).await,
        HashMap::from([("x".to_owned(), "1".to_owned())])
    );
    assert_no_lease(&mut conn).await;
    let stats = held.stop().await;
    assert_eq!((stats.processed, stats.dead_lettered), (5, 2), "{stats:?}");
}

#[tokio::test]
async fn a_value_redis_does_not_read_as_an_integer_is_refused_and_a_key_gone_earlier_counts_from_zero()
 {
    let s = server();
    let mut conn = conn(&s).await;
    // Each of these Lua reads as a number, and Redis refuses to increment.
    let odd = [
        "007",
        " 1",
        "1.5",
        "-0",
        "+1",
        "1e3",
        "0x10",
        "99999999999999999999",
    ];
    let mut sessions: Vec<String> = Vec::new();
    let mut refusals = Vec::new();
    for (i, value) in odd.iter().enumerate() {
        let key = fx(&format!("odd-{i}"));
        set(&mut conn, &key, value).await;
        sessions.push(format!("odd-{i}"));
        refusals.push((
            format!("odd-{i}"),
            format!("INCRBY on {key}: value is not an integer"),
        ));
    }
    let h = fx("h");
    hset(&mut conn, &h, "x", "1.5").await;
    sessions.push("field".to_owned());
    refusals.push((
        "field".to_owned(),
        format!("HINCRBY on {h}: field value is not an integer"),
    ));
    let [expired, deleted] = ["expired", "deleted"].map(fx);
    set(&mut conn, &expired, "abc").await;
    set(&mut conn, &deleted, "abc").await;
    sessions.extend(["expire".to_owned(), "del".to_owned()]);
    let names: Vec<&str> = sessions.iter().map(String::as_str).collect();
    let held = in_one_call(&s, config(&s), &names, 1, {
        let (h, expired, deleted) = (h.clone(), expired.clone(), deleted.clone());
        move |session| match session {
            "field" => vec![Effect::hincr_by(&h, "x", 1)],
            "expire" => vec![Effect::expire(&expired, 0), Effect::incr_by(&expired, 1)],
            "del" => vec![Effect::del(&deleted), Effect::incr_by(&deleted, 2)],
            odd if odd.starts_with("odd-") => vec![Effect::incr_by(fx(odd), 1)],
            _ => Vec::new(),
        }
    })
    .await;
    let errors = settle(&held, &mut conn, refusals.len() as u64).await;
    held.assert_together(&names);
    for (session, text) in &refusals {
        refused(&errors, session, text);
    }
    for (i, value) in odd.iter().enumerate() {
        assert_eq!(
            get(&mut conn, &fx(&format!("odd-{i}"))).await.as_deref(),
            Some(*value)
        );
    }
    assert_eq!(get(&mut conn, &expired).await.as_deref(), Some("1"));
    assert_eq!(get(&mut conn, &deleted).await.as_deref(), Some("2"));
    assert_no_lease(&mut conn).await;
    let stats = held.stop().await;
    assert_eq!(stats.processed, 3, "{stats:?}");
}

#[tokio::test]
async fn a_call_that_failed_midway_is_committed_again_without_applying_its_records_twice() {
    let s = server();
    let mut admin = conn(&s).await;
    // A user that may not RPUSH: the commit call fails at b's effect, after a's was applied.
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "w", "on", ">pw", "~*", "&*", "+@all", "-rpush"])
        .query_async(&mut admin)
        .await
        .unwrap();
    let config = Config {
        redis_url: asdlc::RedisUrl::parse(format!("redis://w:pw@127.0.0.1:{}", s.port())).unwrap(),
        ..Config::default()
    };
    let [applied, list] = ["applied", "list"].map(fx);
    let held = in_one_call(&s, config, &["a", "b", "c"], 3, {
        let (applied, list) = (applied.clone(), list.clone());
        move |session| match session {
            "a" | "c" => vec![Effect::hincr_by(&applied, session, 1)],
            "b" => vec![Effect::rpush(&list, "b")],
            _ => Vec::new(),
        }
    })
    .await;
    eventually(WAIT, "the failed call tried again", || async {
        held.calls_with(&["a", "b", "c"]) >= 4
    })
    .await;
    let now = hgetall(&mut admin, &applied).await;
    assert_eq!(
        now.get("a").map(String::as_str),
        Some("1"),
        "a applied once: {now:?}"
    );
    assert!(!now.contains_key("c"), "c comes after the failure: {now:?}");
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "w", "+rpush"])
        .query_async(&mut admin)
        .await
        .unwrap();
    all_acknowledged(&admin, GROUP, "every entry acknowledged").await;
    assert_eq!(
        hgetall(&mut admin, &applied).await,
        HashMap::from([
            ("a".to_owned(), "1".to_owned()),
            ("c".to_owned(), "1".to_owned())
        ]),
    );
    let pushed: Vec<String> = redis::cmd("LRANGE")
        .arg(&list)
        .arg(0)
        .arg(-1)
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(pushed, ["b"]);
    assert_no_lease(&mut admin).await;
    let stats = held.stop().await;
    assert_eq!(
        (stats.processed, stats.duplicates, stats.dead_lettered),
        (4, 0, 0),
        "{stats:?}"
    );
}

#[tokio::test]
async fn an_effect_on_the_groups_own_marks_or_a_malformed_layout_is_refused_before_any_write() {
    let s = server();
    let mut conn = conn(&s).await;
    asdlc::functions::ensure_loaded(&mut conn).await.unwrap();
    let keys = StreamKeys::new(STREAM);
    let prefix = keys.marks_prefix(GROUP);
    let lease = keys.lease_prefix(GROUP).trim_end_matches(':').to_owned();
    // A layout of width 10^9 ms: the server's bucket is now / 10^9.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let bucket = (now / 1_000_000_000).to_string();
    let fp = [9u8; 12];
    let shard = format!("{prefix}{bucket}:0909");
    let layout_key = format!("{prefix}{bucket}:layout");
    // A success record whose one effect sets `target`.
    let commit = |layouts: &str, target: &str| {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(format!("{}_commit", asdlc::functions::library_name()))
            .arg(6)
            .arg(keys.stream())
            .arg(keys.dead_letter())
            .arg(&lease)
            .arg(&layout_key)
            .arg(&shard)
            .arg(target)
            .arg(&prefix)
            .arg(1_000_000_000)
            .arg(&bucket)
            .arg(2_000_000_000)
            .arg(layouts)
            .arg(GROUP)
            .arg("token")
            .arg("")
            .arg(0)
            .arg(0)
            .arg("S")
            .arg("1-0")
            .arg(&fp[..])
            .arg("")
            .arg(1)
            .arg("SET")
            .arg(target)
            .arg(1)
            .arg("x");
        cmd
    };
    let reply: redis::Value = commit("16384:4", &layout_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let text = format!("{reply:?}");
    assert!(
        text.contains("key is written by the commit itself"),
        "{text}"
    );
    // Zero shards, or a shard count named by the wrong number of digits: refused at the top.
    for bad in ["0:4", "131072:4", "16384:5"] {
        let err = commit(bad, &fx("t"))
            .query_async::<redis::Value>(&mut conn)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("is not <shards>"), "{bad}: {err}");
    }
    let written: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(written.is_empty(), "nothing written: {written:?}");
}
