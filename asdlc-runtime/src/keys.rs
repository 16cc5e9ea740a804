//! Key layout, and the slot rule that keeps a stream's keys together.
//!
//! **The slot rule.** Every key asdlc derives from a stream (processed marks, in-flight
//! leases, consumer-name locks, dead letters, staged effects) hashes to the stream's Redis
//! Cluster slot, so one Lua script can touch them all atomically, on a single server and on a
//! cluster alike. [`StreamKeys`] is the one place that builds those keys: a stream whose name
//! has a hash tag (`tenant:{acme}:asdlc:events`) is its own prefix; any other stream
//! (`asdlc:events`) is wrapped in braces (`{asdlc:events}:...`), which hashes exactly like the
//! bare name.
//!
//! | what | single-tenant | tenant `acme` |
//! |---|---|---|
//! | stream | `asdlc:events` | `tenant:{acme}:asdlc:events` |
//! | dead letters | `{asdlc:events}:dead` | `tenant:{acme}:asdlc:events:dead` |
//! | processed marks | `{asdlc:events}:marks:<group>:<bucket>:<shard>` | `tenant:{acme}:asdlc:events:marks:...` |
//! | a bucket's mark layout | `{asdlc:events}:marks:<group>:<bucket>:layout` | `tenant:{acme}:asdlc:events:marks:...` |
//! | in-flight leases (one hash, a field per key) | `{asdlc:events}:lease:<group>` | `tenant:{acme}:asdlc:events:lease:<group>` |
//! | per-key order (one hash: cursor, held-back count, a queue per order key) | `{asdlc:events}:order:<group>` | `tenant:{acme}:asdlc:events:order:<group>` |
//! | consumer locks | `{asdlc:events}:consumer:<group>:<name>` | `tenant:{acme}:asdlc:events:consumer:...` |
//! | staged effects | `{asdlc:events}:fx:<name>` | `tenant:{acme}:asdlc:events:fx:<name>` |

use crate::error::ValidationError;
use crate::tenancy::TenantId;

/// The default stream base name.
pub const DEFAULT_STREAM: &str = "asdlc:events";

/// The stream for `tenant` (or the shared stream when `None`): `base` in single-tenant mode,
/// `tenant:{<tenant>}:<base>` in multi-tenant mode. The braces are a Redis Cluster hash tag,
/// so all of one tenant's keys live in one slot.
pub fn get_stream_name(base: &str, tenant: Option<&TenantId>) -> String {
    match tenant {
        None => base.to_owned(),
        Some(t) => format!("tenant:{{{}}}:{base}", t.as_str()),
    }
}

/// The tenant a stream name belongs to, if it has the multi-tenant form for `base`.
pub fn tenant_of_stream(stream: &str, base: &str) -> Option<TenantId> {
    let rest = stream.strip_prefix("tenant:{")?;
    let (tenant, tail) = rest.split_once('}')?;
    if tail.strip_prefix(':')? != base {
        return None;
    }
    TenantId::new(tenant).ok()
}

/// The tenant of a stream name of the multi-tenant form `tenant:{<tenant>}:<base>`, whatever
/// the base; `None` for any other name (a base has no braces, so it cannot look like one).
pub(crate) fn tenant_in_stream_name(stream: &str) -> Option<TenantId> {
    let rest = stream.strip_prefix("tenant:{")?;
    let (tenant, tail) = rest.split_once('}')?;
    tail.strip_prefix(':')?;
    TenantId::new(tenant).ok()
}

/// Checks a stream base name: non-empty, at most 200 bytes, printable, no whitespace and no
/// braces (braces would change the key's hash tag).
pub fn validate_stream_base(base: &str) -> Result<(), ValidationError> {
    if base.is_empty() || base.len() > 200 {
        return Err(ValidationError::new(
            "stream",
            "must be 1 to 200 bytes long",
        ));
    }
    if base.chars().any(|c| {
        c.is_whitespace() || c.is_control() || matches!(c, '{' | '}' | '*' | '?' | '[' | ']')
    }) {
        return Err(ValidationError::new(
            "stream",
            format!("`{base}` must not contain whitespace, braces or glob characters"),
        ));
    }
    Ok(())
}

