//! The dashboard's JSON API against a real server and a real cluster: the numbers match
//! `get_stream_info`, pending entries are decoded, mutations need the token, the `Host` check
//! holds, no password shows, and the tenant filter selects one tenant's stream.

use std::time::{Duration, Instant};

use asdlc_dashboard::{Dashboard, DashboardOptions, hosts_for, router};
use asdlc_runtime::{Config, RedisConnection, RedisUrl, Tenancy, TenantId, get_stream_info};
use asdlc_testing::{TestCluster, TestServer, fixtures};
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt;

const HOST: &str = "dash.test:80";
const TOKEN: &str = "let-me-write";

/// On stream `config.stream` (or a tenant's): `n` events, group `slow` reading 2 of them
/// (lag n-2, pending 2) and group `bad` dead-lettering every one.
async fn leave_lag_pending_and_dead_letters(config: &Config, tenant: Option<&TenantId>, n: usize) {
    fixtures::leave_lag_and_pending(config, tenant, n, "session-", "w1").await;
    fixtures::dead_letter_all(config, tenant, "bad", "w-bad", n as u64).await;
}

async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, HOST);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 24)
        .await
        .unwrap();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, value)
}

async fn post(
    app: &axum::Router,
    uri: &str,
    token: Option<&str>,
    body: Value,
) -> (StatusCode, Value) {
    call(app, "POST", uri, token, Some(body)).await
}

async fn dead_letters(conn: &mut RedisConnection, stream: &str) -> u64 {
    asdlc_runtime::deadletter::count(conn, stream)
        .await
        .unwrap()
}

fn options(token: Option<&str>) -> DashboardOptions {
    let mut options = DashboardOptions::default()
        .with_allowed_hosts([HOST])
        .with_sample_every(Duration::from_millis(200));
    options.write_token = token.map(str::to_owned);
    options
}

