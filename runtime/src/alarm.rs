//! The runtime-wide index of due alarms: one timer task for every object's alarm.
//!
//! The object's own database is the truth; the catalog row and this in-memory index are a
//! superset of it, written before the object commits, so a crash can cause a spurious wake-up
//! (which the object ignores) but never a lost alarm.
//!
//! A hibernated object needs its database opened before its alarm handler can run, so objects are
//! woken [`WARM_LEAD_MS`] ahead of their alarm while there is room under the open-object bound;
//! the alarm itself is still delivered at its time.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::runtime::Shared;
use crate::time::{now_ms, until_ms as until};

type Key = (Arc<str>, [u8; 32]);

/// How long before its alarm a hibernated object is woken.
pub(crate) const WARM_LEAD_MS: i64 = 500;

pub(crate) enum Op {
    Set {
        key: Key,
        at_ms: i64,
        retry_count: u32,
    },
    Delete {
        key: Key,
    },
}

pub(crate) fn key(namespace: &str, id: [u8; 32]) -> Key {
    (namespace.into(), id)
}

/// How close together alarms must be for [`run`] to poll for them instead of sleeping.
const DENSE: Duration = Duration::from_millis(2);

pub(crate) async fn run(shared: Weak<Shared>, mut ops: mpsc::UnboundedReceiver<Op>) {
    let mut index = Index::default();
    // Under load tokio looks at its timers only every few dozen task polls, which made alarms
    // milliseconds late. Once a timer wake-up is late and more alarms are due within `DENSE`,
    // the loop polls again behind the tasks already queued instead, until alarms thin out.
    let mut polling = false;
    loop {
        let wait = index.next_wake().map(until);
        polling = polling && wait.is_some_and(|w| w <= DENSE);
        let fire = tokio::select! {
            op = ops.recv() => {
                let Some(op) = op else { break };
                index.apply(op);
                // Drain a burst of updates before looking at the clock again.
                while let Ok(op) = ops.try_recv() {
                    index.apply(op);
                }
                false
            }
            _ = tokio::task::yield_now(), if polling => true,
            _ = tokio::time::sleep(wait.unwrap_or(DENSE)), if wait.is_some() && !polling => true,
        };
        let now = now_ms();
        if !fire && !index.has_work(now) {
            continue;
        }
        let Some(shared) = shared.upgrade() else {
            break;
        };
        if let Some(first) = index.first_due(now) {
            polling = now - first >= 1;
        }
        while let Some((at_ms, key, retry_count)) = index.pop_due(now) {
            shared.deliver_alarm(&key.0, key.1, at_ms, retry_count);
        }
        while let Some(key) = index.pop_warm(now) {
            shared.warm_for_alarm(&key.0, key.1);
        }
    }
}

/// Pending alarms by time and by object, and the ones whose object has not been woken yet.
#[derive(Default)]
struct Index {
    by_time: BTreeMap<(i64, Key), u32>,
    by_key: HashMap<Key, i64>,
    unwarmed: BTreeSet<(i64, Key)>,
}

impl Index {
    fn next_wake(&self) -> Option<i64> {
        let due = self.by_time.keys().next().map(|(at, _)| *at);
        let warm = self.unwarmed.first().map(|(at, _)| at - WARM_LEAD_MS);
        match (due, warm) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether an alarm is due or an object should be warmed at `now`.
    fn has_work(&self, now: i64) -> bool {
        self.next_wake().is_some_and(|at| at <= now)
    }

    /// The time of the earliest alarm due at `now`.
    fn first_due(&self, now: i64) -> Option<i64> {
        self.by_time
            .keys()
            .next()
            .map(|(at, _)| *at)
            .filter(|at| *at <= now)
    }

    fn pop_due(&mut self, now: i64) -> Option<(i64, Key, u32)> {
        let entry = self.by_time.first_entry()?;
        if entry.key().0 > now {
            return None;
        }
        let ((at_ms, key), retry_count) = entry.remove_entry();
        self.by_key.remove(&key);
        self.unwarmed.remove(&(at_ms, key.clone()));
        Some((at_ms, key, retry_count))
    }

    fn pop_warm(&mut self, now: i64) -> Option<Key> {
        let (at_ms, _) = self.unwarmed.first()?;
        if at_ms - WARM_LEAD_MS > now {
            return None;
        }
        self.unwarmed.pop_first().map(|(_, key)| key)
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Set {
                key,
                at_ms,
                retry_count,
            } => {
                self.remove(&key);
                self.by_key.insert(key.clone(), at_ms);
                self.unwarmed.insert((at_ms, key.clone()));
                self.by_time.insert((at_ms, key), retry_count);
            }
            Op::Delete { key } => self.remove(&key),
        }
    }

