//! The agent operations on the hosting object's context: state, connections, schedules, queue.

use std::any::{Any, TypeId};
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use denizen_runtime::storage::Params;
use denizen_runtime::{Cursor, Response, Value as SqlValue, WebSocket};
use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::agent::{Agent, Connection, Context};
use crate::error::{Error, Result};
use crate::methods::Methods;
use crate::protocol;
use crate::schedule::{
    Failure, MAX_INTERVAL, QueueItem, Retry, Schedule, ScheduleKind, ScheduleOptions, When,
    from_ms, new_id, next_cron, now_ms, to_ms,
};

pub(crate) const STATE_ROW: &str = "cf_state_row_id";

/// Largest agent state, in bytes of JSON. Every client gets the whole state in one frame on
/// connect and on every change, so a state near the gateway's per-socket send backlog (16 MiB by
/// default) would close every connection with 1008; this keeps it far below. A bigger state is
/// refused: `set_state` returns [`Error::StateTooLarge`], a client gets `cf_agent_state_error`.
/// Keep large data in the agent's own tables (`cx.sql`) and only a summary in the state.
pub const MAX_STATE_BYTES: usize = 1 << 20;

tokio::task_local! {
    /// Set by `set_state` while the host runs an agent handler, so the host validates the
    /// server's change and calls `on_state_changed` when the handler returns (the handler holds
    /// the agent, so `set_state` cannot call it).
    static SERVER_CHANGE: Cell<bool>;
}

/// Runs one host event with server state changes tracked (see [`take_server_change`]).
pub(crate) async fn tracking_state<F: Future>(fut: F) -> F::Output {
    SERVER_CHANGE.scope(Cell::new(false), fut).await
}

/// Whether `set_state` ran since the last call (in this event), clearing the mark.
pub(crate) fn take_server_change() -> bool {
    SERVER_CHANGE
        .try_with(|c| c.replace(false))
        .unwrap_or(false)
}

/// What the agents layer keeps in a socket's attachment (it survives hibernation).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ConnMeta {
    pub id: String,
    pub readonly: bool,
    pub protocol: bool,
    /// Per-connection state set by the agent.
    pub state: Option<Value>,
    /// Refused by `on_connect` and closing: its frames are ignored.
    #[serde(default)]
    pub refused: bool,
}

impl ConnMeta {
    pub(crate) fn connection(&self, ws: WebSocket) -> Connection {
        Connection {
            ws,
            id: self.id.clone(),
            readonly: self.readonly,
            protocol: self.protocol,
        }
    }
}

type Registry = RwLock<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>;

/// The methods of an agent type, declared once per process.
pub(crate) fn methods_of<A: Agent>() -> Arc<Methods<A>> {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    let registry = REGISTRY.get_or_init(Default::default);
    let key = TypeId::of::<A>();
    if let Some(m) = registry
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
        .and_then(|m| m.clone().downcast::<Methods<A>>().ok())
    {
        return m;
    }
    let mut methods = Methods::default();
    A::methods(&mut methods);
    let methods = Arc::new(methods);
    registry
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .entry(key)
        .or_insert_with(|| methods.clone())
        .clone()
        .downcast::<Methods<A>>()
        .unwrap_or(methods)
}

type ScheduleRow = (
    String,
    String,
    String,
    String,
    i64,
    Option<i64>,
    Option<String>,
    Option<i64>,
    i64,
    Option<String>,
);

const SCHEDULE_COLUMNS: &str =
    "id, callback, payload, type, time, delay_ms, cron, interval_ms, attempts, last_error";

pub(crate) fn schedule_from_row(row: ScheduleRow) -> Result<Schedule> {
    let (id, callback, payload, kind, time, delay_ms, cron, interval_ms, attempts, last_error) =
        row;
    let kind = match kind.as_str() {
        "delayed" => ScheduleKind::Delayed {
            delay_ms: delay_ms.unwrap_or(0),
        },
        "cron" => ScheduleKind::Cron {
            cron: cron.unwrap_or_default(),
        },
        "interval" => ScheduleKind::Interval {
            interval_ms: interval_ms.unwrap_or(0),
        },
        _ => ScheduleKind::Scheduled,
    };
    Ok(Schedule {
        id,
        callback,
        payload: serde_json::from_str(&payload)?,
        kind,
        time,
        attempts: u32::try_from(attempts).unwrap_or(0),
        last_error,
    })
}

