//! Talking to a server process from outside: is it ready, stop it, kill it, read its log.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// How many lines of a server's log an error shows.
const LOG_TAIL_LINES: usize = 20;

pub(crate) enum Probe {
    /// `PING` answered and the data is loaded.
    Ready,
    /// The server is up but wants a password (one given through [`TestServerBuilder::arg`](crate::TestServerBuilder::arg)).
    NeedsPassword,
    /// Not ready: why.
    NotYet(String),
}

/// Ready means: answers `PING` (a server still loading its append-only file answers `LOADING`)
/// and `INFO persistence` says it is not loading.
pub(crate) fn probe(port: u16) -> Probe {
    let attempt = || -> redis::RedisResult<Probe> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
        let mut con = client.get_connection_with_timeout(Duration::from_millis(500))?;
        con.set_read_timeout(Some(Duration::from_secs(1)))?;
        let pong: String = redis::cmd("PING").query(&mut con)?;
        if pong != "PONG" {
            return Ok(Probe::NotYet(format!("PING answered {pong:?}")));
        }
        let info: String = redis::cmd("INFO").arg("persistence").query(&mut con)?;
        if info.lines().any(|l| l.trim() == "loading:1") {
            return Ok(Probe::NotYet("still loading its data".to_owned()));
        }
        Ok(Probe::Ready)
    };
    match attempt() {
        Ok(probe) => probe,
        Err(e) if e.code() == Some("NOAUTH") => Probe::NeedsPassword,
        Err(e) => Probe::NotYet(e.to_string()),
    }
}

/// Whether the server logged, after byte `from` of its log, that it has loaded its data and
/// accepts connections (Redis 7 and Valkey both write this line).
pub(crate) fn logged_ready(log_file: &Path, from: u64) -> bool {
    let mut text = String::new();
    File::open(log_file)
        .and_then(|mut f| {
            f.seek(SeekFrom::Start(from))?;
            f.read_to_string(&mut text)
        })
        .is_ok_and(|_| text.contains("Ready to accept connections"))
}

/// Asks the server to shut down, as `SIGTERM` would. Returns `false` if it refused (it wants a
/// password, say); the caller then signals it.
pub(crate) fn send_shutdown(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(
        &(Ipv4Addr::LOCALHOST, port).into(),
        Duration::from_millis(500),
    ) else {
        return false;
    };
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    if stream.write_all(b"*1\r\n$8\r\nSHUTDOWN\r\n").is_err() {
        return false;
    }
    // On success the server closes the connection without a reply; an error reply means it
    // refused.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 256];
    !matches!(stream.read(&mut buf), Ok(n) if n > 0 && buf[0] == b'-')
}

/// Sends `SIGTERM` through `kill(1)`, since this crate has no unsafe code to call `kill(2)`.
pub(crate) fn send_sigterm(pid: u32) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

pub(crate) fn kill_and_reap(child: &mut Child) {
    // `kill` fails only if the process has already exited; `wait` reaps it either way.
    let _ = child.kill();
    let _ = child.wait();
}

pub(crate) fn is_bind_failure(log: &str) -> bool {
    log.contains("Address already in use") || log.contains("Could not create server TCP listening")
}

pub(crate) fn describe_exit(status: ExitStatus) -> String {
    format!("the server exited ({status})")
}

pub(crate) fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The last lines of `path` written after byte `from`.
pub(crate) fn read_tail(path: &Path, from: u64) -> String {
    let mut text = Vec::new();
    if let Ok(mut file) = File::open(path)
        && file.seek(SeekFrom::Start(from)).is_ok()
    {
        let _ = file.read_to_end(&mut text);
    }
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}
