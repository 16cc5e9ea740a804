//! Bad input against a real server: random stream entries through a running consumer, random
//! events through the publisher, and hostile tenant ids, names and keys. Nothing panics,
//! nothing stalls, every invalid entry is dead-lettered with a reason naming its field, and an
//! invalid event never reaches Redis.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::*;
use asdlc::encoding::{FIELDS, decode, encode};
use asdlc::{
    AsdlcEvent, Config, ConfigError, EventConsumer, EventType, Mode, PublishError, RedisConnection,
    Runtime, Tenancy, TenantError, TenantId, deadletter, get_stream_info,
};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};

const WAIT: Duration = Duration::from_secs(15);

/// Ids, names and keys that must never become part of a key: separators, globs, hash tags,
/// path tricks, whitespace, control characters, other scripts, and sheer length.
const HOSTILE: [&str; 22] = [
    "",
    ":",
    "a:b",
    "tenant:{acme}",
    "*",
    "acme*",
    "?",
    "[a-z]",
    "{acme}",
    "ac}me",
    "{",
    "..",
    "../etc",
    "a/b",
    " acme",
    "ACME",
    "a b",
    "a\nb",
    "a\0b",
    "ünïcødé",
    "🦀",
    "acme\u{200b}",
];

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    })
}

/// Runs `fut` to completion from inside a proptest case (the runner's closures are sync).
fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(fut))
}

fn valid_event() -> impl Strategy<Value = AsdlcEvent> {
    (
        prop::sample::select(EventType::ALL),
        "[a-zA-Z0-9 ,:{}*._-]{1,24}",
        proptest::option::of("[a-z0-9-]{1,12}"),
        proptest::option::of("[0-9a-f]{7,40}"),
        prop::collection::vec("[^\u{0}]{1,20}", 0..3),
        any::<bool>(),
        prop::collection::btree_map("[a-z]{1,6}", any::<i64>(), 0..3),
    )
        .prop_filter_map(
            "a valid event",
            |(t, session, task, sha, paths, rlm, meta)| {
                let mut b = AsdlcEvent::builder(t, session).artifact_paths(paths);
                if let Some(task) = task {
                    b = b.task_id(task);
                }
                if let Some(sha) = sha {
                    b = b.git_sha(sha);
                }
                if rlm {
                    b = b.mode(Mode::Rlm);
                }
                for (k, v) in meta {
                    b = b.meta(k, v);
                }
                b.build().ok()
            },
        )
}

/// A change to an encoded event.
#[derive(Debug, Clone)]
enum Mutation {
    Remove(usize),
    Replace(usize, Vec<u8>),
    ReplaceText(usize, String),
    Duplicate(usize),
    Add(Vec<u8>, Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::Remove),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(i, v)| Mutation::Replace(i, v)),
        (any::<usize>(), "[a-z0-9{}\\[\\]\":,. -]{0,20}")
            .prop_map(|(i, v)| Mutation::ReplaceText(i, v)),
        any::<usize>().prop_map(Mutation::Duplicate),
        (
            prop_oneof![
                prop::sample::select(FIELDS.to_vec()).prop_map(|s| s.as_bytes().to_vec()),
                prop::collection::vec(any::<u8>(), 0..10),
            ],
            prop::collection::vec(any::<u8>(), 0..40)
        )
            .prop_map(|(k, v)| Mutation::Add(k, v)),
    ]
}

/// One stream entry to write: a valid event with a few mutations, or a random field map.
#[derive(Debug, Clone)]
enum RawCase {
    Mutated(Box<AsdlcEvent>, Vec<Mutation>),
    Random(Vec<(Vec<u8>, Vec<u8>)>),
}

fn raw_case() -> impl Strategy<Value = RawCase> {
    prop_oneof![
        3 => (valid_event(), prop::collection::vec(mutation(), 0..3))
            .prop_map(|(e, m)| RawCase::Mutated(Box::new(e), m)),
        1 => prop::collection::vec(
            (
                prop_oneof![
                    prop::sample::select(FIELDS.to_vec()).prop_map(|s| s.as_bytes().to_vec()),
                    prop::collection::vec(any::<u8>(), 0..8),
                ],
                prop::collection::vec(any::<u8>(), 0..48),
            ),
            0..14,
        )
        .prop_map(RawCase::Random),
    ]
}

