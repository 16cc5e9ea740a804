//! The server side of the protocol: one Redis Functions library, called with `FCALL`.
//!
//! Every atomic step of asdlc (begin, commit, keep-alive, the name lock, marks, trim, replay)
//! is a Lua function of one library, loaded once per server with `FUNCTION LOAD` and called
//! with `FCALL`. Why functions and not `EVAL`: a user allowed `EVAL` can run any code of its
//! own, and one long script blocks every client of the server; tenants are granted `FCALL`
//! only, so the only code a tenant can run is ours (see [`crate::acl`]).
//!
//! **Versioned.** The library is named `asdlc_<version>`, the version a hash of its source,
//! and its functions `asdlc_<version>_<step>`: processes of two releases can share a server
//! during a rolling upgrade, each calling its own functions. [`ensure_loaded`] loads it
//! (`FUNCTION LOAD REPLACE`, on every master of a cluster, from where replicas copy it); a
//! call that finds it missing (a server restarted without persistence, a new master) loads
//! it and calls again, if the user may load functions. A tenant user may not: an admin loads
//! the library ([`crate::acl::provision_tenant`] does, and `asdlc functions load`).
//!
//! **Every key declared.** A function touches only keys passed in its `KEYS` (the mark hashes
//! a lookup may read are computed by the client for the server's clock, see
//! [`crate::idempotency::MarkLayout`]), and
//! checks each key it builds against them. So the server checks every key against the
//! caller's ACL before anything runs, and a cluster routes the call by all its keys: a slot
//! being migrated gets a redirect for the whole call instead of a half-seen mark.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use redis::aio::ConnectionLike;
use redis::{
    ErrorKind, FromRedisValue, ParsingError, RedisError, RedisResult, RedisWrite, ToRedisArgs,
    Value,
};

mod args;
pub(crate) use args::ArgList;

/// The helpers every function may use, and the functions: (step name, source). A source sees
/// `KEYS` and `ARGV` as in a script, and `ITEMS`, nil unless another function calls it
/// (begin.lua says what it is).
const HELPERS: &[&str] = &[
    include_str!("functions.lua"),
    include_str!("idempotency/marks.lua"),
    include_str!("consume/leases.lua"),
    include_str!("consume/order.lua"),
    include_str!("consume/effects.lua"),
];

const FUNCTIONS: &[(&str, &str)] = &[
    ("begin", include_str!("consume/begin.lua")),
    // After `begin`, which it calls.
    ("begin_ordered", include_str!("consume/begin_ordered.lua")),
    ("commit", include_str!("consume/commit.lua")),
    ("keepalive", include_str!("consume/keepalive.lua")),
    ("redeliver", include_str!("consume/redeliver.lua")),
    ("forget", include_str!("consume/forget.lua")),
    ("sweep_leases", include_str!("consume/sweep_leases.lua")),
    ("name_lock", include_str!("consume/name_lock.lua")),
    ("mark", include_str!("idempotency/tracker.lua")),
    ("mark_many", include_str!("idempotency/tracker_many.lua")),
    ("trim", include_str!("monitor/retention.lua")),
    ("count_range", include_str!("monitor/count_range.lua")),
    ("replay", include_str!("deadletter/replay.lua")),
    ("ensure_stream", include_str!("streams_ensure.lua")),
    ("lag", include_str!("streams_lag.lua")),
    ("schedule", include_str!("schedule/schedule.lua")),
    ("promote", include_str!("schedule/promote.lua")),
    ("gate", include_str!("gate/gate.lua")),
];

/// The library: its name and its source for `FUNCTION LOAD`.
struct Library {
    name: String,
    source: String,
}

static LIBRARY: LazyLock<Library> = LazyLock::new(|| {
    let mut body = String::new();
    for h in HELPERS {
        body.push_str(h);
        body.push('\n');
    }
    for (step, source) in FUNCTIONS {
        body.push_str(&format!(
            "local function asdlc_step_{step}(KEYS, ARGV, ITEMS)\n{source}\nend\n"
        ));
    }
    let name = format!("asdlc_{:016x}", fnv1a(body.as_bytes()));
    let mut source = format!("#!lua name={name}\n{body}");
    for (step, _) in FUNCTIONS {
        source.push_str(&format!(
            "redis.register_function('{name}_{step}', asdlc_step_{step})\n"
        ));
    }
    // Answers whether this version is loaded, for any user allowed FCALL.
    source.push_str(&format!(
        "redis.register_function{{function_name='{name}_version', \
         callback=function() return '{name}' end, flags={{'no-writes'}}}}\n"
    ));
    Library { name, source }
});

