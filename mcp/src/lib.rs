//! MCP client for Denizen objects: connect an object to remote MCP servers and use their tools,
//! prompts and resources.
//!
//! Why it exists: an agent is a durable object, and the MCP servers it uses are part of its
//! state — which servers, over which transport, with which credentials — that must survive
//! hibernation and restarts without asking the user again. The protocol itself is the official
//! Rust SDK, [`rmcp`]; this crate adds what rmcp leaves to applications:
//!
//! - **Transport selection** ([`client`]): Streamable HTTP in the 2026-07-28 stateless era, then
//!   the 2025-11-25 `initialize` lifecycle, then the legacy HTTP+SSE transport ([`sse`], which
//!   rmcp does not ship) only when the server answers 400/404/405. What worked is remembered per
//!   server ([`Route`]) and tried first next time.
//! - **Session recovery** ([`http`]): a session the server forgot (404, or the 400 the TypeScript
//!   SDK sends) is re-initialized once and the request replayed.
//! - **[`McpClientManager`]**: servers with their state, discovery of tools, prompts, resources
//!   and templates (all pages), refresh on `list_changed`, tools namespaced
//!   `<server id>__<tool>`, `call_tool`/`get_prompt`/`read_resource` with progress, timeouts and
//!   cancellation, reconnect with backoff when a server goes away; form elicitations (and the
//!   2026-07-28 `input_required` rounds) answered by the application's [`ElicitationHandler`];
//!   [`McpClientManager::agents_state`] for the Agents SDK's `cf_agent_mcp_servers` frame.
//! - **OAuth 2.1** ([`auth`], on rmcp's implementation): a 401 puts the server in
//!   `authenticating` with an authorization URL for the user; the object's callback route calls
//!   [`McpClientManager::complete_authorization`]; tokens are refreshed by rmcp. Servers whose
//!   authorization server does not advertise PKCE S256 are refused.
//! - **Persistence** ([`store`]): servers, client registrations, tokens and refresh tokens in
//!   the object's own SQLite.
//!
//! - **Agents** ([`AgentMcp`]): an agent keeps one in a field and returns it from
//!   `Agent::mcp`; the agents layer then restores its servers on every activation, keeps the
//!   `cf_agent_mcp_servers` frame current for connected clients, persists tokens as they change
//!   and answers the OAuth callback at `/agents/<class>/<name>/callback`. `add_server` is the
//!   Agents SDK's `addMcpServer`; `call_tool` waits for a server still reconnecting after a wake,
//!   so callables, schedules and queued tasks can use tools right away. Their `_off_turn` forms
//!   do the waiting and the calling off the agent's turn (for `callable_off_turn` and
//!   `spawn_then`), so the agent serves its other clients while a server connects or a tool
//!   runs.
//!
//! The manager also runs inside any plain runtime object: create it in `on_start`, restore the
//! saved servers, and save after adding or removing one.
//!
//! ```no_run
//! use std::time::Duration;
//! use denizen_mcp::{CallOptions, McpClientManager, ManagerOptions, ServerConfig, store};
//! # async fn run(storage: &mut denizen_storage::Storage) -> denizen_mcp::Result<()> {
//! let manager = McpClientManager::new(ManagerOptions::default());
//! store::restore(storage, &manager)?; // reconnects saved servers in the background
//!
//! let status = manager
//!     .connect(ServerConfig::new("docs", "http://127.0.0.1:3901/mcp"), Duration::from_secs(10))
//!     .await?;
//! store::save_all(storage, &manager)?; // the route learned while connecting included
//! let result = manager
//!     .call_tool("docs__echo", serde_json::json!({"message": "hi"}), CallOptions::default())
//!     .await?;
//! println!("{:?} via {:?}: error={:?}", status.server_name, status.route, result.is_error);
//! # Ok(()) }
//! ```

//!
//! The server list round-trips through the object's SQLite:
//!
//! ```
//! use denizen_mcp::{McpClientManager, ManagerOptions, ServerConfig, store};
//! use denizen_storage::{Database, Durability};
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let mut storage = Database::open(&dir.path().join("agent.sqlite"), Durability::Normal)?;
//! let manager = McpClientManager::new(ManagerOptions::default());
//! manager.add_server(ServerConfig::new("docs", "http://127.0.0.1:9/mcp"))?;
//! store::save_all(&mut storage, &manager)?;
//!
//! let restarted = McpClientManager::new(ManagerOptions::default());
//! store::restore(&mut storage, &restarted)?;
//! assert_eq!(restarted.servers()[0].id, "docs");
//! assert_eq!(restarted.resolve_tool("docs__search")?, ("docs".into(), "search".into()));
//! # Ok(()) }
//! ```

pub mod agent;
pub mod auth;
pub mod client;
mod error;
pub mod http;
mod manager;
pub mod sse;
pub mod store;

pub use agent::{AddServerOptions, AddedServer, AgentMcp};
pub use auth::{OAuthOptions, OAuthRecord, RegisteredClient};
pub use client::{ElicitationHandler, Era, Progress, Route, TransportKind, TransportPreference};
pub use error::{Error, Result};
pub use manager::{
    CallOptions, ManagerOptions, McpClientManager, NamespacedTool, ServerConfig, ServerState,
    ServerStatus, TOOL_SEPARATOR,
};
/// The MCP data model (tools, results, content) as rmcp defines it.
pub use rmcp::model;
