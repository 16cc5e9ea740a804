//! The JSON API under `/api/`: what the page shows, for scripts too. Reads need nothing;
//! replay and purge need the write token (see [`crate::guard::authorize`]).
//!
//! | route | what |
//! |---|---|
//! | `GET /api/overview[?tenant=ID]` | health, every stream with its groups and consumers, totals |
//! | `GET /api/group?stream=S&group=G[&limit=N]` | a group's pending entries and the stream's latest entries, decoded |
//! | `GET /api/throughput[?tenant=ID]` | processed/s per group, sampled by the server |
//! | `GET /api/dead-letters[?tenant=ID][&group=G][&limit=N]` | dead letters, oldest first |
//! | `GET /api/dead-letter?stream=S&id=ID` | one dead letter in full, with its event decoded |
//! | `POST /api/dead-letters/replay` | `{"stream":S,"id":ID}`, or `{"all":true[,"tenant":T][,"stream":S][,"group":G]}` |
//! | `POST /api/dead-letters/purge` | `{"stream":S,"id":ID}`, or `{"all":true[,"tenant":T][,"stream":S]}` |

use asdlc_runtime::streams::EntryId;
use std::collections::HashMap;

use asdlc_runtime::deadletter::{self, DeadLetter};
use asdlc_runtime::encoding::decode;
use asdlc_runtime::keys::{get_stream_name, tenant_of_stream, validate_group};
use asdlc_runtime::monitor::{HealthStatus, HealthThresholds, check_health, list_streams};
use asdlc_runtime::{AsdlcEvent, RedisConnection, StreamInfo, TenantId};
use axum::body::Bytes;
use axum::extract::{FromRequest, Query, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::Dashboard;
use crate::error::ApiError;
use crate::guard::authorize;
use crate::sampler::GroupSeries;

pub(crate) fn routes() -> Router<Dashboard> {
    Router::new()
        .route("/overview", get(overview))
        .route("/group", get(group))
        .route("/throughput", get(throughput))
        .route("/dead-letters", get(dead_letters))
        .route("/dead-letter", get(dead_letter))
        .route("/dead-letters/replay", post(replay))
        .route("/dead-letters/purge", post(purge))
}

/// The most entries any list answers with.
const MAX_LIMIT: usize = 1000;

/// `?tenant=ID`.
#[derive(Debug, Default, Deserialize)]
struct TenantQuery {
    tenant: Option<String>,
}

/// One stream as `asdlc info --json` describes it, with its tenant.
#[derive(Debug, Clone, Serialize)]
pub struct StreamView {
    /// Its tenant (`None`: the shared stream).
    pub tenant: Option<String>,
    /// Length, groups, consumers, lag, pending, dead letters.
    #[serde(flatten)]
    pub info: StreamInfo,
}

/// Sums over the streams shown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Streams shown.
    pub streams: usize,
    /// Consumer groups.
    pub groups: usize,
    /// Consumers.
    pub consumers: usize,
    /// Entries not read yet, over the groups whose lag is known.
    pub lag: u64,
    /// Entries read and not acknowledged.
    pub pending: u64,
    /// Dead letters.
    pub dead_letters: u64,
}

/// `GET /api/overview`.
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    /// The Redis URL, password redacted.
    pub url: String,
    /// The server's name, version and mode, when reachable.
    pub server: Option<String>,
    /// The `PING` round trip in milliseconds.
    pub ping_ms: Option<f64>,
    /// The stream base name.
    pub stream_base: String,
    /// Whether replay and purge are allowed (with the token).
    pub writable: bool,
    /// The tenant filter in force.
    pub tenant: Option<String>,
    /// Every tenant found (for the filter).
    pub tenants: Vec<String>,
    /// `healthy`, `degraded` or `unhealthy`.
    pub health: HealthStatus,
    /// Why it is not healthy, worst first.
    pub reasons: Vec<String>,
    /// The streams shown.
    pub streams: Vec<StreamView>,
    /// Their sums.
    pub totals: Totals,
    /// When (RFC 3339).
    pub generated_at: String,
}

