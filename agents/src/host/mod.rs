//! `AgentHost`: the durable object that runs an [`Agent`] and speaks the wire protocol.
//!
//! Its events are split by what they do: `connect` (the WebSocket handshake and clients' state
//! changes), `rpc` (callable methods, from clients and from [`Call`]), `due` (schedules and
//! the queue on the alarm), `mcp` (the agent's MCP servers) and `off_turn` (results of work
//! started off the turn, and HTTP answers given after it).

mod connect;
mod due;
mod mcp;
mod off_turn;
mod rpc;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use denizen_runtime::{
    AlarmInfo, Builder, Ctx, DurableObject, Error, Frame, Request, Response, Result, Upgrade,
    WebSocket,
};
use futures_util::FutureExt;

use crate::agent::{Agent, Context, Source};
use crate::context::AgentContext;
use crate::context::{
    STATE_ROW, meta, methods_of, rearm, store_state, take_server_change, tracking_state,
};
use crate::methods::Methods;
use crate::protocol::{self, Incoming};

pub use connect::MAX_CONNECTION_ID;
pub(crate) use off_turn::{Landed, answer_later, spawn_then};
pub use rpc::Call;

/// The durable object hosting an agent of type `A`. Registered with
/// [`AgentBuilder::agent`]; its namespace is the agent's class in
/// `/agents/<class>/<name>` and its name the instance.
#[allow(missing_debug_implementations)] // holds the application's agent, which need not be Debug
pub struct AgentHost<A: Agent> {
    agent: A,
    methods: Arc<Methods<A>>,
    /// The MCP server list last sent to the clients, so an unchanged one is not sent again.
    mcp_sent: Option<String>,
}

impl<A: Agent> AgentHost<A> {
    /// Hosts `agent` (the runtime builds one per activation through [`AgentBuilder`]).
    pub fn new(agent: A) -> Self {
        AgentHost {
            agent,
            methods: methods_of::<A>(),
            mcp_sent: None,
        }
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
        // The token exchange of an OAuth callback runs off the turn; the browser's answer
        // leaves once the servers it changed are saved.
        if let Some(exchange) = self.agent.mcp().and_then(|mcp| mcp.callback(&req)) {
            return Ok(off_turn::respond_later(cx, exchange));
        }
        if let Some(response) = crate::chat::agent::get_messages(&mut self.agent, cx, &req) {
            return Ok(response);
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
            Incoming::Other => {
                if self.agent.chat().is_some()
                    && crate::chat::agent::on_frame(&mut self.agent, cx, &conn, &frame).await?
                {
                    return Ok(());
                }
                self.agent.on_message(cx, &conn, frame).await
            }
        }
    }
}
