//! The test harness itself: real servers on free loopback ports, restarts, crashes, cleanup.

use std::net::TcpStream;

use asdlc_testing::{TestServer, TestServerError, server_binary};

fn set(server: &TestServer, key: &str, value: &str) {
    let mut con = server.client().get_connection().unwrap();
    redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query::<()>(&mut con)
        .unwrap();
}

fn get(server: &TestServer, key: &str) -> Option<String> {
    let mut con = server.client().get_connection().unwrap();
    redis::cmd("GET").arg(key).query(&mut con).unwrap()
}

#[test]
fn two_servers_run_at_once_on_different_ports() {
    let a = TestServer::start();
    let b = TestServer::start();
    assert_ne!(a.port(), b.port());
    assert_ne!(a.data_dir(), b.data_dir());

    set(&a, "owner", "a");
    set(&b, "owner", "b");
    assert_eq!(get(&a, "owner").as_deref(), Some("a"));
    assert_eq!(get(&b, "owner").as_deref(), Some("b"));
    assert_eq!(a.url(), format!("redis://127.0.0.1:{}", a.port()));
    assert_eq!(a.redis_url().expose(), a.url());
}

#[test]
fn restart_keeps_data_through_the_append_only_file() {
    let mut server = TestServer::start();
    let port = server.port();
    set(&server, "kept", "yes");

    server.restart();

    assert_eq!(server.port(), port);
    assert!(server.is_running());
    assert_eq!(get(&server, "kept").as_deref(), Some("yes"));
}

#[test]
fn kill_then_restart_keeps_every_acknowledged_write() {
    let mut server = TestServer::start();
    let mut con = server.client().get_connection().unwrap();
    for i in 0..100 {
        redis::cmd("XADD")
            .arg("events")
            .arg("*")
            .arg("n")
            .arg(i)
            .query::<String>(&mut con)
            .unwrap();
    }
    drop(con);

    server.kill();
    assert!(!server.is_running());
    assert!(TcpStream::connect(("127.0.0.1", server.port())).is_err());
    server.restart();

    let mut con = server.client().get_connection().unwrap();
    let len: usize = redis::cmd("XLEN").arg("events").query(&mut con).unwrap();
    assert_eq!(len, 100);
}

#[test]
fn restart_waits_for_a_port_held_briefly_by_someone_else() {
    let mut server = TestServer::start();
    set(&server, "k", "v");
    server.kill();
    let squatter = std::net::TcpListener::bind(("127.0.0.1", server.port())).unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(squatter);
    });

    server.try_restart().unwrap();

    release.join().unwrap();
    assert_eq!(get(&server, "k").as_deref(), Some("v"));
}

#[test]
fn stop_is_graceful_and_keeps_the_data_dir() {
    let mut server = TestServer::start();
    set(&server, "k", "v");
    let dir = server.data_dir().to_owned();

    server.stop();

    assert!(!server.is_running());
    assert!(dir.join("server.log").exists());
    let log = std::fs::read_to_string(dir.join("server.log")).unwrap();
    assert!(
        log.contains("ready to exit") || log.contains("Bye bye"),
        "the server did not shut down gracefully:\n{log}"
    );
    server.stop(); // stopping a stopped server does nothing
    server.restart();
    assert_eq!(get(&server, "k").as_deref(), Some("v"));
}

#[test]
fn a_password_protected_server_starts_stops_and_restarts() {
    let mut server = TestServer::builder().arg("--requirepass", "s3cret").start();
    let url = format!("redis://:s3cret@127.0.0.1:{}", server.port());
    let mut con = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query::<()>(&mut con)
        .unwrap();
    drop(con);

    let started = std::time::Instant::now();
    server.stop();
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let log = std::fs::read_to_string(server.data_dir().join("server.log")).unwrap();
    assert!(log.contains("SIGTERM"), "not stopped by SIGTERM:\n{log}");

    server.restart();
    let mut con = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let v: String = redis::cmd("GET").arg("k").query(&mut con).unwrap();
    assert_eq!(v, "v");
}

