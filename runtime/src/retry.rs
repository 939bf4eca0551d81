//! One retry policy for everything Denizen retries: alarms, agent schedules and queue items,
//! workflow steps, MCP reconnects — and your own calls.
//!
//! A [`RetryPolicy`] says how long to wait before each retry (a first delay that stays, grows
//! linearly or grows by a factor, up to a cap), how many attempts there are in all, and how much
//! random jitter spreads retries that failed together. The SDK-shaped types that mirror
//! Cloudflare's (`schedule::Retry` of the agents, a workflow step's `StepConfig`) keep their
//! stored form and convert into it.
//!
//! ```
//! use std::time::Duration;
//! use denizen_runtime::retry::{Growth, RetryPolicy};
//!
//! // 100 ms doubling up to 1 s, 5 attempts in all, exact delays.
//! let policy = RetryPolicy::exponential(Duration::from_millis(100), 2.0)
//!     .with_max_delay(Duration::from_secs(1))
//!     .with_max_attempts(5);
//! let delays: Vec<_> = policy.iter().collect();
//! assert_eq!(delays, [100, 200, 400, 800].map(Duration::from_millis));
//! assert_eq!(policy.delay(6), Duration::from_secs(1)); // capped
//! assert_eq!(policy.next_delay(5), None); // no attempt left
//! # let _ = Growth::Linear;
//! ```

use std::future::Future;
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// How the delay grows from one retry to the next.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Growth {
    /// The first delay every time.
    Constant,
    /// The first delay × n before retry n.
    Linear,
    /// The first delay × factor^(n−1) before retry n.
    Exponential(f32),
}

/// How a failed operation is retried. See the [module docs](self).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// The delay before the first retry.
    pub initial: Duration,
    /// How the delay grows.
    pub growth: Growth,
    /// No delay is longer than this; `None` lets it grow without bound.
    pub max_delay: Option<Duration>,
    /// Attempts in all, the first included; `None` retries forever.
    pub max_attempts: Option<u32>,
    /// Each delay is multiplied by a random factor in `[1 − jitter, 1 + jitter]` (0 to 1), so
    /// many callers that failed together do not retry together. 0 keeps delays exact.
    pub jitter: f32,
}

impl RetryPolicy {
    /// `initial`, growing by `factor` each retry, forever, without jitter.
    pub const fn exponential(initial: Duration, factor: f32) -> Self {
        RetryPolicy {
            initial,
            growth: Growth::Exponential(factor),
            max_delay: None,
            max_attempts: None,
            jitter: 0.0,
        }
    }

    /// `delay` between every two attempts, forever, without jitter.
    pub const fn constant(delay: Duration) -> Self {
        RetryPolicy {
            initial: delay,
            growth: Growth::Constant,
            max_delay: None,
            max_attempts: None,
            jitter: 0.0,
        }
    }

    /// The same policy with delays capped at `max`.
    pub const fn with_max_delay(mut self, max: Duration) -> Self {
        self.max_delay = Some(max);
        self
    }

