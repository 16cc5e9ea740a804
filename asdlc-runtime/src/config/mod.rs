//! Configuration shared by publishers, consumers and the runtime.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::error::ConfigError;
use crate::keys::{DEFAULT_STREAM, validate_stream_base};
use crate::tenancy::TenantId;

mod url;

pub use url::{ACCEPTED_SCHEMES, CLUSTER_SCHEME, CLUSTER_TLS_SCHEME, RedisUrl};

/// The default Redis URL.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// How long processed marks live by default: 7 days.
pub const DEFAULT_IDEMPOTENCY_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Single- or multi-tenant operation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Tenancy {
    /// One shared stream, unprefixed keys.
    #[default]
    Single,
    /// One stream per tenant, `tenant:{id}:` keys.
    Multi {
        /// If set, only these tenants may publish or be consumed.
        allowed: Option<BTreeSet<TenantId>>,
    },
}

impl Tenancy {
    /// Multi-tenant, any valid tenant.
    pub fn multi() -> Self {
        Tenancy::Multi { allowed: None }
    }

    /// Multi-tenant, only these tenants.
    pub fn multi_only(tenants: impl IntoIterator<Item = TenantId>) -> Self {
        Tenancy::Multi {
            allowed: Some(tenants.into_iter().collect()),
        }
    }

    /// Whether streams are per tenant.
    pub fn is_multi(&self) -> bool {
        matches!(self, Tenancy::Multi { .. })
    }

    /// Whether `tenant` may be used.
    pub fn allows(&self, tenant: &TenantId) -> bool {
        match self {
            Tenancy::Single => false,
            Tenancy::Multi { allowed: None } => true,
            Tenancy::Multi { allowed: Some(set) } => set.contains(tenant),
        }
    }
}

/// Where the events are and how they are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The Redis server.
    pub redis_url: RedisUrl,
    /// The stream base name (`asdlc:events`).
    pub stream: String,
    /// Single- or multi-tenant.
    pub tenancy: Tenancy,
    /// How long processed marks are kept (default 7 days).
    pub idempotency_ttl: Duration,
    /// The most events a second one consumer group handles on one stream (for a tenant
    /// stream: its busiest tenant's), sustained over half the TTL: sizes the processed marks'
    /// layout, [`MarkLayout::for_rate`](crate::MarkLayout::for_rate). `None` (the default):
    /// the default layout, which keeps marks compact up to about 5 events a second at the
    /// default TTL and then costs about twice the memory a mark.
    pub idempotency_rate: Option<u64>,
    /// If set, publishing trims the stream to about this many entries with `MAXLEN ~`.
    /// Off by default: trimming can drop entries no consumer has read yet. Use
    /// [`crate::monitor::trim_acknowledged`] for retention that never loses work.
    pub max_len: Option<usize>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            redis_url: RedisUrl(DEFAULT_REDIS_URL.to_owned()),
            stream: DEFAULT_STREAM.to_owned(),
            tenancy: Tenancy::Single,
            idempotency_ttl: DEFAULT_IDEMPOTENCY_TTL,
            idempotency_rate: None,
            max_len: None,
        }
    }
}

impl Config {
    /// The defaults, for `url`.
    pub fn new(url: &str) -> Result<Self, ConfigError> {
        Ok(Config {
            redis_url: RedisUrl::parse(url)?,
            ..Config::default()
        })
    }

    /// From the environment: `REDIS_URL` (one server, or a cluster as
    /// `redis+cluster://host:port,host:port`, see [`RedisUrl`]), `ASDLC_STREAM`, `ASDLC_TENANCY` (`single` or
    /// `multi`), `ASDLC_TENANTS` (comma-separated allow-list, implies multi; a list naming no
    /// tenant is [`ConfigError::EmptyTenantList`]),
    /// `ASDLC_IDEMPOTENCY_TTL_SECS`, `ASDLC_IDEMPOTENCY_RATE` (events a second),
    /// `ASDLC_MAXLEN`. Unset variables take the defaults.
    pub fn from_env() -> Result<Self, ConfigError> {
        Config::from_lookup(|k| std::env::var(k).ok())
    }

