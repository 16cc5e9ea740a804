//! `asdlc dashboard` in a real browser: headless Chromium driven over WebDriver (chromedriver,
//! from `scripts/ensure-chromium.sh`) against a real server. The page shows the numbers
//! `asdlc info --json` prints, replays a dead letter with the token (after its confirmation
//! dialog) so the group handles it, and shows the 403 a read-only dashboard answers. It saves
//! screenshots (desktop and phone sizes) under `target/dashboard-screenshots/` for a person to
//! look at.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use asdlc_runtime::{
    AsdlcEvent, BoxFuture, Config, EventConsumer, EventHandler, EventType, HandlerContext,
    HandlerResult,
};
use asdlc_testing::{TestServer, fixtures};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

mod common;
const STREAM: &str = "browser:ops";
const TOKEN: &str = "open-sesame";
const EVENTS: u64 = 6;
/// How long the page may take to show a change: it polls every 2 s.
const PAGE_WAIT: Duration = Duration::from_secs(10);

/// A child process killed (with its process group: chromedriver's browsers too) when dropped,
/// so a failing assertion leaves nothing running.
struct Running {
    child: Child,
    what: &'static str,
}

impl Drop for Running {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("stopped {}", self.what);
    }
}

fn spawn(mut cmd: Command, what: &'static str) -> Running {
    cmd.process_group(0);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    Running { child, what }
}

/// The chromedriver to use: `$ASDLC_CHROMEDRIVER`, else Debian's. Missing is a failure, not
/// a skip: `scripts/test.sh` installs it.
fn chromedriver() -> PathBuf {
    let path = std::env::var_os("ASDLC_CHROMEDRIVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromedriver"));
    assert!(
        path.is_file(),
        "no chromedriver at {} (ASDLC_CHROMEDRIVER {}): run scripts/ensure-chromium.sh, or \
         scripts/test.sh, which installs Debian's chromium and chromium-driver and sets it",
        path.display(),
        if std::env::var_os("ASDLC_CHROMEDRIVER").is_some() {
            "is set"
        } else {
            "is unset"
        },
    );
    path
}

fn chromium() -> String {
    std::env::var("ASDLC_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The `asdlc` command against `url`, with nothing configured from this process's
/// environment.
fn asdlc(url: &str) -> Command {
    let mut c = common::unconfigured();
    c.args(["--url", url, "--stream", STREAM]);
    c
}

/// `asdlc info --json`, the numbers the page must show.
fn info(url: &str) -> Value {
    let out = asdlc(url)
        .args(["info", "--json"])
        .stdin(Stdio::null())
        .output()
        .expect("run asdlc info");
    assert!(out.status.success(), "{out:?}");
    let info: Value = serde_json::from_slice(&out.stdout).expect("info prints JSON");
    let streams = info["streams"].as_array().expect("streams");
    assert_eq!(streams.len(), 1, "{info}");
    streams[0].clone()
}

/// Starts `asdlc dashboard` on a free port and returns it with the URL it prints.
fn dashboard(url: &str, extra: &[&str]) -> (Running, String) {
    let mut cmd = asdlc(url);
    cmd.args(["--json", "dashboard", "--bind", "127.0.0.1:0"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut running = spawn(cmd, "asdlc dashboard");
    let stdout = running.child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the dashboard's first line");
    let started: Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
    let page = started["url"].as_str().expect("url").to_owned();
    (running, page)
}

/// A handler that refuses everything until it is fixed, then handles (as a deploy of the fix
/// would).
struct Flaky {
    fixed: Arc<AtomicBool>,
}

impl EventHandler for Flaky {
    fn name(&self) -> &str {
        "flaky"
    }
    fn can_handle(&self, _: EventType) -> bool {
        true
    }
    fn handle<'a>(
        &'a self,
        _: &'a AsdlcEvent,
        _: &'a HandlerContext,
    ) -> BoxFuture<'a, HandlerResult> {
        let fixed = self.fixed.load(Ordering::SeqCst);
        Box::pin(async move {
            if fixed {
                HandlerResult::ok()
            } else {
                HandlerResult::permanent("the payment service refused the card")
            }
        })
    }
}

/// `EVENTS` events; group `slow` has read 2 of them (lag, pending); group `billing` runs
/// [`Flaky`] and dead-lettered every one. Returns the running `billing` consumer.
async fn leave_lag_pending_and_dead_letters(
    config: &Config,
    fixed: Arc<AtomicBool>,
) -> (EventConsumer, tokio::task::JoinHandle<()>) {
    fixtures::leave_lag_and_pending(config, None, EVENTS as usize, "order-", "w-slow").await;
    let consumer = EventConsumer::builder(config.clone(), "billing")
        .handler(Flaky { fixed })
        .configure(|o| {
            o.consumer = Some("w-billing".into());
            o.block = Duration::from_millis(50);
        })
        .build()
        .await
        .unwrap();
    let c = consumer.clone();
    let run = tokio::spawn(async move {
        c.start().await.unwrap();
    });
    fixtures::wait_for_dead_letters(&consumer, EVENTS).await;
    (consumer, run)
}

/// Chromedriver on a free port and a headless Chromium session through it.
async fn browser(profile: &Path) -> (Running, Client) {
    let port = free_port();
    let mut cmd = Command::new(chromedriver());
    cmd.arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let driver = spawn(cmd, "chromedriver");
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": chromium(),
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--hide-scrollbars",
                "--force-device-scale-factor=1",
                format!("--user-data-dir={}", profile.display()),
            ],
        },
    });
    let caps = caps.as_object().unwrap().clone();
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match ClientBuilder::new(connector.clone())
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(client) => return (driver, client),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no WebDriver session from chromedriver on port {port}: {e}"),
        }
    }
}

