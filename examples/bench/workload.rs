//! The workload: events of a fixed size, their stream fields, a prefilled stream, and the
//! entries of an XREADGROUP reply read straight off the reply (as a raw loop would).

use std::sync::OnceLock;

use asdlc::RedisConnection;
use asdlc::encoding::encode;
use asdlc::prelude::*;
use redis::Value;

use crate::{Bench, EVENT_BYTES};

/// A `task_created` event of about [`EVENT_BYTES`] bytes encoded, with a fresh key.
pub(crate) fn sample_event(i: usize) -> AsdlcEvent {
    static PAD: OnceLock<usize> = OnceLock::new();
    let build = |pad: usize| {
        AsdlcEvent::builder(
            EventType::TaskCreated,
            format!("bench-session-{:04}", i % 1000),
        )
        .epic_id("epic-7")
        .task_id(format!("task-{i:07}"))
        .git_sha("4f2a9c1e8b7d6a5f4e3d2c1b0a9f8e7d6c5b4a39")
        .artifact_paths(["src/lib.rs", "src/bench/path.rs"])
        .meta("payload", "x".repeat(pad))
        .build_unchecked()
    };
    let pad = *PAD.get_or_init(|| {
        let base = asdlc::encoding::encoded_len(&build(0));
        EVENT_BYTES.saturating_sub(base)
    });
    build(pad)
}

pub(crate) fn encoded(events: &[AsdlcEvent]) -> Vec<Vec<(&'static str, Vec<u8>)>> {
    events.iter().map(|e| encode(e).fields().to_vec()).collect()
}

pub(crate) fn xadd(stream: &str, fields: &[(&'static str, Vec<u8>)]) -> redis::Cmd {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream).arg("*");
    for (k, v) in fields {
        cmd.arg(*k).arg(v.as_slice());
    }
    cmd
}

/// Fills a fresh stream with `n` events, pipelined; not timed.
pub(crate) async fn prefill(b: &Bench, what: &str, n: usize) -> String {
    let stream = b.fresh_stream(what);
    fill(b, &stream, n).await;
    stream
}

/// Appends `n` events to `stream`, pipelined; not timed.
pub(crate) async fn fill(b: &Bench, stream: &str, n: usize) {
    let events: Vec<AsdlcEvent> = (0..n).map(sample_event).collect();
    let mut c = b.conn.clone();
    for chunk in encoded(&events).chunks(1000) {
        let mut pipe = redis::pipe();
        for f in chunk {
            pipe.add_command(xadd(stream, f)).ignore();
        }
        let _: () = pipe.query_async(&mut c).await.expect("prefill");
    }
}

/// Reads up to `count` new entries of `stream` for `group` as consumer `name`, as (id,
/// idempotency key): a raw loop's XREADGROUP.
pub(crate) async fn read_new(
    c: &mut RedisConnection,
    stream: &str,
    group: &str,
    name: &str,
    count: usize,
) -> Vec<(Value, Option<Vec<u8>>)> {
    let reply: Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(group)
        .arg(name)
        .arg("COUNT")
        .arg(count)
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query_async(c)
        .await
        .expect("XREADGROUP");
    read_reply(reply)
}

/// A raw loop's deduplication: one script call per batch that sets a mark per key with
/// `SET NX EX`, saying which keys were new (1) or seen (0).
pub(crate) async fn dedup(
    c: &mut RedisConnection,
    entries: &[(Value, Option<Vec<u8>>)],
) -> Vec<i64> {
    static SCRIPT: OnceLock<redis::Script> = OnceLock::new();
    let script = SCRIPT.get_or_init(|| {
        redis::Script::new(
            "local out = {}
             for i = 1, #ARGV do
               out[i] = redis.call('SET', 'bench:dedup:' .. ARGV[i], 1, 'NX', 'EX', 604800) and 1 or 0
             end
             return out",
        )
    });
    let mut inv = script.prepare_invoke();
    for (_, key) in entries {
        inv.arg(key.as_deref().unwrap_or_default());
    }
    let fresh: Vec<i64> = inv.invoke_async(c).await.expect("dedup");
    assert_eq!(fresh.len(), entries.len());
    fresh
}

/// `XACK stream group <every id of entries>`.
pub(crate) fn xack(stream: &str, group: &str, entries: &[(Value, Option<Vec<u8>>)]) -> redis::Cmd {
    let mut ack = redis::cmd("XACK");
    ack.arg(stream).arg(group);
    for (id, _) in entries {
        if let Value::BulkString(id) = id {
            ack.arg(id.as_slice());
        }
    }
    ack
}

/// The entries of an XREADGROUP reply as (id, idempotency key), read straight off the reply.
fn read_reply(v: Value) -> Vec<(Value, Option<Vec<u8>>)> {
    let streams = match v {
        Value::Array(s) => s.into_iter().filter_map(|s| match s {
            Value::Array(mut p) if p.len() == 2 => p.pop(),
            _ => None,
        }),
        Value::Map(m) => {
            return m.into_iter().flat_map(|(_, e)| entries_of(e)).collect();
        }
        _ => return Vec::new(),
    };
    streams.flat_map(entries_of).collect()
}

pub(crate) fn entries_of(v: Value) -> Vec<(Value, Option<Vec<u8>>)> {
    let Value::Array(entries) = v else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter_map(|e| {
            let Value::Array(mut parts) = e else {
                return None;
            };
            let fields = parts.pop()?;
            let id = parts.pop()?;
            let mut key = None;
            if let Value::Array(f) = fields {
                for pair in f.chunks(2) {
                    if let [Value::BulkString(k), Value::BulkString(v)] = pair
                        && k == b"idempotency_key"
                    {
                        key = Some(v.clone());
                    }
                }
            }
            Some((id, key))
        })
        .collect()
}
