//! The runtime-wide index of due alarms: one timer task for every object's alarm.
//!
//! The object's own database is the truth; the catalog row and this in-memory index are a
//! superset of it, written before the object commits, so a crash can cause a spurious wake-up
//! (which the object ignores) but never a lost alarm.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::ctx::now_ms;
use crate::runtime::Shared;

type Key = (Arc<str>, [u8; 32]);

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

pub(crate) async fn run(shared: Weak<Shared>, mut ops: mpsc::UnboundedReceiver<Op>) {
    let mut by_time: BTreeMap<(i64, Key), u32> = BTreeMap::new();
    let mut by_key: HashMap<Key, i64> = HashMap::new();
    loop {
        let next = by_time.keys().next().map(|(at, _)| *at);
        let wait = next.map(|at| Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0)));
        tokio::select! {
            op = ops.recv() => {
                let Some(op) = op else { break };
                apply(op, &mut by_time, &mut by_key);
                // Drain a burst of updates before looking at the clock again.
                while let Ok(op) = ops.try_recv() {
                    apply(op, &mut by_time, &mut by_key);
                }
            }
            _ = tokio::time::sleep(wait.unwrap_or(Duration::from_secs(3600))), if wait.is_some() => {
                let Some(shared) = shared.upgrade() else { break };
                let now = now_ms();
                while let Some(entry) = by_time.first_entry() {
                    if entry.key().0 > now {
                        break;
                    }
                    let ((at_ms, key), retry_count) = entry.remove_entry();
                    by_key.remove(&key);
                    shared.deliver_alarm(&key.0, key.1, at_ms, retry_count);
                }
            }
        }
    }
}

fn apply(op: Op, by_time: &mut BTreeMap<(i64, Key), u32>, by_key: &mut HashMap<Key, i64>) {
    match op {
        Op::Set {
            key,
            at_ms,
            retry_count,
        } => {
            if let Some(old) = by_key.insert(key.clone(), at_ms) {
                by_time.remove(&(old, key.clone()));
            }
            by_time.insert((at_ms, key), retry_count);
        }
        Op::Delete { key } => {
            if let Some(old) = by_key.remove(&key) {
                by_time.remove(&(old, key));
            }
        }
    }
}