/// The text of the first element matching `css`, read in the page (so a re-render between
/// finding and reading cannot make the element stale); `None` when there is none.
async fn text(c: &Client, css: &str) -> Option<String> {
    let v = c
        .execute(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
            vec![json!(css)],
        )
        .await
        .expect("run a script in the page");
    v.as_str().map(|s| s.trim().to_owned())
}

/// Waits until the element matching `css` shows `want`; panics with what it showed.
async fn wait_text(c: &Client, css: &str, want: &str) {
    let deadline = Instant::now() + PAGE_WAIT;
    loop {
        let shown = text(c, css).await;
        if shown.as_deref() == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "`{css}` shows {shown:?}, not {want:?}; page says: {:?}",
            text(c, "#view").await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the element matching `css` contains `part`; returns its text.
async fn wait_contains(c: &Client, css: &str, part: &str) -> String {
    let deadline = Instant::now() + PAGE_WAIT;
    loop {
        if let Some(shown) = text(c, css).await
            && shown.contains(part)
        {
            return shown;
        }
        assert!(
            Instant::now() < deadline,
            "`{css}` never contained {part:?}; it shows {:?}",
            text(c, css).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Clicks the element matching `css` as a person would (a real pointer click), retrying
/// while the page re-renders under it.
async fn click(c: &Client, css: &str) {
    let deadline = Instant::now() + PAGE_WAIT;
    loop {
        let result = match c.find(Locator::Css(css)).await {
            Ok(e) => e.click().await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => return,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot click `{css}`: {e}"),
        }
    }
}

/// Clicks `css`, checks the confirmation dialog asks `question`, and confirms.
async fn click_and_confirm(c: &Client, css: &str, question: &str) {
    click(c, css).await;
    wait_contains(c, "#confirm-text", question).await;
    let shown = c
        .find(Locator::Css("#confirm"))
        .await
        .unwrap()
        .is_displayed()
        .await
        .unwrap();
    assert!(shown, "the confirmation dialog is visible");
    click(c, "#confirm-yes").await;
}

fn screenshots() -> PathBuf {
    // CARGO_MANIFEST_DIR is asdlc-cli/; the workspace's target/ is beside it.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("target/dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("a screenshot");
    let path = screenshots().join(format!("{name}.png"));
    std::fs::write(&path, png).unwrap();
    eprintln!("saved {}", path.display());
}

/// Opens `hash` of the page and waits until it has loaded it.
async fn open(c: &Client, page: &str, hash: &str) {
    c.goto(&format!("{page}{hash}"))
        .await
        .expect("open the page");
    let deadline = Instant::now() + PAGE_WAIT;
    while text(c, "#updated").await.as_deref() == Some("never") {
        assert!(
            Instant::now() < deadline,
            "{page}{hash} never loaded: {:?}",
            text(c, "#view").await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn group<'a>(stream: &'a Value, name: &str) -> &'a Value {
    stream["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == name)
        .unwrap_or_else(|| panic!("no group {name} in {stream}"))
}

/// The overview and the group page show what `asdlc info --json` says.
async fn page_shows_what_info_says(c: &Client, page: &str, truth: &Value) {
    open(c, page, "#/").await;
    let slow = group(truth, "slow");
    let billing = group(truth, "billing");
    assert_eq!(slow["lag"], EVENTS - 2, "{truth}");
    assert_eq!(slow["pending"], 2);
    assert_eq!(truth["dead_letters"], EVENTS);
    let total_lag = slow["lag"].as_u64().unwrap() + billing["lag"].as_u64().unwrap();
    let total_pending = slow["pending"].as_u64().unwrap() + billing["pending"].as_u64().unwrap();

    let stream = format!("section.stream[data-stream=\"{STREAM}\"]");
    wait_text(
        c,
        &format!("{stream} [data-k=length]"),
        &truth["length"].to_string(),
    )
    .await;
    for g in [slow, billing] {
        let row = format!(
            "{stream} tr[data-group=\"{}\"]",
            g["name"].as_str().unwrap()
        );
        wait_text(c, &format!("{row} td[data-k=lag]"), &g["lag"].to_string()).await;
        wait_text(
            c,
            &format!("{row} td[data-k=pending]"),
            &g["pending"].to_string(),
        )
        .await;
        wait_text(
            c,
            &format!("{row} td[data-k=consumers]"),
            &g["consumers"].as_array().unwrap().len().to_string(),
        )
        .await;
    }
    wait_text(c, "#total-lag", &total_lag.to_string()).await;
    wait_text(c, "#total-pending", &total_pending.to_string()).await;
    wait_text(c, "#total-dead-letters", &truth["dead_letters"].to_string()).await;
    wait_text(c, "#nav-dead-count", &truth["dead_letters"].to_string()).await;
    // The URL is shown without its secret parts (TestServer's has none to hide, but the
    // shape is the redacted one).
    assert!(text(c, "#server").await.unwrap().contains("127.0.0.1"));
    screenshot(c, "overview").await;

    // The group page: slow's two pending entries, decoded.
    click(
        c,
        &format!("{stream} tr[data-group=\"slow\"] td[data-k=group] a"),
    )
    .await;
    wait_contains(c, "#group-facts", &format!("lag {}", slow["lag"])).await;
    wait_contains(c, "#group-facts", "pending 2").await;
    wait_text(
        c,
        "#pending tbody tr:nth-child(2) td[data-k=consumer]",
        "w-slow",
    )
    .await;
    wait_text(
        c,
        "#pending tbody tr:first-child td[data-k=type]",
        "task_created",
    )
    .await;
    wait_text(
        c,
        "#pending tbody tr:first-child td[data-k=session]",
        "order-0",
    )
    .await;
    wait_text(
        c,
        "#recent tbody tr:first-child td[data-k=session]",
        &format!("order-{}", EVENTS - 1),
    )
    .await;
    screenshot(c, "group").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_info_replays_with_the_token_and_shows_403_without() {
    let started = Instant::now();
    let driver_path = chromedriver();
    let server = TestServer::start();
    let url = server.url();
    let config = Config {
        stream: STREAM.to_owned(),
        ..Config::new(&url).unwrap()
    };
    let fixed = Arc::new(AtomicBool::new(false));
    let (billing, billing_run) = leave_lag_pending_and_dead_letters(&config, fixed.clone()).await;
    let truth = info(&url);

    let (_writable, page) = dashboard(&url, &["--write", "--token", TOKEN]);
    let (_read_only, read_only_page) = dashboard(&url, &[]);
    let profile = tempfile::tempdir().unwrap();
    eprintln!("using {}", driver_path.display());
    let (driver, c) = browser(profile.path()).await;
    c.set_window_size(1280, 900).await.unwrap();

    page_shows_what_info_says(&c, &page, &truth).await;

    // Dead letters: all of them, with their reason.
    open(&c, &page, "#/dead").await;
    wait_text(&c, "#dead-total", &EVENTS.to_string()).await;
    let rows = c
        .find_all(Locator::Css("#dead-letters tbody tr"))
        .await
        .unwrap();
    assert_eq!(rows.len() as u64, EVENTS);
    let reason = "#dead-letters tbody tr:first-child td[data-k=reason]";
    wait_contains(&c, reason, "permanent failure").await;
    wait_text(
        &c,
        &format!("{reason} [data-k=error]"),
        "the payment service refused the card",
    )
    .await;
    let first = text(&c, "#dead-letters tbody tr:first-child td[data-k=id]")
        .await
        .unwrap();
    screenshot(&c, "dead-letters").await;

    // Without the token, the writable dashboard refuses and says so.
    assert!(
        c.find(Locator::Css("#token-box"))
            .await
            .unwrap()
            .is_displayed()
            .await
            .unwrap(),
        "a writable dashboard asks for the token"
    );
    let row = format!("#dead-letters tr[data-dead-id=\"{first}\"]");
    click_and_confirm(&c, &format!("{row} button.replay"), &first).await;
    wait_contains(&c, "#message.error", "403").await;
    wait_contains(&c, "#message.error", "token").await;
    assert_eq!(info(&url)["dead_letters"], EVENTS);

    // The fix is deployed; with the token the replay goes through and billing handles it.
    fixed.store(true, Ordering::SeqCst);
    c.find(Locator::Css("#token"))
        .await
        .unwrap()
        .send_keys(TOKEN)
        .await
        .unwrap();
    click_and_confirm(&c, &format!("{row} button.replay"), &first).await;
    wait_contains(&c, "#message.ok", &format!("Replayed {first}")).await;
    wait_text(&c, "#dead-total", &(EVENTS - 1).to_string()).await;
    assert!(
        text(&c, &row).await.is_none(),
        "the replayed letter left the list"
    );
    let deadline = Instant::now() + PAGE_WAIT;
    while billing.stats().processed < 1 {
        assert!(Instant::now() < deadline, "{:?}", billing.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = info(&url);
    assert_eq!(after["dead_letters"], EVENTS - 1, "{after}");
    assert_eq!(group(&after, "billing")["pending"], 0, "{after}");
    assert_eq!(group(&after, "billing")["lag"], 0, "{after}");
    screenshot(&c, "dead-letters-replayed").await;

    // The next one goes back to billing alone.
    let next = text(&c, "#dead-letters tbody tr:first-child td[data-k=id]")
        .await
        .unwrap();
    let row = format!("#dead-letters tr[data-dead-id=\"{next}\"]");
    click_and_confirm(
        &c,
        &format!("{row} button.replay-group"),
        "for group billing only",
    )
    .await;
    wait_contains(&c, "#message.ok", "for group billing only").await;
    wait_text(&c, "#dead-total", &(EVENTS - 2).to_string()).await;
    let deadline = Instant::now() + PAGE_WAIT;
    while billing.stats().processed < 2 {
        assert!(Instant::now() < deadline, "{:?}", billing.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // One letter in full.
    open(&c, &page, "#/dead").await;
    click(&c, "#dead-letters tbody tr:first-child td[data-k=id] a").await;
    wait_text(&c, "dd[data-k=group]", "billing").await;
    wait_text(&c, "dd[data-k=handler]", "flaky").await;
    screenshot(&c, "dead-letter").await;

    // A dashboard started without --write refuses the same click, token or not.
    open(&c, &read_only_page, "#/dead").await;
    wait_text(&c, "#mode", "read-only").await;
    wait_contains(&c, "#read-only-note", "refused").await;
    wait_text(&c, "#dead-total", &(EVENTS - 2).to_string()).await;
    click_and_confirm(
        &c,
        "#dead-letters tbody tr:first-child button.purge",
        "for good",
    )
    .await;
    let refused = wait_contains(&c, "#message.error", "403").await;
    assert!(refused.contains("read-only"), "{refused}");
    assert_eq!(info(&url)["dead_letters"], EVENTS - 2);
    screenshot(&c, "read-only-refused").await;

    // Mounted in an application's own router under /ops, the page finds its assets and API.
    let mounted = asdlc_dashboard::Dashboard::start(
        config.clone(),
        asdlc_dashboard::DashboardOptions::default(),
    )
    .await
    .unwrap();
    let app = axum::Router::new().nest("/ops", asdlc_dashboard::router(mounted.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_url = format!("http://{}", listener.local_addr().unwrap());
    let app_task = tokio::spawn(async move { axum::serve(listener, app).await });
    open(&c, &app_url, "/ops#/dead").await;
    wait_text(&c, "#dead-total", &(EVENTS - 2).to_string()).await;
    app_task.abort();
    mounted.shutdown().await;

    // The same pages at a phone's size.
    c.set_window_size(390, 844).await.unwrap();
    open(&c, &page, "#/").await;
    wait_text(&c, "#total-dead-letters", &(EVENTS - 2).to_string()).await;
    screenshot(&c, "phone-overview").await;
    open(
        &c,
        &page,
        &format!("#/group?stream={}&group=slow", STREAM.replace(':', "%3A")),
    )
    .await;
    wait_contains(&c, "#group-facts", "pending 2").await;
    screenshot(&c, "phone-group").await;
    open(&c, &page, "#/dead").await;
    wait_text(&c, "#dead-total", &(EVENTS - 2).to_string()).await;
    screenshot(&c, "phone-dead-letters").await;

    c.close().await.expect("end the browser session");
    drop(driver);
    billing.stop();
    billing_run.await.unwrap();
    eprintln!("browser test took {:.1?}", started.elapsed());
}
