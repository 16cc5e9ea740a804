//! Approval gates that expire: a human (or an agent) approves or rejects, or the deadline
//! passes, and exactly one of the three is the gate's outcome.
//!
//! The outcome is decided by the server, in the same atomic step that appends the event
//! announcing it (`gate_approved`, `gate_rejected` or `gate_expired`), so the stream never
//! holds two outcomes of one gate and "never advance a gate twice" holds for every handler
//! downstream. An approval or rejection that comes after the outcome was decided (or after
//! the deadline, which then wins) appends nothing and is reported as late, with the outcome
//! it lost to. At the deadline the promoter every consumer of the stream runs (see
//! [`crate::schedule`]) expires the gate. The gate's state can be read at any time
//! ([`Gate::state`], [`list`], `asdlc gates`).
//!
//! ```no_run
//! use std::time::Duration;
//! use asdlc_runtime::{Gate, GateDecision, Publisher};
//!
//! # async fn example(publisher: Publisher) -> Result<(), Box<dyn std::error::Error>> {
//! let gate = Gate::new(&publisher, "deploy-1a2b3c4d");
//! gate.request("session-7", Duration::from_secs(3600), "validation-agent").await?;
//! match gate.approve("alice").await? {
//!     GateDecision::Decided { entry_id } => println!("approved: {entry_id}"),
//!     GateDecision::Late { outcome, .. } => println!("too late: the gate was {outcome}"),
//!     _ => println!("no such gate"),
//! }
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::Value;

use crate::connection::RedisConnection;
use crate::error::{PublishError, StreamError};
use crate::event::{AsdlcEvent, EventType};
use crate::functions::GATE;
use crate::keys::StreamKeys;
use crate::publish::Publisher;
use crate::schedule::{ms_to_time as ms, pack};

/// The metadata field that names the gate on its events.
pub const GATE_ID_FIELD: &str = "gate_id";

/// A gate's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum GateOutcome {
    /// Requested, waiting for an approval, a rejection or its deadline.
    Pending,
    /// Approved in time.
    Approved,
    /// Rejected in time.
    Rejected,
    /// The deadline passed first.
    Expired,
}

impl GateOutcome {
    fn parse(s: &str) -> Option<GateOutcome> {
        Some(match s {
            "pending" => GateOutcome::Pending,
            "approved" => GateOutcome::Approved,
            "rejected" => GateOutcome::Rejected,
            "expired" => GateOutcome::Expired,
            _ => return None,
        })
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            GateOutcome::Pending => "pending",
            GateOutcome::Approved => "approved",
            GateOutcome::Rejected => "rejected",
            GateOutcome::Expired => "expired",
        }
    }
}

impl fmt::Display for GateOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an approval or a rejection did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GateDecision {
    /// This call decided the gate: its event was appended as `entry_id`.
    Decided {
        /// The entry id of the `gate_approved` or `gate_rejected` event.
        entry_id: String,
    },
    /// Too late: the gate was decided already (or its deadline had passed, and it expired);
    /// nothing of this call was appended.
    Late {
        /// The outcome it lost to.
        outcome: GateOutcome,
        /// Who decided that (`deadline` for an expiry).
        by: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// No gate of this id was requested on this stream.
    Unknown,
}

/// What [`Gate::request`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GateRequest {
    /// Requested: the `gate_requested` event was appended as `entry_id`.
    Requested {
        /// Its entry id.
        entry_id: String,
    },
    /// Requested before (nothing appended); its outcome so far.
    Exists {
        /// The outcome so far.
        outcome: GateOutcome,
    },
}

/// A gate's state, as the server keeps it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct GateState {
    /// The gate's id.
    pub id: String,
    /// Its outcome so far.
    pub outcome: GateOutcome,
    /// Who requested it.
    pub requested_by: String,
    /// When.
    pub requested_at: DateTime<Utc>,
    /// Its deadline.
    pub deadline: DateTime<Utc>,
    /// Who decided it (`deadline` for an expiry), once decided.
    pub decided_by: Option<String>,
    /// When, once decided.
    pub decided_at: Option<DateTime<Utc>>,
    /// The entry id of the event that announced the outcome, once decided.
    pub decided_entry: Option<String>,
}

