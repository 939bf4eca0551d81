//! Agents on Denizen: durable objects with synced state, callable RPC, schedules and a queue,
//! spoken to with the Agents SDK wire protocol so the official JavaScript `agents` client
//! (`AgentClient`, `useAgent`) connects unchanged.
//!
//! Why it exists: Cloudflare's Agents SDK is the common way to build per-user stateful agents on
//! Durable Objects. This crate gives the same model on the Denizen runtime: implement [`Agent`],
//! declare its methods one line each, register it with [`AgentBuilder::agent`], and mount
//! `/agents/<class>/<name>` in front of it (the `denizen` crate does, with its gateway).
//!
//! - **State**: typed, persisted in the agent's SQLite (`cf_agents_state`), sent to every client
//!   on connect and on every change; a client's change is validated, persisted and broadcast to
//!   the other clients.
//! - **Callables**: `{"type":"rpc"}` frames call declared methods with JSON arguments; errors
//!   become RPC errors (and roll back the method's writes); streaming methods send chunks.
//! - **Work off the turn**: a handler holds the agent while it runs, so slow work — an HTTP
//!   API, an LLM request, an MCP tool call — goes off the turn:
//!   [`cx.spawn_then(fut, then)`](AgentContext::spawn_then) runs `fut` outside the mailbox and
//!   hands its result to `then` as an event of the agent (state changes broadcast, SQL
//!   committed), [`Methods::callable_off_turn`] answers a client's call when its work
//!   finishes, and [`cx.answer_later(fut, then)`](AgentContext::answer_later) answers an HTTP
//!   request to [`Agent::on_request`] with the response `then` makes from the work's result.
//!   Meanwhile the agent serves its other clients' calls and state changes.
//! - **Workflows** ([`workflow`]): durable step functions (`step.run` journaled with retries,
//!   durable `step.sleep` and `step.wait_for_event`), each instance a durable object with its own
//!   SQLite journal, driven from Rust, from other objects, or over HTTP by the application.
//! - **MCP** ([`mcp`]): an agent that returns its MCP client (`denizen_mcp::AgentMcp`) from
//!   [`Agent::mcp`] has its servers restored on every wake, listed to clients in
//!   `cf_agent_mcp_servers` as they change, and its OAuth callback answered on its own route.
//! - **Chat** ([`chat::agent`]): an agent that returns a [`Chat`](chat::agent::Chat) from
//!   [`Agent::chat`] speaks the `useAgentChat` protocol: its turns stream an OpenAI-compatible
//!   model's reply to every tab off the agent's turn, run its Rust tools, persist the transcript
//!   in its SQLite (`…/get-messages`), and resume streams for clients that reconnect.
//! - **Schedules and queue**: many schedules (delay, time, cron, interval) and a FIFO queue share
//!   the object's one alarm, persist, survive restarts, never duplicate on wake, and retry failing
//!   tasks with backoff before recording them in `cf_agents_failures`.
//!
//! ```
//! use denizen_agents::{Agent, AgentBuilder, AgentContext, Context, Methods};
//! use denizen_runtime::{Result, Runtime};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Default)]
//! struct Counter;
//!
//! #[derive(Serialize, Deserialize)]
//! struct State {
//!     count: i64,
//! }
//!
//! impl Counter {
//!     async fn increment(&mut self, cx: &mut Context<Self>, n: i64) -> Result<i64> {
//!         let mut state = cx.state()?;
//!         state.count += n;
//!         cx.set_state(&state)?;
//!         Ok(state.count)
//!     }
//! }
//!
//! impl Agent for Counter {
//!     type State = State;
//!     fn initial_state(&self) -> State {
//!         State { count: 0 }
//!     }
//!     fn methods(m: &mut Methods<Self>) {
//!         m.callable("increment", |a, cx, (n,): (i64,)| Box::pin(a.increment(cx, n)));
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<()> {
//! # let dir = tempfile::tempdir()?;
//! let runtime = Runtime::builder()
//!     .data_dir(dir.path())
//!     .agent::<Counter>("counter")
//!     .build()?;
//! # runtime.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod agent;
pub mod chat;
mod context;
mod error;
mod host;
pub mod mcp;
mod methods;
pub mod protocol;
mod schedule;
pub mod workflow;

pub use agent::{Agent, Connect, ConnectInfo, Connection, Context, Source};
pub use context::{AgentContext, MAX_STATE_BYTES};
pub use error::{Error, Result};
pub use host::{AgentBuilder, AgentHost, Call, MAX_CONNECTION_ID};
pub use mcp::{AgentPath, McpClient, McpNotifier};
pub use methods::{Methods, StreamingResponse};
pub use schedule::{
    Failure, MAX_FAILURES, MAX_INTERVAL, QueueItem, Retry, Schedule, ScheduleKind, ScheduleOptions,
    When,
};
/// The JSON Schema derive of [`chat::agent::Tool::typed`] inputs:
/// `#[derive(JsonSchema)] #[schemars(crate = "denizen::agent::schemars")]` without a dependency of
/// your own.
pub use schemars;