/// FNV-1a, 64 bits: a stable hash of the source (the std hasher is not stable across
/// releases, and the version must be the same in every process built from one source).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The name of the library this build calls (`asdlc_<version>`).
pub fn library_name() -> &'static str {
    &LIBRARY.name
}

/// The library's source, as `FUNCTION LOAD` takes it (for an operator who loads it by hand).
pub fn library_source() -> &'static str {
    &LIBRARY.source
}

/// Loads this build's library onto the server (every master of a cluster) unless it is there.
///
/// A user without `FUNCTION LOAD` (a tenant) gets [`FunctionsError::NotLoaded`] when the
/// library is missing; when it is present, nothing needs loading and this succeeds.
pub async fn ensure_loaded<C: ConnectionLike + Send>(conn: &mut C) -> Result<(), FunctionsError> {
    let present: RedisResult<String> = redis::cmd("FCALL")
        .arg(format!("{}_version", LIBRARY.name))
        .arg(0)
        .query_async(conn)
        .await;
    match present {
        Ok(_) => Ok(()),
        Err(e) if is_missing(&e) => load(conn).await,
        Err(source) => Err(FunctionsError::Redis {
            library: LIBRARY.name.clone(),
            source,
        }),
    }
}

/// Loads (or loads again) this build's library: `FUNCTION LOAD REPLACE`, which needs a user
/// allowed to load functions.
pub async fn load<C: ConnectionLike + Send>(conn: &mut C) -> Result<(), FunctionsError> {
    redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(&LIBRARY.source)
        .query_async::<()>(conn)
        .await
        .map_err(|source| {
            if source.code() == Some("NOPERM") {
                FunctionsError::NotLoaded {
                    library: LIBRARY.name.clone(),
                    source,
                }
            } else {
                FunctionsError::Redis {
                    library: LIBRARY.name.clone(),
                    source,
                }
            }
        })
}

/// Whether `e` says the function called does not exist.
fn is_missing(e: &RedisError) -> bool {
    e.code() == Some("ERR")
        && e.detail()
            .is_some_and(|d| d.starts_with("Function not found"))
}

/// Why the protocol's library could not be made available.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FunctionsError {
    /// The library is missing and this user may not load it.
    #[error(
        "the asdlc functions library {library} is not loaded on the server, and this user \
         may not load it ({source}): load it as an admin with `asdlc functions load` (also \
         done by `asdlc tenant provision`)"
    )]
    NotLoaded {
        /// The library's name.
        library: String,
        /// The server's refusal.
        #[source]
        source: RedisError,
    },
    /// Redis returned another error or could not be reached.
    #[error("redis error loading the asdlc functions library `{library}`: {source}")]
    Redis {
        /// The library's name.
        library: String,
        /// The underlying error.
        #[source]
        source: RedisError,
    },
}

impl From<FunctionsError> for RedisError {
    fn from(e: FunctionsError) -> Self {
        match e {
            FunctionsError::Redis { source, .. } => source,
            e @ FunctionsError::NotLoaded { .. } => RedisError::from((
                ErrorKind::Client,
                "asdlc functions library missing",
                e.to_string(),
            )),
        }
    }
}

/// The error of a reply a function does not give: names the function and shows the reply.
/// Each function's reply type, next to the module that calls it, parses with it.
pub(crate) fn unexpected(function: Function, reply: &Value) -> ParsingError {
    format!(
        "unexpected reply of the asdlc {} function: {reply:?}",
        function.0
    )
    .into()
}

/// One function of the library.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Function(&'static str);

pub(crate) const BEGIN: Function = Function("begin");
pub(crate) const BEGIN_ORDERED: Function = Function("begin_ordered");
pub(crate) const COMMIT: Function = Function("commit");
pub(crate) const KEEPALIVE: Function = Function("keepalive");
pub(crate) const REDELIVER: Function = Function("redeliver");
pub(crate) const FORGET: Function = Function("forget");
pub(crate) const SWEEP_LEASES: Function = Function("sweep_leases");
pub(crate) const NAME_LOCK: Function = Function("name_lock");
pub(crate) const MARK: Function = Function("mark");
pub(crate) const MARK_MANY: Function = Function("mark_many");
pub(crate) const TRIM: Function = Function("trim");
pub(crate) const COUNT_RANGE: Function = Function("count_range");
pub(crate) const REPLAY: Function = Function("replay");
pub(crate) const ENSURE_STREAM: Function = Function("ensure_stream");
pub(crate) const LAG: Function = Function("lag");
pub(crate) const SCHEDULE: Function = Function("schedule");
pub(crate) const PROMOTE: Function = Function("promote");
pub(crate) const GATE: Function = Function("gate");

