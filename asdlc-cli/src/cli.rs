//! The command line: global options and one subcommand per operation.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::fmt::parse_duration;

const AFTER_HELP: &str = "\
Connection: --url, else REDIS_URL, else redis://127.0.0.1:6379. The stream base comes from
--stream, else ASDLC_STREAM, else asdlc:events. Without --tenant, commands cover the shared
stream and every tenant stream found (tenant:{ID}:<base>); with it, that tenant's stream only.

Exit status:
  0   success (health: healthy)
  1   health: degraded
  2   health: unhealthy (which includes an unreachable server)
  3   the server cannot be reached
  4   not found (a dead letter, a group)
  5   the server refused a command
  6   authentication failed (wrong user name or password)
  64  bad arguments or input
  70  internal error (a bug: please report it)
Errors are one line on stderr.";

/// Inspect, check and repair asdlc event streams: groups, lag, pending entries, dead letters,
/// retention.
#[derive(Debug, Parser)]
#[command(name = "asdlc", version, after_help = AFTER_HELP, propagate_version = true)]
pub struct Cli {
    /// Redis URL (default: REDIS_URL, else redis://127.0.0.1:6379).
    #[arg(long, global = true, value_name = "URL")]
    pub url: Option<String>,

    /// Stream base name (default: ASDLC_STREAM, else asdlc:events).
    #[arg(long, global = true, value_name = "BASE")]
    pub stream: Option<String>,

    /// Only this tenant's stream (tenant:{ID}:<base>).
    #[arg(long, global = true, value_name = "ID")]
    pub tenant: Option<String>,

    /// Machine-readable output: one JSON document per line.
    #[arg(long, global = true)]
    pub json: bool,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands. Each lives in its own module under `cmd/`; add a variant here and an arm
/// in `cmd::run` to add one.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Every stream and its groups: length, consumers, lag, pending, oldest pending, dead
    /// letters.
    Info,
    /// Check the server and every group against thresholds; exit 0 healthy, 1 degraded,
    /// 2 unhealthy. A stream not created yet is healthy unless --require-stream.
    Health(HealthArgs),
    /// Follow new events live, one line each (XREAD, not a consumer group: nothing is
    /// acknowledged or taken from anyone).
    Tail(TailArgs),
    /// The entries a group has read and not acknowledged: consumer, idle time, deliveries.
    Pending(PendingArgs),
    /// Dead letters: list, show, replay, purge.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Approval gates: each gate's outcome (pending, approved, rejected, expired), who decided
    /// it and when; newest request first.
    Gates(GatesArgs),
    /// Scheduled events: list what is due and upcoming, cancel one.
    #[command(subcommand)]
    Scheduled(ScheduledCommand),
    /// Publish one event (or a JSON array of them), validated; prints the new entry id.
    Publish(Box<PublishArgs>),
    /// Show a group's stale pending entries and optionally hand them to another consumer.
    ///
    /// The CLI runs no handlers, so it cannot process anything itself. It lists the entries
    /// of GROUP pending for at least --min-idle (their consumer is likely dead or stuck). With
    /// --claim-to NAME it moves them to consumer NAME (XCLAIM, delivery counts unchanged); a
    /// consumer processes its own pending entries when it starts, and running consumers also
    /// claim stale entries by themselves after their claim_idle, so this is for handing work
    /// to a specific consumer that will start or restart.
    Recover(RecoverArgs),
    /// Remove entries every group has read and acknowledged, and nothing else.
    Trim(TrimArgs),
    /// Tenant ACL users: one Redis user per tenant, allowed only that tenant's keys.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// The protocol's Redis Functions library, which every asdlc process calls.
    #[command(subcommand)]
    Functions(FunctionsCommand),
    /// Serve the web dashboard: streams, groups, lag, pending, dead letters, live.
    ///
    /// Read-only unless started with --write and a token (--token, or better
    /// ASDLC_DASHBOARD_TOKEN, which `ps` does not show); the page asks for the token before
    /// it replays or purges. Bound to 127.0.0.1 by default; requests whose Host header is not
    /// the bound address are refused (against DNS rebinding). Stops on Ctrl-C.
    Dashboard(DashboardArgs),
    /// A live view of every group, refreshing like `top`: lag, pending, oldest pending,
    /// processed/s. Quit with Ctrl-C.
    Top(TopArgs),
    /// Print a shell completion script: `asdlc completions bash > /etc/bash_completion.d/asdlc`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `asdlc man | man -l -`.
    Man,
}

