//! Schedules and the queue: what the alarm runs, each task in its own transaction.

use denizen_runtime::{Error, Result};
use serde_json::Value;
use tracing::Instrument;

use super::{AgentHost, guarded};
use crate::agent::{Agent, Context};
use crate::context::take_server_change;
use crate::methods::Callable;
use crate::schedule::{self, BATCH, Retry, next_cron, now_ms};

impl<A: Agent> AgentHost<A> {
    /// Runs up to [`BATCH`] due queue items and schedules, each committed on its own.
    pub(super) async fn run_due(&mut self, cx: &mut Context<A>) -> Result<()> {
        let now = now_ms();
        let mut budget = BATCH;
        // The queue first, strictly in order: an item waiting for a retry holds the ones behind.
        let items: Vec<DueItem> = cx
            .storage()
            .exec(
                "SELECT id, callback, payload, attempts, not_before, retry
                 FROM cf_agents_queues ORDER BY seq LIMIT ?",
                (BATCH as i64,),
            )?
            .all()?;
        for DueItem {
            id,
            callback,
            payload,
            attempts,
            not_before,
            retry,
        } in items
        {
            if not_before > now {
                break;
            }
            // An earlier task of this batch may have dequeued it.
            if !row_exists(cx, "SELECT 1 FROM cf_agents_queues WHERE id = ?", &id, None)? {
                continue;
            }
            budget -= 1;
            let outcome = self.run_task(cx, &callback, &payload).await?;
            match outcome {
                Ok(()) => {
                    cx.storage()
                        .exec("DELETE FROM cf_agents_queues WHERE id = ?", (id.as_str(),))?;
                }
                Err(error) => {
                    let attempts = attempts + 1;
                    let retry = Retry::decode(retry.as_deref());
                    if attempts < i64::from(retry.max_attempts) {
                        tracing::warn!(task = %callback, attempts, %error, "queued task failed; retrying");
                        cx.storage().exec(
                            "UPDATE cf_agents_queues SET attempts = ?, last_error = ?, not_before = ? WHERE id = ?",
                            (attempts, error.as_str(), now_ms() + retry.delay_ms(attempts as u32), id.as_str()),
                        )?;
                        break;
                    }
                    tracing::error!(task = %callback, attempts, %error, "queued task failed every attempt; recorded in cf_agents_failures");
                    record_failure(cx, &id, "queue", &callback, &payload, &error, attempts)?;
                    cx.storage()
                        .exec("DELETE FROM cf_agents_queues WHERE id = ?", (id.as_str(),))?;
                }
            }
            cx.commit().await?;
        }
        let due: Vec<DueSchedule> = cx
            .storage()
            .exec(
                "SELECT id, callback, payload, type, cron, interval_ms, attempts, retry
                 FROM cf_agents_schedules WHERE time <= ? ORDER BY time, created_at, id LIMIT ?",
                (now, budget.max(1) as i64),
            )?
            .all()?;
        for DueSchedule {
            id,
            callback,
            payload,
            kind,
            cron,
            interval_ms,
            attempts,
            retry,
        } in due
        {
            // An earlier task of this batch may have cancelled or postponed it.
            let still_due = "SELECT 1 FROM cf_agents_schedules WHERE id = ? AND time <= ?";
            if !row_exists(cx, still_due, &id, Some(now))? {
                continue;
            }
            let outcome = self.run_task(cx, &callback, &payload).await?;
            // The schedule may have been cancelled (or replaced) by the task itself.
            if !row_exists(
                cx,
                "SELECT 1 FROM cf_agents_schedules WHERE id = ?",
                &id,
                None,
            )? {
                cx.commit().await?;
                continue;
            }
            let recurring_next = || -> Result<Option<i64>> {
                Ok(match (kind.as_str(), &cron, interval_ms) {
                    ("cron", Some(expr), _) => {
                        Some(next_cron(expr, now_ms()).map_err(Error::from)?)
                    }
                    ("interval", _, Some(ms)) => Some(now_ms() + ms),
                    _ => None,
                })
            };
            match outcome {
                Ok(()) => match recurring_next()? {
                    Some(next) => {
                        cx.storage().exec(
                            "UPDATE cf_agents_schedules SET time = ?, attempts = 0, last_error = NULL WHERE id = ?",
                            (next, id.as_str()),
                        )?;
                    }
                    None => {
                        cx.storage().exec(
                            "DELETE FROM cf_agents_schedules WHERE id = ?",
                            (id.as_str(),),
                        )?;
                    }
                },
                Err(error) => {
                    let attempts = attempts + 1;
                    let retry = Retry::decode(retry.as_deref());
                    if attempts < i64::from(retry.max_attempts) {
                        tracing::warn!(task = %callback, attempts, %error, "scheduled task failed; retrying");
                        cx.storage().exec(
                            "UPDATE cf_agents_schedules SET attempts = ?, last_error = ?, time = ? WHERE id = ?",
                            (attempts, error.as_str(), now_ms() + retry.delay_ms(attempts as u32), id.as_str()),
                        )?;
                    } else {
                        tracing::error!(task = %callback, attempts, %error, "scheduled task failed every attempt; recorded in cf_agents_failures");
                        record_failure(cx, &id, "schedule", &callback, &payload, &error, attempts)?;
                        match recurring_next()? {
                            Some(next) => {
                                cx.storage().exec(
                                    "UPDATE cf_agents_schedules SET time = ?, attempts = 0, last_error = ? WHERE id = ?",
                                    (next, error.as_str(), id.as_str()),
                                )?;
                            }
                            None => {
                                cx.storage().exec(
                                    "DELETE FROM cf_agents_schedules WHERE id = ?",
                                    (id.as_str(),),
                                )?;
                            }
                        }
                    }
                }
            }
            cx.commit().await?;
        }
        Ok(())
    }

