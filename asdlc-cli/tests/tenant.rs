//! `asdlc tenant provision|revoke|sync` against a real server (and a replica of it): the user
//! it creates reaches its tenant's keys and nothing else, on every node.

use std::io::Write;
use std::process::{Output, Stdio};

use asdlc_testing::TestServer;
use serde_json::Value;

mod common;

fn run(server: &TestServer, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = common::unconfigured()
        .arg("--url")
        .arg(server.url())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run asdlc");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("write stdin");
    }
    drop(input);
    child.wait_with_output().expect("asdlc output")
}

/// Asserts that the command exited 0, showing what it wrote to stderr when not.
fn assert_ok(out: &Output) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a command that must succeed and returns the JSON it printed.
fn run_json(server: &TestServer, args: &[&str]) -> Value {
    let out = run(server, args, None);
    assert_ok(&out);
    serde_json::from_slice(&out.stdout).unwrap()
}

fn as_user(url: &str, args: &[&str]) -> redis::RedisResult<redis::Value> {
    asdlc_testing::fixtures::raw_command(url, args)
}

#[test]
fn provisioned_tenant_users_reach_only_their_keys_until_revoked() {
    let s = TestServer::start();
    let v = run_json(&s, &["--json", "tenant", "provision", "acme"]);
    assert_eq!(v["username"], "asdlc-tenant-acme");
    assert_eq!(v["keys"], "tenant:{acme}:*");
    assert_eq!(v["password"].as_str().unwrap().len(), 64);
    let url = v["url"].as_str().unwrap();
    as_user(url, &["XADD", "tenant:{acme}:asdlc:events", "*", "f", "v"]).unwrap();
    let err = as_user(
        url,
        &["XADD", "tenant:{globex}:asdlc:events", "*", "f", "v"],
    )
    .unwrap_err();
    assert_eq!(err.code(), Some("NOPERM"), "{err}");
    let err = as_user(url, &["SCAN", "0"]).unwrap_err();
    assert_eq!(err.code(), Some("NOPERM"), "{err}");

    // A password from stdin, and an extra command.
    let out = run(
        &s,
        &[
            "tenant",
            "provision",
            "globex",
            "--password-stdin",
            "--allow-command",
            "zadd",
        ],
        Some("correct-horse-battery-staple\n"),
    );
    assert_ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("password: correct-horse-battery-staple"),
        "{text}"
    );
    let globex = format!(
        "redis://asdlc-tenant-globex:correct-horse-battery-staple@127.0.0.1:{}",
        s.port()
    );
    as_user(&globex, &["ZADD", "tenant:{globex}:x", "1", "a"]).unwrap();

    let out = run(&s, &["tenant", "revoke", "acme"], None);
    assert_eq!(out.status.code(), Some(0));
    assert!(as_user(url, &["PING"]).is_err(), "the user is gone");
    let out = run(&s, &["tenant", "revoke", "acme"], None);
    assert_eq!(out.status.code(), Some(4), "nothing left to revoke");
    let out = run(&s, &["tenant", "provision", "Not Valid"], None);
    assert_eq!(out.status.code(), Some(64));
    let out = run(
        &s,
        &["tenant", "provision", "x", "--password-stdin"],
        Some("short\n"),
    );
    assert_eq!(out.status.code(), Some(64));
}

fn on(port: u16, args: &[&str]) -> redis::Value {
    as_user(&format!("redis://127.0.0.1:{port}"), args).unwrap()
}

fn has_user(port: u16, user: &str) -> bool {
    on(port, &["ACL", "GETUSER", user]) != redis::Value::Nil
}

#[test]
fn tenant_sync_gives_a_replica_back_the_users_it_lost_and_deletes_revoked_ones() {
    let master = TestServer::start();
    let replica = TestServer::builder()
        .arg("--replicaof", format!("127.0.0.1 {}", master.port()))
        .start();
    let replica_addr = format!("127.0.0.1:{}", replica.port());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !format!("{:?}", on(master.port(), &["ROLE"])).contains(&replica.port().to_string()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the replica never connected"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    // Provisioning reaches the replica that ROLE lists, not only the server of the URL.
    let v = run_json(&master, &["--json", "tenant", "provision", "acme"]);
    assert_eq!(v["nodes"].as_array().unwrap().len(), 2, "{v}");
    assert!(v["nodes"][1] == replica_addr.as_str(), "{v}");
    assert!(has_user(replica.port(), "asdlc-tenant-acme"));
    let password = v["password"].as_str().unwrap().to_owned();
    assert_eq!(
        run(&master, &["tenant", "provision", "globex"], None)
            .status
            .code(),
        Some(0)
    );
    assert_eq!(
        run(&master, &["tenant", "revoke", "globex"], None)
            .status
            .code(),
        Some(0)
    );
    assert!(!has_user(replica.port(), "asdlc-tenant-globex"));

    // The replica loses acme (as a restart without an ACL file does) and gets globex back
    // (as from a stale ACL file); a user asdlc never recorded sits on the master.
    on(replica.port(), &["ACL", "DELUSER", "asdlc-tenant-acme"]);
    on(
        replica.port(),
        &[
            "ACL",
            "SETUSER",
            "asdlc-tenant-globex",
            "on",
            "nopass",
            "+@all",
        ],
    );
    on(
        master.port(),
        &["ACL", "SETUSER", "asdlc-tenant-legacy", "off"],
    );

    let v = run_json(&master, &["--json", "tenant", "sync"]);
    let mut changes: Vec<(String, String, String)> = v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["node"].as_str().unwrap().to_owned(),
                c["user"].as_str().unwrap().to_owned(),
                c["change"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    changes.sort();
    let master_addr = format!("127.0.0.1:{}", master.port());
    let mut expected = vec![
        (
            master_addr.clone(),
            "asdlc-tenant-acme".to_owned(),
            "unchanged".to_owned(),
        ),
        (
            master_addr.clone(),
            "asdlc-tenant-legacy".to_owned(),
            "unrecorded".to_owned(),
        ),
        (
            replica_addr.clone(),
            "asdlc-tenant-acme".to_owned(),
            "restored".to_owned(),
        ),
        (
            replica_addr.clone(),
            "asdlc-tenant-globex".to_owned(),
            "deleted".to_owned(),
        ),
    ];
    expected.sort();
    assert_eq!(changes, expected, "{v}");
    assert!(v["unreached"].as_array().unwrap().is_empty());

    // acme can log in on the replica with its password again; globex cannot; legacy stays.
    let acme_on_replica = format!(
        "redis://asdlc-tenant-acme:{password}@127.0.0.1:{}",
        replica.port()
    );
    as_user(&acme_on_replica, &["PING"]).unwrap();
    assert!(!has_user(replica.port(), "asdlc-tenant-globex"));
    assert!(has_user(master.port(), "asdlc-tenant-legacy"));

    // A second sync finds nothing to do.
    let out = run(&master, &["tenant", "sync"], None);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("2 node(s) reached, 0 unreached: 0 restored, 0 updated, 2 unchanged"),
        "{text}"
    );
}