/// Checks a consumer group name: 1 to 63 of lowercase letters, digits, `-`, `_` and `.`.
pub fn validate_group(group: &str) -> Result<(), ValidationError> {
    validate_name("group", group, 63, |c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.')
    })
}

/// Checks a consumer name: 1 to 128 of ASCII letters, digits, `-`, `_`, `.` and `@`.
pub fn validate_consumer(consumer: &str) -> Result<(), ValidationError> {
    validate_name("consumer", consumer, 128, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@')
    })
}

fn validate_name(
    field: &'static str,
    value: &str,
    max: usize,
    ok: impl Fn(char) -> bool,
) -> Result<(), ValidationError> {
    if value.is_empty() || value.len() > max {
        return Err(ValidationError::new(
            field,
            format!(
                "`{}` must be 1 to {max} characters long",
                crate::text::truncate(value, 80)
            ),
        ));
    }
    if let Some(bad) = value.chars().find(|c| !ok(*c)) {
        return Err(ValidationError::new(
            field,
            format!(
                "`{}` contains the character {bad:?}",
                crate::text::truncate(value, 80)
            ),
        ));
    }
    Ok(())
}

/// Every key derived from one stream, built under the slot rule (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamKeys {
    stream: String,
    namespace: String,
}

impl StreamKeys {
    /// The keys of `stream`.
    pub fn new(stream: impl Into<String>) -> Self {
        let stream = stream.into();
        let namespace = if hash_tag(stream.as_bytes()).is_some() {
            stream.clone()
        } else {
            format!("{{{stream}}}")
        };
        StreamKeys { stream, namespace }
    }

    /// The stream itself.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The prefix every derived key starts with (it carries the stream's hash tag).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The sorted set of this stream's scheduled events: idempotency key -> due time (ms).
    pub fn scheduled(&self) -> String {
        format!("{}:scheduled", self.namespace)
    }

    /// The hash of this stream's scheduled events: idempotency key -> the entry's fields.
    pub fn scheduled_events(&self) -> String {
        format!("{}:scheduled:events", self.namespace)
    }

    /// The state of approval gate `id` (a hash: outcome, who decided it, when).
    pub fn gate(&self, id: &str) -> String {
        format!("{}:gate:{id}", self.namespace)
    }

    /// Every gate of this stream by request time (a sorted set of gate ids).
    pub fn gates(&self) -> String {
        format!("{}:gates", self.namespace)
    }

    /// The gates still waiting for an outcome, by deadline (a sorted set of gate ids).
    pub fn pending_gates(&self) -> String {
        format!("{}:gates:pending", self.namespace)
    }

    /// The dead-letter stream beside this stream.
    pub fn dead_letter(&self) -> String {
        format!("{}:dead", self.namespace)
    }

    /// The prefix of `group`'s processed-mark hashes (`<prefix><bucket>:<shard>`) and of its
    /// buckets' layouts (`<prefix><bucket>:layout`).
    pub fn marks_prefix(&self, group: &str) -> String {
        format!("{}:marks:{group}:", self.namespace)
    }

    /// The prefix of `group`'s in-flight leases (without its final `:`, the name of the hash
    /// that holds them).
    pub fn lease_prefix(&self, group: &str) -> String {
        format!("{}:lease:{group}:", self.namespace)
    }

    /// The hash of `group`'s per-key ordering: the cursor of placed entries, the count of
    /// held-back entries, and the queue of each order key (a field named after the key, with
    /// its head and tail, and a link from each queued entry to the next).
    pub fn order_hash(&self, group: &str) -> String {
        format!("{}:order:{group}", self.namespace)
    }

    /// The lock that keeps a consumer name to one live process.
    pub fn consumer_lock(&self, group: &str, consumer: &str) -> String {
        format!("{}:consumer:{group}:{consumer}", self.namespace)
    }

    /// The marker the consumer-name locks of this stream keep (a key without expiry): where
    /// it is missing, the server may have just lost its data, and a newcomer finding a name
    /// free waits on probation for a live holder to renew it.
    pub fn consumer_lock_marker(&self) -> String {
        format!("{}:consumers", self.namespace)
    }