/// One approval gate of the publisher's current stream (its tenant's, in multi-tenant mode).
#[derive(Debug, Clone)]
pub struct Gate<'a> {
    publisher: &'a Publisher,
    id: String,
}

impl<'a> Gate<'a> {
    /// The gate `id` (an id of your own: the patch, the deployment, the git SHA it guards).
    pub fn new(publisher: &'a Publisher, id: impl Into<String>) -> Self {
        Gate {
            publisher,
            id: id.into(),
        }
    }

    /// The gate's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn event(&self, t: EventType, session: &str, by: &str) -> AsdlcEvent {
        let mut e = AsdlcEvent::builder(t, session)
            .idempotency_key(format!("gate:{}:{}", self.id, t.as_str()))
            .meta(GATE_ID_FIELD, self.id.clone())
            .build_unchecked();
        if !by.is_empty() {
            e.metadata.insert("by".to_owned(), by.into());
        }
        e
    }

    /// Requests the gate in `session`, with a deadline `timeout` from now: appends its
    /// `gate_requested` event; at the deadline, unless it was decided, it expires and a
    /// `gate_expired` event is appended. Requesting it again appends nothing.
    pub async fn request(
        &self,
        session: &str,
        timeout: Duration,
        by: &str,
    ) -> Result<GateRequest, PublishError> {
        let (stream, _, requested) =
            self.publisher
                .prepare_fields(&self.event(EventType::GateRequested, session, by))?;
        let (_, _, expired) = self.publisher.prepare_fields(&self.event(
            EventType::GateExpired,
            session,
            "deadline",
        ))?;
        // The server's clock sets the deadline and judges it: a timeout, not a time.
        let timeout_ms = timeout.as_millis().min(i64::MAX as u128 / 2) as i64;
        let keys = StreamKeys::new(&stream);
        let mut conn = self.publisher.connection();
        let mut call = GATE.key(keys.gate(&self.id));
        call.key(keys.gates())
            .key(keys.pending_gates())
            .key(&stream)
            .arg("request")
            .arg(max_len(self.publisher))
            .arg(&self.id)
            .arg(timeout_ms)
            .arg(by)
            .arg(pack(&requested))
            .arg(pack(&expired));
        let reply = invoke(&call, &mut conn, &stream).await?;
        Ok(match reply.as_slice() {
            [Value::Int(1), id] => GateRequest::Requested { entry_id: text(id) },
            [_, outcome] => GateRequest::Exists {
                outcome: GateOutcome::parse(&text(outcome)).unwrap_or(GateOutcome::Pending),
            },
            _ => GateRequest::Exists {
                outcome: GateOutcome::Pending,
            },
        })
    }

    /// Approves the gate, if it is still pending and its deadline has not passed: appends
    /// `gate_approved`. Otherwise appends nothing and says what it lost to.
    pub async fn approve(&self, by: &str) -> Result<GateDecision, PublishError> {
        self.decide(GateOutcome::Approved, EventType::GateApproved, by)
            .await
    }

    /// Rejects the gate, like [`Gate::approve`]: appends `gate_rejected` if in time.
    pub async fn reject(&self, by: &str) -> Result<GateDecision, PublishError> {
        self.decide(GateOutcome::Rejected, EventType::GateRejected, by)
            .await
    }

    async fn decide(
        &self,
        outcome: GateOutcome,
        t: EventType,
        by: &str,
    ) -> Result<GateDecision, PublishError> {
        let stream = self.publisher.current_stream()?;
        let keys = StreamKeys::new(&stream);
        let mut conn = self.publisher.connection();
        let session = match state(&mut conn, &keys, &self.id).await {
            Ok(Some((_, session))) => session,
            Ok(None) => return Ok(GateDecision::Unknown),
            Err(source) => return Err(PublishError::Redis { stream, source }),
        };
        let (_, _, fields) = self
            .publisher
            .prepare_fields(&self.event(t, &session, by))?;
        let mut call = GATE.key(keys.gate(&self.id));
        call.key(keys.pending_gates())
            .key(&stream)
            .arg("decide")
            .arg(max_len(self.publisher))
            .arg(&self.id)
            .arg(outcome.as_str())
            .arg(by)
            .arg(pack(&fields));
        let reply = invoke(&call, &mut conn, &stream).await?;
        Ok(match reply.as_slice() {
            [Value::Int(1), id] => GateDecision::Decided { entry_id: text(id) },
            [Value::Int(0), outcome, by, at] => GateDecision::Late {
                outcome: GateOutcome::parse(&text(outcome)).unwrap_or(GateOutcome::Expired),
                by: text(by),
                at: ms(int(at)),
            },
            _ => GateDecision::Unknown,
        })
    }

    /// The gate's state, if it was requested.
    pub async fn state(&self) -> Result<Option<GateState>, PublishError> {
        let stream = self.publisher.current_stream()?;
        let mut conn = self.publisher.connection();
        state(&mut conn, &StreamKeys::new(&stream), &self.id)
            .await
            .map(|s| s.map(|(s, _)| s))
            .map_err(|source| PublishError::Redis { stream, source })
    }
}

