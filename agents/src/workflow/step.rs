//! The `step` handle a workflow's `run` receives: journaled steps, durable sleeps and events.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use denizen_runtime::Runtime;
use denizen_runtime::retry::{Growth, RetryPolicy};
use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::error::{Error, Result};
use super::record::{StepInfo, StepKind, StepState, now_ms, to_ms};

/// How long the delay between retries grows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Backoff {
    /// `delay` every time.
    Constant,
    /// `delay × n` before retry n.
    Linear,
    /// `delay × 2^(n-1)` before retry n.
    #[default]
    Exponential,
}

/// Retries and timeout of one `step.run`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepConfig {
    /// Retries after the first attempt (0: run once).
    pub retries: u32,
    /// Base delay between attempts.
    pub delay: Duration,
    /// How the delay grows from one retry to the next.
    pub backoff: Backoff,
    /// Each attempt is abandoned (and counts as failed) after this long.
    pub timeout: Duration,
}

impl Default for StepConfig {
    /// Cloudflare's defaults: 5 retries, 10 s, exponential, 10 min per attempt.
    fn default() -> Self {
        StepConfig {
            retries: 5,
            delay: Duration::from_secs(10),
            backoff: Backoff::Exponential,
            timeout: Duration::from_secs(600),
        }
    }
}

impl StepConfig {
    /// `retries` retries, `delay` apart, growing by `backoff`.
    pub fn retries(retries: u32, delay: Duration, backoff: Backoff) -> Self {
        StepConfig {
            retries,
            delay,
            backoff,
            ..StepConfig::default()
        }
    }

    /// The same with a per-attempt timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The delay before retry `n` (1-based).
    pub fn delay_before(&self, n: u32) -> Duration {
        RetryPolicy::from(self).delay(n)
    }
}

impl From<&StepConfig> for RetryPolicy {
    /// Exact delays (no jitter), no cap, `retries + 1` attempts.
    fn from(c: &StepConfig) -> Self {
        RetryPolicy {
            initial: c.delay,
            growth: match c.backoff {
                Backoff::Constant => Growth::Constant,
                Backoff::Linear => Growth::Linear,
                Backoff::Exponential => Growth::Exponential(2.0),
            },
            max_delay: None,
            max_attempts: Some(c.retries.saturating_add(1)),
            jitter: 0.0,
        }
    }
}

/// The error a step's closure returns: retryable by default, or non-retryable to fail the step
/// at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepError {
    /// What went wrong.
    pub message: String,
    /// Whether another attempt may succeed.
    pub retryable: bool,
}

impl StepError {
    /// A failure worth retrying (a timeout, a 503, a dropped connection).
    pub fn retryable(message: impl std::fmt::Display) -> Self {
        StepError {
            message: message.to_string(),
            retryable: true,
        }
    }

    /// A failure no retry will fix (bad input, a 4xx): the step fails without further attempts.
    pub fn non_retryable(message: impl std::fmt::Display) -> Self {
        StepError {
            message: message.to_string(),
            retryable: false,
        }
    }
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<String> for StepError {
    fn from(message: String) -> Self {
        StepError::retryable(message)
    }
}

impl From<&str> for StepError {
    fn from(message: &str) -> Self {
        StepError::retryable(message)
    }
}

impl From<Error> for StepError {
    fn from(e: Error) -> Self {
        StepError::retryable(e)
    }
}

/// What the running task asks its instance to record.
#[derive(Debug)]
pub(crate) enum StepOp {
    /// A `run` step finished: its result (JSON) or its final error.
    Complete(std::result::Result<String, String>),
    /// A `run` attempt failed and will be retried at `retry_at_ms`.
    Attempt {
        attempt: u32,
        error: String,
        delay_ms: i64,
        retry_at_ms: i64,
    },
    /// A sleep until `until_ms` (kept from the first time the step was reached).
    Sleep { until_ms: i64 },
    /// Waiting for an event.
    Wait {
        event_type: String,
        deadline_ms: i64,
    },
}

/// The instance's answer to a [`StepOp`].
#[derive(Debug)]
#[doc(hidden)]
pub enum StepReply {
    /// Go on (the step is recorded; a sleep is over).
    Proceed,
    /// Stop this run: the instance sleeps, waits, is paused, or the run is stale.
    Suspend,
    /// The awaited event's payload (JSON).
    Event(String),
    /// The wait timed out.
    Timeout,
    /// The journal disagrees with the code.
    Mismatch(Error),
}

#[derive(Debug)]
pub(crate) struct StepCall {
    pub generation: u64,
    pub index: u32,
    pub name: String,
    pub kind: StepKind,
    pub op: StepOp,
}

pub(crate) type Sink =
    Arc<dyn Fn(StepCall) -> BoxFuture<'static, Result<StepReply>> + Send + Sync + 'static>;

pub(crate) struct Inner {
    pub generation: u64,
    pub journal: Vec<StepInfo>,
    pub next: AtomicU32,
    pub sink: Sink,
    pub suspend: Notify,
    pub suspended: AtomicBool,
    pub runtime: Runtime,
}

/// Durable steps of one workflow run. Clone it freely; call its steps one after another (not
/// concurrently: a step's place in the journal is its order).
#[derive(Clone)]
#[allow(missing_debug_implementations)] // holds the run's channel to its instance
pub struct Step {
    pub(crate) inner: Arc<Inner>,
}

impl Step {
    /// The runtime, to reach other objects from inside a step.
    pub fn runtime(&self) -> &Runtime {
        &self.inner.runtime
    }

