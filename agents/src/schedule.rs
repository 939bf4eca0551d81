//! Schedules and the queue, multiplexed onto the object's one alarm.
//!
//! Both live in the agent's own SQLite file, so they survive hibernation, restarts and crashes.
//! After every change the alarm is set to the earliest due item (or deleted when there is
//! none), and `on_start` does the same, so a wake never loses one. A queued item makes the alarm
//! due at once: the queue runs as the next event after the current one, in insertion order.

use std::str::FromStr;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use denizen_runtime::retry::RetryPolicy;

use crate::error::{Error, Result};

/// A recurring interval is at most this long (as in the Agents SDK).
pub const MAX_INTERVAL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Failure records kept per agent (`cf_agents_failures`): the oldest go first, so a task that
/// keeps failing cannot grow the agent's database without end.
pub const MAX_FAILURES: usize = 1_000;
/// Tasks handled per alarm before the agent lets other events in (the rest run right after).
pub(crate) const BATCH: usize = 64;

/// When a schedule runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum When {
    /// Once, after this delay.
    Delay(Duration),
    /// Once, at this time.
    At(SystemTime),
    /// At every occurrence of a cron expression (UTC): five fields (`min hour dom mon dow`) or
    /// six with seconds first.
    Cron(String),
}

impl From<Duration> for When {
    fn from(d: Duration) -> Self {
        When::Delay(d)
    }
}
impl From<SystemTime> for When {
    fn from(t: SystemTime) -> Self {
        When::At(t)
    }
}
impl From<&str> for When {
    fn from(cron: &str) -> Self {
        When::Cron(cron.to_string())
    }
}
impl From<String> for When {
    fn from(cron: String) -> Self {
        When::Cron(cron)
    }
}

/// How a failing task is retried before it is recorded as a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retry {
    /// Runs in all, the first included.
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for Retry {
    /// As in the Agents SDK: 3 attempts, 100 ms doubling up to 3 s.
    fn default() -> Self {
        Retry {
            max_attempts: 3,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(3),
        }
    }
}

impl Retry {
    /// The stored form (a JSON column), `None` for the default.
    pub(crate) fn encode(retry: Option<Retry>) -> Option<String> {
        retry.and_then(|r| serde_json::to_string(&r).ok())
    }

    /// Reads the stored form; anything unreadable means the default.
    pub(crate) fn decode(stored: Option<&str>) -> Retry {
        stored
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default()
    }

    /// After `attempts` failed runs, the jittered delay in milliseconds before the next one.
    pub(crate) fn delay_ms(&self, attempts: u32) -> i64 {
        let delay = RetryPolicy::from(*self).jittered_delay(attempts);
        i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)
    }
}

impl From<Retry> for RetryPolicy {
    /// `base_delay` doubling up to `max_delay`, ±20 % jitter so many agents failing together do
    /// not retry together.
    fn from(r: Retry) -> Self {
        RetryPolicy::exponential(r.base_delay, 2.0)
            .with_max_delay(r.max_delay)
            .with_max_attempts(r.max_attempts)
            .with_jitter(0.2)
    }
}

/// Options of [`AgentContext::schedule_with`](crate::AgentContext::schedule_with).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScheduleOptions {
    /// Reuse an existing schedule with the same task, timing kind and payload instead of adding
    /// one. Cron schedules and `schedule_every` are always idempotent.
    pub idempotent: bool,
    /// How a failing run is retried; [`Retry::default`] when `None`.
    pub retry: Option<Retry>,
}

/// The kind of a schedule, as in the Agents SDK.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ScheduleKind {
    Scheduled,
    Delayed { delay_ms: i64 },
    Cron { cron: String },
    Interval { interval_ms: i64 },
}

/// A pending schedule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    pub id: String,
    /// The task it runs.
    pub callback: String,
    pub payload: Value,
    #[serde(flatten)]
    pub kind: ScheduleKind,
    /// Next run, epoch milliseconds.
    pub time: i64,
    /// Failed runs of the current occurrence (retries pending).
    pub attempts: u32,
    pub last_error: Option<String>,
}

/// A queued task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueItem {
    pub id: String,
    pub callback: String,
    pub payload: Value,
    pub attempts: u32,
    pub last_error: Option<String>,
}

/// A task that failed all its attempts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// The schedule's or queue item's id.
    pub id: String,
    /// `schedule` or `queue`.
    pub kind: String,
    pub callback: String,
    pub payload: Value,
    pub error: String,
    pub attempts: u32,
    pub failed_at: i64,
}

pub(crate) use denizen_runtime::time::{from_ms, now_ms, to_ms};

pub(crate) fn new_id() -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut rng = rand::rng();
    (0..12)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Parses a cron expression (five fields, or six/seven with seconds first).
pub(crate) fn parse_cron(expression: &str) -> Result<cron::Schedule> {
    let fields = expression.split_whitespace().count();
    let full = if fields == 5 {
        format!("0 {expression}")
    } else {
        expression.to_string()
    };
    cron::Schedule::from_str(&full).map_err(|e| Error::InvalidCron {
        expression: expression.to_string(),
        reason: e.to_string(),
    })
}

/// The first occurrence strictly after `after_ms`.
pub(crate) fn next_cron(expression: &str, after_ms: i64) -> Result<i64> {
    let schedule = parse_cron(expression)?;
    let after: DateTime<Utc> =
        DateTime::from_timestamp_millis(after_ms).unwrap_or(DateTime::UNIX_EPOCH);
    schedule
        .after(&after)
        .next()
        .map(|t| t.timestamp_millis())
        .ok_or_else(|| Error::CronExhausted(expression.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_field_cron_runs_on_the_minute() {
        let t = next_cron("*/5 * * * *", 0).unwrap();
        assert_eq!(t, 5 * 60 * 1000);
        let t = next_cron("* * * * * *", 1500).unwrap();
        assert_eq!(t, 2000);
        assert!(matches!(
            next_cron("not cron", 0),
            Err(Error::InvalidCron { .. })
        ));
    }

    #[test]
    fn retry_delays_grow_and_are_capped() {
        let r = Retry::default();
        assert!(r.delay_ms(1) <= 120);
        assert!(r.delay_ms(10) <= 3600);
        assert!(r.delay_ms(10) >= 2400);
    }
}