/// The entry's fields; mutated events get a fresh unique idempotency key first, so that
/// every valid entry is a distinct event unless a mutation says otherwise.
fn fields_of(case: &RawCase, unique: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut fields: Vec<(Vec<u8>, Vec<u8>)> = match case {
        RawCase::Random(f) => f.clone(),
        RawCase::Mutated(e, mutations) => {
            let mut e = (**e).clone();
            e.idempotency_key = Some(format!("fuzz-{unique}"));
            let mut f: Vec<(Vec<u8>, Vec<u8>)> = encode(&e)
                .fields()
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.clone()))
                .collect();
            for m in mutations {
                let n = f.len().max(1);
                match m {
                    Mutation::Remove(i) if !f.is_empty() => {
                        f.remove(i % n);
                    }
                    Mutation::Replace(i, v) if !f.is_empty() => f[i % n].1 = v.clone(),
                    Mutation::ReplaceText(i, v) if !f.is_empty() => {
                        f[i % n].1 = v.as_bytes().to_vec()
                    }
                    Mutation::Duplicate(i) if !f.is_empty() => {
                        let copy = f[i % n].clone();
                        f.push(copy);
                    }
                    Mutation::Add(k, v) => f.push((k.clone(), v.clone())),
                    _ => {}
                }
            }
            f
        }
    };
    if fields.is_empty() {
        fields.push((b"junk".to_vec(), Vec::new()));
    }
    fields
}