/// The streams selected by `tenant`: that tenant's, or the shared one and every tenant's.
async fn selected(
    d: &Dashboard,
    conn: &mut RedisConnection,
    tenant: Option<&str>,
) -> Result<Vec<String>, ApiError> {
    match tenant.filter(|t| !t.is_empty()) {
        Some(t) => {
            let t = TenantId::new(t).map_err(|e| ApiError::BadRequest(e.to_string()))?;
            Ok(vec![get_stream_name(&d.config().stream, Some(&t))])
        }
        None => Ok(list_streams(conn, d.config()).await?),
    }
}

/// Refuses a stream that is not the deployment's shared stream or one of its tenant streams,
/// so no request reaches any other key.
fn own_stream(d: &Dashboard, stream: &str) -> Result<Option<TenantId>, ApiError> {
    let base = &d.config().stream;
    if stream == base {
        return Ok(None);
    }
    tenant_of_stream(stream, base)
        .map(Some)
        .ok_or_else(|| ApiError::NotFound(format!("`{stream}` is not a stream of `{base}`")))
}

async fn overview(
    State(d): State<Dashboard>,
    Query(q): Query<TenantQuery>,
) -> Result<Json<Overview>, ApiError> {
    let mut conn = d.conn();
    let streams = selected(&d, &mut conn, q.tenant.as_deref()).await?;
    let base = d.config().stream.clone();
    let tenants: Vec<String> = list_streams(&mut conn, d.config())
        .await?
        .iter()
        .filter_map(|s| tenant_of_stream(s, &base))
        .map(|t| t.to_string())
        .collect();
    let thresholds = HealthThresholds::default().with_missing_stream(HealthStatus::Healthy);
    let report = check_health(&mut conn, &streams, &thresholds).await;
    let views: Vec<StreamView> = report
        .streams
        .into_iter()
        .map(|info| StreamView {
            tenant: tenant_of_stream(&info.stream, &base).map(|t| t.to_string()),
            info,
        })
        .collect();
    let totals = Totals {
        streams: views.len(),
        groups: views.iter().map(|v| v.info.groups.len()).sum(),
        consumers: views
            .iter()
            .flat_map(|v| &v.info.groups)
            .map(|g| g.consumers.len())
            .sum(),
        lag: views
            .iter()
            .flat_map(|v| &v.info.groups)
            .filter_map(|g| g.lag)
            .sum(),
        pending: views.iter().map(|v| v.info.total_pending()).sum(),
        dead_letters: views.iter().map(|v| v.info.dead_letters).sum(),
    };
    let server = report.server_name.as_ref().map(|name| {
        format!(
            "{name} {} ({})",
            report.server_version.as_deref().unwrap_or("?"),
            report.server_mode.as_deref().unwrap_or("?")
        )
    });
    Ok(Json(Overview {
        url: d.config().redis_url.redacted(),
        server,
        ping_ms: report.ping_ms,
        stream_base: base,
        writable: d.writable(),
        tenant: q.tenant.filter(|t| !t.is_empty()),
        tenants,
        health: report.status,
        reasons: report.reasons,
        streams: views,
        totals,
        generated_at: now(),
    }))
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// `?stream=S&group=G&limit=N`.
#[derive(Debug, Deserialize)]
struct GroupQuery {
    stream: String,
    group: String,
    limit: Option<usize>,
}

/// An event as one line of a table: its type and ids, or why it does not decode.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EventSummary {
    /// The event type.
    pub event_type: Option<String>,
    /// The session id.
    pub session_id: Option<String>,
    /// The task id.
    pub task_id: Option<String>,
    /// The tenant id.
    pub tenant_id: Option<String>,
    /// The idempotency key.
    pub idempotency_key: Option<String>,
    /// When it was created (RFC 3339).
    pub timestamp: Option<String>,
    /// Why the entry does not decode as an event.
    pub decode_error: Option<String>,
}

impl EventSummary {
    fn of(fields: &[(String, Vec<u8>)]) -> Self {
        match decode(fields) {
            Ok(e) => EventSummary::from(&e),
            Err(err) => EventSummary {
                decode_error: Some(err.to_string()),
                ..EventSummary::default()
            },
        }
    }
}