    /// A key for application state kept beside the stream, in its slot, so handlers can stage
    /// writes to it that commit atomically with the event's acknowledgement.
    pub fn scoped(&self, name: &str) -> String {
        format!("{}:fx:{name}", self.namespace)
    }

    /// The cluster slot of the stream, and of every key derived from it.
    pub fn slot(&self) -> u16 {
        hash_slot(self.stream.as_bytes())
    }

    /// Whether `key` lives in this stream's slot.
    pub fn same_slot(&self, key: &[u8]) -> bool {
        hash_slot(key) == self.slot()
    }
}

/// Groups `streams` by cluster slot, keeping the order in which each slot first appears (and
/// the order of the streams within a slot).
///
/// One `XREADGROUP` reads all of an [`EventConsumer`](crate::EventConsumer)'s streams, and on a
/// Redis Cluster a multi-key command must stay in one slot. So a multi-tenant application on a
/// cluster runs one consumer per group of streams this returns; on a single server one
/// consumer can read them all.
///
/// ```
/// use asdlc_runtime::keys::{hash_slot, partition_by_slot};
/// let streams = ["tenant:{a}:asdlc:events", "tenant:{b}:asdlc:events", "{a}:other"];
/// let parts = partition_by_slot(streams);
/// assert_eq!(parts.len(), 2);
/// assert_eq!(parts[0], ["tenant:{a}:asdlc:events", "{a}:other"]);
/// ```
pub fn partition_by_slot<S: AsRef<str>>(streams: impl IntoIterator<Item = S>) -> Vec<Vec<S>> {
    group_by_slot(streams, |stream| hash_slot(stream.as_ref().as_bytes()))
}

/// Groups `tenants` by the cluster slot of their stream under the base name `base` (see
/// [`partition_by_slot`]): each group can share one consumer on a Redis Cluster.
///
/// ```
/// use asdlc_runtime::{TenantId, keys::partition_tenants_by_slot};
/// let tenants = ["acme", "globex", "initech"].map(|t| TenantId::new(t).unwrap());
/// let parts = partition_tenants_by_slot("asdlc:events", tenants);
/// // Each tenant has its own hash tag, so (unless two tags collide) its own slot.
/// assert_eq!(parts.len(), 3);
/// ```
pub fn partition_tenants_by_slot(
    base: &str,
    tenants: impl IntoIterator<Item = TenantId>,
) -> Vec<Vec<TenantId>> {
    group_by_slot(tenants, |tenant| {
        hash_slot(get_stream_name(base, Some(tenant)).as_bytes())
    })
}

/// `items` grouped by the slot `slot_of` gives each, groups in the order of their first item.
fn group_by_slot<T>(
    items: impl IntoIterator<Item = T>,
    slot_of: impl Fn(&T) -> u16,
) -> Vec<Vec<T>> {
    let mut slots: Vec<u16> = Vec::new();
    let mut parts: Vec<Vec<T>> = Vec::new();
    for item in items {
        let slot = slot_of(&item);
        match slots.iter().position(|s| *s == slot) {
            Some(i) => parts[i].push(item),
            None => {
                slots.push(slot);
                parts.push(vec![item]);
            }
        }
    }
    parts
}

/// The part of `key` Redis Cluster hashes: the content of the first `{...}` when non-empty.
pub fn hash_tag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|&b| b == b'{')?;
    let close = key[open + 1..].iter().position(|&b| b == b'}')?;
    if close == 0 {
        return None;
    }
    Some(&key[open + 1..open + 1 + close])
}

