//! `asdlc tenant provision|revoke` against a real server: the user it creates reaches its
//! tenant's keys and nothing else.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use asdlc_runtime::testing::TestServer;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_asdlc");

fn run(server: &TestServer, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(BIN)
        .env_remove("REDIS_URL")
        .env_remove("ASDLC_STREAM")
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

fn as_user(url: &str, args: &[&str]) -> redis::RedisResult<redis::Value> {
    let mut conn = redis::Client::open(url)?.get_connection()?;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(&mut conn)
}

#[test]
fn provisioned_tenant_users_reach_only_their_keys_until_revoked() {
    let s = TestServer::start();
    let out = run(&s, &["--json", "tenant", "provision", "acme"], None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
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
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
    assert_eq!(out.status.code(), Some(2));
    let out = run(
        &s,
        &["tenant", "provision", "x", "--password-stdin"],
        Some("short\n"),
    );
    assert_eq!(out.status.code(), Some(2));
}