#[test]
fn without_aof_a_restart_starts_empty() {
    let mut server = TestServer::builder().aof(false).start();
    set(&server, "gone", "soon");

    server.restart();

    assert_eq!(get(&server, "gone"), None);
}

#[test]
fn dropping_the_server_frees_its_port_and_data_dir() {
    let server = TestServer::start();
    let port = server.port();
    let dir = server.data_dir().to_owned();
    assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());

    drop(server);

    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    assert!(!dir.exists());
}

#[test]
fn extra_arguments_reach_the_server() {
    let server = TestServer::builder()
        .arg("--maxmemory", "64mb")
        .arg("--maxmemory-policy", "noeviction")
        .start();
    let mut con = server.client().get_connection().unwrap();
    let maxmemory: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory")
        .query(&mut con)
        .unwrap();
    assert_eq!(maxmemory, ["maxmemory", &(64 * 1024 * 1024).to_string()]);
    let aof: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("appendfsync")
        .query(&mut con)
        .unwrap();
    assert_eq!(aof, ["appendfsync", "always"]);
}

#[test]
fn a_missing_binary_is_a_no_binary_error_that_says_how_to_get_one() {
    let err = TestServer::builder()
        .binary("/nonexistent/asdlc/redis-server")
        .try_start()
        .unwrap_err();

    assert!(matches!(err, TestServerError::NoBinary { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("/nonexistent/asdlc/redis-server"),
        "{message}"
    );
    assert!(message.contains("scripts/ensure-redis.sh"), "{message}");
    assert!(message.contains("ASDLC_REDIS_SERVER"), "{message}");
}

#[test]
fn a_file_that_is_not_executable_is_a_no_binary_error() {
    let file = tempfile::NamedTempFile::new().unwrap();

    let err = TestServer::builder()
        .binary(file.path())
        .try_start()
        .unwrap_err();

    assert!(matches!(err, TestServerError::NoBinary { .. }), "{err:?}");
    assert!(err.to_string().contains("not an executable"), "{err}");
}

#[test]
fn a_server_that_exits_at_once_reports_its_output() {
    let err = TestServer::builder()
        .arg("--no-such-option", "1")
        .try_start()
        .unwrap_err();

    assert!(matches!(err, TestServerError::NotReady { .. }), "{err:?}");
    assert!(err.to_string().contains("no-such-option"), "{err}");
}

#[test]
fn the_binary_and_its_version_are_reported() {
    let server = TestServer::start();

    assert_eq!(server.binary(), server_binary().unwrap());
    let version = server.server_version();
    let major: u32 = version.split('.').next().unwrap().parse().unwrap();
    assert!(major >= 7, "unexpected version {version}");
}

#[tokio::test]
async fn async_tests_get_a_multiplexed_connection() {
    let server = TestServer::start();
    let mut con = server.connection().await;

    let _: () = redis::cmd("SET")
        .arg("async")
        .arg("ok")
        .query_async(&mut con)
        .await
        .unwrap();
    let value: String = redis::cmd("GET")
        .arg("async")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(value, "ok");

    // The harness is synchronous: a restart inside an async test blocks for a few milliseconds,
    // and the old multiplexed connection is gone with the old process.
    let mut server = server;
    server.restart();
    let mut con = server.connection().await;
    let value: String = redis::cmd("GET")
        .arg("async")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(value, "ok");
}

#[test]
fn many_servers_start_in_parallel() {
    let handles: Vec<_> = (0..8)
        .map(|i| {
            std::thread::spawn(move || {
                let mut server = TestServer::start();
                set(&server, "i", &i.to_string());
                server.restart();
                assert_eq!(get(&server, "i"), Some(i.to_string()));
                server.port()
            })
        })
        .collect();
    let mut ports: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 8);
}
