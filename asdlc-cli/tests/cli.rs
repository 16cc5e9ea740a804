//! The `asdlc` binary against a real server: output, JSON and exit statuses.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use asdlc_runtime::Config;
use asdlc_testing::{TestServer, fixtures};
use serde_json::Value;

mod common;

/// The command, with no configuration from this process's environment.
fn command() -> Command {
    let mut c = common::unconfigured();
    c.env("RUST_BACKTRACE", "1");
    c
}

fn run(server: &TestServer, args: &[&str]) -> Output {
    command()
        .arg("--url")
        .arg(server.url())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run asdlc")
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited normally")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(o)))
}

/// Exactly one line on stderr, naming the error, with no panic or backtrace.
fn assert_one_line_error(o: &Output, expected_code: i32, mentions: &str) {
    let err = stderr(o);
    assert_eq!(
        code(o),
        expected_code,
        "stderr: {err} stdout: {}",
        stdout(o)
    );
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    assert!(err.starts_with("asdlc: error: "), "{err}");
    assert!(err.contains(mentions), "`{mentions}` in {err}");
    for bad in ["panicked", "backtrace", "RUST_BACKTRACE"] {
        assert!(!err.contains(bad), "{err}");
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn config(server: &TestServer) -> Config {
    Config::new(&server.url()).unwrap()
}

fn publish(server: &TestServer, n: usize) -> Vec<String> {
    rt().block_on(fixtures::publish_events(&config(server), None, n, "s"))
}

fn redis(server: &TestServer, args: &[&str]) -> redis::Value {
    fixtures::raw_command(&server.url(), args).unwrap()
}

/// Creates `group` on `asdlc:events` (and the stream if need be), starting after its last entry.
fn create_group(server: &TestServer, group: &str) {
    redis(
        server,
        &["XGROUP", "CREATE", "asdlc:events", group, "$", "MKSTREAM"],
    );
}

/// Reads `count` new entries of `asdlc:events` for `consumer` of `group` and acknowledges
/// none, leaving them pending.
fn read_pending(server: &TestServer, group: &str, consumer: &str, count: u64) {
    let count = count.to_string();
    redis(
        server,
        &[
            "XREADGROUP",
            "GROUP",
            group,
            consumer,
            "COUNT",
            &count,
            "STREAMS",
            "asdlc:events",
            ">",
        ],
    );
}

/// Runs a consumer `w1` of group `g` whose handler refuses everything until `n` dead letters
/// exist.
fn dead_letter_everything(server: &TestServer, n: u64) {
    rt().block_on(fixtures::dead_letter_all(
        &config(server),
        None,
        "g",
        "w1",
        n,
    ));
}

#[test]
fn help_and_version_exit_zero() {
    let help = command().arg("--help").output().unwrap();
    assert_eq!(code(&help), 0);
    for word in [
        "info",
        "health",
        "tail",
        "pending",
        "dlq",
        "publish",
        "recover",
        "trim",
        "Exit status",
    ] {
        assert!(stdout(&help).contains(word), "{word}");
    }
    let version = command().arg("--version").output().unwrap();
    assert_eq!(code(&version), 0);
    assert!(stdout(&version).starts_with("asdlc "));
}

#[test]
fn bad_arguments_exit_64_with_one_line() {
    let s = TestServer::start();
    let cases: [(&[&str], &str); 10] = [
        (&[], "a command is required"),
        (&["frobnicate"], "frobnicate"),
        (&["info", "--nope"], "--nope"),
        (&["health", "--pending-age-degraded", "soon"], "soon"),
        (&["--tenant", "Not Valid", "info"], "tenant_id"),
        (&["--stream", "a{b}", "info"], "stream"),
        (&["publish"], "--type"),
        (
            &["publish", "--type", "task_created", "--session", ""],
            "session_id",
        ),
        (
            &["publish", "--type", "no_such_type", "--session", "s"],
            "no_such_type",
        ),
        (&["dlq", "show", "not-an-id"], "not an entry id"),
    ];
    for (args, mentions) in cases {
        let o = run(&s, args);
        assert_one_line_error(&o, 64, mentions);
        assert!(o.stdout.is_empty(), "{args:?}: {}", stdout(&o));
    }
    // Nothing was published by the invalid events.
    assert_eq!(redis(&s, &["EXISTS", "asdlc:events"]), redis::Value::Int(0));
}

#[test]
fn unreachable_server_exits_non_zero_with_one_line() {
    for args in [
        &["info"][..],
        &["dlq", "list"],
        &["tail", "--count", "1"],
        &["trim"],
    ] {
        let o = command()
            .args(["--url", "redis://127.0.0.1:1"])
            .args(args)
            .output()
            .unwrap();
        assert_one_line_error(&o, 3, "cannot reach redis://127.0.0.1:1");
    }
    // For `health`, an unreachable server is a finding: unhealthy, exit 2.
    let o = command()
        .args(["--url", "redis://127.0.0.1:1", "--json", "health"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 2);
    let report = json(&o);
    assert_eq!(report["status"], "unhealthy");
    assert!(
        report["reasons"][0]
            .as_str()
            .unwrap()
            .contains("cannot reach")
    );
    // A password in the URL never shows.
    let o = command()
        .args(["--url", "redis://user:s3cret@127.0.0.1:1", "info"])
        .output()
        .unwrap();
    assert_one_line_error(&o, 3, "user:***@");
    assert!(!stderr(&o).contains("s3cret"));
}

#[test]
fn info_and_health_on_an_empty_healthy_stream() {
    let s = TestServer::start();
    create_group(&s, "design-handlers");
    let o = run(&s, &["info"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("asdlc:events"));
    assert!(stdout(&o).contains("design-handlers"));
    let o = run(&s, &["health"]);
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    assert!(stdout(&o).starts_with("status: healthy"));

    let info = json(&run(&s, &["--json", "info"]));
    let stream = &info["streams"][0];
    assert_eq!(stream["stream"], "asdlc:events");
    assert_eq!(stream["exists"], true);
    assert_eq!(stream["length"], 0);
    assert_eq!(stream["groups"][0]["name"], "design-handlers");
    assert_eq!(stream["groups"][0]["lag"], 0);
    assert_eq!(stream["tenant"], Value::Null);
}

#[test]
fn health_exit_status_reflects_a_real_backlog() {
    let s = TestServer::start();
    create_group(&s, "slow");
    publish(&s, 30);
    let limits = |d: &str, u: &str| run(&s, &["health", "--lag-degraded", d, "--lag-unhealthy", u]);
    assert_eq!(code(&limits("100", "1000")), 0);
    let o = limits("10", "100");
    assert_eq!(code(&o), 1, "{}", stdout(&o));
    assert!(
        stdout(&o).contains("degraded: group `slow` on `asdlc:events` is 30 entries behind"),
        "{}",
        stdout(&o)
    );
    let o = limits("10", "30");
    assert_eq!(code(&o), 2);
    let report = json(&run(
        &s,
        &[
            "--json",
            "health",
            "--lag-degraded",
            "10",
            "--lag-unhealthy",
            "30",
        ],
    ));
    assert_eq!(report["status"], "unhealthy");
    assert_eq!(report["streams"][0]["groups"][0]["lag"], 30);

    // Pending entries that grow old degrade it too.
    read_pending(&s, "slow", "w1", 5);
    std::thread::sleep(Duration::from_millis(120));
    let o = run(&s, &["health", "--pending-age-degraded", "100ms"]);
    assert_eq!(code(&o), 1, "{}", stdout(&o));
    assert!(stdout(&o).contains("has an entry pending for"));
}

#[test]
fn publish_from_json_then_tail_shows_it() {
    let s = TestServer::start();
    publish(&s, 2);
    let mut tail = command()
        .args(["--url", &s.url(), "tail", "--count", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Publish only once tail says where it follows from.
    let (tx, rx) = mpsc::channel();
    let err = tail.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let announced = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("tail starts");
    assert!(
        announced.contains("following 1 stream(s) from now"),
        "{announced}"
    );

    let mut publisher = command()
        .args(["--url", &s.url(), "publish", "--file", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    publisher
        .stdin
        .take()
        .unwrap()
        .write_all(
            br#"{"event_type": "patch_applied", "session_id": "sess-42", "task_id": "t-7",
                "git_sha": "0123abcd", "idempotency_key": "patch-1@0123abcd",
                "metadata": {"reviewer": "ada"}}"#,
        )
        .unwrap();
    let published = publisher.wait_with_output().unwrap();
    assert_eq!(code(&published), 0, "{}", stderr(&published));
    let id = stdout(&published).trim().to_owned();
    assert!(id.contains('-'), "an entry id: {id}");

    let deadline = Instant::now() + Duration::from_secs(10);
    while tail.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "tail exits after one event");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = tail.wait_with_output().unwrap();
    assert_eq!(code(&out), 0);
    let shown = stdout(&out);
    assert_eq!(shown.lines().count(), 1, "{shown}");
    for part in [
        id.as_str(),
        "patch_applied",
        "session=sess-42",
        "task=t-7",
        "key=patch-1@0123abcd",
    ] {
        assert!(shown.contains(part), "`{part}` in {shown}");
    }

    // The same event in JSON, from the beginning.
    let o = run(&s, &["--json", "tail", "--from", "0", "--count", "3"]);
    let last: Value = serde_json::from_str(stdout(&o).lines().last().unwrap()).unwrap();
    assert_eq!(last["id"], id.as_str());
    assert_eq!(last["event"]["metadata"]["reviewer"], "ada");
    assert_eq!(last["event"]["idempotency_key"], "patch-1@0123abcd");
}

#[test]
fn publish_from_flags_prints_the_id_and_validates() {
    let s = TestServer::start();
    let o = run(
        &s,
        &[
            "--json",
            "publish",
            "--type",
            "gate_requested",
            "--session",
            "s1",
            "--task",
            "t1",
            "--artifact",
            "a,b.txt",
            "--meta",
            "n=3",
            "--meta",
            "who=ada",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let p = json(&o);
    assert_eq!(p["stream"], "asdlc:events");
    let o = run(&s, &["--json", "tail", "--from", "0", "--count", "1"]);
    let e = &json(&o)["event"];
    assert_eq!(e["event_id"], p["event_id"]);
    assert_eq!(e["artifact_paths"][0], "a,b.txt");
    assert_eq!(e["metadata"]["n"], 3);
    assert_eq!(e["metadata"]["who"], "ada");

    let o = run(
        &s,
        &[
            "--tenant",
            "acme",
            "publish",
            "--type",
            "task_created",
            "--session",
            "s",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        redis(&s, &["XLEN", "tenant:{acme}:asdlc:events"]),
        redis::Value::Int(1)
    );
    let o = run(
        &s,
        &[
            "publish",
            "--type",
            "task_created",
            "--session",
            "s",
            "--git-sha",
            "xyz",
        ],
    );
    assert_one_line_error(&o, 64, "git_sha");
}

#[test]
fn dlq_list_show_replay_purge_round_trip() {
    let s = TestServer::start();
    let published = publish(&s, 3);
    dead_letter_everything(&s, 3);

    let listed = json(&run(&s, &["--json", "dlq", "list"]));
    let letters = listed["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 3);
    let first = &letters[0];
    assert_eq!(first["source_id"], published[0].as_str());
    assert_eq!(first["group"], "g");
    assert_eq!(first["handler"], "refuse");
    assert_eq!(first["reason"], "permanent failure");
    assert_eq!(first["error"], "cannot ever work");
    let dead_id = first["id"].as_str().unwrap().to_owned();
    let o = run(&s, &["dlq", "list"]);
    assert_eq!(stdout(&o).lines().count(), 4, "{}", stdout(&o));

    let o = run(&s, &["dlq", "show", &dead_id]);
    assert_eq!(code(&o), 0);
    assert!(stdout(&o).contains("cannot ever work"));
    assert!(
        stdout(&o).contains("\"session_id\": \"s0\""),
        "{}",
        stdout(&o)
    );
    let shown = json(&run(&s, &["--json", "dlq", "show", &dead_id]));
    let key = shown["event"]["idempotency_key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_one_line_error(
        &run(&s, &["dlq", "show", "1-1"]),
        4,
        "no dead letter with id 1-1",
    );

    // Replay one: back on the stream with its original idempotency key.
    let o = run(&s, &["--json", "dlq", "replay", &dead_id]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let new_id = json(&o)["replayed"][0]["new_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let o = run(
        &s,
        &["--json", "tail", "--from", &published[2], "--count", "1"],
    );
    let replayed = json(&o);
    assert_eq!(replayed["id"], new_id.as_str());
    assert_eq!(replayed["event"]["idempotency_key"], key.as_str());
    assert_eq!(
        json(&run(&s, &["--json", "dlq", "list"]))["dead_letters"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    let o = run(&s, &["dlq", "replay", "--all"]);
    assert_eq!(code(&o), 0);
    assert_eq!(stdout(&o).trim(), "replayed 2 dead letter(s)");
    assert!(
        stderr(&o).is_empty(),
        "no progress bar without a terminal: {}",
        stderr(&o)
    );
    assert_eq!(stdout(&run(&s, &["dlq", "list"])).trim(), "no dead letters");

    // The group still refuses them: three dead letters again, then purge.
    dead_letter_everything(&s, 3);
    let o = run(&s, &["dlq", "purge"]);
    assert_one_line_error(&o, 64, "--yes");
    assert_eq!(
        json(&run(&s, &["--json", "dlq", "list"]))["dead_letters"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let o = run(&s, &["--json", "dlq", "purge", "--yes"]);
    assert_eq!(json(&o)["purged"][0]["purged"], 3);
    assert_eq!(
        redis(&s, &["XLEN", "{asdlc:events}:dead"]),
        redis::Value::Int(0)
    );
}

#[test]
fn dlq_replay_all_skips_malformed_unless_asked_and_replay_can_target_one_group() {
    let s = TestServer::start();
    redis(
        &s,
        &[
            "XADD",
            "asdlc:events",
            "*",
            "v",
            "1",
            "event_type",
            "no_such_type",
            "session_id",
            "s9",
        ],
    );
    publish(&s, 1);
    dead_letter_everything(&s, 2);

    let o = run(&s, &["dlq", "replay", "--all"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("replayed 1 dead letter(s)"), "{out}");
    assert!(out.contains("skipped 1 (--include-malformed"), "{out}");
    assert!(out.contains("no_such_type"), "{out}");
    let left = json(&run(&s, &["--json", "dlq", "list"]));
    assert_eq!(left["dead_letters"].as_array().unwrap().len(), 1);

    let o = run(
        &s,
        &["--json", "dlq", "replay", "--all", "--include-malformed"],
    );
    let report = json(&o);
    assert_eq!(report["replayed"].as_array().unwrap().len(), 1);
    assert_eq!(report["skipped"].as_array().unwrap().len(), 0);

    // Both copies come back as dead letters; the well-formed one goes back to group g only.
    dead_letter_everything(&s, 2);
    let listed = json(&run(&s, &["--json", "dlq", "list"]));
    let good = listed["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["reason"] == "permanent failure")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let o = run(&s, &["--json", "dlq", "replay", &good, "--group", "g"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let new_id = json(&o)["replayed"][0]["new_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let entry = format!(
        "{:?}",
        redis(&s, &["XRANGE", "asdlc:events", &new_id, &new_id])
    );
    assert!(
        entry.contains("replay_group") && entry.contains("\"g\""),
        "{entry}"
    );
    assert_one_line_error(
        &run(&s, &["dlq", "replay", "--all", "--group", "no good!"]),
        64,
        "group",
    );
}

#[test]
fn pending_and_recover_show_and_hand_over_stale_entries() {
    let s = TestServer::start();
    let published = publish(&s, 4);
    redis(&s, &["XGROUP", "CREATE", "asdlc:events", "g", "0"]);
    read_pending(&s, "g", "dead", 3);
    std::thread::sleep(Duration::from_millis(60));

    let o = run(&s, &["--json", "pending", "g"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let p = &json(&o)["streams"][0];
    assert_eq!(p["pending"], 3);
    let entries = p["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[0]["id"], published[0].as_str());
    assert_eq!(entries[0]["consumer"], "dead");
    assert_eq!(entries[0]["deliveries"], 1);
    assert_eq!(entries[0]["event_type"], "task_created");
    let o = run(&s, &["pending", "g"]);
    assert!(
        stdout(&o).contains("group `g` has 3 pending"),
        "{}",
        stdout(&o)
    );
    assert_one_line_error(
        &run(&s, &["pending", "nope"]),
        4,
        "group `nope` does not exist",
    );

    // Listing changes nothing.
    let o = run(&s, &["recover", "g", "--min-idle", "50ms"]);
    assert_eq!(code(&o), 0);
    assert!(
        stdout(&o).contains("3 entries of group `g` pending for"),
        "{}",
        stdout(&o)
    );
    assert!(stdout(&o).contains("nothing changed"));
    let o = run(&s, &["--json", "recover", "g", "--min-idle", "1h"]);
    assert_eq!(json(&o)["streams"][0]["stale"].as_array().unwrap().len(), 0);

    let o = run(
        &s,
        &[
            "--json",
            "recover",
            "g",
            "--min-idle",
            "50ms",
            "--claim-to",
            "w2",
        ],
    );
    assert_eq!(json(&o)["streams"][0]["claimed"], 3);
    let after = json(&run(&s, &["--json", "pending", "g", "--consumer", "w2"]));
    let entries = after["streams"][0]["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[0]["deliveries"], 1, "JUSTID keeps delivery counts");
}

#[test]
fn trim_removes_only_acknowledged_entries() {
    let s = TestServer::start();
    let published = publish(&s, 5);
    redis(&s, &["XGROUP", "CREATE", "asdlc:events", "g", "0"]);
    let o = run(&s, &["trim"]);
    assert_eq!(code(&o), 0);
    assert!(
        stdout(&o).contains("has not read anything yet"),
        "{}",
        stdout(&o)
    );
    read_pending(&s, "g", "w", 4);
    redis(
        &s,
        &["XACK", "asdlc:events", "g", &published[0], &published[1]],
    );

    let dry = json(&run(&s, &["--json", "trim", "--dry-run"]));
    assert_eq!(dry["trimmed"][0]["removed"], 2);
    assert_eq!(dry["trimmed"][0]["dry_run"], true);
    assert_eq!(redis(&s, &["XLEN", "asdlc:events"]), redis::Value::Int(5));
    let o = run(&s, &["--json", "trim", "--min-age", "1h"]);
    assert_eq!(json(&o)["trimmed"][0]["removed"], 0);

    let o = run(&s, &["trim"]);
    assert_eq!(code(&o), 0);
    assert!(
        stdout(&o).contains("has not acknowledged entry"),
        "{}",
        stdout(&o)
    );
    assert_eq!(redis(&s, &["XLEN", "asdlc:events"]), redis::Value::Int(3));
    let report = json(&run(&s, &["--json", "trim"]));
    assert_eq!(report["trimmed"][0]["limit"]["kind"], "pending");
    assert_eq!(
        report["trimmed"][0]["limit"]["oldest_pending_id"],
        published[2].as_str()
    );
}

#[test]
fn tenant_streams_are_found_and_selected() {
    let s = TestServer::start();
    for t in ["acme", "globex"] {
        let o = run(
            &s,
            &[
                "--tenant",
                t,
                "publish",
                "--type",
                "task_created",
                "--session",
                "s",
            ],
        );
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    }
    let info = json(&run(&s, &["--json", "info"]));
    let streams: Vec<(&str, &str)> = info["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["stream"].as_str().unwrap(),
                s["tenant"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    assert_eq!(
        streams,
        vec![
            ("asdlc:events", "-"),
            ("tenant:{acme}:asdlc:events", "acme"),
            ("tenant:{globex}:asdlc:events", "globex"),
        ]
    );
    let one = json(&run(&s, &["--json", "--tenant", "globex", "info"]));
    assert_eq!(one["streams"].as_array().unwrap().len(), 1);
    assert_eq!(one["streams"][0]["length"], 1);
    // The shared stream is missing: healthy unless the operator requires it.
    assert_eq!(code(&run(&s, &["health"])), 0);
    assert_eq!(code(&run(&s, &["health", "--require-stream"])), 1);
}

#[test]
fn a_wrong_password_says_authentication_failed_with_its_own_status() {
    let s = TestServer::start();
    redis(&s, &["CONFIG", "SET", "requirepass", "right-one"]);
    for url in [
        format!("redis://:wrong-one@127.0.0.1:{}", s.port()),
        format!("redis://127.0.0.1:{}", s.port()),
    ] {
        for args in [&["info"][..], &["dlq", "list"], &["health"]] {
            let o = command()
                .arg("--url")
                .arg(&url)
                .args(args)
                .output()
                .unwrap();
            assert_one_line_error(&o, 6, "authentication failed");
            assert!(!stderr(&o).contains("wrong-one"), "{}", stderr(&o));
        }
    }
    let o = command()
        .arg("--url")
        .arg(format!("redis://:right-one@127.0.0.1:{}", s.port()))
        .arg("info")
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

#[test]
fn a_bad_url_names_the_accepted_schemes() {
    for url in ["http://127.0.0.1:6379", "localhost:6379"] {
        let o = command().args(["--url", url, "info"]).output().unwrap();
        assert_one_line_error(&o, 64, "redis://, rediss://");
        assert!(stderr(&o).contains("redis+cluster://"), "{}", stderr(&o));
    }
}

#[test]
fn health_of_a_fresh_deployment_is_healthy_unless_the_stream_is_required() {
    let s = TestServer::start();
    let o = run(&s, &["health"]);
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    let o = run(&s, &["health", "--require-stream"]);
    assert_eq!(code(&o), 1, "{}", stdout(&o));
    assert!(stdout(&o).contains("does not exist"), "{}", stdout(&o));
}

#[test]
fn completions_and_man_page_are_generated() {
    for (shell, mentions) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef asdlc"),
        ("fish", "complete -c asdlc"),
    ] {
        let o = command().args(["completions", shell]).output().unwrap();
        assert_eq!(code(&o), 0, "{shell}: {}", stderr(&o));
        assert!(stdout(&o).contains(mentions), "{shell}");
        assert!(stdout(&o).contains("dashboard"), "{shell}");
    }
    let o = command().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(code(&o), 64);
    // A bad REDIS_URL does not stop them: they need no server.
    let o = command()
        .env("REDIS_URL", "http://nope")
        .arg("man")
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains(".TH asdlc"), "{}", stdout(&o));
    assert!(stdout(&o).contains("dlq"));
}

#[test]
fn top_refreshes_lag_pending_and_rates() {
    let s = TestServer::start();
    create_group(&s, "slow");
    publish(&s, 7);
    read_pending(&s, "slow", "w1", 3);
    let o = run(&s, &["top", "-n", "2", "--interval", "100ms"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(out.matches("asdlc top:").count(), 2, "two frames: {out}");
    assert!(!out.contains('\x1b'), "no escape codes without a terminal");
    let row = out.lines().find(|l| l.contains("slow")).unwrap();
    let cells: Vec<&str> = row.split_whitespace().collect();
    // STREAM TENANT GROUP CONSUMERS LAG PENDING ...
    assert_eq!(
        &cells[..6],
        ["asdlc:events", "-", "slow", "1", "4", "3"],
        "{row}"
    );
    let frames: Vec<Value> = stdout(&run(&s, &["--json", "top", "-n", "2", "-d", "50ms"]))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[1]["groups"][0]["lag"], 4);
    assert_eq!(frames[1]["groups"][0]["processed_per_second"], 0.0);
}

#[test]
fn dashboard_write_needs_a_token() {
    let s = TestServer::start();
    let o = run(&s, &["dashboard", "--write", "--bind", "127.0.0.1:0"]);
    assert_one_line_error(&o, 64, "--write needs a token");
}

#[test]
fn functions_status_and_load_bring_back_a_library_the_server_lost() {
    let s = TestServer::start();
    // A fresh server has no library until someone loads it.
    let _ = redis(&s, &["FUNCTION", "FLUSH"]);
    let out = run(&s, &["--json", "functions", "status"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["loaded"], false);
    let library = v["library"].as_str().unwrap().to_owned();
    assert!(library.starts_with("asdlc_"), "{library}");
    let out = run(&s, &["functions", "load"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains(&library));
    let out = run(&s, &["functions", "status"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("loaded"));
    // The server lists it under that name.
    let listed = redis(&s, &["FUNCTION", "LIST", "LIBRARYNAME", &library]);
    assert!(
        matches!(&listed, redis::Value::Array(libs) if libs.len() == 1),
        "{listed:?}"
    );
}

#[test]
fn scheduled_lists_what_waits_and_cancels_by_key() {
    let s = TestServer::start();
    let empty = run(&s, &["scheduled", "list"]);
    assert_eq!(code(&empty), 0, "{empty:?}");
    assert!(stdout(&empty).contains("no scheduled events"));
    rt().block_on(async {
        let p = asdlc_runtime::Publisher::connect(config(&s)).await.unwrap();
        for (i, secs) in [(1, 3600), (2, 7200)] {
            let e = asdlc_runtime::AsdlcEvent::builder(
                asdlc_runtime::EventType::GateExpired,
                format!("s{i}"),
            )
            .idempotency_key(format!("gate-{i}"))
            .build()
            .unwrap();
            p.publish_after(&e, std::time::Duration::from_secs(secs))
                .await
                .unwrap();
        }
    });
    let listed = run(&s, &["scheduled", "list"]);
    assert_eq!(code(&listed), 0, "{listed:?}");
    let text = stdout(&listed);
    let first = text.find("gate-1").expect("gate-1 listed");
    let second = text.find("gate-2").expect("gate-2 listed");
    assert!(first < second, "soonest first: {text}");
    assert!(
        text.contains("gate_expired")
            && (text.contains("in 3599.") || text.contains("in 3600.0 s")),
        "{text}"
    );
    let as_json = json(&run(&s, &["--json", "scheduled", "list"]));
    assert_eq!(as_json["scheduled"][1]["key"], "gate-2");
    assert_eq!(as_json["scheduled"][1]["session_id"], "s2");

    let cancelled = run(&s, &["scheduled", "cancel", "gate-1"]);
    assert_eq!(code(&cancelled), 0, "{cancelled:?}");
    assert!(stdout(&cancelled).contains("cancelled gate-1"));
    // Gone: a second cancel finds nothing waiting.
    assert_one_line_error(&run(&s, &["scheduled", "cancel", "gate-1"]), 4, "gate-1");
    let left = json(&run(&s, &["--json", "scheduled", "list"]));
    assert_eq!(left["scheduled"].as_array().unwrap().len(), 1);
}

#[test]
fn gates_lists_each_gate_with_its_outcome() {
    let s = TestServer::start();
    assert!(stdout(&run(&s, &["gates"])).contains("no gates"));
    rt().block_on(async {
        let p = asdlc_runtime::Publisher::connect(config(&s)).await.unwrap();
        let approved = asdlc_runtime::Gate::new(&p, "gate-a");
        approved
            .request("s1", std::time::Duration::from_secs(600), "validation")
            .await
            .unwrap();
        approved.approve("alice").await.unwrap();
        asdlc_runtime::Gate::new(&p, "gate-b")
            .request("s1", std::time::Duration::from_secs(600), "validation")
            .await
            .unwrap();
    });
    let all = run(&s, &["gates"]);
    assert_eq!(code(&all), 0, "{all:?}");
    let text = stdout(&all);
    assert!(
        text.contains("gate-a") && text.contains("approved") && text.contains("alice"),
        "{text}"
    );
    assert!(
        text.contains("gate-b") && text.contains("pending"),
        "{text}"
    );
    let pending = json(&run(&s, &["--json", "gates", "--pending"]));
    let gates = pending["gates"].as_array().unwrap();
    assert_eq!(gates.len(), 1, "{pending}");
    assert_eq!(gates[0]["gate"]["id"], "gate-b");
    assert_eq!(gates[0]["gate"]["outcome"], "pending");
}
