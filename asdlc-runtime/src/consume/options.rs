//! What a consumer can be told: [`ConsumerOptions`] (checked once, when the consumer is
//! built), the retry [`Backoff`], and the default consumer name.

use std::time::Duration;

use crate::config::Valid;
use crate::error::ConfigError;
use crate::idempotency::MarkLayout;
use crate::keys::{validate_consumer, validate_group};
use crate::streams::GroupStart;

/// How retries are spaced: exponential from `base`, capped at `max`, with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The delay before the second delivery.
    pub base: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The delay after the `delivery`-th delivery failed: `base * 2^(delivery-1)`, capped,
    /// then scaled by a random factor in [0.5, 1] so that retries of a burst spread out.
    pub fn delay(&self, delivery: u32) -> Duration {
        crate::retry::Policy::exponential(self.base)
            .cap(self.max)
            .jitter(0.5)
            .delay(delivery)
    }
}

/// Settings of one consumer: [`ConsumerOptions::new`] for a group's defaults, then the
/// `with_` setters (or assignments to the fields).
///
/// ```
/// # use std::time::Duration;
/// use asdlc_runtime::ConsumerOptions;
///
/// let options = ConsumerOptions::new("billing")
///     .with_batch_size(50)
///     .with_handler_timeout(Duration::from_secs(30));
/// assert_eq!(options.batch_size, 50);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConsumerOptions {
    /// The consumer group.
    pub group: String,
    /// This consumer's name (default: `ASDLC_CONSUMER`, else `None`). A name is held by one
    /// live process at a time: a second process given a name in use is refused. `None`
    /// takes the lowest free `<host>-<n>` (`n` from 1), which is stable across restarts (a
    /// restarted process gets its number back, and with it its pending entries) and lets
    /// several processes of one group run on one host without configuration.
    pub consumer: Option<String>,
    /// Entries read per round trip.
    pub batch_size: usize,
    /// How long a read waits for new entries. Kept well under the read connection's timeout,
    /// so an idle consumer logs nothing.
    pub block: Duration,
    /// Handlers running at once (default 256). Reads wait until half a batch of these slots
    /// is free, so a small value also makes small batches: more round trips per event.
    pub concurrency: usize,
    /// An entry idle this long belongs to a dead or stuck consumer and may be claimed.
    /// Entries being handled are kept fresh, so they are never claimed.
    pub claim_idle: Duration,
    /// How often a running consumer claims stale entries from dead peers.
    pub claim_interval: Duration,
    /// How retries are spaced.
    pub retry: Backoff,
    /// Deliveries before an event is dead-lettered (a handler can lower or raise it).
    pub max_deliveries: u32,
    /// How long one handler call may run (a handler can set its own).
    pub handler_timeout: Duration,
    /// How long [`EventConsumer::stop`](super::EventConsumer::stop) lets running handlers finish.
    pub shutdown_grace: Duration,
    /// Consumers idle this long that own nothing are removed from the group (`None`: never).
    pub forget_idle: Option<Duration>,
    /// Processed marks: TTL and layout. A consumer built from a [`Config`](crate::Config)
    /// starts from [`Config::mark_layout`](crate::Config::mark_layout) (its
    /// `idempotency_ttl` and `idempotency_rate`); for a busier group than the others, set
    /// [`MarkLayout::for_rate`] here. Processes of a group set otherwise follow the layout
    /// its marks have (see [`MarkLayout`]).
    pub marks: MarkLayout,
    /// Where a new group starts reading.
    pub group_start: GroupStart,
    /// What the dead-letter stream keeps (length, age, bytes of an entry).
    pub dead_letters: crate::deadletter::DeadLetterPolicy,
}

/// The consumer name `ASDLC_CONSUMER` sets, if it is set to a valid name.
pub fn default_consumer_name() -> Option<String> {
    std::env::var("ASDLC_CONSUMER")
        .ok()
        .filter(|name| validate_consumer(name).is_ok())
}

/// The host name as automatic consumer names start (`<host>-<n>`): characters a consumer
/// name may not hold become `-`; `consumer` if there is none.
pub fn host_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(100)
        .collect();
    if host.is_empty() {
        "consumer".to_owned()
    } else {
        host
    }
}

/// The name a consumer most likely runs under before it has taken one.
pub(super) fn first_name(options: &ConsumerOptions) -> String {
    options
        .consumer
        .clone()
        .unwrap_or_else(|| format!("{}-1", host_name()))
}