/// Agent operations on [`Context`]. In scope with `use denizen_agents::AgentContext`.
pub trait AgentContext<A: Agent> {
    /// The current state.
    fn state(&mut self) -> Result<A::State>;
    /// Replaces the state: persisted with this event's writes and broadcast (as
    /// `cf_agent_state`) to every protocol connection, the caller's included, before the reply
    /// of the RPC that made the change.
    ///
    /// When the handler that called it returns, the agent's
    /// [`validate_state_change`](Agent::validate_state_change) sees the last state it set
    /// (source [`Source::Server`](crate::Source::Server)): an `Err` fails the handler, so its
    /// writes and frames are discarded (an RPC caller gets the error). Then
    /// [`on_state_changed`](Agent::on_state_changed) runs, as the Agents SDK does.
    ///
    /// A state over [`MAX_STATE_BYTES`] of JSON is refused with [`Error::StateTooLarge`].
    fn set_state(&mut self, state: &A::State) -> Result<()>;
    /// SQL on the agent's own database (the same transaction as the rest of the event).
    fn sql(&mut self, query: &str, params: impl Params) -> Result<Cursor>;

    /// The open connections.
    fn connections(&self) -> Vec<Connection>;
    /// The open connection with this client id (`_pk`).
    fn connection(&self, id: &str) -> Option<Connection>;
    /// A connection's own state, kept with the socket across hibernation.
    fn connection_state<T: DeserializeOwned>(&self, conn: &Connection) -> Result<Option<T>>;
    /// Sets a connection's own state (at most about 16 KiB encoded).
    fn set_connection_state<T: Serialize>(&mut self, conn: &Connection, state: &T) -> Result<()>;
    /// Sends a JSON value as a text frame.
    fn send_json<T: Serialize>(&mut self, conn: &Connection, value: &T) -> Result<()>;
    /// Sends a JSON value to every protocol connection except those whose ids are listed.
    fn broadcast_json<T: Serialize>(&mut self, value: &T, except: &[&str]) -> Result<()>;

    /// Runs `task` with `payload` once after a delay, once at a time, or on a cron expression.
    /// A cron schedule is idempotent: the same task, expression and payload is added once.
    fn schedule<P: Serialize>(
        &mut self,
        when: impl Into<When>,
        task: &str,
        payload: &P,
    ) -> Result<Schedule>;
    /// [`schedule`](AgentContext::schedule) with options.
    fn schedule_with<P: Serialize>(
        &mut self,
        when: impl Into<When>,
        task: &str,
        payload: &P,
        options: ScheduleOptions,
    ) -> Result<Schedule>;
    /// Runs `task` every `interval` (first run one interval from now). Idempotent on task,
    /// interval and payload, so `on_start` may declare it on every wake.
    fn schedule_every<P: Serialize>(
        &mut self,
        interval: Duration,
        task: &str,
        payload: &P,
    ) -> Result<Schedule>;
    /// The schedule with this id, if it is still pending.
    fn get_schedule(&mut self, id: &str) -> Result<Option<Schedule>>;
    /// Pending schedules, the next due first.
    fn list_schedules(&mut self) -> Result<Vec<Schedule>>;
    /// Removes a schedule; `false` when there was none with that id.
    fn cancel_schedule(&mut self, id: &str) -> Result<bool>;

    /// Appends `task(payload)` to the agent's queue: queued tasks run in order, one event each
    /// batch, right after the current event. Returns the item's id.
    fn queue<P: Serialize>(&mut self, task: &str, payload: &P) -> Result<String>;
    /// [`queue`](AgentContext::queue) with its own retry policy.
    fn queue_with<P: Serialize>(&mut self, task: &str, payload: &P, retry: Retry)
    -> Result<String>;
    /// Removes a queued item that has not run yet.
    fn dequeue(&mut self, id: &str) -> Result<bool>;
    /// The queued items, in the order they will run.
    fn queued(&mut self) -> Result<Vec<QueueItem>>;
    /// Tasks that failed every attempt, oldest first (the last
    /// [`MAX_FAILURES`](crate::MAX_FAILURES)).
    fn failures(&mut self) -> Result<Vec<Failure>>;

