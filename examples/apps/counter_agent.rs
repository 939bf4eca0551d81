//! `counter-agent`: the Agents SDK counter, served at `/agents/counter-agent/<name>` for the
//! official JavaScript client (`new AgentClient({ agent: "CounterAgent", name, host })`).
//!
//! - state `{ "count": number }`, synced to every client; clients may set it (a negative count is
//!   refused by `validate_state_change`);
//! - `increment(n)` adds `n`, saves, broadcasts and returns the new count;
//! - `count_to(n)` streams `1..=n` and ends with `{ "count": <current count> }`;
//! - `fail(message)` always fails (to see RPC errors); `remind(seconds, note)` and
//!   `remind_cron(expression, note)` schedule the `remind` task, which records the note;
//!   `reminders()`, `schedules()`, `cancel(id)`, `enqueue(notes)`, `log()`, `ticks()` and
//!   `failures()` show what the schedules and the queue did;
//! - a `tick` task runs every `TICK_EVERY` (declared idempotently in `on_start`, so waking never
//!   adds a second one) and counts in SQL, not in the state, so ticks do not disturb clients.
//! - `GET /agents/counter-agent/<name>` answers `{ "count": N }`.

use std::time::Duration;

use denizen::agent::{
    Agent, AgentContext, Context, Failure, Methods, Schedule, Source, StreamingResponse,
};
use denizen::http::StatusCode;
use denizen::time::now_ms;
use denizen::{Error, Request, Response, Result, http_util};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// How often the `tick` task runs.
pub(crate) const TICK_EVERY: Duration = Duration::from_secs(60);

/// An agent with a synchronized count, callables and schedules.
#[derive(Debug, Default)]
pub(crate) struct CounterAgent;

/// The state every client sees.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct CounterState {
    /// The count.
    pub(crate) count: i64,
}

/// A scheduled reminder's payload.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Reminder {
    /// What to remind of.
    pub(crate) note: String,
    /// When it was asked for, in ms since the Unix epoch.
    pub(crate) at: i64,
}

impl CounterAgent {
    async fn increment(&mut self, cx: &mut Context<Self>, n: i64) -> Result<i64> {
        let mut state = cx.state()?;
        state.count = state
            .count
            .checked_add(n)
            .ok_or_else(|| Error::msg("the count would overflow"))?;
        cx.set_state(&state)?;
        Ok(state.count)
    }

    async fn count_to(
        &mut self,
        cx: &mut Context<Self>,
        stream: StreamingResponse,
        n: u32,
    ) -> Result<()> {
        if n > 1000 {
            return Err(Error::msg("count_to streams at most 1000 numbers"));
        }
        for i in 1..=n {
            stream.send(cx, i).await?;
        }
        let count = cx.state()?.count;
        stream.end(cx, json!({ "count": count }))
    }

    async fn remind(
        &mut self,
        cx: &mut Context<Self>,
        seconds: f64,
        note: String,
    ) -> Result<Schedule> {
        if !(0.0..=30.0 * 86400.0).contains(&seconds) {
            return Err(Error::msg("seconds must be between 0 and 30 days"));
        }
        Ok(cx.schedule(Duration::from_secs_f64(seconds), "remind", &note)?)
    }

    async fn remind_cron(
        &mut self,
        cx: &mut Context<Self>,
        expression: String,
        note: String,
    ) -> Result<Schedule> {
        Ok(cx.schedule(expression.as_str(), "remind", &note)?)
    }

    async fn record_reminder(&mut self, cx: &mut Context<Self>, note: String) -> Result<()> {
        if note.starts_with("fail") {
            return Err(Error::msg(format!("reminder `{note}` fails on purpose")));
        }
        cx.sql(
            "INSERT INTO reminders(note, at) VALUES (?, ?)",
            (note.as_str(), now_ms()),
        )?;
        cx.broadcast_json(&json!({ "type": "reminder", "note": note }), &[])?;
        Ok(())
    }

    async fn reminders(&mut self, cx: &mut Context<Self>) -> Result<Vec<Reminder>> {
        Ok(cx
            .sql("SELECT note, at FROM reminders ORDER BY id", ())?
            .all()?)
    }

