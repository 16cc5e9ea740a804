//! Stream replies (XRANGE, XREAD, XPENDING) as plain data, in RESP2 or RESP3.

use redis::Value;

/// One entry: its id and its fields (`None` when the entry was deleted).
pub type Entry = (String, Option<Vec<(Vec<u8>, Vec<u8>)>>);

fn bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.clone().into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

/// A value as text.
pub fn text(v: &Value) -> Option<String> {
    bytes(v).map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn fields(v: &Value) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    match v {
        Value::Array(flat) => Some(
            flat.chunks(2)
                .filter_map(|c| match c {
                    [k, v] => Some((bytes(k)?, bytes(v)?)),
                    _ => None,
                })
                .collect(),
        ),
        Value::Map(pairs) => Some(
            pairs
                .iter()
                .filter_map(|(k, v)| Some((bytes(k)?, bytes(v)?)))
                .collect(),
        ),
        _ => None,
    }
}

/// The entries of an XRANGE/XCLAIM reply.
pub fn entries(v: &Value) -> Vec<Entry> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| match item {
            Value::Array(parts) => {
                let id = text(parts.first()?)?;
                Some((id, parts.get(1).and_then(fields)))
            }
            _ => None,
        })
        .collect()
}

/// The entries of an XREAD reply, per stream.
pub fn read_reply(v: &Value) -> Vec<(String, Vec<Entry>)> {
    match v {
        Value::Array(streams) => streams
            .iter()
            .filter_map(|s| match s {
                Value::Array(parts) => Some((text(parts.first()?)?, entries(parts.get(1)?))),
                _ => None,
            })
            .collect(),
        Value::Map(pairs) => pairs
            .iter()
            .filter_map(|(k, v)| Some((text(k)?, entries(v))))
            .collect(),
        _ => Vec::new(),
    }
}

/// One entry of an extended XPENDING reply.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PendingEntry {
    /// The entry id.
    pub id: String,
    /// The consumer that holds it.
    pub consumer: String,
    /// Milliseconds since it was last delivered.
    pub idle_ms: u64,
    /// How many times it was delivered.
    pub deliveries: u64,
}

/// The entries of an extended XPENDING reply.
pub fn pending(v: &Value) -> Vec<PendingEntry> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| match item {
            Value::Array(p) if p.len() >= 4 => Some(PendingEntry {
                id: text(&p[0])?,
                consumer: text(&p[1])?,
                idle_ms: text(&p[2])?.parse().ok()?,
                deliveries: text(&p[3])?.parse().ok()?,
            }),
            _ => None,
        })
        .collect()
}