    fn begin(&self, name: &str, kind: StepKind) -> Result<(u32, Option<StepInfo>)> {
        let index = self.inner.next.fetch_add(1, Ordering::SeqCst);
        match self.inner.journal.get(index as usize) {
            Some(rec) if rec.name != name || rec.kind != kind => Err(Error::NonDeterministic {
                index,
                journaled: format!("{} `{}`", rec.kind.as_str(), rec.name),
                found: format!("{} `{name}`", kind.as_str()),
            }),
            other => Ok((index, other.cloned())),
        }
    }

    async fn call(&self, index: u32, name: &str, kind: StepKind, op: StepOp) -> Result<StepReply> {
        let reply = (self.inner.sink)(StepCall {
            generation: self.inner.generation,
            index,
            name: name.to_string(),
            kind,
            op,
        })
        .await?;
        match reply {
            StepReply::Suspend => self.suspend().await,
            StepReply::Mismatch(e) => Err(e),
            other => Ok(other),
        }
    }

    /// Ends this run here: the engine drops the workflow's future, so nothing after the
    /// suspension point runs in this process until the instance resumes and replays.
    async fn suspend<T>(&self) -> T {
        self.inner.suspended.store(true, Ordering::SeqCst);
        self.inner.suspend.notify_one();
        std::future::pending().await
    }

    /// Runs `f` as a durable step named `name`: its serde result is journaled, and a replay
    /// returns the journaled result without running `f` again. Failed attempts are retried as
    /// `config` says; a [`StepError::non_retryable`] fails the step at once. After the last
    /// attempt the step returns [`Error::StepFailed`].
    pub async fn run<T, F, Fut>(&self, name: &str, config: &StepConfig, mut f: F) -> Result<T>
    where
        T: Serialize + DeserializeOwned + Send,
        F: FnMut() -> Fut + Send,
        Fut: Future<Output = std::result::Result<T, StepError>> + Send,
    {
        let (index, rec) = self.begin(name, StepKind::Run)?;
        let mut attempts_done = 0;
        if let Some(rec) = rec {
            match rec.state {
                StepState::Complete => {
                    let json = rec.result.unwrap_or_else(|| "null".into());
                    return Ok(serde_json::from_str(&json)?);
                }
                StepState::Failed => {
                    return Err(Error::StepFailed {
                        step: name.to_string(),
                        message: rec.error.unwrap_or_default(),
                    });
                }
                _ => {
                    attempts_done = rec.attempts.len() as u32;
                    if let Some(at) = rec.next_attempt_ms {
                        let wait = at - now_ms();
                        if wait > 0 {
                            tokio::time::sleep(Duration::from_millis(wait as u64)).await;
                        }
                    }
                }
            }
        }
        loop {
            let attempt = attempts_done + 1;
            let outcome = match tokio::time::timeout(config.timeout, f()).await {
                Ok(r) => r,
                Err(_) => Err(StepError::retryable(format!(
                    "attempt {attempt} timed out after {:?}",
                    config.timeout
                ))),
            };
            match outcome {
                Ok(value) => {
                    let json = serde_json::to_string(&value)?;
                    self.call(index, name, StepKind::Run, StepOp::Complete(Ok(json)))
                        .await?;
                    return Ok(value);
                }
                Err(e) if !e.retryable || attempt > config.retries => {
                    self.call(
                        index,
                        name,
                        StepKind::Run,
                        StepOp::Complete(Err(e.message.clone())),
                    )
                    .await?;
                    return Err(Error::StepFailed {
                        step: name.to_string(),
                        message: e.message,
                    });
                }
                Err(e) => {
                    let delay = config.delay_before(attempt);
                    tracing::debug!(step = name, attempt, error = %e, ?delay, "step attempt failed");
                    let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2);
                    let retry_at_ms = now_ms().saturating_add(delay_ms);
                    self.call(
                        index,
                        name,
                        StepKind::Run,
                        StepOp::Attempt {
                            attempt,
                            error: e.message,
                            delay_ms,
                            retry_at_ms,
                        },
                    )
                    .await?;
                    // The instance answered Proceed: the delay is short enough to wait here.
                    tokio::time::sleep(delay).await;
                    attempts_done = attempt;
                }
            }
        }
    }

