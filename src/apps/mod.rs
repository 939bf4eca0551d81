//! The example apps `denizen serve` hosts: a counter and a chat room (ordinary durable objects,
//! the way an application writes its own), `counter-agent`, an agent for the JS `agents` client,
//! `mcp-agent`, an agent that uses the tools of remote MCP servers, and the workflows `approval`
//! and `pipeline`.

pub mod chat;
pub mod counter;
pub mod counter_agent;
pub mod mcp_agent;
pub mod workflows;

use denizen_agents::AgentBuilder;
use denizen_runtime::Builder;

/// The namespaces that hold agents, served at `/agents/<namespace>/<name>`.
pub const AGENTS: &[&str] = &["counter-agent", "mcp-agent"];

/// Registers every example object under its namespace (`counter`, `chat`, `counter-agent`,
/// `mcp-agent`); the example workflows register through [`workflows::workflows`]. `public_url`
/// is where users' browsers reach the server (`http://127.0.0.1:8787`): MCP OAuth sends them
/// back there.
pub fn register(builder: Builder, public_url: &str) -> Builder {
    let public_url = public_url.to_string();
    builder
        .object::<counter::Counter>("counter")
        .object::<chat::ChatRoom>("chat")
        .agent::<counter_agent::CounterAgent>("counter-agent")
        .agent_with("mcp-agent", move || mcp_agent::McpAgent::new(&public_url))
}