impl Function {
    /// A call of this function, with its first key.
    pub(crate) fn key<T: ToRedisArgs>(self, key: T) -> Call {
        let mut call = Call {
            function: self,
            keys: ArgList::default(),
            args: ArgList::default(),
            clocked: None,
        };
        call.key(key);
        call
    }
}

/// A call being built: keys and arguments, as [`redis::ScriptInvocation`] takes them.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    function: Function,
    keys: ArgList,
    args: ArgList,
    clocked: Option<Clocked>,
}

/// The part of a call made for the server's current time (the processed marks' section, see
/// [`crate::idempotency::MarkLayout`]), and where it goes among the keys and arguments.
#[derive(Debug, Clone)]
struct Clocked {
    part: Arc<dyn ClockedPart>,
    key_at: usize,
    arg_at: usize,
}

/// Keys and arguments that depend on the server's clock. A function given a part made for
/// another time than its server's refuses the call before it writes anything, with
/// `ASDLC_CLOCK <server ms>`; the call is then made again for that time.
pub(crate) trait ClockedPart: std::fmt::Debug + Send + Sync {
    /// Writes the keys and the arguments for the server time `server_ms`.
    fn render(&self, server_ms: u64, keys: &mut ArgList, args: &mut ArgList);

    /// Takes in what the server stored that this part assumed otherwise, when the server
    /// refused the call for it before writing anything (the layout of a group's marks,
    /// `ASDLC_LAYOUT`): true if the part now renders what the server has, and the call is to
    /// be made again.
    fn follow(&self, refusal: &RedisError) -> bool {
        let _ = refusal;
        false
    }
}

/// This process's estimate of the server's clock minus its own, in ms: learned from the
/// `ASDLC_CLOCK` refusals, so a process whose clock is off pays for it once, not every call.
static SERVER_OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// This process's time, in ms since the epoch.
fn local_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The server's time by this process's estimate, in ms since the epoch.
fn server_now_ms() -> u64 {
    (local_now_ms() + SERVER_OFFSET_MS.load(Ordering::Relaxed)).max(0) as u64
}

/// How many calls were refused for being made for another time than the server's.
static CLOCK_REFUSALS: AtomicU64 = AtomicU64::new(0);

/// Moves this process's estimate of the server's clock by `ms`, as a process whose own clock
/// is that far off would have it; returns how many calls have been refused for their time so
/// far. For tests of the refusal and the call made again.
#[doc(hidden)]
pub fn skew_server_clock_estimate(ms: i64) -> u64 {
    SERVER_OFFSET_MS.fetch_add(ms, Ordering::Relaxed);
    CLOCK_REFUSALS.load(Ordering::Relaxed)
}

/// The server's time an `ASDLC_CLOCK` refusal reports, if `e` is one.
fn clock_refusal(e: &RedisError) -> Option<u64> {
    if e.code() != Some("ASDLC_CLOCK") {
        return None;
    }
    e.detail()?.split_whitespace().next()?.parse().ok()
}

impl Call {
    /// Adds a key (declared in `KEYS`).
    pub(crate) fn key<T: ToRedisArgs>(&mut self, key: T) -> &mut Self {
        key.write_redis_args(&mut self.keys);
        self
    }

    /// Adds an argument.
    pub(crate) fn arg<T: ToRedisArgs>(&mut self, arg: T) -> &mut Self {
        arg.write_redis_args(&mut self.args);
        self
    }

    /// Puts the keys and arguments of `part` here: after the keys and arguments added so
    /// far, before those added next. One part a call.
    pub(crate) fn clocked(&mut self, part: impl ClockedPart + 'static) -> &mut Self {
        self.clocked = Some(Clocked {
            part: Arc::new(part),
            key_at: self.keys.len(),
            arg_at: self.args.len(),
        });
        self
    }

    /// The `FCALL` of this call, its clocked part made for server time `server_ms`.
    fn command(&self, server_ms: u64) -> redis::Cmd {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(format!("{}_{}", LIBRARY.name, self.function.0));
        let (keys, args) = (self.keys.len(), self.args.len());
        match &self.clocked {
            None => {
                cmd.arg(keys);
                for a in self.keys.iter().chain(self.args.iter()) {
                    cmd.write_arg(a);
                }
            }
            Some(c) => {
                let (mut part_keys, mut part_args) = (ArgList::default(), ArgList::default());
                c.part.render(server_ms, &mut part_keys, &mut part_args);
                cmd.arg(keys + part_keys.len());
                let all = self
                    .keys
                    .slices(0..c.key_at)
                    .chain(part_keys.iter())
                    .chain(self.keys.slices(c.key_at..keys))
                    .chain(self.args.slices(0..c.arg_at))
                    .chain(part_args.iter())
                    .chain(self.args.slices(c.arg_at..args));
                for a in all {
                    cmd.write_arg(a);
                }
            }
        }
        cmd
    }