impl From<&AsdlcEvent> for EventSummary {
    fn from(e: &AsdlcEvent) -> Self {
        EventSummary {
            event_type: Some(e.event_type.to_string()),
            session_id: Some(e.session_id.clone()),
            task_id: e.task_id.clone(),
            tenant_id: e.tenant_id.as_ref().map(ToString::to_string),
            idempotency_key: e.idempotency_key.clone(),
            timestamp: Some(e.timestamp.to_rfc3339()),
            decode_error: None,
        }
    }
}

/// One pending entry of a group.
#[derive(Debug, Clone, Serialize)]
pub struct PendingView {
    /// The entry id.
    pub id: String,
    /// The consumer holding it.
    pub consumer: String,
    /// Milliseconds since it was last delivered.
    pub idle_ms: u64,
    /// How many times it was delivered.
    pub deliveries: u64,
    /// The event (`None` when the entry was trimmed or deleted).
    pub event: Option<EventSummary>,
}

/// One of the stream's latest entries.
#[derive(Debug, Clone, Serialize)]
pub struct RecentEntry {
    /// The entry id.
    pub id: String,
    /// The event.
    pub event: EventSummary,
}

/// `GET /api/group`.
#[derive(Debug, Clone, Serialize)]
pub struct GroupPage {
    /// The stream.
    pub stream: String,
    /// Its tenant.
    pub tenant: Option<String>,
    /// The group, as in the overview.
    pub group: asdlc_runtime::streams::GroupInfo,
    /// Its pending entries, oldest first (at most `limit`).
    pub pending: Vec<PendingView>,
    /// The stream's latest entries, newest first (at most `limit`).
    pub recent: Vec<RecentEntry>,
}

fn fields_of(map: &HashMap<String, redis::Value>) -> Vec<(String, Vec<u8>)> {
    map.iter()
        .filter_map(|(k, v)| {
            let bytes = match v {
                redis::Value::BulkString(b) => b.clone(),
                redis::Value::SimpleString(s) => s.clone().into_bytes(),
                redis::Value::Int(i) => i.to_string().into_bytes(),
                _ => return None,
            };
            Some((k.clone(), bytes))
        })
        .collect()
}

async fn group(
    State(d): State<Dashboard>,
    Query(q): Query<GroupQuery>,
) -> Result<Json<GroupPage>, ApiError> {
    let tenant = own_stream(&d, &q.stream)?;
    validate_group(&q.group).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let limit = q.limit.unwrap_or(50).clamp(1, MAX_LIMIT);
    let mut conn = d.conn();
    let info = asdlc_runtime::get_stream_info(&mut conn, &q.stream).await?;
    let Some(group) = info.group(&q.group).cloned() else {
        return Err(ApiError::NotFound(format!(
            "no group `{}` on `{}`",
            q.group, q.stream
        )));
    };
    let reply: redis::streams::StreamPendingCountReply = redis::cmd("XPENDING")
        .arg(&q.stream)
        .arg(&q.group)
        .arg("-")
        .arg("+")
        .arg(limit)
        .query_async(&mut conn)
        .await?;
    let mut pending = Vec::with_capacity(reply.ids.len());
    for p in reply.ids {
        let found: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(&q.stream)
            .arg(&p.id)
            .arg(&p.id)
            .query_async(&mut conn)
            .await?;
        pending.push(PendingView {
            event: found
                .ids
                .first()
                .map(|e| EventSummary::of(&fields_of(&e.map))),
            id: p.id,
            consumer: p.consumer,
            idle_ms: p.last_delivered_ms as u64,
            deliveries: p.times_delivered as u64,
        });
    }
    let latest: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(&q.stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(limit)
        .query_async(&mut conn)
        .await?;
    let recent = latest
        .ids
        .iter()
        .map(|e| RecentEntry {
            id: e.id.clone(),
            event: EventSummary::of(&fields_of(&e.map)),
        })
        .collect();
    Ok(Json(GroupPage {
        stream: q.stream,
        tenant: tenant.map(|t| t.to_string()),
        group,
        pending,
        recent,
    }))
}

async fn throughput(
    State(d): State<Dashboard>,
    Query(q): Query<TenantQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let mut conn = d.conn();
    let streams = selected(&d, &mut conn, q.tenant.as_deref()).await?;
    let series: Vec<GroupSeries> = d.throughput().snapshot(Some(&streams));
    Ok(Json(serde_json::json!({
        "sample_every_ms": d.options().sample_every.as_millis() as u64,
        "groups": series,
    })))
}

/// `?tenant=ID&group=G&limit=N`.
#[derive(Debug, Deserialize)]
struct DeadLettersQuery {
    tenant: Option<String>,
    group: Option<String>,
    limit: Option<usize>,
}

/// One dead letter, with where it lives.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterView {
    /// The stream whose dead-letter stream holds it.
    pub stream: String,
    /// Its tenant.
    pub tenant: Option<String>,
    /// Milliseconds since it was dead-lettered (from its id).
    pub age_ms: Option<u64>,
    /// The dead letter: provenance, reason, error, attempts, original fields.
    #[serde(flatten)]
    pub letter: DeadLetter,
    /// The original event, decoded (in the one-letter view only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<serde_json::Value>,
    /// Why the original fields do not decode (in the one-letter view only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decode_error: Option<String>,
}