    /// Starts slow work off the turn — an HTTP API, an LLM request, an MCP tool call — and
    /// hands its result to `then`, run on the agent as an event of its own. Meanwhile the agent
    /// goes on serving its clients' calls and state changes, schedules and the queue: only
    /// `then` waits for the work.
    ///
    /// `fut` starts once this event's writes are committed, and not at all if the event fails.
    /// `then` gets its output (an error saying so if it panicked) and runs like any handler of the agent: its state changes are validated and
    /// broadcast, its SQL commits when it returns. If `then` fails, its writes are rolled back
    /// and the failure is logged; the agent goes on. The agent does not hibernate while work is
    /// in flight, so give network work a timeout; work does not survive a restart of the server
    /// (persist what must be retried, or use a schedule).
    ///
    /// To answer a client's call with the result, declare the method with
    /// [`Methods::callable_off_turn`](crate::Methods::callable_off_turn).
    ///
    /// ```
    /// use denizen_agents::{Agent, AgentContext, Context, Methods};
    /// use denizen_runtime::Result;
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Default, Serialize, Deserialize)]
    /// struct State {
    ///     loading: bool,
    ///     weather: Option<String>,
    /// }
    ///
    /// struct Weather;
    ///
    /// async fn fetch_weather(city: String) -> Result<String> {
    ///     Ok(format!("sunny in {city}")) // an HTTP API call, in a real agent
    /// }
    ///
    /// impl Weather {
    ///     fn refresh(&mut self, cx: &mut Context<Self>, city: String) -> Result<()> {
    ///         let state = cx.state()?;
    ///         cx.set_state(&State { loading: true, ..state })?;
    ///         cx.spawn_then(fetch_weather(city), |agent, cx, weather| {
    ///             Box::pin(agent.on_weather(cx, weather))
    ///         });
    ///         Ok(())
    ///     }
    ///
    ///     async fn on_weather(&mut self, cx: &mut Context<Self>, weather: Result<String>) -> Result<()> {
    ///         let weather = weather.unwrap_or_else(|e| format!("unknown ({e})"));
    ///         Ok(cx.set_state(&State { loading: false, weather: Some(weather) })?)
    ///     }
    /// }
    ///
    /// impl Agent for Weather {
    ///     type State = State;
    ///     fn initial_state(&self) -> State {
    ///         State::default()
    ///     }
    ///     fn methods(m: &mut Methods<Self>) {
    ///         m.callable("refresh", |a, cx, (city,): (String,)| {
    ///             let started = a.refresh(cx, city);
    ///             Box::pin(async move { started })
    ///         });
    ///     }
    /// }
    /// ```
    fn spawn_then<T, F, H>(&mut self, fut: F, then: H)
    where
        T: Send + 'static,
        F: Future<Output = denizen_runtime::Result<T>> + Send + 'static,
        H: for<'a> FnOnce(
                &'a mut A,
                &'a mut Context<A>,
                denizen_runtime::Result<T>,
            ) -> BoxFuture<'a, denizen_runtime::Result<()>>
            + Send
            + 'static;

    /// Answers the HTTP request of [`on_request`](Agent::on_request) later, after slow work off
    /// the turn — an HTTP API, an LLM request, an MCP tool call — while the agent goes on
    /// serving its clients' calls and state changes, schedules and the queue. Return what it
    /// gives from `on_request` (`Ok(cx.answer_later(fut, then))`): the HTTP caller keeps waiting
    /// while `fut` runs outside the mailbox, then `then` gets its output in an event of the
    /// agent and the `Response` it makes is the answer.
    ///
    /// It is [`spawn_then`](AgentContext::spawn_then) for an HTTP handler: `fut` starts once this
    /// event's writes are committed (and not at all if the event fails; the caller then gets
    /// its error), and `then` gets its output (an error saying so if it panicked) and runs like
    /// any handler of the agent: its state changes are validated and broadcast, the MCP servers
    /// it changed are saved, and its SQL commits before the answer leaves. If `then` fails (or
    /// panics), its writes are rolled back and the caller gets a 500 with the error's message;
    /// the agent goes on. `then` may itself return `cx.answer_later(..)` to do more slow work
    /// before answering.
    ///
    /// The agent does not hibernate while work is in flight and no event deadline bounds it, so
    /// give network work a timeout; if the server shuts down first, the caller gets a 503 to
    /// retry. The response returned here is a placeholder: returned from anything but
    /// `on_request` (or the `then` of another `answer_later`), it is sent as is, a 500 saying so.
    ///
    /// ```
    /// use denizen_agents::{Agent, AgentContext, Context};
    /// use denizen_runtime::{Request, Response, Result, http, http_util};
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Default, Serialize, Deserialize)]
    /// struct State {
    ///     asked: u64,
    /// }
    ///
    /// struct Oracle;
    ///
    /// async fn ask_llm(question: String) -> Result<String> {
    ///     Ok(format!("42, whatever {question:?} means")) // an LLM request, in a real agent
    /// }
    ///
    /// impl Agent for Oracle {
    ///     type State = State;
    ///     fn initial_state(&self) -> State {
    ///         State::default()
    ///     }
    ///
    ///     async fn on_request(&mut self, cx: &mut Context<Self>, req: Request) -> Result<Response> {
    ///         let question = String::from_utf8_lossy(req.body()).into_owned();
    ///         // The agent's clients are served while the model thinks.
    ///         Ok(cx.answer_later(ask_llm(question), |_agent, cx, answer| {
    ///             Box::pin(async move {
    ///                 let Ok(answer) = answer else {
    ///                     return Ok(http_util::text(http::StatusCode::BAD_GATEWAY, "ask again later\n"));
    ///                 };
    ///                 let state = cx.state()?;
    ///                 // Broadcast to the clients, and committed, before the answer leaves.
    ///                 cx.set_state(&State { asked: state.asked + 1 })?;
    ///                 Ok(http_util::text(http::StatusCode::OK, &answer))
    ///             })
    ///         }))
    ///     }
    /// }
    /// ```
    fn answer_later<T, F, H>(&mut self, fut: F, then: H) -> Response
    where
        T: Send + 'static,
        F: Future<Output = denizen_runtime::Result<T>> + Send + 'static,
        H: for<'a> FnOnce(
                &'a mut A,
                &'a mut Context<A>,
                denizen_runtime::Result<T>,
            ) -> BoxFuture<'a, denizen_runtime::Result<Response>>
            + Send
            + 'static;
}

