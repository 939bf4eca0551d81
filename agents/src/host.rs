//! `AgentHost`: the durable object that runs an [`Agent`] and speaks the wire protocol.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use denizen_runtime::{
    AlarmInfo, Builder, Ctx, DurableObject, Error, Frame, Handler, Message, Request, Response,
    Result, Upgrade, WebSocket, http_util,
};
use futures_util::FutureExt;
use serde_json::Value;
use tracing::Instrument;

use crate::agent::{Agent, Connect, ConnectInfo, Connection, Context, Source};
use crate::context::AgentContext;
use crate::context::{
    ConnMeta, STATE_ROW, broadcast_state, meta, methods_of, rearm, store_state, take_server_change,
    tracking_state,
};
use crate::mcp::{AgentPath, McpChanged, McpNotifier, no_servers};
use crate::methods::{Callable, Methods, StreamingResponse};
use crate::protocol::{self, Incoming};
use crate::schedule::{self, BATCH, Retry, new_id, next_cron, now_ms};

/// Longest accepted connection id (`?_pk=`), in bytes.
pub const MAX_CONNECTION_ID: usize = 256;

/// The durable object hosting an agent of type `A`. Registered with
/// [`AgentBuilder::agent`]; its namespace is the agent's class in
/// `/agents/<class>/<name>` and its name the instance.
pub struct AgentHost<A: Agent> {
    agent: A,
    methods: Arc<Methods<A>>,
    /// The MCP server list last sent to the clients, so an unchanged one is not sent again.
    mcp_sent: Option<String>,
}

impl<A: Agent> AgentHost<A> {
    pub fn new(agent: A) -> Self {
        AgentHost {
            agent,
            methods: methods_of::<A>(),
            mcp_sent: None,
        }
    }

    /// The `mcp` object of the `cf_agent_mcp_servers` frame.
    fn mcp_servers(&mut self) -> Value {
        match self.agent.mcp() {
            Some(mcp) => mcp.servers(),
            None => no_servers(),
        }
    }

    /// Persists the agent's MCP servers and sends their list to every protocol connection if
    /// it changed since it was last sent.
    fn mcp_changed(&mut self, cx: &mut Context<A>) -> Result<()> {
        let Some(mcp) = self.agent.mcp() else {
            return Ok(());
        };
        mcp.persist(cx.storage())?;
        let servers = mcp.servers();
        let text = servers.to_string();
        if self.mcp_sent.as_deref() == Some(text.as_str()) {
            return Ok(());
        }
        self.mcp_sent = Some(text);
        Ok(cx.broadcast_json(&protocol::mcp_servers(servers), &[])?)
    }

    /// Restores the agent's MCP servers and has their changes come back as events.
    fn start_mcp(&mut self, cx: &mut Context<A>) -> Result<()> {
        if self.agent.mcp().is_none() {
            return Ok(());
        }
        let stub = cx
            .runtime()
            .namespace::<AgentHost<A>>(cx.namespace())?
            .get(cx.id().clone());
        let notifier = McpNotifier::new(move || {
            let stub = stub.clone();
            Box::pin(async move {
                if let Err(e) = stub.call(McpChanged).await {
                    tracing::debug!(error = %e, "could not deliver an MCP server change");
                }
            })
        });
        let path = AgentPath {
            class: cx.namespace().to_string(),
            name: cx.id().name().unwrap_or_default().to_string(),
        };
        if let Some(mcp) = self.agent.mcp() {
            mcp.start(cx.storage(), path, notifier)?;
        }
        Ok(())
    }
}

/// Registers agent types on a runtime [`Builder`].
pub trait AgentBuilder {
    /// Registers agent type `A` (built with `Default` on every activation) under `namespace`,
    /// which is also its `<class>` in `/agents/<class>/<name>`: use the kebab-case the JS client
    /// derives from its `agent` option (`CounterAgent` → `counter-agent`).
    fn agent<A: Agent + Default>(self, namespace: &str) -> Self;
    /// Registers agent type `A` built by `factory`.
    fn agent_with<A: Agent>(
        self,
        namespace: &str,
        factory: impl Fn() -> A + Send + Sync + 'static,
    ) -> Self;
}

