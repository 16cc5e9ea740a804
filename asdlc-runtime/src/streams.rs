//! Stream and consumer-group operations, tenant-aware through the stream name.
//!
//! These are the building blocks the publisher, consumer and runtime use; they are public for
//! operators and tests. Resolve a tenant's stream with [`crate::get_stream_name`] or
//! [`crate::Config::stream_for`].

use redis::{RedisError, Value};
use serde::{Deserialize, Serialize};

use crate::connection::RedisConnection;
use crate::error::StreamError;
use crate::keys::{StreamKeys, validate_group};

/// Where a new consumer group starts reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GroupStart {
    /// At the beginning of the stream: entries published before the group existed are
    /// delivered too, so nothing is lost (the default).
    #[default]
    Beginning,
    /// After the last entry: only events published from now on.
    End,
}

/// Creates `stream` if it does not exist (as an empty stream). Returns whether it was created.
pub async fn ensure_stream_exists(
    conn: &mut RedisConnection,
    stream: &str,
) -> Result<bool, StreamError> {
    let ensured: Ensured = crate::functions::ENSURE_STREAM
        .key(stream)
        .invoke_async(conn)
        .await
        .map_err(StreamError::redis(stream))?;
    Ok(ensured == Ensured::Created)
}

/// What the ensure-stream script did (streams_ensure.lua: `1` or `0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ensured {
    /// The stream was created, empty.
    Created,
    /// The stream was there.
    Existed,
}

impl redis::FromRedisValue for Ensured {
    fn from_redis_value(v: redis::Value) -> Result<Self, redis::ParsingError> {
        match v {
            redis::Value::Int(1) => Ok(Ensured::Created),
            redis::Value::Int(0) => Ok(Ensured::Existed),
            other => Err(crate::functions::unexpected(
                crate::functions::ENSURE_STREAM,
                &other,
            )),
        }
    }
}

/// What the lag script counted (streams_lag.lua: the count, or `-1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lag {
    /// This many entries after the group's last delivered one.
    Counted(u64),
    /// More than the limit, either way: not counted.
    OverLimit,
}

impl redis::FromRedisValue for Lag {
    fn from_redis_value(v: redis::Value) -> Result<Self, redis::ParsingError> {
        match v {
            redis::Value::Int(-1) => Ok(Lag::OverLimit),
            redis::Value::Int(n) if n >= 0 => Ok(Lag::Counted(n as u64)),
            other => Err(crate::functions::unexpected(crate::functions::LAG, &other)),
        }
    }
}

/// Creates consumer group `group` on `stream`, creating the stream if needed. An existing
/// group is success. Returns whether the group was created.
pub async fn create_consumer_group(
    conn: &mut RedisConnection,
    stream: &str,
    group: &str,
    start: GroupStart,
) -> Result<bool, StreamError> {
    validate_group(group)?;
    let start_id = match start {
        GroupStart::Beginning => "0",
        GroupStart::End => "$",
    };
    let result: Result<(), RedisError> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg(start_id)
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match result {
        Ok(()) => Ok(true),
        Err(e) if is_busy_group(&e) => Ok(false),
        Err(e) => Err(StreamError::redis(stream)(e)),
    }
}

pub(crate) fn is_busy_group(e: &RedisError) -> bool {
    e.code() == Some("BUSYGROUP")
}

pub(crate) fn is_no_group(e: &RedisError) -> bool {
    e.code() == Some("NOGROUP")
}

/// One consumer of a group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerInfo {
    /// Its name.
    pub name: String,
    /// Entries delivered to it and not yet acknowledged.
    pub pending: u64,
    /// Milliseconds since it last interacted with the group.
    pub idle_ms: u64,
}

/// One consumer group of a stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfo {
    /// Its name.
    pub name: String,
    /// Entries delivered and not yet acknowledged.
    pub pending: u64,
    /// The last entry delivered to the group.
    pub last_delivered_id: String,
    /// How many entries the group has read (Redis 7+).
    pub entries_read: Option<u64>,
    /// Entries in the stream the group has not read yet. Redis 7+ reports it; where it does
    /// not (Redis 6, or entries deleted after the group's position) it is counted, as long as
    /// one side of the group's position holds at most [`LAG_COUNT_LIMIT`] entries. `None`
    /// when neither the server nor a bounded count can tell.
    pub lag: Option<u64>,
    /// Age of the oldest pending entry, in milliseconds (0 when nothing is pending).
    pub oldest_pending_ms: u64,
    /// Entries of ordered handlers held back right now behind an unfinished earlier entry of
    /// their key (0 for a group without ordered handlers).
    #[serde(default)]
    pub held_back: u64,
    /// Its consumers.
    pub consumers: Vec<ConsumerInfo>,
}