    async fn enqueue(&mut self, cx: &mut Context<Self>, notes: Vec<String>) -> Result<Vec<String>> {
        let mut ids = Vec::with_capacity(notes.len());
        for note in notes {
            ids.push(cx.queue("log", &note)?);
        }
        Ok(ids)
    }

    async fn append_log(&mut self, cx: &mut Context<Self>, note: String) -> Result<()> {
        cx.sql("INSERT INTO log(note) VALUES (?)", (note.as_str(),))?;
        Ok(())
    }

    async fn log(&mut self, cx: &mut Context<Self>) -> Result<Vec<String>> {
        Ok(cx.sql("SELECT note FROM log ORDER BY id", ())?.all()?)
    }

    async fn tick(&mut self, cx: &mut Context<Self>) -> Result<()> {
        cx.sql(
            "INSERT INTO ticks(id, n) VALUES (1, 1) ON CONFLICT(id) DO UPDATE SET n = n + 1",
            (),
        )?;
        Ok(())
    }

    async fn ticks(&mut self, cx: &mut Context<Self>) -> Result<i64> {
        Ok(cx.sql("SELECT n FROM ticks", ())?.first()?.unwrap_or(0))
    }
}

impl Agent for CounterAgent {
    type State = CounterState;

    fn initial_state(&self) -> CounterState {
        CounterState { count: 0 }
    }

    fn methods(m: &mut Methods<Self>) {
        m.callable("increment", |a, cx, (n,): (i64,)| {
            Box::pin(a.increment(cx, n))
        });
        m.streaming("count_to", |a, cx, s, (n,): (u32,)| {
            Box::pin(a.count_to(cx, s, n))
        });
        m.callable("fail", |_, _, (message,): (String,)| {
            Box::pin(async move { Err::<(), _>(Error::msg(message)) })
        });
        m.callable("remind", |a, cx, (s, note): (f64, String)| {
            Box::pin(a.remind(cx, s, note))
        });
        m.callable("remind_cron", |a, cx, (e, note): (String, String)| {
            Box::pin(a.remind_cron(cx, e, note))
        });
        m.callable("reminders", |a, cx, (): ()| Box::pin(a.reminders(cx)));
        m.callable("schedules", |_, cx, (): ()| {
            Box::pin(async move { Ok(cx.list_schedules()?) })
        });
        m.callable("cancel", |_, cx, (id,): (String,)| {
            Box::pin(async move { Ok(cx.cancel_schedule(&id)?) })
        });
        m.callable("enqueue", |a, cx, (notes,): (Vec<String>,)| {
            Box::pin(a.enqueue(cx, notes))
        });
        m.callable("log", |a, cx, (): ()| Box::pin(a.log(cx)));
        m.callable("ticks", |a, cx, (): ()| Box::pin(a.ticks(cx)));
        m.callable("failures", |_, cx, (): ()| {
            Box::pin(async move { Ok::<Vec<Failure>, Error>(cx.failures()?) })
        });
        m.task("remind", |a, cx, note: String| {
            Box::pin(a.record_reminder(cx, note))
        });
        m.task("log", |a, cx, note: String| {
            Box::pin(a.append_log(cx, note))
        });
        m.task("tick", |a, cx, (): ()| Box::pin(a.tick(cx)));
    }

    async fn on_start(&mut self, cx: &mut Context<Self>) -> Result<()> {
        cx.sql(
            "CREATE TABLE IF NOT EXISTS reminders(id INTEGER PRIMARY KEY AUTOINCREMENT, note TEXT NOT NULL, at INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS log(id INTEGER PRIMARY KEY AUTOINCREMENT, note TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS ticks(id INTEGER PRIMARY KEY CHECK (id = 1), n INTEGER NOT NULL)",
            (),
        )?;
        cx.schedule_every(TICK_EVERY, "tick", &())?;
        Ok(())
    }

    async fn on_request(&mut self, cx: &mut Context<Self>, _req: Request) -> Result<Response> {
        let count = cx.state()?.count;
        Ok(http_util::json(StatusCode::OK, &json!({ "count": count })))
    }

    fn validate_state_change(&mut self, next: &CounterState, _source: &Source) -> Result<()> {
        if next.count < 0 {
            return Err(Error::msg("the count cannot be negative"));
        }
        Ok(())
    }
}
