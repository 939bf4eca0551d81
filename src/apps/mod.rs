//! The example apps `denizen serve` hosts: a counter and a chat room (ordinary durable objects,
//! the way an application writes its own), `counter-agent`, an agent for the JS `agents` client,
//! and the workflows `approval` and `pipeline`.

pub mod chat;
pub mod counter;
pub mod counter_agent;
pub mod workflows;

use denizen_agents::AgentBuilder;
use denizen_runtime::Builder;

/// The namespaces that hold agents, served at `/agents/<namespace>/<name>`.
pub const AGENTS: &[&str] = &["counter-agent"];

/// Registers every example object under its namespace (`counter`, `chat`, `counter-agent`); the
/// example workflows register through [`workflows::workflows`].
pub fn register(builder: Builder) -> Builder {
    builder
        .object::<counter::Counter>("counter")
        .object::<chat::ChatRoom>("chat")
        .agent::<counter_agent::CounterAgent>("counter-agent")
}