/// The state of one stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamInfo {
    /// The stream.
    pub stream: String,
    /// Whether it exists (a missing stream gives `false` and zeros, not an error).
    pub exists: bool,
    /// Entries in it.
    pub length: u64,
    /// Its first entry id.
    pub first_id: Option<String>,
    /// Its last entry id.
    pub last_id: Option<String>,
    /// Its consumer groups.
    pub groups: Vec<GroupInfo>,
    /// Entries in its dead-letter stream.
    pub dead_letters: u64,
}

impl StreamInfo {
    /// Pending entries over all groups.
    pub fn total_pending(&self) -> u64 {
        self.groups.iter().map(|g| g.pending).sum()
    }

    /// The group named `name`.
    pub fn group(&self, name: &str) -> Option<&GroupInfo> {
        self.groups.iter().find(|g| g.name == name)
    }
}

/// The most entries counted on either side of a group's position to work out its lag when the
/// server does not report it (see [`GroupInfo::lag`]).
pub const LAG_COUNT_LIMIT: u64 = 10_000;

/// Length, groups with their pending counts, lag and consumers, and the dead-letter count of
/// `stream`. A missing stream gives `exists: false` and zeros.
pub async fn get_stream_info(
    conn: &mut RedisConnection,
    stream: &str,
) -> Result<StreamInfo, StreamError> {
    let keys = StreamKeys::new(stream);
    let err = StreamError::redis;
    let dead_letters: u64 = redis::cmd("XLEN")
        .arg(keys.dead_letter())
        .query_async(conn)
        .await
        .map_err(err(stream))?;
    let raw: Value = match redis::cmd("XINFO")
        .arg("STREAM")
        .arg(stream)
        .query_async(conn)
        .await
    {
        Ok(v) => v,
        Err(e) if e.to_string().contains("no such key") => {
            return Ok(StreamInfo {
                stream: stream.to_owned(),
                dead_letters,
                ..StreamInfo::default()
            });
        }
        Err(e) => return Err(err(stream)(e)),
    };
    let info = Fields::new(&raw);
    let mut out = StreamInfo {
        stream: stream.to_owned(),
        exists: true,
        length: info.u64("length").unwrap_or(0),
        first_id: info.entry_id("first-entry"),
        last_id: info.entry_id("last-entry"),
        groups: Vec::new(),
        dead_letters,
    };
    let groups: Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await
        .map_err(err(stream))?;
    for g in as_array(&groups) {
        let g = Fields::new(g);
        let name = g.string("name").unwrap_or_default();
        let consumers: Value = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(stream)
            .arg(&name)
            .query_async(conn)
            .await
            .map_err(err(stream))?;
        let consumers = as_array(&consumers)
            .iter()
            .map(|c| {
                let c = Fields::new(c);
                ConsumerInfo {
                    name: c.string("name").unwrap_or_default(),
                    pending: c.u64("pending").unwrap_or(0),
                    idle_ms: c.u64("idle").unwrap_or(0),
                }
            })
            .collect();
        let pending = g.u64("pending").unwrap_or(0);
        let oldest_pending_ms = if pending > 0 {
            oldest_pending_age(conn, stream, &name).await?
        } else {
            0
        };
        let last_delivered_id = g.string("last-delivered-id").unwrap_or_default();
        let lag = match g.u64("lag") {
            // A group that has read the last entry has no lag, whatever the server's counter
            // says (Redis can report a stale one for such a group after restarts).
            _ if out.last_id.as_deref() == Some(last_delivered_id.as_str()) => Some(0),
            Some(lag) => Some(lag),
            None => count_lag(conn, &out, &last_delivered_id).await?,
        };
        let held_back = if pending > 0 {
            held_back(conn, stream, &name).await?
        } else {
            0
        };
        out.groups.push(GroupInfo {
            pending,
            held_back,
            last_delivered_id,
            entries_read: g.u64("entries-read"),
            lag,
            oldest_pending_ms,
            consumers,
            name,
        });
    }
    Ok(out)
}

/// How many entries of `group`'s ordered handlers wait behind an earlier entry of their key
/// (every queued entry but the heads, running or retrying): the order hash's `held` count.
async fn held_back(
    conn: &mut RedisConnection,
    stream: &str,
    group: &str,
) -> Result<u64, StreamError> {
    let held: Option<i64> = redis::cmd("HGET")
        .arg(crate::keys::StreamKeys::new(stream).order_hash(group))
        .arg("held")
        .query_async(conn)
        .await
        .map_err(StreamError::redis(stream))?;
    Ok(held.unwrap_or(0).max(0) as u64)
}