impl AgentBuilder for Builder {
    fn agent<A: Agent + Default>(self, namespace: &str) -> Self {
        self.agent_with(namespace, A::default)
    }

    fn agent_with<A: Agent>(
        self,
        namespace: &str,
        factory: impl Fn() -> A + Send + Sync + 'static,
    ) -> Self {
        // Declared once here, so a mistake in `methods` shows at startup, not on first call.
        let _ = methods_of::<A>();
        self.object_with(namespace, move || AgentHost::new(factory()))
    }
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_string())
}

/// Runs `fut`, turning a panic into an error (the agent's writes are rolled back by the caller).
async fn guarded<T>(fut: impl Future<Output = Result<T>>) -> Result<T> {
    match AssertUnwindSafe(fut).catch_unwind().await {
        Ok(r) => r,
        Err(panic) => Err(Error::Panicked {
            message: panic_message(panic),
        }),
    }
}

fn state_text(cx: &mut Ctx<AgentHost<impl Agent>>) -> Result<Option<String>> {
    Ok(cx
        .storage()
        .exec(
            "SELECT state FROM cf_agents_state WHERE id = ?",
            (STATE_ROW,),
        )?
        .first()?)
}

impl<A: Agent> AgentHost<A> {
    async fn connect(&mut self, cx: &mut Context<A>, req: Request) -> Result<Response> {
        let mut pk = None;
        let mut query = Vec::new();
        for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
            if k == "_pk" && pk.is_none() {
                pk = Some(v.into_owned());
            } else {
                query.push((k.into_owned(), v.into_owned()));
            }
        }
        let id = pk.filter(|p| !p.is_empty()).unwrap_or_else(new_id);
        if id.len() > MAX_CONNECTION_ID {
            let ws = cx.accept_websocket(&req, &[])?;
            cx.close(
                ws,
                1008,
                &format!("the connection id (_pk) is limited to {MAX_CONNECTION_ID} bytes"),
            );
            return Ok(http_util::switching_protocols());
        }
        let info = ConnectInfo {
            uri: req.uri().clone(),
            headers: req.headers().clone(),
            query,
        };
        let ws = cx.accept_websocket(&req, &[])?;
        // Set first, so on_connect may already give the connection a state of its own; without
        // the protocol flag until the handshake, so broadcasts made in on_connect skip it (it
        // gets the current state in its handshake instead).
        let conn_meta = ConnMeta {
            id,
            readonly: false,
            protocol: false,
            state: None,
            refused: false,
        };
        cx.set_attachment(ws, &conn_meta)?;
        let conn = Connection {
            protocol: true,
            ..conn_meta.connection(ws)
        };
        let decision = self.agent.on_connect(cx, &conn, &info).await?;
        let mut conn_meta = meta(cx, ws).unwrap_or(conn_meta);
        conn_meta.protocol = true;
        match decision {
            Connect::Reject(reason) => {
                tracing::debug!(connection = %conn.id, %reason, "connection rejected");
                conn_meta.refused = true;
                cx.set_attachment(ws, &conn_meta)?;
                cx.close(ws, 4001, &reason);
                return Ok(http_util::switching_protocols());
            }
            Connect::ReadOnly => conn_meta.readonly = true,
            Connect::Raw => conn_meta.protocol = false,
            Connect::Accept => {}
        }
        cx.set_attachment(ws, &conn_meta)?;
        if conn_meta.protocol {
            let name = cx.id().name().unwrap_or_default().to_string();
            let agent = cx.namespace().to_string();
            let state: Value = match state_text(cx)? {
                Some(text) => serde_json::from_str(&text).map_err(|e| Error::msg(e.to_string()))?,
                None => Value::Null,
            };
            cx.send(ws, protocol::identity(&name, &agent, true).to_string());
            cx.send(ws, protocol::state(&state).to_string());
            let servers = self.mcp_servers();
            cx.send(ws, protocol::mcp_servers(servers).to_string());
        }
        Ok(http_util::switching_protocols())
    }

    async fn client_state(
        &mut self,
        cx: &mut Context<A>,
        conn: Connection,
        state: Value,
    ) -> Result<()> {
        if conn.readonly {
            cx.send(
                conn.ws,
                protocol::state_error("Connection is readonly").to_string(),
            );
            return Ok(());
        }
        let typed: A::State = match serde_json::from_value(state.clone()) {
            Ok(s) => s,
            Err(e) => {
                tracing::info!(connection = %conn.id, error = %e, "state update rejected: does not match the agent's state type");
                cx.send(
                    conn.ws,
                    protocol::state_error("State update rejected").to_string(),
                );
                return Ok(());
            }
        };
        let source = Source::Client(conn.clone());
        if let Err(e) = self.agent.validate_state_change(&typed, &source) {
            tracing::info!(connection = %conn.id, error = %e, "state update rejected by validate_state_change");
            cx.send(
                conn.ws,
                protocol::state_error("State update rejected").to_string(),
            );
            return Ok(());
        }
        // What the typed state holds, not what the client sent: fields it does not know are
        // neither kept nor broadcast.
        let stored = serde_json::to_value(&typed).map_err(crate::Error::from)?;
        match store_state(cx, &stored) {
            Ok(()) => {}
            Err(crate::Error::StateTooLarge { size, max }) => {
                tracing::info!(connection = %conn.id, size, "state update rejected: over MAX_STATE_BYTES");
                cx.send(
                    conn.ws,
                    protocol::state_error(&format!(
                        "State update rejected: {size} bytes of state, the limit is {max}"
                    ))
                    .to_string(),
                );
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
        // The sender already holds what it sent, unless the typed state dropped some of it.
        let except = (stored == state).then_some(conn.ws);
        broadcast_state(cx, &stored, except);
        self.agent.on_state_changed(cx, &typed, &source).await
    }

    /// After an agent handler returned: if it called `set_state`, the last state it set goes
    /// through `validate_state_change` (an `Err` fails the handler) and `on_state_changed`
    /// (source [`Source::Server`]). A change made by `on_state_changed` itself is validated but
    /// does not call it again, so the two cannot loop.
    async fn settle_state(&mut self, cx: &mut Context<A>) -> Result<()> {
        if !take_server_change() {
            return Ok(());
        }
        let state = self.validated_server_state(cx)?;
        self.agent
            .on_state_changed(cx, &state, &Source::Server)
            .await?;
        if take_server_change() {
            self.validated_server_state(cx)?;
        }
        Ok(())
    }

    fn validated_server_state(&mut self, cx: &mut Context<A>) -> Result<A::State> {
        let state: A::State = cx.state()?;
        if let Err(e) = self.agent.validate_state_change(&state, &Source::Server) {
            tracing::debug!(error = %e, "server state change refused by validate_state_change");
            return Err(e);
        }
        Ok(state)
    }

    async fn rpc(
        &mut self,
        cx: &mut Context<A>,
        conn: Connection,
        id: String,
        method: String,
        args: Vec<Value>,
    ) -> Result<()> {
        let methods = self.methods.clone();
        let Some(callable) = methods.callables.get(&method) else {
            let message = if methods.tasks.contains_key(&method) {
                format!("Method {} is not callable", protocol::echo(&method))
            } else {
                format!("Method {} does not exist", protocol::echo(&method))
            };
            cx.send(conn.ws, protocol::rpc_error(&id, &message).to_string());
            return Ok(());
        };
        // Everything before the call is committed, so a failing call rolls back only itself.
        cx.commit().await?;
        let before = if conn.readonly { state_text(cx)? } else { None };
        let span =
            tracing::debug_span!("rpc", method = %protocol::echo(&method), connection = %conn.id);
        let outcome: Result<Option<Value>> = async {
            match callable {
                Callable::Plain(f) => guarded(f(&mut self.agent, cx, args)).await.map(Some),
                Callable::FromConnection(f) => guarded(f(&mut self.agent, cx, conn.clone(), args))
                    .await
                    .map(Some),
                Callable::Streaming(f) => {
                    let closed = Arc::new(AtomicBool::new(false));
                    let stream = StreamingResponse {
                        ws: conn.ws,
                        id: id.clone(),
                        closed: closed.clone(),
                    };
                    let r = guarded(f(&mut self.agent, cx, stream, args)).await;
                    match r {
                        // Ended by the method (its last frame is in the outbox), or ended now.
                        Ok(()) if closed.load(Ordering::Relaxed) => Ok(None),
                        Ok(()) => {
                            cx.send(conn.ws, protocol::rpc_result(&id, None, true).to_string());
                            Ok(None)
                        }
                        Err(e) => Err(e),
                    }
                }
            }
        }
        .instrument(span)
        .await;
        // A read-only connection may call methods, but not ones that change the state.
        let outcome = match outcome {
            Ok(_) if conn.readonly && state_text(cx)? != before => {
                Err(Error::msg("Connection is readonly"))
            }
            Ok(result) => self.settle_state(cx).await.map(|()| result),
            other => other,
        };
        match outcome {
            Ok(Some(result)) => {
                cx.send(
                    conn.ws,
                    protocol::rpc_result(&id, Some(result), true).to_string(),
                );
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(error = %e, "callable failed; its writes are rolled back");
                cx.rollback()?;
                take_server_change();
                cx.send(
                    conn.ws,
                    protocol::rpc_error(&id, &e.to_string()).to_string(),
                );
            }
        }
        Ok(())
    }

    /// Runs up to [`BATCH`] due queue items and schedules, each committed on its own.
    async fn run_due(&mut self, cx: &mut Context<A>) -> Result<()> {
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
            let still_there: Option<i64> = cx
                .storage()
                .exec(
                    "SELECT 1 FROM cf_agents_schedules WHERE id = ?",
                    (id.as_str(),),
                )?
                .first()?;
            if still_there.is_none() {
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

impl<A: Agent> DurableObject for AgentHost<A> {
    // An agent's tables, named as the Agents SDK names them: its state, schedules, queue and
    // failed tasks. In place before the first event; no DDL on a wake.
    const SCHEMA: &'static str = "
CREATE TABLE IF NOT EXISTS cf_agents_state(id TEXT PRIMARY KEY NOT NULL, state TEXT);
CREATE TABLE IF NOT EXISTS cf_agents_schedules (
    id TEXT PRIMARY KEY NOT NULL,
    callback TEXT NOT NULL,
    payload TEXT NOT NULL,
    type TEXT NOT NULL CHECK(type IN ('scheduled', 'delayed', 'cron', 'interval')),
    time INTEGER NOT NULL,
    delay_ms INTEGER,
    cron TEXT,
    interval_ms INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    retry TEXT,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS cf_agents_schedules_time ON cf_agents_schedules(time);
CREATE TABLE IF NOT EXISTS cf_agents_queues (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    callback TEXT NOT NULL,
    payload TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    retry TEXT,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS cf_agents_failures (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    kind TEXT NOT NULL,
    callback TEXT NOT NULL,
    payload TEXT NOT NULL,
    error TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    failed_at INTEGER NOT NULL
);";

    async fn on_start(&mut self, cx: &mut Ctx<Self>) -> Result<()> {
        tracking_state(async {
            self.start(cx).await?;
            self.settle_state(cx).await
        })
        .await
    }

    async fn fetch(&mut self, cx: &mut Ctx<Self>, req: Request) -> Result<Response> {
        tracking_state(async {
            let response = self.request(cx, req).await?;
            self.settle_state(cx).await?;
            Ok(response)
        })
        .await
    }

    async fn websocket_message(
        &mut self,
        cx: &mut Ctx<Self>,
        ws: WebSocket,
        frame: Frame,
    ) -> Result<()> {
        tracking_state(async {
            self.message(cx, ws, frame).await?;
            self.settle_state(cx).await
        })
        .await
    }

    async fn websocket_close(
        &mut self,
        cx: &mut Ctx<Self>,
        ws: WebSocket,
        code: u16,
        reason: String,
        was_clean: bool,
    ) -> Result<()> {
        let Some(m) = meta(cx, ws) else {
            return Ok(());
        };
        tracking_state(async {
            self.agent
                .on_close(cx, &m.connection(ws), code, &reason, was_clean)
                .await?;
            self.settle_state(cx).await
        })
        .await
    }

    async fn websocket_error(
        &mut self,
        cx: &mut Ctx<Self>,
        ws: WebSocket,
        error: String,
    ) -> Result<()> {
        let Some(m) = meta(cx, ws) else {
            return Ok(());
        };
        tracing::debug!(connection = %m.id, %error, "connection error");
        tracking_state(async {
            self.agent
                .on_close(cx, &m.connection(ws), 1006, &error, false)
                .await?;
            self.settle_state(cx).await
        })
        .await
    }

    async fn alarm(&mut self, cx: &mut Ctx<Self>, _info: AlarmInfo) -> Result<()> {
        // Each task settles its own state changes (run_task).
        tracking_state(self.run_due(cx)).await?;
        rearm(cx)?;
        Ok(())
    }
}

impl<A: Agent> AgentHost<A> {
    async fn start(&mut self, cx: &mut Context<A>) -> Result<()> {
        if state_text(cx)?.is_none() {
            let initial = serde_json::to_value(self.agent.initial_state())
                .map_err(|e| Error::msg(format!("could not encode the initial state: {e}")))?;
            store_state(cx, &initial)?;
        }
        // Keep-alive text pings some clients send are answered without waking the agent; an
        // agent that wants them in on_message clears this in its on_start.
        cx.set_auto_response(Some(("ping", "pong")))?;
        self.start_mcp(cx)?;
        // Clients still connected across the hibernation learn the servers are reconnecting.
        self.mcp_changed(cx)?;
        self.agent.on_start(cx).await?;
        // A wake re-arms whatever is due, whether or not on_start declared anything.
        rearm(cx)?;
        Ok(())
    }

    async fn request(&mut self, cx: &mut Context<A>, req: Request) -> Result<Response> {
        if req.extensions().get::<Upgrade>().is_some() {
            return self.connect(cx, req).await;
        }
        // Awaited here, so the borrow of the agent ends before its servers are sent.
        let callback = match self.agent.mcp().and_then(|mcp| mcp.callback(&req)) {
            Some(answer) => Some(answer.await?),
            None => None,
        };
        if let Some(answer) = callback {
            self.mcp_changed(cx)?;
            return Ok(answer);
        }
        self.agent.on_request(cx, req).await
    }

    async fn message(&mut self, cx: &mut Context<A>, ws: WebSocket, frame: Frame) -> Result<()> {
        let Some(m) = meta(cx, ws) else {
            // A socket refused in on_connect: it is closing.
            return Ok(());
        };
        let conn = m.connection(ws);
        if !conn.protocol {
            return self.agent.on_message(cx, &conn, frame).await;
        }
        match protocol::parse(&frame) {
            Incoming::State(state) => self.client_state(cx, conn, state).await,
            Incoming::Rpc { id, method, args } => self.rpc(cx, conn, id, method, args).await,
            Incoming::Other => self.agent.on_message(cx, &conn, frame).await,
        }
    }
}

impl<A: Agent> Handler<McpChanged> for AgentHost<A> {
    async fn handle(&mut self, cx: &mut Ctx<Self>, _: McpChanged) -> Result<()> {
        self.mcp_changed(cx)
    }
}

/// Calls a plain callable method from the server side (another object, a route, a test):
/// `stub.call(Call::new("increment", json!([5])))`. The method's result, or its error, comes
/// back as the call's result; state changes it makes are broadcast as usual.
pub struct Call {
    pub method: String,
    pub args: Vec<Value>,
}

impl Call {
    /// `args` must be a JSON array (anything else is passed as the only argument).
    pub fn new(method: &str, args: Value) -> Self {
        let args = match args {
            Value::Array(a) => a,
            other => vec![other],
        };
        Call {
            method: method.to_string(),
            args,
        }
    }
}

impl Message for Call {
    type Reply = Value;
}

impl<A: Agent> Handler<Call> for AgentHost<A> {
    async fn handle(&mut self, cx: &mut Ctx<Self>, call: Call) -> Result<Value> {
        let methods = self.methods.clone();
        match methods.callables.get(&call.method) {
            Some(Callable::Plain(f)) => {
                tracking_state(async {
                    let result = f(&mut self.agent, cx, call.args).await?;
                    self.settle_state(cx).await?;
                    Ok(result)
                })
                .await
            }
            Some(Callable::FromConnection(_)) => Err(Error::msg(format!(
                "Method {} needs the calling connection; call it over a WebSocket",
                call.method
            ))),
            Some(Callable::Streaming(_)) => Err(Error::msg(format!(
                "Method {} streams its result; call it over a WebSocket",
                call.method
            ))),
            None => Err(Error::msg(format!("Method {} does not exist", call.method))),
        }
    }
}