    /// As [`Config::from_env`], reading variables through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut config = Config::default();
        if let Some(url) = lookup("REDIS_URL") {
            config.redis_url = RedisUrl::parse(url)?;
        }
        if let Some(stream) = lookup("ASDLC_STREAM") {
            validate_stream_base(&stream)?;
            config.stream = stream;
        }
        let tenants = lookup("ASDLC_TENANTS")
            .map(|list| {
                list.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(TenantId::new)
                    .collect::<Result<BTreeSet<_>, _>>()
            })
            .transpose()
            .map_err(|e| ConfigError::Env {
                var: "ASDLC_TENANTS",
                reason: e.to_string(),
            })?;
        if tenants.as_ref().is_some_and(BTreeSet::is_empty) {
            return Err(ConfigError::EmptyTenantList {
                source_name: "ASDLC_TENANTS",
            });
        }
        match lookup("ASDLC_TENANCY").as_deref() {
            None | Some("") => {
                if let Some(t) = tenants {
                    config.tenancy = Tenancy::Multi { allowed: Some(t) };
                }
            }
            Some("single") if tenants.is_some() => {
                return Err(ConfigError::Env {
                    var: "ASDLC_TENANTS",
                    reason: "a tenant list needs ASDLC_TENANCY=multi".into(),
                });
            }
            Some("single") => {}
            Some("multi") => config.tenancy = Tenancy::Multi { allowed: tenants },
            Some(other) => {
                return Err(ConfigError::Env {
                    var: "ASDLC_TENANCY",
                    reason: format!("must be `single` or `multi`, got `{other}`"),
                });
            }
        }
        if let Some(ttl) = lookup("ASDLC_IDEMPOTENCY_TTL_SECS") {
            let secs: u64 =
                ttl.parse()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| ConfigError::Env {
                        var: "ASDLC_IDEMPOTENCY_TTL_SECS",
                        reason: format!("must be a positive whole number of seconds, got `{ttl}`"),
                    })?;
            config.idempotency_ttl = Duration::from_secs(secs);
        }
        if let Some(rate) = lookup("ASDLC_IDEMPOTENCY_RATE") {
            let n: u64 = rate
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| ConfigError::Env {
                    var: "ASDLC_IDEMPOTENCY_RATE",
                    reason: format!(
                        "must be a positive whole number of events a second, got `{rate}`"
                    ),
                })?;
            config.idempotency_rate = Some(n);
        }
        if let Some(max) = lookup("ASDLC_MAXLEN") {
            let n: usize = max
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| ConfigError::Env {
                    var: "ASDLC_MAXLEN",
                    reason: format!("must be a positive whole number, got `{max}`"),
                })?;
            config.max_len = Some(n);
        }
        Ok(config)
    }

    /// Checks what a struct literal may have got wrong (the environment loader checks the
    /// same): the stream base name, a zero TTL, a zero rate, a zero `max_len`. Publishers, consumers and
    /// the runtime call it before they connect.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_stream_base(&self.stream)?;
        if self.idempotency_ttl.is_zero() {
            return Err(ConfigError::Invalid(crate::error::ValidationError::new(
                "idempotency_ttl",
                "must be longer than zero",
            )));
        }
        if self.idempotency_rate == Some(0) {
            return Err(ConfigError::Invalid(crate::error::ValidationError::new(
                "idempotency_rate",
                "must be at least 1 event a second (or None for the default layout)",
            )));
        }
        if self.max_len == Some(0) {
            return Err(ConfigError::Invalid(crate::error::ValidationError::new(
                "max_len",
                "must be at least 1 (or None for no trimming)",
            )));
        }
        if let Tenancy::Multi { allowed: Some(set) } = &self.tenancy
            && set.is_empty()
        {
            return Err(ConfigError::EmptyTenantList {
                source_name: "tenancy",
            });
        }
        Ok(())
    }

    /// The processed marks' layout of this configuration: [`MarkLayout::for_rate`] at
    /// `idempotency_rate`, or the default layout, for `idempotency_ttl`.
    ///
    /// [`MarkLayout::for_rate`]: crate::MarkLayout::for_rate
    pub fn mark_layout(&self) -> crate::MarkLayout {
        match self.idempotency_rate {
            Some(rate) => crate::MarkLayout::for_rate(self.idempotency_ttl, rate),
            None => crate::MarkLayout::with_ttl(self.idempotency_ttl),
        }
    }

    /// The stream for `tenant` under this configuration.
    pub fn stream_for(&self, tenant: Option<&TenantId>) -> String {
        crate::keys::get_stream_name(&self.stream, tenant)
    }
}

/// A value that passed its checks once, where it entered (a builder's `build`, a
/// `connect`): code handed a `Valid` takes it as checked instead of checking it again.
#[derive(Debug, Clone)]
pub(crate) struct Valid<T>(T);

impl<T> Valid<T> {
    /// Wraps `value` that its own check has just accepted.
    pub(crate) fn checked(
        value: T,
        check: impl FnOnce(&T) -> Result<(), ConfigError>,
    ) -> Result<Self, ConfigError> {
        check(&value)?;
        Ok(Valid(value))
    }