/// The Redis Cluster slot of `key` (CRC16/XMODEM of its hash tag, modulo 16384).
pub fn hash_slot(key: &[u8]) -> u16 {
    let hashed = hash_tag(key).unwrap_or(key);
    crc16(hashed) % 16384
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_matches_the_cluster_spec() {
        // The Redis Cluster specification's reference value.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(hash_slot(b"foo"), 12182);
        assert_eq!(hash_slot(b"{user1000}.following"), hash_slot(b"user1000"));
        assert_eq!(hash_slot(b"foo{}{bar}"), hash_slot(b"foo{}{bar}"));
        assert_ne!(hash_slot(b"foo{}{bar}"), hash_slot(b"bar"));
    }

    #[test]
    fn single_tenant_uses_default_stream_name() {
        assert_eq!(get_stream_name(DEFAULT_STREAM, None), "asdlc:events");
    }

    #[test]
    fn multi_tenant_stream_names_carry_a_hash_tag() {
        let acme = TenantId::new("acme").unwrap();
        let s = get_stream_name(DEFAULT_STREAM, Some(&acme));
        assert_eq!(s, "tenant:{acme}:asdlc:events");
        assert_eq!(tenant_of_stream(&s, DEFAULT_STREAM), Some(acme));
        assert_eq!(tenant_of_stream("asdlc:events", DEFAULT_STREAM), None);
        assert_eq!(
            tenant_of_stream("tenant:{acme}:other", DEFAULT_STREAM),
            None
        );
    }

    #[test]
    fn every_derived_key_is_in_the_stream_slot() {
        let acme = TenantId::new("acme").unwrap();
        for stream in [
            get_stream_name(DEFAULT_STREAM, None),
            get_stream_name(DEFAULT_STREAM, Some(&acme)),
            get_stream_name("custom:stream-name", Some(&acme)),
            "plain".to_owned(),
        ] {
            let keys = StreamKeys::new(stream.clone());
            for derived in [
                keys.dead_letter(),
                format!("{}0:17", keys.marks_prefix("development-handlers")),
                format!("{}abcdef", keys.lease_prefix("hitl-handlers")),
                keys.consumer_lock("design-handlers", "worker-1"),
                keys.scoped("applied-patches"),
            ] {
                assert_eq!(
                    hash_slot(derived.as_bytes()),
                    hash_slot(stream.as_bytes()),
                    "{derived} is not in the slot of {stream}"
                );
                assert!(keys.same_slot(derived.as_bytes()));
            }
        }
    }

    #[test]
    fn tenants_land_in_their_own_keys() {
        let a = StreamKeys::new(get_stream_name(
            DEFAULT_STREAM,
            Some(&TenantId::new("a").unwrap()),
        ));
        let b = StreamKeys::new(get_stream_name(
            DEFAULT_STREAM,
            Some(&TenantId::new("b").unwrap()),
        ));
        assert_ne!(a.stream(), b.stream());
        assert_ne!(a.dead_letter(), b.dead_letter());
        assert_ne!(a.marks_prefix("g"), b.marks_prefix("g"));
    }

    #[test]
    fn streams_are_partitioned_by_slot() {
        let tenants: Vec<TenantId> = (0..50)
            .map(|i| TenantId::new(format!("t{i}")).unwrap())
            .collect();
        let streams: Vec<String> = tenants
            .iter()
            .map(|t| get_stream_name(DEFAULT_STREAM, Some(t)))
            .collect();
        let parts = partition_by_slot(streams.clone());
        assert_eq!(parts.iter().map(Vec::len).sum::<usize>(), streams.len());
        let mut seen = std::collections::HashSet::new();
        for part in &parts {
            let slot = hash_slot(part[0].as_bytes());
            assert!(part.iter().all(|s| hash_slot(s.as_bytes()) == slot));
            assert!(seen.insert(slot), "slot {slot} split over two parts");
        }
        let by_tenant = partition_tenants_by_slot(DEFAULT_STREAM, tenants);
        assert_eq!(by_tenant.len(), parts.len());
        // Same grouping, same order.
        for (t, s) in by_tenant.iter().zip(&parts) {
            let names: Vec<String> = t
                .iter()
                .map(|t| get_stream_name(DEFAULT_STREAM, Some(t)))
                .collect();
            assert_eq!(&names, s);
        }
        assert!(partition_by_slot(Vec::<String>::new()).is_empty());
    }

    #[test]
    fn names_are_validated() {
        validate_group("development-handlers").unwrap();
        assert!(validate_group("Dev Handlers").is_err());
        assert!(validate_group("").is_err());
        assert!(validate_group("a:b").is_err());
        validate_consumer("worker-1.host@pid").unwrap();
        assert!(validate_consumer("a b").is_err());
        validate_stream_base("asdlc:events").unwrap();
        assert!(validate_stream_base("a{b}").is_err());
        assert!(validate_stream_base("").is_err());
    }
}
