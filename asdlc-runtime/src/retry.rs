//! How a failed step is tried again: one [`Policy`] (the pause after each failure, a cap,
//! jitter, a limit of tries or time) for every loop that retries, so each site states its
//! numbers and none hand-writes the arithmetic.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The most times an exponential pause doubles: past it, the pause stays (long before, a cap
/// usually applies).
const MAX_DOUBLINGS: u32 = 20;

/// How the pause grows with the number of failures in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Growth {
    /// The same pause every time.
    Constant,
    /// `base * n` after the `n`-th failure.
    Linear,
    /// `base * 2^(n-1)` after the `n`-th failure.
    Exponential,
}

/// When to pause between tries and when to stop trying.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Policy {
    base: Duration,
    growth: Growth,
    cap: Duration,
    /// The lowest random factor a pause is scaled by (1.0: no jitter).
    jitter_floor: f64,
    /// Failures after which the step is not tried again (`None`: no limit).
    max_retries: Option<u32>,
    /// Time after the first try when no further try starts (`None`: no limit).
    deadline: Option<Duration>,
    /// Pause only after every second failure in a row, retrying the first of each pair at
    /// once. A command that fails on a connection cut while idle is mostly just the first
    /// one after the cut (the connection is re-made for the next), so an immediate retry
    /// usually succeeds where one after a pause would meet the next cut.
    in_pairs: bool,
}

impl Policy {
    const fn new(base: Duration, growth: Growth) -> Self {
        Policy {
            base,
            growth,
            cap: Duration::MAX,
            jitter_floor: 1.0,
            max_retries: None,
            deadline: None,
            in_pairs: false,
        }
    }

    /// The same pause `every` time.
    pub(crate) const fn constant(every: Duration) -> Self {
        Policy::new(every, Growth::Constant)
    }

    /// A pause of `step * n` after the `n`-th failure in a row.
    pub(crate) const fn linear(step: Duration) -> Self {
        Policy::new(step, Growth::Linear)
    }

    /// A pause of `first * 2^(n-1)` after the `n`-th failure in a row.
    pub(crate) const fn exponential(first: Duration) -> Self {
        Policy::new(first, Growth::Exponential)
    }

    /// No pause longer than `cap`.
    pub(crate) const fn cap(mut self, cap: Duration) -> Self {
        self.cap = cap;
        self
    }

    /// Each pause scaled by a random factor in `[floor, 1]`, so that retries of a burst
    /// spread out.
    pub(crate) const fn jitter(mut self, floor: f64) -> Self {
        self.jitter_floor = floor;
        self
    }

    /// Gives up after `n` failures were retried (the step runs at most `n + 1` times).
    pub(crate) const fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = Some(n);
        self
    }

    /// Gives up once `limit` has passed since the first try.
    pub(crate) const fn deadline(mut self, limit: Duration) -> Self {
        self.deadline = Some(limit);
        self
    }

    /// Retries the first failure of each pair at once, pausing after the second.
    pub(crate) const fn in_pairs(mut self) -> Self {
        self.in_pairs = true;
        self
    }

    /// The pause after the `failures`-th failure in a row, before jitter: zero for the first
    /// of a pair when retrying [`in_pairs`](Self::in_pairs).
    pub(crate) fn base_delay(&self, failures: u32) -> Duration {
        if self.in_pairs && !failures.is_multiple_of(2) {
            return Duration::ZERO;
        }
        let n = failures.max(1);
        let raw = match self.growth {
            Growth::Constant => self.base,
            Growth::Linear => self.base.saturating_mul(n),
            Growth::Exponential => self.base.saturating_mul(1u32 << (n - 1).min(MAX_DOUBLINGS)),
        };
        raw.min(self.cap)
    }

    /// The pause after the `failures`-th failure in a row, jitter applied.
    pub(crate) fn delay(&self, failures: u32) -> Duration {
        let d = self.base_delay(failures);
        if self.jitter_floor >= 1.0 {
            return d;
        }
        d.mul_f64(self.jitter_floor + rand::random::<f64>() * (1.0 - self.jitter_floor))
    }

    /// A fresh count of failures under this policy, its time limit starting now.
    pub(crate) fn start(&self) -> Retry {
        Retry {
            policy: *self,
            failures: 0,
            started: Instant::now(),
        }
    }
}

/// The failures in a row of one step under a [`Policy`].
#[derive(Debug)]
pub(crate) struct Retry {
    policy: Policy,
    failures: u32,
    started: Instant,
}

impl Retry {
    /// Counts a failure: the pause before the next try, or `None` when the policy gives up.
    pub(crate) fn failed(&mut self) -> Option<Duration> {
        self.failures = self.failures.saturating_add(1);
        if self.policy.max_retries.is_some_and(|m| self.failures > m)
            || self
                .policy
                .deadline
                .is_some_and(|d| self.started.elapsed() >= d)
        {
            return None;
        }
        Some(self.policy.delay(self.failures))
    }

    /// The failures counted since the last success.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    /// A success: the next failure is the first in a row again.
    pub(crate) fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// Counts a failure and waits out its pause, cut short by `stop`. `false` when the
    /// policy gives up (then without waiting).
    pub(crate) async fn wait(&mut self, stop: &CancellationToken) -> bool {
        match self.failed() {
            Some(pause) => {
                sleep(pause, Some(stop)).await;
                true
            }
            None => false,
        }
    }
}

/// Sleeps for `pause` (not at all when it is zero, so an immediate retry does not wait for
/// the next timer tick), or until `stop` fires.
pub(crate) async fn sleep(pause: Duration, stop: Option<&CancellationToken>) {
    if pause.is_zero() {
        return;
    }
    match stop {
        Some(stop) => {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.cancelled() => {}
            }
        }
        None => tokio::time::sleep(pause).await,
    }
}

