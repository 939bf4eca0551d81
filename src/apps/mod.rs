//! The example apps `denizen serve` hosts: a counter and a chat room (ordinary durable objects,
//! the way an application writes its own) and `counter-agent`, an agent for the JS `agents` client.

pub mod chat;
pub mod counter;
pub mod counter_agent;

use denizen_agents::AgentBuilder;
use denizen_runtime::Builder;

/// The namespaces that hold agents, served at `/agents/<namespace>/<name>`.
pub const AGENTS: &[&str] = &["counter-agent"];

/// Registers every example app under its namespace (`counter`, `chat`, `counter-agent`).
pub fn register(builder: Builder) -> Builder {
    builder
        .object::<counter::Counter>("counter")
        .object::<chat::ChatRoom>("chat")
        .agent::<counter_agent::CounterAgent>("counter-agent")
}
