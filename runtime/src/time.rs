//! Wall-clock time as Denizen stores it: milliseconds since the Unix epoch in an `i64`.
//!
//! Alarms, schedules, workflow journals and catalog rows all keep times in this form, so there is
//! one conversion and one rule for times before 1970: they are negative, and
//! `from_ms(to_ms(t))` gives `t` back to the millisecond either side of the epoch.
//!
//! ```
//! use std::time::{Duration, UNIX_EPOCH};
//! use denizen_runtime::time;
//!
//! let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
//! assert_eq!(time::to_ms(t), 1_700_000_000_123);
//! assert_eq!(time::from_ms(time::to_ms(t)), t);
//! assert_eq!(time::to_ms(UNIX_EPOCH - Duration::from_secs(1)), -1000);
//! assert_eq!(time::until(UNIX_EPOCH), Duration::ZERO); // already past
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, in milliseconds since the epoch.
pub fn now_ms() -> i64 {
    to_ms(SystemTime::now())
}

/// `t` in milliseconds since the epoch; negative before it, saturating at `i64`'s ends.
pub fn to_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

/// The time `ms` milliseconds after the epoch (before it when negative).
pub fn from_ms(ms: i64) -> SystemTime {
    let d = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        UNIX_EPOCH.checked_add(d)
    } else {
        UNIX_EPOCH.checked_sub(d)
    }
    .unwrap_or(UNIX_EPOCH)
}

/// How long until `at`; zero when it has passed.
pub fn until(at: SystemTime) -> Duration {
    at.duration_since(SystemTime::now()).unwrap_or_default()
}

/// How long until the epoch time `at_ms`, to the microsecond (counting from the current
/// millisecond would add up to a millisecond to every wait); zero when it has passed.
pub fn until_ms(at_ms: i64) -> Duration {
    until(from_ms(at_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_on_both_sides_of_the_epoch() {
        for ms in [0, 1, -1, 1_795_000_000_000, -86_400_000] {
            assert_eq!(to_ms(from_ms(ms)), ms);
        }
        assert!(now_ms() > 1_700_000_000_000);
        assert_eq!(until_ms(0), Duration::ZERO);
        assert!(until_ms(now_ms() + 60_000) > Duration::from_secs(50));
    }
}
