//! The CLI's errors, each with its exit status and a one-line message.

use asdlc_runtime::InvalidTenantId;
use asdlc_runtime::error::{ConfigError, PublishError, StreamError, ValidationError};

/// Exit status: success.
pub const EXIT_OK: u8 = 0;
/// Exit status of `health`: degraded.
pub const EXIT_DEGRADED: u8 = 1;
/// Exit status of `health`: unhealthy (which includes an unreachable server).
pub const EXIT_UNHEALTHY: u8 = 2;
/// Exit status: bad arguments or input (`EX_USAGE` of sysexits.h).
pub const EXIT_USAGE: u8 = 64;
/// Exit status: the server cannot be reached.
pub const EXIT_CONNECT: u8 = 3;
/// Exit status: the thing asked for does not exist.
pub const EXIT_NOT_FOUND: u8 = 4;
/// Exit status: the server refused a command.
pub const EXIT_FAILED: u8 = 5;
/// Exit status: the server refused the user name or password.
pub const EXIT_AUTH: u8 = 6;
/// Exit status: a bug in the CLI (a panic).
pub const EXIT_INTERNAL: u8 = 70;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad arguments, environment or input.
    #[error("{0}")]
    Usage(String),
    /// The server cannot be reached.
    #[error("cannot reach {url}: {reason}")]
    Connect {
        /// The URL, password redacted.
        url: String,
        /// Why.
        reason: String,
    },
    /// The server refused the credentials.
    #[error("authentication failed for {url}: wrong user name or password ({reason})")]
    Auth {
        /// The URL, password redacted.
        url: String,
        /// The server's words.
        reason: String,
    },
    /// What was asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The server refused a command.
    #[error("{0}")]
    Failed(String),
    /// Stdout was closed (e.g. piped into `head`): stop quietly.
    #[error("output closed")]
    BrokenPipe,
}

impl CliError {
    /// The exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => EXIT_USAGE,
            CliError::Connect { .. } => EXIT_CONNECT,
            CliError::Auth { .. } => EXIT_AUTH,
            CliError::NotFound(_) => EXIT_NOT_FOUND,
            CliError::Failed(_) => EXIT_FAILED,
            CliError::BrokenPipe => EXIT_OK,
        }
    }

    /// A Redis error met while talking to `url`: unreachable, or refused.
    pub fn redis(url: &str, e: &redis::RedisError) -> Self {
        if is_auth_problem(e) {
            CliError::auth(url, e)
        } else if is_connection_problem(e) {
            CliError::Connect {
                url: url.to_owned(),
                reason: e.to_string(),
            }
        } else {
            CliError::Failed(e.to_string())
        }
    }

    /// The server refused the credentials given with `url`.
    pub fn auth(url: &str, e: &redis::RedisError) -> Self {
        CliError::Auth {
            url: url.to_owned(),
            reason: e.to_string(),
        }
    }

    /// A stream operation's error.
    pub fn stream(url: &str, e: StreamError) -> Self {
        match e {
            StreamError::Redis { ref source, .. } if is_auth_problem(source) => {
                CliError::auth(url, source)
            }
            StreamError::Redis { ref source, .. } if is_connection_problem(source) => {
                CliError::Connect {
                    url: url.to_owned(),
                    reason: source.to_string(),
                }
            }
            StreamError::Invalid(v) => CliError::Usage(v.to_string()),
            other => CliError::Failed(other.to_string()),
        }
    }

    /// A publish error.
    pub fn publish(url: &str, e: PublishError) -> Self {
        match e {
            PublishError::Redis { ref source, .. } if is_auth_problem(source) => {
                CliError::auth(url, source)
            }
            PublishError::Redis { ref source, .. } if is_connection_problem(source) => {
                CliError::Connect {
                    url: url.to_owned(),
                    reason: source.to_string(),
                }
            }
            PublishError::Redis { .. } => CliError::Failed(e.to_string()),
            other => CliError::Usage(other.to_string()),
        }
    }
}

/// A wrong password (`WRONGPASS`), or none where one is needed (`NOAUTH`).
pub fn is_auth_problem(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("WRONGPASS" | "NOAUTH"))
}

fn is_connection_problem(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() || e.is_timeout()
}

impl From<ValidationError> for CliError {
    fn from(e: ValidationError) -> Self {
        CliError::Usage(e.to_string())
    }
}

impl From<InvalidTenantId> for CliError {
    fn from(e: InvalidTenantId) -> Self {
        CliError::Usage(e.to_string())
    }
}

impl From<ConfigError> for CliError {
    fn from(e: ConfigError) -> Self {
        CliError::Usage(e.to_string())
    }
}
