//! The [`RuntimeBuilder`]: what to run (configuration, groups, hand-written handlers, the
//! handlers' state, consumer options), and [`RuntimeBuilder::build`], which checks the plan, finds the tenants and
//! prepares every consumer without consuming anything.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::consume::ConsumerOptions;
use crate::handler::{EventHandler, HandlerOptions, StateMap, registered_handlers};

use super::Runtime;
use super::discover::{partitions, starting_tenants};
use super::error::RuntimeError;
use super::plan::{Configure, GroupRun, GroupTemplate, PlannedHandler, check_state, plan_groups};

/// Builds a [`Runtime`].
#[must_use]
pub struct RuntimeBuilder {
    config: Option<Config>,
    groups: Option<Vec<String>>,
    consumer: Option<String>,
    configure: Vec<Configure>,
    extra: Vec<PlannedHandler>,
    registered: bool,
    discovery_interval: Duration,
    state: StateMap,
}

impl std::fmt::Debug for RuntimeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeBuilder")
            .field("config", &self.config)
            .field("groups", &self.groups)
            .field("consumer", &self.consumer)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl RuntimeBuilder {
    /// The defaults [`Runtime::builder`] starts from.
    pub(super) fn new() -> Self {
        RuntimeBuilder {
            config: None,
            groups: None,
            consumer: None,
            configure: Vec::new(),
            extra: Vec::new(),
            registered: true,
            discovery_interval: Duration::from_secs(5),
            state: StateMap::default(),
        }
    }

    /// Uses `config` (default: [`Config::from_env`]).
    pub fn config(mut self, config: Config) -> Self {
        self.config = Some(config);
        self
    }

    /// Runs only these groups (default: every group that has a handler).
    pub fn groups<I, S>(mut self, groups: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.groups = Some(groups.into_iter().map(Into::into).collect());
        self
    }

    /// The consumer name of this process in every group (default: `ASDLC_CONSUMER` or the
    /// host name). Keep it stable across restarts.
    pub fn consumer_name(mut self, name: impl Into<String>) -> Self {
        self.consumer = Some(name.into());
        self
    }

    /// Adjusts each group's consumer options; called with the group name.
    pub fn configure(
        mut self,
        f: impl Fn(&str, &mut ConsumerOptions) + Send + Sync + 'static,
    ) -> Self {
        self.configure.push(Box::new(f));
        self
    }

    /// Adds a hand-written handler to `group`.
    pub fn handler(mut self, group: &str, handler: impl EventHandler) -> Self {
        self.extra.push(PlannedHandler::added(
            group,
            Arc::new(handler),
            HandlerOptions::default(),
        ));
        self
    }

    /// Adds a hand-written handler to `group`, with options.
    pub fn handler_with(
        mut self,
        group: &str,
        handler: Arc<dyn EventHandler>,
        options: HandlerOptions,
    ) -> Self {
        self.extra
            .push(PlannedHandler::added(group, handler, options));
        self
    }

    /// Gives every handler `value`, found by its type: a `State<T>` parameter of an
    /// `#[event_handler]` function, or [`HandlerContext::state`](crate::HandlerContext::state)
    /// in a hand-written one. Call it once per type (a second value of one type replaces the
    /// first); every consumer shares the one value. [`build`](Self::build) fails with
    /// [`RegistryError::MissingState`](crate::RegistryError::MissingState) if a handler of the
    /// groups it runs needs a type that was not given.
    ///
    /// ```no_run
    /// use asdlc_runtime::Runtime;
    ///
    /// struct Db {
    ///     url: String,
    /// }
    ///
    /// # async fn demo() -> Result<(), asdlc_runtime::RuntimeError> {
    /// Runtime::builder()
    ///     // `State<Db>` parameters and `ctx.state::<Db>()` get this one value.
    ///     .state(Db { url: "postgres://db/tasks".into() })
    ///     .build()
    ///     .await?
    ///     .run()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn state<T: Send + Sync + 'static>(self, value: T) -> Self {
        self.state_arc(Arc::new(value))
    }

    /// As [`state`](Self::state), with a value already shared (the application keeps a
    /// handle on it too), or a trait object, which handlers then take as
    /// `State<dyn Mailer>`: `.state_arc::<dyn Mailer>(Arc::new(SmtpMailer::new()))`.
    pub fn state_arc<T: ?Sized + Send + Sync + 'static>(mut self, value: Arc<T>) -> Self {
        self.state.insert(value);
        self
    }

    /// Ignores handlers registered with `#[event_handler]` (for tests and tools that bring
    /// their own).
    pub fn without_registered(mut self) -> Self {
        self.registered = false;
        self
    }

    /// How often a multi-tenant runtime without an allow-list looks for new tenant streams
    /// (default 5 s).
    pub fn tenant_discovery_interval(mut self, every: Duration) -> Self {
        self.discovery_interval = every;
        self
    }

    /// Discovers and checks the handlers, connects, and prepares one consumer per group.
    /// Nothing is consumed until [`Runtime::run`].
    pub async fn build(self) -> Result<Runtime, RuntimeError> {
        // Checked once here; the consumers built from it take it as checked.
        let config = match self.config {
            Some(c) => c,
            None => Config::from_env()?,
        };
        let config = config.checked()?;
        let mut all: Vec<PlannedHandler> = Vec::new();
        if self.registered {
            for reg in registered_handlers() {
                all.push(PlannedHandler::registered(reg));
            }
        }
        all.extend(self.extra);
        let plan = plan_groups(all, self.groups.as_deref())?;
        check_state(&plan, &self.state)?;

        let tenants = starting_tenants(&config).await?;

        let configure = Arc::new(self.configure);
        let partitions = partitions(&config, &tenants);
        let mut groups = Vec::new();
        let mut consumers = Vec::new();
        for (group, handlers) in plan {
            let template = GroupTemplate {
                group: group.clone(),
                specs: handlers.iter().map(|h| h.spec.clone()).collect(),
                consumer_name: self.consumer.clone(),
                configure: configure.clone(),
                config: config.clone(),
                state: self.state.clone(),
            };
            for part in &partitions {
                consumers.push(template.build(part.clone()).await?);
            }
            groups.push(GroupRun {
                template,
                handlers: handlers.into_iter().map(|h| h.info).collect(),
            });
        }
        Ok(Runtime {
            config: config.into_inner(),
            groups,
            consumers: Arc::new(Mutex::new(consumers)),
            tenants,
            discovery_interval: self.discovery_interval,
            stop: CancellationToken::new(),
        })
    }
}