impl<A: Agent> AgentContext<A> for Context<A> {
    fn state(&mut self) -> Result<A::State> {
        let text: Option<String> = self
            .storage()
            .exec(
                "SELECT state FROM cf_agents_state WHERE id = ?",
                (STATE_ROW,),
            )?
            .first()?;
        let text = text.ok_or(Error::StateMissing)?;
        Ok(serde_json::from_str(&text)?)
    }

    fn set_state(&mut self, state: &A::State) -> Result<()> {
        let value = serde_json::to_value(state)?;
        store_state(self, &value)?;
        broadcast_state(self, &value, None);
        // Outside a host event (there is none today) nothing would call the hooks.
        let _ = SERVER_CHANGE.try_with(|c| c.set(true));
        Ok(())
    }

    fn sql(&mut self, query: &str, params: impl Params) -> Result<Cursor> {
        Ok(self.storage().exec(query, params)?)
    }

    fn connections(&self) -> Vec<Connection> {
        self.get_websockets(None)
            .into_iter()
            .filter_map(|ws| meta(self, ws).map(|m| m.connection(ws)))
            .collect()
    }

    fn connection(&self, id: &str) -> Option<Connection> {
        self.connections().into_iter().find(|c| c.id == id)
    }

    fn connection_state<T: DeserializeOwned>(&self, conn: &Connection) -> Result<Option<T>> {
        match meta(self, conn.ws).and_then(|m| m.state) {
            Some(v) => Ok(Some(serde_json::from_value(v)?)),
            None => Ok(None),
        }
    }