/// The scenario, wherever it runs: overview, group page, dead letters, replay with and
/// without the token.
async fn dashboard_shows_and_replays(config: Config) {
    let stream = config.stream.clone();
    leave_lag_pending_and_dead_letters(&config, None, 5).await;
    let mut conn = RedisConnection::connect(&config.redis_url).await.unwrap();
    let truth = get_stream_info(&mut conn, &stream).await.unwrap();

    let d = Dashboard::start(config.clone(), options(Some(TOKEN)))
        .await
        .unwrap();
    let app = router(d.clone());

    let (status, o) = call(&app, "GET", "/api/overview", None, None).await;
    assert_eq!(status, StatusCode::OK, "{o}");
    let shown = &o["streams"][0];
    assert_eq!(shown["stream"], stream.as_str());
    assert_eq!(shown["length"], truth.length);
    assert_eq!(shown["dead_letters"], 5);
    let slow = truth.group("slow").unwrap();
    let shown_slow = shown["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "slow")
        .unwrap();
    assert_eq!(shown_slow["lag"], 3);
    assert_eq!(shown_slow["pending"], slow.pending);
    assert_eq!(o["totals"]["pending"], 2);
    assert_eq!(o["totals"]["dead_letters"], 5);
    assert_eq!(o["writable"], true);

    let q = |s: &str| s.replace('{', "%7B").replace('}', "%7D");
    let (status, g) = call(
        &app,
        "GET",
        &format!("/api/group?stream={}&group=slow", q(&stream)),
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{g}");
    assert_eq!(g["pending"].as_array().unwrap().len(), 2);
    assert_eq!(g["pending"][0]["consumer"], "w1");
    assert_eq!(g["pending"][0]["event"]["event_type"], "task_created");
    assert_eq!(g["pending"][0]["event"]["session_id"], "session-0");
    assert_eq!(g["recent"][0]["event"]["session_id"], "session-4");

    let (_, list) = call(&app, "GET", "/api/dead-letters", None, None).await;
    assert_eq!(list["total"], 5);
    let first = list["dead_letters"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(list["dead_letters"][0]["group"], "bad");
    let (status, one) = call(
        &app,
        "GET",
        &format!("/api/dead-letter?stream={}&id={first}", q(&stream)),
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{one}");
    assert_eq!(one["event"]["session_id"], "session-0");
    assert_eq!(one["reason"].as_str().map(|r| !r.is_empty()), Some(true));

    let body = json!({ "stream": stream, "id": first });
    for token in [None, Some("wrong")] {
        let (status, e) = post(&app, "/api/dead-letters/replay", token, body.clone()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{token:?}: {e}");
    }
    assert_eq!(dead_letters(&mut conn, &stream).await, 5);
    let (status, r) = post(&app, "/api/dead-letters/replay", Some(TOKEN), body).await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(r["count"], 1);
    assert_eq!(dead_letters(&mut conn, &stream).await, 4);
    // Replayed to the group that gave up on it: the copy names that group alone.
    let second = list["dead_letters"][1]["id"].as_str().unwrap().to_owned();
    let (status, r) = post(
        &app,
        "/api/dead-letters/replay",
        Some(TOKEN),
        json!({ "stream": stream, "id": second, "to_group": "bad" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{r}");
    let new_id = r["replayed"][0]["new_id"].as_str().unwrap().to_owned();
    let copy: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(&stream)
        .arg(&new_id)
        .arg(&new_id)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        copy[0].1.contains(&(
            asdlc_runtime::deadletter::REPLAY_GROUP_FIELD.to_owned(),
            "bad".to_owned()
        )),
        "{copy:?}"
    );
    let (status, e) = post(
        &app,
        "/api/dead-letters/replay",
        Some(TOKEN),
        json!({ "all": true, "to_group": "not a group!" }),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
    assert_eq!(dead_letters(&mut conn, &stream).await, 3);
    // A stream outside the deployment is never touched.
    let (status, _) = post(
        &app,
        "/api/dead-letters/purge",
        Some(TOKEN),
        json!({ "stream": "some:other:key", "all": true }),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, p) = post(
        &app,
        "/api/dead-letters/purge",
        Some(TOKEN),
        json!({ "all": true }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{p}");
    assert_eq!(p["purged"][0]["purged"], 3);

    // The sampler saw group `bad` progress (5 read, 0 pending) at least once.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, t) = call(&app, "GET", "/api/throughput", None, None).await;
        let groups = t["groups"].as_array().unwrap();
        if groups.iter().any(|g| g["group"] == "bad") {
            break;
        }
        assert!(Instant::now() < deadline, "{t}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    d.shutdown().await;
}

#[tokio::test]
async fn single_server_dashboard_shows_counts_and_replays_with_the_token() {
    let s = TestServer::start();
    let mut plain = s.client().get_connection().unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("s3cret")
        .query(&mut plain)
        .unwrap();
    let url = RedisUrl::parse(format!("redis://:s3cret@127.0.0.1:{}", s.port())).unwrap();
    let config = Config {
        redis_url: url,
        stream: "dash:single".to_owned(),
        ..Config::default()
    };
    dashboard_shows_and_replays(config.clone()).await;

    // No answer ever carries the password.
    let d = Dashboard::start(config, options(None)).await.unwrap();
    let app = router(d.clone());
    let (_, o) = call(&app, "GET", "/api/overview", None, None).await;
    assert!(o["url"].as_str().unwrap().contains("***"), "{o}");
    assert!(!o.to_string().contains("s3cret"));
    d.shutdown().await;
}

#[tokio::test]
async fn cluster_dashboard_shows_counts_and_replays_with_the_token() {
    let c = TestCluster::builder().replicas_per_master(0).start();
    let config = Config {
        redis_url: c.redis_url(),
        stream: "dash:cluster".to_owned(),
        ..Config::default()
    };
    dashboard_shows_and_replays(config).await;
}

#[tokio::test]
async fn read_only_dashboard_refuses_every_mutation() {
    let s = TestServer::start();
    let config = Config::new(&s.url()).unwrap();
    let d = Dashboard::start(config, options(None)).await.unwrap();
    let app = router(d.clone());
    for path in ["/api/dead-letters/replay", "/api/dead-letters/purge"] {
        for token in [None, Some(TOKEN)] {
            let (status, e) = call(&app, "POST", path, token, Some(json!({ "all": true }))).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {e}");
            assert!(e["error"].as_str().unwrap().contains("read-only"));
        }
    }
    d.shutdown().await;
}

#[tokio::test]
async fn a_foreign_host_header_is_refused_against_dns_rebinding() {
    let s = TestServer::start();
    let d = Dashboard::start(Config::new(&s.url()).unwrap(), options(None))
        .await
        .unwrap();
    let app = router(d.clone());
    for path in ["/", "/api/overview"] {
        let req = Request::builder()
            .uri(path)
            .header(header::HOST, "evil.example:80")
            .body(Body::empty())
            .unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::MISDIRECTED_REQUEST, "{path}");
    }
    let (status, _) = call(&app, "GET", "/api/overview", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let loopback = hosts_for("127.0.0.1:7878".parse().unwrap()).unwrap();
    assert!(loopback.contains(&"localhost:7878".to_owned()));
    assert!(!loopback.iter().any(|h| h.contains("evil")));
    assert_eq!(hosts_for("0.0.0.0:7878".parse().unwrap()), None);
    d.shutdown().await;
}

#[tokio::test]
async fn the_tenant_filter_shows_one_tenants_stream() {
    let s = TestServer::start();
    let config = Config {
        tenancy: Tenancy::multi(),
        stream: "dash:mt".to_owned(),
        ..Config::new(&s.url()).unwrap()
    };
    let acme = TenantId::new("acme").unwrap();
    let globex = TenantId::new("globex").unwrap();
    leave_lag_pending_and_dead_letters(&config, Some(&acme), 3).await;
    leave_lag_pending_and_dead_letters(&config, Some(&globex), 4).await;
    let d = Dashboard::start(config, options(None)).await.unwrap();
    let app = router(d.clone());
    let (_, all) = call(&app, "GET", "/api/overview", None, None).await;
    assert_eq!(all["tenants"], json!(["acme", "globex"]));
    assert_eq!(all["totals"]["streams"], 2);
    assert_eq!(all["totals"]["dead_letters"], 7);
    let (_, one) = call(&app, "GET", "/api/overview?tenant=globex", None, None).await;
    assert_eq!(one["totals"]["streams"], 1);
    assert_eq!(one["streams"][0]["stream"], "tenant:{globex}:dash:mt");
    assert_eq!(one["streams"][0]["tenant"], "globex");
    assert_eq!(one["totals"]["dead_letters"], 4);
    let (_, dead) = call(&app, "GET", "/api/dead-letters?tenant=acme", None, None).await;
    assert_eq!(dead["total"], 3);
    let (status, _) = call(&app, "GET", "/api/overview?tenant=Not%20Valid", None, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    d.shutdown().await;
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_from_the_binary() {
    let s = TestServer::start();
    let d = Dashboard::start(Config::new(&s.url()).unwrap(), options(None))
        .await
        .unwrap();
    let app = router(d.clone());
    for (path, kind, mentions) in [
        ("/", "text/html", "app.js"),
        ("/app.js", "text/javascript", "api/overview"),
        ("/app.css", "text/css", "@media"),
    ] {
        let req = Request::builder()
            .uri(path)
            .header(header::HOST, HOST)
            .body(Body::empty())
            .unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let ct = res.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(ct.starts_with(kind), "{path}: {ct}");
        assert!(res.headers().contains_key(header::CONTENT_SECURITY_POLICY));
        let body = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(text.contains(mentions), "{path}");
        // Nothing is loaded from elsewhere (the SVG namespace is a name, not a fetch).
        let text = text.replace("http://www.w3.org/2000/svg", "");
        assert!(
            !text.contains("http://") && !text.contains("https://"),
            "{path}: no external URL"
        );
    }
    d.shutdown().await;
}

#[tokio::test]
async fn nested_under_a_prefix_the_page_finds_its_assets_and_api() {
    let s = TestServer::start();
    let d = Dashboard::start(Config::new(&s.url()).unwrap(), options(None))
        .await
        .unwrap();
    let app = axum::Router::new().nest("/ops", router(d.clone()));
    let get = |path: &'static str| {
        let app = app.clone();
        async move {
            let req = Request::builder()
                .uri(path)
                .header(header::HOST, HOST)
                .body(Body::empty())
                .unwrap();
            let res = app.oneshot(req).await.unwrap();
            let status = res.status();
            let body = axum::body::to_bytes(res.into_body(), 1 << 20)
                .await
                .unwrap();
            (status, String::from_utf8(body.to_vec()).unwrap())
        }
    };
    // Nested, the page is at `/ops` (no trailing slash): its links must say `ops/...` to
    // resolve to `/ops/app.js`, not `/app.js`.
    let (status, html) = get("/ops").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains(r#"src="ops/app.js""#), "{html}");
    assert!(html.contains(r#"href="ops/app.css""#), "{html}");
    for path in ["/ops/app.js", "/ops/app.css", "/ops/api/overview"] {
        assert_eq!(get(path).await.0, StatusCode::OK, "{path}");
    }
    // The script finds the API beside itself, not beside the page.
    let (_, script) = get("/ops/app.js").await;
    assert!(script.contains("document.currentScript.src"));
    // Standalone, the links stay relative (a proxy that strips a prefix keeps working).
    let (_, html) = get_standalone(&d).await;
    assert!(html.contains(r#"src="app.js""#), "{html}");
    d.shutdown().await;
}

async fn get_standalone(d: &Dashboard) -> (StatusCode, String) {
    let req = Request::builder()
        .uri("/")
        .header(header::HOST, HOST)
        .body(Body::empty())
        .unwrap();
    let res = router(d.clone()).oneshot(req).await.unwrap();
    let status = res.status();
    let body = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, String::from_utf8(body.to_vec()).unwrap())
}