    /// Sleeps durably for `duration`, counted from the first time this step was reached. The
    /// instance is persisted and leaves memory; its alarm wakes it.
    pub async fn sleep(&self, name: &str, duration: Duration) -> Result<()> {
        let until_ms = now_ms() + i64::try_from(duration.as_millis()).unwrap_or(i64::MAX / 2);
        self.sleep_ms(name, until_ms).await
    }

    /// Sleeps durably until `at`.
    pub async fn sleep_until(&self, name: &str, at: SystemTime) -> Result<()> {
        self.sleep_ms(name, to_ms(at)).await
    }

    async fn sleep_ms(&self, name: &str, until_ms: i64) -> Result<()> {
        let (index, rec) = self.begin(name, StepKind::Sleep)?;
        if rec.as_ref().is_some_and(|r| r.state == StepState::Complete) {
            return Ok(());
        }
        let until_ms = rec.and_then(|r| r.wake_ms).unwrap_or(until_ms);
        self.call(index, name, StepKind::Sleep, StepOp::Sleep { until_ms })
            .await?;
        Ok(())
    }

    /// Waits for an event of `event_type` sent to this instance (events sent earlier count, each
    /// is delivered to one wait). Returns its payload, or [`Error::EventTimeout`] after
    /// `timeout`. The instance leaves memory while it waits.
    pub async fn wait_for_event<T: DeserializeOwned>(
        &self,
        name: &str,
        event_type: &str,
        timeout: Duration,
    ) -> Result<T> {
        let (index, rec) = self.begin(name, StepKind::Wait)?;
        let timed_out = || Error::EventTimeout {
            step: name.to_string(),
            event_type: event_type.to_string(),
        };
        let deadline_ms = match rec {
            Some(r) if r.state == StepState::Complete => {
                return Ok(serde_json::from_str(r.result.as_deref().unwrap_or("null"))?);
            }
            Some(r) if r.state == StepState::Failed => return Err(timed_out()),
            Some(r) => r.wake_ms.unwrap_or(0),
            None => now_ms() + i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX / 2),
        };
        let op = StepOp::Wait {
            event_type: event_type.to_string(),
            deadline_ms,
        };
        match self.call(index, name, StepKind::Wait, op).await? {
            StepReply::Event(json) => Ok(serde_json::from_str(&json)?),
            _ => Err(timed_out()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_as_configured() {
        let ms = |c: &StepConfig, n| c.delay_before(n).as_millis();
        let c = StepConfig::retries(5, Duration::from_millis(100), Backoff::Constant);
        assert_eq!((ms(&c, 1), ms(&c, 2), ms(&c, 5)), (100, 100, 100));
        let c = StepConfig::retries(5, Duration::from_millis(100), Backoff::Linear);
        assert_eq!((ms(&c, 1), ms(&c, 2), ms(&c, 5)), (100, 200, 500));
        let c = StepConfig::retries(5, Duration::from_millis(100), Backoff::Exponential);
        assert_eq!((ms(&c, 1), ms(&c, 2), ms(&c, 5)), (100, 200, 1600));
        // Huge attempt numbers saturate instead of overflowing.
        assert!(c.delay_before(u32::MAX) >= Duration::from_secs(3600));
    }

    #[test]
    fn step_errors_are_retryable_unless_said_otherwise() {
        assert!(StepError::from("flaky").retryable);
        assert!(!StepError::non_retryable("bad input").retryable);
    }
}