    fn set_connection_state<T: Serialize>(&mut self, conn: &Connection, state: &T) -> Result<()> {
        let mut m =
            meta(self, conn.ws).ok_or(denizen_runtime::Error::UnknownSocket(conn.ws.id()))?;
        m.state = Some(serde_json::to_value(state)?);
        self.set_attachment(conn.ws, &m)?;
        Ok(())
    }

    fn send_json<T: Serialize>(&mut self, conn: &Connection, value: &T) -> Result<()> {
        let text = serde_json::to_string(value)?;
        self.send(conn.ws, text);
        Ok(())
    }

    fn broadcast_json<T: Serialize>(&mut self, value: &T, except: &[&str]) -> Result<()> {
        let text = serde_json::to_string(value)?;
        for conn in self.connections() {
            if conn.protocol && !except.contains(&conn.id.as_str()) {
                self.send(conn.ws, text.clone());
            }
        }
        Ok(())
    }

    fn schedule<P: Serialize>(
        &mut self,
        when: impl Into<When>,
        task: &str,
        payload: &P,
    ) -> Result<Schedule> {
        self.schedule_with(when, task, payload, ScheduleOptions::default())
    }

    fn schedule_with<P: Serialize>(
        &mut self,
        when: impl Into<When>,
        task: &str,
        payload: &P,
        options: ScheduleOptions,
    ) -> Result<Schedule> {
        let now = now_ms();
        let (kind, time, idempotent) = match when.into() {
            When::Delay(d) => {
                let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
                (
                    ScheduleKind::Delayed { delay_ms: ms },
                    now.saturating_add(ms),
                    options.idempotent,
                )
            }
            When::At(t) => (ScheduleKind::Scheduled, to_ms(t), options.idempotent),
            When::Cron(expr) => {
                let time = next_cron(&expr, now)?;
                (ScheduleKind::Cron { cron: expr }, time, true)
            }
        };
        insert_schedule::<A>(self, task, payload, kind, time, idempotent, options.retry)
    }