/// Runs a gate call on `stream`'s slot.
async fn invoke(
    call: &crate::functions::Call,
    conn: &mut RedisConnection,
    stream: &str,
) -> Result<Vec<Value>, PublishError> {
    call.invoke_async(conn)
        .await
        .map_err(|source| PublishError::Redis {
            stream: stream.to_owned(),
            source,
        })
}

fn max_len(p: &Publisher) -> String {
    p.config()
        .max_len
        .map(|n| n.to_string())
        .unwrap_or_default()
}

fn text(v: &Value) -> String {
    crate::streams::value_string(v).unwrap_or_default()
}

fn int(v: &Value) -> i64 {
    text(v).parse().unwrap_or(0)
}

/// The state of gate `id`, and the session its request named.
async fn state(
    conn: &mut RedisConnection,
    keys: &StreamKeys,
    id: &str,
) -> redis::RedisResult<Option<(GateState, String)>> {
    let h: HashMap<String, Vec<u8>> = redis::cmd("HGETALL")
        .arg(keys.gate(id))
        .query_async(conn)
        .await?;
    if h.is_empty() {
        return Ok(None);
    }
    let get = |k: &str| h.get(k).map(|v| String::from_utf8_lossy(v).into_owned());
    let num = |k: &str| get(k).and_then(|v| v.parse::<i64>().ok());
    // The session is in the packed expiry event; its fields say.
    let session = h
        .get("expiry")
        .map(|b| crate::schedule::unpack_pairs(b))
        .and_then(|f| {
            f.into_iter()
                .find(|(k, _)| k == "session_id")
                .map(|(_, v)| v)
        })
        .unwrap_or_default();
    let decided_at = num("decided_at").map(ms);
    Ok(Some((
        GateState {
            id: id.to_owned(),
            outcome: get("outcome")
                .and_then(|o| GateOutcome::parse(&o))
                .unwrap_or(GateOutcome::Pending),
            requested_by: get("requested_by").unwrap_or_default(),
            requested_at: ms(num("requested_at").unwrap_or(0)),
            deadline: ms(num("deadline").unwrap_or(0)),
            decided_by: get("decided_by"),
            decided_at,
            decided_entry: get("decided_entry"),
        },
        session,
    )))
}

/// The gates of `stream`, newest request first, at most `limit`; only the pending ones with
/// `pending_only`.
pub async fn list(
    conn: &mut RedisConnection,
    stream: &str,
    limit: usize,
    pending_only: bool,
) -> Result<Vec<GateState>, StreamError> {
    let keys = StreamKeys::new(stream);
    let index = if pending_only {
        keys.pending_gates()
    } else {
        keys.gates()
    };
    let ids: Vec<String> = redis::cmd("ZRANGE")
        .arg(&index)
        .arg(0)
        .arg(limit.saturating_sub(1) as i64)
        .arg("REV")
        .query_async(conn)
        .await
        .map_err(StreamError::redis(stream))?;
    let mut out = Vec::with_capacity(ids.len());
    let mut forgotten = Vec::new();
    for id in ids {
        match state(conn, &keys, &id)
            .await
            .map_err(StreamError::redis(stream))?
        {
            Some((s, _)) => out.push(s),
            None => forgotten.push(id),
        }
    }
    if !forgotten.is_empty() {
        // Decided gates are kept 30 days; their ids leave the index when they are gone.
        let _: () = redis::cmd("ZREM")
            .arg(keys.gates())
            .arg(&forgotten)
            .query_async(conn)
            .await
            .map_err(StreamError::redis(stream))?;
    }
    Ok(out)
}