    /// The same policy with `attempts` attempts in all, the first included.
    pub const fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }

    /// The same policy with `jitter` (a fraction, clamped to 0..=1).
    pub const fn with_jitter(mut self, jitter: f32) -> Self {
        self.jitter = jitter.clamp(0.0, 1.0);
        self
    }

    /// The delay before retry `n` (1 is the first retry), without jitter.
    pub fn delay(&self, n: u32) -> Duration {
        let n = n.max(1);
        let grown = match self.growth {
            Growth::Constant => Some(self.initial),
            Growth::Linear => self.initial.checked_mul(n),
            Growth::Exponential(factor) => {
                let exponent = i32::try_from(n - 1).unwrap_or(i32::MAX);
                let secs = self.initial.as_secs_f64() * f64::from(factor).powi(exponent);
                Duration::try_from_secs_f64(secs).ok()
            }
        };
        let cap = self.max_delay.unwrap_or(Duration::MAX);
        grown.map_or(cap, |d| d.min(cap))
    }

    /// After `attempts` failed attempts (the first included), the delay before the next one with
    /// jitter applied, or `None` when the policy allows no more.
    pub fn next_delay(&self, attempts: u32) -> Option<Duration> {
        if self.max_attempts.is_some_and(|max| attempts >= max) {
            return None;
        }
        Some(self.jittered_delay(attempts))
    }

    /// The delay before retry `n` with jitter applied, whatever `max_attempts` says.
    pub fn jittered_delay(&self, n: u32) -> Duration {
        let delay = self.delay(n);
        if self.jitter <= 0.0 {
            return delay;
        }
        let j = f64::from(self.jitter.min(1.0));
        let factor = rand::rng().random_range(1.0 - j..=1.0 + j);
        Duration::try_from_secs_f64(delay.as_secs_f64() * factor).unwrap_or(delay)
    }

    /// The delays before each retry in turn (jittered), as many as the policy allows.
    pub fn iter(&self) -> impl Iterator<Item = Duration> + '_ {
        (1..).map_while(|attempts| self.next_delay(attempts))
    }

    /// Runs `op` until it succeeds, fails with an error `is_retryable` refuses, or the policy has
    /// no attempt left; sleeps the policy's delay between attempts. Returns the last error.
    pub async fn retry<T, E, F, Fut>(
        &self,
        mut op: F,
        is_retryable: impl Fn(&E) -> bool,
    ) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut attempts = 0u32;
        loop {
            attempts = attempts.saturating_add(1);
            match op().await {
                Ok(value) => return Ok(value),
                Err(e) if !is_retryable(&e) => return Err(e),
                Err(e) => match self.next_delay(attempts) {
                    Some(delay) => tokio::time::sleep(delay).await,
                    None => return Err(e),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn delays_grow_as_configured_and_stop_at_the_cap() {
        let linear = RetryPolicy {
            growth: Growth::Linear,
            ..RetryPolicy::constant(10 * MS)
        };
        assert_eq!(linear.delay(1), 10 * MS);
        assert_eq!(linear.delay(3), 30 * MS);
        assert_eq!(RetryPolicy::constant(7 * MS).delay(9), 7 * MS);
        let exp = RetryPolicy::exponential(2 * MS, 3.0).with_max_delay(100 * MS);
        assert_eq!(exp.delay(0), 2 * MS, "retry 0 reads as the first");
        assert_eq!(exp.delay(2), 6 * MS);
        assert_eq!(exp.delay(4), 54 * MS);
        assert_eq!(exp.delay(5), 100 * MS);
        assert_eq!(exp.delay(u32::MAX), 100 * MS, "no overflow far out");
        let unbounded = RetryPolicy::exponential(Duration::from_secs(1), 2.0);
        assert_eq!(unbounded.delay(5000), Duration::MAX);
    }

    #[test]
    fn attempts_include_the_first_and_jitter_stays_in_its_band() {
        let p = RetryPolicy::exponential(100 * MS, 2.0)
            .with_max_attempts(3)
            .with_jitter(0.25);
        assert_eq!(p.iter().count(), 2, "3 attempts: 2 retries");
        for _ in 0..200 {
            let d = p.next_delay(2).unwrap();
            assert!(d >= 150 * MS && d <= 250 * MS, "{d:?}");
        }
        assert_eq!(p.next_delay(3), None);
        assert!(RetryPolicy::constant(MS).iter().take(1000).count() == 1000);
    }

    #[tokio::test]
    async fn retry_stops_on_success_on_a_permanent_error_or_when_attempts_run_out() {
        let p = RetryPolicy::constant(MS).with_max_attempts(4);
        let mut calls = 0;
        let r: Result<u32, &str> = p
            .retry(
                || {
                    calls += 1;
                    let n = calls;
                    async move { if n < 3 { Err("again") } else { Ok(n) } }
                },
                |_| true,
            )
            .await;
        assert_eq!(r, Ok(3));
        let mut calls = 0;
        let r: Result<(), &str> = p
            .retry(
                || {
                    calls += 1;
                    async { Err("permanent") }
                },
                |e| *e != "permanent",
            )
            .await;
        assert_eq!((r, calls), (Err("permanent"), 1));
        let mut calls = 0;
        let r: Result<(), &str> = p
            .retry(
                || {
                    calls += 1;
                    async { Err("again") }
                },
                |_| true,
            )
            .await;
        assert_eq!((r, calls), (Err("again"), 4));
    }
}