    fn schedule_every<P: Serialize>(
        &mut self,
        interval: Duration,
        task: &str,
        payload: &P,
    ) -> Result<Schedule> {
        if interval.is_zero() || interval > MAX_INTERVAL {
            return Err(Error::InvalidInterval(interval));
        }
        let ms = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX);
        insert_schedule::<A>(
            self,
            task,
            payload,
            ScheduleKind::Interval { interval_ms: ms },
            now_ms().saturating_add(ms),
            true,
            None,
        )
    }

    fn get_schedule(&mut self, id: &str) -> Result<Option<Schedule>> {
        let row: Option<ScheduleRow> = self
            .storage()
            .exec(
                &format!("SELECT {SCHEDULE_COLUMNS} FROM cf_agents_schedules WHERE id = ?"),
                (id,),
            )?
            .first()?;
        row.map(schedule_from_row).transpose()
    }

    fn list_schedules(&mut self) -> Result<Vec<Schedule>> {
        let rows: Vec<ScheduleRow> = self
            .storage()
            .exec(
                &format!(
                    "SELECT {SCHEDULE_COLUMNS} FROM cf_agents_schedules ORDER BY time, created_at, id"
                ),
                (),
            )?
            .all()?;
        rows.into_iter().map(schedule_from_row).collect()
    }

    fn cancel_schedule(&mut self, id: &str) -> Result<bool> {
        let removed = self
            .storage()
            .exec("DELETE FROM cf_agents_schedules WHERE id = ?", (id,))?
            .rows_written()
            > 0;
        if removed {
            rearm(self)?;
        }
        Ok(removed)
    }

    fn queue<P: Serialize>(&mut self, task: &str, payload: &P) -> Result<String> {
        self.queue_with(task, payload, Retry::default())
    }

    fn queue_with<P: Serialize>(
        &mut self,
        task: &str,
        payload: &P,
        retry: Retry,
    ) -> Result<String> {
        if !methods_of::<A>().has_task(task) {
            return Err(Error::UnknownTask(task.to_string()));
        }
        let payload = serde_json::to_string(payload)?;
        let id = new_id();
        // Due now: the alarm is armed at this time, not at the epoch, so its lateness is real.
        let now = now_ms();
        self.storage().exec(
            "INSERT INTO cf_agents_queues(id, callback, payload, retry, not_before, created_at)
             VALUES (?, ?, ?, ?, ?, ?)",
            (
                id.as_str(),
                task,
                payload.as_str(),
                opt(Retry::encode(Some(retry))),
                now,
                now,
            ),
        )?;
        rearm(self)?;
        Ok(id)
    }

    fn dequeue(&mut self, id: &str) -> Result<bool> {
        let removed = self
            .storage()
            .exec("DELETE FROM cf_agents_queues WHERE id = ?", (id,))?
            .rows_written()
            > 0;
        if removed {
            rearm(self)?;
        }
        Ok(removed)
    }

    fn queued(&mut self) -> Result<Vec<QueueItem>> {
        let rows: Vec<(String, String, String, i64, Option<String>)> = self
            .storage()
            .exec(
                "SELECT id, callback, payload, attempts, last_error FROM cf_agents_queues ORDER BY seq",
                (),
            )?
            .all()?;
        rows.into_iter()
            .map(|(id, callback, payload, attempts, last_error)| {
                Ok(QueueItem {
                    id,
                    callback,
                    payload: serde_json::from_str(&payload)?,
                    attempts: u32::try_from(attempts).unwrap_or(0),
                    last_error,
                })
            })
            .collect()
    }

    fn spawn_then<T, F, H>(&mut self, fut: F, then: H)
    where
        T: Send + 'static,
        F: Future<Output = denizen_runtime::Result<T>> + Send + 'static,
        H: for<'a> FnOnce(
                &'a mut A,
                &'a mut Context<A>,
                denizen_runtime::Result<T>,
            ) -> BoxFuture<'a, denizen_runtime::Result<()>>
            + Send
            + 'static,
    {
        crate::host::spawn_then(self, fut, then);
    }

    fn answer_later<T, F, H>(&mut self, fut: F, then: H) -> Response
    where
        T: Send + 'static,
        F: Future<Output = denizen_runtime::Result<T>> + Send + 'static,
        H: for<'a> FnOnce(
                &'a mut A,
                &'a mut Context<A>,
                denizen_runtime::Result<T>,
            ) -> BoxFuture<'a, denizen_runtime::Result<Response>>
            + Send
            + 'static,
    {
        crate::host::answer_later(self, fut, then)
    }

    fn failures(&mut self) -> Result<Vec<Failure>> {
        let rows: Vec<(String, String, String, String, String, i64, i64)> = self
            .storage()
            .exec(
                "SELECT id, kind, callback, payload, error, attempts, failed_at
                 FROM cf_agents_failures ORDER BY seq",
                (),
            )?
            .all()?;
        rows.into_iter()
            .map(
                |(id, kind, callback, payload, error, attempts, failed_at)| {
                    Ok(Failure {
                        id,
                        kind,
                        callback,
                        payload: serde_json::from_str(&payload)?,
                        error,
                        attempts: u32::try_from(attempts).unwrap_or(0),
                        failed_at,
                    })
                },
            )
            .collect()
    }
}

/// The agents layer's record of a socket; `None` for sockets it did not accept or refused.
pub(crate) fn meta<A: Agent>(cx: &Context<A>, ws: WebSocket) -> Option<ConnMeta> {
    cx.attachment::<ConnMeta>(ws)
        .ok()
        .flatten()
        .filter(|m| !m.refused)
}

/// Persists the state, refusing one over [`MAX_STATE_BYTES`].
pub(crate) fn store_state<A: Agent>(cx: &mut Context<A>, value: &Value) -> Result<()> {
    let text = serde_json::to_string(value)?;
    if text.len() > MAX_STATE_BYTES {
        return Err(Error::StateTooLarge {
            size: text.len(),
            max: MAX_STATE_BYTES,
        });
    }
    cx.storage().exec(
        "INSERT INTO cf_agents_state(id, state) VALUES (?, ?)
         ON CONFLICT(id) DO UPDATE SET state = excluded.state",
        (STATE_ROW, text.as_str()),
    )?;
    Ok(())
}