impl ConsumerOptions {
    /// Defaults for `group`.
    pub fn new(group: impl Into<String>) -> Self {
        ConsumerOptions {
            group: group.into(),
            consumer: default_consumer_name(),
            batch_size: 100,
            block: Duration::from_secs(2),
            concurrency: 256,
            claim_idle: Duration::from_secs(60),
            claim_interval: Duration::from_secs(15),
            retry: Backoff::default(),
            max_deliveries: 5,
            handler_timeout: Duration::from_secs(300),
            shutdown_grace: Duration::from_secs(30),
            forget_idle: Some(Duration::from_secs(3600)),
            marks: MarkLayout::default(),
            group_start: GroupStart::Beginning,
            dead_letters: crate::deadletter::DeadLetterPolicy::default(),
        }
    }

    /// Sets the consumer name.
    pub fn consumer(mut self, name: impl Into<String>) -> Self {
        self.consumer = Some(name.into());
        self
    }

    /// Entries read per round trip.
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size;
        self
    }

    /// How long a read waits for new entries.
    pub fn with_block(mut self, block: Duration) -> Self {
        self.block = block;
        self
    }

    /// Handlers running at once.
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// How long an entry stays idle before it may be claimed from its consumer.
    pub fn with_claim_idle(mut self, claim_idle: Duration) -> Self {
        self.claim_idle = claim_idle;
        self
    }

    /// How often a running consumer claims stale entries from dead peers.
    pub fn with_claim_interval(mut self, claim_interval: Duration) -> Self {
        self.claim_interval = claim_interval;
        self
    }

    /// How retries are spaced.
    pub fn with_retry(mut self, retry: Backoff) -> Self {
        self.retry = retry;
        self
    }

    /// Deliveries before an event is dead-lettered.
    pub fn with_max_deliveries(mut self, max_deliveries: u32) -> Self {
        self.max_deliveries = max_deliveries;
        self
    }

    /// How long one handler call may run.
    pub fn with_handler_timeout(mut self, handler_timeout: Duration) -> Self {
        self.handler_timeout = handler_timeout;
        self
    }

    /// How long [`EventConsumer::stop`](super::EventConsumer::stop) lets running handlers finish.
    pub fn with_shutdown_grace(mut self, shutdown_grace: Duration) -> Self {
        self.shutdown_grace = shutdown_grace;
        self
    }

    /// How long an idle consumer that owns nothing stays in the group (`None`: forever).
    pub fn with_forget_idle(mut self, forget_idle: Option<Duration>) -> Self {
        self.forget_idle = forget_idle;
        self
    }

    /// Processed marks: TTL and layout (see [`ConsumerOptions::marks`]).
    pub fn with_marks(mut self, marks: MarkLayout) -> Self {
        self.marks = marks;
        self
    }

    /// Where a new group starts reading.
    pub fn with_group_start(mut self, group_start: GroupStart) -> Self {
        self.group_start = group_start;
        self
    }

    /// What the dead-letter stream keeps.
    pub fn with_dead_letters(mut self, dead_letters: crate::deadletter::DeadLetterPolicy) -> Self {
        self.dead_letters = dead_letters;
        self
    }

    /// These options, checked: a group and consumer name Redis accepts, limits that leave a
    /// consumer able to work.
    pub(crate) fn checked(self) -> Result<Valid<ConsumerOptions>, ConfigError> {
        Valid::checked(self, ConsumerOptions::validate)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        validate_group(&self.group)?;
        if let Some(name) = &self.consumer {
            validate_consumer(name)?;
        }
        let bad = |what: &str| {
            Err(ConfigError::Invalid(crate::error::ValidationError::new(
                "consumer options",
                what.to_owned(),
            )))
        };
        if self.batch_size == 0 || self.concurrency == 0 {
            return bad("batch_size and concurrency must be at least 1");
        }
        if self.max_deliveries == 0 {
            return bad("max_deliveries must be at least 1");
        }
        if self.block < Duration::from_millis(1) || self.block > Duration::from_secs(60) {
            return bad("block must be between 1 ms and 60 s");
        }
        if self.claim_idle < Duration::from_millis(100) {
            return bad("claim_idle must be at least 100 ms");
        }
        if self.dead_letters.max_len == Some(0) {
            return bad("dead_letters.max_len must be at least 1 (or None: no limit)");
        }
        if self.dead_letters.max_payload < 1024 {
            return bad("dead_letters.max_payload must be at least 1024 bytes");
        }
        Ok(())
    }
}