/// Expires the gates of `keys`' stream whose deadline has passed: one read of the pending
/// gates, then one atomic call that expires those still pending. Returns how many it
/// expired. Run by the promoter of every consumer.
pub(crate) async fn expire_due(
    conn: &mut RedisConnection,
    keys: &StreamKeys,
    max_len: Option<usize>,
) -> redis::RedisResult<usize> {
    let now = Utc::now().timestamp_millis();
    let due: Vec<String> = redis::cmd("ZRANGE")
        .arg(keys.pending_gates())
        .arg("-inf")
        .arg(now)
        .arg("BYSCORE")
        .arg("LIMIT")
        .arg(0)
        .arg(100)
        .query_async(conn)
        .await?;
    if due.is_empty() {
        return Ok(0);
    }
    let mut call = GATE.key(keys.pending_gates());
    call.key(keys.stream());
    for id in &due {
        call.key(keys.gate(id));
    }
    call.arg("expire")
        .arg(max_len.map(|n| n.to_string()).unwrap_or_default());
    for id in &due {
        call.arg(id);
    }
    let expired: Vec<String> = call.invoke_async(conn).await?;
    Ok(expired.len())
}

/// What a consumer does with a gate outcome event it is about to handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Handle it: not a gate event, no such gate, or it is the gate's outcome.
    Proceed,
    /// Late: the gate had another outcome; acknowledge it without handling.
    Late {
        /// The outcome it lost to.
        outcome: String,
        /// Who decided that.
        by: String,
    },
}

/// Checks a `gate_approved`, `gate_rejected` or `gate_expired` event naming a gate
/// (`metadata.gate_id`) against the gate before a handler sees it, so an answer published
/// around [`Gate`] (with a plain `Publisher`) cannot advance a decided gate either: the first
/// such event decides a pending gate (or, past its deadline, the gate expires), and every
/// later one is late. Other events pass without a call.
pub(crate) async fn on_delivery(
    conn: &RedisConnection,
    keys: &StreamKeys,
    event: &AsdlcEvent,
    entry_id: &str,
    max_len: Option<usize>,
) -> redis::RedisResult<Delivery> {
    let outcome = match event.event_type {
        EventType::GateApproved => GateOutcome::Approved,
        EventType::GateRejected => GateOutcome::Rejected,
        EventType::GateExpired => GateOutcome::Expired,
        _ => return Ok(Delivery::Proceed),
    };
    let Some(id) = event.metadata.get(GATE_ID_FIELD).and_then(|v| v.as_str()) else {
        return Ok(Delivery::Proceed);
    };
    let by = event
        .metadata
        .get("by")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    let mut call = GATE.key(keys.gate(id));
    call.key(keys.pending_gates())
        .key(keys.stream())
        .arg("deliver")
        .arg(max_len.map(|n| n.to_string()).unwrap_or_default())
        .arg(id)
        .arg(outcome.as_str())
        .arg(by)
        .arg(entry_id);
    // Only gate answers get here: the connection is cloned for them alone.
    let reply: Vec<Value> = call.invoke_async(&mut conn.clone()).await?;
    Ok(match reply.as_slice() {
        [Value::Int(0), outcome, by] => Delivery::Late {
            outcome: text(outcome),
            by: text(by),
        },
        _ => Delivery::Proceed,
    })
}

/// The next deadline of `keys`' pending gates, if any.
pub(crate) async fn next_deadline(
    conn: &mut RedisConnection,
    keys: &StreamKeys,
) -> redis::RedisResult<Option<DateTime<Utc>>> {
    let first: Vec<(String, i64)> = redis::cmd("ZRANGE")
        .arg(keys.pending_gates())
        .arg(0)
        .arg(0)
        .arg("WITHSCORES")
        .query_async(conn)
        .await?;
    Ok(first.first().map(|(_, d)| ms(*d)))
}
