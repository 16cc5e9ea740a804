//! What a tenant's ACL user may do: its name, the one key pattern it may touch, and the
//! commands it is granted.

use crate::tenancy::TenantId;

/// The commands (and subcommands) a tenant user is granted, lower-case as `ACL SETUSER` takes
/// them.
pub const TENANT_COMMANDS: &[&str] = &[
    // Streams: publishing, consuming, recovery, dead letters, monitoring.
    "xadd",
    "xreadgroup",
    "xack",
    "xclaim",
    "xautoclaim",
    "xpending",
    "xinfo|stream",
    "xinfo|groups",
    "xinfo|consumers",
    "xgroup|create",
    "xgroup|createconsumer",
    "xgroup|delconsumer",
    "xgroup|destroy",
    "xgroup|setid",
    "xlen",
    "xrange",
    "xrevrange",
    "xdel",
    "xtrim",
    // The protocol's functions (never EVAL, SCRIPT or FUNCTION LOAD: a tenant runs no code of
    // its own), and what they (and staged effects) run inside.
    "fcall",
    "fcall_ro",
    "time",
    "get",
    "set",
    "del",
    "unlink",
    "exists",
    "type",
    "ttl",
    "pttl",
    "expire",
    "pexpire",
    "pexpireat",
    "incrby",
    "hset",
    "hget",
    "hmget",
    "hgetall",
    "hexists",
    "hincrby",
    "hdel",
    "hlen",
    "sadd",
    "srem",
    "smembers",
    "sismember",
    "scard",
    "rpush",
    "lrange",
    "llen",
    // Scheduled events: a sorted set of due times beside a hash of the events.
    "hsetnx",
    "hscan",
    "zadd",
    "zrem",
    "zrange",
    "zcard",
    "zscore",
    // Transactions on its own keys (dead-letter purge).
    "multi",
    "exec",
    "discard",
    // Durable publishing.
    "wait",
    // The connection itself.
    "ping",
    "client|id",
    "client|setname",
    "client|getname",
    // Finding the way around a cluster.
    "asking",
    "cluster|slots",
    "cluster|shards",
];

/// The ACL user name of `tenant`: `asdlc-tenant-<id>`.
pub fn tenant_username(tenant: &TenantId) -> String {
    format!("asdlc-tenant-{}", tenant.as_str())
}

/// The key pattern `tenant` is allowed: `tenant:{<id>}:*`, every key of its streams. (Tenant
/// ids have no glob characters, so the pattern matches exactly these keys.)
pub fn tenant_key_pattern(tenant: &TenantId) -> String {
    format!(
        "{}:*",
        crate::keys::get_stream_name("", Some(tenant)).trim_end_matches(':')
    )
}

/// The ACL user of one tenant, to provision: [`TENANT_COMMANDS`] on `tenant:{<id>}:*`, plus
/// what is added here.
#[derive(Debug, Clone)]
#[must_use]
pub struct TenantAcl {
    pub(super) tenant: TenantId,
    client_list: bool,
    pub(super) extra: Vec<String>,
}

impl TenantAcl {
    /// The default grant for `tenant`.
    pub fn new(tenant: TenantId) -> Self {
        TenantAcl {
            tenant,
            client_list: false,
            extra: Vec::new(),
        }
    }

    /// Also grants `CLIENT LIST`: a consumer restarting after a crash takes its name over at
    /// once instead of after 15 s, at the price of seeing every connection of the server (see
    /// the [module docs](super)).
    pub fn allow_client_list(mut self, allow: bool) -> Self {
        self.client_list = allow;
        self
    }

    /// Also grants `command` (e.g. `"zadd"`, or `"object|encoding"`), still only on the
    /// tenant's keys.
    pub fn command(mut self, command: impl Into<String>) -> Self {
        self.extra.push(command.into().to_ascii_lowercase());
        self
    }

    /// The `ACL SETUSER` arguments after the user name, password excluded: the user is reset
    /// (so provisioning again replaces every earlier grant), enabled, allowed the tenant's
    /// key pattern and no pub/sub channel, and denied every command but the granted ones.
    pub fn rules(&self) -> Vec<String> {
        let mut rules = vec![
            "reset".to_owned(),
            "on".to_owned(),
            format!("~{}", tenant_key_pattern(&self.tenant)),
            "resetchannels".to_owned(),
            "-@all".to_owned(),
        ];
        rules.extend(TENANT_COMMANDS.iter().map(|c| format!("+{c}")));
        if self.client_list {
            rules.push("+client|list".to_owned());
        }
        rules.extend(self.extra.iter().map(|c| format!("+{c}")));
        rules
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acme() -> TenantId {
        TenantId::new("acme").unwrap()
    }

    #[test]
    fn the_user_gets_only_the_tenant_keys() {
        assert_eq!(tenant_key_pattern(&acme()), "tenant:{acme}:*");
        assert_eq!(tenant_username(&acme()), "asdlc-tenant-acme");
        let rules = TenantAcl::new(acme()).rules();
        assert_eq!(
            &rules[..5],
            ["reset", "on", "~tenant:{acme}:*", "resetchannels", "-@all"]
        );
        for forbidden in [
            "+keys",
            "+scan",
            "+randomkey",
            "+flushdb",
            "+flushall",
            "+info",
            "+client|list",
        ] {
            assert!(
                !rules.iter().any(|r| r == forbidden),
                "{forbidden} is granted"
            );
        }
        let rules = TenantAcl::new(acme())
            .allow_client_list(true)
            .command("ZADD")
            .rules();
        assert!(rules.iter().any(|r| r == "+client|list"));
        assert!(rules.iter().any(|r| r == "+zadd"));
    }

    #[test]
    fn every_tenant_key_matches_the_pattern() {
        let keys = crate::keys::StreamKeys::new(crate::keys::get_stream_name(
            "asdlc:events",
            Some(&acme()),
        ));
        let prefix = tenant_key_pattern(&acme());
        let prefix = prefix.trim_end_matches('*');
        for key in [
            keys.stream().to_owned(),
            keys.dead_letter(),
            keys.marks_prefix("g"),
            keys.lease_prefix("g"),
            keys.consumer_lock("g", "c"),
            keys.scoped("x"),
            keys.scheduled(),
            keys.scheduled_events(),
            keys.gate("g1"),
            keys.gates(),
            keys.pending_gates(),
        ] {
            assert!(key.starts_with(prefix), "{key}");
        }
    }
}
