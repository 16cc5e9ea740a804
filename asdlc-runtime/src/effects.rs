//! Staged effects: Redis writes a handler asks for, applied in the same atomic step as the
//! event's processed mark and acknowledgement.
//!
//! This is how state kept in Redis changes exactly once per event, across duplicates, retries
//! and crashes: the commit script applies the effects only if the event is not already marked
//! processed, and marks it in the same step. Side effects outside Redis (an HTTP call, a file
//! written) are at-least-once; make them idempotent with the event's idempotency key.

/// One staged Redis write. Only commands that write a single key are offered, so the commit
/// script can check the key's slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effect {
    command: &'static str,
    key: String,
    args: Vec<Vec<u8>>,
}

impl Effect {
    fn new(command: &'static str, key: impl Into<String>, args: Vec<Vec<u8>>) -> Self {
        Effect {
            command,
            key: key.into(),
            args,
        }
    }

    /// `SET key value`.
    pub fn set(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Effect::new("SET", key, vec![value.into()])
    }

    /// `INCRBY key by`.
    pub fn incr_by(key: impl Into<String>, by: i64) -> Self {
        Effect::new("INCRBY", key, vec![by.to_string().into_bytes()])
    }

    /// `HSET key field value`.
    pub fn hset(
        key: impl Into<String>,
        field: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Self {
        Effect::new("HSET", key, vec![field.into(), value.into()])
    }

    /// `HINCRBY key field by`.
    pub fn hincr_by(key: impl Into<String>, field: impl Into<Vec<u8>>, by: i64) -> Self {
        Effect::new(
            "HINCRBY",
            key,
            vec![field.into(), by.to_string().into_bytes()],
        )
    }

    /// `SADD key member`.
    pub fn sadd(key: impl Into<String>, member: impl Into<Vec<u8>>) -> Self {
        Effect::new("SADD", key, vec![member.into()])
    }

    /// `RPUSH key value`.
    pub fn rpush(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Effect::new("RPUSH", key, vec![value.into()])
    }

    /// `DEL key`.
    pub fn del(key: impl Into<String>) -> Self {
        Effect::new("DEL", key, Vec::new())
    }

    /// `EXPIRE key seconds`.
    /// (Capped at a hundred years, so the commit never meets an expiry Redis refuses.)
    pub fn expire(key: impl Into<String>, seconds: u64) -> Self {
        let seconds = seconds.min(100 * 365 * 24 * 3600);
        Effect::new("EXPIRE", key, vec![seconds.to_string().into_bytes()])
    }

    /// `XADD stream [MAXLEN ~ max_len] * field value...`: a follow-up event, staged through
    /// [`crate::HandlerContext::emit`] (the only way to stage one, so it is always a valid
    /// event of this stream's slot and tenant).
    pub(crate) fn xadd(
        stream: String,
        max_len: Option<usize>,
        fields: Vec<(&'static str, Vec<u8>)>,
    ) -> Self {
        let mut args = Vec::with_capacity(4 + 2 * fields.len());
        if let Some(n) = max_len {
            args.push(b"MAXLEN".to_vec());
            args.push(b"~".to_vec());
            args.push(n.to_string().into_bytes());
        }
        args.push(b"*".to_vec());
        for (k, v) in fields {
            args.push(k.as_bytes().to_vec());
            args.push(v);
        }
        Effect::new("XADD", stream, args)
    }

    /// A follow-up scheduled `delay_ms` after the commit (by the server's clock) on the stream
    /// of `keys`: staged through [`crate::HandlerContext::emit_after`], appended by the
    /// promoter when due.
    pub(crate) fn schedule(
        keys: &crate::keys::StreamKeys,
        id: String,
        delay_ms: i64,
        blob: Vec<u8>,
    ) -> Self {
        Effect::new(
            "SCHEDULE",
            keys.scheduled(),
            vec![
                keys.scheduled_events().into_bytes(),
                id.into_bytes(),
                delay_ms.to_string().into_bytes(),
                blob,
            ],
        )
    }

    /// A second key the effect writes, which the commit must declare too.
    pub(crate) fn second_key(&self) -> Option<&[u8]> {
        (self.command == "SCHEDULE").then(|| self.args[0].as_slice())
    }

    /// The command name.
    pub fn command(&self) -> &'static str {
        self.command
    }

    /// The key written.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The arguments after the key.
    pub fn args(&self) -> &[Vec<u8>] {
        &self.args
    }
}