    /// The value, no longer marked as checked.
    pub(crate) fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::ops::Deref for Valid<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl Config {
    /// This configuration, checked by [`Config::validate`].
    pub(crate) fn checked(self) -> Result<Valid<Config>, ConfigError> {
        Valid::checked(self, Config::validate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn a_bad_url_names_the_accepted_schemes() {
        for bad in [
            "http://127.0.0.1:6379",
            "127.0.0.1:6379",
            "mysql://u:pw@h/db",
        ] {
            let e = RedisUrl::parse(bad).unwrap_err().to_string();
            assert!(e.contains("redis://, rediss://"), "{bad}: {e}");
            assert!(e.contains("redis+cluster://"), "{bad}: {e}");
            assert!(!e.contains("pw@"), "{bad}: {e}");
        }
    }

    #[test]
    fn defaults() {
        let c = Config::from_lookup(env(&[])).unwrap();
        assert_eq!(c.redis_url.expose(), DEFAULT_REDIS_URL);
        assert_eq!(c.stream, "asdlc:events");
        assert_eq!(c.tenancy, Tenancy::Single);
        assert_eq!(c.idempotency_ttl, Duration::from_secs(604_800));
        assert_eq!(c.idempotency_rate, None);
        assert_eq!(c.mark_layout(), crate::MarkLayout::default());
        assert_eq!(c.max_len, None);
    }

    #[test]
    fn environment_overrides() {
        let c = Config::from_lookup(env(&[
            ("REDIS_URL", "redis://127.0.0.1:7000/2"),
            ("ASDLC_STREAM", "x:events"),
            ("ASDLC_TENANTS", "acme, globex"),
            ("ASDLC_IDEMPOTENCY_TTL_SECS", "60"),
            ("ASDLC_IDEMPOTENCY_RATE", "2000"),
        ]))
        .unwrap();
        assert_eq!(c.stream, "x:events");
        assert!(c.tenancy.allows(&TenantId::new("acme").unwrap()));
        assert!(!c.tenancy.allows(&TenantId::new("initech").unwrap()));
        assert_eq!(c.idempotency_ttl, Duration::from_secs(60));
        assert_eq!(c.idempotency_rate, Some(2000));
        assert_eq!(
            c.mark_layout(),
            crate::MarkLayout::for_rate(Duration::from_secs(60), 2000)
        );
        // 60,000 marks a bucket of 30 s: no more than the default's shards.
        assert_eq!(c.mark_layout().shards, 16_384);
    }

    #[test]
    fn bad_environment_is_named() {
        for (pairs, var) in [
            (vec![("ASDLC_TENANCY", "both")], "ASDLC_TENANCY"),
            (vec![("ASDLC_TENANTS", "a:b")], "ASDLC_TENANTS"),
            (
                vec![("ASDLC_IDEMPOTENCY_TTL_SECS", "-1")],
                "ASDLC_IDEMPOTENCY_TTL_SECS",
            ),
            (vec![("ASDLC_MAXLEN", "lots")], "ASDLC_MAXLEN"),
            (
                vec![("ASDLC_IDEMPOTENCY_RATE", "0")],
                "ASDLC_IDEMPOTENCY_RATE",
            ),
            (
                vec![("ASDLC_IDEMPOTENCY_RATE", "1.5")],
                "ASDLC_IDEMPOTENCY_RATE",
            ),
        ] {
            match Config::from_lookup(env(&pairs)).unwrap_err() {
                ConfigError::Env { var: v, .. } => assert_eq!(v, var),
                other => panic!("{other}"),
            }
        }
        assert!(Config::from_lookup(env(&[("ASDLC_STREAM", "{x}")])).is_err());
        let zero_rate = Config {
            idempotency_rate: Some(0),
            ..Config::default()
        };
        assert!(zero_rate.validate().is_err());
    }

    #[test]
    fn an_empty_tenant_list_is_refused() {
        for list in ["", " ", ",", " , ,"] {
            for tenancy in [None, Some("multi")] {
                let mut pairs = vec![("ASDLC_TENANTS", list)];
                pairs.extend(tenancy.map(|t| ("ASDLC_TENANCY", t)));
                match Config::from_lookup(env(&pairs)) {
                    Err(ConfigError::EmptyTenantList { source_name }) => {
                        assert_eq!(source_name, "ASDLC_TENANTS")
                    }
                    other => panic!("ASDLC_TENANTS={list:?} gave {other:?}"),
                }
            }
        }
        let err = Config::from_lookup(env(&[("ASDLC_TENANTS", " ")])).unwrap_err();
        assert!(
            err.to_string().contains("ASDLC_TENANTS names no tenant"),
            "{err}"
        );
        let config = Config {
            tenancy: Tenancy::multi_only([]),
            ..Config::default()
        };
        assert!(matches!(
            config.validate(),
            Err(ConfigError::EmptyTenantList {
                source_name: "tenancy"
            })
        ));
        let trailing = Config::from_lookup(env(&[("ASDLC_TENANTS", "acme,")])).unwrap();
        assert!(trailing.tenancy.allows(&TenantId::new("acme").unwrap()));
    }

    #[test]
    fn passwords_never_show() {
        let url = RedisUrl::parse("redis://user:s3cret@127.0.0.1:6379/0").unwrap();
        assert_eq!(url.redacted(), "redis://user:***@127.0.0.1:6379/0");
        assert!(!format!("{url:?} {url}").contains("s3cret"));
        let url = RedisUrl::parse("redis://:s3cret@localhost").unwrap();
        assert!(!url.to_string().contains("s3cret"));
        let err = RedisUrl::parse("notredis://u:s3cret@host").unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }
}