/// `functions` subcommands.
#[derive(Debug, Subcommand)]
pub enum FunctionsCommand {
    /// Load this build's library (FUNCTION LOAD REPLACE; on a cluster, on every master). Needs
    /// an admin user: tenant users may call the library but not load it. Run it after a
    /// server lost its data, or before starting tenants' processes of a new release.
    Load,
    /// Whether this build's library is loaded; exit 1 if not.
    Status,
}

/// `dashboard` options.
#[derive(Debug, Args)]
pub struct DashboardArgs {
    /// The address to listen on (port 0: any free port; the URL is printed).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7878")]
    pub bind: std::net::SocketAddr,
    /// Allow replaying and purging dead letters from the page (needs a token).
    #[arg(long)]
    pub write: bool,
    /// The token the page must send to replay or purge.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "ASDLC_DASHBOARD_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Also accept this Host header (repeatable), e.g. behind a reverse proxy; on 0.0.0.0 any
    /// host is accepted unless this is given.
    #[arg(long = "allow-host", value_name = "HOST:PORT")]
    pub allow_hosts: Vec<String>,
}

/// `top` options.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// Time between refreshes.
    #[arg(long, short = 'd', value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Stop after this many refreshes (default: run until Ctrl-C).
    #[arg(long, short = 'n', value_name = "N")]
    pub iterations: Option<u64>,
}

/// `tenant` subcommands.
#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create (or replace) the tenant's ACL user, allowed only keys `tenant:{ID}:*` and the
    /// commands asdlc needs; prints the user name, its password and the URL to give the
    /// tenant's processes. The user is created on every node, replicas included (every node
    /// of a cluster; the server and the replicas ROLE lists), read back on each, and recorded
    /// (asdlc:acl:tenants) for `tenant sync`. A node it cannot reach makes it fail (exit 5)
    /// after printing the credentials: run `tenant sync` once the node is back.
    Provision {
        /// The tenant id.
        id: String,
        /// Read the password from the first line of standard input (default: generate 256
        /// random bits).
        #[arg(long)]
        password_stdin: bool,
        /// Also allow CLIENT LIST: a consumer restarting after a crash takes its name over at
        /// once instead of after 15 s, but the tenant sees every connection of the server.
        #[arg(long)]
        allow_client_list: bool,
        /// Also allow this command (repeatable), still on the tenant's keys only.
        #[arg(long = "allow-command", value_name = "COMMAND")]
        allow_commands: Vec<String>,
    },
    /// Delete the tenant's ACL user on every node; its open connections are closed. Its keys
    /// stay. The record keeps a tombstone, so `tenant sync` deletes the user from a node that
    /// was down.
    Revoke {
        /// The tenant id.
        id: String,
    },
    /// Apply the record of provisioned tenants to every node again: a node that lost a user
    /// (a new replica, a node restarted without an aclfile) gets it back, a revoked tenant's
    /// user still on a node is deleted; unrecorded asdlc-tenant-* users are only reported.
    /// Needs an admin URL. Run it after every change of topology. Exit 5 if a node could not
    /// be reached.
    Sync,
}

/// `health` thresholds; a value at or above a level reaches it.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// Lag (unread entries) of a group that makes it degraded.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub lag_degraded: u64,
    /// Lag of a group that makes it unhealthy.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub lag_unhealthy: u64,
    /// Pending (read, unacknowledged) entries of a group that make it degraded.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub pending_degraded: u64,
    /// Pending entries of a group that make it unhealthy.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub pending_unhealthy: u64,
    /// Age of a group's oldest pending entry that makes it degraded.
    #[arg(long, value_name = "DURATION", default_value = "1m", value_parser = parse_duration)]
    pub pending_age_degraded: Duration,
    /// Age of a group's oldest pending entry that makes it unhealthy.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub pending_age_unhealthy: Duration,
    /// Dead letters in a stream that make it degraded (default: dead letters never do).
    #[arg(long, value_name = "N")]
    pub dead_letters_degraded: Option<u64>,
    /// A stream that does not exist yet makes it degraded (default: a fresh deployment, with
    /// nothing published yet, is healthy).
    #[arg(long)]
    pub require_stream: bool,
}

