//! The Redis URL: which schemes are accepted, a cluster's seed list, and a form without the
//! password for every message and log line.

use std::fmt;

use crate::error::ConfigError;

/// The URL scheme that names a Redis Cluster: `redis+cluster://host:port,host:port`.
pub const CLUSTER_SCHEME: &str = "redis+cluster";
/// The URL scheme of a Redis Cluster over TLS (needs a redis-rs TLS feature).
pub const CLUSTER_TLS_SCHEME: &str = "rediss+cluster";

/// The URL schemes [`RedisUrl::parse`] accepts.
pub const ACCEPTED_SCHEMES: &[&str] = &[
    "redis",
    "rediss",
    "valkey",
    "valkeys",
    "redis+unix",
    "valkey+unix",
    "unix",
    CLUSTER_SCHEME,
    CLUSTER_TLS_SCHEME,
];

fn accepted_schemes() -> String {
    ACCEPTED_SCHEMES
        .iter()
        .map(|s| format!("{s}://"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A Redis URL whose password never shows in `Debug`, `Display`, logs or errors.
///
/// Two kinds of URL are accepted:
///
/// - **One server**: anything redis-rs accepts, e.g. `redis://user:secret@host:6379/0`,
///   `rediss://host`, `unix:///run/redis.sock`.
/// - **A Redis Cluster**: `redis+cluster://[user[:password]@]host:port[,host:port...]`
///   (`rediss+cluster://` for TLS). The hosts are seed nodes: any reachable one is enough,
///   the client learns the rest of the cluster (and every later change of it) from the
///   cluster itself. The credentials apply to every node. A cluster has only database 0, so a
///   path other than `/` or `/0` is refused. [`RedisUrl::cluster`] builds one from the nodes'
///   own `redis://` URLs.
///
/// ```
/// use asdlc_runtime::RedisUrl;
/// let url = RedisUrl::parse("redis+cluster://app:s3cret@10.0.0.1:7000,10.0.0.2:7000").unwrap();
/// assert!(url.is_cluster());
/// assert_eq!(url.to_string(), "redis+cluster://app:***@10.0.0.1:7000,10.0.0.2:7000");
/// assert_eq!(url.expose_nodes()[1], "redis://app:s3cret@10.0.0.2:7000");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(pub(super) String);

impl RedisUrl {
    /// Checks that `url` is a Redis URL redis-rs can use, or a `redis+cluster://` URL whose
    /// every node is one.
    pub fn parse(url: impl Into<String>) -> Result<Self, ConfigError> {
        let url = url.into();
        let redacted = redact(&url);
        let fail = |reason: String| ConfigError::RedisUrl {
            url: redacted.clone(),
            reason: reason.replace(&url, &redacted),
        };
        match cluster_nodes(&url) {
            Some(nodes) => {
                let nodes = nodes.map_err(fail)?;
                for node in &nodes {
                    let info = redis::IntoConnectionInfo::into_connection_info(node.as_str())
                        .map_err(|e| fail(e.to_string().replace(node, &redact(node))))?;
                    if info.redis_settings().db() != 0 {
                        return Err(fail(
                            "a Redis Cluster has only database 0; drop the `/N` path".to_owned(),
                        ));
                    }
                }
            }
            None => {
                redis::IntoConnectionInfo::into_connection_info(url.as_str()).map_err(
                    |e| match url.split_once("://").map(|(s, _)| s) {
                        Some(s) if !ACCEPTED_SCHEMES.contains(&s) => fail(format!(
                            "unsupported scheme `{s}://`; accepted: {}",
                            accepted_schemes()
                        )),
                        None => fail(format!(
                            "not a URL (like redis://host:6379); accepted schemes: {}",
                            accepted_schemes()
                        )),
                        Some(_) => fail(format!(
                            "{e} (expected like redis://[user:password@]host:port[/db])"
                        )),
                    },
                )?;
            }
        }
        Ok(RedisUrl(url))
    }

    /// A cluster URL from the URLs of some of its nodes (`redis://[user:password@]host:port`,
    /// all with the same scheme and credentials).
    ///
    /// ```
    /// use asdlc_runtime::RedisUrl;
    /// let url = RedisUrl::cluster(["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"]).unwrap();
    /// assert_eq!(url.expose(), "redis+cluster://127.0.0.1:7000,127.0.0.1:7001");
    /// ```
    pub fn cluster<I, S>(nodes: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut scheme: Option<&str> = None;
        let mut userinfo: Option<String> = None;
        let mut hosts = Vec::new();
        let nodes: Vec<String> = nodes.into_iter().map(|n| n.as_ref().to_owned()).collect();
        for node in &nodes {
            let bad = |reason: &str| ConfigError::RedisUrl {
                url: redact(node),
                reason: reason.to_owned(),
            };
            let (node_scheme, rest) = node
                .split_once("://")
                .ok_or_else(|| bad("a cluster node must be a `redis://host:port` URL"))?;
            let node_scheme = match node_scheme {
                "redis" => "redis",
                "rediss" => "rediss",
                _ => {
                    return Err(bad(
                        "a cluster node must be a `redis://` or `rediss://` URL",
                    ));
                }
            };
            if scheme.is_some_and(|s| s != node_scheme) {
                return Err(bad("all cluster nodes must use the same scheme"));
            }
            scheme = Some(node_scheme);
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            if !matches!(&rest[end..], "" | "/" | "/0") {
                return Err(bad("a cluster node URL takes no path or query"));
            }
            let authority = &rest[..end];
            let (info, host) = match authority.rfind('@') {
                Some(at) => (authority[..at].to_owned(), &authority[at + 1..]),
                None => (String::new(), authority),
            };
            if userinfo.as_ref().is_some_and(|u| *u != info) {
                return Err(bad("all cluster nodes must use the same credentials"));
            }
            userinfo = Some(info);
            hosts.push(host.to_owned());
        }
        let Some(scheme) = scheme else {
            return Err(ConfigError::RedisUrl {
                url: String::new(),
                reason: "a cluster needs at least one node".to_owned(),
            });
        };
        let cluster_scheme = if scheme == "rediss" {
            CLUSTER_TLS_SCHEME
        } else {
            CLUSTER_SCHEME
        };
        let at = match userinfo.as_deref() {
            None | Some("") => String::new(),
            Some(u) => format!("{u}@"),
        };
        RedisUrl::parse(format!("{cluster_scheme}://{at}{}", hosts.join(",")))
    }

    /// The full URL, password included: hand it only to the Redis client.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        redact(&self.0)
    }

    /// Whether this URL names a Redis Cluster (`redis+cluster://`).
    pub fn is_cluster(&self) -> bool {
        cluster_nodes(&self.0).is_some()
    }

    /// The URL of each node, password included: the seed nodes of a cluster as
    /// `redis://[user:password@]host:port`, or the one server's URL.
    pub fn expose_nodes(&self) -> Vec<String> {
        match cluster_nodes(&self.0) {
            Some(Ok(nodes)) => nodes,
            _ => vec![self.0.clone()],
        }
    }
}

/// The node URLs of a cluster URL; `None` if `url` is not one.
fn cluster_nodes(url: &str) -> Option<Result<Vec<String>, String>> {
    let (scheme, rest) = url.split_once("://")?;
    let node_scheme = match scheme {
        CLUSTER_SCHEME => "redis",
        CLUSTER_TLS_SCHEME => "rediss",
        _ => return None,
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if !matches!(tail, "" | "/" | "/0") {
        return Some(Err(
            "a cluster URL takes no path (a Redis Cluster has only database 0) and no query"
                .to_owned(),
        ));
    }
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(at) => (&authority[..=at], &authority[at + 1..]),
        None => ("", authority),
    };
    let nodes: Result<Vec<String>, String> = hosts
        .split(',')
        .map(str::trim)
        .map(|host| {
            if host.is_empty() {
                Err("empty host in the list of cluster nodes".to_owned())
            } else {
                Ok(format!("{node_scheme}://{userinfo}{host}"))
            }
        })
        .collect();
    Some(nodes)
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({})", self.redacted())
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        None => url.to_owned(),
        Some(at) => {
            let userinfo = &authority[..at];
            let user = match userinfo.find(':') {
                Some(colon) => &userinfo[..colon],
                None if userinfo.is_empty() => "",
                None => userinfo,
            };
            format!("{}://{user}:***{}", &url[..scheme_end], &rest[at..])
        }
    }
}