    fn remove(&mut self, key: &Key) {
        if let Some(old) = self.by_key.remove(key) {
            let entry = (old, key.clone());
            self.by_time.remove(&entry);
            self.unwarmed.remove(&entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    fn set(index: &mut Index, n: u8, at_ms: i64) {
        index.apply(Op::Set {
            key: key("ns", [n; 32]),
            at_ms,
            retry_count: 0,
        });
    }

    #[test]
    fn objects_are_warmed_ahead_and_alarms_fire_at_their_time() {
        let mut index = Index::default();
        set(&mut index, 1, 10_000);
        set(&mut index, 2, 20_000);
        assert_eq!(index.next_wake(), Some(10_000 - WARM_LEAD_MS));
        assert!(index.pop_warm(10_000 - WARM_LEAD_MS - 1).is_none());
        assert_eq!(
            index.pop_warm(10_000 - WARM_LEAD_MS),
            Some(key("ns", [1; 32]))
        );
        assert!(index.pop_warm(10_000 - WARM_LEAD_MS).is_none());
        assert_eq!(index.next_wake(), Some(10_000));
        assert!(index.pop_due(9_999).is_none());
        let (at, k, _) = index.pop_due(10_000).unwrap();
        assert_eq!((at, k), (10_000, key("ns", [1; 32])));
        assert_eq!(index.next_wake(), Some(20_000 - WARM_LEAD_MS));
    }

    #[test]
    fn moving_or_deleting_an_alarm_replaces_it_everywhere() {
        let mut index = Index::default();
        set(&mut index, 1, 10_000);
        set(&mut index, 1, 30_000);
        assert_eq!(index.by_time.len(), 1);
        assert_eq!(index.unwarmed.len(), 1);
        assert_eq!(index.next_wake(), Some(30_000 - WARM_LEAD_MS));
        index.apply(Op::Delete {
            key: key("ns", [1; 32]),
        });
        assert_eq!(index.next_wake(), None);
        assert!(index.unwarmed.is_empty());
    }

    #[test]
    fn work_is_due_when_an_alarm_or_a_warm_up_is() {
        let mut index = Index::default();
        assert!(!index.has_work(i64::MAX));
        set(&mut index, 1, 10_000);
        assert!(!index.has_work(10_000 - WARM_LEAD_MS - 1));
        assert!(index.has_work(10_000 - WARM_LEAD_MS));
        assert_eq!(index.first_due(9_999), None);
        assert!(index.pop_warm(10_000).is_some());
        assert!(!index.has_work(9_999));
        assert_eq!(index.first_due(10_003), Some(10_000));
        assert!(index.has_work(10_000));
    }

    #[test]
    fn a_wait_never_runs_past_its_millisecond() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        // Counting from the current millisecond would wait the full 5 ms past `now`.
        let at = i64::try_from(now.as_millis()).unwrap_or(i64::MAX) + 5;
        assert!(
            until(at)
                <= Duration::from_millis(5) - (now - Duration::from_millis(now.as_millis() as u64))
        );
        assert_eq!(until(0), Duration::ZERO);
    }

    #[test]
    fn an_alarm_that_fires_unwarmed_leaves_nothing_behind() {
        let mut index = Index::default();
        set(&mut index, 1, 10_000);
        assert!(index.pop_due(10_000).is_some());
        assert!(index.unwarmed.is_empty());
        assert_eq!(index.next_wake(), None);
    }
}
