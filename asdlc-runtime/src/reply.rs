//! Reading stream entries out of Redis replies, without ever failing a whole batch on one
//! bad entry: field names and values are kept as bytes, and the decoder judges each entry.
//! Below both the consumer and the dead-letter stream, which read the same replies.

use redis::Value;

/// An entry's fields, as bytes.
pub(crate) type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// One stream entry as Redis returned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawEntry {
    pub(crate) id: String,
    /// `None` when the entry was deleted from the stream but was still pending.
    pub(crate) fields: Option<Fields>,
}

fn bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

fn text(v: Value) -> Option<String> {
    bytes(v).map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn array(v: Value) -> Vec<Value> {
    match v {
        Value::Array(items) | Value::Set(items) => items,
        _ => Vec::new(),
    }
}

fn entry(v: Value) -> Option<RawEntry> {
    let mut parts = array(v).into_iter();
    let id = text(parts.next()?)?;
    let fields = match parts.next() {
        None | Some(Value::Nil) => None,
        Some(Value::Map(pairs)) => Some(
            pairs
                .into_iter()
                .map(|(k, v)| (bytes(k).unwrap_or_default(), bytes(v).unwrap_or_default()))
                .collect(),
        ),
        Some(list) => {
            let flat = array(list);
            let mut fields = Vec::with_capacity(flat.len() / 2);
            let mut it = flat.into_iter();
            while let Some(k) = it.next() {
                let v = it.next().and_then(bytes).unwrap_or_default();
                fields.push((bytes(k).unwrap_or_default(), v));
            }
            Some(fields)
        }
    };
    Some(RawEntry { id, fields })
}

/// Entries of an `XCLAIM` / `XRANGE` reply.
pub(crate) fn parse_entries(v: Value) -> Vec<RawEntry> {
    array(v).into_iter().filter_map(entry).collect()
}

/// Entries of an XRANGE-like reply as (id, fields); deleted entries are left out.
pub(crate) fn parse_present_entries(v: Value) -> Vec<(String, Fields)> {
    parse_entries(v)
        .into_iter()
        .filter_map(|e| Some((e.id, e.fields?)))
        .collect()
}

/// Entries of an `XREADGROUP` reply, per stream (`Nil` on timeout gives nothing).
pub(crate) fn parse_read(v: Value) -> Vec<(String, Vec<RawEntry>)> {
    match v {
        Value::Map(pairs) => pairs
            .into_iter()
            .filter_map(|(k, v)| Some((text(k)?, parse_entries(v))))
            .collect(),
        other => array(other)
            .into_iter()
            .filter_map(|s| {
                let mut parts = array(s).into_iter();
                let name = text(parts.next()?)?;
                Some((name, parse_entries(parts.next()?)))
            })
            .collect(),
    }
}

/// An `XAUTOCLAIM` reply: next cursor, claimed entries, ids deleted from the stream.
pub(crate) fn parse_autoclaim(v: Value) -> (String, Vec<RawEntry>, Vec<String>) {
    let mut parts = array(v).into_iter();
    let cursor = parts.next().and_then(text).unwrap_or_else(|| "0-0".into());
    let entries = parts.next().map(parse_entries).unwrap_or_default();
    let deleted = parts
        .next()
        .map(|d| array(d).into_iter().filter_map(text).collect())
        .unwrap_or_default();
    (cursor, entries, deleted)
}

/// How many entries each consumer has pending, from an `XPENDING <stream> <group>` summary
/// (`[count, first id, last id, [[consumer, count], ...]]`).
pub(crate) fn parse_pending_summary(v: Value) -> Vec<(String, u64)> {
    array(v)
        .into_iter()
        .nth(3)
        .map(array)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|c| {
            let mut parts = array(c).into_iter();
            let name = text(parts.next()?)?;
            let count = text(parts.next()?)?.parse().ok()?;
            Some((name, count))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &[u8]) -> Value {
        Value::BulkString(s.to_vec())
    }

    #[test]
    fn a_bad_entry_does_not_spoil_the_batch() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk(b"asdlc:events"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk(b"1-0"),
                    Value::Array(vec![bulk(&[0xff, 0xfe]), bulk(b"x")]),
                ]),
                Value::Array(vec![bulk(b"2-0"), Value::Nil]),
                Value::Array(vec![bulk(b"3-0"), Value::Array(vec![bulk(b"odd")])]),
                Value::Int(7),
            ]),
        ])]);
        let streams = parse_read(reply);
        assert_eq!(streams.len(), 1);
        let entries = &streams[0].1;
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].fields.as_ref().unwrap()[0].0, vec![0xff, 0xfe]);
        assert_eq!(entries[1].fields, None);
        assert_eq!(entries[2].fields.as_ref().unwrap()[0].1, Vec::<u8>::new());
        assert!(parse_read(Value::Nil).is_empty());
    }

    #[test]
    fn a_pending_summary_counts_per_consumer() {
        let reply = Value::Array(vec![
            Value::Int(5),
            bulk(b"1-0"),
            bulk(b"9-0"),
            Value::Array(vec![
                Value::Array(vec![bulk(b"w1"), bulk(b"3")]),
                Value::Array(vec![bulk(b"w2"), bulk(b"2")]),
            ]),
        ]);
        assert_eq!(
            parse_pending_summary(reply),
            [("w1".to_owned(), 3), ("w2".to_owned(), 2)]
        );
        // Nothing pending: the list is nil.
        let empty = Value::Array(vec![Value::Int(0), Value::Nil, Value::Nil, Value::Nil]);
        assert!(parse_pending_summary(empty).is_empty());
    }
}