    /// Calls the function; if the server lacks the library, loads it and calls once more; if
    /// the call was made for another time than the server's (its clocked part), makes it again
    /// for the server's time (a few times, should the server's time move on meanwhile); if
    /// the server refused what the clocked part assumed (a layout of marks), makes it again
    /// as the part follows the server.
    pub(crate) async fn invoke_async<T: FromRedisValue>(
        &self,
        conn: &mut (impl ConnectionLike + Send),
    ) -> RedisResult<T> {
        let mut at = server_now_ms();
        let (mut clock_tries, mut follow_tries) = (0, 0);
        loop {
            let cmd = self.command(at);
            let reply = match cmd.query_async(conn).await {
                Err(e) if is_missing(&e) => {
                    load(conn).await?;
                    cmd.query_async(conn).await
                }
                reply => reply,
            };
            let e = match reply {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if let Some(server) = clock_refusal(&e).filter(|_| clock_tries < 3) {
                CLOCK_REFUSALS.fetch_add(1, Ordering::Relaxed);
                SERVER_OFFSET_MS.store(server as i64 - local_now_ms(), Ordering::Relaxed);
                tracing::debug!(
                    server_ms = server,
                    "the server's clock differs: calling again for its time"
                );
                at = server;
                clock_tries += 1;
            } else if follow_tries < 3 && self.clocked.as_ref().is_some_and(|c| c.part.follow(&e)) {
                follow_tries += 1;
            } else {
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_library_registers_every_step_under_its_version() {
        let lib = &*LIBRARY;
        assert!(lib.name.starts_with("asdlc_") && lib.name.len() == 6 + 16);
        assert!(
            lib.source
                .starts_with(&format!("#!lua name={}\n", lib.name))
        );
        for (step, _) in FUNCTIONS {
            assert!(
                lib.source
                    .contains(&format!("register_function('{}_{step}'", lib.name)),
                "{step}"
            );
        }
        assert!(lib.source.contains(&format!("'{}_version'", lib.name)));
    }

    #[test]
    fn the_version_is_a_stable_hash_of_the_source() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(fnv1a(b"begin"), fnv1a(b"begim"));
    }

    #[test]
    fn an_unexpected_reply_is_named() {
        let e = unexpected(COMMIT, &Value::Int(7)).to_string();
        assert!(e.contains("commit function") && e.contains('7'), "{e}");
    }

    /// A clocked part of one key and two arguments, the second the server time it was made for.
    #[derive(Debug)]
    struct Part;

    impl ClockedPart for Part {
        fn render(&self, server_ms: u64, keys: &mut ArgList, args: &mut ArgList) {
            keys.write_arg(b"pk");
            args.write_arg(b"");
            args.write_arg_fmt(format_args!("{server_ms}"));
        }
    }

    /// The arguments of `cmd` after the function's name.
    fn fcall_args(cmd: &redis::Cmd) -> Vec<String> {
        cmd.args_iter()
            .skip(2)
            .map(|a| match a {
                redis::Arg::Simple(b) => String::from_utf8(b.to_vec()).unwrap(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_call_puts_keys_before_arguments() {
        let mut call = BEGIN.key("k1");
        call.arg("a1").key("k2").arg(7).arg(&b""[..]);
        assert_eq!(call.keys.iter().collect::<Vec<_>>(), [&b"k1"[..], b"k2"]);
        assert_eq!(
            call.args.iter().collect::<Vec<_>>(),
            [&b"a1"[..], b"7", b""]
        );
        assert_eq!(
            fcall_args(&call.command(0)),
            ["2", "k1", "k2", "a1", "7", ""]
        );
    }

    #[test]
    fn a_clocked_part_goes_where_it_was_put_among_keys_and_arguments() {
        let mut call = BEGIN.key("k1");
        call.arg("a1").clocked(Part).key("k2").arg("a2");
        assert_eq!(
            fcall_args(&call.command(1234)),
            ["3", "k1", "pk", "k2", "a1", "", "1234", "a2"]
        );
        // Made again for another time: the part only changes.
        assert_eq!(
            fcall_args(&call.command(99)),
            ["3", "k1", "pk", "k2", "a1", "", "99", "a2"]
        );
    }
}