fn age_ms(id: &str) -> Option<u64> {
    Some(EntryId::parse(id)?.age_ms())
}

fn view(d: &Dashboard, stream: &str, letter: DeadLetter) -> DeadLetterView {
    DeadLetterView {
        stream: stream.to_owned(),
        tenant: tenant_of_stream(stream, &d.config().stream).map(|t| t.to_string()),
        age_ms: age_ms(&letter.id),
        letter,
        event: None,
        decode_error: None,
    }
}

async fn dead_letters(
    State(d): State<Dashboard>,
    Query(q): Query<DeadLettersQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = q.limit.unwrap_or(200).clamp(1, MAX_LIMIT);
    let mut conn = d.conn();
    let mut out = Vec::new();
    let mut total = 0;
    for stream in selected(&d, &mut conn, q.tenant.as_deref()).await? {
        total += deadletter::count(&mut conn, &stream).await?;
        for l in deadletter::list(&mut conn, &stream, "-", limit).await? {
            if q.group
                .as_deref()
                .is_none_or(|g| g.is_empty() || g == l.group)
            {
                out.push(view(&d, &stream, l));
            }
        }
    }
    Ok(Json(
        serde_json::json!({ "total": total, "dead_letters": out }),
    ))
}

/// `?stream=S&id=ID`.
#[derive(Debug, Deserialize)]
struct OneQuery {
    stream: String,
    id: String,
}

fn check_id(id: &str) -> Result<(), ApiError> {
    if EntryId::parse(id).is_some() {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "`{id}` is not an entry id (like 1712345678901-0)"
        )))
    }
}

async fn dead_letter(
    State(d): State<Dashboard>,
    Query(q): Query<OneQuery>,
) -> Result<Json<DeadLetterView>, ApiError> {
    own_stream(&d, &q.stream)?;
    check_id(&q.id)?;
    let mut conn = d.conn();
    let letter = deadletter::list(&mut conn, &q.stream, &q.id, 1)
        .await?
        .into_iter()
        .find(|l| l.id == q.id)
        .ok_or_else(|| ApiError::NotFound(format!("no dead letter {} on {}", q.id, q.stream)))?;
    let decoded = letter.event();
    let mut v = view(&d, &q.stream, letter);
    match decoded {
        Ok(e) => v.event = serde_json::to_value(e).ok(),
        Err(e) => v.decode_error = Some(e.to_string()),
    }
    Ok(Json(v))
}

/// The body of replay and purge.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Mutation {
    stream: Option<String>,
    id: Option<String>,
    #[serde(default)]
    all: bool,
    tenant: Option<String>,
    group: Option<String>,
    /// Replay for this group only (the others acknowledge the copy unhandled).
    to_group: Option<String>,
    /// With `all`, replay malformed dead letters too.
    #[serde(default)]
    include_malformed: bool,
}

/// The stream of a mutation of one dead letter `id`, checked to be the deployment's.
fn one_letter(d: &Dashboard, m: &Mutation, id: &str) -> Result<String, ApiError> {
    let stream = m
        .stream
        .clone()
        .ok_or_else(|| ApiError::BadRequest("`stream` is required with `id`".into()))?;
    own_stream(d, &stream)?;
    check_id(id)?;
    Ok(stream)
}

/// The [`Mutation`] of a request that carries the write token: replay and purge take it, so
/// neither can run without the token check.
struct Authorized(Mutation);