/// Counts the entries after `last_delivered` when the server does not report a group's lag:
/// directly when they are few, else as the length minus the entries up to it when those are
/// few; `None` when both sides are larger than [`LAG_COUNT_LIMIT`].
async fn count_lag(
    conn: &mut RedisConnection,
    info: &StreamInfo,
    last_delivered: &str,
) -> Result<Option<u64>, StreamError> {
    let stream = info.stream.as_str();
    let (Some(first), Some(last)) = (info.first_id.as_deref(), info.last_id.as_deref()) else {
        return Ok(Some(0));
    };
    let position = EntryId::or_zero(last_delivered);
    if position >= EntryId::or_zero(last) {
        return Ok(Some(0));
    }
    if position < EntryId::or_zero(first) {
        return Ok(Some(info.length));
    }
    // Counted inside the server, so no entry crosses the network.
    let lag: Lag = crate::functions::LAG
        .key(stream)
        .arg(last_delivered)
        .arg(LAG_COUNT_LIMIT)
        .invoke_async(conn)
        .await
        .map_err(StreamError::redis(stream))?;
    Ok(match lag {
        Lag::Counted(n) => Some(n),
        Lag::OverLimit => None,
    })
}

/// A stream entry id, `<milliseconds>-<sequence>`: the one place that reads one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryId {
    /// The server's time when the entry was added, in ms since the epoch.
    pub ms: u64,
    /// Its sequence number within that millisecond.
    pub seq: u64,
}

impl EntryId {
    /// `<ms>-<seq>` (or `<ms>`, sequence 0); `None` for anything else.
    pub fn parse(id: &str) -> Option<EntryId> {
        let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
        Some(EntryId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }

    /// [`EntryId::parse`] for ordering: a malformed id sorts first (0-0).
    pub fn or_zero(id: &str) -> EntryId {
        EntryId::parse(id).unwrap_or_default()
    }

    /// How long ago, by this process's clock, the entry was added (0 if in the future).
    pub fn age_ms(&self) -> u64 {
        (chrono::Utc::now().timestamp_millis().max(0) as u64).saturating_sub(self.ms)
    }
}

impl std::fmt::Display for EntryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

async fn oldest_pending_age(
    conn: &mut RedisConnection,
    stream: &str,
    group: &str,
) -> Result<u64, StreamError> {
    // The idle time of the first pending entry is how long it has waited since its last
    // delivery; its id carries its publish time, which is what a backlog's age means.
    let first: Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .arg("-")
        .arg("+")
        .arg(1)
        .query_async(conn)
        .await
        .map_err(StreamError::redis(stream))?;
    let Some(entry) = as_array(&first).first() else {
        return Ok(0);
    };
    let id = as_array(entry)
        .first()
        .and_then(value_string)
        .unwrap_or_default();
    Ok(EntryId::or_zero(&id).age_ms())
}

pub(crate) fn as_array(v: &Value) -> &[Value] {
    match v {
        Value::Array(items) => items,
        _ => &[],
    }
}

pub(crate) fn value_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// A RESP2 key/value array or a RESP3 map, read by key.
pub(crate) struct Fields<'a>(Vec<(String, &'a Value)>);

impl<'a> Fields<'a> {
    pub(crate) fn new(v: &'a Value) -> Self {
        let pairs = match v {
            Value::Map(m) => m
                .iter()
                .filter_map(|(k, v)| Some((value_string(k)?, v)))
                .collect(),
            Value::Array(items) => items
                .chunks(2)
                .filter_map(|c| match c {
                    [k, v] => Some((value_string(k)?, v)),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        Fields(pairs)
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    pub(crate) fn u64(&self, key: &str) -> Option<u64> {
        match self.get(key)? {
            Value::Int(i) => u64::try_from(*i).ok(),
            other => value_string(other)?.parse().ok(),
        }
    }

    pub(crate) fn string(&self, key: &str) -> Option<String> {
        value_string(self.get(key)?)
    }

    fn entry_id(&self, key: &str) -> Option<String> {
        as_array(self.get(key)?).first().and_then(value_string)
    }
}

#[cfg(test)]
mod tests {
    use super::EntryId;

    #[test]
    fn entry_ids_parse_order_and_print_back() {
        let id = EntryId::parse("1796412177499-22").unwrap();
        assert_eq!((id.ms, id.seq), (1_796_412_177_499, 22));
        assert_eq!(id.to_string(), "1796412177499-22");
        assert_eq!(EntryId::parse("17"), Some(EntryId { ms: 17, seq: 0 }));
        for bad in ["", "-", "x-1", "1-x", "1-2-3"] {
            assert_eq!(EntryId::parse(bad), None, "{bad}");
        }
        assert!(EntryId::or_zero("9-1") > EntryId::or_zero("9-0"));
        assert!(EntryId::or_zero("10-0") > EntryId::or_zero("9-99"));
        assert_eq!(EntryId::or_zero("garbage"), EntryId::default());
    }
}