/// Runs `step` until it succeeds, returning the last error when it is not `retryable`, the
/// policy gives up, or `stop` has fired. `on_retry` sees each error that is retried.
pub(crate) async fn retry<T, E, F, Fut>(
    policy: Policy,
    stop: &CancellationToken,
    retryable: impl Fn(&E) -> bool,
    mut on_retry: impl FnMut(&E),
    mut step: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut tries = policy.start();
    loop {
        match step().await {
            Ok(v) => return Ok(v),
            Err(e) if retryable(&e) && !stop.is_cancelled() => {
                on_retry(&e);
                if !tries.wait(stop).await {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn exponential_pauses_double_up_to_the_cap() {
        let p = Policy::exponential(100 * MS).cap(3000 * MS);
        let pauses: Vec<_> = (1..=8).map(|n| p.delay(n)).collect();
        assert_eq!(
            pauses,
            [100, 200, 400, 800, 1600, 3000, 3000, 3000].map(|ms| ms * MS)
        );
    }

    #[test]
    fn an_exponential_pause_never_overflows() {
        let p = Policy::exponential(Duration::from_secs(1));
        assert_eq!(p.delay(u32::MAX), Duration::from_secs(1 << MAX_DOUBLINGS));
        assert_eq!(p.delay(0), Duration::from_secs(1));
    }

    #[test]
    fn linear_pauses_grow_by_one_step_up_to_the_cap() {
        let p = Policy::linear(50 * MS).cap(2000 * MS);
        assert_eq!(p.delay(1), 50 * MS);
        assert_eq!(p.delay(2), 100 * MS);
        assert_eq!(p.delay(40), 2000 * MS);
        assert_eq!(p.delay(100), 2000 * MS);
    }

    #[test]
    fn in_pairs_the_first_of_each_pair_is_retried_at_once() {
        let p = Policy::constant(200 * MS).in_pairs();
        let pauses: Vec<_> = (1..=4).map(|n| p.delay(n)).collect();
        assert_eq!(pauses, [0, 200, 0, 200].map(|ms| ms * MS));
        let p = Policy::exponential(100 * MS).cap(3000 * MS).in_pairs();
        let pauses: Vec<_> = (1..=6).map(|n| p.delay(n)).collect();
        assert_eq!(pauses, [0, 200, 0, 800, 0, 3000].map(|ms| ms * MS));
    }

    #[test]
    fn jitter_scales_a_pause_within_its_floor() {
        let p = Policy::exponential(1000 * MS).jitter(0.5);
        for _ in 0..200 {
            let d = p.delay(1);
            assert!(d >= 500 * MS && d <= 1000 * MS, "{d:?}");
        }
        assert_eq!(p.base_delay(2), 2000 * MS);
    }

    #[test]
    fn max_retries_gives_up_after_that_many_failures() {
        let mut tries = Policy::constant(MS).max_retries(3).start();
        assert!(tries.failed().is_some());
        assert!(tries.failed().is_some());
        assert!(tries.failed().is_some());
        assert_eq!(tries.failed(), None);
        assert_eq!(tries.failures(), 4);
        tries.succeeded();
        assert_eq!(tries.failures(), 0);
        assert!(tries.failed().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_gives_up_once_it_has_passed() {
        let mut tries = Policy::constant(100 * MS).deadline(250 * MS).start();
        let stop = CancellationToken::new();
        let mut waited = 0;
        while tries.wait(&stop).await {
            waited += 1;
        }
        assert_eq!(waited, 3);
        assert!(tries.started.elapsed() >= 250 * MS);
    }

    /// A step whose every call fails with the number of that call: 1, 2, 3...
    fn numbered_failures() -> impl FnMut() -> std::future::Ready<Result<(), u32>> {
        let mut calls = 0;
        move || {
            calls += 1;
            std::future::ready(Err(calls))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retry_stops_at_an_error_that_is_not_retryable() {
        let mut retried = Vec::new();
        let r: Result<(), u32> = retry(
            Policy::constant(10 * MS),
            &CancellationToken::new(),
            |e| *e < 3,
            |e| retried.push(*e),
            numbered_failures(),
        )
        .await;
        assert_eq!(r, Err(3));
        assert_eq!(retried, [1, 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_returns_the_first_success() {
        let mut calls = 0;
        let r: Result<u32, &str> = retry(
            Policy::exponential(10 * MS).in_pairs(),
            &CancellationToken::new(),
            |_| true,
            |_| {},
            || {
                calls += 1;
                let n = calls;
                async move { if n < 4 { Err("cut") } else { Ok(n) } }
            },
        )
        .await;
        assert_eq!(r, Ok(4));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_ends_once_stopped() {
        let stop = CancellationToken::new();
        let mut calls = 0;
        let r: Result<(), &str> = retry(
            Policy::constant(Duration::from_secs(3600)),
            &stop,
            |_| true,
            |_| stop.cancel(),
            || {
                calls += 1;
                async { Err("cut") }
            },
        )
        .await;
        assert_eq!(r, Err("cut"));
        // The pause was cut short, the step tried once more, and its error ended it.
        assert_eq!(calls, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_gives_up_with_the_last_error() {
        let r: Result<(), u32> = retry(
            Policy::constant(MS).max_retries(2),
            &CancellationToken::new(),
            |_| true,
            |_| {},
            numbered_failures(),
        )
        .await;
        assert_eq!(r, Err(3));
    }
}