    /// Runs one task in its own transaction: `Ok(Err(message))` when the task failed (its writes
    /// were rolled back), `Err` when the agent's storage itself failed.
    async fn run_task(
        &mut self,
        cx: &mut Context<A>,
        callback: &str,
        payload: &str,
    ) -> Result<std::result::Result<(), String>> {
        cx.commit().await?;
        let methods = self.methods.clone();
        let payload: Value = match serde_json::from_str(payload) {
            Ok(p) => p,
            Err(e) => return Ok(Err(format!("stored payload is not JSON: {e}"))),
        };
        let span = tracing::debug_span!("task", task = %callback);
        let run = match (methods.tasks.get(callback), methods.callables.get(callback)) {
            (Some(task), _) => task(&mut self.agent, cx, payload),
            (None, Some(Callable::Plain(f))) => {
                let args = match payload {
                    Value::Array(args) => args,
                    other => vec![other],
                };
                let fut = f(&mut self.agent, cx, args);
                Box::pin(async move { fut.await.map(drop) })
            }
            _ => {
                return Ok(Err(format!(
                    "no task `{callback}` is registered on this agent (was it renamed?)"
                )));
            }
        };
        let outcome = match guarded(run).instrument(span).await {
            Ok(()) => self.settle_state(cx).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => Ok(Ok(())),
            Err(e) => {
                cx.rollback()?;
                take_server_change();
                Ok(Err(e.to_string()))
            }
        }
    }
}

/// A schedule row due to run.
#[derive(serde::Deserialize)]
struct DueSchedule {
    id: String,
    callback: String,
    payload: String,
    #[serde(rename = "type")]
    kind: String,
    cron: Option<String>,
    interval_ms: Option<i64>,
    attempts: i64,
    retry: Option<String>,
}

/// A queue item.
#[derive(serde::Deserialize)]
struct DueItem {
    id: String,
    callback: String,
    payload: String,
    attempts: i64,
    not_before: i64,
    retry: Option<String>,
}

/// Whether `query` (one `id` parameter, then `time` if given) finds a row.
fn row_exists<A: Agent>(
    cx: &mut Context<A>,
    query: &str,
    id: &str,
    time: Option<i64>,
) -> Result<bool> {
    let found: Option<i64> = match time {
        Some(time) => cx.storage().exec(query, (id, time))?.first()?,
        None => cx.storage().exec(query, (id,))?.first()?,
    };
    Ok(found.is_some())
}

fn record_failure<A: Agent>(
    cx: &mut Context<A>,
    id: &str,
    kind: &str,
    callback: &str,
    payload: &str,
    error: &str,
    attempts: i64,
) -> Result<()> {
    cx.storage().exec(
        "INSERT INTO cf_agents_failures(id, kind, callback, payload, error, attempts, failed_at)
         VALUES (?, ?, ?, ?, ?, ?, ?)",
        (id, kind, callback, payload, error, attempts, now_ms()),
    )?;
    let keep = i64::try_from(schedule::MAX_FAILURES).unwrap_or(i64::MAX);
    cx.storage().exec(
        "DELETE FROM cf_agents_failures
         WHERE seq <= (SELECT max(seq) FROM cf_agents_failures) - ?",
        (keep,),
    )?;
    Ok(())
}