impl FromRequest<Dashboard> for Authorized {
    type Rejection = Response;

    async fn from_request(req: Request, d: &Dashboard) -> Result<Self, Response> {
        authorize(d, req.headers()).map_err(IntoResponse::into_response)?;
        let body = Bytes::from_request(req, d)
            .await
            .map_err(IntoResponse::into_response)?;
        serde_json::from_slice(&body)
            .map(Authorized)
            .map_err(|e| ApiError::BadRequest(format!("bad request body: {e}")).into_response())
    }
}

/// The streams a `{"all": true}` mutation covers.
async fn streams_of(
    d: &Dashboard,
    conn: &mut RedisConnection,
    m: &Mutation,
) -> Result<Vec<String>, ApiError> {
    match &m.stream {
        Some(s) => {
            own_stream(d, s)?;
            Ok(vec![s.clone()])
        }
        None => selected(d, conn, m.tenant.as_deref()).await,
    }
}

async fn replay(
    State(d): State<Dashboard>,
    Authorized(m): Authorized,
) -> Result<Json<serde_json::Value>, ApiError> {
    let mut conn = d.conn();
    let (mut replayed, mut skipped) = (Vec::new(), Vec::new());
    match (&m.id, m.all) {
        (Some(id), false) => {
            let stream = one_letter(&d, &m, id)?;
            let new_id = match &m.to_group {
                Some(g) => deadletter::replay_to_group(&mut conn, &stream, id, g).await?,
                None => deadletter::replay(&mut conn, &stream, id).await?,
            }
            .ok_or_else(|| ApiError::NotFound(format!("no dead letter {id} on {stream}")))?;
            tracing::info!(%stream, dead_letter = %id, %new_id, to_group = ?m.to_group, "dashboard replayed a dead letter");
            replayed.push(deadletter::Replayed {
                stream,
                dead_letter_id: id.clone(),
                new_id,
            });
        }
        (None, true) => {
            let mut options =
                deadletter::ReplayOptions::default().with_include_malformed(m.include_malformed);
            options.to_group.clone_from(&m.to_group);
            options.from_group.clone_from(&m.group);
            for stream in streams_of(&d, &mut conn, &m).await? {
                let report =
                    deadletter::replay_all_with(&mut conn, &stream, options.clone()).await?;
                replayed.extend(report.replayed);
                skipped.extend(report.skipped);
            }
            tracing::info!(
                count = replayed.len(),
                skipped = skipped.len(),
                "dashboard replayed dead letters"
            );
        }
        _ => {
            return Err(ApiError::BadRequest(
                "give `stream` and `id`, or `all: true`".into(),
            ));
        }
    }
    Ok(Json(serde_json::json!({
        "count": replayed.len(),
        "replayed": replayed,
        "skipped": skipped,
    })))
}

async fn purge(
    State(d): State<Dashboard>,
    Authorized(m): Authorized,
) -> Result<Json<serde_json::Value>, ApiError> {
    if m.group.is_some() || m.to_group.is_some() || m.include_malformed {
        return Err(ApiError::BadRequest(
            "purge takes no `group`, `to_group` or `include_malformed`: it deletes one dead \
             letter or all of a stream"
                .into(),
        ));
    }
    let mut conn = d.conn();
    let mut purged = Vec::new();
    match (&m.id, m.all) {
        (Some(id), false) => {
            let stream = one_letter(&d, &m, id)?;
            if !deadletter::delete(&mut conn, &stream, id).await? {
                return Err(ApiError::NotFound(format!(
                    "no dead letter {id} on {stream}"
                )));
            }
            tracing::info!(%stream, dead_letter = %id, "dashboard purged a dead letter");
            purged.push(serde_json::json!({ "stream": stream, "purged": 1 }));
        }
        (None, true) => {
            for stream in streams_of(&d, &mut conn, &m).await? {
                let n = deadletter::purge(&mut conn, &stream).await?;
                tracing::info!(%stream, purged = n, "dashboard purged dead letters");
                purged.push(serde_json::json!({ "stream": stream, "purged": n }));
            }
        }
        _ => {
            return Err(ApiError::BadRequest(
                "give `stream` and `id`, or `all: true`".into(),
            ));
        }
    }
    Ok(Json(serde_json::json!({ "purged": purged })))
}
