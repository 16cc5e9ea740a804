//! FastStream's batch subscriber (Python, from PyPI) on the same server and the same number
//! of events, for `--faststream`: the one other framework the performance issue asks the
//! consumer to be compared with. Its no-op handler takes batches of 100 from a consumer group
//! and FastStream acknowledges each batch; nothing is deduplicated or leased, so it does less
//! than asdlc's full protocol. The venv is made once, under `target/bench-venv`.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::meter::{Meter, Sample};
use crate::{Bench, EVENT_BYTES};

/// The version measured (the figures in the README name it).
const FASTSTREAM: &str = "faststream[redis]==0.7.8";
const SCRIPT: &str = include_str!("faststream_batch.py");

/// The venv's python, with FastStream installed, and the script; made on first use.
fn python() -> &'static Result<(PathBuf, PathBuf), String> {
    static PYTHON: OnceLock<Result<(PathBuf, PathBuf), String>> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-venv");
        let python = venv.join("bin/python");
        let run = |cmd: &mut std::process::Command| match cmd.status() {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(format!("{cmd:?} exited with {s}")),
            Err(e) => Err(format!("{cmd:?}: {e}")),
        };
        let has = |python: &PathBuf| {
            std::process::Command::new(python)
                .args(["-c", "import faststream.redis"])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !has(&python) {
            eprintln!("making a venv with {FASTSTREAM} in {}...", venv.display());
            run(std::process::Command::new("python3")
                .arg("-m")
                .arg("venv")
                .arg(&venv))?;
            run(std::process::Command::new(&python)
                .args(["-m", "pip", "install", "-q", FASTSTREAM]))?;
        }
        let script = venv.join("faststream_batch.py");
        std::fs::write(&script, SCRIPT).map_err(|e| format!("{}: {e}", script.display()))?;
        Ok((python, script))
    })
}

/// Makes the venv before the first part runs, so a machine without PyPI says so at once.
pub(crate) fn prepare() -> Result<(), String> {
    python().as_ref().map(|_| ()).map_err(Clone::clone)
}

/// One run: FastStream's subscriber through every event of a fresh stream.
pub(crate) async fn batch(b: &Bench) -> Sample {
    let (python, script) = match python() {
        Ok(p) => p,
        Err(e) => panic!("--faststream: cannot set up FastStream: {e}"),
    };
    let n = b.args.events;
    let mut child = tokio::process::Command::new(python)
        .arg(script)
        .arg(b.server.redis_url().expose())
        .arg(b.fresh_stream("faststream"))
        .arg(n.to_string())
        .arg(EVENT_BYTES.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the FastStream script");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let ready = lines.next_line().await.expect("read the script");
    assert_eq!(ready.as_deref(), Some("ready"), "the FastStream script");
    let t = Meter::start(b).await;
    stdin.write_all(b"go\n").await.expect("start the script");
    stdin.flush().await.expect("start the script");
    let cpu: f64 = lines
        .next_line()
        .await
        .expect("read the script")
        .and_then(|l| l.trim().parse().ok())
        .expect("the script's CPU seconds");
    let mut sample = t.stop(b, n).await;
    // This process waited: the client's CPU is the script's (its context switches are not
    // counted).
    sample.client_us = cpu * 1e6 / n as f64;
    sample.switches = f64::NAN;
    let _ = child.wait().await;
    sample
}