/// What the consumer must do with one entry, by the same decoder run here.
#[derive(Debug, PartialEq)]
enum Expect {
    Handled,
    Duplicate,
    Dead(String),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_entries_are_handled_or_dead_lettered_and_the_consumer_keeps_going() {
    let s = server();
    let group = "fuzz";
    let handler = TestHandler::all("fuzz");
    let consumer = EventConsumer::builder(config(&s), group)
        .handler(handler.clone())
        .configure(|o| {
            fast(o);
            o.consumer = Some("fuzz-1".into());
        })
        .build()
        .await
        .unwrap();
    let run = spawn(&consumer).await;
    let mut conn = conn(&s).await;
    let unique = AtomicUsize::new(0);
    // Keys handled so far (the oracle of duplicates), and entries written: both outlive a
    // case, since the stream does.
    let handled_keys: RefCell<HashSet<String>> = RefCell::new(HashSet::new());
    let written = Cell::new(0usize);

    let strategy = prop::collection::vec(raw_case(), 1..24);
    let result = runner(48).run(&strategy, |cases| {
        let mut conn = conn.clone();
        block_on(async {
            let mut expected: Vec<(String, Expect)> = Vec::new();
            for case in &cases {
                let fields = fields_of(case, unique.fetch_add(1, Ordering::Relaxed));
                let mut cmd = redis::cmd("XADD");
                cmd.arg("asdlc:events").arg("*");
                for (k, v) in &fields {
                    cmd.arg(k.as_slice()).arg(v.as_slice());
                }
                let id: String = cmd.query_async(&mut conn).await.unwrap();
                let expect = match decode(&fields) {
                    Ok(e) if e.tenant_id.is_some() => Expect::Dead("tenant".to_owned()),
                    Ok(e) => {
                        let key = e
                            .idempotency_key
                            .clone()
                            .unwrap_or_else(|| format!("entry:{id}"));
                        if handled_keys.borrow_mut().insert(key) {
                            Expect::Handled
                        } else {
                            Expect::Duplicate
                        }
                    }
                    Err(err) => Expect::Dead(format!("`{}`", err.field)),
                };
                expected.push((id, expect));
            }
            written.set(written.get() + cases.len());
            wait_all_acknowledged(&mut conn, group, written.get())
                .await
                .map_err(TestCaseError::fail)?;
            let calls: HashMap<String, usize> =
                handler
                    .calls()
                    .into_iter()
                    .fold(HashMap::new(), |mut m, c| {
                        *m.entry(c.entry_id).or_default() += 1;
                        m
                    });
            let dead: HashMap<String, String> =
                deadletter::list(&mut conn, "asdlc:events", "-", 100_000)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|d| (d.source_id, d.reason))
                    .collect();
            for (id, expect) in &expected {
                let n_calls = calls.get(id).copied().unwrap_or(0);
                let dead_reason = dead.get(id);
                match expect {
                    Expect::Handled => {
                        prop_assert_eq!(n_calls, 1, "entry {} handled once", id);
                        prop_assert!(dead_reason.is_none(), "{} dead: {:?}", id, dead_reason);
                    }
                    Expect::Duplicate => {
                        prop_assert_eq!(n_calls, 0, "duplicate {} not handled", id);
                        prop_assert!(dead_reason.is_none());
                    }
                    Expect::Dead(field) => {
                        prop_assert_eq!(n_calls, 0, "invalid {} not handled", id);
                        let reason = dead_reason.ok_or_else(|| {
                            TestCaseError::fail(format!("invalid entry {id} not dead-lettered"))
                        })?;
                        prop_assert!(
                            reason.contains(field.as_str()),
                            "the reason `{}` of {} names {}",
                            reason,
                            id,
                            field
                        );
                    }
                }
            }
            prop_assert!(!run.is_finished(), "the consumer is still running");
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let stats = consumer.stats();
    println!(
        "{} entries: {} handled, {} dead-lettered, {} duplicates",
        written.get(),
        stats.processed,
        stats.dead_lettered,
        stats.duplicates
    );
    assert!(stats.processed > 0 && stats.dead_lettered > 0, "{stats:?}");
    assert_eq!(stats.panics, 0);
    // Entries without a key all count under "" in the test handler's effect.
    let twice: Vec<(String, i64)> = applied(&mut conn, "asdlc:events", group)
        .await
        .into_iter()
        .filter(|(k, v)| !k.is_empty() && *v != 1)
        .collect();
    assert!(twice.is_empty(), "{twice:?}");
    consumer.stop();
    run.await.unwrap().unwrap();
}

/// Waits until the group has read `n` entries and has none pending.
async fn wait_all_acknowledged(
    conn: &mut RedisConnection,
    group: &str,
    n: usize,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let info = get_stream_info(conn, "asdlc:events").await.unwrap();
        let g = info.group(group).cloned();
        if let Some(g) = &g
            && g.pending == 0
            && info.last_id.as_deref() == Some(g.last_delivered_id.as_str())
            && info.length as usize == n
        {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("the consumer stalled: {g:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Random values for every field of an event, valid or not.
fn any_event() -> impl Strategy<Value = AsdlcEvent> {
    let text = || {
        prop_oneof![
            "[a-zA-Z0-9 ,:{}*._-]{1,24}",
            "\\PC{0,40}",
            ".{0,8}",
            (0usize..4).prop_map(|k| "x".repeat([0, 256, 257, 5000][k])),
            Just(" \t ".to_owned()),
        ]
    };
    (
        prop::sample::select(EventType::ALL),
        text(),
        proptest::option::of(text()),
        proptest::option::of(prop_oneof![
            "[0-9a-fA-F]{7,40}".boxed(),
            "[0-9a-z]{0,50}".boxed()
        ]),
        prop::collection::vec(
            prop_oneof![
                "[^\u{0}]{1,20}".boxed(),
                Just(String::new()).boxed(),
                Just("a\0b".to_owned()).boxed(),
                (0usize..2)
                    .prop_map(|k| "p".repeat([4096, 4097][k]))
                    .boxed()
            ],
            0..3,
        ),
        proptest::option::of(text()),
        (0usize..4).prop_map(|k| [0usize, 100, 600_000, 1_100_000][k]),
    )
        .prop_map(|(t, session, task, sha, paths, key, blob)| {
            let mut b = AsdlcEvent::builder(t, session).artifact_paths(paths);
            if let Some(task) = task {
                b = b.task_id(task);
            }
            if let Some(sha) = sha {
                b = b.git_sha(sha);
            }
            if blob > 0 {
                b = b.meta("blob", "b".repeat(blob));
            }
            let mut e = b.build_unchecked();
            e.idempotency_key = key;
            e
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_events_are_published_or_refused_and_refused_ones_never_reach_redis() {
    let s = server();
    let p = asdlc::Publisher::connect(config(&s)).await.unwrap();
    let conn = conn(&s).await;
    let refused = AtomicUsize::new(0);
    let accepted = AtomicUsize::new(0);
    let result = runner(128).run(&any_event(), |e| {
        let mut conn = conn.clone();
        block_on(async {
            let before = command_calls(&mut conn, "xadd").await;
            let len_before = get_stream_info(&mut conn, "asdlc:events")
                .await
                .unwrap()
                .length;
            match p.publish(&e).await {
                Ok(published) => {
                    accepted.fetch_add(1, Ordering::Relaxed);
                    prop_assert!(e.validate().is_ok(), "accepted an invalid event");
                    // It reads back equal.
                    let page: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                        .arg("asdlc:events")
                        .arg(&published.event_id)
                        .arg(&published.event_id)
                        .query_async(&mut conn)
                        .await
                        .unwrap();
                    let fields: Vec<(String, Vec<u8>)> = page.ids[0]
                        .map
                        .iter()
                        .map(|(k, v)| {
                            (
                                k.clone(),
                                redis::from_redis_value_ref(v).unwrap_or_default(),
                            )
                        })
                        .collect();
                    let back = decode(&fields).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(back.session_id, e.session_id);
                    prop_assert_eq!(back.metadata, e.metadata);
                }
                Err(PublishError::Validation(v)) => {
                    refused.fetch_add(1, Ordering::Relaxed);
                    let expected = e.validate().err();
                    prop_assert!(expected.is_some(), "refused a valid event: {}", v);
                    prop_assert_eq!(
                        command_calls(&mut conn, "xadd").await,
                        before,
                        "{} reached Redis",
                        v
                    );
                    prop_assert_eq!(
                        get_stream_info(&mut conn, "asdlc:events")
                            .await
                            .unwrap()
                            .length,
                        len_before
                    );
                }
                Err(other) => {
                    prop_assert!(false, "neither published nor a validation error: {}", other)
                }
            }
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(accepted.load(Ordering::Relaxed) > 0 && refused.load(Ordering::Relaxed) > 0);
}

#[tokio::test]
async fn oversized_events_are_refused_before_they_reach_redis() {
    let s = server();
    let p = asdlc::Publisher::connect(config(&s)).await.unwrap();
    let mut conn = conn(&s).await;
    let big = AsdlcEvent::builder(EventType::PatchCreated, "big")
        .meta("diff", "x".repeat(asdlc::event::MAX_EVENT_BYTES))
        .build_unchecked();
    let small = event(EventType::PatchCreated, "small");
    let before = command_calls(&mut conn, "xadd").await;
    let err = p.publish(&big).await.unwrap_err();
    match &err {
        PublishError::Validation(v) => {
            assert_eq!(v.field, "event");
            assert!(v.reason.contains("exceeds"), "{v}");
        }
        other => panic!("{other}"),
    }
    // In a batch, one oversized event keeps the whole batch out.
    let err = p
        .publish_batch(&[small.clone(), big.clone(), small])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("event 1"), "{err}");
    // Just under the limit is fine; its overhead is counted, not guessed.
    let mut fits = AsdlcEvent::builder(EventType::PatchCreated, "fits").build_unchecked();
    let overhead = asdlc::encoding::encoded_len(&fits) + r#","diff":"""#.len();
    fits.metadata.insert(
        "diff".into(),
        "x".repeat(asdlc::event::MAX_EVENT_BYTES - overhead).into(),
    );
    assert_eq!(
        command_calls(&mut conn, "xadd").await,
        before,
        "nothing reached Redis"
    );
    assert!(
        !get_stream_info(&mut conn, "asdlc:events")
            .await
            .unwrap()
            .exists
    );
    assert!(
        asdlc::encoding::encoded_len(&fits) <= asdlc::event::MAX_EVENT_BYTES,
        "{}",
        asdlc::encoding::encoded_len(&fits)
    );
    p.publish(&fits).await.unwrap();
    assert_eq!(command_calls(&mut conn, "xadd").await, before + 1);
}

#[test]
fn hostile_tenant_ids_are_rejected() {
    for id in HOSTILE.iter().copied().chain([&*"a".repeat(64)]) {
        let err = TenantId::new(id).unwrap_err();
        assert!(err.to_string().starts_with("invalid `tenant_id`"), "{id:?}");
        assert!(id.parse::<TenantId>().is_err(), "{id:?}");
        // Nor can one be smuggled in through serde.
        let json = serde_json::json!({
            "event_type": "task_created", "session_id": "s",
            "timestamp": "2026-01-01T00:00:00Z", "tenant_id": id,
        });
        assert!(
            serde_json::from_value::<AsdlcEvent>(json).is_err(),
            "{id:?} deserialized"
        );
    }
    assert!(TenantId::new("a".repeat(63)).is_ok());
    assert!(TenantId::new("acme-2_b").is_ok());
}

#[test]
fn hostile_configuration_is_rejected() {
    let env = |pairs: Vec<(&'static str, String)>| {
        let map: HashMap<&str, String> = pairs.into_iter().collect();
        Config::from_lookup(move |k| map.get(k).cloned())
    };
    for id in HOSTILE.iter().copied().filter(|id| {
        // The list is split on commas and trimmed: these are not one hostile id.
        !id.trim().is_empty() && *id != " acme"
    }) {
        match env(vec![("ASDLC_TENANTS", id.to_owned())]) {
            Err(ConfigError::Env { var, .. }) => assert_eq!(var, "ASDLC_TENANTS", "{id:?}"),
            other => panic!("ASDLC_TENANTS={id:?} gave {other:?}"),
        }
        match env(vec![
            ("ASDLC_TENANCY", "multi".to_owned()),
            ("ASDLC_TENANTS", format!("acme,{id}")),
        ]) {
            Err(ConfigError::Env { var, .. }) => assert_eq!(var, "ASDLC_TENANTS", "{id:?}"),
            other => panic!("ASDLC_TENANTS=acme,{id:?} gave {other:?}"),
        }
    }
    for stream in [
        "",
        "{x}",
        "a}b",
        "a b",
        "a*",
        "a?",
        "[ab]",
        "a\nb",
        &"s".repeat(201),
    ] {
        assert!(
            env(vec![("ASDLC_STREAM", stream.to_owned())]).is_err(),
            "ASDLC_STREAM={stream:?} accepted"
        );
    }
    for url in ["", "http://x", "redis://[::1", "notaurl"] {
        assert!(env(vec![("REDIS_URL", url.to_owned())]).is_err(), "{url:?}");
    }
}

#[tokio::test]
async fn hostile_group_and_consumer_names_are_rejected() {
    let s = server();
    // `..` and `a/b`-like names mean nothing special to Redis (no paths), so a group or
    // consumer may contain dots; everything else of the list must be refused.
    for name in HOSTILE
        .iter()
        .copied()
        .filter(|n| *n != "..")
        .chain([&*"g".repeat(200)])
    {
        let err = EventConsumer::builder(config(&s), name)
            .handler(TestHandler::all("h"))
            .build()
            .await;
        assert!(err.is_err(), "group {name:?} accepted");
        let err = Runtime::builder()
            .without_registered()
            .config(config(&s))
            .handler(name, TestHandler::all("h"))
            .build()
            .await;
        assert!(err.is_err(), "runtime group {name:?} accepted");
        if name == "ACME" {
            // Consumer names may use capitals.
            continue;
        }
        let err = EventConsumer::builder(config(&s), "g")
            .handler(TestHandler::all("h"))
            .configure(|o| o.consumer = Some(name.to_owned()))
            .build()
            .await;
        assert!(err.is_err(), "consumer {name:?} accepted");
    }
}

#[tokio::test]
async fn hostile_tenants_cannot_publish_and_hostile_tenant_fields_are_dead_lettered() {
    let s = server();
    // Multi-tenant, allow-list: a tenant outside it is refused, and writes nothing.
    let cfg = Config {
        tenancy: Tenancy::multi_only([tenant("acme")]),
        ..multi_config(&s)
    };
    let p = asdlc::Publisher::connect(cfg.clone()).await.unwrap();
    assert_not_allowed(&p, "globex").await;
    let err = p
        .publish(&event(EventType::TaskCreated, "x"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, PublishError::Tenant(TenantError::Missing)),
        "{err}"
    );
    let mut conn = conn(&s).await;
    let keys = all_keys(&mut conn).await;
    assert!(keys.is_empty(), "{keys:?}");

    // Entries on acme's stream whose tenant_id is hostile: dead-lettered, naming the field.
    for id in HOSTILE.iter().filter(|id| !id.is_empty()) {
        let _: String = redis::cmd("XADD")
            .arg("tenant:{acme}:asdlc:events")
            .arg("*")
            .arg("event_type")
            .arg("task_created")
            .arg("session_id")
            .arg("s")
            .arg("timestamp")
            .arg("2026-01-01T00:00:00Z")
            .arg("tenant_id")
            .arg(*id)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let h = TestHandler::all("h");
    let c = tenant_consumer_for(&cfg, "g", &tenant("acme"), "w", &h).await;
    let run = spawn(&c).await;
    let n = HOSTILE.len() as u64 - 1;
    eventually(WAIT, "all dead-lettered", || async {
        c.stats().dead_lettered == n
    })
    .await;
    c.stop();
    run.await.unwrap().unwrap();
    assert_eq!(h.count(), 0);
    let dead = deadletter::list(&mut conn, "tenant:{acme}:asdlc:events", "-", 100)
        .await
        .unwrap();
    assert!(
        dead.iter().all(|d| d.reason.contains("`tenant_id`")),
        "{:?}",
        dead.iter().map(|d| &d.reason).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn hostile_idempotency_keys_are_refused_or_kept_out_of_key_names() {
    let s = server();
    let p = asdlc::Publisher::connect(config(&s)).await.unwrap();
    let mut accepted = Vec::new();
    for key in HOSTILE.iter().map(|k| (*k).to_owned()).chain([
        "k".repeat(256),
        "k".repeat(257),
        "x{a}*:..".to_owned(),
    ]) {
        let e = AsdlcEvent::builder(EventType::PatchApplied, "s")
            .idempotency_key(key.clone())
            .build_unchecked();
        match p.publish(&e).await {
            Ok(_) => accepted.push(key),
            Err(PublishError::Validation(v)) => {
                assert_eq!(v.field, "idempotency_key", "{key:?}: {v}");
                assert!(
                    key.trim().is_empty() || key.len() > 256 || key.chars().any(char::is_control),
                    "{key:?} refused: {v}"
                );
            }
            Err(other) => panic!("{key:?}: {other}"),
        }
    }
    assert!(accepted.len() >= 15, "{accepted:?}");
    let h = TestHandler::all("h");
    let c = EventConsumer::builder(config(&s), "g")
        .handler(h.clone())
        .configure(|o| {
            fast(o);
            o.consumer = Some("w".into());
        })
        .build()
        .await
        .unwrap();
    let run = spawn(&c).await;
    let n = accepted.len();
    eventually(WAIT, "all handled", || async { h.count() == n }).await;
    c.stop();
    run.await.unwrap().unwrap();
    let mut conn = conn(&s).await;
    let applied = applied(&mut conn, "asdlc:events", "g").await;
    assert_eq!(applied.len(), n);
    assert!(applied.values().all(|v| *v == 1));
    // Keys are fingerprinted before they name anything: no Redis key contains one.
    let keys = all_keys(&mut conn).await;
    for k in &keys {
        for key in accepted.iter().filter(|key| key.len() > 2) {
            assert!(!k.contains(key.as_str()), "key {k:?} contains {key:?}");
        }
    }
}

/// `Config`'s fields are public, so a stream name can bypass `Config::from_env`'s check; the
/// publisher, the consumer and the runtime must refuse it themselves.
#[tokio::test]
async fn hostile_stream_names_in_a_config_literal_are_rejected() {
    let s = server();
    for stream in ["", "{x}", "a}b", "a*", "a b", "a\nb"] {
        let cfg = Config {
            stream: stream.to_owned(),
            ..config(&s)
        };
        assert!(
            asdlc::Publisher::connect(cfg.clone()).await.is_err(),
            "publisher for {stream:?}"
        );
        assert!(
            EventConsumer::builder(cfg.clone(), "g")
                .handler(TestHandler::all("h"))
                .build()
                .await
                .is_err(),
            "consumer for {stream:?}"
        );
        assert!(
            Runtime::builder()
                .without_registered()
                .config(cfg)
                .handler("g", TestHandler::all("h"))
                .build()
                .await
                .is_err(),
            "runtime for {stream:?}"
        );
    }
}