/// Sends the state to every protocol connection but `except`.
pub(crate) fn broadcast_state<A: Agent>(
    cx: &mut Context<A>,
    value: &Value,
    except: Option<WebSocket>,
) {
    let frame = protocol::state(value).to_string();
    for ws in cx.get_websockets(None) {
        if Some(ws) == except {
            continue;
        }
        if meta(cx, ws).is_some_and(|m| m.protocol) {
            cx.send(ws, frame.clone());
        }
    }
}

fn insert_schedule<A: Agent>(
    cx: &mut Context<A>,
    task: &str,
    payload: &impl Serialize,
    kind: ScheduleKind,
    time: i64,
    idempotent: bool,
    retry: Option<Retry>,
) -> Result<Schedule> {
    if !methods_of::<A>().has_task(task) {
        return Err(Error::UnknownTask(task.to_string()));
    }
    let payload_text = serde_json::to_string(payload)?;
    let (type_name, delay_ms, cron, interval_ms) = match &kind {
        ScheduleKind::Scheduled => ("scheduled", None, None, None),
        ScheduleKind::Delayed { delay_ms } => ("delayed", Some(*delay_ms), None, None),
        ScheduleKind::Cron { cron } => ("cron", None, Some(cron.clone()), None),
        ScheduleKind::Interval { interval_ms } => ("interval", None, None, Some(*interval_ms)),
    };
    if idempotent {
        // The same task, timing and payload is one schedule, however often it is declared.
        let existing: Option<ScheduleRow> = cx
            .storage()
            .exec(
                &format!(
                    "SELECT {SCHEDULE_COLUMNS} FROM cf_agents_schedules
                     WHERE callback = ? AND type = ? AND payload = ?
                       AND cron IS ? AND interval_ms IS ? AND (? OR delay_ms IS ?)
                     ORDER BY created_at LIMIT 1"
                ),
                (
                    task,
                    type_name,
                    payload_text.as_str(),
                    opt(cron.clone()),
                    opt(interval_ms),
                    type_name != "delayed",
                    opt(delay_ms),
                ),
            )?
            .first()?;
        if let Some(row) = existing {
            let schedule = schedule_from_row(row)?;
            // Re-arming here is what makes a wake that re-declares its schedules safe.
            rearm(cx)?;
            return Ok(schedule);
        }
    }
    let id = new_id();
    cx.storage().exec(
        "INSERT INTO cf_agents_schedules
            (id, callback, payload, type, time, delay_ms, cron, interval_ms, retry, created_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        denizen_runtime::params![
            id.as_str(),
            task,
            payload_text.as_str(),
            type_name,
            time,
            opt(delay_ms),
            opt(cron),
            opt(interval_ms),
            opt(Retry::encode(retry)),
            now_ms()
        ],
    )?;
    rearm(cx)?;
    Ok(Schedule {
        id,
        callback: task.to_string(),
        payload: serde_json::from_str(&payload_text)?,
        kind,
        time,
        attempts: 0,
        last_error: None,
    })
}

/// Sets the object's one alarm to the earliest due schedule or queue item, or deletes it.
pub(crate) fn rearm<A: Agent>(cx: &mut Context<A>) -> Result<()> {
    let next: Option<i64> = cx
        .storage()
        .exec(
            "SELECT MIN(t) FROM (
                SELECT MIN(time) AS t FROM cf_agents_schedules
                UNION ALL
                SELECT MAX(not_before, created_at) FROM
                    (SELECT not_before, created_at FROM cf_agents_queues ORDER BY seq LIMIT 1)
            )",
            (),
        )?
        .one()?;
    let current = cx.get_alarm()?.map(to_ms);
    match next {
        Some(at) if current != Some(at) => cx.set_alarm(from_ms(at))?,
        None if current.is_some() => cx.delete_alarm()?,
        _ => {}
    }
    Ok(())
}

fn opt<T: Into<SqlValue>>(v: Option<T>) -> SqlValue {
    v.map_or(SqlValue::Null, Into::into)
}