/// `tail` options.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// Exit after this many events.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Start after this entry id (`0` for the whole history); default: only new events.
    #[arg(long, value_name = "ID")]
    pub from: Option<String>,
}

/// `pending` options.
#[derive(Debug, Args)]
pub struct PendingArgs {
    /// The consumer group.
    pub group: String,
    /// Only this consumer's entries.
    #[arg(long, value_name = "NAME")]
    pub consumer: Option<String>,
    /// At most this many entries per stream.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub limit: usize,
}

/// `gates` arguments.
#[derive(Debug, Args)]
pub struct GatesArgs {
    /// Only the gates still waiting for an outcome.
    #[arg(long)]
    pub pending: bool,
    /// At most this many per stream.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub limit: usize,
}

/// `scheduled` subcommands.
#[derive(Debug, Subcommand)]
pub enum ScheduledCommand {
    /// Scheduled events, soonest first: key, when due (or how late), type and session.
    List {
        /// At most this many per stream.
        #[arg(long, value_name = "N", default_value_t = 100)]
        limit: usize,
    },
    /// Cancel the scheduled event with this idempotency key, if it is still waiting.
    Cancel {
        /// The event's idempotency key.
        key: String,
    },
}

/// `dlq` subcommands.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Dead letters, oldest first.
    List {
        /// At most this many per stream.
        #[arg(long, value_name = "N", default_value_t = 100)]
        limit: usize,
    },
    /// One dead letter in full: provenance, reason, error and the original event.
    Show {
        /// Its id in the dead-letter stream.
        id: String,
    },
    /// Put dead letters back on their stream with their original fields (the same
    /// idempotency key, so a group that already handled one skips it) and remove them.
    Replay {
        /// The dead letter to replay.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Replay every dead letter, skipping (and naming) those that cannot succeed:
        /// malformed, of another tenant, or cut to the payload cap.
        #[arg(long)]
        all: bool,
        /// Replay for this group only (the others acknowledge the copy unhandled); with
        /// `--all`, only the dead letters this group gave up on.
        #[arg(long, value_name = "GROUP")]
        group: Option<String>,
        /// With `--all`, replay malformed dead letters too (they are dead-lettered again).
        #[arg(long, requires = "all")]
        include_malformed: bool,
    },
    /// Delete every dead letter (of the selected streams).
    Purge {
        /// Really delete them.
        #[arg(long)]
        yes: bool,
    },
}

/// `publish` input: `--file`, or `--type` with the other flags.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["file", "event_type"])))]
pub struct PublishArgs {
    /// Read the event (a JSON object, or an array of them) from FILE, or `-` for stdin.
    /// Missing `timestamp` means now; a missing `idempotency_key` gets a unique one.
    #[arg(long, short = 'f', value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Event type, e.g. task_created.
    #[arg(long = "type", value_name = "TYPE", requires = "session")]
    pub event_type: Option<String>,
    /// Session id.
    #[arg(long, value_name = "ID")]
    pub session: Option<String>,
    /// Epic id.
    #[arg(long, value_name = "ID")]
    pub epic: Option<String>,
    /// Task id.
    #[arg(long, value_name = "ID")]
    pub task: Option<String>,
    /// Git commit (7 to 40 hex digits).
    #[arg(long, value_name = "SHA")]
    pub git_sha: Option<String>,
    /// An artifact path (repeatable).
    #[arg(long = "artifact", value_name = "PATH")]
    pub artifacts: Vec<String>,
    /// Session mode: normal or rlm.
    #[arg(long, value_name = "MODE")]
    pub mode: Option<String>,
    /// A metadata entry KEY=VALUE (repeatable; VALUE is parsed as JSON when it can be).
    #[arg(long = "meta", value_name = "KEY=VALUE")]
    pub meta: Vec<String>,
    /// The idempotency key (default: a unique one).
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
}

/// `recover` options.
#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// The consumer group.
    pub group: String,
    /// Entries pending at least this long count as stale.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub min_idle: Duration,
    /// Move the stale entries to this consumer.
    #[arg(long, value_name = "CONSUMER")]
    pub claim_to: Option<String>,
    /// At most this many entries per stream.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub limit: usize,
}

/// `trim` options.
#[derive(Debug, Args)]
pub struct TrimArgs {
    /// Count what would be removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Keep entries younger than this even if every group is done with them.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub min_age: Option<Duration>,
}
