//! What every command works with: the configuration, the selected streams, one connection.

use std::time::Duration;

use asdlc_runtime::keys::{tenant_of_stream, validate_stream_base};
use asdlc_runtime::monitor::list_streams;
use asdlc_runtime::{Config, RedisConnection, RedisUrl, Tenancy, TenantId};

use crate::cli::Cli;
use crate::error::CliError;
use crate::fmt::Out;

/// One stream a command acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The stream.
    pub stream: String,
    /// Its tenant (`None`: the shared stream).
    pub tenant: Option<TenantId>,
}

/// The context of one command.
pub struct Ctx {
    /// The configuration: environment, then flags.
    pub config: Config,
    /// `--tenant`.
    pub tenant: Option<TenantId>,
    /// `--json`.
    pub json: bool,
    /// Standard output.
    pub out: Out,
    conn: Option<RedisConnection>,
}

impl Ctx {
    /// The configuration from the environment, overridden by the global flags.
    pub fn new(cli: &Cli) -> Result<Self, CliError> {
        let mut config = Config::from_env()?;
        if let Some(url) = &cli.url {
            config.redis_url = RedisUrl::parse(url.as_str())?;
        }
        if let Some(base) = &cli.stream {
            validate_stream_base(base)?;
            config.stream = base.clone();
        }
        let tenant = cli.tenant.as_deref().map(TenantId::new).transpose()?;
        if tenant.is_some() && !config.tenancy.is_multi() {
            config.tenancy = Tenancy::multi();
        }
        Ok(Ctx {
            config,
            tenant,
            json: cli.json,
            out: Out::new(),
            conn: None,
        })
    }

    /// The server's URL, password redacted.
    pub fn url(&self) -> String {
        self.config.redis_url.redacted()
    }

    /// A connection (made on first use).
    pub async fn conn(&mut self) -> Result<&mut RedisConnection, CliError> {
        if self.conn.is_none() {
            let conn = connect(&self.config.redis_url, None).await?;
            self.conn = Some(conn);
        }
        Ok(self.conn.as_mut().expect("just connected"))
    }

    /// A separate connection for blocking reads of up to `block`.
    pub async fn blocking_conn(&self, block: Duration) -> Result<RedisConnection, CliError> {
        connect(&self.config.redis_url, Some(block + Duration::from_secs(5))).await
    }

    /// `read` of every stream the command acts on ([`Ctx::targets`]), with the stream it read.
    pub async fn read_targets<T>(
        &mut self,
        mut read: impl AsyncFnMut(
            &mut RedisConnection,
            &str,
        ) -> Result<T, asdlc_runtime::error::StreamError>,
    ) -> Result<Vec<(Target, T)>, CliError> {
        let url = self.url();
        let mut all = Vec::new();
        for t in self.targets().await? {
            let found = read(self.conn().await?, &t.stream)
                .await
                .map_err(|e| CliError::stream(&url, e))?;
            all.push((t, found));
        }
        Ok(all)
    }

    /// The streams the command acts on: `--tenant`'s, or the shared stream and every tenant
    /// stream found.
    pub async fn targets(&mut self) -> Result<Vec<Target>, CliError> {
        if let Some(t) = &self.tenant {
            return Ok(vec![Target {
                stream: self.config.stream_for(Some(t)),
                tenant: Some(t.clone()),
            }]);
        }
        let url = self.url();
        let config = self.config.clone();
        let streams = list_streams(self.conn().await?, &config)
            .await
            .map_err(|e| CliError::stream(&url, e))?;
        Ok(streams
            .into_iter()
            .map(|stream| Target {
                tenant: tenant_of_stream(&stream, &config.stream),
                stream,
            })
            .collect())
    }
}

async fn connect(url: &RedisUrl, timeout: Option<Duration>) -> Result<RedisConnection, CliError> {
    let result = match timeout {
        Some(t) => RedisConnection::connect_with_timeout(url, t).await,
        None => RedisConnection::connect(url).await,
    };
    result.map_err(|e| {
        if crate::error::is_auth_problem(&e) {
            CliError::auth(&url.redacted(), &e)
        } else {
            CliError::Connect {
                url: url.redacted(),
                reason: e.to_string(),
            }
        }
    })
}
