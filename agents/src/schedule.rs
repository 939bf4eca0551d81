//! Schedules and the queue, multiplexed onto the object's one alarm.
//!
//! Both live in the agent's own SQLite file, so they survive hibernation, restarts and crashes.
//! After every change the alarm is set to the earliest due item (or deleted when there is
//! none), and `on_start` does the same, so a wake never loses one. A queued item makes the alarm
//! due at once: the queue runs as the next event after the current one, in insertion order.

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
    /// At every occurrence of a cron expression (UTC), read as Unix cron: five fields
    /// (`min hour dom mon dow`) or six with seconds first; Sunday is 0 or 7; month and day names;
    /// a day matching either day field when both are restricted.
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
    /// The delay before the first retry; it doubles for each one after.
    pub base_delay: Duration,
    /// The longest delay between two attempts.
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
    /// Once, at a time.
    Scheduled,
    /// Once, after a delay.
    Delayed {
        /// The delay it was scheduled with.
        delay_ms: i64,
    },
    /// At every occurrence of a cron expression.
    Cron {
        /// The expression.
        cron: String,
    },
    /// Every interval.
    Interval {
        /// The interval.
        interval_ms: i64,
    },
}

/// A pending schedule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// Its id, for `get_schedule` and `cancel_schedule`.
    pub id: String,
    /// The task it runs.
    pub callback: String,
    /// The task's payload.
    pub payload: Value,
    /// When it runs.
    #[serde(flatten)]
    pub kind: ScheduleKind,
    /// Next run, epoch milliseconds.
    pub time: i64,
    /// Failed runs of the current occurrence (retries pending).
    pub attempts: u32,
    /// The error of the last failed run, if any.
    pub last_error: Option<String>,
}

/// A queued task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueItem {
    /// Its id, for `dequeue`.
    pub id: String,
    /// The task it runs.
    pub callback: String,
    /// The task's payload.
    pub payload: Value,
    /// Failed runs so far (retries pending).
    pub attempts: u32,
    /// The error of the last failed run, if any.
    pub last_error: Option<String>,
}

/// A task that failed all its attempts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// The schedule's or queue item's id.
    pub id: String,
    /// `schedule` or `queue`.
    pub kind: String,
    /// The task that failed.
    pub callback: String,
    /// Its payload.
    pub payload: Value,
    /// The error of its last attempt.
    pub error: String,
    /// Runs in all.
    pub attempts: u32,
    /// When the last attempt failed, epoch milliseconds.
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

/// Parses a cron expression as Unix (Vixie) cron does: five fields `min hour dom mon dow`, or
/// six with seconds first, or `@daily` and its kin; Sunday is 0 or 7; month and day
/// names (`JAN`, `MON-FRI`); and when both day fields are restricted a day matching either runs
/// (`0 0 13 * 5`: the 13th and every Friday).
pub(crate) fn parse_cron(expression: &str) -> Result<croner::Cron> {
    croner::Cron::new(expression)
        .with_seconds_optional()
        .parse()
        .map_err(|e| Error::InvalidCron {
            expression: expression.to_string(),
            reason: e.to_string(),
        })
}

/// The first occurrence strictly after `after_ms` (UTC).
pub(crate) fn next_cron(expression: &str, after_ms: i64) -> Result<i64> {
    let schedule = parse_cron(expression)?;
    let after: DateTime<Utc> =
        DateTime::from_timestamp_millis(after_ms).unwrap_or(DateTime::UNIX_EPOCH);
    schedule
        .find_next_occurrence(&after, false)
        .map(|t| t.timestamp_millis())
        .map_err(|_| Error::CronExhausted(expression.to_string()))
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
        assert_eq!(next_cron("@daily", 0).unwrap(), 86_400_000);
        assert!(matches!(
            next_cron("not cron", 0),
            Err(Error::InvalidCron { .. })
        ));
    }

    /// Milliseconds of a UTC time written `2026-12-07T09:00:00`.
    fn at(text: &str) -> i64 {
        DateTime::parse_from_rfc3339(&format!("{text}Z"))
            .unwrap()
            .timestamp_millis()
    }

    /// The next `n` occurrences after `from`, as times.
    fn next_n(expression: &str, from: &str, n: usize) -> Vec<String> {
        let mut after = at(from);
        (0..n)
            .map(|_| {
                after = next_cron(expression, after).unwrap();
                DateTime::from_timestamp_millis(after)
                    .unwrap()
                    .format("%Y-%m-%dT%H:%M:%S %a")
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn cron_reads_days_as_unix_cron_does() {
        // 2026-12-02 is a Wednesday. Weekday 1 is Monday, not Sunday.
        assert_eq!(
            next_n("0 9 * * 1", "2026-12-02T00:00:00", 2),
            ["2026-12-07T09:00:00 Mon", "2026-12-14T09:00:00 Mon"]
        );
        // Sunday is 0 or 7, and a name does too.
        for sunday in ["0 12 * * 0", "0 12 * * 7", "0 12 * * sun", "0 12 * * SUN"] {
            assert_eq!(
                next_n(sunday, "2026-12-02T00:00:00", 1),
                ["2026-12-06T12:00:00 Sun"],
                "{sunday}"
            );
        }
        assert_eq!(
            next_n("* * * * 0", "2026-12-02T00:00:00", 1),
            ["2026-12-06T00:00:00 Sun"]
        );
        // Both day fields restricted: either matches (the 13th, and every Friday).
        assert_eq!(
            next_n("0 0 13 * 5", "2026-12-02T00:00:00", 4),
            [
                "2026-12-04T00:00:00 Fri",
                "2026-12-11T00:00:00 Fri",
                "2026-12-13T00:00:00 Sun",
                "2026-12-18T00:00:00 Fri"
            ]
        );
        // Names and ranges of months and days.
        assert_eq!(
            next_n("30 8 * JAN-MAR MON-FRI", "2026-12-02T00:00:00", 2),
            ["2027-01-01T08:30:00 Fri", "2027-01-04T08:30:00 Mon"]
        );
        // Six fields: seconds first, the days as in five.
        assert_eq!(
            next_n("15 0 9 * * 1", "2026-12-02T00:00:00", 1),
            ["2026-12-07T09:00:15 Mon"]
        );
    }

    #[test]
    fn bad_cron_expressions_are_refused_clearly() {
        for bad in [
            "61 * * * *",
            "* * * *",
            "* * 32 * *",
            "* * * 13 *",
            "* * * * 8",
            "",
        ] {
            let err = next_cron(bad, 0).unwrap_err();
            assert!(matches!(err, Error::InvalidCron { .. }), "{bad}: {err}");
            assert!(err.to_string().contains("five fields"), "{err}");
        }
        // Valid, but never due: February 30th.
        assert!(matches!(
            next_cron("0 0 30 2 *", 0),
            Err(Error::CronExhausted(_))
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
